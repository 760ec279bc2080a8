"""A noisy tenant and a quiet one: what org B sees of the history while org A floods its
log and storms the store with queries.

    python -m benchmarks.noisy [--rounds 3] [--seconds 20] [--queries 12] [--flood-lines 70000]

A nats-server, a broker, a store and one runner per org, each a process of its own
(the store's RSS is its own). Each round has a quiet phase and a noisy one of
`--seconds` each; in both, org B in a loop:
- `history.sql` `SELECT 1` and `exec.logs` of one of its runs (one after the other,
  50 ms apart): the latency of each;
- every second, a start of a one-line run: the time from its start to its row in the
  history (`executions`, `succeeded`).
In the noisy phase, org A at the same time:
- runs, again and again, a task that prints `--flood-lines` lines of 16 000 characters
  (1.1 GB offered each with the default);
- keeps `--queries` queries of 10 s in flight (each sent again as soon as it is answered;
  the store answers most of them 429).
Printed per round and as medians over the rounds: B's p50/p99 per kind in each phase and
their ratio, B's start-to-history p50/max, what A's floods kept and dropped, A's queries
answered and refused, and the store's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats

from benchmarks.common import Children, run_with_children, wait_for_line
from broker.client import ApiClient
from broker.errors import ApiError
from broker.server import EmbeddedServer

A, B = "noisy", "quiet"
FOREVER = ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 1000000000000) "
           "SELECT count(*) FROM r")
FLOOD = "import sys\nline = 'x' * 16000 + '\\n'\nfor _ in range({lines}): sys.stdout.write(line)"


@dataclass
class Phase:
    select: list[float] = field(default_factory=list)
    logs: list[float] = field(default_factory=list)
    to_history: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class Noise:
    floods: list[dict[str, Any]] = field(default_factory=list)
    answered: int = 0
    refused: int = 0
    other: list[str] = field(default_factory=list)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def rss_mb(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return int(text.split("VmRSS:")[1].split()[0]) / 1024


async def quiet_org(api: ApiClient, task_id: str, log_of: str, seconds: float) -> Phase:
    """B's requests and runs for `seconds`."""
    phase = Phase()
    stop = time.monotonic() + seconds

    async def ask() -> None:
        while time.monotonic() < stop:
            for kind, resource, verb, body in (("select", "history", "sql", {"sql": "SELECT 1"}),
                                               ("logs", "exec", "logs", {"id": log_of})):
                started = time.monotonic()
                try:
                    await api.call(resource, verb, body)
                    getattr(phase, kind).append(time.monotonic() - started)
                except ApiError as err:
                    phase.errors.append(f"{kind}: {err.code}")
            await asyncio.sleep(0.05)

    async def runs() -> None:
        while time.monotonic() < stop:
            started = time.monotonic()
            try:
                execution_id = (await api.call("task", "start", {"id": task_id}))["execution_id"]
                while time.monotonic() - started < 30:
                    rows = (await api.call("history", "sql", {
                        "sql": "SELECT 1 FROM executions WHERE id = ? AND status = 'succeeded'",
                        "params": [execution_id]}))["rows"]
                    if rows:
                        phase.to_history.append(time.monotonic() - started)
                        break
                    await asyncio.sleep(0.05)
            except ApiError as err:
                phase.errors.append(f"run: {err.code}")
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))

    await asyncio.gather(ask(), runs())
    return phase


async def noisy_org(api: ApiClient, flood_task: str, queries: int, seconds: float) -> Noise:
    """A's floods and query storm for `seconds`."""
    noise = Noise()
    stop = time.monotonic() + seconds

    async def flood() -> None:
        while time.monotonic() < stop:
            execution_id = (await api.call("task", "start", {"id": flood_task}))["execution_id"]
            while True:
                execution = await api.call("exec", "get", {"id": execution_id})
                if execution["status"] not in ("queued", "running"):
                    noise.floods.append(execution)
                    break
                await asyncio.sleep(0.2)

    async def storm() -> None:
        while time.monotonic() < stop:
            try:
                await api.call("history", "sql", {"sql": FOREVER}, timeout=30)
                noise.answered += 1
            except ApiError as err:
                if err.code == 429:
                    noise.refused += 1
                    await asyncio.sleep(0.1)
                elif err.code == 400 and "ran longer" in err.message:
                    noise.answered += 1
                else:
                    noise.other.append(f"{err.code} {err.message[:80]}")

    await asyncio.gather(flood(), *(storm() for _ in range(queries)))
    return noise


async def one_round(url: str, store_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    nc = await nats.connect(url, max_reconnect_attempts=-1)
    try:
        a, b = ApiClient(nc, A, timeout=30), ApiClient(nc, B, timeout=30)
        quick = await b.call("task", "create", {"name": "quick", "command": ["echo", "quick"]})
        flood = await a.call("task", "create", {"name": "flood", "command": [
            sys.executable, "-c", FLOOD.format(lines=args.flood_lines)]})
        log_of = (await b.call("task", "start", {"id": quick["id"]}))["execution_id"]
        await asyncio.sleep(2.0)  # its lines reach the history
        quiet = await quiet_org(b, quick["id"], log_of, args.seconds)
        peak = [rss_mb(store_pid)]

        async def sample() -> None:
            while True:
                peak.append(rss_mb(store_pid))
                await asyncio.sleep(0.2)

        sampler = asyncio.ensure_future(sample())
        try:
            noise_task = asyncio.ensure_future(noisy_org(a, flood["id"], args.queries, args.seconds))
            await asyncio.sleep(1.0)  # the storm is on
            noisy = await quiet_org(b, quick["id"], log_of, args.seconds - 1.0)
            noise = await noise_task
        finally:
            sampler.cancel()
        return {"quiet": quiet, "noisy": noisy, "noise": noise, "rss_mb": max(peak)}
    finally:
        await nc.close()


def print_round(n: int, result: dict[str, Any]) -> None:
    quiet, noisy, noise = result["quiet"], result["noisy"], result["noise"]
    print(f"round {n}")
    for kind in ("select", "logs"):
        q99, n99 = pct(getattr(quiet, kind), 0.99), pct(getattr(noisy, kind), 0.99)
        print(f"  B {kind:7} quiet p50 {pct(getattr(quiet, kind), 0.5) * 1000:7.1f} ms p99 {q99 * 1000:7.1f} ms | "
              f"noisy p50 {pct(getattr(noisy, kind), 0.5) * 1000:7.1f} ms p99 {n99 * 1000:7.1f} ms "
              f"({len(getattr(noisy, kind))} requests, p99 x{n99 / q99:.1f})")
    print(f"  B start->history quiet p50 {pct(quiet.to_history, 0.5):.2f} s max {max(quiet.to_history or [0]):.2f} s"
          f" | noisy p50 {pct(noisy.to_history, 0.5):.2f} s max {max(noisy.to_history or [0]):.2f} s "
          f"({len(noisy.to_history)} runs); B errors: {noisy.errors[:5] or 'none'}")
    kept = [f["log_dropped_lines"] for f in noise.floods]
    print(f"  A floods {len(noise.floods)}: {[f['status'] for f in noise.floods]}, dropped lines {kept}; "
          f"queries answered {noise.answered}, refused 429 {noise.refused}, other {noise.other[:3] or 'none'}")
    print(f"  store peak RSS {result['rss_mb']:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--queries", type=int, default=12)
    parser.add_argument("--flood-lines", type=int, default=70_000)
    args = parser.parse_args()

    def body(children: Children, work: Path) -> None:
        children.server = EmbeddedServer(work / "nats")
        url = children.server.start()
        python = [sys.executable, "-m", "batchdeck"]
        broker = children.spawn([*python, "broker", "--nats", url], work / "broker.log")
        asyncio.run(wait_for_line(broker, work / "broker.log", re.compile(rb"broker serving")))
        store = children.spawn([*python, "store", "--nats", url, "--db", str(work / "h.duckdb")], work / "store.log")
        runners = [children.spawn([*python, "runner", "--nats", url, "--org", org, "--name", f"{org}-1"],
                                  work / f"runner-{org}.log") for org in (A, B)]
        asyncio.run(wait_for_line(store, work / "store.log", re.compile(rb"store: history in")))
        for org, runner in zip((A, B), runners, strict=True):
            asyncio.run(wait_for_line(runner, work / f"runner-{org}.log", re.compile(rf"runner {org}-1 serving".encode())))
        results = []
        for n in range(1, args.rounds + 1):
            results.append(asyncio.run(one_round(url, store.pid, args)))
            print_round(n, results[-1])
        print(f"median of {len(results)} rounds")
        for kind in ("select", "logs"):
            quiet = statistics.median(pct(getattr(r["quiet"], kind), 0.99) for r in results)
            noisy = statistics.median(pct(getattr(r["noisy"], kind), 0.99) for r in results)
            print(f"  B {kind:7} p99 quiet {quiet * 1000:.1f} ms, noisy {noisy * 1000:.1f} ms (x{noisy / quiet:.1f})")
        print(f"  B start->history noisy p50 {statistics.median(pct(r['noisy'].to_history, 0.5) for r in results):.2f}"
              f" s, max {max(max(r['noisy'].to_history or [0]) for r in results):.2f} s")
        print(f"  store peak RSS {max(r['rss_mb'] for r in results):.0f} MB")

    run_with_children("bd-noisy-", body)


if __name__ == "__main__":
    main()
