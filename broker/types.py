"""The wire contract as msgspec Structs (PROTOCOL.md); validation lives here.

Every service decodes with these types, so every service rejects the same bad input
the same way. `*Spec` types hold what a client may write; the stored/replied types
add the fields the system manages. Field names are public API: never rename them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from broker import schedule
from broker.timestamps import parse_iso
from broker.subjects import ORG_PATTERN

# ---- scalar constraints -------------------------------------------------------------

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
Id = Annotated[str, Meta(pattern=ID_PATTERN, description="letters, digits, '_' and '-', at most 64")]
Org = Annotated[str, Meta(pattern=ORG_PATTERN)]
Name = Annotated[str, Meta(min_length=1, max_length=200)]
Description = Annotated[str, Meta(max_length=4000)]
POOL_PATTERN = r"^[a-z0-9_-]{1,32}$"
Pool = Annotated[str, Meta(pattern=POOL_PATTERN)]
ModuleName = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
EnvName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
Arg = Annotated[str, Meta(max_length=8192)]
Seconds = Annotated[float, Meta(gt=0, le=7 * 24 * 3600)]
Percent = Annotated[float, Meta(ge=0, le=100)]
Timestamp = str
IdempotencyKey = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[!-~]+$",
                                     description="1-128 printable ASCII characters, no spaces")]

MAX_OBJECT_BYTES = 64 * 1024
"""The encoded size limit of a free-form object (params, context, state, result)."""

ExecutionStatus = Literal["queued", "running", "succeeded", "failed", "canceled", "timed_out", "lost", "skipped"]
FINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "timed_out", "lost", "skipped"})
Source = Literal["cron", "manual", "startup", "api", "catch_up"]


def _check_time(name: str, value: str | None) -> None:
    if value is None:
        return
    try:
        parse_iso(value)
    except ValueError:
        raise ValueError(f"`{name}` must be an RFC 3339 time such as 2026-11-23T14:05:00.000Z, got {value!r}") from None


def _check_object_size(name: str, value: dict[str, Any] | None) -> None:
    if value and len(msgspec.json.encode(value)) > MAX_OBJECT_BYTES:
        raise ValueError(f"`{name}` is larger than {MAX_OBJECT_BYTES} bytes once encoded")


def _nul_at(value: Any, path: str) -> str | None:
    """The path of the first string in `value` (keys included) holding a NUL byte."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _nul_at(key, path) or _nul_at(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_at(item, f"{path}[{index}]")
            if found:
                return found
    return None


def _check_no_nul(name: str, value: Any) -> None:
    """Values that reach a process (arguments, environment, templates) may not hold NUL:
    no argv element or environment variable can carry one."""
    found = _nul_at(value, name)
    if found:
        raise ValueError(f"`{found}` contains a NUL byte (\\u0000), which no process argument or environment "
                         "variable can carry")


# ---- tasks --------------------------------------------------------------------------

TEMPLATE_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
"""`{{ name }}` in a command argument: filled from the run's params and context (runner.templates)."""

ParamType = Literal["string", "integer", "number", "boolean", "object", "array", "any"]
VALUE_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}
"""The Python types of a JSON value of each param type ("any" takes every value)."""


def type_problem(value: Any, kind: str) -> str | None:
    """Why `value` is not of param type `kind` (None when it is). A boolean is no number."""
    expected = VALUE_TYPES.get(kind)
    if expected is None:
        return None
    if not isinstance(value, expected) or (kind != "boolean" and isinstance(value, bool)):
        return f"must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}, got {_json_type(value)}"
    return None


def _json_type(value: Any) -> str:
    for name, types in (("boolean", (bool,)), ("integer", (int,)), ("number", (float,)), ("string", (str,)),
                        ("object", (dict,)), ("array", (list,))):
        if isinstance(value, types):
            return name
    return "null" if value is None else type(value).__name__


class StartParam(Struct, kw_only=True, forbid_unknown_fields=True):
    """A param a start may set (as Rundeck's job options): only these, of this type.
    The admin who defines the task decides; an operator who starts it fills them in."""

    name: Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
    type: ParamType = "string"
    description: Description = ""
    choices: Annotated[list[Any], Meta(min_length=1, max_length=100)] | None = None
    """The value must be one of these."""
    pattern: Annotated[str, Meta(min_length=1, max_length=500)] | None = None
    """A string value must match this regular expression as a whole."""

    def __post_init__(self) -> None:
        if self.pattern is not None:
            if self.type not in ("string", "any"):
                raise ValueError(f"overridable param {self.name!r}: `pattern` applies to strings only")
            try:
                re.compile(self.pattern)
            except re.error as err:
                raise ValueError(f"overridable param {self.name!r}: `pattern` is not a regular expression ({err})") \
                    from None
        for choice in self.choices or []:
            if (problem := type_problem(choice, self.type)) is not None:
                raise ValueError(f"overridable param {self.name!r}: choice {choice!r} {problem}")

    def problem(self, value: Any) -> str | None:
        """Why a start may not give this param `value` (None when it may)."""
        if (problem := type_problem(value, self.type)) is not None:
            return problem
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(json_text(c) for c in self.choices)}"
        if self.pattern is not None and isinstance(value, str) and re.fullmatch(self.pattern, value) is None:
            return f"must match {self.pattern}"
        return None


def json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


EMAIL_RE = re.compile(r"[^@\s<>,;:\"]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+")
WEBHOOK_RE = re.compile(r"https?://[^\s/?#@]+(?:[/?#]\S*)?")


def recipient_channel(recipient: str) -> Literal["email", "webhook"] | None:
    """What a recipient is: an email address, a webhook URL, or neither (None)."""
    if EMAIL_RE.fullmatch(recipient):
        return "email"
    if WEBHOOK_RE.fullmatch(recipient):
        return "webhook"
    return None


FAILURE_STATUSES = frozenset({"failed", "timed_out", "lost"})
"""The outcomes `notify.on: "failure"` reports (a cancel is an operator's act, a skip no run)."""


class Notify(Struct, kw_only=True, forbid_unknown_fields=True):
    """Who hears about an execution's outcome."""

    on: Literal["always", "failure"] = "failure"
    recipients: Annotated[list[Annotated[str, Meta(min_length=3, max_length=2000)]], Meta(min_length=1, max_length=50)]

    def __post_init__(self) -> None:
        for recipient in self.recipients:
            if recipient_channel(recipient) is None:
                raise ValueError(f"notify recipient {recipient!r} is neither an email address (name@example.com) nor "
                                 "an http(s) webhook URL without credentials (https://hooks.example.com/...)")
        self.recipients = list(dict.fromkeys(self.recipients))  # one message per recipient

    def wants(self, status: str) -> bool:
        """Whether an outcome of `status` is reported."""
        return status in FAILURE_STATUSES if self.on == "failure" else status in FINAL_STATUSES


class TaskSpec(Struct, kw_only=True, forbid_unknown_fields=True):
    """The fields of a task a client writes (create, update)."""

    id: Id | None = None
    name: Name
    description: Description = ""
    kind: Literal["command", "module"] | None = None
    command: Annotated[list[Arg], Meta(min_length=1, max_length=256)] | None = None
    module: ModuleName | None = None
    params: dict[str, Any] = {}
    shell: bool = False
    env: dict[EnvName, Annotated[str, Meta(max_length=32768)]] = {}
    cwd: Annotated[str, Meta(min_length=1, max_length=4096)] | None = None
    pool: Pool = "default"
    timeout_sec: Seconds | None = None
    retries: Annotated[int, Meta(ge=0, le=100)] = 0
    retry_backoff_sec: Annotated[float, Meta(ge=0, le=86400)] = 10.0
    cancellable: bool = True
    trace: bool = True
    owner: Annotated[str, Meta(max_length=200)] | None = None
    system: bool = False
    notify: Notify | None = None
    overridable: Annotated[list[StartParam], Meta(max_length=100)] = []
    """The params a start may set; a start that sets any other is refused (403)."""
    log_max_lines: Annotated[int, Meta(ge=1)] | None = None
    """Lines of each action's output kept (None: the control plane's default); past it
    the process runs on, its lines are counted and dropped (`LogLimits`)."""
    log_max_bytes: Annotated[int, Meta(ge=1024)] | None = None
    """Bytes of each action's output kept, as `log_max_lines`."""

    def __post_init__(self) -> None:
        names = [param.name for param in self.overridable]
        if len(set(names)) != len(names):
            twice = sorted({name for name in names if names.count(name) > 1})
            raise ValueError(f"`overridable` names {', '.join(twice)} more than once")
        if self.kind is None:
            self.kind = "module" if self.module is not None and self.command is None else "command"
        if self.kind == "command":
            if not self.command:
                raise ValueError("a task of kind 'command' needs `command`, a non-empty argv list such as [\"echo\", \"hi\"]")
            if not self.command[0].strip():
                raise ValueError("`command[0]`, the program to run, is empty or blank: name a program, e.g. [\"echo\", \"hi\"]")
            if self.module is not None:
                raise ValueError("a task of kind 'command' takes `command`, not `module`")
        else:
            if self.module is None:
                raise ValueError("a task of kind 'module' needs `module`, the name of a registered handler")
            if self.command is not None:
                raise ValueError("a task of kind 'module' takes `module`, not `command`")
            if self.shell:
                raise ValueError("`shell` applies to command tasks only")
        _check_object_size("params", self.params)
        for name, value in (("command", self.command), ("env", self.env), ("cwd", self.cwd), ("params", self.params)):
            _check_no_nul(name, value)


class Task(TaskSpec, kw_only=True):
    """A task as stored and replied: the spec plus the fields the system manages."""

    id: Id
    state: dict[str, Any] = {}
    created_at: Timestamp | None = None
    updated_at: Timestamp | None = None
    deleted_at: Timestamp | None = None
    version: int = 0
    start_count: int = 0
    last_started_at: Timestamp | None = None


class TaskRuntime(Struct, kw_only=True):
    """A module task's `state`, persisted between its runs (KV `bd_task_state`), kept
    apart from the definition so that a run does not bump the definition's `version`."""

    state: dict[str, Any] = {}
    version: int = 0


class TaskStarts(Struct, kw_only=True):
    """How often one runner started a task (KV `bd_task_starts`, key
    `{org}.{task_id}.{runner}`): each runner writes only its own key, so counting needs
    no compare-and-set between runners; a task's `start_count` is the sum."""

    start_count: int = 0
    last_started_at: Timestamp | None = None


# ---- batches ------------------------------------------------------------------------


def _int_list(low: int, high: int, longest: int) -> Any:
    return Annotated[list[Annotated[int, Meta(ge=low, le=high)]], Meta(max_length=longest)]


class Schedule(Struct, forbid_unknown_fields=True):
    """A structured schedule; an empty list means "every"."""

    minutes: _int_list(0, 59, 60) = []  # type: ignore[valid-type]
    hours: _int_list(0, 23, 24) = []  # type: ignore[valid-type]
    days_of_month: _int_list(1, 31, 31) = []  # type: ignore[valid-type]
    months: _int_list(1, 12, 12) = []  # type: ignore[valid-type]
    weekdays: _int_list(0, 6, 7) = []  # type: ignore[valid-type]

    def to_cron(self) -> str:
        return schedule.structured_to_cron(msgspec.structs.asdict(self))


class Action(Struct, kw_only=True, forbid_unknown_fields=True):
    """One step of a batch: a task, with params that override the task's own."""

    task_id: Id
    params: dict[str, Any] = {}
    continue_on_error: bool = False

    def __post_init__(self) -> None:
        _check_object_size("params", self.params)
        _check_no_nul("params", self.params)


class BatchSpec(Struct, kw_only=True, forbid_unknown_fields=True):
    """The fields of a batch a client writes (create, update)."""

    id: Id | None = None
    name: Name
    description: Description = ""
    cron_expression: Annotated[str, Meta(max_length=200)] | None = None
    schedule: Schedule | None = None
    timezone: Annotated[str, Meta(max_length=64)] = "UTC"
    is_enabled: bool
    run_on_startup: bool
    actions: Annotated[list[Action], Meta(min_length=1, max_length=200)]
    pool: Pool | None = None
    concurrency: Literal["allow", "forbid", "replace"] = "forbid"
    catch_up: Literal["none", "last", "all"] = "last"
    max_catch_up: Annotated[int, Meta(ge=1, le=1000)] = 10
    owner: Annotated[str, Meta(max_length=200)] | None = None
    notify: Notify | None = None

    def __post_init__(self) -> None:
        if (self.cron_expression is None) == (self.schedule is None):
            raise ValueError("a batch needs exactly one of `cron_expression` (e.g. '0 3 * * *') or `schedule`")
        try:
            if self.cron_expression is not None:
                self.cron_expression = schedule.canonical_cron(self.cron_expression)
            else:
                cron = self.schedule.to_cron()
                try:
                    schedule.normalize_cron(cron)
                except schedule.ScheduleError:
                    raise schedule.ScheduleError(f"schedule (cron {cron!r}) never fires (e.g. February 30)") from None
            schedule.zone(self.timezone)
        except schedule.ScheduleError as err:
            raise ValueError(str(err)) from None

    def effective_cron(self) -> str:
        """The 5- or 6-field cron this batch fires on (macros expanded)."""
        if self.cron_expression is not None:
            return schedule.normalize_cron(self.cron_expression)
        return self.schedule.to_cron()


class Batch(BatchSpec, kw_only=True):
    """A batch as stored and replied."""

    id: Id
    next_run_at: Timestamp | None = None
    created_at: Timestamp | None = None
    updated_at: Timestamp | None = None
    deleted_at: Timestamp | None = None
    version: int = 0


# ---- executions ---------------------------------------------------------------------


class ActionState(Struct, kw_only=True):
    index: int
    task_id: str
    status: ExecutionStatus = "queued"
    exit_code: int | None = None
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    error: str | None = None


class Execution(Struct, kw_only=True):
    """One run of a task or a batch; its live state is in KV `bd_execs`."""

    id: str
    org: str
    batch_id: str | None = None
    task_id: str | None = None
    name: str = ""
    trigger_id: str | None = None
    source: Source = "manual"
    status: ExecutionStatus = "queued"
    attempt: int = 1
    pool: str = "default"
    runner_id: str | None = None
    queued_at: Timestamp | None = None
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    duration_ms: int | None = None
    progress_percent: float | None = None
    progress_text: str | None = None
    actions: list[ActionState] = []
    result: dict[str, Any] | None = None
    error: str | None = None
    context: dict[str, Any] = {}
    cancellable: bool = True
    cancel_requested: bool = False
    trace: bool = True
    deadline: Timestamp | None = None
    log_dropped_lines: int = 0
    """Lines of output past the actions' log quotas: counted, not kept (the log says so too)."""
    log_dropped_bytes: int = 0
    version: int = 0

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


class RunCommand(Struct, kw_only=True):
    """What the broker enqueues on `bd.{org}.run.{pool}`: everything a runner needs,
    with the task definitions snapshotted so a later edit cannot change a queued run.
    For a batch, `tasks[i]` is the task of `batch.actions[i]` with the action's params
    merged over the task's."""

    execution_id: str
    org: str
    attempt: int = 1
    batch: Batch | None = None
    tasks: list[Task]
    context: dict[str, Any] = {}
    deadline: Timestamp | None = None


class LogLine(Struct, kw_only=True):
    idx: int
    ts: Timestamp
    level: Literal["debug", "info", "warning", "error"] = "info"
    stream: Literal["stdout", "stderr", "runner"] = "stdout"
    action_index: int | None = None
    msg: str = ""
    status_percent: float | None = None
    execution_id: str | None = None


NotificationChannel = Literal["email", "webhook"]
NotificationStatus = Literal["sending", "sent", "failed"]


class Notification(Struct, kw_only=True):
    """One delivery of an execution's outcome to one recipient: the notifier's claim in KV
    `bd_notifications` (key `{org}.{execution_id}.{target_key}`) while it is sent, and the
    event `bd.{org}.evt.notify.{execution_id}` once it is `sent` or `failed`."""

    org: Org
    execution_id: str
    channel: NotificationChannel
    target: str
    """The email address or webhook URL, as the rule names it."""
    rules: list[str] = []
    """What asked for it: `batch:{id}` and/or `task:{id}`."""
    execution_status: ExecutionStatus
    status: NotificationStatus = "sending"
    attempts: int = 0
    error: str | None = None
    notifier: str | None = None
    """The notifier instance that holds (or held) the claim."""
    claim_id: str | None = None
    """Random, made with the claim: part of the event's `Nats-Msg-Id`, which no other org
    (publishing into the same stream) can then name in advance."""
    created_at: Timestamp
    updated_at: Timestamp
    sent_at: Timestamp | None = None


class Progress(Struct, kw_only=True):
    execution_id: str
    percent: Percent | None = None
    text: str | None = None
    ts: Timestamp


class Trigger(Struct, kw_only=True):
    """A request to run a batch (scheduled, startup, catch-up or manual) and what it produced."""

    trigger_id: str
    batch_id: Id
    source: Source = "cron"
    scheduled_at: Timestamp | None = None
    fired_at: Timestamp | None = None
    context: dict[str, Any] = {}
    org: str | None = None
    execution_id: str | None = None
    status: ExecutionStatus | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        _check_object_size("context", self.context)
        _check_no_nul("context", self.context)
        _check_time("scheduled_at", self.scheduled_at)
        _check_time("fired_at", self.fired_at)


class BatchRun(Struct, kw_only=True):
    """The latest execution a batch's triggers started (KV `bd_batch_runs`, key
    `{org}.{batch_id}`): what the `forbid` and `replace` concurrency policies look at."""

    execution_id: str
    trigger_id: str | None = None
    version: int = 0


class SchedulerReplica(Struct, kw_only=True):
    """A scheduler replica's heartbeat in KV `bd_scheduler` (key `replica.{id}`).

    `fired_through`: every tick up to this instant has been published by this replica;
    the newest of all replicas' is where catch-up starts after the whole fleet was down."""

    id: str
    host: str = ""
    pid: int | None = None
    epoch: int = 0
    started_at: Timestamp | None = None
    heartbeat_at: Timestamp | None = None
    fired_through: Timestamp | None = None
    batches: int = 0


class SchedulerEpoch(Struct, kw_only=True):
    """KV `bd_scheduler` key `epoch`: one number per start of the scheduler fleet, and
    the fleet's lease: every live replica renews `renewed_at` each second. A replica
    that starts while the lease has lapsed begins the next epoch; `run_on_startup`
    fires once per epoch."""

    epoch: int
    started_at: Timestamp
    by: str
    renewed_at: Timestamp | None = None


class DefinitionEvent(Struct, kw_only=True):
    """`bd.{org}.evt.def.{kind}.{id}`: a definition after a change."""

    kind: Literal["task", "batch"]
    change: Literal["created", "updated", "deleted"]
    id: str
    org: str
    definition: dict[str, Any]
    ts: Timestamp


# ---- runners and modules ------------------------------------------------------------


class ModuleParam(Struct, kw_only=True):
    name: str
    type: str = "string"
    default: Any = None
    required: bool = False
    description: str = ""
    group: str | None = None
    position: int | None = None


class ModuleInfo(Struct, kw_only=True):
    name: str
    description: str = ""
    params: list[ModuleParam] = []


class Runner(Struct, kw_only=True):
    """A runner's heartbeat in KV `bd_runners`."""

    id: str
    org: str | None = None
    host: str = ""
    pid: int | None = None
    pools: list[str] = []
    concurrency: int = 1
    running: list[str] = []
    modules: list[ModuleInfo] = []
    version: str = ""
    started_at: Timestamp | None = None
    heartbeat_at: Timestamp | None = None
    alive: bool | None = None
    """Computed by runner.list: a heartbeat within RUNNER_ALIVE_SECONDS (null as stored)."""


MiB = 1024 * 1024


class LogLimits(Struct, kw_only=True, frozen=True):
    """How much of an action's output is kept: the default for tasks that do not say, and
    the most a task may ask for (the control plane's settings, `batchdeck broker --log-…`)."""

    default_lines: int = 100_000
    max_lines: int = 1_000_000
    default_bytes: int = 64 * MiB
    max_bytes: int = 1024 * MiB

    def problem(self, task: TaskSpec) -> str | None:
        """Why the task asks for more than the maximum (None when it does not)."""
        if task.log_max_lines is not None and task.log_max_lines > self.max_lines:
            return f"`log_max_lines` is {task.log_max_lines}; at most {self.max_lines}"
        if task.log_max_bytes is not None and task.log_max_bytes > self.max_bytes:
            return f"`log_max_bytes` is {task.log_max_bytes}; at most {self.max_bytes}"
        return None

    def lines(self, task: TaskSpec) -> int:
        return min(task.log_max_lines or self.default_lines, self.max_lines)

    def bytes(self, task: TaskSpec) -> int:
        return min(task.log_max_bytes or self.default_bytes, self.max_bytes)


RUNNER_ALIVE_SECONDS = 15.0
"""A runner whose last heartbeat is older than this is shown as gone (it beats every 5 s)."""


# ---- requests and replies -----------------------------------------------------------


class GetRequest(Struct, forbid_unknown_fields=True):
    id: Id


class ListRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    filter: dict[Annotated[str, Meta(max_length=64)], Any] = {}
    sort: Annotated[str, Meta(pattern=r"^-?[a-z_]{1,64}$")] | None = None
    page: Annotated[int, Meta(ge=1, le=1_000_000)] = 1
    per_page: Annotated[int, Meta(ge=1, le=1000)] = 50
    include_deleted: bool = False


class ExecListRequest(ListRequest, kw_only=True, forbid_unknown_fields=True):
    """`exec.list`: live state by default; `history: true` asks the store (`exec.history`).
    `since`/`until` keep executions queued in [since, until)."""
    history: bool = False
    since: str | None = None
    until: str | None = None


class TaskDeleteRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    id: Id
    force: bool = False


class BatchDeleteRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    id: Id


class BatchStatusRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    id: Id
    is_enabled: bool
    version: int | None = None


class TaskStartRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    id: Id
    context: dict[str, Any] = {}
    params: dict[str, Any] = {}
    pool: Pool | None = None
    source: Literal["manual", "api"] = "manual"
    deadline: Timestamp | None = None
    idempotency_key: IdempotencyKey | None = None
    """The same key again (for the same task, within 7 days) starts nothing new: the reply
    names the first execution, with `duplicate: true`."""

    def __post_init__(self) -> None:
        _check_object_size("context", self.context)
        _check_object_size("params", self.params)
        _check_no_nul("context", self.context)
        _check_no_nul("params", self.params)
        _check_time("deadline", self.deadline)


class BatchNextRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    id: Id
    count: Annotated[int, Meta(ge=1, le=1000)] = 5


class BatchTriggersRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    id: Id
    page: Annotated[int, Meta(ge=1, le=1_000_000)] = 1
    per_page: Annotated[int, Meta(ge=1, le=1000)] = 50


class BatchStartRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    id: Id
    context: dict[str, Any] = {}
    source: Literal["manual", "api"] = "manual"
    deadline: Timestamp | None = None
    idempotency_key: IdempotencyKey | None = None
    """As TaskStartRequest's, for the same batch."""

    def __post_init__(self) -> None:
        _check_object_size("context", self.context)
        _check_no_nul("context", self.context)
        _check_time("deadline", self.deadline)


class ExecCancelRequest(Struct, forbid_unknown_fields=True):
    id: Id


class EmptyRequest(Struct, forbid_unknown_fields=True):
    pass


class Page(Struct, kw_only=True):
    items: list[Any]
    page: int
    per_page: int
    total: int
    pages: int


class ErrorDetail(Struct, kw_only=True):
    code: int
    message: str
    details: dict[str, Any] = {}


class ErrorBody(Struct):
    error: ErrorDetail


# The fields of stored objects that the system manages; an update that carries them
# (a client sending back what it got) has them ignored, not refused.
TASK_READ_ONLY = frozenset({"state", "created_at", "updated_at", "deleted_at", "start_count", "last_started_at"})
BATCH_READ_ONLY = frozenset({"next_run_at", "created_at", "updated_at", "deleted_at"})
