"""The KV buckets a service works with, opened once per connection."""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext

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


async def open_buckets(js: JetStreamContext) -> Buckets:
    """Open the provisioned buckets (provision first)."""
    return Buckets(
        tasks=Records(await js.key_value(streams.TASKS_BUCKET), Task),
        task_state=Records(await js.key_value(streams.TASK_STATE_BUCKET), TaskRuntime),
        task_starts=Records(await js.key_value(streams.TASK_STARTS_BUCKET), TaskStarts, versioned=False),
        batches=Records(await js.key_value(streams.BATCHES_BUCKET), Batch),
        execs=Records(await js.key_value(streams.EXECS_BUCKET), Execution),
        runners=Records(await js.key_value(streams.RUNNERS_BUCKET), Runner, versioned=False),
        batch_runs=Records(await js.key_value(streams.BATCH_RUNS_BUCKET), BatchRun),
    )

