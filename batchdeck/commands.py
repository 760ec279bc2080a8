"""The resource commands (`batchdeck task|batch|exec ...`): argparse wiring and how each
turns its flags or file into one API request."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from broker.client import ApiClient
from broker.errors import ApiError
from batchdeck import output


# ---- value parsing ------------------------------------------------------------------


def _value(text: str) -> Any:
    """A flag value: JSON when it parses (numbers, true, lists, objects), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


PLURALS = {"task": "tasks", "batch": "batches", "exec": "executions"}


def _pairs(items: list[str] | None, flag: str, parse: bool = True) -> dict[str, Any]:
    """`KEY=VALUE` flags into a dict; a key given twice collects a list (for filters)."""
    result: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(_usage(f"{flag} takes KEY=VALUE, got {item!r}"))
        value = _value(raw) if parse else raw
        if key in result:
            previous = result[key]
            result[key] = (previous if isinstance(previous, list) else [previous]) + [value]
        else:
            result[key] = value
    return result


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError("use 1 to 1000")
    return value


def _usage(message: str) -> int:
    print(f"batchdeck: error: {message}", file=sys.stderr)
    return 2


def read_definition(path: str) -> dict[str, Any]:
    """A definition from a JSON or TOML file (`-` reads JSON from stdin)."""
    try:
        if path == "-":
            data = json.load(sys.stdin)
        elif path.endswith(".toml"):
            data = tomllib.loads(Path(path).read_text())
        else:
            data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(_usage(f"cannot read {path}: {err}")) from None
    if not isinstance(data, dict):
        raise SystemExit(_usage(f"{path} must hold one object (a task or a batch)"))
    return data


# ---- task and batch fields from flags ------------------------------------------------


def _add_task_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name")
    parser.add_argument("--description")
    parser.add_argument("--kind", choices=["command", "module"])
    parser.add_argument("--module", help="the handler of a module task")
    parser.add_argument("--param", action="append", metavar="KEY=VALUE", help="a parameter (JSON value or text); repeat")
    parser.add_argument("--overridable", action="append", metavar="NAME[:TYPE]",
                        help="a param a start may set (`task start --param`), of TYPE string (default), integer, "
                             "number, boolean, object, array or any; repeat. Starts may set no other param; "
                             "choices and patterns go in a -f file")
    parser.add_argument("--env", action="append", metavar="KEY=VALUE", help="an environment variable; repeat")
    parser.add_argument("--cwd")
    parser.add_argument("--pool")
    parser.add_argument("--timeout", type=float, dest="timeout_sec", metavar="SECONDS")
    parser.add_argument("--retries", type=int)
    parser.add_argument("--retry-backoff", type=float, dest="retry_backoff_sec", metavar="SECONDS")
    parser.add_argument("--shell", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--cancellable", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--trace", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--owner")
    _add_notify_flags(parser)
    parser.add_argument("command", nargs="*", help="the command's argv, after `--` (e.g. -- echo hello)")


def _task_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields = _given(args, "name", "description", "kind", "module", "cwd", "pool", "timeout_sec", "retries",
                    "retry_backoff_sec", "shell", "cancellable", "trace", "owner")
    if args.param:
        fields["params"] = _pairs(args.param, "--param")
    if args.overridable:
        fields["overridable"] = [_overridable(item) for item in args.overridable]
    if args.env:
        fields["env"] = _pairs(args.env, "--env", parse=False)
    if args.command:
        fields["command"] = args.command
    return {**fields, **_notify_fields(args)}


PARAM_TYPES = ("string", "integer", "number", "boolean", "object", "array", "any")


def _overridable(item: str) -> dict[str, str]:
    name, _, kind = item.partition(":")
    if kind and kind not in PARAM_TYPES:
        raise SystemExit(_usage(f"--overridable {item!r}: the type is one of {', '.join(PARAM_TYPES)}"))
    return {"name": name, "type": kind or "string"}


def _add_batch_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name")
    parser.add_argument("--description")
    parser.add_argument("--cron", dest="cron_expression", metavar="EXPR",
                        help="5 fields, 6 with seconds first, or @hourly/@daily/@weekly/@monthly/@yearly "
                             "(the dialect: batchdeck batch next --help)")
    parser.add_argument("--schedule", type=_value, metavar="JSON",
                        help='a structured schedule, e.g. \'{"hours": [3], "weekdays": [1, 5]}\'')
    parser.add_argument("--timezone", help="IANA name, e.g. Europe/Berlin (default UTC)")
    parser.add_argument("--enabled", dest="is_enabled", action=argparse.BooleanOptionalAction, default=None,
                        help="fire on schedule (create: default on)")
    parser.add_argument("--run-on-startup", action=argparse.BooleanOptionalAction, default=None,
                        help="also run once when the scheduler starts (create: default off)")
    parser.add_argument("--task", action="append", dest="tasks", metavar="TASK_ID", help="an action; repeat, in order")
    parser.add_argument("--pool")
    parser.add_argument("--concurrency", choices=["forbid", "allow", "replace"])
    parser.add_argument("--catch-up", choices=["none", "last", "all"])
    parser.add_argument("--max-catch-up", type=int)
    parser.add_argument("--owner")
    _add_notify_flags(parser)


def _batch_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields = _given(args, "name", "description", "cron_expression", "schedule", "timezone", "is_enabled",
                    "run_on_startup", "pool", "concurrency", "catch_up", "max_catch_up", "owner")
    if args.tasks:
        fields["actions"] = [{"task_id": task_id} for task_id in args.tasks]
    return {**fields, **_notify_fields(args)}


def _add_notify_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--notify", action="append", metavar="RECIPIENT",
                        help="an email address or webhook URL told how runs end; repeat (replaces the list)")
    parser.add_argument("--notify-on", choices=["failure", "always"],
                        help="which outcomes --notify reports (default failure: failed, timed_out, lost)")
    parser.add_argument("--no-notify", action="store_true", help="remove the notify rule")


def _notify_fields(args: argparse.Namespace) -> dict[str, Any]:
    if args.no_notify:
        return {"notify": None}
    if not args.notify:
        if args.notify_on:
            raise SystemExit(_usage("--notify-on needs the recipients too: --notify ADDRESS_OR_URL"))
        return {}
    return {"notify": {"recipients": args.notify, **({"on": args.notify_on} if args.notify_on else {})}}


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _body(args: argparse.Namespace, fields: dict[str, Any]) -> dict[str, Any]:
    """The file's object (if any) with the flags laid over it."""
    base = read_definition(args.file) if getattr(args, "file", None) else {}
    return {**base, **fields}


# ---- commands -----------------------------------------------------------------------


async def _list(api: ApiClient, kind: str, args: argparse.Namespace) -> Any:
    body: dict[str, Any] = {"page": args.page, "per_page": args.per_page}
    if args.filter:
        body["filter"] = _pairs(args.filter, "--filter")
    if args.sort:
        body["sort"] = args.sort
    if getattr(args, "include_deleted", False):
        body["include_deleted"] = True
    if getattr(args, "history", False):
        body["history"] = True
    for name in ("since", "until"):
        if getattr(args, name, None):
            body[name] = getattr(args, name)
    page = await api.call(kind, "list", body)
    if args.json:
        output.print_json(page)
    else:
        output.print_page(kind, page)
    return page


def _show(args: argparse.Namespace, obj: Any) -> None:
    if args.json or not isinstance(obj, dict):
        output.print_json(obj)
    else:
        output.print_object(obj)


async def _warn_of_unserved_module(api: ApiClient, saved: Any) -> None:
    """A module task is accepted when no live runner has its module (a runner with it may
    come later), and its params are checked only against a runner's schema: say so."""
    if not isinstance(saved, dict) or saved.get("kind") != "module":
        return
    try:
        served = [module["name"] for module in (await api.call("task", "modules", {}))["modules"]]
    except ApiError:
        return  # the definition is saved; the warning is a courtesy this user may not be allowed
    if saved.get("module") not in served:
        output.errors.print(
            f"warning: no live runner of org {api.org!r} has module {saved.get('module')!r} "
            f"(they have: {', '.join(served) or 'none'}); its runs wait until a runner with it serves the pool, "
            "and its params are checked then", highlight=False, markup=False)


async def run(api: ApiClient, args: argparse.Namespace) -> None:
    """Carry out one resource command."""
    kind, verb = args.resource, args.verb
    if verb == "list":
        await _list(api, kind, args)
        return
    if verb == "get":
        _show(args, await api.call(kind, "get", {"id": args.id}))
    elif verb == "create":
        fields = _task_fields(args) if kind == "task" else _batch_fields(args)
        body = _body(args, {**fields, **_given(args, "id")})
        if kind == "batch":
            body.setdefault("is_enabled", True)
            body.setdefault("run_on_startup", False)
            if "actions" not in body:
                raise SystemExit(_usage("a batch runs at least one task: --task TASK_ID (repeat it for more, in "
                                        "order), or -f FILE with its actions"))
        saved = await api.call(kind, "create", body)
        _show(args, saved)
        await _warn_of_unserved_module(api, saved)
    elif verb == "update":
        fields = _task_fields(args) if kind == "task" else _batch_fields(args)
        fields.update(_pairs(args.set, "--set"))
        body = {**_body(args, fields), "id": args.id}
        if args.version is not None:
            body["version"] = args.version
        saved = await api.call(kind, "update", body)
        _show(args, saved)
        await _warn_of_unserved_module(api, saved)
    elif verb == "delete":
        body = {"id": args.id}
        if kind == "task" and args.force:
            body["force"] = True
        reply = await api.call(kind, "delete", body)
        if args.json:
            output.print_json(reply)
        else:
            for item in reply["deleted"]:
                output.console.print(f"deleted {item['kind']} {item['id']}", highlight=False)
    elif verb == "next":
        reply = await api.call("batch", "next", {"id": args.id, "count": args.count})
        if args.json:
            output.print_json(reply)
        else:
            output.print_next(reply)
    elif verb == "triggers":
        page = await api.call("batch", "triggers", {"id": args.id, "page": args.page, "per_page": args.per_page})
        if args.json:
            output.print_json(page)
        else:
            output.print_page("trigger", page)
    elif verb in ("enable", "disable"):
        _show(args, await api.call("batch", "status", {"id": args.id, "is_enabled": verb == "enable"}))
    elif verb == "start":
        body = {"id": args.id}
        if args.context:
            body["context"] = _pairs(args.context, "--context")
        if kind == "task":
            if args.param:
                body["params"] = _pairs(args.param, "--param")
            if args.pool:
                body["pool"] = args.pool
        if args.idempotency_key:
            body["idempotency_key"] = args.idempotency_key
        reply = await api.call(kind, "start", body)
        if args.json:
            output.print_json(reply)
        else:
            said = "already started" if reply.get("duplicate") else "started"
            output.console.print(f"{said} execution {reply['execution_id']}", highlight=False)
            output.console.print(f"[dim]follow it: batchdeck exec get {reply['execution_id']}[/dim]")
    elif verb == "cancel":
        reply = await api.call("exec", "cancel", {"id": args.id})
        if args.json:
            output.print_json(reply)
        elif reply.get("acknowledged") == "pending":
            output.console.print(f"cancel of {args.id} requested; its runner has not answered yet", highlight=False)
        else:
            output.console.print(f"canceled {args.id}", highlight=False)


def attach_sort_values(argv: list[str]) -> list[str]:
    """`--sort -queued_at` as `--sort=-queued_at`: argparse takes a value that starts with
    `-` for an option of its own and refuses the command ("expected one argument")."""
    attached: list[str] = []
    rest = iter(argv)
    for arg in rest:
        if arg == "--":  # what follows is a task's command line, not ours
            attached.append(arg)
            attached.extend(rest)
            break
        if arg == "--sort":
            value = next(rest, None)
            if value is not None and value.startswith("-") and not value.startswith("--"):
                attached.append(f"--sort={value}")
                continue
            attached.append(arg)
            if value is not None:
                attached.append(value)
            continue
        attached.append(arg)
    return attached


CRON_DIALECT = """\
cron dialect (docs/protocol.md, "Cron dialect"):
  5 fields   minute hour day-of-month month day-of-week        0 3 * * *
  6 fields   second first                                      30 0 3 * * *
  macros     @yearly @annually @monthly @weekly @daily @midnight @hourly
  items      *  N  A-B  */S  A-B/S  N/S (= N-max/S)  lists with ","
             A-A is A; A-B with B < A wraps (22-2, FRI-MON); ? is * in the day fields
  names      JAN-DEC, SUN-SAT, any case; day-of-week 0 and 7 are Sunday
  day-of-month  L (last day)  L-N (N days before)  NW (weekday nearest N)  LW
  day-of-week   DL (last day D: 5L)  D#K (K-th day D: MON#2)
  days       a day field that starts with * or ? (*/2 too): both fields must match
             (0 0 */2 * 1 = odd days that are Mondays); both restricted: either
             (0 0 1 * 1 = the 1st and every Monday)
  daylight saving (classic cron)
             minute or hour field starts with *: follows real time (a skipped time
             does not fire, a repeated one fires twice); otherwise fixed: a skipped
             time fires once at the end of the gap, a repeated one in its first pass
"""


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """`task`, `batch` and `exec` with their verbs."""
    for kind, help_text in (("task", "define and start tasks"), ("batch", "define, schedule and start batches"),
                            ("exec", "inspect and cancel executions")):
        parser = sub.add_parser(kind, help=help_text)
        verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
        if kind != "exec":
            _add_crud(verbs, kind, common)
        _add_list(verbs, kind, common)
        get = verbs.add_parser("get", parents=[common], help=f"show one {kind}")
        get.add_argument("id")
        if kind != "exec":
            start = verbs.add_parser("start", parents=[common], help=f"run the {kind} now")
            start.add_argument("id")
            start.add_argument("--context", action="append", metavar="KEY=VALUE", help="template values; repeat")
            start.add_argument("--idempotency-key", metavar="KEY",
                               help=f"start once per KEY: the same key again names the first execution "
                                    f"(for this {kind}, 7 days)")
            if kind == "task":
                start.add_argument("--param", action="append", metavar="KEY=VALUE", help="override a param; repeat")
                start.add_argument("--pool", help="run on this pool instead of the task's")
        if kind == "batch":
            for verb in ("enable", "disable"):
                toggle = verbs.add_parser(verb, parents=[common], help=f"{verb} the schedule")
                toggle.add_argument("id")
            upcoming = verbs.add_parser("next", parents=[common], help="the next fire times",
                                        description="The next fire times of a batch, in UTC and in its "
                                                    "timezone, as the scheduler computes them.",
                                        epilog=CRON_DIALECT, formatter_class=argparse.RawDescriptionHelpFormatter)
            upcoming.add_argument("id")
            upcoming.add_argument("--count", type=_count, default=5, metavar="N", help="how many (1-1000, default 5)")
            fired = verbs.add_parser("triggers", parents=[common], help="its triggers, newest first, with their lag")
            fired.add_argument("id")
            fired.add_argument("--page", type=int, default=1)
            fired.add_argument("--per-page", type=int, default=50)
        if kind == "exec":
            cancel = verbs.add_parser("cancel", parents=[common], help="cancel a queued or running execution")
            cancel.add_argument("id")
        parser.set_defaults(resource=kind)


def _add_crud(verbs: argparse._SubParsersAction, kind: str, common: argparse.ArgumentParser) -> None:
    add_flags = _add_task_flags if kind == "task" else _add_batch_flags
    create = verbs.add_parser("create", parents=[common], help=f"create a {kind} from flags or -f FILE")
    create.add_argument("-f", "--file", help="a JSON or TOML definition (- for JSON on stdin); flags override it")
    create.add_argument("--id", help="the id to give it (default: a new ULID)")
    add_flags(create)
    update = verbs.add_parser("update", parents=[common], help=f"change fields of a {kind}")
    update.add_argument("id")
    update.add_argument("-f", "--file", help="fields to change, JSON or TOML")
    update.add_argument("--set", action="append", metavar="FIELD=VALUE", help="any field (JSON value); repeat")
    update.add_argument("--version", type=int, help="refuse the update if the stored version differs")
    add_flags(update)
    delete = verbs.add_parser("delete", parents=[common], help=f"delete a {kind} (kept as history)")
    delete.add_argument("id")
    if kind == "task":
        delete.add_argument("--force", action="store_true", help="also delete the batches that use it")


def _add_list(verbs: argparse._SubParsersAction, kind: str, common: argparse.ArgumentParser) -> None:
    parser = verbs.add_parser("list", parents=[common], help=f"list {PLURALS[kind]}")
    parser.add_argument("--filter", action="append", metavar="FIELD=VALUE",
                        help="equality; repeat a field for any-of (e.g. --filter status=failed --filter status=lost)")
    parser.add_argument("--sort", metavar="FIELD", help="a field, '-' prefix for descending (e.g. -queued_at)")
    parser.add_argument("--page", type=int, default=1)
    parser.add_argument("--per-page", type=int, default=50)
    if kind != "exec":
        parser.add_argument("--include-deleted", action="store_true")
    else:
        parser.add_argument("--history", action="store_true",
                            help="list the store's history (every execution kept) instead of the last 7 days' live state")
        parser.add_argument("--since", metavar="TIME", help="queued at or after this RFC 3339 time")
        parser.add_argument("--until", metavar="TIME", help="queued before this RFC 3339 time")
