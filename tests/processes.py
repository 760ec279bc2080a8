"""Finding the processes a test started, by a marker in their command line; reading
what `batchdeck up` printed until its banner."""

from __future__ import annotations

import os
import select
import subprocess
import time
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


def up_banner(up: subprocess.Popen, timeout: float = 60.0) -> str:
    """What `batchdeck up` printed up to its banner ("batchdeck is up …"); the test fails
    with all it said, stderr too, when it ended or never got there."""
    deadline = time.monotonic() + timeout
    said = b""
    # os.read, not readline: readline may pull the banner into the file's buffer along
    # with the line before it, and select on the pipe would then wait for more in vain.
    while b"batchdeck is up" not in said and time.monotonic() < deadline and up.poll() is None:
        ready, _, _ = select.select([up.stdout], [], [], 0.2)
        if ready:
            said += os.read(up.stdout.fileno(), 65536)
    seen = said.decode(errors="replace")
    if up.poll() is not None:  # it ended: show all it said, to tell why
        out, err = up.communicate(timeout=10)
        seen += f"{out}\n[exit code {up.returncode}; stderr:]\n{(err or '')[-3000:]}"
    assert up.poll() is None and "batchdeck is up" in seen, seen
    return seen
