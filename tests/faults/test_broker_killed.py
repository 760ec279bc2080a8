"""A broker process killed with SIGKILL while starts are being requested, on the 3-node
cluster, with a second broker serving beside it.

The client and broker b1 are on node nats-1, broker b2 on nats-2. NATS hands a request
to a queue subscriber on the requester's own server when there is one, so b1 answers
every start until it dies, and b2 answers the rest. The client keeps 8 `task.start`
requests in flight, each tagged with its number in the run's context and sent with the
idempotency key `start-{n}`; a request that times out or finds no responder is sent
again with the same key. Once 60 starts are acknowledged, b1 is frozen (SIGSTOP) until a
request has waited on it for a second, so that the SIGKILL that follows certainly finds
requests in its hands (a broker answers in milliseconds, and a kill at a random moment
found none in one run of many); the load goes on for 60 more acknowledged starts.

Then every start has exactly one execution, which runs once and succeeds, including
the starts the killed broker held: whatever it had done with one (nothing, the
execution written, or written and enqueued), the request sent again with its key found
or finished that work instead of starting a second run, and no execution is left that
nobody was told about.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import defaultdict

import pytest

from broker.errors import Timeout, Unavailable

pytestmark = pytest.mark.slow

PHASE_STARTS = 60
"""Starts acknowledged before the kill, and after it."""
IN_FLIGHT = 8
REQUEST_TIMEOUT = 5.0
HELD_FOR = 1.0
"""Seconds a request waits on the frozen broker before it is killed."""


async def test_every_start_has_exactly_one_execution_when_a_broker_dies(
    cluster, services, client_on, make_task, wait_for, start_load, figures
):
    nats_1, nats_2, _ = cluster.nodes
    b1 = await services.broker("b1", url=nats_1.url)
    await asyncio.gather(services.broker("b2", url=nats_2.url), services.runner("r1", concurrency=8, ack_wait=5))
    client = await client_on(nats_1)
    task = await make_task(client, {"name": "noop", "module": "noop"})

    # Timeout: the broker holding it died; Unavailable: none answers yet.
    load = start_load(client, task["id"], IN_FLIGHT, REQUEST_TIMEOUT, (Timeout, Unavailable))
    await wait_for(lambda: load.acknowledged_since(load.began, PHASE_STARTS), 120, 0.02, f"{PHASE_STARTS} starts")
    b1.process.send_signal(signal.SIGSTOP)

    async def held_by_b1() -> bool:
        load.check()
        return any(time.monotonic() - t > HELD_FOR for t in list(load.waiting.values()))

    await wait_for(held_by_b1, 30, 0.05, "a start request waiting on the frozen broker b1")
    b1.kill()
    killed = time.monotonic()
    await wait_for(lambda: load.acknowledged_since(killed, PHASE_STARTS), 120, 0.05,
                   f"{PHASE_STARTS} starts acknowledged after the kill")
    elapsed = await load.stop()
    items = await load.final_executions(services)

    # In: the starts, each acknowledged in the end. Out: one execution per start, the
    # acknowledged one, run once and succeeded; no other.
    starts = len(load.acked)
    by_id = {e["id"]: e for e in items}
    for n, execution_id in load.acked.items():
        execution = by_id[execution_id]
        assert execution["context"] == {"n": n}, execution
        assert (execution["status"], execution["attempt"]) == ("succeeded", 1), execution
    per_start: dict[int, list[str]] = defaultdict(list)
    for execution in items:
        per_start[execution["context"]["n"]].append(execution["id"])
    assert {n: ids for n, ids in per_start.items() if len(ids) != 1} == {}, "a start with more than one execution"
    assert set(per_start) == set(load.acked) and len(items) == starts
    retried = load.retried_starts
    assert retried, "no request was in flight at the killed broker"  # held_by_b1 saw one: it must be sent again
    answered = max(load.answered[n][1] for n in retried) - killed
    figures.add(f"{starts} starts, {IN_FLIGHT} in flight, in {elapsed:.1f} s; the broker serving them killed "
                f"after {PHASE_STARTS}: {len(retried)} requests it held got no answer and were sent again with "
                f"their idempotency keys ({dict(load.failures)}), all answered by the other broker within "
                f"{answered:.1f} s of the kill; {starts} executions for {starts} starts, each succeeded once")
