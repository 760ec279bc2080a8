"""The org's live state as the dashboard sees it, kept current from NATS alone.

Definitions and runners come from KV watches (`bd_batches`, `bd_tasks`, `bd_runners`):
a watch delivers every current value, then each change. Executions are too many to
watch whole (7 days of them), so the newest page comes from `exec.list` and every
change after that from the state events on `bd.{org}.evt.exec.*.state`, which carry
the whole Execution; the subscription starts before the request, and a record only
replaces one of a lower version, so nothing between the two is lost. Progress between
states comes from `bd.{org}.evt.exec.*.progress` and moves the bar of a known run.

After a reconnect everything is loaded again (`resync`): the server may have lost the
watches' consumers, and a fresh load also drops what was deleted meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from broker import codec, streams, subjects
from broker.client import ApiClient
from broker.errors import ApiError
from broker.tasks import cancel_and_wait
from broker.types import Batch, Execution, Progress, Runner, Task

log = logging.getLogger("batchdeck.tui")

EXECUTIONS_LOADED = 1000
"""Executions read at start (the newest; `exec.list` pages hold at most 1000)."""
EXECUTIONS_KEPT = 5000
"""Finished executions kept in memory; the oldest go first (running ones always stay)."""

Kind = str
"""Which collection changed: "batches", "tasks", "runners" or "executions"."""

_VERSIONED_BY_REVISION = (Batch, Task)
"""Records whose `version` is their KV revision, as the broker reads them (a runner's
`version` is its software's)."""

_WATCHED: dict[Kind, tuple[str, type[msgspec.Struct]]] = {
    "batches": (streams.BATCHES_BUCKET, Batch),
    "tasks": (streams.TASKS_BUCKET, Task),
    "runners": (streams.RUNNERS_BUCKET, Runner),
}


class LiveState:
    """Batches, tasks, runners and recent executions of one org, by id.

    `on_change(kind)` is called (on the event loop) after each change; callers coalesce.
    """

    def __init__(self, api: ApiClient, on_change: Callable[[Kind], None]) -> None:
        self.api = api
        self.on_change = on_change
        self.batches: dict[str, Batch] = {}
        self.tasks: dict[str, Task] = {}
        self.runners: dict[str, Runner] = {}
        self.executions: dict[str, Execution] = {}
        self.loaded = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscriptions: list[Any] = []

    @property
    def nc(self) -> Client:
        return self.api.nc

    async def start(self) -> None:
        """Load everything and follow changes; returns once the first load is done."""
        self.loaded.clear()
        js = self.nc.jetstream()
        ready = [asyncio.Event() for _ in _WATCHED]
        for (kind, (bucket, type_)), event in zip(_WATCHED.items(), ready, strict=True):
            self._tasks.append(asyncio.create_task(self._watch(js, kind, bucket, type_, event), name=f"tui-{kind}"))
        self._subscriptions = [
            await self.nc.subscribe(subjects.exec_event(self.api.org, "*", "state"), cb=self._on_state),
            await self.nc.subscribe(subjects.exec_event(self.api.org, "*", "progress"), cb=self._on_progress),
        ]
        await self._load_executions()
        await asyncio.gather(*(event.wait() for event in ready))
        self.loaded.set()

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        for subscription in self._subscriptions:
            try:
                await subscription.unsubscribe()
            except NatsError:
                pass  # the connection is gone; so is the subscription
        self._subscriptions = []

    async def resync(self) -> None:
        """Start over after a reconnect: fresh watches, a fresh page of executions."""
        await self.stop()
        await self.start()

    # ---- definitions and runners: KV watches -----------------------------------------

    async def _watch(self, js: Any, kind: Kind, bucket: str, type_: type[msgspec.Struct],
                     ready: asyncio.Event) -> None:
        try:
            kv = await js.key_value(bucket)
            watcher = await kv.watch(f"{self.api.org}.*")
        except (JetStreamError, NatsError, asyncio.TimeoutError) as err:
            log.warning("cannot watch %s: %s", bucket, err)
            ready.set()  # show what there is; a reconnect tries again
            return
        fresh: dict[str, Any] = {}
        loading = True
        try:
            async for entry in watcher:
                if entry is None:  # the current values are all in: show them at once
                    loading = False
                    setattr(self, kind, fresh)
                    ready.set()
                    self.on_change(kind)
                    continue
                records = fresh if loading else getattr(self, kind)
                key = entry.key.split(".", 1)[1]
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    records.pop(key, None)
                else:
                    try:
                        record = codec.decode(entry.value, type_)
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        continue  # not ours to judge; the API refuses to write such records
                    if isinstance(record, _VERSIONED_BY_REVISION):
                        record.version = entry.revision
                    records[key] = record
                if not loading:
                    self.on_change(kind)
        finally:
            ready.set()
            try:
                await watcher.stop()
            except (NatsError, AttributeError):
                pass

    # ---- executions: a page, then state events --------------------------------------

    async def _load_executions(self) -> None:
        try:
            page = await self.api.call("exec", "list", {"per_page": EXECUTIONS_LOADED, "sort": "-queued_at"})
        except ApiError as err:
            log.warning("cannot list executions: %s", err.message)
            return
        for item in page["items"]:
            self._keep(msgspec.convert(item, Execution))
        self.on_change("executions")

    async def _on_state(self, msg: Any) -> None:
        try:
            execution = codec.decode(msg.data, Execution)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if self._keep(execution):
            self.on_change("executions")

    async def _on_progress(self, msg: Any) -> None:
        try:
            progress = codec.decode(msg.data, Progress)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        execution = self.executions.get(progress.execution_id)
        if execution is None or execution.is_final:
            return  # a late event must not move the bar of a finished run
        execution.progress_percent, execution.progress_text = progress.percent, progress.text
        self.on_change("executions")

    def _keep(self, execution: Execution) -> bool:
        known = self.executions.get(execution.id)
        if known is not None and known.version >= execution.version:
            return False
        self.executions[execution.id] = execution
        if len(self.executions) > EXECUTIONS_KEPT:
            self._forget_oldest()
        return True

    def _forget_oldest(self) -> None:
        finished = sorted((e for e in self.executions.values() if e.is_final), key=lambda e: e.queued_at or "")
        for execution in finished[: len(self.executions) - EXECUTIONS_KEPT]:
            del self.executions[execution.id]

    # ---- views -------------------------------------------------------------------------

    def runs_by_batch(self) -> dict[str, list[Execution]]:
        """Each batch's known executions, oldest first."""
        runs: dict[str, list[Execution]] = {}
        for execution in sorted(self.executions.values(), key=lambda e: e.queued_at or ""):
            if execution.batch_id is not None:
                runs.setdefault(execution.batch_id, []).append(execution)
        return runs
