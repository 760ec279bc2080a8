"""How much of a run's output a runner keeps, and how fast it takes it.

- A **quota per action**: the task's `log_max_lines` and `log_max_bytes` (the control
  plane resolves them into the run's snapshot). Past either, the process runs on and its
  output is still read, so it never blocks on a full pipe, but each line is only counted:
  one marker line at the end of the action says how many were dropped, and the
  execution records the totals (`log_dropped_lines`, `log_dropped_bytes`). The runner's
  own lines (`stream: "runner"`) are not counted against it.
- A **rate per runner**, shared by all its runs: lines and bytes a second. A run over it
  waits: the runner stops reading its pipe, the pipe fills, the process's writes block.
  Nothing piles up in memory, and one chatty run cannot flood the events stream.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

DEFAULT_LINES = 100_000
DEFAULT_BYTES = 64 * 1024 * 1024
"""An action's quota when its snapshot names none (a run enqueued by an older broker)."""
DEFAULT_RATE_LINES = 50_000
DEFAULT_RATE_BYTES = 32 * 1024 * 1024
"""Lines and bytes a second one runner publishes at most, over all its runs."""


@dataclass
class Quota:
    """One action's allowance and what it used."""

    lines: int = DEFAULT_LINES
    bytes: int = DEFAULT_BYTES
    kept_lines: int = 0
    kept_bytes: int = 0
    dropped_lines: int = 0
    dropped_bytes: int = 0

    def admit(self, size: int) -> bool:
        """Whether a line of `size` bytes is kept; counted either way."""
        if self.dropped_lines or self.kept_lines >= self.lines or self.kept_bytes + size > self.bytes:
            self.dropped_lines += 1
            self.dropped_bytes += size
            return False
        self.kept_lines += 1
        self.kept_bytes += size
        return True

    def marker(self) -> str:
        """The line that says what was dropped."""
        return (f"log cut: {self.dropped_lines} more line(s), {_size(self.dropped_bytes)}, were dropped: this "
                f"action's output is kept up to {self.lines} lines or {_size(self.bytes)} (the task's "
                "log_max_lines / log_max_bytes)")


class Rate:
    """A token bucket of lines and bytes a second; zero means no limit of that kind."""

    def __init__(self, lines_per_second: float = DEFAULT_RATE_LINES,
                 bytes_per_second: float = DEFAULT_RATE_BYTES) -> None:
        self.lines_per_second = lines_per_second
        self.bytes_per_second = bytes_per_second
        self._lines = lines_per_second
        self._bytes = bytes_per_second
        self._at = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, size: int) -> None:
        """Wait until one line of `size` bytes fits in the rate."""
        if not self.lines_per_second and not self.bytes_per_second:
            return
        async with self._lock:  # one waiter at a time: the others queue behind it, in order
            while True:
                now = time.monotonic()
                elapsed, self._at = now - self._at, now
                self._lines = min(self.lines_per_second, self._lines + elapsed * self.lines_per_second)
                self._bytes = min(self.bytes_per_second, self._bytes + elapsed * self.bytes_per_second)
                short = max(self._missing(1, self._lines, self.lines_per_second),
                            self._missing(size, self._bytes, self.bytes_per_second))
                if short <= 0:
                    self._lines -= 1 if self.lines_per_second else 0
                    self._bytes -= size if self.bytes_per_second else 0
                    return
                await asyncio.sleep(short)

    @staticmethod
    def _missing(needed: float, have: float, per_second: float) -> float:
        """Seconds until `needed` fits (0 when it does now, or there is no limit). A line
        larger than a whole second's worth of bytes waits for a full bucket."""
        if not per_second:
            return 0.0
        needed = min(needed, per_second)
        return 0.0 if have >= needed else (needed - have) / per_second


def _size(count: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"
