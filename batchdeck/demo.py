"""`batchdeck up --demo`: example tasks and batches, so something runs within seconds.

Fixed ids make seeding idempotent: a second `up --demo` on the same data dir finds
them and leaves them alone.
"""

from __future__ import annotations

from typing import Any

from broker.client import ApiClient
from broker.errors import Conflict

TASKS: list[dict[str, Any]] = [
    {
        "id": "demo-hello",
        "name": "Say hello",
        "description": "echo a greeting with the run's context",
        "command": ["echo", "hello from batchdeck, {{ who }}"],
        "params": {"who": "operator"},
        "overridable": [{"name": "who", "description": "whom to greet"}],
    },
    {
        "id": "demo-count",
        "name": "Count to five",
        "description": "prints a line and its progress at each step",
        "command": ["sh", "-c", "for i in 1 2 3 4 5; do echo counting $i of 5; echo ::progress $((i*20)) step $i; sleep 1; done"],
        "timeout_sec": 60,
    },
    {
        "id": "demo-disk",
        "name": "Disk usage",
        "description": "df of the runner's filesystem",
        "command": ["df", "-h", "."],
    },
]

BATCHES: list[dict[str, Any]] = [
    {
        "id": "demo-every-minute",
        "name": "Heartbeat (every minute)",
        "cron_expression": "* * * * *",
        "is_enabled": True,
        "run_on_startup": True,
        "actions": [{"task_id": "demo-hello"}, {"task_id": "demo-count"}],
    },
    {
        "id": "demo-nightly",
        "name": "Nightly report",
        "cron_expression": "0 3 * * *",
        "timezone": "Europe/Berlin",
        "is_enabled": True,
        "run_on_startup": False,
        "actions": [{"task_id": "demo-disk"}, {"task_id": "demo-hello", "params": {"who": "night shift"}}],
    },
    {
        "id": "demo-workdays",
        "name": "Workday mornings",
        "schedule": {"hours": [8], "minutes": [30], "weekdays": [1, 2, 3, 4, 5]},
        "is_enabled": False,
        "run_on_startup": False,
        "actions": [{"task_id": "demo-disk", "continue_on_error": True}, {"task_id": "demo-hello"}],
    },
]


async def seed(api: ApiClient) -> int:
    """Create the demo definitions that are missing; return how many were created.

    A batch with `run_on_startup` that is created now also starts now: the scheduler
    fired its startup triggers before the batch existed, and a newcomer should see a
    run at once rather than at the next minute."""
    created = 0
    for resource, items in (("task", TASKS), ("batch", BATCHES)):
        for item in items:
            try:
                await api.call(resource, "create", item)
                created += 1
            except Conflict:
                continue
            if resource == "batch" and item.get("run_on_startup"):
                await api.call("batch", "start", {"id": item["id"]})
    return created
