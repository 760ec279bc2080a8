"""Records' read from the bucket's leader, which the API falls back on when a direct get
(answered by any replica) does not find a record: on one server both see the same, so
these tests check that the leader's answer decodes to the same record, and that a
deleted or never written key is missing there too."""

from __future__ import annotations

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
