"""JetStream streams and KV buckets of ARCHITECTURE.md, and their idempotent provisioning.

Provisioning creates what is missing and leaves what exists alone; an existing stream or
bucket whose settings differ from ours is reported as drift (a list of readable lines),
never silently rewritten: retention, storage and replicas of a live stream are an
operator's decision.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import (APIError, BadRequestError, BucketNotFoundError, NoStreamResponseError, NotFoundError,
                            ServiceUnavailableError)

from broker import subjects
from broker.connect import denials_of

_log = logging.getLogger("batchdeck.provision")

RUNS = "BD_RUNS"
TRIGGERS = "BD_TRIGGERS"
EVENTS = "BD_EVENTS"

TASKS_BUCKET = "bd_tasks"
TASK_STATE_BUCKET = "bd_task_state"
TASK_STARTS_BUCKET = "bd_task_starts"
BATCHES_BUCKET = "bd_batches"
EXECS_BUCKET = "bd_execs"
RUNNERS_BUCKET = "bd_runners"
BATCH_RUNS_BUCKET = "bd_batch_runs"
SCHEDULER_BUCKET = "bd_scheduler"
NOTIFICATIONS_BUCKET = "bd_notifications"

DAY = 24 * 3600.0
DEFAULT_EVENTS_MAX_AGE = 7 * DAY
TRIGGER_DEDUP_WINDOW = 10 * 60.0
"""Long enough for a scheduler replica that restarts to re-publish a tick it already sent."""


JETSTREAM_UNAVAILABLE = (NatsTimeout, asyncio.TimeoutError, NoRespondersError, NoStreamResponseError,
                         ServiceUnavailableError)
"""What a JetStream call raises while a stream's leader is elected or a server restarts
(no responder: the stream's leader is gone and the next one not yet there)."""

@dataclass(frozen=True)
class BucketSpec:
    name: str
    history: int
    ttl: float | None
    description: str


BUCKETS = (
    BucketSpec(TASKS_BUCKET, 16, None, "task definitions, key {org}.{id}; revision = version"),
    BucketSpec(TASK_STATE_BUCKET, 1, None, "state a module task keeps between runs, key {org}.{task id}"),
    BucketSpec(TASK_STARTS_BUCKET, 1, None, "task start counts, key {org}.{task id}.{runner}"),
    BucketSpec(BATCHES_BUCKET, 16, None, "batch definitions, key {org}.{id}; revision = version"),
    BucketSpec(EXECS_BUCKET, 1, 7 * DAY, "live execution state, key {org}.{id}"),
    BucketSpec(RUNNERS_BUCKET, 1, 1 * DAY, "runner heartbeats, key {org}.{runner id}"),
    BucketSpec(BATCH_RUNS_BUCKET, 1, 7 * DAY, "the latest triggered execution of a batch, key {org}.{batch id}"),
    BucketSpec(SCHEDULER_BUCKET, 1, None, "scheduler fleet: key epoch, and replica.{id} heartbeats"),
    BucketSpec(NOTIFICATIONS_BUCKET, 1, 30 * DAY,
               "notification deliveries, key {org}.{execution id}.{target key}: claimed, then sent or failed"),
)


RUNS_DEDUP_WINDOW = 120.0
"""Seconds BD_RUNS remembers a run's `Nats-Msg-Id` ({org}.{execution_id}.{attempt})."""


GiB = 1024 ** 3
QUEUE_FULL = 10077
"""The JetStream error code of a publish refused because its subject holds its maximum
(`maximum messages per subject exceeded`): an org's pool has that many runs waiting."""


@dataclass(frozen=True)
class StreamLimits:
    """How large the streams may grow, and what happens at the bound (docs/operations.md,
    Limits): runs and triggers are refused when full, never dropped; events past the
    bound take the oldest events with them (the store reports what it could not read)."""

    events_max_bytes: int = 4 * GiB
    runs_max_bytes: int = 1 * GiB
    runs_per_pool: int = 100_000
    """Runs one org's pool may have waiting in BD_RUNS: one org cannot fill the queue of all."""
    triggers_max_bytes: int = 256 * 1024 * 1024


def stream_configs(replicas: int = 1, events_max_age: float = DEFAULT_EVENTS_MAX_AGE,
                   limits: StreamLimits = StreamLimits()) -> list[StreamConfig]:
    """The three streams as batchdeck wants them."""
    return [
        StreamConfig(
            name=RUNS,
            description="run commands, one work queue subject per org and pool",
            subjects=list(subjects.RUNS_SUBJECTS),
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=RUNS_DEDUP_WINDOW,
            max_bytes=limits.runs_max_bytes,
            max_msgs_per_subject=limits.runs_per_pool,
            discard=DiscardPolicy.NEW,
            discard_new_per_subject=True,
        ),
        StreamConfig(
            name=TRIGGERS,
            description="batch triggers; Nats-Msg-Id {org}.{batch_id}@{scheduled_at} de-duplicates scheduler replicas",
            subjects=list(subjects.TRIGGERS_SUBJECTS),
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=TRIGGER_DEDUP_WINDOW,
            max_bytes=limits.triggers_max_bytes,
            discard=DiscardPolicy.NEW,
        ),
        StreamConfig(
            name=EVENTS,
            description="execution state, logs, progress, triggers and definition changes",
            subjects=list(subjects.EVENTS_SUBJECTS),
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=events_max_age,
            max_bytes=limits.events_max_bytes,
            discard=DiscardPolicy.OLD,
            duplicate_window=120.0,
            # A runner reads the last log line of an execution it resumes with a direct get,
            # whose subject names the line's subject: a grant can confine it to its org.
            allow_direct=True,
        ),
    ]


_COMPARED = ("retention", "storage", "num_replicas", "max_age", "duplicate_window", "max_bytes",
             "max_msgs_per_subject", "discard")


def _stream_drift(want: StreamConfig, have: StreamConfig) -> list[str]:
    drift = []
    if sorted(want.subjects or []) != sorted(have.subjects or []):
        drift.append(f"stream {want.name}: subjects are {have.subjects}, batchdeck expects {want.subjects}")
    for name in _COMPARED:
        wanted, actual = getattr(want, name), getattr(have, name)
        if name in ("max_age", "duplicate_window"):
            wanted, actual = float(wanted or 0), float(actual or 0)
        elif name in ("max_bytes", "max_msgs_per_subject"):
            wanted, actual = _limit(wanted), _limit(actual)
        elif name == "discard":
            wanted, actual = DiscardPolicy(wanted or DiscardPolicy.OLD), DiscardPolicy(actual or DiscardPolicy.OLD)
        if wanted != actual:
            drift.append(f"stream {want.name}: {name} is {actual}, batchdeck expects {wanted} "
                         f"(`nats stream edit {want.name}` changes it)")
    return drift


def _limit(value: int | None) -> int:
    """A stream limit, "none" (absent, 0 or -1) as -1."""
    return -1 if not value or value < 0 else value


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> list[str]:
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return []
        except BadRequestError:
            # Another process created it between our look and our add.
            info = await js.stream_info(config.name)
    if config.allow_direct and not info.config.allow_direct:
        # A capability batchdeck's runners need (not a retention or placement choice):
        # switched on in place, for streams made before it was asked for.
        info.config.allow_direct = True
        await js.update_stream(info.config)
        _log.info("stream %s: direct gets switched on", config.name)
    return _stream_drift(config, info.config)


async def _ensure_bucket(js: JetStreamContext, spec: BucketSpec, replicas: int) -> list[str]:
    stream = f"KV_{spec.name}"
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        # direct: reads skip the JetStream API round trip and its message decoding.
        config = KeyValueConfig(
            bucket=spec.name, description=spec.description, history=spec.history, ttl=spec.ttl, replicas=replicas,
            storage=StorageType.FILE, direct=True,
        )
        try:
            await js.create_key_value(config)
            return []
        except BadRequestError:
            info = await js.stream_info(stream)
    have = info.config
    drift = []
    if have.max_msgs_per_subject != spec.history:
        drift.append(f"bucket {spec.name}: history is {have.max_msgs_per_subject}, batchdeck expects {spec.history}")
    if float(have.max_age or 0) != float(spec.ttl or 0):
        drift.append(f"bucket {spec.name}: ttl is {have.max_age}, batchdeck expects {spec.ttl}")
    if (have.num_replicas or 1) != replicas:
        drift.append(f"bucket {spec.name}: replicas is {have.num_replicas}, batchdeck expects {replicas}")
    return drift


JETSTREAM_NOT_ENABLED = 10039
"""The JetStream API's error code for "JetStream not enabled for account"."""


async def has_jetstream(nc: Any, timeout: float = 5.0) -> bool:
    """Whether this connection's account has JetStream and its user may use it. A user
    of an org's account (deploy/nats) has none; one the server refuses `$JS.API.INFO` is
    told at once (broker.connect keeps the refusals), not after `timeout`."""
    denials = denials_of(nc)
    request = asyncio.ensure_future(nc.request(f"{JS_API_PREFIX}.INFO", b"", timeout=timeout))
    refused: asyncio.Future[Any] | None = None
    try:
        if denials is not None:
            with denials.watch(lambda d: d.is_for("publish", f"{JS_API_PREFIX}.INFO")) as refused:
                await asyncio.wait({request, refused}, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.wait({request})
        if refused is not None and refused.done() and not refused.cancelled() and not request.done():
            return False
        reply = await request
    except (NatsTimeout, asyncio.TimeoutError, NoRespondersError):
        return False
    finally:
        if not request.done():
            request.cancel()
    try:
        return "error" not in json.loads(reply.data or b"{}")
    except ValueError:
        return False


JS_API_PREFIX = "$JS.API"


async def jetstream_of(nc: Any, timeout: float = 5.0) -> JetStreamContext:
    """The JetStream API as this connection reaches it: its own account's (`$JS.API`),
    or, for a user of an org's account, the requests imported from batchdeck's account
    under `subjects.ACCOUNT_JS_PREFIX`."""
    js = nc.jetstream(timeout=timeout)
    try:
        await js.account_info()
    except APIError as err:
        if getattr(err, "err_code", None) == JETSTREAM_NOT_ENABLED:
            return nc.jetstream(prefix=subjects.ACCOUNT_JS_PREFIX, timeout=timeout)
        raise
    return js


async def wait_for_jetstream(js: JetStreamContext, timeout: float = 30.0) -> None:
    """Wait until JetStream answers (a restarted server recovers its store first)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await js.account_info()
            return
        except (ServiceUnavailableError, APIError, asyncio.TimeoutError) as err:
            if loop.time() > deadline:
                raise RuntimeError(f"JetStream is not available: {err}") from err
            await asyncio.sleep(0.1)


async def wait_for_provisioning(js: JetStreamContext, log: logging.Logger) -> None:
    """Wait until a broker has provisioned streams and buckets. Services other than the
    broker wait rather than create them with settings (replicas) that are not theirs."""
    said = False
    while True:
        try:
            await wait_for_jetstream(js)
            for name in (RUNS, TRIGGERS, EVENTS, *(f"KV_{spec.name}" for spec in BUCKETS)):
                await js.stream_info(name)
            return
        except (NotFoundError, BucketNotFoundError):
            if not said:
                log.warning("streams and buckets are not provisioned yet; waiting for a broker to start")
                said = True
            await asyncio.sleep(1.0)


async def provision(
    js: JetStreamContext, replicas: int = 1, events_max_age: float = DEFAULT_EVENTS_MAX_AGE,
    limits: StreamLimits = StreamLimits(),
) -> list[str]:
    """Create missing streams and buckets; return the drift of existing ones (empty when
    everything matches). Safe to run any number of times, from any number of processes."""
    await wait_for_jetstream(js)
    drift: list[str] = []
    for config in stream_configs(replicas, events_max_age, limits):
        drift += await _placed(config.name, lambda config=config: _ensure_stream(js, config))
    for spec in BUCKETS:
        drift += await _placed(spec.name, lambda spec=spec: _ensure_bucket(js, spec, replicas))
    return drift


PLACEMENT_PATIENCE = 120.0
"""Seconds provisioning waits for a cluster that cannot place a stream's replicas yet."""


async def _placed(name: str, ensure) -> list[str]:
    """`ensure()`, tried again while the cluster cannot place the stream yet (a node still
    joining: "no suitable peers for placement", or the stream missing right after its
    create was refused), for up to PLACEMENT_PATIENCE seconds."""
    deadline = asyncio.get_running_loop().time() + PLACEMENT_PATIENCE
    pause = 0.5
    while True:
        try:
            return await ensure()
        except (APIError, asyncio.TimeoutError) as err:
            if not _not_placeable_yet(err) or asyncio.get_running_loop().time() + pause > deadline:
                raise
            _log.warning("%s cannot be placed yet (%s); trying again in %.1f s", name, err, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)


def _not_placeable_yet(err: Exception) -> bool:
    if isinstance(err, (NotFoundError, ServiceUnavailableError, asyncio.TimeoutError)):
        return True
    text = str(err).lower()
    return getattr(err, "err_code", None) == 10005 or "no suitable peers" in text or "insufficient resources" in text
