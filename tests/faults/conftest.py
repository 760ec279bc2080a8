"""The fault suite's harness: a real 3-node JetStream cluster and the batchdeck services
as real processes, so that a test can kill -9 or stop any of them and count what went
in and what came out.

- `cluster`: three nats-servers started from deploy/nats/node.conf (the file the compose
  cluster uses, its values from the environment), on free loopback ports, each with a
  store directory of its own under tmp_path; ready once every node sees the same
  JetStream meta leader. A node can be stopped and started again.
- `services`: `python -m batchdeck broker|runner|store|scheduler ...` subprocesses
  against the cluster (brokers provision with `--replicas 3`), each with its output in
  a log file; SIGKILL or SIGTERM one at any time; the rest get SIGTERM at teardown.
- `client`: an ApiClient of org `acme` on a connection of the test's own;
  `client_on(node, ...)` one on chosen nodes only; `make_task(client, body)` creates a
  task and waits until it reads back; `list_executions(client, **filter)` every live one.
- `wait_for(probe, timeout, interval, what)`: poll until the probe says yes.
- `figures`: what a test measured (runs, lines, seconds); printed when it is recorded
  and again in the run's terminal summary.

A run a runner dropped as unknown fails a test at once, naming it
(`Services.fail_if_dropped`); a broker that exits at start with "no suitable peers for
placement" (a meta leader just elected may count a node as offline) is started again.

When a test fails, the tail of every log (nats-servers and services) is added to its
report. Every wait polls a condition against a generous deadline: these tests share two
cores with three nats-servers and several Python processes.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client

from broker.client import ApiClient
from broker.errors import ApiError, Conflict, Unavailable
from broker.server import find_binary, free_port
from expectations import eventually

REPO = Path(__file__).resolve().parents[2]
NODE_CONF = REPO / "deploy" / "nats" / "node.conf"
ORG = "acme"
LOG_TAIL_CHARS = 6000
STOP_TIMEOUT = 15.0
"""Seconds a service gets to stop on SIGTERM at teardown (runners drain 2 s, grace 1 s)."""
DROPPED_RUN = re.compile(r"run of unknown execution (\S+) ")

_FIGURES = pytest.StashKey[list[tuple[str, str]]]()


# ---- reports: figures and logs ------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a test that takes seconds of real processes (the fault suite)")
    config.stash[_FIGURES] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for path in getattr(item, "fault_logs", []):
            report.sections.append((f"{path.parent.name}/{path.name} (tail)", _tail(path)))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(_FIGURES, [])
    if lines:
        terminalreporter.section("fault suite figures")
        for test, text in lines:
            terminalreporter.write_line(f"{test}: {text}")


def _tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        return f"(unreadable: {err})"
    return text[-LOG_TAIL_CHARS:] or "(empty)"


class Figures:
    """`figures.add("runs 12, recovered in 3.1 s")`: one line of what the test measured."""

    def __init__(self, config: pytest.Config, test: str) -> None:
        self.lines = config.stash[_FIGURES]
        self.test = test

    def add(self, text: str) -> None:
        self.lines.append((self.test, text))
        print(f"[figures] {self.test}: {text}")


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    return Figures(request.config, request.node.name)


@pytest.fixture
def fault_logs(request: pytest.FixtureRequest) -> list[Path]:
    """Log files whose tails go into the report when the test fails."""
    logs: list[Path] = []
    request.node.fault_logs = logs
    return logs


# ---- polling -----------------------------------------------------------------------


@pytest.fixture
def wait_for() -> Callable[..., Awaitable[Any]]:
    """`await wait_for(probe, timeout, interval, what)`: see `expectations.eventually`."""
    return eventually


# ---- the cluster ---------------------------------------------------------------------


class Node:
    """One nats-server of the cluster, configured by deploy/nats/node.conf and the
    environment. Its ports stay the same across a stop and a start."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root
        self.store_dir = root / "jetstream"
        self.log_file = root / "nats-server.log"
        self.port = self.cluster_port = self.monitor_port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def pick_ports(self) -> None:
        self.port, self.cluster_port, self.monitor_port = free_port(), free_port(), free_port()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def route(self) -> str:
        return f"nats://127.0.0.1:{self.cluster_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def spawn(self, routes: list[str]) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "NATS_SERVER_NAME": self.name,
            "NATS_PORT": str(self.port),
            "NATS_MONITOR_PORT": str(self.monitor_port),
            "NATS_STORE_DIR": str(self.store_dir),
            "NATS_CLUSTER_PORT": str(self.cluster_port),
            **{f"NATS_ROUTE_{i}": route for i, route in enumerate(routes, 1)},
        }
        # The file listens on every interface (what a container wants); tests keep the
        # client, monitoring and route ports on loopback.
        with (self.root / "stderr.log").open("ab") as stderr:  # what it says before its log is open
            self.process = subprocess.Popen(
                [find_binary(), "--config", str(NODE_CONF), "--addr", "127.0.0.1",
                 "--cluster_listen", self.route, "--log", str(self.log_file)],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
            )

    def monitor(self, path: str) -> Any:
        """A monitoring endpoint's JSON (`/jsz`, `/healthz`, ...); None when the node does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}{path}", timeout=2) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as err:  # /healthz answers 503 with a JSON body
            try:
                return json.loads(err.read())
            except ValueError:
                return None
        except (OSError, ValueError):
            return None

    def meta_leader(self) -> str | None:
        jsz = self.monitor("/jsz")
        return ((jsz or {}).get("meta_cluster") or {}).get("leader")

    def healthy(self) -> bool:
        """JetStream on this node is current: the meta layer and every stream and
        consumer it holds a replica of (`/healthz`)."""
        return (self.monitor("/healthz") or {}).get("status") == "ok"

    def stream_states(self) -> dict[str, dict[str, Any]]:
        """This node's own view of each stream it holds a replica of: `state`
        (messages, first_seq, last_seq, ...) and `cluster` (leader, replicas)."""
        jsz = self.monitor("/jsz?accounts=true&streams=true") or {}
        states = {}
        for account in jsz.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                states[stream["name"]] = {"state": stream.get("state") or {}, "cluster": stream.get("cluster") or {}}
        return states

    def stop(self, grace: float = STOP_TIMEOUT) -> None:
        """SIGTERM (JetStream flushes), SIGKILL after `grace` (said on stdout)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            print(f"[faults] {self.name} did not stop within {grace:g} s of SIGTERM; killed")
            process.kill()
            process.wait()


class Cluster:
    """Three nodes, `nats-1` .. `nats-3`, routed to each other."""

    def __init__(self, root: Path) -> None:
        self.nodes = [Node(f"nats-{i}", root / f"nats-{i}") for i in (1, 2, 3)]

    @property
    def url(self) -> str:
        """Every node, comma separated, as the services' `--nats` takes it."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def _routes(self) -> list[str]:
        return [node.route for node in self.nodes]

    def start(self, timeout: float = 60.0) -> None:
        """Start the three nodes and wait for a JetStream meta leader that all of them
        know. A port taken between our probe and the server's bind: new ports, again."""
        for attempt in range(3):
            for node in self.nodes:
                node.pick_ports()
            for node in self.nodes:
                node.spawn(self._routes())
            try:
                self.wait_ready(timeout)
                return
            except RuntimeError:
                if all(node.running for node in self.nodes) or attempt == 2:
                    raise
                self.stop()
                for node in self.nodes:  # a clean start on the new ports
                    shutil.rmtree(node.root, ignore_errors=True)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            running = [node for node in self.nodes if node.running]
            if len(running) < len(self.nodes):
                raise RuntimeError(f"nats-server exited: {[n.name for n in self.nodes if not n.running]}")
            leaders = {node.meta_leader() for node in running}
            if len(leaders) == 1 and None not in leaders and all(node.healthy() for node in running):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"no JetStream meta leader known to every node within {timeout:g} s: {leaders}")
            time.sleep(0.1)

    def stop_node(self, node: Node) -> None:
        node.stop()

    def start_node(self, node: Node) -> None:
        """Start a stopped node again on its ports and store directory."""
        node.spawn(self._routes())

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest_asyncio.fixture
async def cluster(tmp_path: Path, fault_logs: list[Path]) -> AsyncIterator[Cluster]:
    built = Cluster(tmp_path / "cluster")
    fault_logs.extend(node.log_file for node in built.nodes)
    try:
        await asyncio.to_thread(built.start)
        await placement_ready(built)
        yield built
    finally:
        await asyncio.to_thread(built.stop)


async def placement_ready(cluster: Cluster, timeout: float = 60.0) -> None:
    """Wait until the meta leader places a 3-replica stream. Right after the nodes agree
    on a leader, it may still count a peer as offline and refuse with "no suitable peers
    for placement", and a broker provisioning at that moment exits."""
    nc = await connect(cluster.url, "fault-test-placement")
    js = nc.jetstream()
    try:
        async def placed() -> bool:
            try:
                await js.add_stream(name="FAULTS_PLACEMENT_PROBE", subjects=["faults.placement.probe"], num_replicas=3)
            except nats.js.errors.BadRequestError:
                return False
            await js.delete_stream("FAULTS_PLACEMENT_PROBE")
            return True

        await eventually(placed, timeout, 0.1, "a 3-replica stream placed")
    finally:
        await nc.close()


async def connect(urls: str, name: str = "fault-test") -> Client:
    """A client that rides out a node going away (reconnects to the others, forever)."""
    return await nats.connect(urls.split(","), name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                              connect_timeout=5)


@pytest_asyncio.fixture
async def client(cluster: Cluster) -> AsyncIterator[ApiClient]:
    """The API of org `acme`, on a connection of its own to any node."""
    nc = await connect(cluster.url, "fault-test-client")
    try:
        yield ApiClient(nc, ORG, timeout=15.0)
    finally:
        await nc.close()


@pytest_asyncio.fixture
async def client_on() -> AsyncIterator[Callable[..., Awaitable[ApiClient]]]:
    """`await client_on(node, ...)`: the API of org `acme` on a connection to these nodes
    only, tried in their order. A request goes to a queue subscriber (a broker) on the
    client's own server when there is one."""
    opened: list[Client] = []

    async def open_(*nodes: Node) -> ApiClient:
        nc = await nats.connect([node.url for node in nodes], name="fault-test-client", dont_randomize=True,
                                max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=5)
        opened.append(nc)
        return ApiClient(nc, ORG, timeout=15.0)

    try:
        yield open_
    finally:
        for nc in opened:
            await nc.close()


# ---- the services ---------------------------------------------------------------------


class Service:
    """One `python -m batchdeck ...` process and its log file."""

    def __init__(self, name: str, args: list[str], log_file: Path) -> None:
        self.name = name
        self.args = args
        self.log_file = log_file
        with log_file.open("ab") as sink:
            # A session of its own: signals to the test's process group do not reach it.
            self.process = subprocess.Popen(
                [sys.executable, "-m", "batchdeck", *args], stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
                cwd=REPO, start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    async def logged(self, text: str, timeout: float = 60.0, exit_ok: bool = False) -> bool:
        """Wait until the process has written `text` to its log: True. When it exits
        first: False with `exit_ok`, else the test fails with its log."""
        async def probe() -> bool | str:
            if text in self.log():
                return True
            if not self.running:
                if exit_ok:
                    return "exited"
                pytest.fail(f"{self.name} exited ({self.process.returncode}) before logging {text!r}:\n"
                            f"{_tail(self.log_file)}")
            return False

        return await eventually(probe, timeout, 0.05, f"{self.name} logging {text!r}") is True

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    async def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the exit (SIGKILL after `timeout`); the exit code."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.running and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.running:
            self.process.kill()
        return self.process.wait(10)


class Services:
    """Starts the batchdeck services against the cluster."""

    def __init__(self, url: str, logs_dir: Path, fault_logs: list[Path]) -> None:
        self.url = url
        self.logs_dir = logs_dir
        self.fault_logs = fault_logs
        self.started: list[Service] = []
        logs_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, *args: str, url: str | None = None) -> Service:
        """`python -m batchdeck ARGS --nats URL`, its output in `{name}.log`."""
        log_file = self.logs_dir / f"{name}.log"
        if log_file not in self.fault_logs:
            self.fault_logs.append(log_file)
        service = Service(name, [*args, "--nats", url or self.url], log_file)
        self.started.append(service)
        return service

    async def broker(self, name: str = "broker", url: str | None = None) -> Service:
        """A broker that provisions streams and buckets with 3 replicas, once it serves.

        Right after a JetStream meta leader election (the cluster's start, or a loaded
        machine delaying heartbeats) the leader may still count a node as offline, and a
        broker provisioning then exits with "no suitable peers for placement" (a product
        issue, reported). A restart policy starts it again; so does this, twice at most."""
        for attempt in range(1, 4):
            service = self.start(name, "broker", "--replicas", "3", url=url)
            if await service.logged("broker serving", exit_ok=True):
                return service
            if "no suitable peers for placement" not in service.log() or attempt == 3:
                pytest.fail(f"{name} exited ({service.process.returncode}) before serving:\n{_tail(service.log_file)}")
            print(f"[faults] {name} exited: no suitable peers for placement; starting it again")
        raise AssertionError("unreachable")

    async def runner(self, name: str, *, ack_wait: float = 30.0, concurrency: int = 4, org: str = ORG,
                     wait: bool = True, url: str | None = None) -> Service:
        service = self.start(name, "runner", "--org", org, "--name", name, "--ack-wait", str(ack_wait),
                             "--concurrency", str(concurrency), "--grace", "1", "--drain-timeout", "2", url=url)
        if wait:
            await service.logged(f"runner {name} serving")
        return service

    async def store(self, name: str, db: Path, url: str | None = None) -> Service:
        service = self.start(name, "store", "--db", str(db), url=url)
        await service.logged("store: history in")
        return service

    async def scheduler(self, name: str, url: str | None = None, wait: bool = True) -> Service:
        service = self.start(name, "scheduler", "--name", name, url=url)
        if wait:
            await service.logged(f"scheduler {name}: epoch")
        return service

    def dropped_runs(self) -> set[str]:
        """Executions whose run a runner dropped as unknown: its read of `bd_execs` did
        not find the execution the broker had written before enqueueing the run."""
        dropped: set[str] = set()
        for service in self.started:
            if service.args[0] == "runner":
                dropped |= set(DROPPED_RUN.findall(service.log()))
        return dropped

    def fail_if_dropped(self, execution_ids: Any) -> None:
        """Fail at once, naming them, when a runner dropped any of these runs as unknown.

        KV buckets are read with direct get (`allow_direct`), and with 3 replicas a read
        may be answered by a replica that has not applied the latest write yet (about 1
        read in 100 right after the write, here). A runner that cannot read a run's
        execution reads again, then has the run delivered again for about two minutes
        before it drops it ("run of unknown execution …", see
        runner.service.UNKNOWN_EXECUTION_DELIVERIES): a dropped run would stay `queued`
        for ever."""
        dropped = sorted(self.dropped_runs() & set(execution_ids))
        if dropped:
            pytest.fail(f"a runner dropped the run of {dropped} as unknown: bd_execs never showed it the "
                        "broker's write")

    async def close(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM to every service still running; SIGKILL to those still running after
        `timeout` (said on stdout: a service should stop well within it)."""
        running = [service for service in self.started if service.running]
        for service in running:
            service.process.send_signal(signal.SIGTERM)
        codes = await asyncio.gather(*(service.terminate(timeout) for service in running))
        for service, code in zip(running, codes, strict=True):
            if code == -signal.SIGKILL:
                print(f"[faults] {service.name} did not stop within {timeout:g} s of SIGTERM; killed")


@pytest_asyncio.fixture
async def services(cluster: Cluster, tmp_path: Path, fault_logs: list[Path]) -> AsyncIterator[Services]:
    started = Services(cluster.url, tmp_path / "logs", fault_logs)
    try:
        yield started
    finally:
        await started.close()


# ---- reading the system ---------------------------------------------------------------


async def executions(client: ApiClient, **filters: Any) -> list[dict[str, Any]]:
    """Every live execution of the client's org (exec.list, page by page)."""
    items: list[dict[str, Any]] = []
    page = 1
    while True:
        reply = await client.call("exec", "list", {"filter": filters, "per_page": 1000, "page": page})
        items += reply["items"]
        if page >= reply["pages"]:
            return items
        page += 1


async def readable_task(client: ApiClient, body: dict[str, Any]) -> dict[str, Any]:
    """Create a task and wait until `task.get` finds it. A read right after a write may
    reach a replica of `bd_tasks` that has not applied it yet (direct get on 3 replicas;
    see `Services.fail_if_dropped`), and `task.start` would answer 404."""
    body = {"id": f"t{uuid.uuid4().hex[:16]}", **body}  # a create sent again must not make a second task
    task = await eventually(lambda: _create_once(client, body), 30, 0.2, "task.create answered")
    await eventually(lambda: client.call("task", "get", {"id": task["id"]}), 30, 0.05, f"task {task['id']} readable")
    return task


async def _create_once(client: ApiClient, body: dict[str, Any]) -> dict[str, Any] | None:
    """task.create, None on a 503 (JetStream settling after the cluster formed: the API
    says try again); a 409 on a retry means the earlier try landed."""
    try:
        return await client.call("task", "create", body)
    except Unavailable:
        return None
    except Conflict:
        return await client.call("task", "get", {"id": body["id"]})


@pytest.fixture
def make_task() -> Callable[[ApiClient, dict[str, Any]], Awaitable[dict[str, Any]]]:
    """`await make_task(client, body)`: task.create, then wait until task.get finds it."""
    return readable_task


@pytest.fixture
def list_executions() -> Callable[..., Awaitable[list[dict[str, Any]]]]:
    """`await list_executions(client, **filter)`: every live execution of the org."""
    return executions


@pytest.fixture
def processes_marked() -> Callable[[str], list[int]]:
    """`processes_marked(marker)`: pids of live processes whose command line holds
    `marker` (commands that a killed runner left running)."""
    from processes import processes_with

    return lambda marker: [pid for pid, _ in processes_with(marker)]


# ---- a load of starts ---------------------------------------------------------------------


class StartLoad:
    """Starts of one task kept in flight by `in_flight` requesters until `stop()`: start
    `n` carries `{"n": n}` as its context and the idempotency key `start-{n}`; a try that
    gets no answer (one of `retried`) is sent again with the same key, after 0.1 s, until
    one is answered. `pause` seconds pass between a requester's starts."""

    def __init__(self, client: ApiClient, task_id: str, in_flight: int, timeout: float,
                 retried: tuple[type[ApiError], ...], pause: float = 0.0) -> None:
        self.client, self.task_id, self.timeout, self.retried, self.pause = client, task_id, timeout, retried, pause
        self.acked: dict[int, str] = {}
        """Execution id of each acknowledged start."""
        self.answered: dict[int, tuple[float, float]] = {}
        """(sent, acknowledged) of each start's answered try, monotonic."""
        self.tries: Counter[int] = Counter()
        self.failures: Counter[str] = Counter()
        """Tries that got no answer, by error code and message."""
        self.waiting: dict[int, float] = {}
        """Starts not answered yet: when their current try went out."""
        self.began = time.monotonic()
        self._numbers = itertools.count()
        self._stopping = asyncio.Event()
        self._load = asyncio.gather(*(self._requester() for _ in range(in_flight)))

    async def _requester(self) -> None:
        while not self._stopping.is_set():
            n = next(self._numbers)
            while True:
                self.tries[n] += 1
                sent = self.waiting[n] = time.monotonic()
                body = {"id": self.task_id, "context": {"n": n}, "idempotency_key": f"start-{n}"}
                try:
                    reply = await self.client.call("task", "start", body, timeout=self.timeout)
                except self.retried as err:
                    self.failures[f"{err.code} {err.message[:60]}"] += 1
                    await asyncio.sleep(0.1)
                    continue
                finally:
                    del self.waiting[n]
                self.acked[n] = reply["execution_id"]
                self.answered[n] = (sent, time.monotonic())
                break
            await asyncio.sleep(self.pause)

    def check(self) -> None:
        """Fail the test with a requester's error, if one failed."""
        if self._load.done():
            self._load.result()

    async def acknowledged_since(self, moment: float, count: int, at_least: float = 0.0) -> bool:
        """At least `count` starts acknowledged after `moment`, and `at_least` seconds passed."""
        self.check()
        late = sum(1 for _, acked in self.answered.values() if acked > moment)
        return time.monotonic() - moment >= at_least and late >= count

    @property
    def retried_starts(self) -> set[int]:
        return {n for n, count in self.tries.items() if count > 1}

    async def stop(self) -> float:
        """Let every start in flight be answered; the seconds since the load began."""
        self._stopping.set()
        await asyncio.wait_for(self._load, 120)
        return time.monotonic() - self.began

    async def final_executions(self, services: Services) -> list[dict[str, Any]]:
        """Every live execution of the org, once each acknowledged start's is final (a
        run a runner dropped as unknown fails the test at once)."""
        async def acked_final() -> list[dict[str, Any]] | None:
            items = await executions(self.client)
            by_id = {e["id"]: e for e in items}
            pending = [i for i in self.acked.values() if by_id.get(i, {}).get("status") in (None, "queued", "running")]
            if pending and all(by_id.get(i, {}).get("status") == "queued" for i in pending):
                services.fail_if_dropped(pending)
            return items if not pending else None

        return await eventually(acked_final, 120, 0.2, "every acknowledged start's run final")


@pytest.fixture
def start_load() -> Callable[..., StartLoad]:
    """`start_load(client, task_id, in_flight, timeout, retried, pause)`: see StartLoad."""
    return StartLoad
