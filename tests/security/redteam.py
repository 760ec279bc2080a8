"""The red team's setup (the security suite's conftest makes its fixtures of it), kept
in CI: one nats-server started from deploy/nats/auth-server.conf
with the accounts and users `batchdeck nats-config --org acme --org umbrella` makes (as
deploy/nats/README.md says to add an org), and every service as a process of its own on
its own user: broker, store, scheduler, notifier, and a runner of each org.

- `system`: the server and the services (one set for the whole security suite; tests
  use ids of their own, so they do not meet).
- `login(user)`: a client connection of that user as the CLI makes it (the inbox prefix
  its role may subscribe to); `api(user)`: an ApiClient of the user's org on it.
- `webhooks`: a receiver on 127.0.0.2 (the notifier may post there: --webhook-allow),
  keeping what each path got.

When a test fails, the tail of every service's log is added to its report.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client


REPO = Path(__file__).resolve().parents[2]
AUTH_SERVER_CONF = REPO / "deploy" / "nats" / "auth-server.conf"
ORGS = ("acme", "umbrella")
ROLES = ("viewer", "operator", "admin", "runner")
SERVICE_USERS = ("bd-broker", "bd-store", "bd-scheduler", "bd-notifier", "bd-monitor")
ORG_USERS = tuple(f"{org}-{role}" for org in ORGS for role in ROLES)
PASSWORDS = {user: f"{user.replace('-', '')}{secrets.token_hex(8)}" for user in SERVICE_USERS + ORG_USERS}
WEBHOOK_SECRETS = {org: secrets.token_hex(16) for org in ORGS}
WEBHOOK_HOST = "127.0.0.2"
"""Loopback, but not 127.0.0.1: the notifier is allowed this one address only."""
LOG_TAIL_CHARS = 4000


def inbox_of(user: str) -> str:
    """The inbox prefix a user of an org may subscribe to: `_INBOX_{org}.{role}`."""
    org, role = user.rsplit("-", 1)
    return f"_INBOX_{org}.{role}"


@dataclass
class System:
    root: Path
    port: int
    server: subprocess.Popen[bytes] | None = None
    services: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    webhook_port: int = 0

    def url(self, user: str) -> str:
        return f"nats://{user}:{PASSWORDS[user]}@127.0.0.1:{self.port}"

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace") if self.logs[name].exists() else ""

    def start(self, name: str, user: str, *args: str, env: dict[str, str] | None = None) -> None:
        """`python -m batchdeck ARGS` as `user`, its credentials in its environment."""
        self.logs[name] = self.root / f"{name}.log"
        environment = {**os.environ, "BATCHDECK_NATS_URL": self.url(user), **(env or {})}
        environment.pop("BATCHDECK_INBOX_PREFIX", None)
        if not user.startswith("bd-"):
            environment["BATCHDECK_INBOX_PREFIX"] = inbox_of(user)
        with self.logs[name].open("ab") as sink:
            self.services[name] = subprocess.Popen([sys.executable, "-m", "batchdeck", *args], env=environment,
                                                   stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, cwd=REPO,
                                                   start_new_session=True)

    def wait_logged(self, name: str, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log(name):
            process = self.services.get(name)
            if process is not None and process.poll() is not None:
                pytest.fail(f"{name} exited ({process.returncode}) before logging {text!r}:\n"
                            f"{self.log(name)[-LOG_TAIL_CHARS:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{name} did not log {text!r} within {timeout:g} s:\n{self.log(name)[-LOG_TAIL_CHARS:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        for process in self.services.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.services.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()


async def service_counters(monitor: Client, service: str) -> dict[str, float]:
    """A service's metrics from its micro stats (`$SRV.STATS`), summed over its instances."""
    inbox = monitor.new_inbox()
    replies: list[Any] = []

    async def keep(msg: Any) -> None:
        replies.append(msg)

    sub = await monitor.subscribe(inbox, cb=keep)
    await monitor.publish(f"$SRV.STATS.{service}", b"", reply=inbox)
    await asyncio.sleep(0.5)
    await sub.unsubscribe()
    totals: dict[str, float] = defaultdict(float)
    for reply in replies:
        endpoints = json.loads(reply.data).get("endpoints") or []
        for name, value in ((endpoints[0].get("data") or {}) if endpoints else {}).items():
            totals[name] += value
    return dict(totals)



@dataclass
class Webhooks:
    url: str
    received: dict[str, list[tuple[dict[str, str], bytes]]] = field(default_factory=lambda: defaultdict(list))
    status: int = 200
    body: bytes = b""


