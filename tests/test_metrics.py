"""Observability: every service's counters in its NATS micro service's stats
(`$SRV.STATS.batchdeck-runner` ...) and as Prometheus text on a metrics port.

Runners run real processes (`runner_factory`); the whole-stack scenario gets a server of
its own, since the scheduler's fleet and the store's consumer are one per server.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import nats
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from batchdeck import cli, supervisor
from broker.client import ApiClient
from broker.metrics import Exporter
from broker.server import EmbeddedServer, ServerError
from broker.service import ControlPlane
from notifier.service import NotifierService, NotifierSettings
from runner.service import RunnerService
from scheduler.service import SchedulerService
from store.service import StoreService

ORG = "acme"
EVERY_SECOND = "* * * * * *"


# ---- helpers ------------------------------------------------------------------------


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


async def micro_stats(nc, service: str, service_id: str) -> dict[str, Any]:
    reply = await nc.request(f"$SRV.STATS.{service}.{service_id}", b"", timeout=2)
    return json.loads(reply.data)


async def counters(nc, service: str, service_id: str) -> dict[str, Any]:
    """The metrics a service instance reports in its stats: the `data` of its endpoints
    (the same on each)."""
    stats = await micro_stats(nc, service, service_id)
    data = [endpoint["data"] for endpoint in stats["endpoints"]]
    assert data and all(d == data[0] for d in data[1:]), data
    return data[0]


async def settled(probe: Callable[[], Any], done: Callable[[Any], bool], what: str, timeout: float = 15.0) -> Any:
    """Call (and await, if async) `probe()` until `done(value)`; fail with the last value
    when time is up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if done(value):
            return value
        if loop.time() > deadline:
            pytest.fail(f"{what} not reached within {timeout:g} s; last seen: {value!r:.3000}")
        await asyncio.sleep(0.1)


async def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample on the metrics port: {(name, labels): value}."""

    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            return response.read().decode()

    text = await asyncio.to_thread(get)
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def sample(samples: dict, name: str, **labels: str) -> float:
    """The one sample of `name` whose labels include `labels`."""
    found = [value for (n, have), value in samples.items() if n == name and set(labels.items()) <= have]
    assert len(found) == 1, f"{name} {labels}: {found} in {sorted(n for n, _ in samples)}"
    return found[0]


# ---- a runner -----------------------------------------------------------------------


async def test_a_runner_reports_its_runs_in_its_micro_service_stats(
    runner_factory, make_task, start_task, wait_exec, exec_events, nc
):
    runner = await runner_factory()
    hello = await make_task(name="hello", command=sh("echo one; echo two"))
    failing = await make_task(name="failing", command=sh("echo oops; exit 3"))
    started = [await start_task(hello["id"]), await start_task(hello["id"]), await start_task(failing["id"])]
    assert [(await wait_exec(e))["status"] for e in started] == ["succeeded", "succeeded", "failed"]
    published = sum([len(await exec_events(e, "log")) for e in started])

    service_id = runner.metrics.micro.id
    data = await settled(lambda: counters(nc, "batchdeck-runner", service_id),
                         lambda d: d["runs_succeeded"] + d["runs_failed"] == 3, "three runs counted")
    assert data == {
        "runs_claimed": 3, "runs_succeeded": 2, "runs_failed": 1, "runs_canceled": 0, "runs_handed_back": 0,
        "runs_running": 0, "log_lines_published": published, "log_lines_dropped": 0, "messages_refused": 0,
        "nats_reconnects": 0,
    }
    stats = await micro_stats(nc, "batchdeck-runner", service_id)
    assert stats["metadata"] == {"runner_id": runner.id, "org": runner.org, "pools": "default"}
    # The service's one endpoint answers the same values.
    reply = await nc.request(f"$SRV.METRICS.batchdeck-runner.{service_id}", b"", timeout=2)
    assert json.loads(reply.data) == data


async def test_a_runner_s_metrics_port_serves_its_counters_as_prometheus_text(
    runner_factory, make_task, start_task, wait_exec, broker
):
    runner = await runner_factory()
    exporter = Exporter(0)
    exporter.add(runner.metrics)
    exporter.add(broker.metrics)
    try:
        task = await make_task(name="failing", command=sh("exit 1"))
        assert (await wait_exec(await start_task(task["id"])))["status"] == "failed"

        ours = {"service": "runner", "id": runner.id}
        samples = await settled(lambda: scrape(exporter.port),
                                lambda s: sample(s, "batchdeck_runs_failed_total", **ours) == 1, "the run counted")
        assert sample(samples, "batchdeck_runs_claimed_total", **ours) == 1
        assert sample(samples, "batchdeck_runs_succeeded_total", **ours) == 0
        assert sample(samples, "batchdeck_runs_running", **ours) == 0
        assert sample(samples, "batchdeck_nats_reconnects_total", **ours) == 0
        # The broker (the session's: other tests counted too) adds its API's requests.
        assert sample(samples, "batchdeck_api_requests_total", service="broker", endpoint="task-start") >= 1
        assert sample(samples, "batchdeck_executions_started_total", service="broker") >= 1
        assert any(name == "process_cpu_seconds_total" for name, _ in samples)
    finally:
        exporter.stop()


# ---- every service of a process -----------------------------------------------------


@pytest_asyncio.fixture
async def own_server(tmp_path) -> AsyncIterator[EmbeddedServer]:
    server = EmbeddedServer(tmp_path / "nats")
    await server.astart()
    yield server
    await server.astop()


async def test_every_service_reports_its_counters_and_the_store_catches_up(own_server, tmp_path):
    nc = await nats.connect(own_server.url, name="test-stack")
    runner_nc = await nats.connect(own_server.url, name="test-runner")
    plane = ControlPlane(nc, nc.jetstream())
    scheduler = SchedulerService(nc, "sched-1")
    store = StoreService(nc, tmp_path / "history.duckdb")
    notifier = NotifierService(nc, NotifierSettings())
    runner = RunnerService(runner_nc, org=ORG, ack_wait=3.0, grace=1.0, drain_timeout=1.0)
    exporter = Exporter(0)
    started = []
    try:
        for service in (plane, scheduler, store, notifier, runner):
            exporter.add(service.metrics)
            await service.start()
            started.append(service)
        api = ApiClient(nc, ORG)
        task = await api.call("task", "create", {"name": "hello", "command": ["echo", "hello"]})
        batch = await api.call("batch", "create", {
            "name": "tick", "cron_expression": EVERY_SECOND, "is_enabled": True, "run_on_startup": False,
            "concurrency": "allow", "actions": [{"task_id": task["id"]}]})
        await settled(lambda: runner.counters.succeeded, lambda n: n >= 2, "two ticks run")
        await api.call("batch", "status", {"id": batch["id"], "is_enabled": False})

        js = nc.jetstream()

        async def look() -> tuple[dict, int]:
            last_seq = (await js.stream_info("BD_EVENTS")).state.last_seq
            return await scrape(exporter.port), last_seq

        def all_settled(seen: tuple[dict, int]) -> bool:
            s, last_seq = seen
            fired = sample(s, "batchdeck_ticks_fired_total", service="scheduler")
            return (fired == sample(s, "batchdeck_triggers_handled_total", service="broker")
                    == sample(s, "batchdeck_runs_succeeded_total", service="runner")
                    == sample(s, "batchdeck_notifier_final_events_total", service="notifier")
                    and sample(s, "batchdeck_ingest_committed_seq", service="store") == last_seq)

        samples, last_seq = await settled(look, all_settled, "every service caught up")
        fired = sample(samples, "batchdeck_ticks_fired_total", service="scheduler", id="sched-1")
        assert fired >= 2
        assert 0 <= sample(samples, "batchdeck_trigger_lag_seconds", service="scheduler") < 1.0
        assert sample(samples, "batchdeck_batches_scheduled", service="scheduler") == 0  # disabled
        assert sample(samples, "batchdeck_executions_started_total", service="broker") == fired
        assert sample(samples, "batchdeck_triggers_refused_total", service="broker") == 0
        assert sample(samples, "batchdeck_runs_claimed_total", service="runner") == fired
        assert sample(samples, "batchdeck_notifications_sent_total", service="notifier") == 0  # no rules
        assert sample(samples, "batchdeck_ingest_lag_events", service="store") == 0
        assert sample(samples, "batchdeck_ingest_lag_seconds", service="store") == 0
        assert sample(samples, "batchdeck_events_ingested_total", service="store") > 0
        for service in ("broker", "scheduler", "store", "notifier", "runner"):
            assert sample(samples, "batchdeck_nats_reconnects_total", service=service) == 0
        assert sample(samples, "batchdeck_api_requests_total", service="store", endpoint="exec-logs") == 0

        # The same values in each micro service's stats.
        assert (await counters(nc, "batchdeck", plane.service.id))["triggers_handled"] == fired
        assert (await counters(nc, "batchdeck-scheduler", scheduler.metrics.micro.id))["ticks_fired"] == fired
        assert (await counters(nc, "batchdeck-store", store.api.service.id))["ingest_lag_events"] == 0
        assert (await counters(nc, "batchdeck-notifier", notifier.metrics.micro.id))["notifier_final_events"] == fired
    finally:
        exporter.stop()
        for service in reversed(started):
            await service.stop()
        await runner_nc.close()
        await nc.close()


# ---- the command line ---------------------------------------------------------------


def test_the_service_commands_take_a_metrics_port():
    for command in (["broker"], ["runner"], ["scheduler"], ["store", "--db", "h.duckdb"], ["notifier"], ["up"]):
        args = cli.build_parser().parse_args([*command, "--metrics-port", "9464"])
        assert supervisor.metrics_address(args) == supervisor.MetricsAddress(9464, "127.0.0.1"), command
        args = cli.build_parser().parse_args(command)
        assert supervisor.metrics_address(args) is None, command


def test_a_metrics_port_in_use_is_an_error_naming_it():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServerError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            with supervisor.exporting(supervisor.MetricsAddress(port)):
                pass
