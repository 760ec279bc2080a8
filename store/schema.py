"""The history schema in DuckDB: what users write SQL against (docs/sql.md).

Tables live in the schema `bd_history` (not `history`: a file `history.duckdb` is a
catalog of that name) and carry `org` first; times are TIMESTAMPTZ (UTC). The schema is
stable: columns are added, never renamed or removed. Users do not name
`bd_history.` themselves: a query session (`open_session`) exposes each table under its
plain name as a view confined to one org, plus the derived views, and `history.sql`
accepts only those names. `ingest_state` is the store's own bookkeeping. A table added
later (`notifications`) reaches an existing file through `CREATE TABLE IF NOT EXISTS` when
the store opens it.
"""

from __future__ import annotations

import duckdb

SCHEMA_VERSION = 1

TABLES = {
    "executions": """
        CREATE TABLE IF NOT EXISTS bd_history.executions (
            org VARCHAR NOT NULL,
            id VARCHAR NOT NULL,
            batch_id VARCHAR,
            task_id VARCHAR,
            name VARCHAR,
            trigger_id VARCHAR,
            source VARCHAR,
            status VARCHAR,
            attempt INTEGER,
            pool VARCHAR,
            runner_id VARCHAR,
            queued_at TIMESTAMPTZ,
            started_at TIMESTAMPTZ,
            finished_at TIMESTAMPTZ,
            duration_ms BIGINT,
            progress_percent DOUBLE,
            progress_text VARCHAR,
            result JSON,
            error VARCHAR,
            context JSON,
            version BIGINT,
            log_dropped_lines BIGINT,
            log_dropped_bytes BIGINT,
            PRIMARY KEY (org, id)
        )""",
    "execution_actions": """
        CREATE TABLE IF NOT EXISTS bd_history.execution_actions (
            org VARCHAR NOT NULL,
            execution_id VARCHAR NOT NULL,
            action_index INTEGER NOT NULL,
            task_id VARCHAR,
            status VARCHAR,
            exit_code INTEGER,
            started_at TIMESTAMPTZ,
            finished_at TIMESTAMPTZ,
            duration_ms BIGINT,
            error VARCHAR
        )""",
    "logs": """
        CREATE TABLE IF NOT EXISTS bd_history.logs (
            org VARCHAR NOT NULL,
            execution_id VARCHAR NOT NULL,
            idx BIGINT NOT NULL,
            ts TIMESTAMPTZ,
            level VARCHAR,
            stream VARCHAR,
            action_index INTEGER,
            msg VARCHAR
        )""",
    "triggers": """
        CREATE TABLE IF NOT EXISTS bd_history.triggers (
            org VARCHAR NOT NULL,
            trigger_id VARCHAR,
            batch_id VARCHAR,
            source VARCHAR,
            scheduled_at TIMESTAMPTZ,
            fired_at TIMESTAMPTZ,
            execution_id VARCHAR,
            status VARCHAR,
            error VARCHAR,
            context JSON,
            lag_ms BIGINT
        )""",
    "tasks": """
        CREATE TABLE IF NOT EXISTS bd_history.tasks (
            org VARCHAR NOT NULL,
            id VARCHAR NOT NULL,
            version BIGINT,
            name VARCHAR,
            kind VARCHAR,
            module VARCHAR,
            command JSON,
            pool VARCHAR,
            definition JSON,
            change VARCHAR,
            valid_from TIMESTAMPTZ,
            valid_to TIMESTAMPTZ
        )""",
    "batches": """
        CREATE TABLE IF NOT EXISTS bd_history.batches (
            org VARCHAR NOT NULL,
            id VARCHAR NOT NULL,
            version BIGINT,
            name VARCHAR,
            cron_expression VARCHAR,
            timezone VARCHAR,
            is_enabled BOOLEAN,
            concurrency VARCHAR,
            definition JSON,
            change VARCHAR,
            valid_from TIMESTAMPTZ,
            valid_to TIMESTAMPTZ
        )""",
    "runners": """
        CREATE TABLE IF NOT EXISTS bd_history.runners (
            org VARCHAR NOT NULL,
            id VARCHAR NOT NULL,
            host VARCHAR,
            pools VARCHAR[],
            first_seen TIMESTAMPTZ,
            last_seen TIMESTAMPTZ,
            executions BIGINT,
            PRIMARY KEY (org, id)
        )""",
    "notifications": """
        CREATE TABLE IF NOT EXISTS bd_history.notifications (
            org VARCHAR NOT NULL,
            execution_id VARCHAR NOT NULL,
            channel VARCHAR,
            target VARCHAR NOT NULL,
            rules VARCHAR[],
            execution_status VARCHAR,
            status VARCHAR,
            attempts INTEGER,
            error VARCHAR,
            notifier VARCHAR,
            created_at TIMESTAMPTZ,
            updated_at TIMESTAMPTZ,
            sent_at TIMESTAMPTZ,
            PRIMARY KEY (org, execution_id, target)
        )""",
}

INTERNAL = {
    "ingest_state": """
        CREATE TABLE IF NOT EXISTS bd_history.ingest_state (
            stream VARCHAR PRIMARY KEY,
            committed_seq BIGINT NOT NULL,
            schema_version INTEGER NOT NULL,
            updated_at TIMESTAMPTZ
        )""",
}

# Derived views, over the plain names a session exposes.
VIEWS = {
    "task_stats": """
        WITH named AS (SELECT org, id, arg_max(name, valid_from) AS name FROM tasks GROUP BY org, id)
        SELECT a.org, a.task_id,
               -- the task's name as its last definition has it; else as its own runs had it
               coalesce(any_value(named.name),
                        arg_max(e.name, e.queued_at) FILTER (WHERE e.task_id = a.task_id)) AS task_name,
               count(*) AS runs,
               count(*) FILTER (WHERE a.status = 'succeeded') AS succeeded,
               count(*) FILTER (WHERE a.status IN ('failed', 'timed_out', 'lost')) AS failed,
               round(count(*) FILTER (WHERE a.status = 'succeeded') / count(*), 4) AS success_rate,
               quantile_cont(a.duration_ms, 0.5) AS p50_ms,
               quantile_cont(a.duration_ms, 0.95) AS p95_ms,
               max(a.duration_ms) AS max_ms,
               arg_max(a.status, a.finished_at) AS last_status,
               max(a.finished_at) AS last_finished_at
        FROM execution_actions a JOIN executions e ON e.org = a.org AND e.id = a.execution_id
        LEFT JOIN named ON named.org = a.org AND named.id = a.task_id
        WHERE a.status IN ('succeeded', 'failed', 'timed_out', 'lost', 'canceled')
        GROUP BY a.org, a.task_id""",
    "daily_runs": """
        SELECT org, CAST(date_trunc('day', queued_at) AS DATE) AS day,
               count(*) AS runs,
               count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
               count(*) FILTER (WHERE status IN ('failed', 'timed_out', 'lost')) AS failed,
               count(*) FILTER (WHERE status = 'canceled') AS canceled,
               count(*) FILTER (WHERE status = 'skipped') AS skipped,
               quantile_cont(duration_ms, 0.95) AS p95_ms
        FROM executions
        WHERE status IN ('succeeded', 'failed', 'timed_out', 'lost', 'canceled', 'skipped')
        GROUP BY org, day""",
}

QUERYABLE = frozenset(TABLES) | frozenset(VIEWS)


ADDED_COLUMNS = {
    "executions": (("log_dropped_lines", "BIGINT"), ("log_dropped_bytes", "BIGINT")),
}
"""Columns added after a table was first made: a file made before gets them when the store opens it."""


def create(conn: duckdb.DuckDBPyConnection) -> None:
    """Create what is missing (idempotent)."""
    conn.execute("CREATE SCHEMA IF NOT EXISTS bd_history")
    for ddl in (*TABLES.values(), *INTERNAL.values()):
        conn.execute(ddl)
    for table, columns in ADDED_COLUMNS.items():
        for name, kind in columns:
            conn.execute(f"ALTER TABLE bd_history.{table} ADD COLUMN IF NOT EXISTS {name} {kind}")


def open_session(cursor: duckdb.DuckDBPyConnection, org: str | None) -> None:
    """Expose the tables and views under their plain names on this cursor (a connection
    of its own): confined to `org`'s rows, or every org's when None (benchmarks, admin)."""
    for name in TABLES:
        where = "" if org is None else f" WHERE org = '{_literal(org)}'"
        cursor.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM bd_history.{name}{where}")
    for name, body in VIEWS.items():
        cursor.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {body}")


def _literal(org: str) -> str:
    # Orgs are [a-z0-9_-]{1,32} (checked on every subject); refuse anything else outright.
    if not org or len(org) > 32 or any(c not in ORG_CHARACTERS for c in org):
        raise ValueError(f"invalid org {org!r}")
    return org


ORG_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
