"""Control-plane benchmark: how fast `batchdeck up` is ready, and how many API calls per
second one broker instance answers.

    python benchmarks/bench_control_plane.py [--rounds 5] [--starts 2000] [--in-flight 64]

Each round starts a fresh `batchdeck up --headless` on a temp data dir and a free port,
times spawn -> first successful `task.list` reply, then with one nats-py client creates
a task and fires `--starts` `task.start` requests with `--in-flight` outstanding,
then the same count of `task.get`. Prints each round and the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time

import nats

from broker.client import ApiClient
from broker.errors import ApiError
from broker.server import free_port


async def _quiet(_: Exception) -> None:
    pass  # refused connections while the server starts are expected


async def _wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            nc = await nats.connect(url, max_reconnect_attempts=1, connect_timeout=1, reconnect_time_wait=0.05,
                                    error_cb=_quiet)
        except Exception:
            await asyncio.sleep(0.01)
            continue
        try:
            await ApiClient(nc, "bench").call("task", "list", {}, timeout=1)
            return
        except ApiError:
            await asyncio.sleep(0.01)
        finally:
            await nc.close()
    raise RuntimeError("batchdeck up did not answer in time")


async def _load(api: ApiClient, verb: str, body: dict, count: int, in_flight: int) -> tuple[float, list[float]]:
    """Requests per second and per-request latencies (ms)."""
    slots = asyncio.Semaphore(in_flight)
    latencies: list[float] = []

    async def one() -> None:
        async with slots:
            started = time.perf_counter()
            await api.call("task", verb, body)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return count / (time.perf_counter() - started), latencies


async def round_(starts: int, in_flight: int) -> dict[str, float]:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data_dir:
        spawned = time.perf_counter()
        up = subprocess.Popen(
            [sys.executable, "-m", "batchdeck", "up", "--headless", "--data-dir", data_dir, "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            await _wait_ready(url)
            ready_s = time.perf_counter() - spawned
            nc = await nats.connect(url)
            api = ApiClient(nc, "bench")
            task = await api.call("task", "create", {"name": "noop", "command": ["true"]})
            start_rate, start_lat = await _load(api, "start", {"id": task["id"]}, starts, in_flight)
            get_rate, get_lat = await _load(api, "get", {"id": task["id"]}, starts, in_flight)
            await nc.close()
        finally:
            up.terminate()
            up.wait(30)
    return {
        "ready_s": ready_s,
        "start_per_s": start_rate,
        "start_p50_ms": statistics.median(start_lat),
        "start_p99_ms": statistics.quantiles(start_lat, n=100)[98],
        "get_per_s": get_rate,
        "get_p50_ms": statistics.median(get_lat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--starts", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=64)
    args = parser.parse_args()
    results = []
    for number in range(1, args.rounds + 1):
        result = asyncio.run(round_(args.starts, args.in_flight))
        results.append(result)
        print(f"round {number}: " + "  ".join(f"{k}={v:.3f}" if k.endswith("_s") else f"{k}={v:.1f}" for k, v in result.items()))
    print("median:  " + "  ".join(
        f"{k}={statistics.median(r[k] for r in results):.3f}" if k.endswith("_s")
        else f"{k}={statistics.median(r[k] for r in results):.1f}" for k in results[0]
    ))


if __name__ == "__main__":
    main()
