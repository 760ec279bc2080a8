"""Load: many executions and their log lines through the whole stack, each service in a
process of its own, with the dashboard open.

    python -m benchmarks.load [--executions 100000] [--lines-per-run 10] [--runners 2]
                              [--concurrency 8] [--in-flight 64] [--quick] [--no-tui]

An embedded nats-server on a temp dir and a free port, then `python -m batchdeck`
`broker`, `scheduler`, `store --db` (in the temp dir) and `--runners` runners of
`--concurrency` each for org `load`, every one its own process. One command task prints
`--lines-per-run` lines (`sh -c 'i=0; while ...; do echo line $i; ...'`). A submitter
process sends `--executions` `task.start` requests, `--in-flight` outstanding; the
benchmark waits until BD_RUNS is empty (a runner acks a run only after its final state
is written: every execution is final), then until `history.sql` counts every log line.

Reported: the time to submit, to drain the runs (last start reply -> all final) and to
drain the store (all final -> every line in `history.sql`); runs/s and lines/s; per
process the RSS before the load, its peak (`VmHWM`), the largest 1 s sample and at the
end, and the CPU seconds of the load (from /proc), with how busy the whole machine was
(other processes' CPU shows there); then counts checked through `exec.list` (live
state) and `history.sql`, how long a fresh dashboard takes to load, and the
WARNING/ERROR lines of each log.

With the dashboard (unless `--no-tui`): `BatchdeckApp` runs headless in this process
(`run_test`, 140x40) on its own connection to the same server and org, the executions
table focused. Every 250 ms the probe measures the event-loop lag (how late a 250 ms
sleep wakes up) and a key press (`down` 20 times, then `up` 20 times, ...): sent with
`App.simulate_key`, until the table's cursor action ran, then until the screen has
refreshed (`Screen.wait_for_refresh`). Not `Pilot.press`: it waits for the whole process
to go idle. The load is driven from another thread and the submitter is another
process, so the lag is the dashboard's own (and the machine's).

A default run takes 13-14 minutes on 2 cores (docs/operations.md, Measured); `--quick`
about 1.5 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.js.errors import NotFoundError

from benchmarks.common import ROOT, TICKS, Children, run_with_children, stat_fields, wait_for_line
from broker import streams
from broker.client import ApiClient
from broker.errors import ApiError
from broker.server import EmbeddedServer

ORG = "load"
QUICK = {"executions": 5000}
SAMPLE_SECONDS = 1.0
PROBE_SECONDS = 0.25
PRESSES_PER_DIRECTION = 20
PROGRESS_SECONDS = 10.0
POLL_SECONDS = 0.25
STALL_SECONDS = 300.0
"""No progress (starts, runs, stored lines) for this long: the benchmark gives up."""
FINAL = ("succeeded", "failed", "canceled", "timed_out", "lost", "skipped")
READY = {
    "broker": re.compile(rb"broker serving "),
    "scheduler": re.compile(rb"scheduler \S+: epoch "),
    "store": re.compile(rb"store: history in .*, resuming after event"),
    "runner": re.compile(rb"runner \S+ serving org "),
}


# ---- /proc -----------------------------------------------------------------------------


def _memory_kb(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) in kB; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            text = handle.read().decode()
    except OSError:
        return None
    values = dict(line.split(":", 1) for line in text.splitlines() if line.startswith(("VmRSS", "VmHWM")))
    try:
        return int(values["VmRSS"].split()[0]), int(values["VmHWM"].split()[0])
    except (KeyError, ValueError):
        return None


def _cpu(pid: int) -> tuple[float, float] | None:
    """(own CPU seconds, CPU seconds of its waited-for children: a runner's commands)."""
    fields = stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS, (int(fields[13]) + int(fields[14])) / TICKS


def _machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores, not idle or iowait)."""
    with open("/proc/stat", "rb") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICKS


@dataclass
class Watched:
    name: str
    pid: int
    rss_before: int = 0  # kB, when the load starts (or the process, if it starts later)
    rss_max: int = 0  # kB, the largest sample during the load
    hwm: int = 0  # kB, VmHWM at the last sample
    rss_end: int = 0  # kB, when every line is stored
    cpu_before: tuple[float, float] = (0.0, 0.0)
    cpu_end: tuple[float, float] = (0.0, 0.0)
    gone: bool = False
    late: bool = False


class Sampler(threading.Thread):
    """Every SAMPLE_SECONDS, the RSS of every watched process (a thread: the samples keep
    their pace even when the event loop does not)."""

    def __init__(self) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.watched: dict[str, Watched] = {}
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.machine_before = self.machine_end = _machine_busy()

    def watch(self, name: str, pid: int, late: bool = False) -> None:
        """Sample `pid` as `name`; `late`: it starts with the load (no "before")."""
        item = Watched(name, pid, late=late)
        item.cpu_before = _cpu(pid) or (0.0, 0.0)
        memory = _memory_kb(pid)
        if memory:
            item.rss_before = item.rss_max = memory[0]
            item.hwm = memory[1]
        with self.lock:
            self.watched[name] = item

    def sample(self) -> None:
        with self.lock:
            items = list(self.watched.values())
        for item in items:
            memory, cpu = _memory_kb(item.pid), _cpu(item.pid)
            if memory is None or cpu is None:
                item.gone = True
                continue
            item.rss_end, item.hwm = memory
            item.rss_max = max(item.rss_max, memory[0])
            item.cpu_end = cpu
        self.machine_end = _machine_busy()

    def total_rss_mb(self) -> float:
        with self.lock:
            return sum(item.rss_end for item in self.watched.values()) / 1024

    def run(self) -> None:
        while not self.halt.wait(SAMPLE_SECONDS):
            self.sample()

    def stop(self) -> None:
        self.halt.set()
        self.join()
        self.sample()


# ---- the stack ---------------------------------------------------------------------------


async def start_stack(args: argparse.Namespace, children: Children, work: Path) -> tuple[str, dict[str, int], dict[str, Path]]:
    """The server, broker, scheduler, store and runners; (url, pid by name, log by name)."""
    children.server = EmbeddedServer(work / "nats")
    url = await children.server.astart()
    pids = {"nats-server": children.server.process.pid}
    logs = {"nats-server": children.server.log_file}
    batchdeck = [sys.executable, "-m", "batchdeck"]

    async def spawn(name: str, kind: str, extra: list[str]) -> None:
        log = work / f"{name}.log"
        process = children.spawn([*batchdeck, kind, "--nats", url, *extra], log)
        pids[name], logs[name] = process.pid, log
        await wait_for_line(process, log, READY[kind])

    await spawn("broker", "broker", [])  # provisions the streams: the others need them
    await asyncio.gather(
        spawn("scheduler", "scheduler", []),
        spawn("store", "store", ["--db", str(work / "history.duckdb")]),
        *(spawn(f"runner {n}", "runner", ["--org", ORG, "--concurrency", str(args.concurrency)])
          for n in range(1, args.runners + 1)))
    return url, pids, logs


def task_spec(lines: int) -> dict[str, Any]:
    script = f"i=0; while [ $i -lt {lines} ]; do echo line $i; i=$((i+1)); done"
    return {"name": "load-lines", "command": ["sh", "-c", script]}


# ---- the submitter (a process of its own) -------------------------------------------------


def submitter_argv(url: str, task_id: str, count: int, in_flight: int) -> list[str]:
    return [sys.executable, "-m", "benchmarks.load", "--submitter", url, task_id, str(count), str(in_flight)]


async def submit(url: str, task_id: str, count: int, in_flight: int) -> None:
    """The submitter process: `count` task.start requests, `in_flight` at once. It prints
    `first T` (monotonic, system-wide on Linux), then `progress SENT REFUSED` every
    POLL_SECONDS, then `done {json summary}`."""
    nc = await nats.connect(url, name="load-submitter", pending_size=16 * 1024 * 1024)
    api = ApiClient(nc, ORG, timeout=60.0)
    body = {"id": task_id}
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            began = time.monotonic()
            try:
                await api.call("task", "start", body)
            except ApiError as err:
                errors[f"{err.code} {err.message}"] += 1
                continue
            latencies.append(time.monotonic() - began)

    async def report_progress() -> None:
        while True:
            print(f"progress {len(latencies)} {sum(errors.values())}", flush=True)
            await asyncio.sleep(POLL_SECONDS)

    first = time.monotonic()
    print(f"first {first!r}", flush=True)
    reporter = asyncio.create_task(report_progress())
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    last = time.monotonic()
    reporter.cancel()
    await nc.close()
    print("done " + json.dumps({
        "first": first, "last": last, "ok": len(latencies), "refused": sum(errors.values()),
        "errors": dict(errors.most_common(5)), "p50": _pct(latencies, 50), "p99": _pct(latencies, 99),
        "max": max(latencies, default=float("nan"))}), flush=True)


class Submitter:
    """The submitter process as the driver sees it: its counters, read from its stdout."""

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None
        self.first = float("nan")
        self.sent = self.refused = 0
        self.summary: dict[str, Any] | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self, argv: list[str]) -> int:
        self.process = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        self._reader = asyncio.create_task(self._read())
        return self.process.pid

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        other: list[str] = []
        async for raw in self.process.stdout:
            word, _, rest = raw.decode(errors="replace").strip().partition(" ")
            if word == "progress":
                sent, refused = rest.split()
                self.sent, self.refused = int(sent), int(refused)
            elif word == "first":
                self.first = float(rest)
            elif word == "done":
                self.summary = json.loads(rest)
                self.sent, self.refused = self.summary["ok"], self.summary["refused"]
            else:
                other.append(raw.decode(errors="replace").rstrip())
        if self.summary is None:
            self.summary = {"crash": "\n".join(other[-20:])}

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()
        if self._reader is not None:
            await self._reader


# ---- the dashboard probe --------------------------------------------------------------------


@dataclass
class TuiSamples:
    lag: list[tuple[float, float]] = field(default_factory=list)  # (monotonic time, seconds late)
    handled: list[tuple[float, float]] = field(default_factory=list)  # (monotonic time, seconds to handled)
    press: list[tuple[float, float]] = field(default_factory=list)  # (monotonic time, seconds to refreshed)
    errors: list[str] = field(default_factory=list)
    shown: int = 0  # executions in the dashboard's live state at the end
    not_final: int = 0  # of them, not final (when every run is final): state events missed or not read yet
    client_errors: Counter[str] = field(default_factory=Counter)  # NATS client errors (slow consumer: dropped)
    reconnects: int = 0
    open_seconds: float = float("nan")


class TuiProbe:
    """The dashboard, headless in this event loop, sampled every PROBE_SECONDS."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples = TuiSamples()
        self.ready = asyncio.Event()
        self.halt = threading.Event()  # set from any thread

    async def run(self) -> None:
        # Textual loads only when the dashboard is measured.
        from broker.connect import ConnectOptions
        from tui.app import BatchdeckApp
        from tui.widgets.live_table import LiveTable

        began = time.monotonic()
        app = BatchdeckApp(ConnectOptions(url=self.url, name="load-tui"), ORG)
        _count_client_errors(app, self.samples.client_errors)
        async with app.run_test(size=(140, 40)) as pilot:
            while app.live is None or not app.live.loaded.is_set():
                await asyncio.sleep(0.05)
            table = app.screen.query_one("#executions", LiveTable)
            table.focus()
            await pilot.pause()
            handled = asyncio.Event()
            _signal_after(table, "action_cursor_down", handled)
            _signal_after(table, "action_cursor_up", handled)
            self.samples.open_seconds = time.monotonic() - began
            self.ready.set()
            presses = 0
            while not self.halt.is_set():
                planned = time.monotonic() + PROBE_SECONDS
                await asyncio.sleep(PROBE_SECONDS)
                now = time.monotonic()
                self.samples.lag.append((now, now - planned))
                key = "down" if presses // PRESSES_PER_DIRECTION % 2 == 0 else "up"
                presses += 1
                handled.clear()
                began = time.monotonic()
                # Not `pilot.press`: it waits until this process's CPU is idle (up to 1 s),
                # which under load measures how busy the process is, not the key.
                app.simulate_key(key)
                try:
                    await asyncio.wait_for(handled.wait(), 60.0)
                    self.samples.handled.append((began, time.monotonic() - began))
                    await asyncio.wait_for(app.screen.wait_for_refresh(), 60.0)
                except TimeoutError:
                    self.samples.errors.append(f"`{key}` not handled and repainted within 60 s")
                self.samples.press.append((began, time.monotonic() - began))
            if app.nc is not None:
                self.samples.reconnects = app.nc.stats["reconnects"]
            if app.live is not None:
                self.samples.shown = len(app.live.executions)
                self.samples.not_final = sum(1 for e in app.live.executions.values() if not e.is_final)


async def reopen_dashboard(url: str) -> str:
    """A fresh dashboard after the load: how long until its live state is loaded and how
    many executions it got (its `exec.list` reads every live execution)."""
    from broker.connect import ConnectOptions
    from tui.app import BatchdeckApp

    began = time.monotonic()
    app = BatchdeckApp(ConnectOptions(url=url, name="load-tui-reopen"), ORG)
    async with app.run_test(size=(140, 40)):
        while (app.live is None or not app.live.loaded.is_set()) and time.monotonic() - began < 120:
            await asyncio.sleep(0.05)
        loaded = app.live is not None and app.live.loaded.is_set()
        seconds = time.monotonic() - began
        count = len(app.live.executions) if app.live else 0
    return (f"a fresh dashboard {'loaded' if loaded else 'was NOT loaded'} in {seconds:.1f} s with {count} "
            "executions in its live state")


def _count_client_errors(app: Any, counts: Counter[str]) -> None:
    """The dashboard keeps its NATS client's errors to itself (the header shows the
    connection state); count them, a slow consumer's dropped messages above all. Set
    before the app connects: it passes `self._on_error` as the error callback."""
    hidden = getattr(app, "_on_error", None)
    if hidden is None:
        return

    async def counting(err: Exception) -> None:
        counts[type(err).__name__] += 1
        await hidden(err)

    app._on_error = counting


def _signal_after(table: Any, action: str, done: asyncio.Event) -> None:
    """Make the table's `action` (what the key is bound to) set `done` once it ran: the
    key went through the app's queue, its bindings and the table."""
    original = getattr(table, action)

    def signalling() -> None:
        original()
        done.set()

    setattr(table, action, signalling)


# ---- driving the load ------------------------------------------------------------------------


@dataclass
class Timeline:
    first_start: float | None = None  # monotonic: first task.start sent
    last_start: float | None = None  # last task.start reply received
    all_final: float | None = None  # BD_RUNS empty after the last start
    all_stored: float | None = None  # history.sql counts every line
    submit: dict[str, Any] = field(default_factory=dict)
    sql_seconds: list[float] = field(default_factory=list)  # history.sql count(*) round trips
    max_behind: int = 0  # the most events the store had not committed, at a progress line
    notes: list[str] = field(default_factory=list)


class Driver:
    """Runs in a thread with its own event loop and NATS connection: starts the submitter,
    polls BD_RUNS and the store, prints progress."""

    def __init__(self, args: argparse.Namespace, url: str, task_id: str, sampler: Sampler,
                 children: Children, probe: TuiProbe | None) -> None:
        self.args, self.url, self.task_id = args, url, task_id
        self.sampler, self.children, self.probe = sampler, children, probe
        self.timeline = Timeline()
        self.lines = args.executions * args.lines_per_run

    def run(self) -> Timeline:
        asyncio.run(self._run())
        return self.timeline

    async def _run(self) -> None:
        nc = await nats.connect(self.url, name="load-driver")
        js = nc.jetstream()
        api = ApiClient(nc, ORG, timeout=30.0)
        submitter = Submitter()
        timeline = self.timeline
        try:
            self.sampler.watch("bench (dashboard)" if self.probe is not None else "bench", os.getpid())
            self.sampler.watch("submitter", await submitter.start(
                submitter_argv(self.url, self.task_id, self.args.executions, self.args.in_flight)), late=True)
            stored = 0
            progress_at = stalled_since = time.monotonic()
            last_state: tuple[int, ...] = ()
            while True:
                await asyncio.sleep(POLL_SECONDS)
                now = time.monotonic()
                runs_left = (await js.stream_info(streams.RUNS)).state.messages
                if timeline.last_start is None and submitter.summary is not None:
                    timeline.submit = submitter.summary
                    if "crash" in timeline.submit:
                        raise RuntimeError(f"the submitter failed:\n{timeline.submit['crash']}")
                    timeline.first_start, timeline.last_start = timeline.submit["first"], timeline.submit["last"]
                if timeline.last_start is not None and runs_left == 0 and timeline.all_final is None:
                    timeline.all_final = now
                finals_seen = timeline.all_final is not None
                if finals_seen or now - progress_at >= PROGRESS_SECONDS:
                    stored = await self._stored_lines(api)
                if finals_seen and stored >= self.lines:
                    timeline.all_stored = now
                    if stored > self.lines:
                        timeline.notes.append(f"history.sql counts {stored} log lines, {self.lines} expected")
                    break
                if now - progress_at >= PROGRESS_SECONDS:
                    progress_at = now
                    behind = await _events_behind(js)
                    timeline.max_behind = max(timeline.max_behind, behind)
                    say(self._progress(now, submitter, runs_left, stored, behind))
                state = (submitter.sent, runs_left, stored)
                if state != last_state:
                    last_state, stalled_since = state, now
                elif now - stalled_since > STALL_SECONDS:
                    raise RuntimeError(f"no progress for {STALL_SECONDS:g} s: {submitter.sent} started, {runs_left} "
                                       f"runs in BD_RUNS, {stored} of {self.lines} lines stored")
                self._check_children()
            self.sampler.sample()
        finally:
            await submitter.stop()
            await nc.close()

    async def _stored_lines(self, api: ApiClient) -> int:
        began = time.monotonic()
        try:
            reply = await api.call("history", "sql", {"sql": "SELECT count(*) FROM logs"}, timeout=60.0)
        except ApiError as err:
            self.timeline.notes.append(f"history.sql count failed: {err.code} {err.message}")
            return -1
        self.timeline.sql_seconds.append(time.monotonic() - began)
        return reply["rows"][0][0]

    def _check_children(self) -> None:
        for process in self.children.processes:
            if process.poll() is not None:
                raise RuntimeError(f"{' '.join(process.args[2:4])} exited with {process.returncode}")

    def _progress(self, now: float, submitter: Submitter, runs_left: int, stored: int, behind: int) -> str:
        began = now if math.isnan(submitter.first) else submitter.first  # NaN until it sends
        finished = submitter.sent - runs_left
        line = (f"  {now - began:7.1f} s  started {submitter.sent:>7}"
                + (f" ({submitter.refused} refused)" if submitter.refused else "")
                + f"  final ~{max(finished, 0):>7}  queued/running {runs_left:>6}  lines stored {stored:>8}"
                + f"  store behind {behind:>7} events  rss {self.sampler.total_rss_mb():6.0f} MB")
        if self.probe is not None:
            recent = [v for at, v in self.probe.samples.lag if at > now - PROGRESS_SECONDS]
            presses = [v for at, v in self.probe.samples.press if at > now - PROGRESS_SECONDS]
            line += (f"  tui lag p95 {_ms(_pct(recent, 95))}, key p95 {_ms(_pct(presses, 95))}"
                     f" ({len(presses)} keys)")
        return line


async def _events_behind(js: Any) -> int:
    """Events of BD_EVENTS the store has not committed yet (pending + delivered, unacked)."""
    try:
        info = await js.consumer_info(streams.EVENTS, "store_history")
    except NotFoundError:
        return -1
    return info.num_pending + info.num_ack_pending


# ---- checks after the load -----------------------------------------------------------------


async def check_counts(url: str, args: argparse.Namespace) -> list[str]:
    """What live state and the history say about the executions and lines, with the
    time `exec.list` takes over all of them (the dashboard calls it at every (re)connect)."""
    nc = await nats.connect(url, name="load-check")
    api = ApiClient(nc, ORG, timeout=300.0)
    out = []
    try:
        began = time.monotonic()
        succeeded = (await api.call("exec", "list", {"filter": {"status": ["succeeded"]}, "per_page": 1}))["total"]
        seconds = time.monotonic() - began
        others = await api.call("exec", "list", {"filter": {"status": [s for s in (*FINAL, "queued", "running")
                                                                       if s != "succeeded"]}, "per_page": 1000})
        by_status = {"succeeded": succeeded, **Counter(item["status"] for item in others["items"])}
        out.append(f"exec.list (live state): {_counts(by_status)}" + (f" (of {others['total']} not succeeded)"
                   if others["total"] > len(others["items"]) else "")
                   + f"; one exec.list takes {seconds:.1f} s over {succeeded + others['total']:,} live executions")
        rows = (await api.call("history", "sql", {"sql": "SELECT status, count(*) FROM executions GROUP BY status "
                                                         "ORDER BY 2 DESC"}))["rows"]
        out.append(f"history.sql executions: {_counts(dict(rows))}")
        lines, runs, off = (await api.call("history", "sql", {"sql": (
            "SELECT sum(n), count(*), count(*) FILTER (WHERE n <> ?) FROM "
            "(SELECT execution_id, count(*) AS n FROM logs GROUP BY execution_id)"),
            "params": [args.lines_per_run]}))["rows"][0]
        out.append(f"history.sql logs: {lines:,} lines of {runs:,} executions; {off} executions without exactly "
                   f"{args.lines_per_run} lines")
    except ApiError as err:
        out.append(f"check failed: {err.code} {err.message}")
    finally:
        await nc.close()
    return out


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{status} {n:,}" for status, n in counts.items()) or "none"


BAD_LINE = re.compile(r" (WARNING|ERROR|CRITICAL) |\[(WRN|ERR|FTL)\]|Slow Consumer")
"""Python services' warnings and errors; nats-server's, and its slow consumers (logged as [INF])."""


def log_findings(logs: dict[str, Path]) -> list[str]:
    """Warning and error lines of each process's log, counted by shape (ids and numbers
    masked), each with the last line of the traceback that follows it, if any."""
    out = []
    for name, path in logs.items():
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        shapes: Counter[str] = Counter()
        for number, line in enumerate(lines):
            if not BAD_LINE.search(line):
                continue
            text = re.sub(r"^.*? (WARNING|ERROR|CRITICAL) \S+: |^.*?\[[A-Z]{3}\] ", "", line)  # time, level, logger
            shape = re.sub(r"[0-9A-Z]{26}|\d+", "#", text)[:140]
            if number + 1 < len(lines) and lines[number + 1].startswith("Traceback"):
                after = lines[number + 2:]
                end = next((i for i, text in enumerate(after) if not text.startswith((" ", "\t", "During", "The above", "Traceback"))
                            and text.strip()), None)
                if end is not None:
                    shape += f" -> {after[end][:120]}"
            shapes[shape] += 1
        if shapes:
            out.append(f"{name}: {sum(shapes.values())} warning/error lines")
            out += [f"    {n:>6} x {shape}" for shape, n in shapes.most_common(5)]
    return out


# ---- output ------------------------------------------------------------------------------------


def say(text: str) -> None:
    """A line on the real stdout: while the dashboard runs, Textual captures `print`."""
    sys.__stdout__.write(text + "\n")
    sys.__stdout__.flush()


def _pct(values: list[float], pct: int) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def _ms(seconds: float) -> str:
    return "    - ms" if math.isnan(seconds) else f"{seconds * 1000:5.0f} ms"  # NaN: no sample in the window


def _n(number: float) -> str:
    return f"{number:,.0f}".replace(",", " ")


def report(args: argparse.Namespace, timeline: Timeline, sampler: Sampler, probe: TuiProbe | None,
           checks: list[str], findings: list[str]) -> None:
    t, lines = timeline, args.executions * args.lines_per_run
    submit_s, runs_s = t.last_start - t.first_start, t.all_final - t.last_start
    store_s, total_final, total_stored = t.all_stored - t.all_final, t.all_final - t.first_start, \
        t.all_stored - t.first_start
    s = t.submit
    print(f"\nload: {_n(args.executions)} executions x {args.lines_per_run} lines = {_n(lines)} log lines; "
          f"{args.runners} runners x concurrency {args.concurrency}; {args.in_flight} starts in flight")
    print(f"\n{'phase':<52} {'seconds':>9} {'rate':>16}")
    print(f"{'submit (first start sent -> last reply)':<52} {submit_s:>9.1f} {s['ok'] / submit_s:>10.0f} starts/s")
    print(f"{'  start request round trip p50 / p99 / max (ms)':<52} {'':>9} "
          f"{s['p50'] * 1000:.0f} / {s['p99'] * 1000:.0f} / {s['max'] * 1000:.0f}")
    print(f"{'drain runs (last start reply -> all final)':<52} {runs_s:>9.1f}")
    print(f"{'drain store (all final -> every line in history.sql)':<52} {store_s:>9.1f}")
    print(f"{'runs (first start -> all final)':<52} {total_final:>9.1f} {args.executions / total_final:>10.1f} runs/s")
    print(f"{'lines (first start -> every line stored)':<52} {total_stored:>9.1f} {lines / total_stored:>10.0f} lines/s")
    if s.get("errors"):
        print(f"refused starts: {s['errors']}")

    wall = total_stored
    print(f"\n{'process':<20} {'pid':>8} {'rss before':>11} {'peak VmHWM':>11} {'rss max':>9} {'rss end':>9} "
          f"{'cpu':>8} {'cpu':>6} {'commands':>9}\n{'':<20} {'':>8} {'(MB)':>11} {'(MB)':>11} {'(MB)':>9} "
          f"{'(MB)':>9} {'(s)':>8} {'(%)':>6} {'cpu (s)':>9}")
    for item in sampler.watched.values():
        own = item.cpu_end[0] - item.cpu_before[0]
        kids = item.cpu_end[1] - item.cpu_before[1]
        before = f"{'-':>11}" if item.late else f"{item.rss_before / 1024:>11.1f}"
        print(f"{item.name:<20} {item.pid:>8} {before} {item.hwm / 1024:>11.1f} "
              f"{item.rss_max / 1024:>9.1f} {item.rss_end / 1024:>9.1f} {own:>8.1f} {own * 100 / wall:>6.0f} "
              f"{kids:>9.1f}" + ("  (exited)" if item.gone else ""))
    ours = sum(i.cpu_end[0] - i.cpu_before[0] + i.cpu_end[1] - i.cpu_before[1] for i in sampler.watched.values())
    busy = sampler.machine_end - sampler.machine_before
    print(f"machine: {busy:.0f} CPU s busy of {wall * (os.cpu_count() or 1):.0f} ({os.cpu_count()} cores); these "
          f"processes and their commands {ours:.0f} s; other processes on the machine {max(busy - ours, 0):.0f} s")
    print("rss before = when the first start is sent; peak = VmHWM (startup included); rss max = the largest "
          "1 s sample; cpu = over the load (first start -> every line stored); commands = CPU of the "
          "runner's finished `sh` children")

    if probe is not None:
        samples = probe.samples
        print(f"\ndashboard (headless 140x40, this process; opened in {samples.open_seconds:.1f} s; at the end "
              f"{samples.shown} executions in its live state, {samples.not_final} of them not final; NATS client: "
              f"{samples.reconnects} reconnects, errors {dict(samples.client_errors) or 'none'})")
        print(f"{'':<44} {'samples':>8} {'of ~':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
        phases = [("whole load", t.first_start, t.all_stored), ("  submitting", t.first_start, t.last_start),
                  ("  draining runs", t.last_start, t.all_final), ("  draining store", t.all_final, t.all_stored)]
        for label, kind in (("event-loop lag (250 ms sleep, late by)", "lag"),
                            ("key press -> cursor moved (the table's action ran)", "handled"),
                            ("key press -> screen refreshed after it", "press")):
            print(label)
            for phase, start, end in phases:
                values = [v for at, v in getattr(samples, kind) if start <= at <= end]
                print(f"{phase:<44} {len(values):>8} {(end - start) / PROBE_SECONDS:>6.0f} "
                      f"{_pct(values, 50) * 1000:>8.1f} {_pct(values, 95) * 1000:>8.1f} "
                      f"{max(values, default=float('nan')) * 1000:>8.1f}")
        print(f"'of ~' = phase seconds / {PROBE_SECONDS:g} s: a sample waits for the previous key, so a starved "
              "dashboard takes fewer")
        for error in Counter(samples.errors).most_common(3):
            print(f"  probe error {error[1]} x {error[0]}")

    sql = t.sql_seconds
    print(f"\nhistory.sql `SELECT count(*) FROM logs` during the load: {len(sql)} requests, p50 "
          f"{_pct(sql, 50) * 1000:.0f} ms, max {max(sql, default=float('nan')) * 1000:.0f} ms")
    print(f"the store was at most {_n(t.max_behind)} events behind (pending + unacked on its consumer, "
          "at the progress lines)")
    print("\nchecks")
    for line in checks + t.notes:
        print(f"  {line}")
    print("\nwarnings and errors in the logs" + ("" if findings else ": none"))
    for line in findings:
        print(f"  {line}")


# ---- main ------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, children: Children, work: Path) -> None:
    began = time.monotonic()
    # The dashboard's own log lines (it runs here) go to a file, read like the services' logs.
    logging.basicConfig(filename=work / "dashboard.log", level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    url, pids, logs = await start_stack(args, children, work)
    logs["dashboard"] = work / "dashboard.log"
    nc = await nats.connect(url, name="load-setup")
    server = nc.connected_server_version
    print(f"versions: nats-server {server.major}.{server.minor}.{server.patch}, nats-py "
          f"{importlib.metadata.version('nats-py')}, duckdb {importlib.metadata.version('duckdb')}, textual "
          f"{importlib.metadata.version('textual')}; {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"stack up in {time.monotonic() - began:.1f} s: " + ", ".join(f"{name} {pid}" for name, pid in pids.items()))
    task = await ApiClient(nc, ORG).call("task", "create", task_spec(args.lines_per_run))
    await nc.close()

    probe = None if args.no_tui else TuiProbe(url)
    probe_task = None
    if probe is not None:
        probe_task = asyncio.create_task(probe.run(), name="tui-probe")
        await asyncio.wait({probe_task, asyncio.create_task(probe.ready.wait())}, timeout=60,
                           return_when=asyncio.FIRST_COMPLETED)
        if probe_task.done():
            await probe_task  # raises what went wrong
        if not probe.ready.is_set():
            raise RuntimeError("the dashboard did not load within 60 s")

    sampler = Sampler()
    for name, pid in pids.items():
        sampler.watch(name, pid)
    sampler.start()
    driver = Driver(args, url, task["id"], sampler, children, probe)
    say(f"\n{_n(args.executions)} starts, {args.in_flight} in flight; progress every {PROGRESS_SECONDS:g} s "
        "(final ~ = started - runs left in BD_RUNS)")
    try:
        timeline = await asyncio.to_thread(driver.run)
    finally:
        sampler.stop()
        if probe is not None:
            probe.halt.set()
            await probe_task
    checks = await check_counts(url, args)
    if probe is not None:
        checks.append(await reopen_dashboard(url))
    report(args, timeline, sampler, probe, checks, log_findings(logs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executions", type=int, default=100_000, help="task.start requests (default 100000)")
    parser.add_argument("--lines-per-run", type=int, default=10, help="lines each run prints (default 10)")
    parser.add_argument("--runners", type=int, default=2, help="runner processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=8, help="runs at once per runner (default 8)")
    parser.add_argument("--in-flight", type=int, default=64, help="task.start requests outstanding (default 64)")
    parser.add_argument("--quick", action="store_true",
                        help="a fast check: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()))
    parser.add_argument("--no-tui", action="store_true", help="do not run the dashboard during the load")
    parser.add_argument("--submitter", nargs=4, metavar=("URL", "TASK", "COUNT", "IN_FLIGHT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.submitter:  # the child process that sends the starts
        url, task_id, count, in_flight = args.submitter
        asyncio.run(submit(url, task_id, int(count), int(in_flight)))
        return
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    run_with_children("batchdeck-load-bench-", lambda children, work: asyncio.run(run(args, children, work)))


if __name__ == "__main__":
    main()
