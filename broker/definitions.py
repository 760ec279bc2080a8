"""Tasks and batches: create, get, list, update, delete, enable/disable.

Definitions live in KV (`bd_tasks`, `bd_batches`); deleting one sets `deleted_at` and
keeps it, so old executions still resolve the definition they ran. Every change is
also published as `bd.{org}.evt.def.{kind}.{id}`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

import msgspec
from nats.js import JetStreamContext

from broker import codec, ids, schedule, subjects
from broker.buckets import Buckets
from broker.errors import BadRequest, Conflict, NotFound
from broker.module_params import validate_params
from broker.query import field_names, page_of
from broker.records import VersionConflict
from broker.timestamps import now_iso, to_iso
from broker.types import (
    BATCH_READ_ONLY,
    ID_PATTERN,
    TASK_READ_ONLY,
    Batch,
    BatchDeleteRequest,
    BatchNextRequest,
    BatchSpec,
    BatchStatusRequest,
    DefinitionEvent,
    GetRequest,
    ListRequest,
    LogLimits,
    ModuleInfo,
    Page,
    Task,
    TaskDeleteRequest,
    TaskRuntime,
    TaskStarts,
    TaskSpec,
)

ID_RE = re.compile(ID_PATTERN)
TASK_FIELDS = field_names(Task)
BATCH_FIELDS = field_names(Batch)


def _spec_fields(obj: msgspec.Struct, spec_type: type[msgspec.Struct]) -> dict[str, Any]:
    """The spec's fields of `obj` as wire data (to merge an update into)."""
    data = codec.to_builtins(obj)
    return {name: data[name] for name in spec_type.__struct_fields__ if name in data}


def _spec_values(spec: msgspec.Struct) -> dict[str, Any]:
    """The fields of a validated spec as they are (nested Structs stay Structs)."""
    return {name: getattr(spec, name) for name in spec.__struct_fields__}


def _update_body(body: bytes, read_only: frozenset[str]) -> tuple[str, int | None, dict[str, Any]]:
    """Split an update request into (id, version, changed fields)."""
    raw = codec.decode_request(body, dict[str, Any])
    record_id = raw.pop("id", None)
    if not isinstance(record_id, str) or not ID_RE.match(record_id):
        raise BadRequest("invalid request: `id` is required: 1-64 letters, digits, '_' or '-'")
    version = raw.pop("version", None)
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise BadRequest("invalid request: `version` must be an integer")
    changes = {k: v for k, v in raw.items() if k not in read_only}
    return record_id, version, changes


def next_run_at(batch: Batch, after: datetime | None = None) -> str | None:
    """When an enabled, live batch fires next (RFC 3339), else None."""
    if not batch.is_enabled or batch.deleted_at is not None:
        return None
    try:
        times = schedule.next_times(batch.effective_cron(), batch.timezone, after or datetime.now(timezone.utc))
    except schedule.ScheduleError:  # stored before such schedules were refused
        return None
    return to_iso(times[0]) if times else None


async def _no_modules(org: str) -> list[ModuleInfo]:
    return []


class Definitions:
    def __init__(self, js: JetStreamContext, buckets: Buckets, log_limits: LogLimits = LogLimits()) -> None:
        self.js = js
        self.buckets = buckets
        self.log_limits = log_limits
        # The modules live runners advertise (set by the service; none by default).
        self.module_catalog: Callable[[str], Awaitable[list[ModuleInfo]]] = _no_modules

    async def _check_module(self, org: str, spec: TaskSpec) -> None:
        """A module task's params must fit the module's schema, when a live runner
        advertises the module (an unknown module is accepted: its runner may come later).
        Its log quota may not pass the control plane's maximum."""
        if (problem := self.log_limits.problem(spec)) is not None:
            raise BadRequest(problem, {"log_max_lines": self.log_limits.max_lines,
                                       "log_max_bytes": self.log_limits.max_bytes})
        await self.check_module_params(org, spec)

    async def check_module_params(self, org: str, spec: TaskSpec | Task) -> None:
        """A module task's params (as defined, or as a start merged them) must fit the
        schema a live runner advertises for its module; 400 naming each param that does
        not. Nothing to check against when no live runner advertises the module."""
        if spec.kind != "module":
            return
        for info in await self.module_catalog(org):
            if info.name == spec.module:
                try:
                    validate_params(info.params, spec.params)
                except ValueError as err:
                    raise BadRequest(f"params do not fit module {spec.module!r}: {err}",
                                     {"module": spec.module}) from None
                return

    # ---- shared ------------------------------------------------------------------

    async def _publish_change(self, org: str, kind: str, change: str, obj: msgspec.Struct) -> None:
        event = DefinitionEvent(
            kind=kind, change=change, id=obj.id, org=org, definition=codec.to_builtins(obj), ts=now_iso()  # type: ignore[attr-defined]
        )
        await self.js.publish(subjects.definition_event(org, kind, obj.id), codec.encode(event))  # type: ignore[attr-defined]

    # ---- tasks -------------------------------------------------------------------

    async def _with_runtime(self, org: str, task: Task) -> Task:
        runtime, starts = await asyncio.gather(
            self.buckets.task_state.get(org, task.id), self.buckets.task_starts.scan_items(org, f"{task.id}.>")
        )
        return _merge_runtime(task, runtime, [s for _, s in starts])

    async def load_task(self, org: str, task_id: str, *, live: bool = True) -> Task:
        """The task, or NotFound (also when deleted and `live`)."""
        task = await self.buckets.tasks.get(org, task_id)
        if task is None or (live and task.deleted_at is not None):
            state = "was deleted" if task is not None else "does not exist"
            raise NotFound(f"task {task_id!r} {state}", {"kind": "task", "id": task_id})
        return task

    async def create_task(self, org: str, body: bytes) -> Task:
        spec = codec.decode_request(body, TaskSpec)
        await self._check_module(org, spec)
        now = now_iso()
        task = Task(**{**_spec_values(spec), "id": spec.id or ids.new_id()}, created_at=now, updated_at=now)
        try:
            task = await self.buckets.tasks.create(org, task.id, task)
        except VersionConflict:
            raise Conflict(f"task {task.id!r} already exists", {"kind": "task", "id": task.id}) from None
        await self._publish_change(org, "task", "created", task)
        return task

    async def get_task(self, org: str, body: bytes) -> Task:
        request = codec.decode_request(body, GetRequest)
        return await self._with_runtime(org, await self.load_task(org, request.id, live=False))

    async def list_tasks(self, org: str, body: bytes) -> Page:
        request = codec.decode_request(body, ListRequest)
        tasks, runtime_items, start_items = await asyncio.gather(
            self.buckets.tasks.scan(org), self.buckets.task_state.scan_items(org),
            self.buckets.task_starts.scan_items(org, ">"),
        )
        runtimes = dict(runtime_items)
        starts: dict[str, list[TaskStarts]] = {}
        for key, count in start_items:
            starts.setdefault(key.split(".", 1)[0], []).append(count)
        if not request.include_deleted:
            tasks = [t for t in tasks if t.deleted_at is None]
        merged = [_merge_runtime(t, runtimes.get(t.id), starts.get(t.id, [])) for t in tasks]
        return page_of(merged, request, TASK_FIELDS, default_sort="name")

    async def update_task(self, org: str, body: bytes) -> Task:
        task_id, version, changes = _update_body(body, TASK_READ_ONLY)
        current = await self.load_task(org, task_id)
        _check_version(current.version, version, "task", task_id)
        merged = {**_spec_fields(current, TaskSpec), **changes, "id": task_id}
        spec = codec.convert(merged, TaskSpec)
        await self._check_module(org, spec)
        task = Task(**{**_spec_values(spec), "id": task_id}, created_at=current.created_at, updated_at=now_iso())
        try:
            task = await self.buckets.tasks.update(org, task_id, task, current.version)
        except VersionConflict:
            raise _stale("task", task_id) from None
        await self._publish_change(org, "task", "updated", task)
        return await self._with_runtime(org, task)

    async def delete_task(self, org: str, body: bytes) -> dict[str, Any]:
        request = codec.decode_request(body, TaskDeleteRequest)
        task = await self.load_task(org, request.id)
        linked = [b for b in await self.live_batches(org) if any(a.task_id == task.id for a in b.actions)]
        if linked and not request.force:
            names = ", ".join(repr(b.id) for b in linked)
            raise Conflict(
                f"task {task.id!r} is used by batch(es) {names}; remove it from them or delete with force",
                {"linked": [b.id for b in linked]},
            )
        deleted = []
        for batch in linked:
            await self._soft_delete_batch(org, batch)
            deleted.append({"kind": "batch", "id": batch.id})
        task.deleted_at = task.updated_at = now_iso()
        try:
            task = await self.buckets.tasks.update(org, task.id, task, task.version)
        except VersionConflict:
            raise _stale("task", task.id) from None
        await self._publish_change(org, "task", "deleted", task)
        deleted.append({"kind": "task", "id": task.id})
        return {"deleted": deleted}

    # ---- batches -----------------------------------------------------------------

    async def load_batch(self, org: str, batch_id: str, *, live: bool = True) -> Batch:
        batch = await self.buckets.batches.get(org, batch_id)
        if batch is None or (live and batch.deleted_at is not None):
            state = "was deleted" if batch is not None else "does not exist"
            raise NotFound(f"batch {batch_id!r} {state}", {"kind": "batch", "id": batch_id})
        return batch

    async def live_batches(self, org: str) -> list[Batch]:
        return [b for b in await self.buckets.batches.scan(org) if b.deleted_at is None]

    async def _check_actions(self, org: str, spec: BatchSpec) -> None:
        """Every action names a live task; a module task's params, with the action's
        merged in, fit the module (as a run will take them)."""
        missing = []
        tasks: dict[str, Task] = {}
        for task_id in dict.fromkeys(a.task_id for a in spec.actions):
            task = await self.buckets.tasks.get(org, task_id)
            if task is None or task.deleted_at is not None:
                missing.append(task_id)
            else:
                tasks[task_id] = task
        if missing:
            raise BadRequest(
                f"actions refer to task(s) that do not exist: {', '.join(map(repr, missing))}", {"missing": missing}
            )
        for index, action in enumerate(spec.actions):
            task = tasks[action.task_id]
            if task.kind == "module" and action.params:
                try:
                    await self.check_module_params(org, msgspec.structs.replace(
                        task, params={**task.params, **action.params}))
                except BadRequest as err:
                    raise BadRequest(f"action {index} (task {task.id!r}): {err.message}", err.details) from None

    async def create_batch(self, org: str, body: bytes) -> Batch:
        spec = codec.decode_request(body, BatchSpec)
        await self._check_actions(org, spec)
        now = now_iso()
        batch = Batch(**{**_spec_values(spec), "id": spec.id or ids.new_id()}, created_at=now, updated_at=now)
        try:
            batch = await self.buckets.batches.create(org, batch.id, batch)
        except VersionConflict:
            raise Conflict(f"batch {batch.id!r} already exists", {"kind": "batch", "id": batch.id}) from None
        await self._publish_change(org, "batch", "created", batch)
        return _with_next_run(batch)

    async def get_batch(self, org: str, body: bytes) -> Batch:
        request = codec.decode_request(body, GetRequest)
        return _with_next_run(await self.load_batch(org, request.id, live=False))

    async def list_batches(self, org: str, body: bytes) -> Page:
        request = codec.decode_request(body, ListRequest)
        batches = await self.buckets.batches.scan(org)
        if not request.include_deleted:
            batches = [b for b in batches if b.deleted_at is None]
        now = datetime.now(timezone.utc)
        return page_of([_with_next_run(b, now) for b in batches], request, BATCH_FIELDS, default_sort="name")

    async def next_fires(self, org: str, body: bytes) -> dict[str, Any]:
        """The next `count` fire times of a batch (also for a disabled one: what it would do)."""
        request = codec.decode_request(body, BatchNextRequest)
        batch = await self.load_batch(org, request.id)
        try:
            times = schedule.next_times(batch.effective_cron(), batch.timezone, datetime.now(timezone.utc),
                                        request.count)
        except schedule.ScheduleError as err:  # stored before such schedules were refused
            raise BadRequest(f"batch {batch.id!r}: {err}") from None
        return {"items": [to_iso(t) for t in times], "cron": batch.effective_cron(), "timezone": batch.timezone,
                "is_enabled": batch.is_enabled}

    async def update_batch(self, org: str, body: bytes) -> Batch:
        batch_id, version, changes = _update_body(body, BATCH_READ_ONLY)
        return await self._change_batch(org, batch_id, version, changes)

    async def set_batch_status(self, org: str, body: bytes) -> Batch:
        request = codec.decode_request(body, BatchStatusRequest)
        return await self._change_batch(org, request.id, request.version, {"is_enabled": request.is_enabled})

    async def _change_batch(self, org: str, batch_id: str, version: int | None, changes: dict[str, Any]) -> Batch:
        current = await self.load_batch(org, batch_id)
        _check_version(current.version, version, "batch", batch_id)
        merged = {**_spec_fields(current, BatchSpec), **changes, "id": batch_id}
        if "schedule" in changes and "cron_expression" not in changes:
            merged["cron_expression"] = None  # switching to a structured schedule
        if "cron_expression" in changes and "schedule" not in changes:
            merged["schedule"] = None
        spec = codec.convert(merged, BatchSpec)
        if "actions" in changes:
            await self._check_actions(org, spec)
        batch = Batch(**{**_spec_values(spec), "id": batch_id}, created_at=current.created_at, updated_at=now_iso())
        try:
            batch = await self.buckets.batches.update(org, batch_id, batch, current.version)
        except VersionConflict:
            raise _stale("batch", batch_id) from None
        await self._publish_change(org, "batch", "updated", batch)
        return _with_next_run(batch)

    async def delete_batch(self, org: str, body: bytes) -> dict[str, Any]:
        request = codec.decode_request(body, BatchDeleteRequest)
        batch = await self.load_batch(org, request.id)
        if batch.is_enabled:
            raise Conflict(
                f"batch {batch.id!r} is enabled; disable it first (batch.status with is_enabled false)",
                {"kind": "batch", "id": batch.id, "is_enabled": True},
            )
        await self._soft_delete_batch(org, batch)
        return {"deleted": [{"kind": "batch", "id": batch.id}]}

    async def _soft_delete_batch(self, org: str, batch: Batch) -> None:
        batch.deleted_at = batch.updated_at = now_iso()
        batch.is_enabled = False
        try:
            batch = await self.buckets.batches.update(org, batch.id, batch, batch.version)
        except VersionConflict:
            raise _stale("batch", batch.id) from None
        await self._publish_change(org, "batch", "deleted", batch)


def _merge_runtime(task: Task, runtime: TaskRuntime | None, starts: list[TaskStarts]) -> Task:
    """The task with what its runs keep: state, and start counts summed over runners."""
    moments = [s.last_started_at for s in starts if s.last_started_at]
    return msgspec.structs.replace(
        task,
        state=runtime.state if runtime is not None else {},
        start_count=sum(s.start_count for s in starts),
        last_started_at=max(moments) if moments else None,  # RFC 3339 UTC strings sort by time
    )


def _with_next_run(batch: Batch, now: datetime | None = None) -> Batch:
    batch.next_run_at = next_run_at(batch, now)
    return batch


def _check_version(current: int, given: int | None, kind: str, record_id: str) -> None:
    if given is not None and given != current:
        raise Conflict(
            f"{kind} {record_id!r} changed since version {given} (now {current}); get it again and retry",
            {"kind": kind, "id": record_id, "version": current},
        )


def _stale(kind: str, record_id: str) -> Conflict:
    return Conflict(
        f"{kind} {record_id!r} was changed by someone else meanwhile; get it again and retry",
        {"kind": kind, "id": record_id},
    )
