"""The notifier: how long after a run ends its webhook POST arrives, and how many
deliveries a second one notifier makes.

    python -m benchmarks.notifier [--runs 300] [--rounds 3]

Each round: an embedded nats-server on a temp dir and a free port, a broker, a runner
(concurrency 8) and a notifier, all in this process, and a local HTTP receiver (a
thread) that notes when each POST arrives. `--runs` tasks with `notify: always` to the
receiver are started at once (a burst: deliveries per second), then a third as many one
every 50 ms (the latency of a delivery on a quiet system); the latency of a delivery is its arrival time minus the
execution's `finished_at` (the runner's clock, the same machine). The reference is a
bare signed POST of the same body to the same receiver from this process (urllib in a
thread, as the notifier does): what a delivery costs without NATS, rules and claims.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import nats

from broker.client import ApiClient
from broker.server import EmbeddedServer
from broker.service import ControlPlane
from broker.timestamps import parse_iso
from notifier import webhook
from notifier.service import NotifierService, NotifierSettings
from runner.service import RunnerService

ORG = "bench"
SECRET = b"benchmark-webhook-secret-0123"


class Receiver:
    """Notes (arrival time, body) of every POST."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.arrivals.append((time.time(), body))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def batchdeck_round(runs: int, spacing: float) -> dict[str, float]:
    receiver = Receiver()
    with tempfile.TemporaryDirectory(prefix="bd-notifier-bench-") as work:
        server = EmbeddedServer(Path(work) / "nats")
        await server.astart()
        nc = await nats.connect(server.url)
        plane = ControlPlane(nc, nc.jetstream())
        await plane.start()
        runner = RunnerService(await nats.connect(server.url), org=ORG, concurrency=8)
        await runner.start()
        notifier = NotifierService(await nats.connect(server.url),
                                   NotifierSettings(webhook_secrets={ORG: SECRET}, max_attempts=3))
        await notifier.start()
        try:
            api = ApiClient(nc, ORG)
            task = await api.call("task", "create", {"name": "tick", "command": ["true"],
                                                    "notify": {"on": "always", "recipients": [receiver.url]}})
            started = time.monotonic()
            if spacing:
                for _ in range(runs):
                    await api.call("task", "start", {"id": task["id"]})
                    await asyncio.sleep(spacing)
            else:
                await asyncio.gather(*(api.call("task", "start", {"id": task["id"]}) for _ in range(runs)))
            while len(receiver.arrivals) < runs and time.monotonic() - started < 120:
                await asyncio.sleep(0.05)
            elapsed = time.monotonic() - started
            latencies = []
            for arrived, body in receiver.arrivals:
                finished = msgspec.json.decode(body)["finished_at"]
                latencies.append((arrived - parse_iso(finished).timestamp()) * 1000)
            return {"delivered": len(receiver.arrivals), "seconds": elapsed, "p50_ms": _pct(latencies, 50),
                    "p95_ms": _pct(latencies, 95), "max_ms": max(latencies, default=float("nan"))}
        finally:
            await notifier.stop()
            await notifier.nc.close()
            await runner.stop()
            await runner.nc.close()
            await plane.stop()
            await nc.close()
            await server.astop()
            receiver.close()


async def bare_round(runs: int) -> dict[str, float]:
    """The same number of signed POSTs of an execution-sized body, one at a time."""
    receiver = Receiver()
    body = b'{"id":"01M8V6TXYXWE2KY0YD3HR1K6CQ","status":"succeeded","padding":"' + b"x" * 600 + b'"}'
    latencies: list[float] = []
    room = asyncio.Semaphore(1)

    def post() -> None:
        request = urllib.request.Request(receiver.url, data=body, method="POST", headers={
            "Content-Type": "application/json", webhook.SIGNATURE_HEADER: webhook.sign(SECRET, body)})
        with urllib.request.urlopen(request, timeout=10) as reply:
            reply.read()

    async def one() -> None:
        async with room:
            sent = time.time()
            await asyncio.to_thread(post)
            latencies.append((time.time() - sent) * 1000)

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(runs)))
    elapsed = time.monotonic() - started
    receiver.close()
    return {"delivered": len(receiver.arrivals), "seconds": elapsed, "p50_ms": _pct(latencies, 50),
            "p95_ms": _pct(latencies, 95), "max_ms": max(latencies)}


def _pct(values: list[float], pct: int) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def _row(label: str, result: dict[str, float]) -> str:
    rate = result["delivered"] / result["seconds"] if result["seconds"] else float("nan")
    return (f"{label:<26} {result['delivered']:>9.0f} {result['seconds']:>8.2f} {rate:>10.0f} "
            f"{result['p50_ms']:>8.1f} {result['p95_ms']:>8.1f} {result['max_ms']:>8.1f}")


async def run(args: argparse.Namespace) -> None:
    header = f"{'system':<26} {'delivered':>9} {'seconds':>8} {'per s':>10} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}"
    ours, spaced, bare = [], [], []
    for number in range(1, args.rounds + 1):
        ours.append(await batchdeck_round(args.runs, 0.0))
        spaced.append(await batchdeck_round(args.runs // 3, 0.05))
        bare.append(await bare_round(args.runs))
        print(f"round {number}\n{header}\n{_row('batchdeck, burst', ours[-1])}\n"
              f"{_row('batchdeck, 1 run / 50 ms', spaced[-1])}\n{_row('bare signed POST', bare[-1])}", flush=True)

    def median(results: list[dict[str, float]]) -> dict[str, float]:
        return {key: statistics.median(r[key] for r in results) for key in results[0]}

    ours_median, spaced_median, bare_median = median(ours), median(spaced), median(bare)
    print(f"\nmedian of {args.rounds} rounds\n{header}\n{_row('batchdeck, burst', ours_median)}\n"
          f"{_row('batchdeck, 1 run / 50 ms', spaced_median)}\n{_row('bare signed POST', bare_median)}")
    print(f"p50 latency, one run at a time: {spaced_median['p50_ms'] / bare_median['p50_ms']:.1f}x the bare "
          f"POST's ({spaced_median['p50_ms']:.1f} ms against {bare_median['p50_ms']:.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
