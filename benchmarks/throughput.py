"""End-to-end throughput: N no-op runs through batchdeck's public API, and the same
workload on Celery + Redis and Dramatiq + Redis, measured in the same run.

    python -m benchmarks.throughput [--runs 2000] [--rounds 3] [--in-flight 64]

batchdeck: each round starts a fresh `batchdeck up --headless` (its defaults: embedded
nats-server, 2 runner processes of concurrency 4, org "default") on a temp data dir and a
free port, waits for both runners, subscribes to `bd.default.evt.exec.*.state`, then
fires `task.start` of a `kind: module, module: noop` task (and, as a second line, a
`command: ["true"]` task) with `--in-flight` requests outstanding, until every run's
`succeeded` state event arrived. runs/s = runs / (first start sent -> last `succeeded`
seen); latencies are start request sent -> first `running` event and -> `succeeded`.

Peers (the optional `bench` extra: `pip install -e '.[bench]'`, plus a `redis-server`
binary on PATH): a private `redis-server` on a free port; per round 2 fresh worker
processes (Celery: one prefork worker, concurrency 2, redis broker + redis result
backend; Dramatiq: `--processes 2` with its default 8 threads, Results middleware on a
redis backend); the client enqueues N no-op tasks and awaits every result. runs/s =
N / (first enqueue -> last result received). "running" is the wall-clock time the task
body started (it returns it), "done" the time the client received the result; the
client enqueues synchronously, so results that arrive during the enqueue loop are only
seen after it (this inflates the peers' early "done" latencies, not their rate).

Every system gets `--warmup` runs first (not measured). Medians over `--rounds` are
reported with the ratios batchdeck / peer. On Linux, CPU time per run of each component
(from /proc) shows where a 2-core machine spends its cycles. `--profile DIR` records
py-spy profiles of the batchdeck processes during round 1's measured module runs and
prints their hotspots.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats

from benchmarks.common import ROOT, count_functions, proc_stat, read_samples, stop_process, tail
from broker import subjects
from broker.client import ApiClient
from broker.errors import ApiError
from broker.server import free_port

ORG = subjects.DEFAULT_ORG
FINAL = {"succeeded", "failed", "canceled", "timed_out", "lost", "skipped"}
PEER_PACKAGES = ("celery", "dramatiq", "redis")

KINDS = {
    "module": ("batchdeck module noop", {"name": "bench-noop", "kind": "module", "module": "noop"}),
    "command": ("batchdeck command true", {"name": "bench-true", "kind": "command", "command": ["true"]}),
}


# ---- results -----------------------------------------------------------------------


@dataclass
class Result:
    system: str
    runs: int = 0  # runs that succeeded
    seconds: float = 0.0
    failed: int = 0
    to_running: list[float] = field(default_factory=list)  # ms
    to_done: list[float] = field(default_factory=list)  # ms
    cpu: dict[str, float] = field(default_factory=dict)  # component -> CPU seconds

    @property
    def rate(self) -> float:
        return self.runs / self.seconds if self.seconds else 0.0

    def stats(self) -> dict[str, float]:
        return {
            "rate": self.rate,
            "run_p50": _pct(self.to_running, 50), "run_p99": _pct(self.to_running, 99),
            "done_p50": _pct(self.to_done, 50), "done_p99": _pct(self.to_done, 99),
        }

    def cpu_per_run(self) -> str:
        if not self.cpu or not self.runs:
            return ""
        parts = [f"{name} {seconds * 1000 / self.runs:.2f}" for name, seconds in self.cpu.items()]
        total = sum(self.cpu.values()) * 1000 / self.runs
        return f"cpu ms/run: {', '.join(parts)} (total {total:.2f})"


def _pct(values: list[float], pct: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1] if pct != 50 else statistics.median(values)


def _line(label: str, stats: dict[str, float], failed: float) -> str:
    return (f"{label:<26} {stats['rate']:>9.1f} {stats['run_p50']:>9.1f} {stats['run_p99']:>9.1f} "
            f"{stats['done_p50']:>9.1f} {stats['done_p99']:>9.1f} {failed:>7}")


HEADER = (f"{'system':<26} {'runs/s':>9} {'run p50':>9} {'run p99':>9} {'done p50':>9} {'done p99':>9} {'failed':>7}"
          "\n" + f"{'':<26} {'':>9} {'(ms)':>9} {'(ms)':>9} {'(ms)':>9} {'(ms)':>9}")


# ---- process helpers ---------------------------------------------------------------




def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _tree(root: int) -> list[int]:
    """`root` and its live descendants."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat:
                parents.setdefault(stat[0], []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


class CpuMeter:
    """CPU seconds spent by groups of processes (and this process) between start() and stop()."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups

    def _sample(self) -> dict[int, float]:
        return {pid: stat[1] for pids in self.groups.values() for pid in pids if (stat := proc_stat(pid))}

    def start(self) -> None:
        self.before, self.client_before = self._sample(), time.process_time()

    def stop(self) -> dict[str, float]:
        after = self._sample()
        spent = {name: sum(after.get(pid, 0.0) - self.before.get(pid, 0.0) for pid in pids)
                 for name, pids in self.groups.items()}
        spent["bench client"] = time.process_time() - self.client_before
        return spent






# ---- batchdeck ---------------------------------------------------------------------


class _State(msgspec.Struct):
    id: str
    status: str


class StateCollector:
    """First `running` and the final state event of every execution, with arrival times."""

    def __init__(self) -> None:
        self.decode = msgspec.json.Decoder(_State).decode
        self.running: dict[str, float] = {}
        self.done: dict[str, tuple[float, str]] = {}
        self.bad = 0

    async def on_msg(self, msg) -> None:
        now = time.perf_counter()
        try:
            state = self.decode(msg.data)
        except msgspec.DecodeError:
            self.bad += 1
            return
        if state.status == "running":
            self.running.setdefault(state.id, now)
        elif state.status in FINAL and state.id not in self.done:
            self.done[state.id] = (now, state.status)


async def _connect_when_ready(url: str, up: subprocess.Popen, log: Path, timeout: float = 60.0):
    async def quiet(_: Exception) -> None:
        pass

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if up.poll() is not None:
            raise RuntimeError(f"`batchdeck up` exited with {up.returncode}:\n{tail(log)}")
        try:
            nc = await nats.connect(url, max_reconnect_attempts=1, connect_timeout=1, reconnect_time_wait=0.05,
                                    allow_reconnect=False, error_cb=quiet)
        except Exception:  # noqa: BLE001 - nats-py raises several types for "not listening yet"
            await asyncio.sleep(0.05)
            continue
        try:
            await ApiClient(nc, ORG).call("task", "list", {}, timeout=1)
            return nc
        except ApiError:
            await nc.close()
            await asyncio.sleep(0.05)
    raise RuntimeError(f"`batchdeck up` did not answer within {timeout:g} s:\n{tail(log)}")


async def _wait_for_runners(api: ApiClient, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = (await api.call("runner", "list", {}))["items"]
        if len([r for r in items if r.get("alive", True)]) >= count:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"fewer than {count} runners registered within {timeout:g} s")


async def _fire_and_wait(api: ApiClient, collector: StateCollector, task_id: str, runs: int, in_flight: int,
                         label: str) -> Result:
    sent: dict[str, float] = {}
    errors: list[Exception] = []
    slots = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with slots:
            started = time.perf_counter()
            try:
                reply = await api.call("task", "start", {"id": task_id})
            except ApiError as err:
                errors.append(err)
                return
            sent[reply["execution_id"]] = started

    first = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(runs)))
    deadline = time.perf_counter() + max(120.0, runs / 10)
    pending = set(sent)
    while pending and time.perf_counter() < deadline:  # end times come from the events, not this loop
        await asyncio.sleep(0.05)
        pending = {eid for eid in pending if eid not in collector.done}
    result = Result(label)
    ends = []
    for eid, started in sent.items():
        if eid in collector.running:
            result.to_running.append((collector.running[eid] - started) * 1000)
        end = collector.done.get(eid)
        if end is None or end[1] != "succeeded":
            result.failed += 1
            continue
        ends.append(end[0])
        result.to_done.append((end[0] - started) * 1000)
    result.failed += len(errors)
    result.runs = len(ends)
    result.seconds = (max(ends) - first) if ends else 0.0
    if errors:
        print(f"  {label}: {len(errors)} start requests failed, first: {errors[0]}", file=sys.stderr)
    missing = sum(1 for eid in sent if eid not in collector.done)
    if missing:
        print(f"  {label}: {missing} runs had no final state event before the timeout", file=sys.stderr)
    return result


class Profiler:
    """py-spy `record --format raw` on a few processes until stopped."""

    def __init__(self, out_dir: Path, targets: dict[str, int]) -> None:
        binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.files: dict[str, Path] = {}
        self.procs: list[subprocess.Popen] = []
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in targets.items():
            path = out_dir / f"{name}.txt"
            self.files[name] = path
            self.procs.append(subprocess.Popen(
                [binary, "record", "--nonblocking", "--gil", "--format", "raw", "--rate", "250", "--pid", str(pid),
                 "--output", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()




def summarize_profile(path: Path, top: int = 15) -> str:
    """Top self and inclusive functions of a py-spy raw (collapsed) profile."""
    samples = read_samples(path)
    if samples is None:
        return f"  (no profile at {path})"
    total, self_time, inclusive = count_functions(samples)
    if not total:
        return "  (no samples)"
    out = [f"  {total} samples (250/s, only while holding the GIL: Python CPU time)", "  self:"]
    out += [f"    {n * 100 / total:5.1f}%  {name}" for name, n in self_time.most_common(top)]
    project = [(name, n) for name, n in inclusive.most_common()
               if any(f"({p}/" in name for p in ("broker", "runner", "batchdeck")) or "/broker/" in name
               or "/runner/" in name]
    out.append("  inclusive, project functions:")
    out += [f"    {n * 100 / total:5.1f}%  {name}" for name, n in project[:top]]
    return "\n".join(out)


def _spawn_up(data_dir: str, port: int, log: Path) -> subprocess.Popen:
    """`batchdeck up --headless` with its defaults; its output goes to `log`."""
    with open(log, "wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "batchdeck", "up", "--headless", "--data-dir", data_dir, "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT,
        )


async def batchdeck_round(args: argparse.Namespace, kinds: list[str], profile_dir: Path | None) -> list[Result]:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="batchdeck-bench-") as data_dir:
        log = Path(data_dir) / "up.log"
        up = _spawn_up(data_dir, port, log)
        try:
            nc = await _connect_when_ready(url, up, log)
            api = ApiClient(nc, ORG, timeout=30.0)
            await _wait_for_runners(api, args.batchdeck_runners)
            tree = _tree(up.pid)
            groups = {
                "broker(up)": [up.pid],
                "runners": [p for p in tree if " runner " in f" {_cmdline(p)} "],
                "nats-server": [p for p in tree if "nats-server" in _cmdline(p)],
            }
            collector = StateCollector()
            sub = await nc.subscribe(subjects.exec_event(ORG, "*", "state"), cb=collector.on_msg,
                                     pending_msgs_limit=-1, pending_bytes_limit=-1)
            for kind in kinds:
                label, spec = KINDS[kind]
                task = await api.call("task", "create", spec)
                if args.warmup:
                    warm = await _fire_and_wait(api, collector, task["id"], args.warmup, args.in_flight, label)
                    if warm.failed:
                        raise RuntimeError(f"{label}: {warm.failed} of {args.warmup} warm-up runs did not succeed:\n"
                                           f"{tail(log)}")
                meter = CpuMeter(groups)
                profiler = None
                if profile_dir is not None and kind == kinds[0]:
                    targets = {"broker-up": up.pid}
                    targets.update({f"runner-{i + 1}": pid for i, pid in enumerate(groups["runners"])})
                    profiler = Profiler(profile_dir, targets)
                    await asyncio.sleep(1.0)  # py-spy attaches
                meter.start()
                result = await _fire_and_wait(api, collector, task["id"], args.runs, args.in_flight, label)
                result.cpu = meter.stop()
                if profiler is not None:
                    profiler.stop()
                    result.profiles = profiler.files  # type: ignore[attr-defined]
                results.append(result)
            await sub.unsubscribe()
            await nc.close()
        finally:
            await asyncio.to_thread(stop_process, up, 60.0)
    return results


# ---- peers -------------------------------------------------------------------------


def peers_missing() -> list[str]:
    return [name for name in PEER_PACKAGES if importlib.util.find_spec(name) is None]


class Redis:
    """A private redis-server on a free port, no persistence."""

    def __init__(self, binary: str) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        import redis

        self.client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 15
        while True:
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def flush(self) -> None:
        self.client.flushall()

    def stop(self) -> None:
        self.client.close()
        stop_process(self.process, 15)


def _worker_env(redis_url: str) -> dict[str, str]:
    return {**os.environ, "BENCH_REDIS_URL": redis_url,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _start_workers(system: str, redis_url: str, number: int) -> subprocess.Popen:
    if system == "celery":
        argv = [sys.executable, "-m", "celery", "-A", "benchmarks.peer_celery", "worker", "--pool", "prefork",
                "--concurrency", "2", "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
                "-n", f"bench{number}@%h"]
    else:
        argv = [sys.executable, "-m", "dramatiq", "benchmarks.peer_dramatiq", "--processes", "2", "--threads", "8"]
    return subprocess.Popen(argv, cwd=ROOT, env=_worker_env(redis_url), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


Rows = list[tuple[float, float, float, int]]


def _celery_batch(runs: int, timeout: float) -> tuple[float, Rows, int]:
    """Enqueue `runs` no-ops, await every result: (first enqueue time, [(sent, started,
    received, worker pid)], failures). Times are wall clock (tasks run in other processes)."""
    from celery.result import ResultSet

    from benchmarks.peer_celery import noop

    sent: dict[str, float] = {}
    handles = []
    first = time.time()
    for _ in range(runs):
        now = time.time()
        handle = noop.apply_async()
        sent[handle.id] = now
        handles.append(handle)
    rows: list[tuple[float, float, float, int]] = []

    def received(task_id: str, value) -> None:
        rows.append((sent[task_id], float(value[1]), time.time(), int(value[0])))

    try:
        ResultSet(handles).join_native(timeout=timeout, callback=received, propagate=False)
    except Exception as err:  # noqa: BLE001 - a timeout or a failed task: count what is missing
        print(f"  celery: {type(err).__name__}: {err}", file=sys.stderr)
    return first, rows, runs - len(rows)


def _dramatiq_batch(runs: int, timeout: float) -> tuple[float, Rows, int]:
    from benchmarks.peer_dramatiq import noop

    messages = []
    first = time.time()
    for _ in range(runs):
        now = time.time()
        messages.append((now, noop.send()))
    rows: Rows = []
    failures = 0
    deadline = time.time() + timeout
    for now, message in messages:
        try:
            value = message.get_result(block=True, timeout=max(1, int((deadline - time.time()) * 1000)))
        except Exception as err:  # noqa: BLE001 - ResultTimeout / ResultFailure: counted
            failures += 1
            if failures == 1:
                print(f"  dramatiq: {type(err).__name__}: {err}", file=sys.stderr)
            continue
        rows.append((now, float(value[1]), time.time(), int(value[0])))
    return first, rows, failures


def peer_round(system: str, redis: Redis, args: argparse.Namespace, number: int) -> Result:
    label = {"celery": "celery + redis", "dramatiq": "dramatiq + redis"}[system]
    batch = _celery_batch if system == "celery" else _dramatiq_batch
    redis.flush()
    workers = _start_workers(system, redis.url, number)
    try:
        # Warm up until both worker processes have run tasks (imports done, connected).
        deadline = time.monotonic() + 60
        pids: set[int] = set()
        while True:
            _, rows, failures = batch(max(args.warmup, 20), 60.0)
            pids.update(row[3] for row in rows)
            if workers.poll() is not None:
                raise RuntimeError(f"{system} workers exited with {workers.returncode}")
            if len(pids) >= 2 and not failures:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{system} workers did not come up (worker pids seen: {sorted(pids)})")
        meter = CpuMeter({"workers": _tree(workers.pid), "redis-server": [redis.process.pid]})
        meter.start()
        first, rows, failures = batch(args.peer_runs, max(120.0, args.peer_runs / 10))
        cpu = meter.stop()
    finally:
        workers.send_signal(signal.SIGTERM)
        try:
            workers.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(workers.pid, signal.SIGKILL)
            workers.wait()
    result = Result(label, runs=len(rows), failed=failures, cpu=cpu)
    if rows:
        result.seconds = max(r[2] for r in rows) - first
        result.to_running = [(started - sent) * 1000 for sent, started, _, _ in rows]
        result.to_done = [(got - sent) * 1000 for sent, _, got, _ in rows]
    return result


# ---- main --------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000, help="runs per system and round (default 2000)")
    parser.add_argument("--peer-runs", type=int, default=None, help="tasks per peer and round (default: --runs)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    parser.add_argument("--in-flight", type=int, default=64, help="task.start requests outstanding (default 64)")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured runs first, per system (default 50)")
    parser.add_argument("--no-command", action="store_true", help="skip the `command: [\"true\"]` line")
    parser.add_argument("--no-peers", action="store_true", help="measure batchdeck alone")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy profiles of the batchdeck processes (round 1, module runs) into DIR")
    args = parser.parse_args()
    args.peer_runs = args.peer_runs or args.runs
    args.batchdeck_runners = 2  # `batchdeck up`'s default
    kinds = ["module"] + ([] if args.no_command else ["command"])

    peers: list[str] = []
    redis = None
    if not args.no_peers:
        missing = peers_missing()
        binary = shutil.which("redis-server")
        if missing:
            print(f"peers skipped: {', '.join(missing)} not installed (pip install -e '.[bench]'); "
                  "measuring batchdeck alone")
        elif binary is None:
            print("peers skipped: no `redis-server` on PATH (e.g. apt-get install redis-server); "
                  "measuring batchdeck alone")
        else:
            redis = Redis(binary)
            os.environ["BENCH_REDIS_URL"] = redis.url  # read when the peer modules are imported
            peers = ["celery", "dramatiq"]

    print(f"{args.runs} runs per system and round (peers {args.peer_runs}), {args.rounds} rounds, "
          f"{args.in_flight} starts in flight, {args.warmup} warm-up runs; {os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]}")
    versions = [f"nats-py {importlib.metadata.version('nats-py')}"]
    for name in peers:
        versions.append(f"{name} {importlib.metadata.version(name)}")
    if redis is not None:
        versions.append(f"redis-server {redis.client.info('server')['redis_version']}")
    print("versions: " + ", ".join(versions))
    by_system: dict[str, list[Result]] = {}
    try:
        for number in range(1, args.rounds + 1):
            print(f"\nround {number}\n{HEADER}")
            round_results = asyncio.run(batchdeck_round(args, kinds, args.profile if number == 1 else None))
            for system in peers:
                round_results.append(peer_round(system, redis, args, number))
            for result in round_results:
                by_system.setdefault(result.system, []).append(result)
                print(_line(result.system, result.stats(), result.failed))
                if result.cpu:
                    print(f"{'':<26} {result.cpu_per_run()}")
            if number == 1 and args.profile is not None:
                for result in round_results:
                    for name, path in getattr(result, "profiles", {}).items():
                        print(f"\npy-spy {name} ({result.system}), raw profile {path}:")
                        print(summarize_profile(path))
    finally:
        if redis is not None:
            redis.stop()

    print(f"\nmedian of {args.rounds} rounds\n{HEADER}")
    medians: dict[str, dict[str, float]] = {}
    for system, results in by_system.items():
        stats = [r.stats() for r in results]
        medians[system] = {key: statistics.median(s[key] for s in stats) for key in stats[0]}
        print(_line(system, medians[system], sum(r.failed for r in results)))
    peer_labels = [s for s in medians if not s.startswith("batchdeck")]
    if peer_labels:
        print("\nratios (batchdeck runs/s / peer runs/s, medians)")
        for system in [s for s in medians if s.startswith("batchdeck")]:
            ratios = "  ".join(f"vs {peer}: {medians[system]['rate'] / medians[peer]['rate']:.2f}x"
                               for peer in peer_labels if medians[peer]["rate"])
            print(f"  {system:<26} {ratios}")
        dramatiq = medians.get("dramatiq + redis")
        module = medians.get(KINDS["module"][0])
        if dramatiq and module and dramatiq["rate"]:
            ratio = module["rate"] / dramatiq["rate"]
            print(f"target (module noop >= 5x dramatiq): {ratio:.2f}x -> {'met' if ratio >= 5 else 'NOT met'}")


if __name__ == "__main__":
    main()
