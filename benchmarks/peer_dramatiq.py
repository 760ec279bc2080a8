"""The Dramatiq side of `python -m benchmarks.throughput`: a no-op actor on a Redis broker
with the Results middleware on a Redis backend. Worker processes import this module:

    BENCH_REDIS_URL=redis://127.0.0.1:6379/0 dramatiq benchmarks.peer_dramatiq -p 2
"""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

backend = RedisBackend(url=REDIS_URL)
broker = RedisBroker(url=REDIS_URL)
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True, max_retries=0)
def noop() -> list[float]:
    """Does nothing; returns [worker pid, wall-clock time it started]."""
    return [os.getpid(), time.time()]
