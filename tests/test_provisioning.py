"""Stream/KV provisioning (idempotent, drift reported and never rewritten) and the
embedded nats-server (start, stop, restart on the same data directory)."""

from __future__ import annotations

import dataclasses

import socket
from collections.abc import AsyncIterator

import nats
import pytest
import pytest_asyncio
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType
from nats.js.errors import APIError

from broker import streams
from broker.server import EmbeddedServer, ServerError

STREAMS = (streams.RUNS, streams.TRIGGERS, streams.EVENTS)
BUCKETS = tuple(spec.name for spec in streams.BUCKETS)


def answers(server: EmbeddedServer) -> bool:
    """True when something speaks NATS on the server's address."""
    try:
        with socket.create_connection((server.host, server.port), timeout=0.5) as sock:
            return sock.recv(4).startswith(b"INFO")
    except OSError:
        return False


@pytest.fixture
def fresh_server(tmp_path) -> EmbeddedServer:
    """A nats-server of this test's own, with an empty store."""
    server = EmbeddedServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


@pytest_asyncio.fixture
async def fresh_nc(fresh_server) -> AsyncIterator[nats.aio.client.Client]:
    client = await nats.connect(fresh_server.url, name="test-provisioning")
    yield client
    await client.close()


# ---- provisioning -------------------------------------------------------------------


async def test_provision_on_the_running_system_reports_no_drift(broker, nc):
    js = nc.jetstream()
    assert await streams.provision(js) == []
    assert await streams.provision(js) == []


async def test_provision_creates_everything_then_is_idempotent(fresh_nc):
    js = fresh_nc.jetstream()
    assert await streams.provision(js) == []
    for name in STREAMS:
        await js.stream_info(name)
    for bucket in BUCKETS:
        await js.key_value(bucket)

    runs = (await js.stream_info(streams.RUNS)).config
    triggers = (await js.stream_info(streams.TRIGGERS)).config
    events = (await js.stream_info(streams.EVENTS)).config
    assert runs.retention == RetentionPolicy.WORK_QUEUE
    assert runs.subjects == ["bd.*.run.*"]
    assert triggers.retention == RetentionPolicy.WORK_QUEUE
    assert triggers.duplicate_window >= 120
    assert events.retention == RetentionPolicy.LIMITS
    assert events.max_age == pytest.approx(7 * 24 * 3600)
    assert all(c.storage == StorageType.FILE for c in (runs, triggers, events))

    assert await streams.provision(js) == []
    assert await streams.provision(js) == []
    # running it again did not add anything
    names = {info.config.name for info in await js.streams_info()}
    assert names == set(STREAMS) | {f"KV_{b}" for b in BUCKETS}


async def test_drifted_streams_are_reported_and_left_alone(fresh_nc):
    js = fresh_nc.jetstream()
    wanted = {config.name: config for config in streams.stream_configs()}
    # As batchdeck would make them, but for one setting each; and BD_EVENTS without direct gets.
    await js.add_stream(dataclasses.replace(wanted[streams.EVENTS], max_age=3600.0, allow_direct=False))
    await js.add_stream(dataclasses.replace(wanted[streams.RUNS], retention=RetentionPolicy.LIMITS))

    drift = await streams.provision(js)
    events_lines = [line for line in drift if streams.EVENTS in line]
    runs_lines = [line for line in drift if streams.RUNS in line]
    assert len(events_lines) == 1 and "max_age" in events_lines[0], drift
    assert "3600" in events_lines[0]
    assert len(runs_lines) == 1 and "retention" in runs_lines[0], drift
    assert "limits" in runs_lines[0].lower()
    assert len(drift) == 2, drift  # the rest matched or was created

    # not changed: an operator's decision
    assert (await js.stream_info(streams.EVENTS)).config.max_age == pytest.approx(3600.0)
    assert (await js.stream_info(streams.RUNS)).config.retention == RetentionPolicy.LIMITS
    # what was missing was created
    assert (await js.stream_info(streams.TRIGGERS)).config.retention == RetentionPolicy.WORK_QUEUE
    for bucket in BUCKETS:
        await js.key_value(bucket)

    # reported again on the next run: drift is not forgotten
    assert sorted(await streams.provision(js)) == sorted(drift)
    # but the direct gets runners need were switched on in place (made before they were asked for)
    assert (await js.stream_info(streams.EVENTS)).config.allow_direct is True


async def test_drifted_subjects_are_reported(fresh_nc):
    js = fresh_nc.jetstream()
    wanted = next(c for c in streams.stream_configs() if c.name == streams.TRIGGERS)
    await js.add_stream(dataclasses.replace(wanted, subjects=["bd.*.trigger.>"]))
    drift = await streams.provision(js)
    assert len(drift) == 1 and streams.TRIGGERS in drift[0] and "subjects" in drift[0], drift
    assert (await js.stream_info(streams.TRIGGERS)).config.subjects == ["bd.*.trigger.>"]


async def test_drifted_bucket_is_reported_and_left_alone(fresh_nc):
    js = fresh_nc.jetstream()
    await js.create_key_value(KeyValueConfig(bucket=streams.TASKS_BUCKET, history=3, storage=StorageType.FILE))
    drift = await streams.provision(js)
    assert len(drift) == 1, drift
    assert streams.TASKS_BUCKET in drift[0] and "history" in drift[0]
    assert (await js.stream_info(f"KV_{streams.TASKS_BUCKET}")).config.max_msgs_per_subject == 3


async def test_the_streams_are_bounded_and_say_what_goes_at_the_bound(fresh_nc):
    js = fresh_nc.jetstream()
    limits = streams.StreamLimits(events_max_bytes=10 * 2 ** 20, runs_max_bytes=2 ** 20, runs_per_pool=3)
    assert await streams.provision(js, limits=limits) == []
    events, runs = (await js.stream_info(streams.EVENTS)).config, (await js.stream_info(streams.RUNS)).config
    assert events.max_bytes == 10 * 2 ** 20 and events.discard == DiscardPolicy.OLD  # the oldest events go
    assert runs.max_bytes == 2 ** 20 and runs.discard == DiscardPolicy.NEW  # a run is refused, never dropped
    assert runs.max_msgs_per_subject == 3 and runs.discard_new_per_subject  # one org's pool cannot fill it
    for n in range(3):
        await js.publish("bd.acme.run.default", b"{}")
    with pytest.raises(APIError) as full:
        await js.publish("bd.acme.run.default", b"{}")
    assert full.value.err_code == streams.QUEUE_FULL
    await js.publish("bd.other.run.default", b"{}")  # another org's pool still takes runs
    drift = await streams.provision(js)  # the defaults differ from what this server has: said
    assert {line.split(":")[0] for line in drift} == {f"stream {streams.EVENTS}", f"stream {streams.RUNS}"}


async def test_provision_with_another_events_max_age_reports_drift(fresh_nc):
    js = fresh_nc.jetstream()
    assert await streams.provision(js, events_max_age=3 * 24 * 3600.0) == []
    assert (await js.stream_info(streams.EVENTS)).config.max_age == pytest.approx(3 * 24 * 3600.0)
    drift = await streams.provision(js)
    assert len(drift) == 1 and streams.EVENTS in drift[0] and "max_age" in drift[0], drift


# ---- the embedded server ------------------------------------------------------------


async def test_embedded_server_url_answers(fresh_server):
    assert fresh_server.url == f"nats://127.0.0.1:{fresh_server.port}"
    assert answers(fresh_server)
    client = await nats.connect(fresh_server.url)
    try:
        info = await client.jetstream().account_info()
        assert info is not None
    finally:
        await client.close()
    assert fresh_server.store_dir.is_dir()


def test_stop_is_idempotent(tmp_path):
    server = EmbeddedServer(tmp_path / "nats")
    server.stop()  # never started: nothing to do
    url = server.start()
    assert url == server.url and answers(server)
    server.stop()
    assert server.process is None
    assert not answers(server)
    server.stop()
    server.stop()
    assert not answers(server)


def test_start_on_a_taken_port_fails_clearly(tmp_path, nats_server):
    server = EmbeddedServer(tmp_path / "nats", port=nats_server.port)
    with pytest.raises(ServerError):
        server.start(timeout=5.0)
    server.stop()
    assert answers(nats_server)  # the one holding the port is unharmed


async def test_restart_on_the_same_data_dir_keeps_jetstream_data(tmp_path):
    server = EmbeddedServer(tmp_path / "nats")
    await server.astart()
    try:
        client = await nats.connect(server.url)
        js = client.jetstream()
        assert await streams.provision(js) == []
        kv = await js.key_value(streams.TASKS_BUCKET)
        revision = await kv.put("acme.kept", b'{"name": "survivor"}')
        await client.close()

        await server.astop()
        assert not answers(server)
        await server.astart()
        assert answers(server)

        client = await nats.connect(server.url)
        js = client.jetstream()
        await streams.wait_for_jetstream(js)
        kv = await js.key_value(streams.TASKS_BUCKET)
        entry = await kv.get("acme.kept")
        assert entry.value == b'{"name": "survivor"}'
        assert entry.revision == revision
        assert await streams.provision(js) == []  # the streams survived as they were
        await client.close()
    finally:
        await server.astop()


async def test_restart_after_a_crash_keeps_acknowledged_writes(tmp_path):
    server = EmbeddedServer(tmp_path / "nats")
    await server.astart()
    try:
        client = await nats.connect(server.url)
        js = client.jetstream()
        await streams.provision(js)
        kv = await js.key_value(streams.EXECS_BUCKET)
        await kv.put("acme.e1", b"queued")
        await client.close()

        server.kill()
        assert server.process is None
        await server.astart()

        client = await nats.connect(server.url)
        js = client.jetstream()
        await streams.wait_for_jetstream(js)
        kv = await js.key_value(streams.EXECS_BUCKET)
        assert (await kv.get("acme.e1")).value == b"queued"
        await client.close()
    finally:
        await server.astop()
