"""One command as a child process in its own process group, its output read line by
line, stopped as a whole group on cancel or timeout."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Sink = Callable[[str, str], Awaitable[None]]
"""`await sink(stream, line)` for every line ("stdout" or "stderr")."""
Skip = Callable[[bytes | bytearray, int], bool]
"""`skip(raw line, bytes cut from it)`: True when the line is not wanted (counted by the
caller instead): it is then neither decoded nor passed to the sink. A process printing
far past its log quota costs little more than the reading of its pipe."""

READ_CHUNK = 64 * 1024
MAX_PENDING_LINE = 64 * 1024
"""Bytes of one unfinished line kept in memory; the rest of a longer line is counted, not kept."""
ORPHAN_WAIT = 2.0
"""Seconds to wait for output pipes after the main process exits (children may hold them)."""


@dataclass
class ProcessResult:
    exit_code: int | None
    outcome: str  # "exited", "timed_out", "canceled", "failed_to_start"
    error: str | None = None


async def run_process(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: str | None,
    sink: Sink,
    timeout: float | None,
    cancel: asyncio.Event,
    grace: float,
    skip: Skip | None = None,
) -> ProcessResult:
    """Run `argv` to the end, a timeout, or `cancel`; every output line goes to `sink`
    unless `skip` says it is not wanted."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, cwd=cwd, start_new_session=True,
        )
    except FileNotFoundError as err:
        missing = cwd if cwd and not os.path.isdir(cwd) else argv[0]
        return ProcessResult(None, "failed_to_start", f"cannot start {argv[0]!r}: {missing!r} not found ({err.strerror})")
    except (PermissionError, NotADirectoryError, OSError) as err:
        return ProcessResult(None, "failed_to_start", f"cannot start {argv[0]!r}: {err}")
    except ValueError as err:  # "embedded null byte": an argument or a variable no process can take
        return ProcessResult(None, "failed_to_start", f"cannot start {argv[0]!r}: {err} in an argument, the "
                                                      "environment or the working directory")

    readers = asyncio.gather(_pump(process.stdout, "stdout", sink, skip), _pump(process.stderr, "stderr", sink, skip))
    waiter = asyncio.ensure_future(process.wait())
    canceled = asyncio.ensure_future(cancel.wait())
    try:
        done, _ = await asyncio.wait({waiter, canceled}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        outcome = "exited" if waiter in done else ("canceled" if canceled in done else "timed_out")
        if outcome != "exited":
            await stop_group(process, grace)
        try:
            await asyncio.wait_for(asyncio.shield(readers), ORPHAN_WAIT)
        except asyncio.TimeoutError:
            # Children that outlived the command still hold its pipes: end them.
            _signal_group(process.pid, signal.SIGKILL)
            await readers
        return ProcessResult(await waiter, outcome)
    finally:
        canceled.cancel()
        if process.returncode is None:
            _signal_group(process.pid, signal.SIGKILL)
            await waiter


async def stop_group(process: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM to the whole group, SIGKILL after `grace` seconds."""
    _signal_group(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace)
    except asyncio.TimeoutError:
        pass
    # Also kill what is left of the group (children that ignored SIGTERM).
    _signal_group(process.pid, signal.SIGKILL)
    await process.wait()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def _pump(stream: asyncio.StreamReader | None, name: str, sink: Sink, skip: Skip | None = None) -> None:
    """Split a pipe into lines; a line longer than MAX_PENDING_LINE keeps its start."""
    if stream is None:
        return
    pending = bytearray()
    dropped = 0
    while True:
        chunk = await stream.read(READ_CHUNK)
        if not chunk:
            break
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            room = MAX_PENDING_LINE - len(pending)
            pending += piece[:room]
            dropped += max(0, len(piece) - room)
            if end < 0:
                break  # the line goes on in the next chunk
            if skip is None or not skip(pending, dropped):
                await sink(name, _text(pending, dropped))
            pending.clear()
            dropped = 0
            start = end + 1
    if (pending or dropped) and (skip is None or not skip(pending, dropped)):
        await sink(name, _text(pending, dropped))


def _text(raw: bytes | bytearray, dropped: int) -> str:
    text = bytes(raw).decode("utf-8", errors="replace").rstrip("\r")
    if dropped:
        text += f" … [line cut: {dropped} more bytes]"
    return text
