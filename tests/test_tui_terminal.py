"""The dashboard in a real terminal: `batchdeck up --headless` in a subprocess,
`batchdeck tui` in a tmux pane of a fixed size, read with capture-pane and driven with
send-keys, as a person at a terminal would.

Synchronous on purpose: everything it talks to runs in subprocesses.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_cli import _start_up, _stop, _wait_for_api, cli

from broker.server import free_port

REPO = Path(__file__).resolve().parents[1]
SIZE = (120, 36)
BATCH_NAME = "Terminal smoke batch"


class Tmux:
    """A tmux server of our own (a socket in a directory of its own, no user config),
    so nothing of the user's tmux is seen or touched; `kill()` ends it with every
    session in it and removes the socket."""

    def __init__(self) -> None:
        self.home = tempfile.mkdtemp(prefix="bdtmux")  # short: a socket path may not be long
        self.socket = os.path.join(self.home, "socket")
        self.env = {key: value for key, value in os.environ.items() if key != "TMUX"}  # not nested in the user's
        self.env.setdefault("TERM", "xterm-256color")

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-S", self.socket, "-f", os.devnull, *args], check=False,
                              env=self.env, capture_output=True, text=True, timeout=30)

    def screen(self, target: str) -> str:
        return self("capture-pane", "-p", "-t", target).stdout

    def kill(self) -> None:
        self("kill-server")
        shutil.rmtree(self.home, ignore_errors=True)


def wait_for(probe: Callable[[], object], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out: {what()}")
        time.sleep(0.2)


def test_tui_shows_a_batch_in_a_real_terminal_and_q_exits_0(tmp_path: Path):
    if shutil.which("tmux") is None:
        if os.environ.get("BATCHDECK_REQUIRE_TMUX"):  # CI installs it: there, a missing tmux is a failure
            pytest.fail("tmux is not on PATH but BATCHDECK_REQUIRE_TMUX is set")
        pytest.skip("tmux is not on PATH (apt-get install tmux): the dashboard is not tried in a real terminal")
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    up = _start_up(tmp_path / "data", port, "--runners", "1")
    tmux = Tmux()
    try:
        assert _wait_for_api(up, url).returncode == 0
        for args in (("task", "create", "--name", "smoke step", "--id", "smoke-step", "--", "true"),
                     ("batch", "create", "--name", BATCH_NAME, "--id", "smoke-batch", "--cron", "0 3 1 1 *",
                      "--task", "smoke-step")):
            made = cli(*args, url=url, org="default")
            assert made.returncode == 0, made.stderr

        exit_file = tmp_path / "tui-exit"
        dashboard = f"{shlex.quote(sys.executable)} -m batchdeck tui --nats {url} --org default"
        script = f"{dashboard}; echo EXIT=$? > {shlex.quote(str(exit_file))}"
        started = tmux("new-session", "-d", "-s", "tui", "-x", str(SIZE[0]), "-y", str(SIZE[1]), "-c", str(REPO),
                       "sh", "-c", script)
        assert started.returncode == 0, started.stderr
        assert tmux("display-message", "-p", "-t", "tui", "#{window_width}x#{window_height}").stdout.strip() == \
            f"{SIZE[0]}x{SIZE[1]}"

        wait_for(lambda: BATCH_NAME in tmux.screen("tui"), 60, lambda: f"no {BATCH_NAME!r} on screen:\n"
                 f"{tmux.screen('tui')}")
        screen = tmux.screen("tui")
        assert "connected" in screen and "org default" in screen, screen

        assert tmux("send-keys", "-t", "tui", "q").returncode == 0
        wait_for(lambda: exit_file.exists() and exit_file.read_text().strip(), 30,
                 lambda: f"the dashboard did not exit after q; screen:\n{tmux.screen('tui')}")
        assert exit_file.read_text().strip() == "EXIT=0"
    finally:
        tmux.kill()
        try:
            _stop(up)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
