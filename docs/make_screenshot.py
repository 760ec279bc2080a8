"""Regenerate docs/dashboard.svg, the README's picture of the dashboard's main screen.

    python docs/make_screenshot.py             # writes docs/dashboard.svg
    python docs/make_screenshot.py OUT.svg     # writes OUT.svg instead

with the project installed (`pip install -e ".[test]"`, as for the tests).

What it does, in about 20 seconds: starts `batchdeck up --headless --demo --runners 1`
on a free port in a temporary data directory (the demo's startup batch runs at once),
runs the demo task "Say hello" and the batch "Nightly report" three times each, opens the
dashboard headless (Textual's Pilot, 140x40 cells), selects the finished startup run so
its log fills the pane, then starts a batch "Count to ten" (the demo's counter twice)
and saves the screen while it runs with its progress bar half full. `up` is stopped and
the temporary directory removed at the end.

Why a batch of two counters: the run lasts long enough to be caught half-way, its bar
moving with each `::progress` line of the counter.

Times on the picture are the local times of the run, and the header names the server
as the default `nats://127.0.0.1:4222` whichever port was used.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats

from broker.client import ApiClient
from broker.connect import ConnectOptions
from broker.server import free_port
from broker.types import FINAL_STATUSES
from tui.app import BatchdeckApp
from tui.widgets.live_table import LiveTable
from tui.widgets.log_pane import LogPane

REPO = Path(__file__).resolve().parents[1]
ORG = "default"
SIZE = (140, 40)
SHOWN_SERVER = "nats://127.0.0.1:4222"
STARTUP_BATCH = "demo-every-minute"
COUNTING_BATCH = {"id": "docs-count-to-ten", "name": "Count to ten", "cron_expression": "0 * * * *",
                  "is_enabled": True, "run_on_startup": False,
                  "actions": [{"task_id": "demo-count"}, {"task_id": "demo-count"}]}


def start_up(data_dir: Path, port: int) -> subprocess.Popen[str]:
    """`batchdeck up --headless --demo`, once its banner says it is up."""
    up = subprocess.Popen(
        [sys.executable, "-m", "batchdeck", "up", "--headless", "--demo", "--runners", "1", "--org", ORG,
         "--data-dir", str(data_dir), "--port", str(port)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    deadline = time.monotonic() + 60
    said = b""
    while b"batchdeck is up" not in said:
        if up.poll() is not None or time.monotonic() > deadline:
            up.kill()
            raise SystemExit(f"batchdeck up did not come up:\n{said.decode(errors='replace')}")
        ready, _, _ = select.select([up.stdout], [], [], 0.2)
        if ready:  # os.read: readline could buffer the banner where select does not see it
            said += os.read(up.stdout.fileno(), 65536)
    return up


async def finished(api: ApiClient, execution_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        execution = await api.call("exec", "get", {"id": execution_id})
        if execution["status"] in FINAL_STATUSES:
            return execution
        if time.monotonic() > deadline:
            raise SystemExit(f"{execution_id} did not finish: {execution}")
        await asyncio.sleep(0.2)


async def until(probe: Any, pilot: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := probe()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await pilot.pause(0.1)
    return result


async def screenshot(url: str) -> str:
    nc = await nats.connect(url, name="make-screenshot")
    api = ApiClient(nc, ORG)
    try:
        startup_run = (await api.call("exec", "list", {"filter": {"batch_id": STARTUP_BATCH}}))["items"][0]["id"]
        runs = [startup_run]
        for _ in range(3):  # some history for the "Recent runs" strips
            for resource, verb, body in (("task", "start", {"id": "demo-hello"}),
                                         ("batch", "start", {"id": "demo-nightly"})):
                runs.append((await api.call(resource, verb, body))["execution_id"])
                await finished(api, runs[-1])
        await finished(api, startup_run)
        await api.call("batch", "create", COUNTING_BATCH)

        app = BatchdeckApp(ConnectOptions(url=url, name="make-screenshot"), ORG, server_label=SHOWN_SERVER)
        async with app.run_test(size=SIZE) as pilot:
            await until(lambda: app.live is not None and app.live.loaded.is_set(), pilot, "the live state")
            executions = app.main_screen.query_one("#executions", LiveTable)
            await until(lambda: startup_run in executions.shown_keys, pilot, "the startup run listed")
            executions.focus()
            executions.move_cursor(row=executions.get_row_index(startup_run), animate=False)
            log = app.main_screen.query_one(LogPane)
            await until(lambda: len(log.rows) >= 6, pilot, "the startup run's log lines")

            counting = (await api.call("batch", "start", {"id": COUNTING_BATCH["id"]}))["execution_id"]

            def half_way() -> bool:
                execution = app.live.executions.get(counting)
                return execution is not None and 40 <= (execution.progress_percent or 0) < 100

            await until(half_way, pilot, "the counting run half way")
            await pilot.pause(0.5)
            svg = app.export_screenshot(title="batchdeck")
        await finished(api, counting)  # `up` then stops with nothing running
        return svg
    finally:
        await nc.close()


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "dashboard.svg"
    with tempfile.TemporaryDirectory(prefix="batchdeck-screenshot-") as data_dir:
        port = free_port()
        up = start_up(Path(data_dir), port)
        try:
            svg = asyncio.run(screenshot(f"nats://127.0.0.1:{port}"))
        finally:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()
    out.write_text(svg)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
