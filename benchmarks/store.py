"""The store: how fast log events go from BD_EVENTS into DuckDB, how long history
queries take over a large history, and how big the file gets.

    python -m benchmarks.store [--lines 1000000] [--executions 1000000] [--log-rows 10000000]
                               [--rounds 3] [--quick] [--profile DIR]

1. Ingest. An embedded nats-server on a temp dir and a free port, provisioned. Each
   round: BD_EVENTS is purged and N log lines (the runner's LogLine JSON with its
   Nats-Msg-Id header, on `bd.bench.evt.exec.{id}.log`, spread over 1000 executions)
   are published and stored; then a real `python -m batchdeck store --nats URL --db
   PATH` starts on a fresh file and the benchmark watches the `store_history`
   consumer's ack floor (the store acks only after its transaction commits) until it
   covers the last line: the backlog rate. With that store still running, N more lines
   are published at full speed from this process: the live rate (first publish ->
   last line committed) and the lag when publishing ends. The count is checked
   through `history.sql`, the store is stopped and its file measured.
2. Queries. A DuckDB file with the store's schema is generated in SQL (executions,
   their actions and log lines; two orgs, 90% / 10%), then opened with
   `store.history.History` and every query runs through `store.sql.run` (the path of
   `history.sql`: checked, org-confined session views), on a fresh cursor each time,
   as the service does.
3. File size per million log lines, of the generated file (after CHECKPOINT) and of
   the files the store wrote.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from benchmarks.common import Children, cpu_seconds, frame_name, read_samples, run_with_children, tail, wait_for_line
from broker import codec, streams, subjects
from broker.client import ApiClient
from broker.ids import new_id
from broker.server import EmbeddedServer
from broker.timestamps import now_iso
from broker.types import LogLine
from store import schema, sql
from store.history import History
from store.ingest import CONSUMER, FETCH, Ingest
from store.puller import Puller
from store.raw_inbox import RawMessage

ORG = "bench"
OTHER_ORG = "bench_other"
"""Holds every tenth generated execution: the org filter of the session views has work to do."""
TASKS = 100
DAYS = 30
INGEST_EXECUTIONS = 1000
LINES_PER_CHUNK = 20
"""Consecutive lines of one execution, as a runner's flusher sends them."""
FLUSH_EVERY = 5000
MAX_UNSTORED = 50_000
"""Lines published but not yet stored before the publisher waits: nats-server drops core
publishes its stream's ingest queue has no room for."""
POLL_SECONDS = 0.1
INGEST_TIMEOUT = 600.0
TARGET_LINES_PER_S = 100_000
TARGET_QUERY_S = 1.0
READY_LINE = re.compile(rb"store: history in .*, resuming after event (\d+)")
QUICK = {"lines": 20_000, "executions": 20_000, "log_rows": 200_000, "rounds": 1}


# ---- the log lines -------------------------------------------------------------------

MESSAGES = (  # (level, stream, text): about 80 characters once filled in
    ("info", "stdout", "processing item {a} of {b}: ok in {ms:.1f} ms (worker {w}, chunk {c})"),
    ("info", "stdout", "GET https://api.partner-{w}.example.com/v2/orders?page={c} 200 {ms:.0f} ms {a} bytes"),
    ("info", "stdout", "committed {a} rows to warehouse.sales_{c} in {ms:.0f} ms, watermark {h}"),
    ("warning", "stderr", "WARNING retrying upload of part {c} to s3://bd-exports/{h}/ (attempt {w} of 5)"),
    ("info", "stdout", "row {a}: customer {h} skipped, not found in dim_customer (batch {c})"),
    ("error", "stderr", "ERROR worker {w}: connection reset by peer while reading chunk {c}, id {h}"),
)
MESSAGE_WEIGHTS = (40, 20, 20, 10, 8, 2)


class LineSource:
    """Log lines as a runner publishes them: subject, LogLine JSON, Nats-Msg-Id header.
    Lines come in chunks of LINES_PER_CHUNK per execution; idx is gap-free per execution.
    The texts are drawn once (TEXTS of them, cycled): making a line costs little next to
    publishing it, so the live mode publishes at the client's full speed. TEXTS is about
    half a DuckDB row group, so a row group's texts do not fit a small dictionary and
    the file size stays honest."""

    TEXTS = 65_537

    def __init__(self, executions: int, seed: int) -> None:
        rng = random.Random(seed)
        self.executions = [new_id() for _ in range(executions)]
        self.next_idx = [1] * executions
        self.chunk = 0
        self.texts = []
        for level, stream, template in rng.choices(MESSAGES, MESSAGE_WEIGHTS, k=self.TEXTS):
            text = template.format(a=rng.randrange(100_000), b=100_000, c=rng.randrange(1000), w=rng.randrange(8),
                                   ms=rng.lognormvariate(1.5, 1.0), h=f"{rng.getrandbits(32):08x}")
            self.texts.append((level, stream, text))
        self.text = 0

    def take(self, count: int) -> list[tuple[str, bytes, dict[str, str]]]:
        out: list[tuple[str, bytes, dict[str, str]]] = []
        ts, texts, encode = now_iso(), self.texts, codec.encode
        while len(out) < count:
            which = self.chunk * 7919 % len(self.executions)
            self.chunk += 1
            execution_id = self.executions[which]
            subject = subjects.exec_event(ORG, execution_id, "log")
            for _ in range(min(LINES_PER_CHUNK, count - len(out))):
                idx = self.next_idx[which]
                self.next_idx[which] += 1
                level, stream, text = texts[self.text % self.TEXTS]
                self.text += 1
                line = LogLine(idx=idx, ts=ts, level=level, stream=stream, action_index=0, msg=text,  # type: ignore[arg-type]
                               execution_id=execution_id)
                out.append((subject, encode(line), {"Nats-Msg-Id": f"{execution_id}.log.{idx}"}))
        return out


async def publish(nc: Client, js: JetStreamContext, source: LineSource, count: int) -> tuple[float, int, int]:
    """Publish `count` lines with core publishes (a flush every FLUSH_EVERY) and wait until
    BD_EVENTS has stored all of them. Returns (seconds, last stream sequence, payload bytes)."""
    first = (await js.stream_info(streams.EVENTS)).state.last_seq
    began = time.perf_counter()
    sent = payload_bytes = 0
    while sent < count:
        chunk = source.take(min(FLUSH_EVERY, count - sent))
        for subject, payload, headers in chunk:
            await nc.publish(subject, payload, headers=headers)
            payload_bytes += len(payload)
        await nc.flush()
        sent += len(chunk)
        while sent - ((await js.stream_info(streams.EVENTS)).state.last_seq - first) > MAX_UNSTORED:
            await asyncio.sleep(0.005)
    target = first + count
    deadline = time.monotonic() + 30.0
    while (last := (await js.stream_info(streams.EVENTS)).state.last_seq) < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"BD_EVENTS stored {last - first} of {count} lines: nats-server dropped some "
                               "(its log is in the benchmark's temp dir)")
        await asyncio.sleep(0.01)
    return time.perf_counter() - began, target, payload_bytes


# ---- ingest rounds -------------------------------------------------------------------


@dataclass
class IngestRun:
    mode: str  # backlog | live
    lines: int = 0
    seconds: float = float("nan")  # backlog: store ready -> last line committed; live: first publish -> same
    store_cpu: float = float("nan")  # s, over `seconds`
    server_cpu: float = float("nan")
    lag: float = float("nan")  # live: lines not committed when the last one was stored in BD_EVENTS
    catch_up: float = float("nan")  # live: s from then until committed
    publish_seconds: float = float("nan")
    notes: list[str] = field(default_factory=list)

    def stats(self) -> dict[str, float]:
        per_100k = 100_000 / self.lines if self.lines else float("nan")
        return {
            "lines": self.lines, "seconds": self.seconds, "rate": self.lines / self.seconds,
            "store_cpu": self.store_cpu * per_100k, "server_cpu": self.server_cpu * per_100k,
            "store_cpu_s": self.store_cpu / self.seconds,
            "publish": self.lines / self.publish_seconds, "lag": self.lag, "catch_up": self.catch_up,
        }


async def _ack_floor(js: JetStreamContext) -> int:
    try:
        return (await js.consumer_info(streams.EVENTS, CONSUMER)).ack_floor.stream_seq
    except NotFoundError:
        return 0


async def _wait_committed(js: JetStreamContext, target: int, process: subprocess.Popen, log: Path) -> float:
    """Poll the store's consumer until its ack floor reaches `target`; the time it did."""
    deadline = time.monotonic() + INGEST_TIMEOUT
    while (floor := await _ack_floor(js)) < target:
        if process.poll() is not None:
            raise RuntimeError(f"the store exited with {process.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the store committed up to event {floor} of {target} in {INGEST_TIMEOUT:g} s")
        await asyncio.sleep(POLL_SECONDS)
    return time.perf_counter()


def _cpu_pair(store_pid: int, server_pid: int) -> tuple[float, float]:
    return cpu_seconds(store_pid) or float("nan"), cpu_seconds(server_pid) or float("nan")


def _file_mb(path: Path) -> float:
    wal = path.with_name(path.name + ".wal")
    return sum(p.stat().st_size for p in (path, wal) if p.exists()) / 1e6


@dataclass
class IngestRound:
    backlog: IngestRun
    live: IngestRun
    startup: float
    file_mb: float
    stored_lines: int
    stream_bytes_per_line: float
    payload_bytes_per_line: float


async def ingest_round(nc: Client, js: JetStreamContext, url: str, args: argparse.Namespace, children: Children,
                       work: Path, number: int) -> IngestRound:
    await js.purge_stream(streams.EVENTS)
    try:
        await js.delete_consumer(streams.EVENTS, CONSUMER)
    except NotFoundError:
        pass
    source = LineSource(INGEST_EXECUTIONS, seed=number)
    backlog = IngestRun("backlog", args.lines)
    backlog.publish_seconds, target, payload = await publish(nc, js, source, args.lines)
    state = (await js.stream_info(streams.EVENTS)).state
    stream_bytes = state.bytes / max(state.messages, 1)

    db, log = work / f"ingest-{number}.duckdb", work / f"store-{number}.log"
    server_pid = children.server.process.pid
    spawned = time.perf_counter()
    process = children.spawn([sys.executable, "-m", "batchdeck", "store", "--nats", url, "--db", str(db)], log)
    profiler = None
    try:
        await wait_for_line(process, log, READY_LINE)
        ready = time.perf_counter()
        before = _cpu_pair(process.pid, server_pid)
        if args.profile is not None and number == 1:
            profiler = Profile(process.pid, args.profile / "store-backlog.txt")
        done = await _wait_committed(js, target, process, log)
        after = _cpu_pair(process.pid, server_pid)
        if profiler is not None:
            profiler.stop()
        backlog.seconds = done - ready
        backlog.store_cpu, backlog.server_cpu = after[0] - before[0], after[1] - before[1]

        await asyncio.sleep(1.0)  # idle: the last fetch has returned
        live = IngestRun("live", args.lines)
        before = _cpu_pair(process.pid, server_pid)
        began = time.perf_counter()
        live.publish_seconds, target, _ = await publish(nc, js, source, args.lines)
        published = time.perf_counter()
        live.lag = target - await _ack_floor(js)
        done = await _wait_committed(js, target, process, log)
        after = _cpu_pair(process.pid, server_pid)
        live.seconds, live.catch_up = done - began, done - published
        live.store_cpu, live.server_cpu = after[0] - before[0], after[1] - before[1]

        reply = await ApiClient(nc, ORG, timeout=60.0).call("history", "sql", {"sql": "SELECT count(*) FROM logs"})
        stored = reply["rows"][0][0]
    finally:
        if profiler is not None:
            profiler.stop()
        children.stop(process, 60.0)
    if stored != 2 * args.lines:
        live.notes.append(f"WARNING: history.sql counts {stored} log lines, {2 * args.lines} were published")
    return IngestRound(backlog, live, ready - spawned, _file_mb(db), stored, stream_bytes, payload / args.lines)


class Profile:
    """`py-spy record --threads` of the store (every thread, DuckDB's native work included
    as the Python line that called it) until stopped."""

    def __init__(self, pid: int, path: Path) -> None:
        binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.process = subprocess.Popen(
            [binary, "record", "--threads", "--nonblocking", "--rate", "100", "--format", "raw", "--pid", str(pid),
             "--duration", str(int(INGEST_TIMEOUT)), "--output", str(path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(2)  # py-spy writes its output on SIGINT
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


PROFILE_PARTS = (  # (part, frames that put a sample in it); the first part that matches wins
    ("DuckDB write (History.write, in a worker thread)", ("History.write",)),
    ("decode into columns (Ingest._batch, msgspec)", ("Ingest._batch", "Ingest._add")),
    ("ack", ("Msg.ack", "Puller.ack")),
    ("store.raw_inbox: framing socket reads into raw messages; store.puller",
     ("_RawParser._frame", "_RawParser._deliver", "_message_line", "Puller._on_messages")),
    ("nats-py socket read and parse (Parser.parse, headers, Msg objects)",
     ("Client._read_loop", "Parser.parse", "Client._process_msg", "Client._process_headers",
      "Client._parse_header_lines", "Client._build_message")),
    ("nats-py fetch(): per message a task, a wait_for timer, a uuid4",
     ("PullSubscription.fetch", "PullSubscription._fetch_n", "Subscription.next_msg", "wait_for", "timed_get",
      "_release_waiter", "uuid4", "create_task", "ensure_future")),
    ("asyncio loop: select", ("EpollSelector.select",)),
)
LOOP_REST = "asyncio loop: callbacks and task steps run in C (no Python frame of their own)"


def summarize_profile(path: Path, top: int = 10) -> str:
    """Where the store's samples are: per thread, per part of the ingest path
    (PROFILE_PARTS), and the functions on top of the stack."""
    threads: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total = 0
    samples = read_samples(path)
    if samples is None:
        return f"  (no profile at {path})"
    for frames, count in samples:
        thread = next((f for f in frames if f.startswith("thread ")), "thread ?")
        names = [frame_name(f) for f in frames if not f.startswith(("process ", "thread "))]
        total += count
        label = thread.partition(": ")[2] or thread
        threads["MainThread (the event loop)" if label == "MainThread" else
                f"{label} (asyncio.to_thread)" if label.startswith("asyncio_") else label] += count
        heads = {head for head, _ in names}
        part = next((part for part, marks in PROFILE_PARTS if any(h.endswith(m) for h in heads for m in marks)),
                    LOOP_REST)
        parts[part] += count
        if names:
            self_time[f"{names[-1][0]} ({names[-1][1]})"] += count
    if not total:
        return "  (no samples)"
    out = [f"  {total} samples at 100/s of running threads (100 samples = 1 s of CPU)", "  threads:"]
    out += [f"    {n * 100 / total:5.1f}%  {name}" for name, n in threads.most_common()]
    out.append("  parts of the ingest path:")
    out += [f"    {n * 100 / total:5.1f}%  {name}" for name, n in parts.most_common()]
    out.append("  self (top of the stack):")
    out += [f"    {n * 100 / total:5.1f}%  {name}" for name, n in self_time.most_common(top)]
    return "\n".join(out)


# ---- references: the store's halves alone ------------------------------------------

REFERENCE_LINES = 100_000


@dataclass
class Reference:
    label: str
    lines: int
    seconds: float
    cpu: float  # this process's CPU s, every thread
    server_cpu: float = float("nan")

    def row(self) -> str:
        server = "" if math.isnan(self.server_cpu) else f", nats-server {self.server_cpu / self.lines * 1e6:5.1f} us"
        return (f"  {self.label:<57} {_thousands(self.lines / self.seconds):>8} lines/s   CPU per line: "
                f"{self.cpu / self.lines * 1e6:5.1f} us{server}")


async def _reference_consumer(js: JetStreamContext, name: str) -> None:
    """A consumer like the store's, over what BD_EVENTS holds."""
    await js.add_consumer(streams.EVENTS, ConsumerConfig(
        durable_name=name, filter_subject=subjects.EVENTS_SUBJECTS[0], ack_policy=AckPolicy.ALL, ack_wait=300.0,
        deliver_policy=DeliverPolicy.ALL, max_ack_pending=-1, max_waiting=4))


async def reference_fetch(js: JetStreamContext, lines: int, server_pid: int) -> Reference:
    """nats-py's `fetch(FETCH, timeout=1.0)` and one ack per batch, as store/ingest.py
    reads, and nothing else: no decode, no DuckDB."""
    name = "bench_fetch"
    await _reference_consumer(js, name)
    sub = await js.pull_subscribe_bind(durable=name, stream=streams.EVENTS)
    try:
        got, began, cpu, server = 0, time.perf_counter(), time.process_time(), cpu_seconds(server_pid) or 0.0
        while got < lines:
            messages = await sub.fetch(min(FETCH, lines - got), timeout=1.0)
            got += len(messages)
            await messages[-1].ack()
        return Reference(f"nats-py fetch({FETCH}) + ack (the store's read)", got, time.perf_counter() - began,
                         time.process_time() - cpu, (cpu_seconds(server_pid) or 0.0) - server)
    finally:
        await sub.unsubscribe()
        await js.delete_consumer(streams.EVENTS, name)


async def reference_pull(nc: Client, js: JetStreamContext, lines: int, server_pid: int) -> Reference:
    """The same reads with plain pull requests (`$JS.API.CONSUMER.MSG.NEXT`) whose
    messages arrive in a callback subscription: no task, timer or uuid per message."""
    name = "bench_pull"
    await _reference_consumer(js, name)
    box: list[Any] = []
    full = asyncio.Event()
    wanted = 0

    async def on_msg(msg: Any) -> None:
        if not msg.data and msg.headers and msg.headers.get("Status"):  # 404/408: nothing more for this request
            full.set()
            return
        box.append(msg)
        if len(box) >= wanted:
            full.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)
    try:
        got, began, cpu, server = 0, time.perf_counter(), time.process_time(), cpu_seconds(server_pid) or 0.0
        while got < lines:
            box.clear()
            full.clear()
            wanted = min(FETCH, lines - got)
            request = msgspec.json.encode({"batch": wanted, "expires": 1_000_000_000})
            await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{streams.EVENTS}.{name}", request, reply=inbox)
            await full.wait()
            got += len(box)
            if box:
                await box[-1].ack()
        return Reference("pull request + callback subscription, + ack", got, time.perf_counter() - began,
                         time.process_time() - cpu, (cpu_seconds(server_pid) or 0.0) - server)
    finally:
        await sub.unsubscribe()
        await js.delete_consumer(streams.EVENTS, name)


async def reference_puller(nc: Client, js: JetStreamContext, lines: int, server_pid: int) -> Reference:
    """The store's reader itself: `store.puller.Puller` (raw inbox, the next request sent
    before a batch is handed on) and one ack per batch: no decode, no DuckDB."""
    name = "bench_puller"
    await _reference_consumer(js, name)
    puller = Puller(nc, streams.EVENTS, name, FETCH)
    await puller.start()
    try:
        got, began, cpu, server = 0, time.perf_counter(), time.process_time(), cpu_seconds(server_pid) or 0.0
        while got < lines:
            messages = await puller.next_batch()
            got += len(messages)
            if messages:
                await puller.ack(messages[-1])
        return Reference(f"store.puller ({FETCH}-line pulls, raw inbox) + ack", got, time.perf_counter() - began,
                         time.process_time() - cpu, (cpu_seconds(server_pid) or 0.0) - server)
    finally:
        await puller.stop()
        await js.delete_consumer(streams.EVENTS, name)


def reference_write(path: Path, lines: int) -> Reference:
    """The store's own work without NATS: `Ingest._batch` (decode into columns) and
    `History.write` of FETCH-line batches, in this process."""
    source = LineSource(INGEST_EXECUTIONS, seed=0)
    messages = [_raw_message(seq, subject, payload, headers)
                for seq, (subject, payload, headers) in enumerate(source.take(lines), start=1)]
    history = History(path)
    ingest = Ingest(None, history)  # type: ignore[arg-type]  # no NATS: only its decoding is used
    try:
        began, cpu = time.perf_counter(), time.process_time()
        for first in range(0, lines, FETCH):
            history.write(ingest._batch(messages[first:first + FETCH]))
        return Reference(f"decode (Ingest._batch) + History.write, {FETCH}-line batches", lines,
                         time.perf_counter() - began, time.process_time() - cpu)
    finally:
        history.close()


def _raw_message(seq: int, subject: str, payload: bytes, headers: dict[str, str]) -> RawMessage:
    """A line as `store.raw_inbox` hands it to the ingest."""
    reply = f"$JS.ACK.{streams.EVENTS}.{CONSUMER}.1.{seq}.{seq}.0.0".encode()
    block = ("NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
    return subject.encode(), reply, block, payload


async def references(nc: Client, js: JetStreamContext, server_pid: int, work: Path, lines: int) -> list[Reference]:
    return [await reference_fetch(js, lines, server_pid), await reference_pull(nc, js, lines, server_pid),
            await reference_puller(nc, js, lines, server_pid),
            await asyncio.to_thread(reference_write, work / "reference.duckdb", lines)]


# ---- generated history ---------------------------------------------------------------

# Uniform [0, 1) and (0, 1] from a hash of the row number and a salt: deterministic,
# and independent between columns.
MACROS = """
CREATE OR REPLACE TEMP MACRO u(i, salt) AS (hash(i, salt) % 1000003) / 1000003.0;
CREATE OR REPLACE TEMP MACRO u1(i, salt) AS ((hash(i, salt) % 1000003) + 1) / 1000004.0;
CREATE OR REPLACE TEMP MACRO normal(i, salt) AS sqrt(-2 * ln(u1(i, salt || '1'))) * cos(2 * pi() * u(i, salt || '2'));
"""

# One row per execution with what the tables are derived from. Queued times are spread
# evenly over DAYS days (jittered); 40% come from one of 20 batches (1-3 actions);
# tasks are skewed (task 0 runs most), each with its own failure rate (1%-9%, about 5%
# overall) and median duration (0.3 s - 2 min, lognormal, sigma 0.9); the last five are
# still running.
GENERATE = """
CREATE TEMP TABLE gen AS
WITH base AS (
    SELECT i,
           CASE WHEN i % 10 = 9 THEN '{other}' ELSE '{org}' END AS org,
           floor(pow(u(i, 'task'), 1.6) * {tasks})::INTEGER AS task_no,
           u(i, 'batch') < 0.4 AS from_batch,
           u(i, 'status') AS us,
           {start_ms} + (i * {step_ms})::BIGINT + floor(u(i, 'jitter') * {step_ms})::BIGINT AS queued_ms,
           greatest(1, round(exp(ln(40) + 0.8 * normal(i, 'wait'))))::BIGINT AS wait_ms,
           normal(i, 'duration') AS z
    FROM range({executions}) t(i)
), typed AS (
    SELECT *,
           CASE WHEN i >= {executions} - 5 THEN 'running'
                WHEN us < p_fail * 0.8 THEN 'failed'
                WHEN us < p_fail * 0.9 THEN 'timed_out'
                WHEN us < p_fail THEN 'lost'
                WHEN us < p_fail + 0.01 THEN 'canceled'
                WHEN us < p_fail + 0.015 THEN 'skipped'
                ELSE 'succeeded' END AS status,
           CASE WHEN from_batch THEN 1 + task_no % 3 ELSE 1 END AS n_actions,
           greatest(1, round(exp(ln(300) + (task_no % 17) / 16.0 * ln(400) + 0.9 * z)))::BIGINT AS dur
    FROM (SELECT *, 0.01 + 0.08 * (task_no % 10) / 9.0 AS p_fail FROM base)
)
SELECT *,
       upper(lpad(to_hex(queued_ms), 12, '0') || substr(md5(i::VARCHAR), 1, 14)) AS id,
       'task-' || lpad(task_no::VARCHAR, 3, '0') AS task_id,
       CASE WHEN from_batch THEN 'batch-' || lpad((task_no % 20)::VARCHAR, 2, '0') END AS batch_id,
       queued_ms + wait_ms AS started_ms
FROM typed
"""

INSERT_EXECUTIONS = """
INSERT INTO bd_history.executions
SELECT org, id, batch_id,
       CASE WHEN NOT from_batch THEN task_id END,
       CASE WHEN from_batch THEN 'nightly ' || batch_id ELSE 'job ' || task_id END,
       CASE WHEN from_batch THEN upper(md5('trigger' || i::VARCHAR))[:26] END,
       CASE WHEN from_batch THEN 'cron' ELSE 'api' END,
       status,
       CASE WHEN u(i, 'attempt') < 0.01 THEN 2 ELSE 1 END,
       'default',
       CASE WHEN status <> 'skipped' THEN 'runner-' || (hash(i, 'runner') % 8)::VARCHAR END,
       to_timestamp(queued_ms / 1000.0),
       CASE WHEN status <> 'skipped' THEN to_timestamp(started_ms / 1000.0) END,
       CASE WHEN status NOT IN ('skipped', 'running') THEN to_timestamp((started_ms + dur) / 1000.0) END,
       CASE WHEN status NOT IN ('skipped', 'running') THEN dur END,
       CASE WHEN status = 'succeeded' THEN 100.0 END,
       NULL,
       CASE WHEN status = 'succeeded' AND u(i, 'result') < 0.3
            THEN '{{"rows": ' || (hash(i, 'rows') % 100000)::VARCHAR || '}}' END,
       CASE status WHEN 'failed' THEN 'exit code 1' WHEN 'timed_out' THEN 'timed out after 3600 s'
                   WHEN 'lost' THEN 'runner lost (no heartbeat for 30 s)' END,
       '{{}}',
       CASE WHEN status = 'skipped' THEN 1 ELSE 4 END
FROM gen ORDER BY i
"""

# Every action of a batch execution runs one task; all but the last succeeded, the
# last ended as the execution did; the duration is split evenly.
INSERT_ACTIONS = """
INSERT INTO bd_history.execution_actions
SELECT org, id, k,
       'task-' || lpad(((task_no + k * 37) % {tasks})::VARCHAR, 3, '0'),
       CASE WHEN k < n_actions - 1 AND status NOT IN ('skipped') THEN 'succeeded' ELSE status END AS s,
       CASE s WHEN 'succeeded' THEN 0 WHEN 'failed' THEN 1 END,
       CASE WHEN status <> 'skipped' THEN to_timestamp((started_ms + dur * k / n_actions) / 1000.0) END,
       CASE WHEN status NOT IN ('skipped', 'running') OR k < n_actions - 1
            THEN to_timestamp((started_ms + dur * (k + 1) / n_actions) / 1000.0) END,
       CASE WHEN status NOT IN ('skipped', 'running') OR k < n_actions - 1 THEN dur // n_actions END,
       CASE WHEN s = 'failed' THEN 'exit code 1' END
FROM (SELECT *, unnest(range(n_actions)) AS k FROM gen)
ORDER BY i, k
"""

# Lines per execution: 60% a few, 30% a dozen or so, 9% about 50, 1% hundreds, scaled
# so that the total is about `log_rows`; skipped executions have none, and one chatty
# execution mid-history has 1% of all lines (the one the log queries read). Lines are
# spread over the execution's run time, in execution (time) order, as the ingest
# writes them.
INSERT_LOGS = """
INSERT INTO bd_history.logs
WITH chatty AS (
    SELECT min(i) AS i FROM gen WHERE i >= {executions} // 2 AND org = '{org}' AND status = 'succeeded'
), counted AS (
    SELECT *, CASE WHEN status = 'skipped' THEN 0
                   WHEN i = (SELECT i FROM chatty) THEN {chatty_lines}
                   ELSE greatest(1, round(raw * {log_rows} * 0.99 / sum(raw) OVER ()))::BIGINT END AS n_lines
    FROM (SELECT *, CASE WHEN u(i, 'lines') < 0.60 THEN 1 + hash(i, 'n') % 5
                         WHEN u(i, 'lines') < 0.90 THEN 5 + hash(i, 'n') % 20
                         WHEN u(i, 'lines') < 0.99 THEN 20 + hash(i, 'n') % 60
                         ELSE 100 + hash(i, 'n') % 1000 END AS raw
          FROM gen)
), lines AS (
    SELECT i, org, id, status, n_actions, n_lines, started_ms, dur, unnest(range(1, n_lines + 1)) AS idx
    FROM counted
)
SELECT org, id, idx,
       to_timestamp((started_ms + dur * idx / (n_lines + 1)) / 1000.0),
       CASE WHEN idx = n_lines AND status IN ('failed', 'timed_out') THEN 'error'
            WHEN hash(i, idx, 'w') % 40 = 0 THEN 'warning' ELSE 'info' END AS level,
       CASE WHEN level = 'info' THEN 'stdout' ELSE 'stderr' END,
       ((idx - 1) * n_actions // n_lines)::INTEGER,
       CASE hash(i, idx, 'm') % 5
           WHEN 0 THEN 'processing item ' || (hash(i, idx, 'a') % 100000)::VARCHAR || ' of 100000: ok in '
                       || round(u(i * 1000 + idx, 'ms') * 50, 1)::VARCHAR || ' ms (worker '
                       || (hash(i, 'w') % 8)::VARCHAR || ', chunk ' || (idx // 20)::VARCHAR || ')'
           WHEN 1 THEN 'GET https://api.partner-' || (hash(i, 'w') % 8)::VARCHAR || '.example.com/v2/orders?page='
                       || idx::VARCHAR || ' 200 ' || (hash(i, idx, 'ms') % 900)::VARCHAR || ' ms '
                       || (hash(i, idx, 'b') % 100000)::VARCHAR || ' bytes'
           WHEN 2 THEN 'committed ' || (hash(i, idx, 'a') % 100000)::VARCHAR || ' rows to warehouse.sales_'
                       || (hash(i, 'c') % 1000)::VARCHAR || ' in ' || (hash(i, idx, 'ms') % 900)::VARCHAR
                       || ' ms, watermark ' || to_hex(hash(i, idx, 'h') % 4294967296)
           WHEN 3 THEN 'row ' || (hash(i, idx, 'a') % 100000)::VARCHAR || ': customer '
                       || to_hex(hash(i, idx, 'h') % 4294967296) || ' skipped, not found in dim_customer (batch '
                       || (hash(i, 'c') % 1000)::VARCHAR || ')'
           ELSE 'uploaded part ' || idx::VARCHAR || ' to s3://bd-exports/' || to_hex(hash(i, 'h') % 4294967296)
                || '/ (' || (hash(i, idx, 'b') % 100000)::VARCHAR || ' bytes, attempt 1 of 5)'
       END
FROM lines ORDER BY i, idx
"""


@dataclass
class Generated:
    path: Path
    executions: int
    actions: int
    log_rows: int
    other_share: float
    seconds: float
    mb_without_logs: float
    mb: float
    big_execution: str  # the org's chatty execution: the most lines
    big_lines: int
    typical_execution: str  # one with the median number of lines
    typical_lines: int


def generate(path: Path, executions: int, log_rows: int) -> Generated:
    """Write a history file of `executions` executions (with actions) and about
    `log_rows` log lines, checkpointed; sizes measured before and after the logs."""
    began = time.perf_counter()
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start_ms = int((end - timedelta(days=DAYS)).timestamp() * 1000)
    step_ms = DAYS * 86_400_000 / executions
    names = {"org": ORG, "other": OTHER_ORG, "tasks": TASKS, "executions": executions, "start_ms": start_ms,
             "step_ms": step_ms, "log_rows": log_rows, "chatty_lines": max(1000, log_rows // 100)}
    conn = duckdb.connect(str(path))
    try:
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute("SET enable_progress_bar = false")
        schema.create(conn)
        conn.execute(MACROS)
        conn.execute(GENERATE.format(**names))
        conn.execute(INSERT_EXECUTIONS.format(**names))
        conn.execute(INSERT_ACTIONS.format(**names))
        conn.execute("CHECKPOINT")
        without_logs = _file_mb(path)
        conn.execute(INSERT_LOGS.format(**names))
        conn.execute("DROP TABLE gen")
        conn.execute("CHECKPOINT")
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM bd_history.executions), (SELECT count(*) FROM bd_history.execution_actions), "
            "(SELECT count(*) FROM bd_history.logs), "
            "(SELECT avg((org <> ?)::INTEGER) FROM bd_history.executions)", [ORG]).fetchone()
        per_execution = conn.execute(
            "SELECT execution_id, count(*) AS n FROM bd_history.logs WHERE org = ? GROUP BY execution_id "
            "ORDER BY n DESC, execution_id", [ORG]).fetchall()
    finally:
        conn.close()
    big, typical = per_execution[0], per_execution[len(per_execution) // 2]
    return Generated(path, counts[0], counts[1], counts[2], counts[3], time.perf_counter() - began, without_logs,
                     _file_mb(path), big[0], big[1], typical[0], typical[1])


# ---- queries -------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    label: str
    sql: str
    params: tuple[Any, ...] = ()
    service: bool = False  # run as the store's exec.logs does: on bd_history directly, not through sql.run


def queries(data: Generated) -> list[Query]:
    big = data.big_execution
    page = ("SELECT idx, ts, level, stream, action_index, msg FROM logs WHERE execution_id = ? AND idx > ? "
            "ORDER BY idx LIMIT 1000")
    return [
        Query("sql.run overhead (SELECT 1)", "SELECT 1"),
        Query("task_stats by failed", "SELECT * FROM task_stats ORDER BY failed DESC"),
        Query("daily_runs p95", "SELECT day, p95_ms FROM daily_runs ORDER BY day"),
        Query("p95 per day (executions)", "SELECT date_trunc('day', queued_at) AS d, quantile_cont(duration_ms, 0.95) "
              "FROM executions GROUP BY d ORDER BY d"),
        Query("count(*) logs of 1 execution", f"SELECT count(*) FROM logs WHERE execution_id = '{big}'"),
        Query("logs page mid-way (sql.run)", page, (big, data.big_lines // 2)),
        Query("exec.logs page 1 (service)",
              "SELECT idx, ts, level, stream, action_index, msg FROM bd_history.logs "
              "WHERE org = ? AND execution_id = ? AND idx > ? ORDER BY idx ASC LIMIT ?",
              (ORG, big, 0, 1000), service=True),
        Query("exec.logs desc, small (service)",
              "SELECT idx, ts, level, stream, action_index, msg FROM bd_history.logs "
              "WHERE org = ? AND execution_id = ? AND idx > ? ORDER BY idx DESC LIMIT ?",
              (ORG, data.typical_execution, 0, 1000), service=True),
    ]


@dataclass
class Timing:
    query: Query
    seconds: list[float] = field(default_factory=list)
    rows: int = 0
    error: str = ""


def time_queries(history: History, plan: list[Query], rounds: int) -> list[Timing]:
    """Each query `rounds` times (all queries per round), each on a fresh cursor."""
    timings = [Timing(q) for q in plan]
    for _ in range(rounds):
        for timing in timings:
            query = timing.query
            began = time.perf_counter()
            cursor = history.cursor()
            try:
                if query.service:
                    timing.rows = len(cursor.execute(query.sql, list(query.params)).fetchall())
                else:
                    timing.rows = len(sql.run(cursor, ORG, query.sql, list(query.params))["rows"])
            except sql.Refused as err:
                timing.error = str(err)
            finally:
                cursor.close()
            timing.seconds.append(time.perf_counter() - began)
    return timings


# ---- output --------------------------------------------------------------------------

INGEST_COLUMNS = [  # key, header, unit, width, format
    ("lines", "lines", "", 9, ",.0f"), ("seconds", "seconds", "(s)", 7, ".2f"), ("rate", "lines/s", "", 9, ",.0f"),
    ("store_cpu", "store cpu", "(s/100k)", 9, ".2f"), ("store_cpu_s", "store cpu", "(s/s)", 9, ".2f"),
    ("server_cpu", "nats cpu", "(s/100k)", 9, ".2f"), ("publish", "publish", "(lines/s)", 9, ",.0f"),
    ("lag", "lag", "(lines)", 8, ",.0f"), ("catch_up", "catch-up", "(s)", 8, ".2f"),
]
INGEST_HEADER = (f"{'mode':<8} " + " ".join(f"{h:>{w}}" for _, h, _, w, _ in INGEST_COLUMNS) + "\n"
                 + f"{'':<8} " + " ".join(f"{u:>{w}}" for _, _, u, w, _ in INGEST_COLUMNS))


def _cell(value: float, width: int, fmt: str) -> str:
    return f"{'-':>{width}}" if math.isnan(value) else f"{value:>{width}{fmt}}".replace(",", " ")


def _ingest_row(label: str, stats: dict[str, float]) -> str:
    return f"{label:<8} " + " ".join(_cell(stats[k], w, f) for k, _, _, w, f in INGEST_COLUMNS)


def _thousands(number: float) -> str:
    return f"{number:,.0f}".replace(",", " ")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:9.1f}"


# ---- main ----------------------------------------------------------------------------


async def run_ingest(args: argparse.Namespace, children: Children, work: Path) -> list[IngestRound]:
    children.server = EmbeddedServer(work / "nats")
    url = await children.server.astart()
    nc = await nats.connect(url, name="bench-store", pending_size=16 * 1024 * 1024)
    js = nc.jetstream()
    rounds: list[IngestRound] = []
    try:
        drift = await streams.provision(js)
        if drift:
            raise RuntimeError("; ".join(drift))
        server = nc.connected_server_version
        print(f"versions: nats-server {server.major}.{server.minor}.{server.patch}, "
              f"nats-py {importlib.metadata.version('nats-py')}, duckdb {duckdb.__version__}, "
              f"msgspec {importlib.metadata.version('msgspec')}; {os.cpu_count()} CPUs, "
              f"Python {sys.version.split()[0]}")
        print(f"\n1. ingest: {_thousands(args.lines)} log lines over {INGEST_EXECUTIONS} executions, "
              f"backlog then live, {args.rounds} rounds", flush=True)
        for number in range(1, args.rounds + 1):
            result = await ingest_round(nc, js, url, args, children, work, number)
            rounds.append(result)
            print(f"\nround {number}\n{INGEST_HEADER}")
            print(_ingest_row("backlog", result.backlog.stats()))
            print(f"{'':<8} store startup {result.startup:.1f} s (spawn -> ready); line payload "
                  f"{result.payload_bytes_per_line:.0f} B, {result.stream_bytes_per_line:.0f} B per message in "
                  f"BD_EVENTS")
            print(_ingest_row("live", result.live.stats()))
            print(f"{'':<8} {_thousands(result.stored_lines)} lines in history.sql; file "
                  f"{result.file_mb:.1f} MB = {result.file_mb / (result.stored_lines / 1e6):.1f} MB per million lines")
            for note in result.backlog.notes + result.live.notes:
                print(f"{'':<8} {note}")
            sys.stdout.flush()
        lines = min(args.lines, REFERENCE_LINES)
        print(f"\nreferences: {_thousands(lines)} of the same lines, no store process (what bounds the store's rate)")
        for reference in await references(nc, js, children.server.process.pid, work, lines):
            print(reference.row())
        if args.profile is not None:
            path = args.profile / "store-backlog.txt"
            print(f"\npy-spy of the store during round 1's backlog ({path}):\n{summarize_profile(path)}")
    finally:
        await nc.close()
        children.server.stop()
        children.server = None
    return rounds


def run_queries(args: argparse.Namespace, work: Path) -> tuple[Generated, list[Timing]]:
    print(f"\n2. queries: generating {_thousands(args.executions)} executions and about "
          f"{_thousands(args.log_rows)} log lines", flush=True)
    data = generate(work / "generated.duckdb", args.executions, args.log_rows)
    print(f"generated in {data.seconds:.1f} s: {_thousands(data.executions)} executions "
          f"({data.other_share:.0%} in org {OTHER_ORG}), {_thousands(data.actions)} actions, "
          f"{_thousands(data.log_rows)} log lines; queried as org {ORG}; the log queries read "
          f"its largest execution ({_thousands(data.big_lines)} lines; median {data.typical_lines})", flush=True)
    history = History(data.path)
    try:
        timings = time_queries(history, queries(data), args.rounds)
    finally:
        history.close()
    print(f"\n{'query':<32} {'rows':>6} {'first':>9} {'median':>9} {'max':>9}\n"
          f"{'':<32} {'':>6} {'(ms)':>9} {'(ms)':>9} {'(ms)':>9}")
    for t in timings:
        print(f"{t.query.label:<32} {t.rows:>6} {_ms(t.seconds[0])} {_ms(statistics.median(t.seconds))} "
              f"{_ms(max(t.seconds))}" + (f"  refused: {t.error}" if t.error else ""))
    return data, timings


def report(args: argparse.Namespace, rounds: list[IngestRound], data: Generated | None,
           timings: list[Timing]) -> None:
    print("\n3. file size")
    print(f"{'source':<44} {'log lines':>11} {'MB':>8} {'MB per 1M lines':>15}")
    if data is not None:
        logs_mb = data.mb - data.mb_without_logs
        print(f"{'generated, logs only (CHECKPOINT)':<44} {_thousands(data.log_rows):>11} {logs_mb:>8.1f} "
              f"{logs_mb / (data.log_rows / 1e6):>15.1f}")
        print(f"{'generated, whole file':<44} {_thousands(data.log_rows):>11} {data.mb:>8.1f} "
              f"{data.mb / (data.log_rows / 1e6):>15.1f}   (with {_thousands(data.executions)} executions: "
              f"{data.mb_without_logs:.1f} MB)")
    for number, result in enumerate(rounds, 1):
        print(f"{f'store ingest, round {number} (after stop)':<44} {_thousands(result.stored_lines):>11} "
              f"{result.file_mb:>8.1f} {result.file_mb / (result.stored_lines / 1e6):>15.1f}")

    verdicts = []
    if rounds:
        print(f"\nmedian of {len(rounds)} ingest rounds\n{INGEST_HEADER}")
        medians = {}
        for mode in ("backlog", "live"):
            stats = [getattr(r, mode).stats() for r in rounds]
            medians[mode] = {k: statistics.median(s[k] for s in stats) for k in stats[0]}
            print(_ingest_row(mode, medians[mode]))
        for mode in ("backlog", "live"):
            rate = medians[mode]["rate"]
            verdicts.append(f"target ingest >= {_thousands(TARGET_LINES_PER_S)} lines/s ({mode}): "
                            f"{'met' if rate >= TARGET_LINES_PER_S else 'NOT met'} ({_thousands(rate)} lines/s)")
    if timings and data is not None:
        verdicts.append(f"target queries < {TARGET_QUERY_S:g} s (median) over {_thousands(data.executions)} executions "
                        f"and {_thousands(data.log_rows)} log lines:")
        for t in timings[1:]:
            median = statistics.median(t.seconds)
            ok = median < TARGET_QUERY_S and not t.error
            verdicts.append(f"  {t.query.label:<32} {'met' if ok else 'NOT met'} ({median * 1000:.0f} ms)")
    print()
    for line in verdicts:
        print(line)


def run(args: argparse.Namespace, children: Children, work: Path) -> None:
    rounds = asyncio.run(run_ingest(args, children, work)) if args.ingest else []
    # DuckDB work on the main thread: a Ctrl-C interrupts it.
    data, timings = run_queries(args, work) if args.queries else (None, [])
    report(args, rounds, data, timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000, help="log lines per ingest mode and round (default 1000000)")
    parser.add_argument("--executions", type=int, default=1_000_000,
                        help="executions in the generated history (default 1000000)")
    parser.add_argument("--log-rows", type=int, default=10_000_000,
                        help="log lines in the generated history, about (default 10000000)")
    parser.add_argument("--rounds", type=int, default=3, help="ingest rounds and runs of each query (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()))
    parser.add_argument("--no-ingest", dest="ingest", action="store_false", help="skip part 1")
    parser.add_argument("--no-queries", dest="queries", action="store_false", help="skip part 2")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy the store during round 1's backlog ingest into DIR (perturbs that round)")
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    run_with_children("batchdeck-store-bench-", lambda children, work: run(args, children, work))


if __name__ == "__main__":
    main()
