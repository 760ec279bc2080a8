"""The history database and `history.sql`, without NATS.

Histories are built the way the ingest builds them, by writing `Batch`es to a real
DuckDB file, and read the way `history.sql` reads them: `sql.run` on a cursor of its
own, confined to one org. The scenarios: what a user may not run is refused with a
reason and changes nothing; what they may run works; one org never sees another's
rows; the row and time limits; the derived views' numbers; writes that are replayed
or arrive out of order; retention; and malformed values that must not fail a batch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from pathlib import Path
from typing import Any

import duckdb
import pytest

from store import schema, sql
from store.history import Batch, History

ACME, GLOBEX = "acme", "globex"
FINAL = ("succeeded", "failed", "timed_out", "lost", "canceled", "skipped")


# ---- building histories -------------------------------------------------------------


def iso(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds, as on the wire and in history.sql replies."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def execution(id: str, queued_at: str, status: str, steps: list[tuple[str, str, int | None]], *,
              task_id: str | None = None, batch_id: str | None = None, name: str = "", runner_id: str | None = "r1",
              version: int = 5, **fields: Any) -> dict[str, Any]:
    """An execution's state as the ingest hands it over (`msgspec.to_builtins(Execution)`).

    `steps` are its actions as (task_id, status, duration in ms or None), run one after
    the other from `queued_at`; a finished execution lasts as long as its actions."""
    clock = parse(queued_at)
    actions = []
    for index, (task, action_status, ms) in enumerate(steps):
        action: dict[str, Any] = {"index": index, "task_id": task, "status": action_status, "exit_code": None,
                                  "started_at": None, "finished_at": None, "error": None}
        if ms is not None:
            action["started_at"] = iso(clock)
            clock += timedelta(milliseconds=ms)
            action["finished_at"] = iso(clock)
            action["exit_code"] = 0 if action_status == "succeeded" else 1
        elif action_status == "running":
            action["started_at"] = iso(clock)
        actions.append(action)
    timed = [ms for _, _, ms in steps if ms is not None]
    finished = status in FINAL
    return {
        "id": id, "batch_id": batch_id, "task_id": task_id, "name": name, "trigger_id": None, "source": "manual",
        "status": status, "attempt": 1, "pool": "default", "runner_id": runner_id,
        "queued_at": queued_at, "started_at": queued_at if timed else None,
        "finished_at": iso(clock) if finished else None,
        "duration_ms": sum(timed) if finished and timed else None,
        "progress_percent": None, "progress_text": None, "actions": actions, "result": None, "error": None,
        "context": {}, "version": version, **fields,
    }


def log_lines(org: str, execution_id: str, count: int, start: str) -> dict[str, list[Any]]:
    moment = parse(start)
    return {
        "org": [org] * count, "execution_id": [execution_id] * count, "idx": list(range(1, count + 1)),
        "ts": [iso(moment + timedelta(milliseconds=i)) for i in range(count)], "level": ["info"] * count,
        "stream": ["stdout"] * count, "action_index": [0] * count, "msg": [f"line {i}" for i in range(count)],
    }


def trigger(trigger_id: str, batch_id: str, scheduled_at: str | None, fired_at: str | None, **fields: Any) -> dict[str, Any]:
    return {"trigger_id": trigger_id, "batch_id": batch_id, "source": "cron", "scheduled_at": scheduled_at,
            "fired_at": fired_at, "execution_id": None, "status": "queued", "error": None, "context": {},
            "lag_ms": None, **fields}


def definition(org: str, of: str, id: str, change: str, ts: str, **fields: Any) -> dict[str, Any]:
    """A definition event of a task or a batch (`of`); `fields` are the definition's own."""
    body = {"id": id, "name": fields.pop("name", id), "version": fields.pop("version", 1), **fields}
    return {"kind": of, "change": change, "id": id, "org": org, "definition": body, "ts": ts}


def notification(execution_id: str, target: str, status: str = "sent", created_at: str = "2024-05-01T08:00:02.000Z",
                 **fields: Any) -> dict[str, Any]:
    """A notify event as the ingest hands it over (`msgspec.structs.asdict(Notification)`)."""
    sent = status == "sent"
    return {"org": ACME, "execution_id": execution_id, "channel": "webhook" if "://" in target else "email",
            "target": target, "rules": ["batch:nightly"], "execution_status": "failed", "status": status,
            "attempts": 1, "error": None if sent else "550 no such mailbox", "notifier": "n1",
            "created_at": created_at, "updated_at": created_at, "sent_at": created_at if sent else None, **fields}


def write(history: History, seq: int, *, org: str = ACME, executions: list[dict[str, Any]] = (),
          logs: dict[str, list[Any]] | None = None, triggers: list[dict[str, Any]] = (),
          definitions: list[dict[str, Any]] = (), notifications: list[dict[str, Any]] = ()) -> None:
    """One ingest transaction ending at event `seq`."""
    batch = Batch()
    for state in executions:
        batch.add_execution(org, {**state, "org": org})
    for delivery in notifications:
        batch.add_notification(org, delivery)
    if logs:
        for column, values in logs.items():
            batch.logs[column].extend(values)
    batch.triggers.extend({**t, "org": org} for t in triggers)
    batch.definitions.extend(definitions)
    batch.last_seq = seq
    batch.events = (len(executions) + len(triggers) + len(definitions) + len(notifications)
                    + len((logs or {}).get("idx", [])))
    history.write(batch)


def query(history: History, org: str, statement: str, params: list[Any] | None = None, **limits: Any) -> list[list[Any]]:
    """`history.sql` as the store runs it: a cursor of its own, closed afterwards."""
    cursor = history.cursor()
    try:
        return sql.run(cursor, org, statement, params, **limits)["rows"]
    finally:
        cursor.close()


def stored(history: History, table: str, where: str = "", params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """Rows as the database holds them, past every session view (an operator's look)."""
    return history.conn.execute(f"SELECT * FROM bd_history.{table} {where}", params or []).fetchall()


def row_counts(history: History) -> dict[str, int]:
    names = [*schema.TABLES, *schema.INTERNAL]
    return {n: history.conn.execute(f"SELECT count(*) FROM bd_history.{n}").fetchone()[0] for n in names}


def quantile_cont(values: list[float], q: float) -> float:
    """DuckDB's quantile_cont: linear interpolation between the two nearest ranks."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


# ---- the known history -----------------------------------------------------------------
#
# acme, two tasks (build, test) and one batch (nightly: build then test) over two days.
# Day 1: build succeeds (1 s), build fails (3 s, queued 01:30+02:00, i.e. day 1 in UTC),
#        nightly succeeds (build 2 s, test 3 s), test is skipped (queued 23:59:30).
# Day 2: nightly fails (build 5 s, test fails 2 s), build times out (4 s), test is
#        canceled (0.5 s), test still running (counts nowhere).
# globex has a run of each kind too, with durations no acme number could come from.

ACME_RUNS = [
    execution("e1", "2024-05-01T08:00:00Z", "succeeded", [("build", "succeeded", 1000)], task_id="build", name="build"),
    execution("e2", "2024-05-02T01:30:00+02:00", "failed", [("build", "failed", 3000)], task_id="build", name="build"),
    execution("e3", "2024-05-01T20:00:00Z", "succeeded", [("build", "succeeded", 2000), ("test", "succeeded", 3000)],
              batch_id="nightly", name="nightly", result={"rows": 42, "tables": ["a", "b"]},
              context={"env": "prod", "ticket": {"id": 7}}),
    execution("e4", "2024-05-01T23:59:30Z", "skipped", [("test", "skipped", None)], task_id="test", name="test",
              runner_id=None),
    execution("e5", "2024-05-02T11:00:00Z", "timed_out", [("build", "timed_out", 4000)], task_id="build",
              name="build v2"),
    execution("e6", "2024-05-02T09:00:00Z", "failed", [("build", "succeeded", 5000), ("test", "failed", 2000)],
              batch_id="nightly", name="nightly", runner_id="r2"),
    execution("e7", "2024-05-02T12:00:00Z", "canceled", [("test", "canceled", 500)], task_id="test", name="test"),
    execution("e8", "2024-05-02T13:00:00Z", "running", [("test", "running", None)], task_id="test", name="test"),
]

GLOBEX_RUNS = [
    # Same ids and task ids as acme's: only the org tells them apart.
    execution("e1", "2024-05-01T09:00:00Z", "succeeded", [("build", "succeeded", 99_000)], task_id="build",
              name="globex build", runner_id="r1", result={"rows": 1}),
    execution("e9", "2024-05-02T09:00:00Z", "failed", [("build", "failed", 77_000)], task_id="build",
              name="globex build", runner_id="r-globex"),
]


def seed(history: History) -> None:
    write(history, 10, org=ACME, executions=ACME_RUNS, logs=log_lines(ACME, "e1", 3, "2024-05-01T08:00:00Z"),
          triggers=[trigger("tr1", "nightly", "2024-05-01T20:00:00Z", "2024-05-01T20:00:01Z", lag_ms=1000)],
          definitions=[definition(ACME, "task", "build", "created", "2024-04-30T10:00:00Z", kind="command",
                                  name="build v2"),
                       definition(ACME, "batch", "nightly", "created", "2024-04-30T10:00:00Z",
                                  cron_expression="0 20 * * *")],
          notifications=[notification("e6", "ops@acme.example"), notification("e6", "https://hooks.acme.example/x",
                                                                               status="failed")])
    write(history, 20, org=GLOBEX, executions=GLOBEX_RUNS,
          logs=log_lines(GLOBEX, "e1", 5, "2024-05-01T09:00:00Z"),
          triggers=[trigger("tr1", "nightly", "2024-05-01T20:00:00Z", "2024-05-01T20:00:02Z", lag_ms=2000),
                    trigger("tr2", "nightly", "2024-05-02T20:00:00Z", None)],
          definitions=[definition(GLOBEX, "task", "build", "created", "2024-04-29T10:00:00Z", kind="command",
                                  name="globex build"),
                       definition(GLOBEX, "task", "secret", "created", "2024-04-29T10:00:00Z", kind="command"),
                       definition(GLOBEX, "batch", "nightly", "created", "2024-04-29T10:00:00Z")],
          notifications=[notification("e9", "secret@globex.example", status="failed")])


@pytest.fixture
def history(tmp_path: Path) -> Iterator[History]:
    """An empty history file."""
    opened = History(tmp_path / "history.duckdb")
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    """The known history of acme and globex (read-only: tests only query it)."""
    opened = History(tmp_path_factory.mktemp("known") / "history.duckdb")
    seed(opened)
    yield opened
    opened.close()


# ---- 1. what is refused --------------------------------------------------------------

ONLY_SELECT = "only SELECT"
ONE_STATEMENT = "exactly one statement"
TABLE_FUNCTION = "table functions such as"
PLAIN_NAMES = "write plain table names"
UNKNOWN = "unknown table"
INVALID = "not valid SQL"

FORBIDDEN = [
    # writes and DDL
    ("INSERT INTO executions (org, id) VALUES ('acme', 'x')", ONLY_SELECT),
    ("UPDATE executions SET status = 'succeeded'", ONLY_SELECT),
    ("DELETE FROM logs", ONLY_SELECT),
    ("CREATE TABLE stolen AS SELECT * FROM logs", ONLY_SELECT),
    ("CREATE VIEW v AS SELECT 1", ONLY_SELECT),
    ("DROP TABLE logs", ONLY_SELECT),
    ("DROP VIEW executions", ONLY_SELECT),
    ("ALTER TABLE logs ADD COLUMN x INTEGER", ONLY_SELECT),
    # files, databases, extensions, settings
    ("COPY logs TO '/tmp/batchdeck-logs.csv'", ONLY_SELECT),
    ("COPY logs FROM '/etc/passwd'", ONLY_SELECT),
    ("COPY (SELECT * FROM logs) TO '/tmp/batchdeck-logs.parquet' (FORMAT parquet)", ONLY_SELECT),
    ("ATTACH '/tmp/other.duckdb' AS other", ONLY_SELECT),
    ("DETACH other", ONLY_SELECT),
    ("INSTALL httpfs", ONLY_SELECT),
    ("LOAD httpfs", ONLY_SELECT),
    ("SET enable_external_access = true", ONLY_SELECT),
    ("SET threads = 1", ONLY_SELECT),
    ("RESET threads", ONLY_SELECT),
    ("PRAGMA database_list", ONLY_SELECT),
    ("CALL duckdb_settings()", ONLY_SELECT),
    ("EXPORT DATABASE '/tmp/batchdeck-export'", ONLY_SELECT),
    ("IMPORT DATABASE '/tmp/batchdeck-export'", ONLY_SELECT),
    ("CHECKPOINT", ONLY_SELECT),
    ("EXPLAIN SELECT * FROM logs", ONLY_SELECT),
    # more than one statement
    ("SELECT 1; SELECT 2", ONE_STATEMENT),
    ("SELECT 1; DROP TABLE logs", ONE_STATEMENT),
    ("SELECT * FROM logs; DELETE FROM logs", ONE_STATEMENT),
    ("", ONE_STATEMENT),
    # table functions
    ("SELECT * FROM read_csv('/etc/passwd')", f"{TABLE_FUNCTION} read_csv()"),
    ("SELECT * FROM read_csv_auto('/etc/passwd')", f"{TABLE_FUNCTION} read_csv_auto()"),
    ("SELECT * FROM read_parquet('/tmp/x.parquet')", f"{TABLE_FUNCTION} read_parquet()"),
    ("SELECT * FROM read_json('/tmp/x.json')", f"{TABLE_FUNCTION} read_json()"),
    ("SELECT * FROM read_text('/etc/passwd')", f"{TABLE_FUNCTION} read_text()"),
    ("SELECT * FROM read_blob('/etc/passwd')", f"{TABLE_FUNCTION} read_blob()"),
    ("SELECT * FROM glob('/etc/*')", f"{TABLE_FUNCTION} glob()"),
    ("SELECT * FROM parquet_scan('/tmp/x.parquet')", f"{TABLE_FUNCTION} parquet_scan()"),
    ("SELECT * FROM duckdb_settings()", f"{TABLE_FUNCTION} duckdb_settings()"),
    ("SELECT * FROM duckdb_tables()", f"{TABLE_FUNCTION} duckdb_tables()"),
    ("FROM duckdb_tables()", f"{TABLE_FUNCTION} duckdb_tables()"),
    ("SELECT * FROM range(10)", f"{TABLE_FUNCTION} range()"),
    ("SELECT * FROM generate_series(1, 3)", f"{TABLE_FUNCTION} generate_series()"),
    ("SELECT * FROM query_table('bd_history.logs')", f"{TABLE_FUNCTION} query_table()"),
    ("SELECT * FROM query('SELECT * FROM bd_history.logs')", f"{TABLE_FUNCTION} query()"),
    # a file named as a table
    ("SELECT * FROM '/etc/passwd'", f"{UNKNOWN} '/etc/passwd'"),
    ("SELECT * FROM 'logs.csv'", f"{UNKNOWN} 'logs.csv'"),
    # schema- or catalog-qualified names, and names that are not documented
    ("SELECT * FROM bd_history.logs", f"{PLAIN_NAMES}: bd_history.logs"),
    ("FROM bd_history.executions", f"{PLAIN_NAMES}: bd_history.executions"),
    ("SELECT * FROM history.bd_history.logs", f"{PLAIN_NAMES}: history.bd_history.logs"),
    ("SELECT * FROM main.x", f"{PLAIN_NAMES}: main.x"),
    ("SELECT * FROM information_schema.tables", f"{PLAIN_NAMES}: information_schema.tables"),
    ("SELECT * FROM pg_catalog.pg_tables", f"{PLAIN_NAMES}: pg_catalog.pg_tables"),
    ("SELECT * FROM temp.executions", f"{PLAIN_NAMES}: temp.executions"),
    ("SELECT * FROM executions e JOIN bd_history.executions b ON b.id = e.id", f"{PLAIN_NAMES}: bd_history.executions"),
    ("SELECT * FROM ingest_state", f"{UNKNOWN} 'ingest_state'"),
    ("SELECT * FROM duckdb_tables", f"{UNKNOWN} 'duckdb_tables'"),
    ("SELECT * FROM sqlite_master", f"{UNKNOWN} 'sqlite_master'"),
    # table functions and foreign names hidden deeper in the query
    ("WITH f AS (SELECT * FROM read_csv('/etc/passwd')) SELECT * FROM f", f"{TABLE_FUNCTION} read_csv()"),
    ("SELECT * FROM (SELECT * FROM read_text('/etc/passwd')) t", f"{TABLE_FUNCTION} read_text()"),
    ("SELECT (SELECT count(*) FROM duckdb_tables()) AS n", f"{TABLE_FUNCTION} duckdb_tables()"),
    ("SELECT * FROM logs, LATERAL (SELECT * FROM read_blob('/etc/passwd')) b", f"{TABLE_FUNCTION} read_blob()"),
    ("SELECT * FROM executions e JOIN glob('/etc/*') g ON g.file = e.id", f"{TABLE_FUNCTION} glob()"),
    ("SELECT id FROM executions UNION ALL SELECT * FROM read_text('/etc/passwd')", f"{TABLE_FUNCTION} read_text()"),
    ("SELECT * FROM logs WHERE msg IN (SELECT file FROM glob('/etc/*'))", f"{TABLE_FUNCTION} glob()"),
    ("SELECT * FROM executions WHERE EXISTS (SELECT 1 FROM bd_history.ingest_state)",
     f"{PLAIN_NAMES}: bd_history.ingest_state"),
    ("WITH a AS (SELECT 1), b AS (SELECT * FROM bd_history.logs) SELECT * FROM a, b", f"{PLAIN_NAMES}: bd_history.logs"),
    # A CTE's name counts only where the CTE is in scope: elsewhere the same name is
    # DuckDB's own catalog view (duckdb_tables: every table of the store, internal ones
    # too, with estimated_size = its row count over all orgs).
    ("SELECT * FROM (WITH duckdb_tables AS (SELECT 1) SELECT 1) x, duckdb_tables", "duckdb_tables"),
    ("SELECT * FROM (WITH duckdb_views AS (SELECT 1) SELECT 1) x, duckdb_views", "duckdb_views"),
    # SHOW ALL TABLES is duckdb_tables() under another name: the store's schema and its
    # internal ingest_state.
    ("SHOW ALL TABLES", ""),
    # not SQL at all, or too long
    ("SELEC * FROM logs", INVALID),
    ("SELECT * FROM logs WHERE", INVALID),
    ("SELECT 'unterminated", INVALID),
    ("SELECT 1 " + " " * sql.MAX_SQL_LENGTH, f"at most {sql.MAX_SQL_LENGTH}"),
]


@pytest.mark.parametrize(("statement", "reason"), FORBIDDEN, ids=[s[:60] for s, _ in FORBIDDEN])
def test_a_forbidden_statement_is_refused_with_its_reason_and_changes_nothing(known: History, statement: str,
                                                                            reason: str) -> None:
    before = row_counts(known)
    with pytest.raises(sql.Refused) as refused:
        query(known, ACME, statement)
    assert reason in str(refused.value)
    assert str(refused.value).strip()
    assert row_counts(known) == before
    assert query(known, ACME, "SELECT count(*) FROM executions") == [[len(ACME_RUNS)]]


def test_check_refuses_without_running_anything(known: History) -> None:
    cursor = known.cursor()
    try:
        with pytest.raises(sql.Refused, match="only SELECT"):
            sql.check("DELETE FROM bd_history.logs", cursor)
        sql.check("WITH x AS (SELECT * FROM logs) SELECT count(*) FROM x", cursor)
    finally:
        cursor.close()
    assert row_counts(known)["logs"] == 8


# ---- 2. what works ---------------------------------------------------------------------

ALLOWED = [
    ("SELECT count(*) FROM executions", [[8]]),
    ("FROM executions SELECT count(*)", [[8]]),
    (("WITH finished AS (SELECT * FROM executions WHERE finished_at IS NOT NULL) "
      "SELECT count(*) FROM finished"), [[7]]),
    ("WITH zebra_crossing AS (SELECT 2 AS n) SELECT n FROM zebra_crossing", [[2]]),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT sum(n) FROM r", [[6]]),
    (("SELECT id FROM executions WHERE id IN (SELECT execution_id FROM execution_actions WHERE status = 'failed') "
      "ORDER BY id"), [["e2"], ["e6"]]),
    ("SELECT (SELECT count(*) FROM logs) AS lines, (SELECT count(*) FROM triggers) AS fired", [[3, 1]]),
    (("SELECT id, row_number() OVER (PARTITION BY coalesce(task_id, batch_id) ORDER BY queued_at) AS n "
      "FROM executions WHERE task_id = 'build' ORDER BY queued_at"), [["e1", 1], ["e2", 2], ["e5", 3]]),
    (("SELECT id, sum(duration_ms) OVER (ORDER BY queued_at) FROM executions WHERE batch_id = 'nightly' "
      "ORDER BY queued_at"), [["e3", 5000], ["e6", 12000]]),
    (("SELECT e.id, a.action_index, a.task_id, a.duration_ms FROM executions e "
      "JOIN execution_actions a ON a.execution_id = e.id WHERE e.batch_id = 'nightly' ORDER BY e.queued_at, 2"),
     [["e3", 0, "build", 2000], ["e3", 1, "test", 3000], ["e6", 0, "build", 5000], ["e6", 1, "test", 2000]]),
    (("SELECT e.id, count(l.idx) FROM executions e LEFT JOIN logs l ON l.execution_id = e.id "
      "WHERE e.id IN ('e1', 'e2') GROUP BY e.id ORDER BY e.id"), [["e1", 3], ["e2", 0]]),
    ("SELECT t.name, b.cron_expression FROM tasks t CROSS JOIN batches b", [["build v2", "0 20 * * *"]]),
    ("SELECT id, executions FROM runners ORDER BY id", [["r1", 5], ["r2", 1]]),
    ("SELECT task_id, runs FROM task_stats ORDER BY task_id", [["build", 5], ["test", 3]]),
    ("SELECT day, runs FROM daily_runs ORDER BY day", [["2024-05-01", 4], ["2024-05-02", 3]]),
    (("SELECT result->>'rows' AS rows, result->'tables'->>0 AS first, context->'ticket'->>'id' AS ticket "
      "FROM executions WHERE id = 'e3'"), [["42", "a", "7"]]),
    (("SELECT CAST(json_extract(result, '$.rows') AS INTEGER) + 1, json_extract_string(context, '$.env') "
      "FROM executions WHERE result IS NOT NULL"), [[43, "prod"]]),
    ("SELECT count(*) FROM executions WHERE json_extract_string(context, '$.env') = 'prod'", [[1]]),
    ("SELECT lag_ms, fired_at FROM triggers", [[1000, "2024-05-01T20:00:01.000Z"]]),
    ("SELECT queued_at FROM executions WHERE id = 'e2'", [["2024-05-01T23:30:00.000Z"]]),
    (("SELECT n.channel, n.target, n.status, n.rules, e.name FROM notifications n "
      "JOIN executions e ON e.id = n.execution_id ORDER BY n.target"),
     [["webhook", "https://hooks.acme.example/x", "failed", ["batch:nightly"], "nightly"],
      ["email", "ops@acme.example", "sent", ["batch:nightly"], "nightly"]]),
]


@pytest.mark.parametrize(("statement", "rows"), ALLOWED, ids=[s[:60] for s, _ in ALLOWED])
def test_an_allowed_query_returns_its_rows(known: History, statement: str, rows: list[list[Any]]) -> None:
    assert query(known, ACME, statement) == rows


def test_parameters_are_bound_from_the_params_list(known: History) -> None:
    rows = query(known, ACME, "SELECT id FROM executions WHERE status = ? AND queued_at >= ? ORDER BY id",
                 ["failed", "2024-05-02T00:00:00Z"])
    assert rows == [["e6"]]
    assert query(known, ACME, "SELECT count(*) FROM executions WHERE id = ?", ["x' OR '1'='1"]) == [[0]]


def test_the_result_names_its_columns(known: History) -> None:
    cursor = known.cursor()
    try:
        result = sql.run(cursor, ACME, "SELECT id, status AS state FROM executions WHERE id = 'e1'")
    finally:
        cursor.close()
    assert result == {"columns": ["id", "state"], "rows": [["e1", "succeeded"]]}


# ---- 3. one org at a time --------------------------------------------------------------

@pytest.mark.parametrize("table", sorted(schema.TABLES))
@pytest.mark.parametrize("org", [ACME, GLOBEX])
def test_a_session_sees_only_its_org_in_every_table(known: History, org: str, table: str) -> None:
    other = GLOBEX if org == ACME else ACME
    mine = len(stored(known, table, "WHERE org = ?", [org]))
    assert mine > 0 and len(stored(known, table, "WHERE org = ?", [other])) > 0  # the test means something

    assert query(known, org, f"SELECT DISTINCT org FROM {table}") == [[org]]
    assert query(known, org, f"SELECT count(*) FROM {table}") == [[mine]]
    assert query(known, org, f"SELECT count(*) FROM {table} WHERE org = ?", [other]) == [[0]]
    assert query(known, org, f"SELECT count(*) FROM {table} WHERE org = '{other}' OR true") == [[mine]]
    assert query(known, org, f"WITH t AS (SELECT * FROM {table}) SELECT DISTINCT org FROM t") == [[org]]


@pytest.mark.parametrize("org", [ACME, GLOBEX])
def test_a_union_of_every_table_holds_only_the_sessions_org(known: History, org: str) -> None:
    union = " UNION ALL ".join(f"SELECT org FROM {name}" for name in sorted(schema.QUERYABLE))
    assert query(known, org, f"SELECT DISTINCT org FROM ({union})") == [[org]]


def test_the_views_are_confined_to_the_org(known: History) -> None:
    assert query(known, ACME, "SELECT DISTINCT org FROM task_stats") == [[ACME]]
    assert query(known, ACME, "SELECT max(max_ms) FROM task_stats") == [[5000]]
    assert query(known, ACME, "SELECT count(*) FROM task_stats WHERE org = 'globex'") == [[0]]
    assert query(known, ACME, "SELECT sum(runs) FROM daily_runs") == [[7]]
    assert query(known, GLOBEX, "SELECT task_id, runs, max_ms, task_name FROM task_stats") == [
        ["build", 2, 99_000, "globex build"]]
    assert query(known, GLOBEX, "SELECT day, runs, succeeded, failed FROM daily_runs ORDER BY day") == [
        ["2024-05-01", 1, 1, 0], ["2024-05-02", 1, 0, 1]]


def test_a_join_on_shared_ids_stays_in_the_org(known: History) -> None:
    # Both orgs have an execution e1 and a runner r1.
    rows = query(known, ACME, "SELECT e.name, count(l.idx) FROM executions e JOIN logs l ON l.execution_id = e.id "
                              "WHERE e.id = 'e1' GROUP BY e.name")
    assert rows == [["build", 3]]


@pytest.mark.parametrize("org", ["acme' OR '1'='1", "acme'; DROP TABLE bd_history.logs; --", "ACME", "", "a" * 33,
                                 "acme org", "acme\x00", "acmé"])
def test_an_invalid_org_is_refused_before_any_sql(known: History, org: str) -> None:
    before = row_counts(known)
    cursor = known.cursor()
    try:
        with pytest.raises(ValueError, match="invalid org"):
            schema.open_session(cursor, org)
        with pytest.raises(ValueError, match="invalid org"):
            sql.run(cursor, org, "SELECT count(*) FROM executions")
    finally:
        cursor.close()
    assert row_counts(known) == before


# ---- 4. limits -------------------------------------------------------------------------

def test_more_rows_than_the_limit_is_refused_with_a_hint(known: History) -> None:
    assert len(query(known, ACME, "SELECT id FROM executions LIMIT 5", max_rows=5)) == 5
    with pytest.raises(sql.Refused, match="more than 5 rows; add a LIMIT"):
        query(known, ACME, "SELECT id FROM executions", max_rows=5)
    assert query(known, ACME, "SELECT count(*) FROM executions", max_rows=5) == [[8]]


def test_the_default_row_limit_is_max_rows(history: History) -> None:
    count = sql.MAX_ROWS + 1
    write(history, 1, executions=[execution("e1", "2024-05-01T08:00:00Z", "succeeded", [])],
          logs=log_lines(ACME, "e1", count, "2024-05-01T08:00:00Z"))
    with pytest.raises(sql.Refused, match=f"more than {sql.MAX_ROWS} rows"):
        query(history, ACME, "SELECT idx FROM logs")
    assert len(query(history, ACME, f"SELECT idx FROM logs LIMIT {sql.MAX_ROWS}")) == sql.MAX_ROWS


def test_a_slow_query_is_interrupted_and_the_history_stays_usable(history: History) -> None:
    write(history, 1, executions=[execution("e1", "2024-05-01T08:00:00Z", "succeeded", [])],
          logs=log_lines(ACME, "e1", 3000, "2024-05-01T08:00:00Z"))
    started = time.monotonic()
    with pytest.raises(sql.Refused, match="ran longer than 0.5 s"):
        query(history, ACME, "SELECT count(*) FROM logs a, logs b, logs c WHERE a.msg || b.msg <> c.msg",
              timeout=0.5)
    assert time.monotonic() - started < 5.0

    assert query(history, ACME, "SELECT count(*) FROM logs") == [[3000]]
    write(history, 2, executions=[execution("e2", "2024-05-01T09:00:00Z", "succeeded", [])])
    assert query(history, ACME, "SELECT count(*) FROM executions") == [[2]]
    assert history.committed_seq() == 2


# ---- 5. the derived views --------------------------------------------------------------

def test_task_stats_counts_every_finished_action_of_a_task(known: History) -> None:
    build = [1000, 3000, 2000, 4000, 5000]  # e1, e2, e3's first action, e5, e6's first action
    test = [3000, 2000, 500]  # e3's second action, e6's second, e7 (canceled); e4 skipped and e8 running are not runs
    rows = query(known, ACME, "SELECT task_id, task_name, runs, succeeded, failed, success_rate, p50_ms, p95_ms, "
                              "max_ms, last_status, last_finished_at FROM task_stats ORDER BY task_id")
    assert rows == [
        ["build", "build v2", 5, 3, 2, 0.6, pytest.approx(quantile_cont(build, 0.5)),
         pytest.approx(quantile_cont(build, 0.95)), 5000, "timed_out", "2024-05-02T11:00:04.000Z"],
        ["test", "test", 3, 1, 1, 0.3333, pytest.approx(quantile_cont(test, 0.5)),
         pytest.approx(quantile_cont(test, 0.95)), 3000, "canceled", "2024-05-02T12:00:00.500Z"],
    ]
    # The interpolation, worked out by hand.
    assert quantile_cont(build, 0.5) == 3000 and quantile_cont(build, 0.95) == pytest.approx(4800)
    assert quantile_cont(test, 0.5) == 2000 and quantile_cont(test, 0.95) == pytest.approx(2900)


def test_daily_runs_buckets_finished_executions_by_utc_day(known: History) -> None:
    day1 = [1000, 3000, 5000]  # e1, e2 (queued 01:30+02:00 = day 1 UTC), e3; e4 was skipped, no duration
    day2 = [7000, 4000, 500]  # e6, e5, e7; e8 is still running
    rows = query(known, ACME, "SELECT day, runs, succeeded, failed, canceled, skipped, p95_ms FROM daily_runs "
                              "ORDER BY day")
    assert rows == [
        ["2024-05-01", 4, 2, 1, 0, 1, pytest.approx(quantile_cont(day1, 0.95))],
        ["2024-05-02", 3, 0, 2, 1, 0, pytest.approx(quantile_cont(day2, 0.95))],
    ]
    assert quantile_cont(day1, 0.95) == pytest.approx(4800)
    assert quantile_cont(day2, 0.95) == pytest.approx(6700)


# ---- 6. writes: idempotent and ordered -------------------------------------------------

def test_an_older_state_written_later_does_not_overwrite_a_newer_one(history: History) -> None:
    done = execution("e1", "2024-05-01T08:00:00Z", "succeeded", [("build", "succeeded", 1000)], task_id="build",
                     version=7)
    running = execution("e1", "2024-05-01T08:00:00Z", "running", [("build", "running", None)], task_id="build",
                        version=4)
    write(history, 1, executions=[done])
    write(history, 2, executions=[running])

    assert query(history, ACME, "SELECT status, version, duration_ms FROM executions") == [["succeeded", 7, 1000]]
    assert query(history, ACME, "SELECT status, duration_ms FROM execution_actions") == [["succeeded", 1000]]


def test_a_newer_state_replaces_the_stored_one_and_its_actions(history: History) -> None:
    write(history, 1, executions=[execution("e1", "2024-05-01T08:00:00Z", "running",
                                            [("build", "running", None), ("test", "queued", None)], version=3)])
    write(history, 2, executions=[execution("e1", "2024-05-01T08:00:00Z", "failed",
                                            [("build", "succeeded", 100), ("test", "failed", 200)], version=9)])
    assert query(history, ACME, "SELECT status, version FROM executions") == [["failed", 9]]
    assert query(history, ACME, "SELECT action_index, status, duration_ms FROM execution_actions ORDER BY 1") == [
        [0, "succeeded", 100], [1, "failed", 200]]


def test_within_one_batch_the_newest_state_wins(history: History) -> None:
    batch = Batch()
    batch.add_execution(ACME, {**execution("e1", "2024-05-01T08:00:00Z", "running", [], version=5), "org": ACME})
    batch.add_execution(ACME, {**execution("e1", "2024-05-01T08:00:00Z", "queued", [], version=2), "org": ACME})
    batch.last_seq = 3
    history.write(batch)
    assert query(history, ACME, "SELECT status, version FROM executions") == [["running", 5]]


def test_the_same_state_twice_changes_nothing(history: History) -> None:
    state = execution("e1", "2024-05-01T08:00:00Z", "succeeded", [("build", "succeeded", 1000),
                                                                ("test", "succeeded", 500)], runner_id="r1")
    write(history, 1, executions=[state])
    once = {t: stored(history, t) for t in schema.TABLES}
    write(history, 2, executions=[state])  # a replay, as after a crash between commit and ack

    assert {t: stored(history, t) for t in schema.TABLES} == once
    assert query(history, ACME, "SELECT count(*) FROM execution_actions") == [[2]]
    assert query(history, ACME, "SELECT id, executions FROM runners") == [["r1", 1]]


def test_committed_seq_is_the_last_batchs_last_seq(history: History) -> None:
    assert history.committed_seq() == 0
    write(history, 10, executions=[execution("e1", "2024-05-01T08:00:00Z", "queued", [])])
    assert history.committed_seq() == 10
    write(history, 25)  # a batch of events the store does not keep still moves the sequence on
    assert history.committed_seq() == 25


def test_a_failed_batch_commits_nothing(history: History) -> None:
    write(history, 5, executions=[execution("e1", "2024-05-01T08:00:00Z", "queued", [])])
    batch = Batch()
    batch.add_execution(ACME, {**execution("e2", "2024-05-01T08:00:00Z", "queued", []), "org": ACME})
    batch.logs["idx"].append(None)  # NOT NULL: the transaction fails
    for column in ("org", "execution_id", "ts", "level", "stream", "action_index", "msg"):
        batch.logs[column].append(ACME if column == "org" else None)
    batch.last_seq = 9
    with pytest.raises(duckdb.Error):
        history.write(batch)
    assert history.committed_seq() == 5
    assert query(history, ACME, "SELECT id FROM executions") == [["e1"]]


def test_a_recipient_reported_again_keeps_one_row_with_the_later_values(history: History) -> None:
    failed = notification("e1", "ops@acme.example", status="failed", attempts=5, notifier="n1",
                          created_at="2024-05-01T08:00:00.000Z", updated_at="2024-05-01T08:05:00.000Z")
    resent = notification("e1", "ops@acme.example", status="sent", attempts=1, notifier="n2", rules=["task:build"],
                          created_at="2024-05-01T09:00:00.000Z", updated_at="2024-05-01T09:00:01.000Z")
    other = notification("e1", "https://hooks.acme.example/x")
    write(history, 1, notifications=[failed, other])
    write(history, 2, notifications=[resent])

    columns = "target, status, attempts, error, notifier, rules, created_at, updated_at, sent_at"
    assert query(history, ACME, f"SELECT {columns} FROM notifications ORDER BY target") == [
        ["https://hooks.acme.example/x", "sent", 1, None, "n1", ["batch:nightly"], "2024-05-01T08:00:02.000Z",
         "2024-05-01T08:00:02.000Z", "2024-05-01T08:00:02.000Z"],
        ["ops@acme.example", "sent", 1, None, "n2", ["task:build"], "2024-05-01T09:00:00.000Z",
         "2024-05-01T09:00:01.000Z", "2024-05-01T09:00:00.000Z"],
    ]


def test_within_one_batch_the_later_event_of_a_recipient_wins(history: History) -> None:
    first = notification("e1", "ops@acme.example", status="failed", attempts=2)
    second = notification("e1", "ops@acme.example", status="sent", attempts=3)
    write(history, 1, notifications=[first, second])
    assert query(history, ACME, "SELECT status, attempts FROM notifications") == [["sent", 3]]


def test_a_notification_is_stored_under_the_org_of_its_subject(history: History) -> None:
    # The body names acme (`notification` does): the subject's org, globex, is the one kept.
    write(history, 1, org=GLOBEX, notifications=[notification("e1", "ops@acme.example")])
    assert query(history, ACME, "SELECT count(*) FROM notifications") == [[0]]
    assert query(history, GLOBEX, "SELECT org, target FROM notifications") == [[GLOBEX, "ops@acme.example"]]


def test_a_history_file_from_before_notifications_opens_and_gains_the_table(tmp_path: Path) -> None:
    path = tmp_path / "history.duckdb"
    with duckdb.connect(str(path)) as old:
        old.execute("CREATE SCHEMA bd_history")
        for name, ddl in {**schema.TABLES, **schema.INTERNAL}.items():
            if name != "notifications":
                old.execute(ddl)
        old.execute("INSERT INTO bd_history.executions (org, id, status, version) VALUES ('acme', 'e1', 'failed', 3)")
        old.execute("INSERT INTO bd_history.ingest_state VALUES ('BD_EVENTS', 41, 1, now())")

    history = History(path)
    try:
        assert history.committed_seq() == 41
        assert query(history, ACME, "SELECT count(*) FROM notifications") == [[0]]
        write(history, 42, notifications=[notification("e1", "ops@acme.example")])
        assert query(history, ACME, "SELECT e.status, n.status FROM notifications n "
                                    "JOIN executions e ON e.id = n.execution_id") == [["failed", "sent"]]
    finally:
        history.close()


@pytest.mark.parametrize("kind", ["task", "batch"])
def test_a_definitions_history_has_one_row_per_version_with_contiguous_validity(history: History, kind: str) -> None:
    times = ["2024-05-01T08:00:00.000Z", "2024-05-02T09:30:00.000Z", "2024-05-03T10:45:00.000Z"]
    changes = ["created", "updated", "deleted"]
    for seq, (change, ts) in enumerate(zip(changes, times, strict=True), start=1):
        write(history, seq, definitions=[definition(ACME, kind, "d1", change, ts, name=f"v{seq}", version=seq)])
    write(history, 9, org=GLOBEX, definitions=[definition(GLOBEX, kind, "d1", "created", times[0])])

    table = "tasks" if kind == "task" else "batches"
    rows = query(history, ACME, f"SELECT change, name, version, valid_from, valid_to FROM {table} ORDER BY valid_from")
    assert rows == [
        ["created", "v1", 1, "2024-05-01T08:00:00.000Z", "2024-05-02T09:30:00.000Z"],
        ["updated", "v2", 2, "2024-05-02T09:30:00.000Z", "2024-05-03T10:45:00.000Z"],
        ["deleted", "v3", 3, "2024-05-03T10:45:00.000Z", None],
    ]
    # The other org's definition with the same id is untouched.
    assert query(history, GLOBEX, f"SELECT change, valid_to FROM {table}") == [["created", None]]


# ---- 7. retention ----------------------------------------------------------------------

def test_remove_older_than_removes_old_history_and_keeps_recent(history: History) -> None:
    now = datetime.now(UTC)
    old, recent = iso(now - timedelta(days=30)), iso(now - timedelta(hours=1))
    write(history, 1, executions=[
        execution("old", old, "succeeded", [("build", "succeeded", 1000), ("test", "succeeded", 1000)]),
        execution("old-unfinished", old, "lost", [], finished_at=None),
        execution("new", recent, "succeeded", [("build", "succeeded", 1000)]),
    ], triggers=[trigger("t-old", "nightly", old, old), trigger("t-never", "nightly", old, None),
                 trigger("t-new", "nightly", recent, recent)])
    write(history, 2, logs=log_lines(ACME, "old", 10, old))
    write(history, 3, logs=log_lines(ACME, "new", 4, recent), notifications=[
        notification("old", "old@acme.example", created_at=old),
        notification("new", "new@acme.example", created_at=recent),
        # by its own created_at, not its execution's
        notification("gone", "late@acme.example", created_at=recent),
    ])

    removed = history.remove_older_than(7)

    assert removed == {"executions": 2, "execution_actions": 2, "logs": 10, "triggers": 2, "notifications": 1}
    assert query(history, ACME, "SELECT target FROM notifications ORDER BY target") == [
        ["late@acme.example"], ["new@acme.example"]]
    assert query(history, ACME, "SELECT id FROM executions") == [["new"]]
    assert query(history, ACME, "SELECT DISTINCT execution_id FROM execution_actions") == [["new"]]
    assert query(history, ACME, "SELECT execution_id, count(*) FROM logs GROUP BY 1") == [["new", 4]]
    assert query(history, ACME, "SELECT trigger_id FROM triggers") == [["t-new"]]
    assert history.committed_seq() == 3


def test_repeated_write_and_remove_cycles_do_not_grow_the_file(tmp_path: Path) -> None:
    path = tmp_path / "history.duckdb"
    history = History(path)
    try:
        sizes = []
        for cycle in range(5):
            old = iso(datetime.now(UTC) - timedelta(days=30))
            runs = [execution(f"c{cycle}-{i}", old, "succeeded", [("build", "succeeded", 1000)]) for i in range(50)]
            logs = log_lines(ACME, f"c{cycle}-0", 10_000, old)
            # Text that does not compress away, so the data (not the file's fixed
            # overhead) dominates: kept instead of removed, five cycles are ~3x one.
            logs["msg"] = [sha256(f"{cycle}-{i}".encode()).hexdigest() * 2 for i in range(10_000)]
            write(history, cycle + 1, executions=runs, logs=logs)
            assert history.remove_older_than(7)["logs"] == 10_000
            sizes.append(os.path.getsize(path))
        assert query(history, ACME, "SELECT count(*) FROM executions") == [[0]]
    finally:
        history.close()
    assert sizes[-1] < 2 * sizes[0], sizes


# ---- 8. malformed values ---------------------------------------------------------------

def test_times_that_are_not_rfc3339_become_null(history: History) -> None:
    state = execution("e1", "2024-05-01T08:00:00Z", "succeeded", [], runner_id=None)
    state.update(queued_at="yesterday", started_at="2024-13-45T99:00:00Z", finished_at="", deadline="soon")
    state["actions"] = [{"index": 0, "task_id": "build", "status": "succeeded", "started_at": "nope",
                         "finished_at": "2024-05-01T08:00:01Z"}]
    logs = log_lines(ACME, "e1", 2, "2024-05-01T08:00:00Z")
    logs["ts"] = ["not a time", "2024-05-01T08:00:01Z"]
    write(history, 1, executions=[state], logs=logs,
          triggers=[trigger("t1", "nightly", "12:00 tomorrow", "2024-02-30T00:00:00Z")],
          definitions=[definition(ACME, "task", "build", "created", "sometime")],
          notifications=[notification("e1", "ops@acme.example", created_at="now", updated_at="2024-05-01T08:00:01Z",
                                      sent_at="2024-05-01T25:00:00Z")])

    assert history.committed_seq() == 1
    assert query(history, ACME, "SELECT queued_at, started_at, finished_at FROM executions") == [[None, None, None]]
    assert query(history, ACME, "SELECT started_at, finished_at, duration_ms FROM execution_actions") == [
        [None, "2024-05-01T08:00:01.000Z", None]]
    assert query(history, ACME, "SELECT ts FROM logs ORDER BY idx") == [[None], ["2024-05-01T08:00:01.000Z"]]
    assert query(history, ACME, "SELECT scheduled_at, fired_at FROM triggers") == [[None, None]]
    assert query(history, ACME, "SELECT valid_from, change FROM tasks") == [[None, "created"]]
    assert query(history, ACME, "SELECT created_at, updated_at, sent_at FROM notifications") == [
        [None, "2024-05-01T08:00:01.000Z", None]]


@pytest.mark.parametrize(("started_at", "finished_at"), [
    ("2024-05-01T08:00:00Z", "yesterday"),  # a finished time that is not a time
    ("soon", "2024-05-01T08:00:05Z"),  # a started time that is not a time
], ids=["finished", "started"])
def test_a_malformed_time_of_a_run_with_a_runner_does_not_fail_the_batch(history: History, started_at: str,
                                                                         finished_at: str) -> None:
    state = execution("e1", "2024-05-01T08:00:00Z", "succeeded", [], runner_id="r1")
    state.update(started_at=started_at, finished_at=finished_at)
    write(history, 1, executions=[state])
    assert history.committed_seq() == 1
    assert query(history, ACME, "SELECT id, status FROM executions") == [["e1", "succeeded"]]


def test_an_action_time_without_an_offset_does_not_fail_the_batch(history: History) -> None:
    # "2024-05-01T08:00:05" is ISO 8601 but not RFC 3339 (no offset); next to an aware start.
    state = execution("e1", "2024-05-01T08:00:00Z", "succeeded", [], runner_id=None)
    state["actions"] = [{"index": 0, "task_id": "build", "status": "succeeded",
                         "started_at": "2024-05-01T08:00:00Z", "finished_at": "2024-05-01T08:00:05"}]
    write(history, 1, executions=[state])
    assert history.committed_seq() == 1
    assert query(history, ACME, "SELECT count(*) FROM execution_actions") == [[1]]


def test_odd_but_typed_values_are_stored_as_given(history: History) -> None:
    state = execution("e1", "2024-05-01T08:00:00Z", "succeeded", [], runner_id=None, name="naïve 'quoted' \"name\"",
                      result={"nested": {"list": [1, None, "ünï"]}, "big": 2 ** 60}, error="x" * 10_000,
                      progress_percent=150.5)
    write(history, 1, executions=[state])
    assert query(history, ACME, "SELECT name, result->'nested'->'list'->>2, CAST(result->>'big' AS BIGINT), "
                                "length(error), progress_percent FROM executions") == [
        ["naïve 'quoted' \"name\"", "ünï", 2 ** 60, 10_000, 150.5]]
