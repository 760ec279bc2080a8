"""The deployment files hold together: docker-compose.yml starts only commands the CLI
accepts, with variables the example env file defines, on NATS configs that exist, and
a node of the compose cluster (deploy/nats/cluster.conf: node + users) really starts
and lets the services' users in and a viewer not write.

Docker itself is not run here (no images can be pulled); the same configs run as
plain nats-server processes.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml

from batchdeck import credentials
from batchdeck.cli import build_parser
from broker.server import find_binary, free_port
from runner.service import consumer_name

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "deploy" / "compose.env.example"
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)\}")


def example_env() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def batchdeck_services() -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in compose()["services"].items() if spec.get("image") == "batchdeck:local"}


def test_every_variable_the_compose_file_uses_is_in_the_example_env():
    used = set(VARIABLE.findall(COMPOSE.read_text()))
    assert used and used <= set(example_env()), sorted(used - set(example_env()))


def test_every_service_command_is_one_the_cli_accepts():
    env = example_env()
    parser = build_parser()
    services = batchdeck_services()
    assert {"broker-1", "broker-2", "scheduler-1", "scheduler-2", "store", "runner-default", "runner-reports"} <= \
        set(services)
    for name, spec in services.items():
        argv = [VARIABLE.sub(lambda m: env[m.group(1)], part) for part in spec["command"]]
        try:
            parser.parse_args(argv)
        except SystemExit as exit_:
            pytest.fail(f"{name}: `batchdeck {shlex.join(argv)}` is refused by the CLI ({exit_.code})")


def test_the_cluster_has_three_nodes_routed_to_each_other_each_with_a_volume():
    services = compose()["services"]
    nodes = {name: spec for name, spec in services.items() if name.startswith("nats-")}
    assert sorted(nodes) == ["nats-1", "nats-2", "nats-3"]
    for name, spec in nodes.items():
        env = spec["environment"]
        assert env["NATS_SERVER_NAME"] == name
        assert {env[f"NATS_ROUTE_{i}"] for i in (1, 2, 3)} == {f"nats://{n}:6222" for n in nodes}
        assert any(volume.endswith(":/data") for volume in spec["volumes"])
        assert spec["command"] == ["-c", "/etc/nats/cluster.conf"]
    assert (ROOT / "deploy" / "nats" / "cluster.conf").exists()
    brokers = [spec for name, spec in services.items() if name.startswith("broker-")]
    assert all("--replicas" in spec["command"] and "3" in spec["command"] for spec in brokers)


def test_auth_conf_is_what_batchdeck_nats_config_makes_of_the_command_it_names():
    """Nobody edited the generated file by hand: the command in its header makes it again."""
    auth = (ROOT / "deploy" / "nats" / "auth.conf").read_text()
    command = auth.splitlines()[1].removeprefix("#").strip()
    assert command.startswith("batchdeck nats-config ")
    made = subprocess.run([sys.executable, "-m", "batchdeck", *shlex.split(command)[1:]], capture_output=True,
                          text=True, cwd=ROOT)
    assert made.returncode == 0, made.stderr
    assert made.stdout == auth


def test_every_password_the_configs_read_is_in_the_example_env():
    auth = (ROOT / "deploy" / "nats" / "auth.conf").read_text()
    needed = set(re.findall(r"\$(BD_PW_[A-Z0-9_]+)", auth))
    assert needed and needed <= set(example_env()), sorted(needed - set(example_env()))


def test_each_runner_pool_in_compose_has_its_consumer_granted():
    auth = (ROOT / "deploy" / "nats" / "auth.conf").read_text()
    for name, spec in batchdeck_services().items():
        command = spec["command"]
        if command[0] != "runner":
            continue
        org, pool = command[command.index("--org") + 1], command[command.index("--pool") + 1]
        assert consumer_name(org, pool) in auth, f"{name}: auth.conf grants no consumer for pool {pool!r} of {org!r}"
        # its tasks could read its command line: the credentials are in its environment
        assert credentials.on_command_line(command) is None, name
        assert "@" in spec["environment"]["BATCHDECK_NATS_URL"], name


async def test_a_node_of_the_compose_cluster_starts_and_enforces_its_users(tmp_path: Path):
    env = {**os.environ, **example_env(), **compose()["services"]["nats-1"]["environment"]}
    port = free_port()
    env.update(NATS_PORT=str(port), NATS_MONITOR_PORT=str(free_port()), NATS_CLUSTER_PORT=str(free_port()),
               NATS_STORE_DIR=str(tmp_path / "jetstream"))
    # Alone: its routes to the other two point at ports nobody listens on, as in a cold start.
    for i in (1, 2, 3):
        env[f"NATS_ROUTE_{i}"] = f"nats://127.0.0.1:{free_port()}"
    log = tmp_path / "nats.log"
    server = subprocess.Popen([find_binary(), "-c", str(ROOT / "deploy" / "nats" / "cluster.conf"), "--log", str(log),
                               "--addr", "127.0.0.1"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while "Server is ready" not in (log.read_text() if log.exists() else ""):
            assert server.poll() is None, server.stderr.read().decode()
            assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
            await asyncio.sleep(0.05)
        secrets = example_env()
        broker = await nats.connect(f"nats://bd-broker:{secrets['BD_PW_BROKER']}@127.0.0.1:{port}")
        await broker.close()
        with pytest.raises(Exception):  # noqa: B017 - nats-py raises several types for a refused login
            await nats.connect(f"nats://bd-broker:wrong@127.0.0.1:{port}", max_reconnect_attempts=1,
                               connect_timeout=2, allow_reconnect=False)
        viewer = await nats.connect(f"nats://default-viewer:{secrets['BD_PW_DEFAULT_VIEWER']}@127.0.0.1:{port}",
                                    inbox_prefix="_INBOX_default.viewer")
        refused: list[Exception] = []

        async def on_error(err: Exception) -> None:
            refused.append(err)

        viewer._error_cb = on_error  # noqa: SLF001 - collect the server's async -ERR for this check
        await viewer.publish("bd.default.api.task.delete", b"{}")
        await viewer.flush()
        for _ in range(40):
            if refused:
                break
            await asyncio.sleep(0.05)
        assert refused and "permissions violation" in str(refused[0]).lower(), refused
        await viewer.close()
    finally:
        server.terminate()
        server.wait(10)
