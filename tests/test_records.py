"""Records' read from the bucket's leader, which the API falls back on when a direct get
(answered by any replica) does not find a record: on one server both see the same, so
these tests check that the leader's answer decodes to the same record, and that a
deleted or never written key is missing there too."""

from __future__ import annotations

import asyncio

from expectations import eventually

from broker.buckets import open_buckets
from broker.types import Runner


def _runner(runner_id: str) -> Runner:
    return Runner(id=runner_id, org="leader-reads", host="h", pid=1, pools=["default"], concurrency=2, running=[],
                  modules=[], version="1", started_at="2026-01-01T00:00:00Z", heartbeat_at="2026-01-01T00:00:00Z")


async def test_the_leader_answers_what_a_direct_get_answers(broker, nc):
    buckets = await open_buckets(nc.jetstream(), leader_on_miss=True)
    await buckets.runners.put("leader-reads", "r1", _runner("r1"))
    direct = await buckets.runners.get("leader-reads", "r1")
    from_leader = await buckets.runners._get_from_leader("leader-reads.r1")
    assert from_leader == direct and from_leader.id == "r1"

    await buckets.runners.kv.delete("leader-reads.r1")
    assert await buckets.runners._get_from_leader("leader-reads.r1") is None
    assert await buckets.runners.get("leader-reads", "r1") is None
    assert await buckets.runners.get("leader-reads", "never-written") is None


async def test_a_versioned_record_from_the_leader_carries_its_revision(broker, nc, make_task, org):
    task = await make_task()
    buckets = await open_buckets(nc.jetstream(), leader_on_miss=True)
    from_leader = await buckets.tasks._get_from_leader(f"{org}.{task['id']}")
    assert from_leader is not None and from_leader.version == task["version"] and from_leader.name == task["name"]


async def test_a_scan_reads_every_record_over_several_batches_and_skips_deleted_keys(broker, nc):
    from broker import records

    buckets = await open_buckets(nc.jetstream())
    count = records.SCAN_BATCH * 2 + 17
    await asyncio.gather(*(buckets.runners.put("scan-many", f"r{i}", _runner(f"r{i}")) for i in range(count)))
    await buckets.runners.kv.delete("scan-many.r5")
    await buckets.runners.put("scan-many", "r6", _runner("r6-again"))  # the latest value of a key counts

    items = dict(await buckets.runners.scan_items("scan-many"))
    assert len(items) == count - 1 and "r5" not in items
    assert items["r6"].id == "r6-again" and items[f"r{count - 1}"].id == f"r{count - 1}"

    async def no_scan_consumer() -> bool:  # its delete is sent without waiting for the answer
        return not [c for c in await nc.jetstream().consumers_info("KV_bd_runners") if c.name.startswith("scan_")]

    await eventually(no_scan_consumer, 10, 0.05, "the scan's consumer deleted")
