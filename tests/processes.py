"""Finding the processes a test started, by a marker in their command line."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def unique_sleep(seconds: int = 60) -> str:
    """A sleep duration no other process on the machine has: its text marks our processes."""
    return f"{seconds}.{uuid.uuid4().int % 10**8:08d}"


def processes_with(marker: str) -> list[tuple[int, str]]:
    """Live (not zombie) processes whose command line contains `marker`, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state not in ("Z", "X"):
            found.append((int(entry), cmdline.strip()))
    return found
