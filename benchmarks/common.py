"""What the benchmarks share: their child processes (started, waited for, stopped
whatever happens), reading a child's log and its CPU time from /proc, and reading
py-spy raw (collapsed) profiles."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from broker.server import EmbeddedServer

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
READY_TIMEOUT = 180.0
"""Seconds a child gets to say it is ready (a loaded 2-core machine is slow to import)."""


def stop_process(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, then SIGKILL when it is still running after `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3 on), None once the
    process is gone: [1] is the parent pid, [11] + [12] its CPU ticks, [13] + [14] its
    waited-for children's."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read().decode()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds used so far) of a process, from /proc; None once it is gone."""
    fields = stat_fields(pid)
    if fields is None:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS


def cpu_seconds(pid: int) -> float | None:
    stat = proc_stat(pid)
    return stat[1] if stat else None


def read_samples(path: Path) -> list[tuple[list[str], int]] | None:
    """The stacks of a py-spy raw profile (frames outermost first, `process`/`thread`
    frames included) with their sample counts; None when there is no profile."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    samples = []
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if count_text.isdigit():
            samples.append(([f for f in stack.split(";") if f], int(count_text)))
    return samples


def frame_name(frame: str) -> tuple[str, str]:
    """`func (…/site-packages/pkg/mod.py:12)` -> (`func`, `pkg/mod.py`): aggregated over
    line numbers, paths shortened to the package or the repository."""
    head, _, rest = frame.partition(" (")
    where = rest.rstrip(")").rsplit(":", 1)[0]
    where = where.split("site-packages/")[-1].split("/lib/python3")[-1].removeprefix(str(ROOT) + "/")
    return head, where


def count_functions(samples: list[tuple[list[str], int]]) -> tuple[int, Counter[str], Counter[str]]:
    """(samples, self samples per function, inclusive samples per function), over the
    Python frames of each stack (`process` and `thread` frames left out)."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for stack, count in samples:
        frames = ["{} ({})".format(*frame_name(f)) for f in stack if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        self_time[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return total, self_time, inclusive


class Children:
    """Every process this benchmark starts, so that any exit (Ctrl-C included) stops them."""

    def __init__(self) -> None:
        self.server: EmbeddedServer | None = None
        self.processes: list[subprocess.Popen] = []

    def spawn(self, argv: list[str], log: Path) -> subprocess.Popen:
        with open(log, "wb") as log_file:
            # Own session: a Ctrl-C reaches the benchmark only, which then stops these.
            process = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log_file,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    @staticmethod
    def stop(process: subprocess.Popen, timeout: float = 20.0) -> None:
        stop_process(process, timeout)

    def stop_all(self) -> None:
        for process in self.processes:
            self.stop(process, 5.0)
        if self.server is not None:
            self.server.stop()


def run_with_children(prefix: str, body: Callable[[Children, Path], None]) -> None:
    """`body(children, work)` in a fresh temporary directory; every process it started
    is stopped whatever happens, and Ctrl-C exits 130 with a word of it."""
    children = Children()
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as work:
            try:
                body(children, Path(work))
            finally:
                children.stop_all()
    except KeyboardInterrupt:
        print("\ninterrupted; every process this benchmark started is stopped", file=sys.stderr)
        sys.exit(130)


async def wait_for_line(process: subprocess.Popen, log: Path, pattern: re.Pattern[bytes],
                        timeout: float = READY_TIMEOUT) -> re.Match[bytes]:
    """The first match of `pattern` in the log of a starting child; RuntimeError with its
    log's tail when it exits first or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            match = pattern.search(log.read_bytes())
        except OSError:
            match = None
        if match:
            return match
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[2]} exited with {process.returncode}:\n{tail(log)}")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{process.args[2]} was not ready within {timeout:g} s:\n{tail(log)}")
