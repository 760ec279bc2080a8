"""Subject names of the wire contract (PROTOCOL.md). Every service builds subjects here."""

from __future__ import annotations

import re

PREFIX = "bd"
ORG_PATTERN = r"^[a-z0-9_-]{1,32}$"
DEFAULT_ORG = "default"
SERVICE_NAME = "batchdeck"
_ORG_RE = re.compile(ORG_PATTERN)


def is_valid_org(org: str) -> bool:
    return bool(_ORG_RE.match(org))


def api(org: str, resource: str, verb: str) -> str:
    """`bd.{org}.api.{resource}.{verb}`: a control API request."""
    return f"{PREFIX}.{org}.api.{resource}.{verb}"


def api_any_org(resource: str, verb: str) -> str:
    """The subscription subject of one endpoint across every org."""
    return f"{PREFIX}.*.api.{resource}.{verb}"


def org_of(subject: str) -> str:
    """The org token of any `bd.{org}.…` subject (not validated)."""
    parts = subject.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == PREFIX else ""


def run(org: str, pool: str) -> str:
    """A run command on the BD_RUNS work queue."""
    return f"{PREFIX}.{org}.run.{pool}"


def trigger(org: str, batch_id: str) -> str:
    """A trigger on BD_TRIGGERS."""
    return f"{PREFIX}.{org}.trigger.{batch_id}"


def exec_event(org: str, execution_id: str, kind: str) -> str:
    """`state`, `log` or `progress` events of one execution on BD_EVENTS."""
    return f"{PREFIX}.{org}.evt.exec.{execution_id}.{kind}"


def trigger_event(org: str, batch_id: str) -> str:
    return f"{PREFIX}.{org}.evt.trigger.{batch_id}"


def definition_event(org: str, kind: str, definition_id: str) -> str:
    """`kind` is `task` or `batch`."""
    return f"{PREFIX}.{org}.evt.def.{kind}.{definition_id}"


def notify_event(org: str, execution_id: str) -> str:
    """A notification's outcome (sent or failed), one event per recipient."""
    return f"{PREFIX}.{org}.evt.notify.{execution_id}"


def exec_cancel(org: str, execution_id: str) -> str:
    """The core request the runner holding an execution answers."""
    return f"{PREFIX}.{org}.ctl.exec.{execution_id}.cancel"


def runner_holds(org: str, runner_id: str) -> str:
    """The core request one runner answers: does it run this execution now? Asked by a
    runner that received a run again while its execution names that runner as running
    it; no responder means no such runner is connected."""
    return f"{PREFIX}.{org}.ctl.runner.{runner_id}.holds"


def runner_consumer(org: str, pool: str) -> str:
    """The durable consumer of BD_RUNS the runners of one org's pool share:
    `runner_{len(org)}_{org}_{pool}` (org and pool may both contain `_`; the length keeps
    org `a_b` + pool `c` apart from org `a` + pool `b_c`)."""
    return f"runner_{len(org)}_{org}_{pool}"


TRACE_HEADER = "Bd-Trace"
"""`Bd-Trace: false` on every event of a `trace: false` execution: the store keeps no history of it."""

# Stream subjects, across every org.
RUNS_SUBJECTS = [f"{PREFIX}.*.run.*"]
TRIGGERS_SUBJECTS = [f"{PREFIX}.*.trigger.*"]
EVENTS_SUBJECTS = [f"{PREFIX}.*.evt.>"]


# ---- who may be answered --------------------------------------------------------------

SERVICE_INBOX_PREFIX = "_INBOX"
"""nats' default reply prefix: what the services (and clients of an open server) use."""
ROUTED_REPLY_PREFIX = "_R_"
"""The server's name for a reply subject of a request that came from another account:
the answer goes back to that account only (deploy/nats: one account per org)."""


def org_inbox_prefix(org: str) -> str:
    """`_INBOX_{org}`: the reply prefix of an org's users (each role below it,
    `_INBOX_acme.viewer`), the only inboxes they may subscribe to."""
    return f"_INBOX_{org}"


def is_inbox_reply(org: str, reply: str) -> bool:
    """Whether a service may publish its answer to a request of `org` on `reply`.

    Only an inbox: `_INBOX_{org}.…` (the org's own), `_INBOX.…` (another service, or a
    client of an open server) or `_R_.…` (a request routed from an org's account). A
    reply subject is chosen by whoever sends the request, and a service publishes with
    its own rights: answering `$KV.bd_tasks.{other org}.{id}`, a trigger subject or a
    runner's cancel subject would turn a read into a write there."""
    head, dot, rest = reply.partition(".")
    if not dot or not rest or "*" in reply or ">" in reply or " " in reply:
        return False
    return head in (SERVICE_INBOX_PREFIX, ROUTED_REPLY_PREFIX, org_inbox_prefix(org))


ACCOUNT_JS_PREFIX = "$BD.JS.API"
"""Where an org's account reaches the JetStream API of batchdeck's account: the few
requests a runner may make are imported under this prefix (deploy/nats: an org's
account has no JetStream of its own, and `$JS.API` there answers "not enabled")."""


def kv_key(org: str, object_id: str) -> str:
    """The key of a definition or execution in its KV bucket."""
    return f"{org}.{object_id}"
