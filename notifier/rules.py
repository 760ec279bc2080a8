"""Who hears about an execution: the `notify` rules of its batch and of its tasks.

A task run is reported by its task's rule. A batch run is reported by the batch's rule,
on the run's status, and by the rule of each of its tasks, on that task's own outcome in
the run (the first of its actions that failed, else the run's status), so a task that
fails inside a batch with `continue_on_error` still reaches the people who asked about
that task. A recipient named by several rules gets one message.

Rules are read from the definitions as they are now (KV `bd_tasks`, `bd_batches`),
deleted ones included: the run already happened, its people still want to know.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from broker.buckets import Buckets
from broker.types import FAILURE_STATUSES, Execution, Notify, NotificationChannel, recipient_channel


@dataclass
class Recipient:
    target: str
    channel: NotificationChannel
    rules: list[str] = field(default_factory=list)
    """What named it: `batch:{id}`, `task:{id}`."""


class Rules:
    def __init__(self, buckets: Buckets) -> None:
        self.buckets = buckets

    async def recipients(self, execution: Execution) -> list[Recipient]:
        """Everyone this final execution is to be reported to, in the order the rules name them."""
        found: dict[str, Recipient] = {}
        org = execution.org
        if execution.batch_id is not None:
            batch = await self.buckets.batches.get(org, execution.batch_id)
            if batch is not None:
                _add(found, batch.notify, execution.status, f"batch:{batch.id}")
            for task_id in dict.fromkeys(action.task_id for action in execution.actions):
                task = await self.buckets.tasks.get(org, task_id)
                if task is not None:
                    _add(found, task.notify, _task_outcome(execution, task_id), f"task:{task_id}")
        elif execution.task_id is not None:
            task = await self.buckets.tasks.get(org, execution.task_id)
            if task is not None:
                _add(found, task.notify, execution.status, f"task:{task.id}")
        return list(found.values())


def _add(found: dict[str, Recipient], notify: Notify | None, status: str, rule: str) -> None:
    if notify is None or not notify.wants(status):
        return
    for target in notify.recipients:
        channel = recipient_channel(target)
        if channel is None:
            continue  # written before recipients were checked; the API refuses such rules now
        found.setdefault(target, Recipient(target, channel)).rules.append(rule)


def _task_outcome(execution: Execution, task_id: str) -> str:
    """How one task of a batch run fared: its first failed action's status, else the run's."""
    for action in execution.actions:
        if action.task_id == task_id and action.status in FAILURE_STATUSES:
            return action.status
    return execution.status
