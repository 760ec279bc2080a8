"""Long-running commands: `batchdeck up` (everything on the embedded server),
`batchdeck server` (the embedded nats-server alone), `batchdeck broker`, `runner`,
`scheduler`, `store` and `notifier`.

Each runs until Ctrl-C or SIGTERM, then stops its parts in reverse order: services
first, so nothing is cut mid-request, the server last.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from broker import streams
from broker.client import ApiClient
from broker.connect import ConnectOptions, connect, without_credentials
from broker.metrics import DEFAULT_HOST, Exporter, Metrics
from broker.server import EmbeddedServer, ServerError
from broker.service import ControlPlane
from batchdeck import config, demo, output
from broker.types import LogLimits
from runner.log_limits import Rate
from runner.service import DEFAULT_DRAIN, RunnerService
from scheduler.service import SchedulerService
from notifier.service import NotifierService, NotifierSettings
from store.limits import StoreLimits
from store.service import StoreService

DEFAULT_PORT = 4222
"""nats-server's own default: the port `up` takes when it is free and no earlier start chose another."""

log = logging.getLogger("batchdeck")


async def wait_for_stop_signal() -> None:
    """Return on SIGINT or SIGTERM. The handlers stay installed, so a second signal
    during the orderly shutdown that follows does not cut it short."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


@dataclass(frozen=True)
class MetricsAddress:
    """Where a service process serves Prometheus text (`--metrics-port`, `--metrics-host`)."""

    port: int
    host: str = DEFAULT_HOST


def metrics_flags() -> argparse.ArgumentParser:
    """`--metrics-port` and `--metrics-host`, for the service commands and `up`."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("metrics")
    group.add_argument("--metrics-port", type=_port, default=None, metavar="PORT",
                       help="serve Prometheus metrics over HTTP on this port (default: off)")
    group.add_argument("--metrics-host", default=DEFAULT_HOST, metavar="ADDRESS",
                       help=f"address the metrics port listens on (default {DEFAULT_HOST})")
    return parser


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0-65535; 0: any free one)")
    return int(text)


def metrics_address(args: argparse.Namespace) -> MetricsAddress | None:
    return None if args.metrics_port is None else MetricsAddress(args.metrics_port, args.metrics_host)


@contextlib.contextmanager
def exporting(address: MetricsAddress | None) -> Iterator[Callable[[Metrics], None]]:
    """Serve Prometheus text on `address` meanwhile (nothing when None); yields the
    function that adds a service's metrics to it."""
    if address is None:
        yield lambda metrics: None
        return
    try:
        exporter = Exporter(address.port, address.host)
    except OSError as err:  # the port is taken, the address is not this machine's
        raise ServerError(f"cannot serve metrics on {address.host}:{address.port}: {err.strerror or err}") from err
    log.info("Prometheus metrics on http://%s:%d/metrics", address.host, exporter.port)
    try:
        yield exporter.add
    finally:
        exporter.stop()


def _report_drift(drift: list[str]) -> None:
    for line in drift:
        output.errors.print(f"[yellow]warning:[/yellow] {line}", highlight=False)


async def run_broker(options: ConnectOptions, replicas: int, metrics: MetricsAddress | None = None,
                     log_limits: LogLimits = LogLimits(),
                     stream_limits: streams.StreamLimits = streams.StreamLimits()) -> None:
    """`batchdeck broker`: one control-plane instance against any NATS server."""
    with exporting(metrics) as expose:
        nc = await connect(options, service=True)
        plane = ControlPlane(nc, nc.jetstream(), log_limits, stream_limits)
        expose(plane.metrics)
        try:
            _report_drift(await plane.start(replicas=replicas))
            log.info("broker serving bd.*.api.> on %s", without_credentials(options.url))
            await wait_for_stop_signal()
        finally:
            await plane.stop()
            await nc.drain()


async def run_runner(options: ConnectOptions, args, metrics: MetricsAddress | None = None) -> None:
    """`batchdeck runner`: claim and execute runs until SIGTERM, then drain."""
    with exporting(metrics) as expose:
        nc = await connect(options, service=True)
        runner = RunnerService(
            nc, org=args.org, pools=args.pools, concurrency=args.concurrency, name=args.name, ack_wait=args.ack_wait,
            grace=args.grace, drain_timeout=args.drain_timeout, pass_env=args.pass_env,
            log_rate=Rate(args.log_rate_lines, args.log_rate_bytes),
        )
        expose(runner.metrics)
        try:
            await runner.start()
            await wait_for_stop_signal()
            # A second signal cuts the drain short: the runs still running are handed back.
            for sig in (signal.SIGINT, signal.SIGTERM):
                asyncio.get_running_loop().add_signal_handler(sig, runner.hand_back_now)
        finally:
            await runner.stop()
            await nc.drain()


async def run_scheduler(options: ConnectOptions, name: str | None, metrics: MetricsAddress | None = None) -> None:
    """`batchdeck scheduler`: one scheduler replica until SIGTERM."""
    with exporting(metrics) as expose:
        nc = await connect(options, service=True)
        scheduler = SchedulerService(nc, name)
        expose(scheduler.metrics)
        try:
            await scheduler.start()
            await wait_for_stop_signal()
        finally:
            await scheduler.stop()
            await nc.drain()


async def run_store(options: ConnectOptions, db: Path, retain_days: float | None,
                    metrics: MetricsAddress | None = None, limits: StoreLimits = StoreLimits()) -> None:
    """`batchdeck store`: ingest events into the history file and answer the history API."""
    with exporting(metrics) as expose:
        nc = await connect(options, service=True)
        store = StoreService(nc, db, retain_days, limits)
        expose(store.metrics)
        try:
            await store.start()
            await wait_for_stop_signal()
        finally:
            await store.stop()
            await nc.drain()


async def run_notifier(options: ConnectOptions, settings: NotifierSettings, name: str | None,
                       metrics: MetricsAddress | None = None) -> None:
    """`batchdeck notifier`: deliver notifications until SIGTERM, then let those under way finish."""
    with exporting(metrics) as expose:
        nc = await connect(options, service=True)
        settings.log_command = _log_command(options.url)
        notifier = NotifierService(nc, settings, name)
        expose(notifier.metrics)
        try:
            await notifier.start()
            await wait_for_stop_signal()
        finally:
            await notifier.stop()
            await nc.drain()


def _log_command(url: str) -> str:
    """How an email's reader tails the run's log: `batchdeck logs` against this server
    (its address without credentials)."""
    return "batchdeck logs {id} --org {org} --nats " + without_credentials(url.split(",")[0])


def start_runner_processes(url: str, org: str, count: int, log_file: Path | None = None
                           ) -> list[subprocess.Popen[bytes]]:
    """`count` runner processes; their logs go to `log_file`, else to our stderr."""
    # Own sessions: a Ctrl-C in the terminal reaches `up` only, which then stops the
    # runners in order (drain, hand back) instead of them dying mid-drain.
    sink = open(log_file, "ab") if log_file is not None else None  # noqa: SIM115 - the children hold it
    try:
        return [
            subprocess.Popen([sys.executable, "-m", "batchdeck", "runner", "--nats", url, "--org", org],
                             stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, start_new_session=True)
            for _ in range(count)
        ]
    finally:
        if sink is not None:
            sink.close()


HISTORY_FILE = "history.duckdb"
LOG_FILE = "batchdeck.log"
"""Where `up` with the dashboard sends the services' and runners' logs."""
RUNNER_STOP_TIMEOUT = 60.0
"""Seconds runners get to stop: their drain (30 s) and cancel grace (10 s), with room."""


async def stop_processes(processes: list[subprocess.Popen[bytes]], timeout: float = RUNNER_STOP_TIMEOUT) -> None:
    """SIGTERM each, wait for all of them together (runners drain their work), SIGKILL
    what is left when the time is up."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)

    def wait_all() -> None:
        deadline = time.monotonic() + timeout
        for process in processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    await asyncio.to_thread(wait_all)


async def _stop_runners(workers: list[subprocess.Popen[bytes]], api: ApiClient | None) -> None:
    """Stop `up`'s runners, saying what is waited for and for how long; Ctrl-C (or SIGTERM)
    again tells them to hand back what still runs at once."""
    alive = [worker for worker in workers if worker.poll() is None]
    if not alive:
        return
    running = await _running_runs(api)
    if running:
        output.console.print(
            f"waiting for {running} running run{'s' if running != 1 else ''} to finish, up to {DEFAULT_DRAIN:g} s; "
            "then they are handed back to the queue. Ctrl-C hands them back now.", highlight=False)

    def hand_back_now() -> None:
        output.console.print("handing the running runs back…")
        for worker in alive:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)  # the second: the runner ends its drain

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, hand_back_now)
    await stop_processes(alive)


async def _running_runs(api: ApiClient | None) -> int:
    """How many runs of the org run now (0 when the API does not answer in time)."""
    if api is None:
        return 0
    try:
        page = await api.call("exec", "list", {"filter": {"status": ["running"]}, "per_page": 1}, timeout=2)
    except Exception:  # stopping goes on regardless: this only chooses the words
        return 0
    return int(page.get("total") or 0)


def local_server(data_dir: Path, port: int | None, host: str) -> EmbeddedServer:
    """The embedded server of `up` and `server`: on `port` when given, else on the port of
    the last start on this data dir, else on 4222 (as nats-server), else on a free one.
    Refuses a data dir another running `up` or `server` holds."""
    context = config.read_context(data_dir)
    if context is not None and context.pid != os.getpid() and context.is_running():
        raise ServerError(f"batchdeck already runs on {data_dir} (pid {context.pid}, {context.url}): use it "
                          "(`batchdeck tui`), stop it, or give another --data-dir")
    preferred = tuple(p for p in (context.port if context else None, DEFAULT_PORT) if p)
    return EmbeddedServer(data_dir, port=port, host=host, preferred_ports=preferred)


async def run_server(data_dir: Path, port: int | None, host: str) -> None:
    """`batchdeck server`: the embedded nats-server with streams provisioned."""
    server = local_server(data_dir, port, host)
    await server.astart()
    config.write_context(data_dir, server.url, config.default_org())
    try:
        nc = await connect(ConnectOptions(url=server.url))
        _report_drift(await streams.provision(nc.jetstream()))
        await nc.close()
        output.console.print(f"NATS server on [bold]{server.url}[/bold] (data in {data_dir})", highlight=False)
        await wait_for_stop_signal()
    finally:
        await server.astop()


async def run_up(
    data_dir: Path, port: int | None, host: str, org: str, seed_demo: bool, headless: bool, runners: int,
    notifications: NotifierSettings | None = None, metrics: MetricsAddress | None = None,
) -> None:
    """`batchdeck up`: the embedded server and every service, until Ctrl-C; the notifier
    too when `notifications` (SMTP or a webhook secret) are set up. With `metrics`, one
    Prometheus endpoint for the services of this process (not the runner processes)."""
    with exporting(metrics) as expose:
        await _run_up(data_dir, port, host, org, seed_demo, headless, runners, notifications, expose)


async def _run_up(
    data_dir: Path, port: int | None, host: str, org: str, seed_demo: bool, headless: bool, runners: int,
    notifications: NotifierSettings | None, expose: Callable[[Metrics], None],
) -> None:
    if not headless:
        _log_to_file(data_dir / LOG_FILE)  # the dashboard owns the terminal
    server = local_server(data_dir, port, host)
    await server.astart()
    config.write_context(data_dir, server.url, org)
    nc = plane = scheduler = store = notifier = None
    workers: list[subprocess.Popen[bytes]] = []
    try:
        nc = await connect(ConnectOptions(url=server.url, name="batchdeck-up"), service=True)
        plane = ControlPlane(nc, nc.jetstream())
        expose(plane.metrics)
        _report_drift(await plane.start())
        scheduler = SchedulerService(nc)
        expose(scheduler.metrics)
        await scheduler.start()
        store = StoreService(nc, data_dir / HISTORY_FILE)
        expose(store.metrics)
        await store.start()
        if notifications is not None:
            notifications.log_command = _log_command(server.url)
            notifier = NotifierService(nc, notifications)
            expose(notifier.metrics)
            await notifier.start()
        workers = start_runner_processes(server.url, org, runners, None if headless else data_dir / LOG_FILE)
        if seed_demo:
            created = await demo.seed(ApiClient(nc, org))
            output.console.print(f"demo: {created} definitions created in org {org!r}", highlight=False)
        _print_banner(server, data_dir, org, headless, runners, notifications)
        if headless:
            await wait_for_stop_signal()
        else:
            await _dashboard_until_quit(server.url, org)
    finally:
        output.console.print("stopping…")
        if scheduler is not None:
            await scheduler.stop()
        await _stop_runners(workers, ApiClient(nc, org) if nc is not None else None)
        if notifier is not None:
            await notifier.stop()
        if store is not None:
            await store.stop()
        if plane is not None:
            await plane.stop()
        if nc is not None:
            await nc.drain()
        await server.astop()


def _print_banner(server: EmbeddedServer, data_dir: Path, org: str, headless: bool, runners: int,
                  notifications: NotifierSettings | None) -> None:
    console = output.console
    console.print(f"batchdeck is up: NATS on [bold]{server.url}[/bold]", highlight=False)
    console.print(f"  data dir  {data_dir}", highlight=False)
    console.print(f"  org       {org}", highlight=False)
    console.print(f"  runners   {runners} (pool 'default')", highlight=False)
    console.print("  scheduler 1 replica", highlight=False)
    console.print(f"  history   {data_dir / HISTORY_FILE} (batchdeck sql \"SELECT * FROM task_stats\")", highlight=False)
    if notifications is not None:
        console.print(f"  notifier  {' and '.join(notifications.channels())}", highlight=False)
    here = data_dir.resolve()
    prefix = "" if here == config.default_data_dir().resolve() else f"{config.ENV_DATA_DIR}={here} "
    console.print(f"  try       {prefix}batchdeck task list   (in any terminal: {config.CONTEXT_FILE} in the data dir "
                  "says where this system is)", highlight=False, markup=False)
    if headless:
        console.print("Ctrl-C stops everything.")
    else:
        console.print(f"  logs      {data_dir / LOG_FILE}", highlight=False)
        console.print("Opening the dashboard; q there stops everything.")


def _log_to_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    formatter = next((h.formatter for h in root.handlers if h.formatter is not None), None)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.FileHandler(path)
    handler.setFormatter(formatter or logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)


async def _dashboard_until_quit(url: str, org: str) -> None:
    """The dashboard on its own connection, as any client; SIGTERM also ends it."""
    from tui.run import make_dashboard  # Textual loads only when the dashboard opens

    app = make_dashboard(ConnectOptions(url=url, name="batchdeck-tui"), org)
    dashboard = asyncio.ensure_future(app.run_async())
    signal_ = asyncio.ensure_future(wait_for_stop_signal())
    await asyncio.wait({dashboard, signal_}, return_when=asyncio.FIRST_COMPLETED)
    if not dashboard.done():
        app.exit()  # the terminal is given back in order
        await dashboard
    signal_.cancel()
