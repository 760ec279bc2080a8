"""Scheduler lag: how late batchdeck's scheduler publishes the ticks of N cron batches,
and how late APScheduler 3.x runs the same schedules, measured in the same run.

    python -m benchmarks.scheduler [--batches 10000] [--seconds 60] [--rounds 3] [--no-peer]

Setup (once): an embedded nats-server on a temp dir and a free port; a ControlPlane in
this process provisions the streams and creates one task and N enabled batches with a
mixed set of schedules (`schedule_mix`), then stops, and the broker's trigger consumer
is deleted: nothing turns triggers into executions, they pile up in BD_TRIGGERS
(purged every round). What is measured is the scheduler alone.

Each round:
- batchdeck: `python -m batchdeck scheduler --nats URL` starts (a fresh replica every
  round), and once it logs "... N batches scheduled ..." the benchmark subscribes
  (core NATS) to `bd.*.trigger.*` and measures a window of `--seconds` starting on a
  whole second. Per trigger: fired lag = `fired_at - scheduled_at` (the scheduler's own
  stamps, ms precision) and receive lag = arrival at the benchmark - `scheduled_at`.
- APScheduler: `python -m benchmarks.peer_apscheduler` (AsyncIOScheduler, one cron job
  per batch, same timezones) whose job publishes a trigger of the same shape with a
  core NATS publish on `apsbench.trigger.*`; measured the same way.

Triggers scheduled inside the window are matched against the fire times computed with
`broker.schedule.fire_times`, so a missing, extra or duplicated tick shows. CPU (from
/proc) is the scheduler process's CPU time during the window; peak RSS is its VmHWM.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import json
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec
import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from benchmarks.common import (Children, count_functions, cpu_seconds, read_samples, run_with_children,
                               wait_for_line)
from broker import streams, subjects
from broker.client import ApiClient
from broker.schedule import fire_times, normalize_cron
from broker.server import EmbeddedServer
from broker.service import TRIGGER_CONSUMER, ControlPlane

ORG = subjects.DEFAULT_ORG
ZONES = ("Europe/Berlin", "America/New_York", "Asia/Tokyo")
PEER_SUBJECTS = "apsbench.trigger.*"
CREATE_IN_FLIGHT = 200
START_DELAY = 2.0
"""Seconds at least between "loaded" and the window's start (rounded up to a whole second)."""
GRACE_SECONDS = 5.0
"""How long after the window a tick scheduled inside it may still arrive."""
TARGET_P99_MS = 50.0
READY_LINE = re.compile(rb"scheduler \S+: epoch \d+.*?, (\d+) batches scheduled, (\d+) missed ticks fired")


# ---- the schedules -------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    id: str
    group: str
    cron: str  # as stored on the batch (macros kept)
    timezone: str


def schedule_mix(count: int, rng: random.Random) -> list[Spec]:
    """`count` schedules: 40% once a minute at a random second (6 fields), 25% every N
    seconds (6 fields, plain `*/N` and offset `o/N`), 25% 5-field minute schedules
    (every 2 and 5 minutes, hourly at minute M: second 0 of a minute, the bursts), 10%
    hourly, daily and weekly ones (a quarter of them macros) in Berlin, New York and
    Tokyo. The README lists the exact forms."""
    sizes = [round(count * 0.40), round(count * 0.25), round(count * 0.25)]
    sizes.append(count - sum(sizes))
    crons: list[tuple[str, str, str]] = []
    for _ in range(sizes[0]):
        crons.append(("second", f"{rng.randrange(60)} * * * * *", "UTC"))
    for i in range(sizes[1]):
        if i % 2 == 0:
            seconds = f"*/{(5, 10, 15, 30)[i // 2 % 4]}"
        else:
            step = (10, 15, 30)[i // 2 % 3]
            seconds = f"{rng.randrange(1, step)}/{step}"
        crons.append(("every-n-s", f"{seconds} * * * * *", "UTC"))
    for i in range(sizes[2]):
        # `*/2` and `*/5` with their shifted twins (`1-59/2`, `1-59/5` ... `4-59/5`) in equal
        # numbers: every minute's second-0 burst is the same size, so every window (and
        # both systems) sees the same load whichever minute it covers.
        minute = (f"{'*' if i // 3 % 2 == 0 else '1-59'}/2",
                  str(rng.randrange(60)),
                  f"{'*' if i // 3 % 5 == 0 else f'{i // 3 % 5}-59'}/5")[i % 3]
        crons.append(("minute", f"{minute} * * * *", "UTC"))
    for i in range(sizes[3]):
        tz, kind, macro = ZONES[i % 3], i // 3 % 3, i % 4 == 0
        minute, hour, weekday = rng.randrange(60), rng.randrange(24), rng.randrange(7)
        if macro:
            cron = ("@hourly", "@daily", "@weekly")[kind]
        else:
            cron = (f"{minute} * * * *", f"{minute} {hour} * * *", f"{minute} {hour} * * {weekday}")[kind]
        crons.append(("hour/day/week", cron, tz))
    rng.shuffle(crons)
    return [Spec(f"bench-{i:05d}", group, cron, tz) for i, (group, cron, tz) in enumerate(crons)]


def describe_mix(specs: list[Spec]) -> str:
    counts = Counter(spec.group for spec in specs)
    return ", ".join(f"{counts[g]} {g}" for g in ("second", "every-n-s", "minute", "hour/day/week"))


def expected_ticks(specs: list[Spec], start: float, end: float) -> dict[tuple[str, int], None]:
    """(batch id, epoch ms) of every fire time in [start, end), in time order per batch."""
    after = datetime.fromtimestamp(start, timezone.utc) - timedelta(milliseconds=1)
    expected: dict[tuple[str, int], None] = {}
    for spec in specs:
        for at in fire_times(spec.cron, spec.timezone, after):
            ms = round(at.timestamp() * 1000)
            if ms >= end * 1000:
                break
            expected[(spec.id, ms)] = None
    return expected


# ---- processes -----------------------------------------------------------------------


def _peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set, in MB."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Profile:
    """`py-spy record --gil --nonblocking` of one process for a fixed time."""

    def __init__(self, pid: int, seconds: float, path: Path) -> None:
        binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.process = subprocess.Popen(
            [binary, "record", "--gil", "--nonblocking", "--rate", "100", "--format", "raw", "--pid", str(pid),
             "--duration", str(math.ceil(seconds)), "--output", str(path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait(self) -> None:
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def summarize_profile(path: Path, top: int = 12) -> str:
    """Top functions by self and by inclusive samples of a py-spy raw profile."""
    samples = read_samples(path)
    if samples is None:
        return f"  (no profile at {path})"
    total, self_time, inclusive = count_functions(samples)
    if not total:
        return "  (no samples)"
    boring = ("asyncio/", "runpy.py", "<module>", "batchdeck/cli.py", "batchdeck/__main__.py", "supervisor.py")
    out = [f"  {total} samples at 100/s holding the GIL (Python CPU time)", "  self:"]
    out += [f"    {n * 100 / total:5.1f}%  {name}" for name, n in self_time.most_common(top)]
    out.append("  inclusive (event loop and entry points left out):")
    ranked = [(name, n) for name, n in inclusive.most_common() if not any(b in name for b in boring)]
    out += [f"    {n * 100 / total:5.1f}%  {name}" for name, n in ranked[:top]]
    return "\n".join(out)


# ---- measuring -----------------------------------------------------------------------


class _Trigger(msgspec.Struct):
    batch_id: str
    scheduled_at: str
    fired_at: str | None = None
    source: str = "cron"


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()  # Python >= 3.11 reads the trailing Z


@dataclass
class Result:
    system: str
    ticks: int = 0  # distinct expected ticks received
    expected: int = 0
    missing: int = 0
    extra: int = 0  # ticks scheduled in the window that no schedule has
    duplicates: int = 0
    fire_lag: list[float] = field(default_factory=list)  # ms
    recv_lag: list[float] = field(default_factory=list)  # ms
    cpu: float = 0.0  # CPU seconds in the window
    seconds: float = 0.0
    server_cpu: float = 0.0
    peak_rss_mb: float = float("nan")
    startup: float = 0.0  # spawn -> every schedule loaded, s
    burst: int = 0  # most ticks scheduled in one second
    burst_at: str = ""
    burst_max_ms: float = float("nan")  # the latest of them, receive lag
    notes: list[str] = field(default_factory=list)

    def stats(self) -> dict[str, float]:
        return {
            "ticks": self.ticks, "expected": self.expected, "missing": self.missing, "extra": self.extra,
            "dup": self.duplicates,
            "fire_p50": _pct(self.fire_lag, 50), "fire_p99": _pct(self.fire_lag, 99), "fire_max": _max(self.fire_lag),
            "recv_p50": _pct(self.recv_lag, 50), "recv_p99": _pct(self.recv_lag, 99), "recv_max": _max(self.recv_lag),
            "cpu_s": self.cpu / self.seconds if self.seconds else float("nan"),
            "cpu_tick": self.cpu * 1000 / self.ticks if self.ticks else float("nan"),
            "rss": self.peak_rss_mb,
        }


def _pct(values: list[float], pct: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1 or pct == 50:
        return statistics.median(values)
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def _max(values: list[float]) -> float:
    return max(values) if values else float("nan")


class Collector:
    """Every message of a core subscription with its arrival time (decoded later)."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, bytes]] = []

    async def on_msg(self, msg) -> None:
        self.rows.append((time.time(), msg.data))


async def measure(nc: Client, subject: str, pid: int, server_pid: int, seconds: float, label: str,
                  profile: Path | None = None) -> tuple[Result, float, Collector]:
    """Subscribe, measure one window of `seconds` from the next whole second, wait the
    grace time; return the partly filled Result, the window start and the messages."""
    collector = Collector()
    sub = await nc.subscribe(subject, cb=collector.on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)
    await nc.flush()
    start = float(math.ceil(time.time() + START_DELAY))
    await asyncio.sleep(start - time.time())
    before = (cpu_seconds(pid), cpu_seconds(server_pid))
    profiler = Profile(pid, seconds, profile) if profile is not None else None
    await asyncio.sleep(start + seconds - time.time())
    after = (cpu_seconds(pid), cpu_seconds(server_pid))
    result = Result(label, seconds=seconds, peak_rss_mb=_peak_rss_mb(pid))
    if None in before or None in after:
        result.notes.append("process exited during the window")
    else:
        result.cpu, result.server_cpu = after[0] - before[0], after[1] - before[1]
    await asyncio.sleep(GRACE_SECONDS)
    await sub.unsubscribe()
    if profiler is not None:
        profiler.wait()
        result.notes.append(f"profiled: {profile}")
    return result, start, collector


def analyse(result: Result, collector: Collector, specs: list[Spec], start: float, seconds: float) -> Result:
    expected = expected_ticks(specs, start, start + seconds)
    decode = msgspec.json.Decoder(_Trigger).decode
    seen: set[tuple[str, int]] = set()
    outside = bad = 0
    sources: Counter[str] = Counter()
    per_second: dict[int, list[float]] = defaultdict(list)
    for received, data in collector.rows:
        try:
            trigger = decode(data)
            scheduled = _epoch(trigger.scheduled_at)
            fired = _epoch(trigger.fired_at) if trigger.fired_at else None
        except (msgspec.DecodeError, ValueError):
            bad += 1
            continue
        if not start <= scheduled < start + seconds:
            outside += 1
            continue
        key = (trigger.batch_id, round(scheduled * 1000))
        if key in seen:
            result.duplicates += 1
            continue
        seen.add(key)
        if key not in expected:
            result.extra += 1
            continue
        sources[trigger.source] += 1
        if fired is not None:
            result.fire_lag.append((fired - scheduled) * 1000)
        result.recv_lag.append((received - scheduled) * 1000)
        per_second[int(scheduled)].append((received - scheduled) * 1000)
    result.expected = len(expected)
    result.ticks = len(seen) - result.extra
    result.missing = result.expected - result.ticks
    scheduled_per_second = Counter(ms // 1000 for _, ms in expected)
    if scheduled_per_second:
        second, result.burst = scheduled_per_second.most_common(1)[0]
        result.burst_at = datetime.fromtimestamp(second, timezone.utc).strftime("%H:%M:%S")
        result.burst_max_ms = _max(per_second.get(second, []))
    if outside:
        result.notes.append(f"{outside} triggers scheduled outside the window (before it, or in the grace time) "
                            "ignored")
    if bad:
        result.notes.append(f"{bad} undecodable messages")
    if set(sources) - {"cron"}:
        result.notes.append("sources: " + ", ".join(f"{n} {s}" for s, n in sources.items()))
    return result


# ---- rounds --------------------------------------------------------------------------


async def provision(url: str, specs: list[Spec]) -> float:
    """Streams, one task and the batches, through the API of an in-process ControlPlane
    that is stopped afterwards; its trigger consumer is deleted. Returns seconds taken."""
    began = time.monotonic()
    nc = await nats.connect(url, name="bench-setup")
    plane = ControlPlane(nc, nc.jetstream())
    await plane.start()
    try:
        api = ApiClient(nc, ORG, timeout=60.0)
        task = await api.call("task", "create", {"name": "bench-true", "command": ["true"]})
        for first in range(0, len(specs), CREATE_IN_FLIGHT):
            await asyncio.gather(*(api.call("batch", "create", {
                "id": spec.id, "name": spec.id, "cron_expression": spec.cron, "timezone": spec.timezone,
                "is_enabled": True, "run_on_startup": False, "actions": [{"task_id": task["id"]}],
            }) for spec in specs[first:first + CREATE_IN_FLIGHT]))
    finally:
        await plane.stop()
    try:
        await nc.jetstream().delete_consumer(streams.TRIGGERS, TRIGGER_CONSUMER)
    except NotFoundError:
        pass
    await nc.close()
    return time.monotonic() - began


async def batchdeck_round(nc: Client, js: JetStreamContext, url: str, specs: list[Spec], args: argparse.Namespace,
                          children: Children, work: Path, number: int, profile: Path | None) -> Result:
    await js.purge_stream(streams.TRIGGERS)
    log = work / f"scheduler-{number}.log"
    spawned = time.monotonic()
    process = children.spawn([sys.executable, "-m", "batchdeck", "scheduler", "--nats", url], log)
    try:
        ready = await wait_for_line(process, log, READY_LINE)
        startup = time.monotonic() - spawned
        result, start, collector = await measure(nc, "bd.*.trigger.*", process.pid, children.server.process.pid,
                                                 args.seconds, "batchdeck", profile)
    finally:
        children.stop(process)
    await js.purge_stream(streams.TRIGGERS)
    result.startup = startup
    loaded, missed = int(ready.group(1)), int(ready.group(2))
    result.notes.insert(0, f"{loaded} batches loaded, {missed} missed ticks fired on start")
    if loaded != len(specs):
        result.notes.append(f"WARNING: {len(specs)} batches were created")
    return analyse(result, collector, specs, start, args.seconds)


async def peer_round(nc: Client, url: str, specs: list[Spec], specs_file: Path, args: argparse.Namespace,
                     children: Children, work: Path, number: int, profile: Path | None) -> Result:
    out = work / f"apscheduler-{number}.log"
    spawned = time.monotonic()
    process = children.spawn([sys.executable, "-m", "benchmarks.peer_apscheduler", "--nats", url,
                              "--specs", str(specs_file)], out)
    try:
        ready = await wait_for_line(process, out, re.compile(rb"^ready (\d+)$", re.MULTILINE))
        startup = time.monotonic() - spawned
        result, start, collector = await measure(nc, PEER_SUBJECTS, process.pid, children.server.process.pid,
                                                 args.seconds, "APScheduler", profile)
    finally:
        children.stop(process)
    result.startup = startup
    result.notes.insert(0, f"{int(ready.group(1))} jobs added")
    counts = [line for line in out.read_text(errors="replace").splitlines() if line.startswith("{")]
    if counts:
        extra = {k: v for k, v in json.loads(counts[-1]).items() if k != "fires" and v}
        if extra:
            result.notes.append("APScheduler events: " + ", ".join(f"{v} {k}" for k, v in extra.items()))
    return analyse(result, collector, specs, start, args.seconds)


# ---- output --------------------------------------------------------------------------

COLUMNS = [  # key, header, width, format
    ("ticks", "ticks", 7, "d"), ("expected", "expected", 8, "d"), ("missing", "missing", 7, "d"),
    ("extra", "extra", 5, "d"), ("dup", "dup", 4, "d"),
    ("fire_p50", "fire p50", 8, ".1f"), ("fire_p99", "fire p99", 8, ".1f"), ("fire_max", "fire max", 8, ".1f"),
    ("recv_p50", "recv p50", 8, ".1f"), ("recv_p99", "recv p99", 8, ".1f"), ("recv_max", "recv max", 8, ".1f"),
    ("cpu_s", "cpu s/s", 7, ".3f"), ("cpu_tick", "cpu ms/tick", 11, ".3f"), ("rss", "peak RSS", 8, ".0f"),
]
UNITS = {"fire_p50": "(ms)", "fire_p99": "(ms)", "fire_max": "(ms)", "recv_p50": "(ms)", "recv_p99": "(ms)",
         "recv_max": "(ms)", "rss": "(MB)"}
HEADER = (f"{'system':<12} " + " ".join(f"{h:>{w}}" for _, h, w, _ in COLUMNS) + "\n"
          + f"{'':<12} " + " ".join(f"{UNITS.get(k, ''):>{w}}" for k, _, w, _ in COLUMNS))


def _row(label: str, stats: dict[str, float]) -> str:
    cells = []
    for key, _, width, fmt in COLUMNS:
        value = stats[key]
        if fmt == "d":
            cells.append(f"{'nan':>{width}}" if math.isnan(value) else f"{value:>{width}.0f}")
        else:
            cells.append(f"{value:>{width}{fmt}}")
    return f"{label:<12} " + " ".join(cells)


def _details(result: Result) -> str:
    parts = [f"startup {result.startup:.1f} s", *result.notes[:1],
             f"nats-server cpu {result.server_cpu / result.seconds:.3f} s/s" if result.seconds else "",
             f"busiest second {result.burst_at}: {result.burst} ticks, last received after {result.burst_max_ms:.0f} ms"
             + (f" ({result.burst * 1000 / result.burst_max_ms:.0f} ticks/s)" if result.burst_max_ms > 0 else "")]
    lines = [f"{'':<12} " + "; ".join(p for p in parts if p)]
    lines += [f"{'':<12} {note}" for note in result.notes[1:]]
    return "\n".join(lines)


def _thousands(number: int) -> str:
    return f"{number:,}".replace(",", " ")


# ---- main ----------------------------------------------------------------------------


async def run(args: argparse.Namespace, children: Children, work: Path) -> None:
    specs = schedule_mix(args.batches, random.Random(args.seed))
    specs_file = work / "schedules.json"
    specs_file.write_text(json.dumps([{"id": s.id, "cron": normalize_cron(s.cron), "timezone": s.timezone}
                                      for s in specs]))
    children.server = EmbeddedServer(work / "nats")
    url = await children.server.astart()
    setup = await provision(url, specs)
    nc = await nats.connect(url, name="bench-scheduler")
    js = nc.jetstream()
    server = nc.connected_server_version
    versions = [f"nats-server {server.major}.{server.minor}.{server.patch}",
                f"nats-py {importlib.metadata.version('nats-py')}"]
    if args.peer:
        versions.append(f"APScheduler {importlib.metadata.version('apscheduler')}")
    print(f"{_thousands(args.batches)} batches ({describe_mix(specs)}; seed {args.seed}), created in {setup:.1f} s; "
          f"{args.seconds:g} s windows, {args.rounds} rounds; {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print("versions: " + ", ".join(versions), flush=True)
    by_system: dict[str, list[Result]] = defaultdict(list)
    try:
        for number in range(1, args.rounds + 1):
            print(f"\nround {number}", flush=True)
            profile = args.profile if number == 1 else None
            results = [await batchdeck_round(nc, js, url, specs, args, children, work, number,
                                             profile / "scheduler.txt" if profile else None)]
            if args.peer:
                results.append(await peer_round(nc, url, specs, specs_file, args, children, work, number,
                                                profile / "apscheduler.txt" if profile else None))
            print(HEADER)
            for result in results:
                by_system[result.system].append(result)
                print(_row(result.system, result.stats()))
                print(_details(result))
            if profile:
                for name in ("scheduler", "apscheduler"):
                    path = profile / f"{name}.txt"
                    if path.exists():
                        print(f"\npy-spy of {name} during round 1's window ({path}):\n{summarize_profile(path)}")
            sys.stdout.flush()
    finally:
        await nc.close()
    report(by_system, args)


def report(by_system: dict[str, list[Result]], args: argparse.Namespace) -> None:
    rounds = len(next(iter(by_system.values())))
    print(f"\nmedian of {rounds} rounds\n{HEADER}")
    medians: dict[str, dict[str, float]] = {}
    for system, results in by_system.items():
        stats = [r.stats() for r in results]
        medians[system] = {key: statistics.median(s[key] for s in stats) for key in stats[0]}
        print(_row(system, medians[system]))
    ours, peer = medians["batchdeck"], medians.get("APScheduler")
    if peer:
        print("\nbatchdeck / APScheduler (medians; below 1 is better for batchdeck)")
        print(f"  p99 lag     fired {ours['fire_p99'] / peer['fire_p99']:.2f}x, "
              f"received {ours['recv_p99'] / peer['recv_p99']:.2f}x")
        print(f"  CPU per tick {ours['cpu_tick'] / peer['cpu_tick']:.2f}x "
              f"({ours['cpu_tick']:.3f} vs {peer['cpu_tick']:.3f} ms)")
    verdict = "met" if ours["fire_p99"] < TARGET_P99_MS else "NOT met"
    print(f"target p99 lag < {TARGET_P99_MS:g} ms with {_thousands(args.batches)} batches: {verdict} "
          f"(fired_at - scheduled_at p99 {ours['fire_p99']:.1f} ms; as received {ours['recv_p99']:.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=10_000, help="enabled batches (default 10000)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window per system and round (default 60)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    parser.add_argument("--no-peer", dest="peer", action="store_false", help="measure batchdeck alone")
    parser.add_argument("--seed", type=int, default=1, help="seed of the schedule mix (default 1)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy both schedulers during round 1's windows into DIR (perturbs that round)")
    args = parser.parse_args()
    if args.peer and importlib.util.find_spec("apscheduler") is None:
        print("peer skipped: apscheduler not installed (pip install -e '.[bench]'); measuring batchdeck alone")
        args.peer = False
    run_with_children("batchdeck-sched-bench-", lambda children, work: asyncio.run(run(args, children, work)))


if __name__ == "__main__":
    main()
