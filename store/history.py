"""The history database: one DuckDB file, written by the ingest in columnar batches and
read by the history API.

Exactly once: every batch of events is written in one transaction together with the
BD_EVENTS sequence of its last event (`ingest_state.committed_seq`); the ingest acks
only after the commit, and on start it resumes right after the committed sequence, so
a crash between commit and ack replays events the database already holds, and they
are skipped by sequence.

DuckDB is not asyncio: callers run these methods in a worker thread, one at a time
for writes (the ingest), on cursors of their own for reads.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import msgspec

from store import schema

EVENTS_STREAM = "BD_EVENTS"


@dataclass
class Batch:
    """The rows of one ingest transaction, column by column."""

    logs: dict[str, list[Any]] = field(default_factory=lambda: {c: [] for c in LOG_COLUMNS})
    executions: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    triggers: list[dict[str, Any]] = field(default_factory=list)
    definitions: list[dict[str, Any]] = field(default_factory=list)
    notifications: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    last_seq: int = 0
    events: int = 0

    def add_execution(self, org: str, execution: dict[str, Any]) -> None:
        """Keep the newest state of each execution (state events may arrive out of
        version order: the broker's `queued` and a fast runner's `running`)."""
        key = (org, execution["id"])
        held = self.executions.get(key)
        if held is None or (execution.get("version") or 0) >= (held.get("version") or 0):
            self.executions[key] = execution

    def add_notification(self, org: str, notification: dict[str, Any]) -> None:
        """Keep one row per recipient of an execution: a later event for the same
        (org, execution_id, target), such as a resend after a notifier crash, replaces the
        earlier one (events are added in stream order)."""
        self.notifications[(org, notification["execution_id"], notification["target"])] = {**notification, "org": org}


LOG_COLUMNS = ("org", "execution_id", "idx", "ts", "level", "stream", "action_index", "msg")
EXECUTION_COLUMNS = (
    "org", "id", "batch_id", "task_id", "name", "trigger_id", "source", "status", "attempt", "pool", "runner_id",
    "queued_at", "started_at", "finished_at", "duration_ms", "progress_percent", "progress_text", "result",
    "error", "context", "version", "log_dropped_lines", "log_dropped_bytes",
)
ACTION_COLUMNS = ("org", "execution_id", "action_index", "task_id", "status", "exit_code", "started_at",
                  "finished_at", "duration_ms", "error")
TRIGGER_COLUMNS = ("org", "trigger_id", "batch_id", "source", "scheduled_at", "fired_at", "execution_id", "status",
                   "error", "context", "lag_ms")
NOTIFICATION_COLUMNS = ("org", "execution_id", "channel", "target", "rules", "execution_status", "status",
                        "attempts", "error", "notifier", "created_at", "updated_at", "sent_at")
NOTIFICATION_KEY = ("org", "execution_id", "target")
JSON_COLUMNS = frozenset({"result", "context"})
LIST_COLUMNS = frozenset({"rules"})
TIME_COLUMNS = frozenset({"ts", "queued_at", "started_at", "finished_at", "scheduled_at", "fired_at", "created_at",
                          "updated_at", "sent_at"})


class History:
    def __init__(self, path: Path, memory_limit: int | None = None, temp_limit: int | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The store needs no files but its own, no network and no extensions: history.sql
        # runs on this database, so nothing a query names can reach outside it. Its memory
        # is bounded (store.limits); what sorts and joins spill goes beside the file.
        config: dict[str, Any] = {
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "temp_directory": f"{path}.tmp",
        }
        if memory_limit is not None:
            config["memory_limit"] = f"{memory_limit // (1024 * 1024)}MB"
        if temp_limit is not None:
            config["max_temp_directory_size"] = f"{temp_limit // (1024 * 1024)}MB"
        self.conn = duckdb.connect(str(path), config=config)
        # Off once the spill directory is set (DuckDB refuses to set one after): for good.
        self.conn.execute("SET enable_external_access = false")
        self.conn.execute("SET TimeZone = 'UTC'")
        schema.create(self.conn)
        self._write_lock = threading.Lock()
        self._writer: duckdb.DuckDBPyConnection | None = None
        """The cursor every write runs on (under the lock), kept: a cursor costs a statement."""

    def close(self) -> None:
        with self._write_lock:  # a write still running in its thread finishes first
            if self._writer is not None:
                self._writer.close()
            self.conn.close()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        cursor = self.conn.cursor()
        cursor.execute("SET TimeZone = 'UTC'")
        return cursor

    def committed_seq(self) -> int:
        row = self.cursor().execute("SELECT committed_seq FROM bd_history.ingest_state WHERE stream = ?",
                                    [EVENTS_STREAM]).fetchone()
        return row[0] if row else 0

    # ---- writing -----------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor in a transaction of its own, one writer at a time: committed when the
        block ends, rolled back when it raises."""
        with self._write_lock:
            if self._writer is None:
                self._writer = self.cursor()
            cursor = self._writer
            cursor.begin()
            try:
                yield cursor
                cursor.commit()
            except BaseException:
                cursor.rollback()
                raise

    def write(self, batch: Batch) -> None:
        """One transaction: every row of the batch and the sequence it ends at."""
        with self._transaction() as cursor:
            if batch.logs["idx"]:
                _insert_logs(cursor, batch.logs)
            if batch.executions:
                self._write_executions(cursor, batch)
            if batch.triggers:
                insert_columns(cursor, "triggers", TRIGGER_COLUMNS, _columns(batch.triggers, TRIGGER_COLUMNS))
            for definition in batch.definitions:
                _write_definition(cursor, definition)
            if batch.notifications:
                _write_notifications(cursor, list(batch.notifications.values()))
            _record_seq(cursor, batch.last_seq)

    def _write_executions(self, cursor: duckdb.DuckDBPyConnection, batch: Batch) -> None:
        rows = [{"org": org, **execution} for (org, _), execution in batch.executions.items()]
        staged = _columns(rows, EXECUTION_COLUMNS)
        # Only states newer than what is stored win (a replayed old state changes nothing).
        winners = cursor.execute(
            "SELECT s.org, s.id FROM (SELECT unnest(?) AS org, unnest(?) AS id, unnest(?) AS version) s "
            "LEFT JOIN bd_history.executions e ON e.org = s.org AND e.id = s.id "
            "WHERE e.version IS NULL OR s.version > e.version",
            [staged["org"], staged["id"], staged["version"]],
        ).fetchall()
        chosen = set(winners)
        rows = [r for r in rows if (r["org"], r["id"]) in chosen]
        if not rows:
            return
        columns = _columns(rows, EXECUTION_COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in EXECUTION_COLUMNS if c not in ("org", "id"))
        insert_columns(cursor, "executions", EXECUTION_COLUMNS, columns, f"ON CONFLICT (org, id) DO UPDATE SET {updates}")
        cursor.execute(
            "DELETE FROM bd_history.execution_actions AS a USING (SELECT unnest(?) AS org, unnest(?) AS id) AS d "
            "WHERE a.org = d.org AND a.execution_id = d.id",
            [columns["org"], columns["id"]],
        )
        actions = [
            {"org": r["org"], "execution_id": r["id"], "action_index": a.get("index"), "task_id": a.get("task_id"),
             "status": a.get("status"), "exit_code": a.get("exit_code"), "started_at": a.get("started_at"),
             "finished_at": a.get("finished_at"), "duration_ms": _duration(a), "error": a.get("error")}
            for r in rows for a in r.get("actions") or []
        ]
        if actions:
            insert_columns(cursor, "execution_actions", ACTION_COLUMNS, _columns(actions, ACTION_COLUMNS))
        _count_runs_of_runners(cursor, [r for r in rows if r.get("runner_id") and r.get("finished_at")])

    def record_runner(self, org: str, runner_id: str, host: str, pools: list[str], started_at: str | None,
                      seen_at: str | None) -> None:
        """A runner as its heartbeat in `bd_runners` describes it (host, pools, when seen)."""
        with self._transaction() as cursor:
            cursor.execute(
                "INSERT INTO bd_history.runners (org, id, host, pools, first_seen, last_seen, executions) "
                "VALUES (?, ?, ?, ?, TRY_CAST(? AS TIMESTAMPTZ), TRY_CAST(? AS TIMESTAMPTZ), 0) "
                "ON CONFLICT (org, id) DO UPDATE SET host = excluded.host, pools = excluded.pools, "
                "first_seen = least(runners.first_seen, excluded.first_seen), "
                "last_seen = greatest(runners.last_seen, excluded.last_seen)",
                [org, runner_id, host, pools, started_at or seen_at, seen_at],
            )

    # ---- retention ---------------------------------------------------------------

    def remove_older_than(self, days: float) -> dict[str, int]:
        """Delete history older than `days` and checkpoint, so the file stops growing:
        executions (with their actions and log lines) by when they ended, log lines,
        triggers, and notifications by `created_at`. Returns the rows removed, by table."""
        cutoff = datetime.now(timezone.utc) - timedelta(days=days)
        removed = {}
        with self._transaction() as cursor:
            old = "(SELECT org, id FROM bd_history.executions WHERE coalesce(finished_at, queued_at) < ?) AS old"
            for table in ("bd_history.logs", "bd_history.execution_actions"):
                removed[table.split(".")[1]] = cursor.execute(
                    f"DELETE FROM {table} USING {old} WHERE {table}.org = old.org AND {table}.execution_id = old.id",
                    [cutoff]).fetchone()[0]
            removed["executions"] = cursor.execute(
                "DELETE FROM bd_history.executions WHERE coalesce(finished_at, queued_at) < ?", [cutoff]).fetchone()[0]
            removed["triggers"] = cursor.execute(
                "DELETE FROM bd_history.triggers WHERE coalesce(fired_at, scheduled_at) < ?", [cutoff]).fetchone()[0]
            removed["logs"] += cursor.execute("DELETE FROM bd_history.logs WHERE ts < ?", [cutoff]).fetchone()[0]
            removed["notifications"] = cursor.execute(
                "DELETE FROM bd_history.notifications WHERE created_at < ?", [cutoff]).fetchone()[0]
        with self._write_lock:
            self.conn.execute("CHECKPOINT")
        return removed


def _write_notifications(cursor: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]]) -> None:
    """Upsert one row per recipient: the batch holds each key once (`Batch.add_notification`),
    and an event of a later batch overwrites the stored row whole, since the ingest reads
    events in stream order."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in NOTIFICATION_COLUMNS if c not in NOTIFICATION_KEY)
    insert_columns(cursor, "notifications", NOTIFICATION_COLUMNS, _columns(rows, NOTIFICATION_COLUMNS),
                   f"ON CONFLICT ({', '.join(NOTIFICATION_KEY)}) DO UPDATE SET {updates}")


def _count_runs_of_runners(cursor: duckdb.DuckDBPyConnection, final: list[dict[str, Any]]) -> None:
    """Each runner's finished executions of the batch, added to its `runners` row in one
    statement (a row at a time cost about 10 ms per execution under load)."""
    if not final:
        return
    seen: dict[tuple[str, str], list[Any]] = {}  # (org, runner) -> [first, last, count]
    for row in final:
        first, last = row.get("started_at") or row["finished_at"], row["finished_at"]
        entry = seen.setdefault((row["org"], row["runner_id"]), [first, last, 0])
        entry[0], entry[1], entry[2] = min(entry[0], first), max(entry[1], last), entry[2] + 1
    keys = list(seen)
    cursor.execute(
        "INSERT INTO bd_history.runners (org, id, first_seen, last_seen, executions) "
        "SELECT org, id, TRY_CAST(first AS TIMESTAMPTZ), TRY_CAST(last AS TIMESTAMPTZ), n FROM "
        "(SELECT unnest(?) AS org, unnest(?) AS id, unnest(?) AS first, unnest(?) AS last, unnest(?) AS n) "
        "ON CONFLICT (org, id) DO UPDATE SET last_seen = greatest(runners.last_seen, excluded.last_seen), "
        "executions = runners.executions + excluded.executions",
        [[k[0] for k in keys], [k[1] for k in keys], [seen[k][0] for k in keys], [seen[k][1] for k in keys],
         [seen[k][2] for k in keys]],
    )


def _record_seq(cursor: duckdb.DuckDBPyConnection, seq: int) -> None:
    """`ingest_state.committed_seq` = seq: an UPDATE of the stream's row (half the cost of an
    upsert, per batch), inserted the first time."""
    (updated,) = cursor.execute(
        "UPDATE bd_history.ingest_state SET committed_seq = ?, schema_version = ?, updated_at = now() WHERE stream = ?",
        [seq, schema.SCHEMA_VERSION, EVENTS_STREAM]).fetchone()
    if not updated:
        cursor.execute("INSERT INTO bd_history.ingest_state VALUES (?, ?, ?, now())",
                       [EVENTS_STREAM, seq, schema.SCHEMA_VERSION])


def insert_columns(cursor: duckdb.DuckDBPyConnection, table: str, names: tuple[str, ...],
                   columns: dict[str, list[Any]], suffix: str = "") -> None:
    """A columnar insert: one statement whatever the number of rows (DuckDB's row-at-a-time
    executemany manages under a thousand rows a second)."""
    select = ", ".join(_cast(name) for name in names)
    cursor.execute(
        f"INSERT INTO bd_history.{table} ({', '.join(names)}) SELECT {select} FROM "
        f"(SELECT {', '.join(f'unnest(${i + 1}) AS {n}' for i, n in enumerate(names))}) {suffix}",
        [columns[n] for n in names],
    )


def _cast(name: str) -> str:
    if name in TIME_COLUMNS:
        return f"TRY_CAST({name} AS TIMESTAMPTZ)"  # a malformed time becomes null, never a failed batch
    if name in JSON_COLUMNS:
        return f"CAST({name} AS JSON)"
    if name in LIST_COLUMNS:
        return f"CAST({name} AS VARCHAR[])"  # a column of only empty lists has no element type of its own
    return name


LOG_TYPES = {"org": "VARCHAR", "execution_id": "VARCHAR", "idx": "BIGINT", "ts": "VARCHAR", "level": "VARCHAR",
             "stream": "VARCHAR", "action_index": "BIGINT", "msg": "VARCHAR"}
"""What the JSON array of each log column is read as (`ts` is cast afterwards, as text: TRY_CAST)."""
_INSERT_LOGS = "INSERT INTO bd_history.logs ({}) SELECT {} FROM (SELECT {} FROM (SELECT {}))".format(
    ", ".join(LOG_COLUMNS), ", ".join(_cast(n) for n in LOG_COLUMNS),
    ", ".join(f"unnest(from_json(j{i}, '[\"{LOG_TYPES[n]}\"]')) AS {n}" for i, n in enumerate(LOG_COLUMNS)),
    ", ".join(f"${i + 1} AS j{i}" for i in range(len(LOG_COLUMNS))))
"""The arrays come in through a subquery: `from_json($1, ...)` itself would be folded into
one constant LIST value of a value object per element, four times the cost."""
_encode = msgspec.json.Encoder().encode


def _insert_logs(cursor: duckdb.DuckDBPyConnection, logs: dict[str, list[Any]]) -> None:
    """The log lines of a batch, each column handed over as one JSON array (one string)
    and unpacked in SQL: DuckDB converts a Python list value by value, several times
    slower, and holds the GIL meanwhile."""
    cursor.execute(_INSERT_LOGS, [_encode(logs[n]).decode() for n in LOG_COLUMNS])


def _columns(rows: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {n: [] for n in names}
    for row in rows:
        for n in names:
            value = row.get(n)
            if n in JSON_COLUMNS and value is not None and not isinstance(value, str):
                value = _json(value)
            columns[n].append(value)
    return columns


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _duration(action: dict[str, Any]) -> int | None:
    start, end = action.get("started_at"), action.get("finished_at")
    if not start or not end:
        return None
    try:
        delta = datetime.fromisoformat(end.replace("Z", "+00:00")) - datetime.fromisoformat(start.replace("Z", "+00:00"))
    except (ValueError, TypeError):  # not RFC 3339 (no offset on one side)
        return None
    return int(delta.total_seconds() * 1000)


def _write_definition(cursor: duckdb.DuckDBPyConnection, event: dict[str, Any]) -> None:
    """One definition version: the previous version's `valid_to` is this one's time."""
    table = "bd_history.tasks" if event.get("kind") == "task" else "bd_history.batches"
    definition = event.get("definition") or {}
    org, object_id, ts = event.get("org"), event.get("id"), event.get("ts")
    cursor.execute(f"UPDATE {table} SET valid_to = TRY_CAST(? AS TIMESTAMPTZ) WHERE org = ? AND id = ? AND valid_to IS NULL",
                   [ts, org, object_id])
    if table == "bd_history.tasks":
        command = definition.get("command")
        cursor.execute(
            "INSERT INTO bd_history.tasks VALUES (?, ?, ?, ?, ?, ?, CAST(? AS JSON), ?, CAST(? AS JSON), ?, TRY_CAST(? AS TIMESTAMPTZ), "
            "NULL)",
            [org, object_id, definition.get("version"), definition.get("name"), definition.get("kind"),
             definition.get("module"), None if command is None else _json(command), definition.get("pool"),
             _json(definition), event.get("change"), ts],
        )
    else:
        cursor.execute(
            "INSERT INTO bd_history.batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, CAST(? AS JSON), ?, TRY_CAST(? AS TIMESTAMPTZ), NULL)",
            [org, object_id, definition.get("version"), definition.get("name"), definition.get("cron_expression"),
             definition.get("timezone"), definition.get("is_enabled"), definition.get("concurrency"),
             _json(definition), event.get("change"), ts],
        )
