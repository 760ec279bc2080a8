"""`batchdeck nats-config`: the NATS server's accounts, users and rights for batchdeck,
generated for a list of orgs (and the runner pools of each).

Why accounts, one per org. In one account, user permissions cannot keep orgs apart: a
request's reply subject is the requester's choice, and whoever answers publishes there
with its own rights. A batchdeck service holds wide rights; JetStream itself answers
its API (a direct get, a consumer create, a publish's ack) on any reply subject. An org
user who may ask anything of either can make it write into another org's KV keys (an
outside attack did: a viewer's `task.get` with the reply subject
`$KV.bd_tasks.{other org}.{id}` replaced that org's task). `allow_responses` does not
help: it adds a right to answer, it takes none away.

So the services and JetStream live in the account `BATCHDECK`, and every org has an
account of its own (`ORG_{org}`) that imports exactly what its users may reach:
- the org's API (`bd.{org}.api.>`), its triggers (`bd.{org}.trigger.*`) and its events
  (`bd.{org}.evt.>`, to subscribe to);
- for its runners: publishing the org's execution events and writing the org's keys of
  the four buckets a runner writes, direct gets of those keys and of the org's log
  lines, and the consumer of each of its pools (info, create with the filter pinned,
  next, ack), under `$BD.JS.API` (subjects.ACCOUNT_JS_PREFIX);
and `BATCHDECK` imports the org's cancel subject, which its runners answer.
A request from an org's account reaches a service with a reply subject the server
made (`_R_.…`), and the answer goes back into the org's account only: whatever reply
subject an org user chooses, it names nothing outside its own account. No org user
has any other JetStream access: no stream info, no consumer of its own, no KV watch.

Within an org, each role (viewer, operator, admin, runner) has its own inbox prefix,
`_INBOX_{org}.{role}`, and may subscribe to that one only: a viewer cannot read the
replies of the admin's SQL.

Passwords come from the environment (`$BD_PW_…`, resolved by nats-server): the header
of the generated file lists the variables.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from broker import streams, subjects
from broker.types import POOL_PATTERN

SERVICE_ACCOUNT = "BATCHDECK"
JS_API = "$JS.API."
RUNNER_BUCKETS = (streams.EXECS_BUCKET, streams.RUNNERS_BUCKET, streams.TASK_STATE_BUCKET,
                  streams.TASK_STARTS_BUCKET)
"""The buckets a runner writes (its org's keys only)."""
ROLES = ("viewer", "operator", "admin", "runner")

VIEWER_VERBS = ("*.get", "*.list", "task.modules", "batch.next", "batch.triggers", "batch.results", "batch.devices",
                "exec.logs", "exec.history")
OPERATOR_VERBS = ("task.start", "batch.start", "batch.status", "exec.cancel")

JS_ADMIN = ["$JS.API.STREAM.CREATE.>", "$JS.API.STREAM.UPDATE.>", "$JS.API.STREAM.DELETE.>",
            "$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.MSG.DELETE.>", "$JS.API.STREAM.SNAPSHOT.>",
            "$JS.API.STREAM.RESTORE.>", "$JS.API.ACCOUNT.PURGE.>"]
"""JetStream administration that only the broker (which provisions) may do."""


@dataclass(frozen=True)
class Org:
    name: str
    pools: tuple[str, ...] = ("default",)

    @property
    def account(self) -> str:
        return f"ORG_{self.name}"

    def password(self, role: str) -> str:
        return password_variable(f"{self.name}-{role}")

    def inbox(self, role: str) -> str:
        return f"{subjects.org_inbox_prefix(self.name)}.{role}"


@dataclass
class Grants:
    """What one org's account takes from BATCHDECK, and gives it."""

    services: list[str] = field(default_factory=list)
    """Subjects the org's users send to BATCHDECK (requests, publishes into its streams)."""
    streams: list[str] = field(default_factory=list)
    """Subjects BATCHDECK's messages reach the org's subscribers on."""
    multi_reply: list[str] = field(default_factory=list)
    """Services that answer one request with many messages (a pull of a consumer)."""
    returned: list[str] = field(default_factory=list)
    """Subjects the org answers BATCHDECK's requests on (its runners' cancel)."""


def password_variable(user: str) -> str:
    """The environment variable a user's password is read from: bd-broker -> BD_PW_BROKER,
    acme-viewer -> BD_PW_ACME_VIEWER."""
    return "BD_PW_" + re.sub(r"[^A-Z0-9]", "_", user.removeprefix("bd-").upper())


def imported(subject: str) -> str:
    """The subject an org's account reaches a JetStream API request of BATCHDECK's on."""
    return subjects.ACCOUNT_JS_PREFIX + "." + subject[len(JS_API):] if subject.startswith(JS_API) else subject


def grants(org: Org) -> Grants:
    name = org.name
    granted = Grants()
    granted.services += [f"bd.{name}.api.>", f"bd.{name}.trigger.*", f"bd.{name}.evt.exec.>"]
    granted.streams.append(f"bd.{name}.evt.>")
    for bucket in RUNNER_BUCKETS:
        granted.services += [f"$KV.{bucket}.{name}.>", f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{name}.>"]
    granted.services.append(f"$JS.API.DIRECT.GET.{streams.EVENTS}.bd.{name}.evt.exec.*.log")
    for pool in org.pools:
        consumer = subjects.runner_consumer(name, pool)
        granted.services += [
            f"$JS.API.CONSUMER.INFO.{streams.RUNS}.{consumer}",
            f"$JS.API.CONSUMER.CREATE.{streams.RUNS}.{consumer}.{subjects.run(name, pool)}",
            f"$JS.ACK.{streams.RUNS}.{consumer}.>",
        ]
        granted.multi_reply.append(f"$JS.API.CONSUMER.MSG.NEXT.{streams.RUNS}.{consumer}")
    granted.returned.append(subjects.exec_cancel(name, "*"))
    return granted


def user_permissions(org: Org, role: str) -> dict[str, object]:
    name = org.name
    if role == "runner":
        granted = grants(org)
        reads = [imported(s) for s in granted.services + granted.multi_reply
                 if s.startswith(JS_API) or s.startswith("$JS.ACK.") or s.startswith("$KV.")]
        return {
            "publish": [f"bd.{name}.evt.exec.>", subjects.runner_holds(name, "*"), "$JS.API.INFO", *reads],
            "subscribe": [subjects.exec_cancel(name, "*"), subjects.runner_holds(name, "*"), f"{org.inbox(role)}.>",
                          "$SRV.>"],
            "allow_responses": True,
        }
    verbs = VIEWER_VERBS + (OPERATOR_VERBS if role == "operator" else ())
    publish = [f"bd.{name}.api.>"] if role == "admin" else [subjects.api(name, *v.split(".")) for v in verbs]
    if role in ("operator", "admin"):
        publish.append(subjects.trigger(name, "*"))
    return {"publish": publish, "subscribe": [f"bd.{name}.evt.>", f"{org.inbox(role)}.>"]}


SERVICE_USERS: dict[str, dict[str, object]] = {
    # The control plane: every org's API, provisioning, triggers, runs, events, cancels.
    "bd-broker": {"publish": ["bd.>", "$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$KV.>"],
                  "subscribe": ["bd.*.api.>", "$SRV.>", "_INBOX.>"], "allow_responses": True},
    # The history: BD_EVENTS (its durable `store_history`), bd_runners, the history API.
    "bd-store": {"publish": ["$JS.API.>", "$JS.ACK.BD_EVENTS.>", "$JS.FC.>"], "publish_deny": JS_ADMIN,
                 "subscribe": ["bd.*.api.exec.logs", "bd.*.api.exec.history", "bd.*.api.batch.results",
                               "bd.*.api.history.sql", "$SRV.>", "_INBOX.>"], "allow_responses": True},
    # Scheduler replicas: bd_batches and bd_scheduler in, every org's triggers out.
    "bd-scheduler": {"publish": ["bd.*.trigger.*", "$KV.bd_scheduler.>", "$JS.API.>", "$JS.FC.>"],
                     "publish_deny": JS_ADMIN, "subscribe": ["_INBOX.>", "$SRV.>"], "allow_responses": True},
    # Notifiers: final states from BD_EVENTS, claims in bd_notifications, logs from the store.
    "bd-notifier": {"publish": ["bd.*.evt.notify.*", "bd.*.api.exec.logs", "$KV.bd_notifications.>", "$JS.API.>",
                                "$JS.ACK.BD_EVENTS.>", "$JS.FC.>"], "publish_deny": JS_ADMIN,
                    "subscribe": ["_INBOX.>", "$SRV.>"], "allow_responses": True},
    # Monitoring: the services' micro stats (`nats micro ls`, with --inbox-prefix _INBOX_monitor).
    "bd-monitor": {"publish": ["$SRV.>"], "subscribe": ["_INBOX_monitor.>"]},
}


def render(orgs: list[Org], command: str) -> str:
    """The configuration text (to `include` in a server config)."""
    variables = [password_variable(user) for user in SERVICE_USERS]
    variables += [org.password(role) for org in orgs for role in ROLES]
    lines = [
        "# batchdeck's NATS accounts, users and rights. Generated by",
        f"#   {command}",
        "# Do not edit by hand: generate it again to add an org or a pool, then reload the",
        "# servers (`nats-server --signal reload`). Why accounts, and what each user may do:",
        "# deploy/nats/README.md and docs/operations.md \"Roles and tenancy\".",
        "#",
        "# Passwords come from these environment variables (nats-server stops at start when",
        "# one is not set; quoting rules in deploy/nats/README.md):",
        *(f"#   {variable}" for variable in variables),
        "#",
        "# Inbox prefixes (batchdeck --inbox-prefix, or BATCHDECK_INBOX_PREFIX):",
        *(f"#   {org.name}-{role}: {org.inbox(role)}" for org in orgs for role in ROLES),
        "",
        "JS_ADMIN = [",
        *(f"  {_quoted(s)}" for s in JS_ADMIN),
        "]",
        "",
    ]
    for user, rights in SERVICE_USERS.items():
        lines += _permission_block(_variable(user), rights)
    for org in orgs:
        for role in ROLES:
            lines += _permission_block(_variable(f"{org.name}-{role}"), user_permissions(org, role))
    lines += ["accounts {", f"  {SERVICE_ACCOUNT}: {{", "    jetstream: enabled", "    users: ["]
    lines += [f"      {{ user: {user}, password: ${password_variable(user)}, permissions: ${_variable(user)} }}"
              for user in SERVICE_USERS]
    lines += ["    ]", "    exports: ["]
    for org in orgs:
        granted, to = grants(org), _quoted(org.account)
        lines.append(f"      # org {org.name}")
        lines += [f"      {{ service: {_quoted(s)}, accounts: [{to}] }}" for s in granted.services]
        lines += [f"      {{ service: {_quoted(s)}, accounts: [{to}], response_type: stream }}"
                  for s in granted.multi_reply]
        lines += [f"      {{ stream: {_quoted(s)}, accounts: [{to}] }}" for s in granted.streams]
    lines += ["    ]", "    imports: ["]
    for org in orgs:
        lines += [f"      {{ service: {{ account: {_quoted(org.account)}, subject: {_quoted(s)} }} }}"
                  for s in grants(org).returned]
    lines += ["    ]", "  }"]
    for org in orgs:
        granted = grants(org)
        lines += [f"  {_quoted(org.account)}: {{", "    users: ["]
        lines += [f"      {{ user: {org.name}-{role}, password: ${org.password(role)}, "
                  f"permissions: ${_variable(f'{org.name}-{role}')} }}" for role in ROLES]
        lines += ["    ]", "    imports: ["]
        for subject in granted.services + granted.multi_reply:
            to = f", to: {_quoted(imported(subject))}" if subject.startswith(JS_API) else ""
            lines.append(f"      {{ service: {{ account: {SERVICE_ACCOUNT}, subject: {_quoted(subject)} }}{to} }}")
        lines += [f"      {{ stream: {{ account: {SERVICE_ACCOUNT}, subject: {_quoted(s)} }} }}"
                  for s in granted.streams]
        lines += ["    ]", "    exports: ["]
        lines += [f"      {{ service: {_quoted(s)}, accounts: [{SERVICE_ACCOUNT}] }}" for s in granted.returned]
        lines += ["    ]", "  }"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _variable(user: str) -> str:
    """The config variable holding a user's permissions: acme-viewer -> PERMISSIONS_ACME_VIEWER."""
    return "PERMISSIONS_" + re.sub(r"[^A-Z0-9]", "_", user.upper())


def _quoted(text: str) -> str:
    return '"' + text + '"'


def _permission_block(name: str, rights: dict[str, object]) -> list[str]:
    lines = [f"{name} = {{", "  publish: {", "    allow: ["]
    lines += [f"      {_quoted(s)}" for s in rights["publish"]]  # type: ignore[union-attr]
    lines.append("    ]")
    if rights.get("publish_deny"):
        lines.append("    deny: $JS_ADMIN")
    subscribe = ", ".join(_quoted(s) for s in rights["subscribe"])  # type: ignore[union-attr]
    lines += ["  }", f"  subscribe: {{ allow: [{subscribe}] }}"]
    if rights.get("allow_responses"):
        lines.append("  allow_responses: true")
    lines += ["}", ""]
    return lines


# ---- the command ---------------------------------------------------------------------------


def parse_org(text: str) -> Org:
    """`ORG` or `ORG:POOL,POOL`; argparse.ArgumentTypeError naming what is wrong."""
    name, _, pools = text.partition(":")
    if not subjects.is_valid_org(name):
        raise argparse.ArgumentTypeError(f"org {name!r} is invalid: use 1-32 of a-z, 0-9, '_' and '-'")
    chosen = tuple(p.strip() for p in pools.split(",") if p.strip()) if pools else ("default",)
    for pool in chosen:
        if not re.match(POOL_PATTERN, pool):
            raise argparse.ArgumentTypeError(f"pool {pool!r} of org {name!r}: use 1-32 of a-z, 0-9, '_' and '-'")
    return Org(name, tuple(dict.fromkeys(chosen)))


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("nats-config", help="write the NATS server's accounts and users for your orgs")
    parser.add_argument("--org", action="append", dest="orgs", type=parse_org, required=True, metavar="ORG[:POOLS]",
                        help="an org, with the runner pools it uses (comma separated; default: default); repeat")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE", help="write to FILE (default: standard output)")


def _without_output(argv: list[str]) -> list[str]:
    """The command as the file records it: where it was written is not part of it."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("-o", "--output"):
            skip = True
        elif not arg.startswith(("-o=", "--output=")):
            kept.append(arg)
    return kept


def run(args: argparse.Namespace, argv: list[str]) -> int:
    orgs: list[Org] = args.orgs
    seen: dict[str, str] = {}
    for org in orgs:
        variable = org.password("viewer")
        if variable in seen:
            raise SystemExit(f"batchdeck nats-config: orgs {seen[variable]!r} and {org.name!r} would share the "
                             f"password variables {variable[:-7]}_*: rename one")
        seen[variable] = org.name
    text = render(orgs, "batchdeck " + shlex.join(_without_output(argv)))
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    return 0
