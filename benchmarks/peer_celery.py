"""The Celery side of `python -m benchmarks.throughput`: a no-op task on a Redis broker
with a Redis result backend. Worker processes import this module:

    BENCH_REDIS_URL=redis://127.0.0.1:6379/0 celery -A benchmarks.peer_celery worker -c 2
"""

from __future__ import annotations

import os
import time

from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("batchdeck_bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop() -> list[float]:
    """Does nothing; returns [worker pid, wall-clock time it started]."""
    return [os.getpid(), time.time()]
