"""One of the three NATS nodes stopped while runs are being dispatched, then started again.

A broker and two runner processes connect with the whole server list; a client on the
two nodes that stay up keeps starting no-op runs (4 requests in flight, a short pause
after each reply; a request that times out, finds no responder or fails is sent again).
After a warm-up the node leading BD_RUNS is stopped (SIGTERM) and kept down until 30
more starts are acknowledged (and at least 2 s); then it is started again and the load
goes on for 30 starts more. Dispatch goes on while the node is down (once the streams it
led have elected new leaders); every acknowledged start has one execution, which runs
once and succeeds; the node that came back holds the same BD_RUNS, BD_EVENTS and
`bd_execs` as their leaders (the same last sequence). Each start carries the idempotency
key `start-{n}`, so a request sent again finds the execution its first try made: there
is no execution nobody was told about.

No run may end `lost`: no runner stops. Two causes made runs end `lost` here before
they were fixed: a runner's write of an execution failing for a passing JetStream error
while a stream leader moved (the runner now retries it), and a run delivered again to
the other runner while its own runner still ran it, because the consumer leader that
took over did not carry the claim renewals (the other runner now asks the runner the
execution names, `bd.{org}.ctl.runner.{id}.holds`, and leaves it to that runner).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from broker.errors import Timeout, Unavailable

pytestmark = pytest.mark.slow

IN_FLIGHT = 4
PAUSE = 0.05
REQUEST_TIMEOUT = 5.0
PHASE_STARTS = 30
"""Starts acknowledged before the stop, while the node is down, and after it is back."""
MIN_DOWN_SECONDS = 2.0
COMPARED = ("BD_RUNS", "BD_EVENTS", "KV_bd_execs")


async def test_dispatch_goes_on_while_a_node_is_down_and_the_node_catches_up(
    cluster, services, client_on, make_task, wait_for, start_load, figures
):
    await services.broker()
    await asyncio.gather(services.runner("r1", ack_wait=5), services.runner("r2", ack_wait=5))

    async def runs_leader() -> str | None:
        return cluster.nodes[0].stream_states().get("BD_RUNS", {}).get("cluster", {}).get("leader")

    victim = cluster.node(await wait_for(runs_leader, 30, 0.1, "a leader of BD_RUNS"))
    others = [node for node in cluster.nodes if node is not victim]
    client = await client_on(*others)
    task = await make_task(client, {"name": "noop", "module": "noop"})
    # Unavailable: a JetStream call found no leader while one moved (503, try again).
    load = start_load(client, task["id"], IN_FLIGHT, REQUEST_TIMEOUT, (Timeout, Unavailable), PAUSE)
    await wait_for(lambda: load.acknowledged_since(load.began, PHASE_STARTS), 120, 0.05, "the warm-up starts")
    await asyncio.to_thread(cluster.stop_node, victim)
    stopped = time.monotonic()
    await wait_for(lambda: load.acknowledged_since(stopped, PHASE_STARTS, MIN_DOWN_SECONDS), 120, 0.05,
                   f"{PHASE_STARTS} starts acknowledged with {victim.name} down")
    await asyncio.to_thread(cluster.start_node, victim)
    restarted = time.monotonic()
    await wait_for(lambda: load.acknowledged_since(restarted, PHASE_STARTS), 120, 0.05,
                   f"{PHASE_STARTS} starts acknowledged after {victim.name} is back")
    elapsed = await load.stop()
    acked_while_down = sum(1 for _, t in load.answered.values() if stopped < t <= restarted)
    resumed = min(t for sent, t in load.answered.values() if sent > stopped) - stopped
    items = await load.final_executions(services)

    async def caught_up() -> dict | None:
        if not victim.healthy():
            return None
        mine = victim.stream_states()
        leaders = {name: cluster.node(mine[name]["cluster"]["leader"]).stream_states()[name]["state"]
                   for name in COMPARED if mine.get(name, {}).get("cluster", {}).get("leader")}
        if len(leaders) < len(COMPARED):
            return None
        same = all(mine[name]["state"]["last_seq"] == leaders[name]["last_seq"] for name in COMPARED)
        return {name: mine[name]["state"]["last_seq"] for name in COMPARED} if same else None

    last_seqs = await wait_for(caught_up, 60, 0.2, f"{victim.name} holding the same streams as the leaders")
    catch_up = time.monotonic() - restarted

    # In: every acknowledged start. Out: its execution, final, once; nothing else but
    # what a request that was sent again left behind.
    starts = len(load.acked)
    by_id = {e["id"]: e for e in items}
    retried = load.retried_starts
    extras = [e for e in items if e["id"] not in set(load.acked.values())]
    outcomes = Counter(by_id[i]["status"] for i in load.acked.values() if i in by_id)
    attempts = Counter(by_id[i]["attempt"] for i in load.acked.values() if i in by_id)
    figures.add(f"{starts} starts (no-op runs, 2 runners, {IN_FLIGHT} requests in flight) in {elapsed:.1f} s; "
                f"{victim.name} (BD_RUNS leader) stopped for {restarted - stopped:.1f} s: the first start sent "
                f"after the stop was acknowledged {resumed:.2f} s after it, {acked_while_down} acknowledged while "
                f"it was down; outcomes {dict(outcomes)}, attempts {dict(sorted(attempts.items()))}; "
                f"{len(retried)} requests sent again ({dict(load.failures)}), {len(extras)} executions nobody was told "
                f"about ({dict(Counter(e['status'] for e in extras))}); the restarted node held the leaders' last "
                f"sequences {last_seqs} {catch_up:.1f} s after its start")
    assert len(set(load.acked.values())) == starts
    assert set(load.acked.values()) <= set(by_id), "an acknowledged start has no execution"
    assert extras == [], "an execution nobody was told about"
    for n, execution_id in load.acked.items():
        assert by_id[execution_id]["context"] == {"n": n}, by_id[execution_id]
    dropped = [by_id[i] for i in load.acked.values() if by_id[i]["status"] != "succeeded"]
    assert not dropped, [(e["id"], e["status"], e["runner_id"], e["error"]) for e in dropped]
    assert set(attempts) == {1}, attempts
