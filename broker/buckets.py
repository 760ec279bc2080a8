"""The KV buckets a service works with, opened once per connection."""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from broker import streams
from broker.records import Records
from broker.types import Batch, BatchRun, Execution, Runner, Task, TaskRuntime, TaskStarts


@dataclass
class Buckets:
    tasks: Records[Task]
    task_state: Records[TaskRuntime]
    task_starts: Records[TaskStarts]
    batches: Records[Batch]
    execs: Records[Execution]
    runners: Records[Runner]
    batch_runs: Records[BatchRun]


async def open_buckets(js: JetStreamContext, leader_on_miss: bool = False, look: bool = True) -> Buckets:
    """Open the provisioned buckets (provision first). `leader_on_miss`: a record a
    replica does not show is asked of the bucket's leader (`Records.get`); for the API,
    which must find what it has just written. It needs `$JS.API.STREAM.MSG.GET` on the
    buckets, which cannot be confined to an org: service users only.

    `look=False` opens them without reading each bucket's stream info (which would list
    every org's keys to whoever may ask for it): for a runner, which may only read and
    write its org's keys, in buckets provisioned with direct gets."""
    def records(bucket, type_, versioned: bool = True):
        return Records(bucket, type_, versioned=versioned, leader_on_miss=leader_on_miss)

    async def bucket(name: str) -> KeyValue:
        if look:
            return await js.key_value(name)
        return KeyValue(name=name, stream=f"KV_{name}", pre=f"$KV.{name}.", js=js, direct=True)

    return Buckets(
        tasks=records(await bucket(streams.TASKS_BUCKET), Task),
        task_state=records(await bucket(streams.TASK_STATE_BUCKET), TaskRuntime),
        task_starts=records(await bucket(streams.TASK_STARTS_BUCKET), TaskStarts, versioned=False),
        batches=records(await bucket(streams.BATCHES_BUCKET), Batch),
        execs=records(await bucket(streams.EXECS_BUCKET), Execution),
        runners=records(await bucket(streams.RUNNERS_BUCKET), Runner, versioned=False),
        batch_runs=records(await bucket(streams.BATCH_RUNS_BUCKET), BatchRun),
    )
