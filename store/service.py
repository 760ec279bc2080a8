"""The store service: ingests BD_EVENTS into DuckDB and answers the history API as a
micro service of its own (`batchdeck-store`): `exec.logs`, `batch.results`,
`exec.history`, `history.sql`. One store per history file: DuckDB allows one writing process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import duckdb
import msgspec
from msgspec import Meta, Struct
from nats.aio.client import Client

from broker import codec, streams
from broker.endpoints import Endpoints, Handler
from broker.errors import BadRequest, NotFound
from broker.metrics import Metrics
from broker.tasks import cancel_and_wait
from broker.timestamps import request_time
from broker.types import Id, ListRequest, Page, Runner
from store import listing, sql
from store.history import EXECUTION_COLUMNS, JSON_COLUMNS, History
from store.ingest import Ingest
from store.limits import Gate, Pools, StoreLimits

log = logging.getLogger("batchdeck.store")

SERVICE_NAME = "batchdeck-store"
RETENTION_INTERVAL = 3600.0
MAX_LOG_LINES = 10_000
REPLY_MARGIN = 64 * 1024
LAG_CHECK_SECONDS = 10.0
LINE_OVERHEAD = 160
"""Bytes of JSON around each line's text in an exec.logs reply (an upper bound)."""

class LogsRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    id: Annotated[str, Meta(min_length=1, max_length=64)]
    offset: Annotated[int, Meta(ge=0)] = 0
    limit: Annotated[int, Meta(ge=1, le=MAX_LOG_LINES)] = 1000
    since: str | None = None
    order: Literal["asc", "desc"] = "asc"


class SqlRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    sql: Annotated[str, Meta(min_length=1, max_length=sql.MAX_SQL_LENGTH)]
    params: list[Any] = []


class HistoryRequest(ListRequest, kw_only=True, forbid_unknown_fields=True):
    """`exec.history`: a ListRequest over the stored executions, with a time window on
    `queued_at` (`since` inclusive, `until` exclusive)."""
    since: str | None = None
    until: str | None = None


class ResultsRequest(HistoryRequest, kw_only=True, forbid_unknown_fields=True):
    id: Id


class StoreService:
    def __init__(self, nc: Client, db_path: Path, retain_days: float | None = None,
                 limits: StoreLimits = StoreLimits()) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.db_path = db_path
        self.limits = limits
        self.history = History(db_path, limits.memory_limit, limits.temp_limit)
        self.retain_days = retain_days
        self.pools = Pools(limits)
        self.queries = Gate("queries", limits.sql_per_org, limits.sql_threads + limits.sql_queue)
        self.reads = Gate("reads", None, limits.read_threads + limits.read_queue)
        self.ingest = Ingest(nc, self.history, writer=self.pools.writer)
        self.api = Endpoints(nc)
        self.metrics = self._metrics()
        self._tasks: list[asyncio.Task[Any]] = []
        self._running: set[Any] = set()
        """Cursors of queries running now (interrupted at a stop)."""

    def _metrics(self) -> Metrics:
        ingest, metrics = self.ingest, Metrics("store")
        metrics.counter("events_ingested", "events written to the history (log lines, states, triggers, "
                        "definition changes, notifications)", lambda: ingest.events)
        metrics.counter("events_untraced", "events of `trace: false` runs read and not stored", lambda: ingest.skipped)
        metrics.gauge("ingest_committed_seq", "the last BD_EVENTS sequence the history holds", lambda: ingest.committed)
        metrics.gauge("ingest_lag_events", "BD_EVENTS events the history does not hold yet (stream last sequence "
                      "minus the committed one, as of the last batch read)", lambda: ingest.lag_events)
        metrics.gauge("ingest_lag_seconds", "seconds since the store noticed it was behind BD_EVENTS; 0 while "
                      "caught up", ingest.lag_seconds)
        metrics.counter("requests_refused", "history API requests dropped unanswered: their reply subject was not "
                        "an inbox of their org", self.api.refusals.total)
        metrics.counter("events_refused", "events not stored: their body named another org or execution than "
                        "their subject", ingest.refusals.total)
        metrics.counter("events_lost", "events that left BD_EVENTS (its size or age limit, a purge) before the store "
                        "read them: the history lacks them", lambda: ingest.lost)
        metrics.gauge("queries_in_flight", "history.sql queries running or waiting", self.queries.in_flight)
        metrics.counter("requests_busy", "history requests answered 429 or 503: an org's or the store's share of "
                        "queries or reads was used up", lambda: self.queries.refused + self.reads.refused)
        metrics.connection(self.nc)
        return metrics

    async def start(self) -> None:
        await streams.wait_for_provisioning(self.js, log)
        await self.api.start(SERVICE_NAME, "batchdeck history: logs, results, SQL", self.endpoints(),
                             stats_handler=self.metrics.stats_data)
        self.metrics.attach(self.api.service)
        self._tasks = [asyncio.create_task(self.ingest.run(), name="store-ingest"),
                       asyncio.create_task(self._follow_runners(), name="store-runners"),
                       asyncio.create_task(self._watch_lag(), name="store-lag")]
        if self.retain_days:
            self._tasks.append(asyncio.create_task(self._retain_forever(), name="store-retention"))
        log.info("store: history in %s, resuming after event %d", self.db_path, self.history.committed_seq())

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        await self.api.stop()
        for cursor in list(self._running):  # queries still running end now, not at their time limit
            cursor.interrupt()
        await asyncio.to_thread(self.pools.close)
        self.history.close()

    def endpoints(self) -> dict[tuple[str, str], Handler]:
        return {
            ("exec", "logs"): self.logs,
            ("batch", "results"): self.results,
            ("exec", "history"): self.executions,
            ("history", "sql"): self.sql,
        }

    # ---- endpoints ---------------------------------------------------------------

    async def logs(self, org: str, body: bytes) -> dict[str, Any]:
        """Stored log lines of an execution: `offset` skips lines (items have idx >
        offset), `since` keeps lines at or after a time, `order` asc or desc."""
        request = codec.decode_request(body, LogsRequest)
        since = request_time(request.since, "since") if request.since is not None else None
        query = ("SELECT idx, ts, level, stream, action_index, msg FROM bd_history.logs "
                 "WHERE org = ? AND execution_id = ? AND idx > ?")
        params: list[Any] = [org, request.id, request.offset]
        if since is not None:
            query += " AND ts >= ?"
            params.append(since)
        query += f" ORDER BY idx {request.order.upper()} LIMIT ?"
        params.append(request.limit)
        rows = await self._in_reads(org, self._read, query, params)
        if not rows and not await self._in_reads(org, self._known_execution, org, request.id):
            raise NotFound(f"execution {request.id!r} is not in the history", {"kind": "execution", "id": request.id})
        items, size = [], 0
        budget = self.nc.max_payload - REPLY_MARGIN
        for r in rows:
            size += len(r[5] or "") + LINE_OVERHEAD
            if items and size > budget:
                break  # a reply must fit in one message: fewer lines, the caller asks again from the last idx
            items.append({"idx": r[0], "ts": sql.plain(r[1]), "level": r[2], "stream": r[3], "action_index": r[4],
                          "msg": r[5], "execution_id": request.id})
        return {"items": items}

    async def results(self, org: str, body: bytes) -> Page:
        """A batch's executions from history (Page, newest first by default)."""
        request = codec.decode_request(body, ResultsRequest)
        query = listing.Query(org)
        query.add("batch_id = ?", request.id)
        result = await self._page(org, query, request)
        if not result.total and not await self._in_reads(org, self._known_batch, org, request.id):
            raise NotFound(f"batch {request.id!r} has no history", {"kind": "batch", "id": request.id})
        return result

    async def executions(self, org: str, body: bytes) -> Page:
        """Every stored execution of the org (Page, newest first by default)."""
        return await self._page(org, listing.Query(org), codec.decode_request(body, HistoryRequest))

    async def _page(self, org: str, query: listing.Query, request: HistoryRequest) -> Page:
        listing.add_filters(query, request)
        listing.add_window(query, request.since, request.until)
        order = listing.order_by(request, default="-queued_at")
        columns = ", ".join(EXECUTION_COLUMNS)
        offset = (request.page - 1) * request.per_page
        total, rows = await self._in_reads(
            org,
            self._read_page,
            f"SELECT count(*) FROM bd_history.executions WHERE {query.where}",
            f"SELECT {columns} FROM bd_history.executions WHERE {query.where} ORDER BY {order} LIMIT ? OFFSET ?",
            query.params, [request.per_page, offset])
        items = [{c: sql.plain(v) for c, v in zip(EXECUTION_COLUMNS, row, strict=True)} for row in rows]
        for item in items:
            for name in JSON_COLUMNS:
                if isinstance(item[name], str):
                    item[name] = codec.decode(item[name].encode(), Any)
        return listing.page(total, request, items)

    async def sql(self, org: str, body: bytes) -> dict[str, Any]:
        request = codec.decode_request(body, SqlRequest)
        deadline = time.monotonic() + self.limits.sql_timeout  # waiting for a thread counts
        with self.queries.enter(org):
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    self.pools.sql, self._query, org, request.sql, request.params, deadline)
            except sql.Refused as err:
                raise BadRequest(str(err)) from None

    async def _in_reads(self, org: str, work: Any, *args: Any) -> Any:
        with self.reads.enter(org):
            return await asyncio.get_running_loop().run_in_executor(self.pools.reads, work, *args)

    async def _watch_lag(self) -> None:
        """Say in the log, once a minute at most, when the history is far behind BD_EVENTS."""
        said_at = 0.0
        while True:
            await asyncio.sleep(LAG_CHECK_SECONDS)
            behind = self.ingest.lag_seconds()
            if behind > self.limits.lag_warning and time.monotonic() - said_at > 60:
                said_at = time.monotonic()
                log.warning("the history is %.0f s behind %s (%d events not written yet)", behind, streams.EVENTS,
                            self.ingest.lag_events)

    # ---- database work (in worker threads) ---------------------------------------

    def _read(self, query: str, params: list[Any]) -> list[tuple[Any, ...]]:
        cursor = self.history.cursor()
        try:
            return cursor.execute(query, params).fetchall()
        finally:
            cursor.close()

    def _read_page(self, count: str, select: str, params: list[Any], paging: list[Any]
                   ) -> tuple[int, list[tuple[Any, ...]]]:
        cursor = self.history.cursor()
        try:
            (total,) = cursor.execute(count, params).fetchone() or (0,)
            return total, cursor.execute(select, params + paging).fetchall()
        finally:
            cursor.close()

    def _known_execution(self, org: str, execution_id: str) -> bool:
        """Whether the history holds the execution or any line of its log (lines may come first)."""
        rows = self._read("SELECT 1 FROM bd_history.executions WHERE org = ? AND id = ? UNION ALL "
                          "SELECT 1 FROM bd_history.logs WHERE org = ? AND execution_id = ? LIMIT 1",
                          [org, execution_id, org, execution_id])
        return bool(rows)

    def _known_batch(self, org: str, batch_id: str) -> bool:
        rows = self._read("SELECT 1 FROM bd_history.batches WHERE org = ? AND id = ? LIMIT 1", [org, batch_id])
        return bool(rows)

    def _query(self, org: str, text: str, params: list[Any], deadline: float) -> dict[str, Any]:
        cursor = self.history.cursor()
        self._running.add(cursor)
        try:
            return sql.run(cursor, org, text, params, timeout=deadline - time.monotonic(),
                           max_bytes=self.nc.max_payload - REPLY_MARGIN, query_memory=self.limits.query_memory,
                           time_limit=self.limits.sql_timeout)
        finally:
            self._running.discard(cursor)
            cursor.close()

    async def _follow_runners(self) -> None:
        """Keep `runners` (host, pools, first and last seen) from the heartbeats in
        KV `bd_runners`; a runner's row is rewritten at most once a minute."""
        written: dict[tuple[str, str], tuple[str, tuple[str, ...], float]] = {}
        while True:
            try:
                kv = await self.js.key_value(streams.RUNNERS_BUCKET)
                watcher = await kv.watchall(ignore_deletes=True)
                async for entry in watcher:
                    if entry is None or not entry.value:
                        continue
                    try:
                        runner = codec.decode(entry.value, Runner)
                    except (msgspec.DecodeError, msgspec.ValidationError) as err:
                        # A runner writes its own key: a bad heartbeat is skipped, not a
                        # reason to watch everything again (that looped on one bad key).
                        log.warning("runner registry: %s is not a heartbeat (%s); skipped", entry.key, err)
                        continue
                    org = entry.key.split(".", 1)[0]
                    key, now = (org, runner.id), asyncio.get_running_loop().time()
                    known = written.get(key)
                    if known and known[:2] == (runner.host, tuple(runner.pools)) and now - known[2] < 60:
                        continue
                    written[key] = (runner.host, tuple(runner.pools), now)
                    await asyncio.get_running_loop().run_in_executor(
                        self.pools.writer, self.history.record_runner, org, runner.id, runner.host, runner.pools,
                        runner.started_at, runner.heartbeat_at)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # server restart, a bad record: watch again
                log.warning("runner registry: %r; watching again", err)
                await asyncio.sleep(1.0)

    async def _retain_forever(self) -> None:
        while True:
            try:
                removed = await asyncio.get_running_loop().run_in_executor(
                    self.pools.writer, self.history.remove_older_than, self.retain_days)
                if any(removed.values()):
                    log.info("retention (%g days): removed %s", self.retain_days, removed)
            except duckdb.Error as err:
                log.warning("retention failed: %s", err)
            await asyncio.sleep(RETENTION_INTERVAL)

