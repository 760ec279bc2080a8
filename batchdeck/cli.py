"""The `batchdeck` command. Exit codes: 0 ok, 1 API or connection error (message
printed), 2 usage."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
import time
from pathlib import Path

import duckdb

from broker import __version__
from broker.client import ApiClient
from broker.connect import ConnectOptions, connect, denials_of, is_valid_inbox_prefix
from broker.errors import ApiError, Forbidden
from broker.server import ServerError
from broker.streams import StreamLimits
from store.limits import StoreLimits
from broker.subjects import is_valid_org
from batchdeck import commands, config, credentials, export, history, nats_config, notify_options, output, supervisor
from broker.types import ID_PATTERN, POOL_PATTERN, LogLimits
from runner import log_limits


def _connection_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("connection")
    group.add_argument("--nats", default=None, metavar="URL",
                       help=f"NATS server(s), comma separated; user:password@ allowed (env {config.ENV_URL}; "
                            f"default: what `batchdeck up` recorded in its data dir, else nats://127.0.0.1:4222)")
    group.add_argument("--creds", default=None, metavar="FILE", help=f"NATS credentials file, nkeys/JWT (env {config.ENV_CREDS})")
    group.add_argument("--token", default=None, help=f"NATS auth token (env {config.ENV_TOKEN})")
    group.add_argument("--tls-ca", default=None, metavar="FILE", help=f"CA file to verify the server's TLS (env {config.ENV_TLS_CA})")
    group.add_argument("--inbox-prefix", default=None, metavar="PREFIX",
                       help=f"prefix of reply subjects, e.g. _INBOX_acme.viewer when the server confines this user's "
                            f"replies to it (env {config.ENV_INBOX_PREFIX}, default _INBOX)")
    group.add_argument("--org", default=None, help=f"organisation (env {config.ENV_ORG}; default: the org of "
                                                   "`batchdeck up`, else 'default')")
    group.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return parser


def _connect_options(args: argparse.Namespace, name: str) -> ConnectOptions:
    return ConnectOptions(
        url=args.nats,
        creds=args.creds or os.environ.get(config.ENV_CREDS),
        token=args.token or os.environ.get(config.ENV_TOKEN),
        tls_ca=args.tls_ca or os.environ.get(config.ENV_TLS_CA),
        name=name,
        inbox_prefix=args.inbox_prefix or os.environ.get(config.ENV_INBOX_PREFIX) or None,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchdeck",
        description="batchdeck: batch tasks with cron schedules, runners, live logs and SQL history, over NATS.",
    )
    parser.add_argument("--version", action="version", version=f"batchdeck {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _connection_parser()
    metrics = supervisor.metrics_flags()

    up = sub.add_parser("up", parents=[metrics], help="start everything on an embedded NATS server (Ctrl-C stops)")
    _add_server_flags(up)
    up.add_argument("--headless", action="store_true", help="do not open the dashboard")
    up.add_argument("--demo", action="store_true", help="seed example tasks and batches")
    up.add_argument("--runners", type=int, default=2, metavar="N", help="runner processes to start (default 2)")
    up.add_argument("--org", default=config.default_org(), help="org of the runners and --demo (default 'default')")
    notify_options.add_flags(up, tuning=False)  # the notifier runs when any channel is set up

    server = sub.add_parser("server", help="start only the embedded NATS server (JetStream, provisioned)")
    _add_server_flags(server)

    broker = sub.add_parser("broker", parents=[common, metrics], help="run a control-plane service instance")
    broker.add_argument("--replicas", type=int, default=1, help="stream replicas when provisioning (3 on a cluster)")
    limits, bounds = LogLimits(), StreamLimits()
    for flag, default, metavar, meaning in (
        ("--log-lines", limits.default_lines, "N", "lines of each action's output kept when its task does not say"),
        ("--log-lines-max", limits.max_lines, "N", "the most lines a task may ask to keep (log_max_lines)"),
        ("--log-bytes", limits.default_bytes, "BYTES", "bytes of each action's output kept when its task does not say"),
        ("--log-bytes-max", limits.max_bytes, "BYTES", "the most bytes a task may ask to keep (log_max_bytes)"),
        ("--events-max-bytes", bounds.events_max_bytes, "BYTES",
         "BD_EVENTS' size when this broker creates it; past it the oldest events go"),
        ("--runs-max-bytes", bounds.runs_max_bytes, "BYTES", "BD_RUNS' size; past it starts are refused"),
        ("--runs-per-pool", bounds.runs_per_pool, "N", "runs one org's pool may have waiting; past it its starts "
         "are refused with 429"),
    ):
        broker.add_argument(flag, type=_positive, default=default, metavar=metavar,
                            help=f"{meaning} (default {default})")

    runner = sub.add_parser("runner", parents=[common, metrics], help="run a runner: claims and executes runs of its pools")
    runner.add_argument("--pool", action="append", dest="pools", metavar="NAME", help="a pool to serve; repeat (default: default)")
    runner.add_argument("--concurrency", type=int, default=4, metavar="N", help="runs at once (default 4)")
    runner.add_argument("--name", help="runner id (default: host-pid-random)")
    runner.add_argument("--ack-wait", type=float, default=30.0, metavar="SECONDS",
                        help="how long a run stays claimed without a heartbeat before another runner takes it")
    runner.add_argument("--grace", type=float, default=10.0, metavar="SECONDS", help="SIGTERM to SIGKILL on cancel")
    runner.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="on shutdown, how long running work may finish before it is handed back")
    runner.add_argument("--log-rate-lines", type=_not_negative, default=log_limits.DEFAULT_RATE_LINES, metavar="N",
                        help="lines a second this runner publishes at most, over all its runs; a run over it waits "
                             f"and its process's pipe fills (0: no limit; default {log_limits.DEFAULT_RATE_LINES})")
    runner.add_argument("--log-rate-bytes", type=_not_negative, default=log_limits.DEFAULT_RATE_BYTES, metavar="BYTES",
                        help=f"bytes a second, as --log-rate-lines (default {log_limits.DEFAULT_RATE_BYTES})")
    runner.add_argument("--pass-env", action="append", default=[], metavar="NAME",
                        help="also give tasks this variable of the runner's environment (they get PATH, HOME, "
                             "LANG, LC_*, TZ, TMPDIR, USER, LOGNAME, SHELL and TERM, and their own env); repeat")

    scheduler = sub.add_parser("scheduler", parents=[common, metrics],
                               help="run a scheduler replica: batch schedules -> triggers (run several for HA)")
    scheduler.add_argument("--name", help="replica id (default: host-pid-random)")

    store = sub.add_parser("store", parents=[common, metrics], help="run the store: event history in DuckDB, the history API")
    store.add_argument("--db", type=Path, required=True, metavar="PATH", help="the DuckDB history file")
    store.add_argument("--retain-days", type=float, default=None, metavar="N",
                       help="remove history older than N days (checked hourly; default: keep everything)")
    kept = StoreLimits()
    for flag, default, metavar, meaning in (
        ("--memory-limit", kept.memory_limit, "BYTES", "memory the history database may use in all"),
        ("--query-memory", kept.query_memory, "BYTES", "memory one query's sorts and hash tables may use before "
         "they spill to disk"),
        ("--sql-per-org", kept.sql_per_org, "N", "history.sql queries one org may have running or waiting; more "
         "are answered 429"),
        ("--sql-threads", kept.sql_threads, "N", "history.sql queries running at once, all orgs together"),
    ):
        store.add_argument(flag, type=_positive, default=default, metavar=metavar,
                           help=f"{meaning} (default {default})")
    store.add_argument("--sql-timeout", type=float, default=kept.sql_timeout, metavar="SECONDS",
                       help=f"a query's time limit from its request's arrival (default {kept.sql_timeout:g})")

    notifier = sub.add_parser("notifier", parents=[common, metrics],
                              help="run a notifier: email and webhooks when runs end, as the notify rules say")
    notify_options.add_flags(notifier, tuning=True)

    sub.add_parser("tui", parents=[common], help="open the terminal dashboard on a running system")

    nats_config.add_parser(sub)
    commands.add_parsers(sub, common)
    history.add_parsers(sub, common)
    export.add_parser(sub, common)
    return parser


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _not_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 0 or more")
    return int(text)


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=config.default_data_dir(),
                        help=f"where JetStream keeps its data (env {config.ENV_DATA_DIR})")
    parser.add_argument("--port", type=int, default=None,
                        help="client port (default: the port of the last start on this data dir, else 4222, "
                             "else a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    handed_over = credentials.take_handover()
    if argv[:1] == ["runner"]:
        flag = credentials.on_command_line(argv)
        if flag is not None:
            build_parser().error(f"{flag}: a runner's credentials on its command line are readable by every process "
                                 "on this machine, its tasks included (ps, /proc/PID/cmdline); give them in "
                                 f"{config.ENV_URL} (user:password@host) or {config.ENV_TOKEN}, or a --creds FILE")
        credentials.restart_without_secrets(argv)
    parser = build_parser()
    args = parser.parse_args(commands.attach_sort_values(argv))
    if handed_over:  # as if they were still in the environment: a flag given wins
        if "--nats" not in (arg.partition("=")[0] for arg in argv):
            args.nats = handed_over.get(config.ENV_URL, args.nats)
        args.token = args.token or handed_over.get(config.ENV_TOKEN)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "nats-config":
        return nats_config.run(args, argv)
    if hasattr(args, "nats"):  # a client of a running system: which one
        args.target = config.resolve(args.nats, args.org)
        args.nats, args.org = args.target.url, args.target.org
    if hasattr(args, "org") and not is_valid_org(args.org):
        parser.error(f"--org {args.org!r} is invalid: use 1-32 of a-z, 0-9, '_' and '-'")
    inbox_prefix = getattr(args, "inbox_prefix", None) or os.environ.get(config.ENV_INBOX_PREFIX)
    if hasattr(args, "inbox_prefix") and inbox_prefix and not is_valid_inbox_prefix(inbox_prefix):
        parser.error(f"--inbox-prefix {inbox_prefix!r} is invalid: a subject without wildcards, "
                     "e.g. _INBOX_acme.viewer")
    if args.command == "runner":
        _check_runner_args(parser, args)
    if args.command == "broker" and (args.log_lines > args.log_lines_max or args.log_bytes > args.log_bytes_max):
        parser.error("--log-lines and --log-bytes (the defaults) may not be over --log-lines-max and --log-bytes-max")
    if args.command == "store" and args.retain_days is not None and args.retain_days <= 0:
        parser.error("--retain-days must be more than 0")
    if args.command == "store" and args.sql_timeout <= 0:
        parser.error("--sql-timeout must be more than 0")
    if args.command == "scheduler" and args.name is not None and not re.match(ID_PATTERN, args.name):
        parser.error("--name takes 1-64 letters, digits, '_' or '-'")
    if args.command in ("up", "notifier"):
        try:
            args.notifier_settings = notify_options.settings(args)
        except ValueError as err:
            parser.error(str(err))
        if args.command == "notifier" and args.name is not None and not re.match(ID_PATTERN, args.name):
            parser.error("--name takes 1-64 letters, digits, '_' or '-'")
    try:
        return asyncio.run(_dispatch(args))
    except ApiError as err:
        output.errors.print(f"[red]error {err.code}:[/red] {err.message}", highlight=False)
        return 1
    except duckdb.IOException as err:  # the history file is held by another store, or unreadable
        output.errors.print(f"[red]error:[/red] cannot open the history file: {err}", highlight=False)
        return 1
    except ServerError as err:
        output.errors.print(f"[red]error:[/red] {err}", highlight=False)
        return 1
    except (OSError, asyncio.TimeoutError) as err:
        url = getattr(args, "nats", "")
        hint = config.unreachable_hint(args.target) if hasattr(args, "target") else ""
        output.errors.print(f"[red]error:[/red] cannot reach NATS at {url}: {err or type(err).__name__}", highlight=False)
        if hint:
            output.errors.print(f"  {hint}", highlight=False, markup=False)
        return 1
    except KeyboardInterrupt:
        return 130


def _check_runner_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    # A runner id is one KV key token (`{org}.{runner id}` in bd_runners), like any id.
    if args.name is not None and not re.match(ID_PATTERN, args.name):
        parser.error("--name takes 1-64 letters, digits, '_' or '-'")
    for pool in args.pools or []:
        if not re.match(POOL_PATTERN, pool):
            parser.error(f"--pool {pool!r}: use 1-32 of a-z, 0-9, '_' and '-'")


async def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "up":
        notifier = args.notifier_settings if notify_options.configured(args) else None
        await supervisor.run_up(args.data_dir, args.port, args.host, args.org, args.demo, args.headless, args.runners,
                                notifier, supervisor.metrics_address(args))
    elif args.command == "server":
        await supervisor.run_server(args.data_dir, args.port, args.host)
    elif args.command == "broker":
        log_limits_ = LogLimits(default_lines=args.log_lines, max_lines=args.log_lines_max,
                                default_bytes=args.log_bytes, max_bytes=args.log_bytes_max)
        bounds = StreamLimits(events_max_bytes=args.events_max_bytes, runs_max_bytes=args.runs_max_bytes,
                              runs_per_pool=args.runs_per_pool)
        await supervisor.run_broker(_connect_options(args, "batchdeck-broker"), args.replicas,
                                    supervisor.metrics_address(args), log_limits_, bounds)
    elif args.command == "runner":
        await supervisor.run_runner(_connect_options(args, "batchdeck-runner"), args, supervisor.metrics_address(args))
    elif args.command == "scheduler":
        await supervisor.run_scheduler(_connect_options(args, "batchdeck-scheduler"), args.name,
                                       supervisor.metrics_address(args))
    elif args.command == "notifier":
        await supervisor.run_notifier(_connect_options(args, "batchdeck-notifier"), args.notifier_settings, args.name,
                                      supervisor.metrics_address(args))
    elif args.command == "tui":
        from tui.run import run_dashboard  # Textual loads only for the dashboard: other commands start faster

        await run_dashboard(_connect_options(args, "batchdeck-tui"), args.org)
    elif args.command == "store":
        limits_ = StoreLimits(memory_limit=args.memory_limit, query_memory=args.query_memory,
                              sql_per_org=args.sql_per_org, sql_threads=args.sql_threads, sql_timeout=args.sql_timeout)
        await supervisor.run_store(_connect_options(args, "batchdeck-store"), args.db, args.retain_days,
                                   supervisor.metrics_address(args), limits_)
    else:
        nc = await _client_connection(args)
        started = time.monotonic()
        try:
            api = ApiClient(nc, args.org)
            if args.command == "sql":
                await history.run_sql(api, args)
            elif args.command == "logs":
                await history.run_logs(api, args)
            elif args.command == "export":
                await export.run(api, args)
            else:
                await commands.run(api, args)
        except asyncio.TimeoutError:
            # A JetStream read (`logs` follows the stream) the server refused times out:
            # say what the server refused rather than "cannot reach NATS".
            denials = denials_of(nc)
            refused = denials.latest(lambda _: True, started) if denials is not None else None
            if refused is None:
                raise
            raise Forbidden(refused.describe(), {"operation": refused.operation, "subject": refused.subject}) from None
        finally:
            await nc.close()
    return 0


async def _client_connection(args: argparse.Namespace):
    try:
        return await connect(_connect_options(args, "batchdeck-cli"))
    except Exception as err:  # nats-py raises several unrelated types for "cannot connect"
        if isinstance(err, (ApiError, asyncio.CancelledError)):
            raise
        raise OSError(str(err) or type(err).__name__) from err
