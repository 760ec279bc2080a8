"""A runner's writes through a moment when JetStream does not answer them (a leader
election, a server restart): they wait and are written, instead of ending the run.

A server of this test's own; a bucket's stream is deleted to make JetStream refuse the
write, and provisioned again to bring it back.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats

from broker import streams
from broker.buckets import open_buckets
from broker.server import EmbeddedServer
from runner.starts import StartCounter


async def test_a_start_count_written_while_its_bucket_is_away_is_written_once_it_is_back(tmp_path: Path):
    server = EmbeddedServer(tmp_path / "nats")
    server.start()
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        await streams.provision(js)
        buckets = await open_buckets(js)
        counter = StartCounter(buckets.task_starts, "r1")
        await counter.started("acme", "t1")

        await js.delete_stream(f"KV_{streams.TASK_STARTS_BUCKET}")
        second = asyncio.ensure_future(counter.started("acme", "t1"))
        await asyncio.sleep(1.0)
        assert not second.done(), "the write gave up (or claimed success) while the bucket was away"
        await streams.provision(js)
        await asyncio.wait_for(second, 30)

        stored = await (await open_buckets(js)).task_starts.get("acme", "t1.r1")
        assert stored is not None and stored.start_count == 2
    finally:
        await nc.close()
        server.stop()
