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
import itertools
import signal
import time
from collections import Counter, defaultdict

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
    cluster, services, client_on, make_task, wait_for, list_executions, figures
):
    nats_1, nats_2, _ = cluster.nodes
    b1 = await services.broker("b1", url=nats_1.url)
    await asyncio.gather(services.broker("b2", url=nats_2.url), services.runner("r1", concurrency=8, ack_wait=5))
    client = await client_on(nats_1)
    task = await make_task(client, {"name": "noop", "module": "noop"})

    acked: dict[int, str] = {}
    acked_at: dict[int, float] = {}
    tries: Counter[int] = Counter()
    sent_at: dict[int, float] = {}  # requests not answered yet: when the current try went out
    failures: Counter[str] = Counter()
    numbers = itertools.count()
    stop_load = asyncio.Event()

    async def requester() -> None:
        while not stop_load.is_set():
            n = next(numbers)
            while True:
                tries[n] += 1
                sent_at[n] = time.monotonic()
                try:
                    reply = await client.call("task", "start", {"id": task["id"], "context": {"n": n},
                                                                "idempotency_key": f"start-{n}"},
                                              timeout=REQUEST_TIMEOUT)
                except (Timeout, Unavailable) as err:  # the broker holding it died, or none answers yet
                    failures[f"{err.code} {err.message[:50]}"] += 1
                    await asyncio.sleep(0.1)
                    continue
                finally:
                    del sent_at[n]
                acked[n] = reply["execution_id"]
                acked_at[n] = time.monotonic()
                break

    async def acknowledged_since(moment: float, count: int) -> bool:
        if load.done():
            load.result()  # a requester failed: say why
        return sum(1 for t in acked_at.values() if t > moment) >= count

    began = time.monotonic()
    load = asyncio.gather(*(requester() for _ in range(IN_FLIGHT)))
    await wait_for(lambda: acknowledged_since(began, PHASE_STARTS), 120, 0.02, f"{PHASE_STARTS} starts")
    b1.process.send_signal(signal.SIGSTOP)

    async def held_by_b1() -> bool:
        if load.done():
            load.result()
        return any(time.monotonic() - t > HELD_FOR for t in list(sent_at.values()))

    await wait_for(held_by_b1, 30, 0.05, "a start request waiting on the frozen broker b1")
    b1.kill()
    killed = time.monotonic()
    await wait_for(lambda: acknowledged_since(killed, PHASE_STARTS), 120, 0.05,
                   f"{PHASE_STARTS} starts acknowledged after the kill")
    stop_load.set()
    await asyncio.wait_for(load, 120)
    elapsed = time.monotonic() - began

    async def acked_final() -> list[dict] | None:
        items = await list_executions(client)
        by_id = {e["id"]: e for e in items}
        pending = [i for i in acked.values() if by_id.get(i, {}).get("status") in (None, "queued", "running")]
        if pending and all(by_id.get(i, {}).get("status") == "queued" for i in pending):
            services.fail_if_dropped(pending)
        return items if not pending else None

    items = await wait_for(acked_final, 120, 0.2, "every acknowledged start's run final")

    # In: the starts, each acknowledged in the end. Out: one execution per start, the
    # acknowledged one, run once and succeeded; no other.
    starts = len(acked)
    by_id = {e["id"]: e for e in items}
    for n, execution_id in acked.items():
        execution = by_id[execution_id]
        assert execution["context"] == {"n": n}, execution
        assert (execution["status"], execution["attempt"]) == ("succeeded", 1), execution
    per_start: dict[int, list[str]] = defaultdict(list)
    for execution in items:
        per_start[execution["context"]["n"]].append(execution["id"])
    assert {n: ids for n, ids in per_start.items() if len(ids) != 1} == {}, "a start with more than one execution"
    assert set(per_start) == set(acked) and len(items) == starts
    retried = {n for n, count in tries.items() if count > 1}
    assert retried, "no request was in flight at the killed broker"  # held_by_b1 saw one: it must be sent again
    answered = max(acked_at[n] for n in retried) - killed
    figures.add(f"{starts} starts, {IN_FLIGHT} in flight, in {elapsed:.1f} s; the broker serving them killed "
                f"after {PHASE_STARTS}: {len(retried)} requests it held got no answer and were sent again with "
                f"their idempotency keys ({dict(failures)}), all answered by the other broker within "
                f"{answered:.1f} s of the kill; {starts} executions for {starts} starts, each succeeded once")
