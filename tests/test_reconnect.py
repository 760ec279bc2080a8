"""Services and a lost NATS server: they say once that it is gone and once that it is
back, pick up their work again (consumers and subscriptions re-made), and in between
try it again at growing intervals, not in a tight loop.

Real processes: an embedded nats-server stopped and started again on its port and store,
`batchdeck broker` and `batchdeck runner` subprocesses.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import nats
from expectations import eventually

from broker.client import ApiClient
from broker.connect import RECONNECT_FIRST_WAIT, RECONNECT_MAX_WAIT, ConnectOptions, connect, reconnect_backoff
from broker.server import EmbeddedServer

REPO = Path(__file__).resolve().parents[1]
GONE = "NATS connection lost; reconnecting"
BACK = "NATS connection is back"


async def _spawn(log_file: Path, *args: str) -> asyncio.subprocess.Process:
    with log_file.open("wb") as sink:
        return await asyncio.create_subprocess_exec(sys.executable, "-m", "batchdeck", *args, cwd=REPO,
                                                    stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=sink)


async def _logged(log_file: Path, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in log_file.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} not in {log_file.name}:\n{log_file.read_text()[-3000:]}"
        await asyncio.sleep(0.05)


async def _run_to_end(api: ApiClient, task_id: str, timeout: float = 30.0) -> dict:
    execution_id = (await api.call("task", "start", {"id": task_id}))["execution_id"]
    deadline = time.monotonic() + timeout
    while (execution := await api.call("exec", "get", {"id": execution_id}))["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, execution
        await asyncio.sleep(0.1)
    return execution


async def test_services_say_when_the_server_is_gone_and_back_and_work_on(tmp_path: Path):
    server = EmbeddedServer(tmp_path / "nats")
    server.start()
    logs = {name: tmp_path / f"{name}.log" for name in ("broker", "runner", "store")}
    processes = [
        await _spawn(logs["broker"], "broker", "--nats", server.url),
        await _spawn(logs["runner"], "runner", "--nats", server.url, "--name", "r-restart", "--ack-wait", "5"),
    ]
    nc = None
    try:
        await _logged(logs["broker"], "broker serving")
        processes.append(await _spawn(logs["store"], "store", "--nats", server.url, "--db", str(tmp_path / "h.duckdb")))
        await _logged(logs["runner"], "runner r-restart serving")
        await _logged(logs["store"], "store: history in")
        nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        api = ApiClient(nc, "default", timeout=10)
        task = await api.call("task", "create", {"name": "echo", "command": ["echo", "hi"]})
        assert (await _run_to_end(api, task["id"]))["status"] == "succeeded"

        await asyncio.to_thread(server.stop)
        for log_file in logs.values():
            await _logged(log_file, GONE)
        await asyncio.sleep(3)  # down for a while: several tries each
        await asyncio.to_thread(server.start)
        for log_file in logs.values():
            await _logged(log_file, BACK, timeout=30)

        async def works() -> dict | None:
            try:
                return await _run_to_end(api, task["id"])
            except Exception:  # the broker may still be re-making its consumer
                return None

        execution = await eventually(works, 30, 0.5, "a run after the server came back")
        assert (execution["status"], execution["runner_id"]) == ("succeeded", "r-restart")

        # the store resumed its ingest too: the run after the restart is in the history
        async def stored() -> bool:
            reply = await api.call("history", "sql", {"sql": "SELECT status FROM executions WHERE id = ?",
                                                      "params": [execution["id"]]})
            return reply["rows"] == [["succeeded"]]

        await eventually(stored, 30, 0.5, "the run in the history")
        for name, log_file in logs.items():
            text = log_file.read_text()
            assert (text.count(GONE), text.count(BACK)) == (1, 1), (name, text[-3000:])
    finally:
        if nc is not None:
            await nc.close()
        for process in processes:
            if process.returncode is None:
                process.terminate()
                await process.wait()
        server.stop()


async def test_a_service_tries_a_lost_server_again_at_growing_intervals(tmp_path: Path):
    server = EmbeddedServer(tmp_path / "nats")
    server.start()
    nc = await connect(ConnectOptions(url=server.url, name="backoff-test"), service=True)
    tries: list[float] = []

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tries.append(time.monotonic())  # a TCP accept that never says INFO: a failed try
        writer.close()

    try:
        await asyncio.to_thread(server.stop)
        stand_in = await asyncio.start_server(refuse, "127.0.0.1", server.port, reuse_address=True)
        try:
            await asyncio.sleep(9)
        finally:
            stand_in.close()
            await stand_in.wait_closed()
    finally:
        await nc.close()
    gaps = [b - a for a, b in zip(tries, tries[1:], strict=False)]
    print(f"tries at {[round(t - tries[0], 2) for t in tries]}")
    assert len(tries) >= 4, tries
    assert gaps[0] < 1.0, gaps  # the first ones come quickly
    assert max(gaps) >= 2.0 and all(gap <= RECONNECT_MAX_WAIT + 0.5 for gap in gaps), gaps
    assert len(tries) <= 12, f"{len(tries)} tries in 9 s: not backing off"


def test_the_backoff_tries_another_server_at_once_and_then_waits_longer_each_time():
    from nats.aio.client import Server
    from urllib.parse import urlparse

    fresh, failed = Server(urlparse("nats://a:4222")), Server(urlparse("nats://b:4222"))
    failed.reconnects = 3
    assert reconnect_backoff([failed, fresh], {}) == (fresh, 0.0)
    waits = []
    for reconnects in range(1, 10):
        fresh.reconnects = reconnects
        server, wait = reconnect_backoff([fresh], {})
        waits.append(wait)
        cap = min(RECONNECT_MAX_WAIT, RECONNECT_FIRST_WAIT * 2 ** (reconnects - 1))
        assert 0.75 * cap <= wait <= cap
    assert waits[-1] >= 0.75 * RECONNECT_MAX_WAIT
