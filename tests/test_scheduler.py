"""Scheduler replicas against a real nats-server and broker: every tick fires once
whatever the number of replicas, changes take effect at once, missed ticks follow the
batch's catch-up policy, `run_on_startup` fires once per start of the fleet.

The fleet's state (epoch, watermarks) is global to a NATS server, not per org, so each
test gets a server and broker of its own.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from itertools import pairwise
from typing import Any

import nats
import pytest_asyncio
from expectations import parse_time

from broker.client import ApiClient
from broker.server import EmbeddedServer
from broker.service import ControlPlane
from scheduler.publisher import AckedPublisher, NotStored
from scheduler.service import SchedulerService

ORG = "acme"
EVERY_SECOND = "* * * * * *"
WATCH_DELAY = timedelta(milliseconds=100)
NEVER_SOON = "0 0 1 1 *"


class Stack:
    """A server, a broker, an API client, and scheduler replicas started on demand."""

    def __init__(self, server: EmbeddedServer, nc, api: ApiClient) -> None:
        self.server = server
        self.nc = nc
        self.api = api
        self.replicas: list[tuple[SchedulerService, Any]] = []

    async def scheduler(self, name: str) -> SchedulerService:
        client = await nats.connect(self.server.url, name=f"test-scheduler-{name}")
        replica = SchedulerService(client, name)
        await replica.start()
        self.replicas.append((replica, client))
        return replica

    async def stop(self, replica: SchedulerService) -> None:
        for entry in list(self.replicas):
            if entry[0] is replica:
                self.replicas.remove(entry)
                await replica.stop()
                await entry[1].close()

    async def stop_all(self) -> None:
        for replica, _ in list(self.replicas):
            await self.stop(replica)

    async def batch(self, **fields: Any) -> dict[str, Any]:
        task = await self.api.call("task", "create", {"name": "hello", "command": ["true"]})
        body = {"name": "tick", "cron_expression": EVERY_SECOND, "is_enabled": True, "run_on_startup": False,
                "concurrency": "allow", "actions": [{"task_id": task["id"]}], **fields}
        return await self.api.call("batch", "create", body)

    async def triggers(self, batch_id: str) -> list[dict[str, Any]]:
        """Every trigger of the batch, oldest first."""
        page = await self.api.call("batch", "triggers", {"id": batch_id, "per_page": 1000})
        return list(reversed(page["items"]))


@pytest_asyncio.fixture
async def stack(tmp_path) -> AsyncIterator[Stack]:
    server = EmbeddedServer(tmp_path / "nats")
    await server.astart()
    nc = await nats.connect(server.url, name="test-client")
    plane = ControlPlane(nc, nc.jetstream())
    await plane.start()
    stack = Stack(server, nc, ApiClient(nc, ORG))
    try:
        yield stack
    finally:
        await stack.stop_all()
        await plane.stop()
        await nc.close()
        await server.astop()


def now() -> datetime:
    return datetime.now(timezone.utc)


def scheduled(triggers: list[dict[str, Any]], source: str | None = None) -> list[datetime]:
    return [parse_time(t["scheduled_at"]) for t in triggers if source is None or t["source"] == source]


async def settle(stack: Stack, batch_id: str, seconds: float = 0.5) -> list[dict[str, Any]]:
    """The triggers once the broker has turned every published one into an execution."""
    await asyncio.sleep(seconds)
    return await stack.triggers(batch_id)


async def test_three_replicas_fire_an_every_second_batch_exactly_once_per_second(stack):
    batch = await stack.batch()
    for name in ("a", "b", "c"):
        await stack.scheduler(name)
    await asyncio.sleep(4.2)
    await stack.api.call("batch", "status", {"id": batch["id"], "is_enabled": False})
    disabled_at = now()
    triggers = await settle(stack, batch["id"], 1.5)

    ticks = scheduled(triggers, "cron")
    assert len(ticks) >= 4, triggers
    # A disable reaches the scheduler through a KV watch, a few ms after the reply.
    assert all(t <= disabled_at + WATCH_DELAY for t in ticks), "a tick fired after the batch was disabled"
    assert [b - a for a, b in pairwise(ticks)] == [timedelta(seconds=1)] * (len(ticks) - 1), ticks
    assert disabled_at - ticks[-1] < timedelta(seconds=1), "the last tick before the disable is missing"
    for trigger in triggers:
        assert parse_time(trigger["fired_at"]) - parse_time(trigger["scheduled_at"]) < timedelta(seconds=1)
        assert trigger["status"] == "queued" and trigger["execution_id"]
    executions = await stack.api.call("exec", "list", {"filter": {"batch_id": batch["id"]}, "per_page": 1000})
    assert sorted(e["id"] for e in executions["items"]) == sorted(t["execution_id"] for t in triggers)


async def test_a_batch_created_while_running_fires_at_once_and_a_schedule_change_takes_effect(stack):
    await stack.scheduler("a")
    batch = await stack.batch()
    created = now()
    await asyncio.sleep(1.6)
    first = scheduled(await stack.triggers(batch["id"]))
    # the next tick, or the one after when the next was already being prepared (0.1 s ahead)
    assert first and first[0] - created < timedelta(seconds=1.2), first

    await stack.api.call("batch", "update", {"id": batch["id"], "cron_expression": NEVER_SOON})
    changed = now()
    later = scheduled(await settle(stack, batch["id"], 2.0))
    assert all(t <= changed for t in later), later


async def test_a_deleted_batch_stops_firing(stack):
    await stack.scheduler("a")
    batch = await stack.batch()
    await asyncio.sleep(1.5)
    await stack.api.call("batch", "status", {"id": batch["id"], "is_enabled": False})
    await stack.api.call("batch", "delete", {"id": batch["id"]})
    deleted = now()
    ticks = scheduled(await settle(stack, batch["id"], 2.0))
    assert ticks and all(t <= deleted + WATCH_DELAY for t in ticks)


async def test_missed_ticks_follow_each_batchs_catch_up_policy(stack):
    none = await stack.batch(name="none", catch_up="none")
    last = await stack.batch(name="last", catch_up="last")
    every = await stack.batch(name="all", catch_up="all", max_catch_up=3)
    first = await stack.scheduler("a")
    await asyncio.sleep(1.5)
    await stack.stop(first)
    stopped = now()
    await asyncio.sleep(1.0)
    during = await stack.batch(name="created during the downtime", catch_up="all", max_catch_up=10)
    await asyncio.sleep(3.0)
    restarted = now()
    await stack.scheduler("b")
    await asyncio.sleep(1.5)

    caught = {b["name"]: scheduled(await stack.triggers(b["id"]), "catch_up") for b in (none, last, every, during)}
    assert caught["none"] == []
    assert len(caught["last"]) == 1
    assert restarted - caught["last"][0] < timedelta(seconds=1), "`last` runs the newest missed tick"
    assert len(caught["all"]) == 3
    assert all(stopped - timedelta(seconds=1) < t <= restarted for t in caught["all"]), caught["all"]
    assert caught["all"] == sorted(set(caught["all"]))
    assert all(t >= parse_time(during["created_at"]) for t in caught["created during the downtime"])
    assert len(caught["created during the downtime"]) <= 4
    # and the schedule goes on after the restart
    for batch in (none, last, every):
        assert any(t > restarted for t in scheduled(await stack.triggers(batch["id"]), "cron"))


async def test_no_tick_is_fired_twice_or_lost_across_a_replica_restart(stack):
    batch = await stack.batch(catch_up="all", max_catch_up=100)
    first = await stack.scheduler("a")
    second = await stack.scheduler("b")
    await asyncio.sleep(1.5)
    await stack.stop(first)
    await asyncio.sleep(1.5)
    await stack.scheduler("a2")
    await asyncio.sleep(1.5)
    await stack.stop(second)
    await asyncio.sleep(1.0)
    await stack.api.call("batch", "status", {"id": batch["id"], "is_enabled": False})
    triggers = await settle(stack, batch["id"], 1.0)

    ticks = sorted(scheduled(triggers))
    assert Counter(ticks).most_common(1)[0][1] == 1, "a tick fired twice"
    assert [b - a for a, b in pairwise(ticks)] == [timedelta(seconds=1)] * (len(ticks) - 1), ticks
    assert len(ticks) >= 5


async def test_run_on_startup_fires_once_per_start_of_the_fleet(stack):
    batch = await stack.batch(cron_expression=NEVER_SOON, run_on_startup=True)
    await stack.batch(name="disabled", cron_expression=NEVER_SOON, run_on_startup=True, is_enabled=False)
    replicas = await asyncio.gather(stack.scheduler("a"), stack.scheduler("b"))
    startups = scheduled(await settle(stack, batch["id"]), "startup")
    assert len(startups) == 1, "two replicas starting together are one fleet start"

    await stack.stop(replicas[0])
    await stack.scheduler("a2")  # joins a live fleet: no new startup run
    assert len(scheduled(await settle(stack, batch["id"]), "startup")) == 1

    await stack.stop_all()
    await stack.scheduler("c")  # nobody alive: a new start of the fleet
    triggers = await settle(stack, batch["id"])
    assert len(scheduled(triggers, "startup")) == 2
    assert len({t["execution_id"] for t in triggers}) == 2
    disabled = [b for b in (await stack.api.call("batch", "list", {}))["items"] if b["name"] == "disabled"][0]
    assert await stack.triggers(disabled["id"]) == []


async def test_batch_next_lists_fire_times_in_the_batch_timezone(stack):
    batch = await stack.batch(cron_expression="30 2 * * *", timezone="Europe/Berlin", is_enabled=False)
    reply = await stack.api.call("batch", "next", {"id": batch["id"], "count": 3})
    times = [parse_time(t) for t in reply["items"]]
    assert len(times) == 3 and times == sorted(times) and times[0] > now()
    from zoneinfo import ZoneInfo

    local = [t.astimezone(ZoneInfo("Europe/Berlin")) for t in times]
    # 02:30 local, except on the day clocks skip 02:00-03:00 (then 03:00)
    assert all((t.hour, t.minute) in ((2, 30), (3, 0)) for t in local), local
    assert reply["timezone"] == "Europe/Berlin" and reply["cron"] == "30 2 * * *"
    assert reply["is_enabled"] is False


async def test_the_trigger_publisher_reports_stored_and_refused_messages(stack):
    publisher = AckedPublisher(stack.nc)
    await publisher.start()
    try:
        stored = await publisher.send(f"bd.{ORG}.trigger.b1", b'{"trigger_id":"t","batch_id":"b1"}',
                                      {"Nats-Msg-Id": "one"})
        nowhere = await publisher.send("no.stream.here", b"{}", {"Nats-Msg-Id": "two"})
        await asyncio.wait([stored, nowhere], timeout=5)
        assert stored.done() and stored.exception() is None
        assert isinstance(nowhere.exception(), NotStored)
    finally:
        await publisher.stop()
