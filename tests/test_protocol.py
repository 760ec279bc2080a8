"""What an outside service sees with nothing but a NATS client and PROTOCOL.md: raw
request/reply with JSON bytes, the micro error convention, service discovery
($SRV.PING / $SRV.INFO / $SRV.STATS), several broker instances in one queue group,
and the org token check."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import nats
import pytest

from broker.service import ControlPlane

SERVICE = "batchdeck"
TIMEOUT = 5.0
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def raw(nc, subject: str, body: Any = None, data: bytes | None = None):
    """One request with JSON bytes, as any NATS client would send it."""
    payload = data if data is not None else json.dumps(body if body is not None else {}).encode()
    return await nc.request(subject, payload, timeout=TIMEOUT)


def error_of(msg) -> tuple[str, str, dict[str, Any]]:
    """(code header, message header, decoded body) of an error reply."""
    headers = msg.headers or {}
    return headers.get("Nats-Service-Error-Code"), headers.get("Nats-Service-Error"), json.loads(msg.data)


async def gather_replies(nc, subject: str, wait: float = 0.5) -> list[dict[str, Any]]:
    """Every reply to one request within `wait` seconds (PING/INFO/STATS are answered
    by every instance, not by one of a queue group)."""
    inbox = nc.new_inbox()
    replies: list[dict[str, Any]] = []
    sub = await nc.subscribe(inbox, cb=None)
    try:
        await nc.publish(subject, b"", reply=inbox)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while (left := deadline - loop.time()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                break
            replies.append(json.loads(msg.data))
    finally:
        await sub.unsubscribe()
    return replies


# ---- request/reply ------------------------------------------------------------------


async def test_raw_create_returns_json_task(broker, nc, org):
    reply = await raw(nc, f"bd.{org}.api.task.create", {"name": "raw", "command": ["echo", "hi"]})
    assert not (reply.headers or {}).get("Nats-Service-Error-Code")
    task = json.loads(reply.data)
    assert isinstance(task, dict)
    assert task["name"] == "raw"
    assert task["command"] == ["echo", "hi"]
    assert task["kind"] == "command"
    assert task["pool"] == "default"
    assert task["cancellable"] is True and task["trace"] is True and task["shell"] is False
    assert isinstance(task["id"], str) and task["id"]
    assert isinstance(task["version"], int) and task["version"] >= 1
    assert RFC3339_MS.match(task["created_at"]), task["created_at"]

    got = json.loads((await raw(nc, f"bd.{org}.api.task.get", {"id": task["id"]})).data)
    assert got == task


async def test_client_supplied_id_is_kept(broker, nc, org):
    reply = await raw(nc, f"bd.{org}.api.task.create", {"id": "my-own-id", "name": "x", "command": ["true"]})
    assert json.loads(reply.data)["id"] == "my-own-id"


async def test_error_reply_has_micro_headers_and_error_body(broker, nc, org):
    reply = await raw(nc, f"bd.{org}.api.task.get", {"id": "missing-task"})
    code, message, body = error_of(reply)
    assert code == "404"
    assert message and "missing-task" in message
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == 404
    assert isinstance(body["error"]["message"], str) and "missing-task" in body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)


async def test_validation_error_is_400_with_readable_message(broker, nc, org):
    reply = await raw(nc, f"bd.{org}.api.task.create", {"name": "no command"})
    code, message, body = error_of(reply)
    assert code == "400"
    assert body["error"]["code"] == 400
    assert "command" in body["error"]["message"]
    assert "\n" not in message  # a header value stays on one line


async def test_conflict_is_409_with_details(broker, nc, org):
    subject = f"bd.{org}.api.task.create"
    await raw(nc, subject, {"id": "dup", "name": "x", "command": ["true"]})
    code, _, body = error_of(await raw(nc, subject, {"id": "dup", "name": "x", "command": ["true"]}))
    assert code == "409"
    assert body["error"]["details"].get("id") == "dup"


async def test_malformed_json_is_400(broker, nc, org):
    code, _, body = error_of(await raw(nc, f"bd.{org}.api.task.create", data=b"{not json"))
    assert code == "400"
    assert body["error"]["code"] == 400


async def test_unknown_field_is_400_naming_it(broker, nc, org):
    reply = await raw(nc, f"bd.{org}.api.task.create", {"name": "x", "command": ["true"], "colour": "red"})
    code, _, body = error_of(reply)
    assert code == "400"
    assert "colour" in body["error"]["message"]


@pytest.mark.parametrize("org_token", ["ACME", "a" * 33, "ac$me"])
async def test_invalid_org_token_is_400(broker, nc, org_token):
    reply = await raw(nc, f"bd.{org_token}.api.task.create", {"name": "x", "command": ["true"]})
    code, _, body = error_of(reply)
    assert code == "400"
    assert "org" in body["error"]["message"]


async def test_invalid_org_token_is_400_on_every_kind_of_endpoint(broker, nc):
    for suffix in ("task.list", "batch.get", "exec.list", "runner.list"):
        code, _, _ = error_of(await raw(nc, f"bd.ACME.api.{suffix}", {}))
        assert code == "400", suffix


# ---- service discovery --------------------------------------------------------------


async def test_srv_ping_answers_with_the_service_name(broker, nc):
    reply = json.loads((await raw(nc, f"$SRV.PING.{SERVICE}", data=b"")).data)
    assert reply["name"] == SERVICE
    assert reply["type"] == "io.nats.micro.v1.ping_response"
    assert reply["id"]
    assert reply["version"]


async def test_srv_info_lists_the_api_endpoints(broker, nc):
    reply = json.loads((await raw(nc, f"$SRV.INFO.{SERVICE}.{broker.service.id}", data=b"")).data)
    assert reply["name"] == SERVICE
    assert reply["type"] == "io.nats.micro.v1.info_response"
    subjects = {e["subject"] for e in reply["endpoints"]}
    assert subjects, "no endpoints advertised"
    assert all(s.startswith("bd.*.api.") for s in subjects), subjects
    for suffix in (
        "task.create", "task.get", "task.list", "task.update", "task.delete", "task.start", "task.modules",
        "batch.create", "batch.get", "batch.list", "batch.update", "batch.delete", "batch.status", "batch.start",
        "exec.get", "exec.list", "exec.cancel", "runner.list",
    ):
        assert f"bd.*.api.{suffix}" in subjects, suffix
    # every endpoint shares the service's queue group: instances split the load
    assert len({e["queue_group"] for e in reply["endpoints"]}) == 1


async def test_srv_info_without_id_answers_too(broker, nc):
    replies = await gather_replies(nc, f"$SRV.INFO.{SERVICE}")
    assert any(r["id"] == broker.service.id for r in replies)
    assert all(r["name"] == SERVICE for r in replies)


async def test_srv_stats_count_error_replies_and_the_handlers_time(broker, nc, org):
    def task_get(reply: dict) -> dict:
        return next(e for e in reply["endpoints"] if e["name"] == "task-get")

    stats = f"$SRV.STATS.{SERVICE}.{broker.service.id}"
    before = task_get(json.loads((await raw(nc, stats, data=b"")).data))
    for i in range(3):
        reply = await raw(nc, f"bd.{org}.api.task.get", {"id": f"ghost-{i}"})
        assert reply.headers["Nats-Service-Error-Code"] == "404"
    after = task_get(json.loads((await raw(nc, stats, data=b"")).data))
    assert after["num_requests"] - before["num_requests"] == 3
    assert after["num_errors"] - before["num_errors"] == 3  # as Go's micro counts them
    assert after["last_error"].startswith("404:") and "'ghost-2'" in after["last_error"]
    assert after["processing_time"] > before["processing_time"]


# ---- several instances --------------------------------------------------------------


async def endpoint_requests(nc, service_id: str) -> int:
    reply = json.loads((await raw(nc, f"$SRV.STATS.{SERVICE}.{service_id}", data=b"")).data)
    return sum(e["num_requests"] for e in reply["endpoints"])


async def test_two_instances_answer_ping_and_share_requests(broker, nats_server, nc, org):
    second_nc = await nats.connect(nats_server.url, name="test-second-broker")
    second = ControlPlane(second_nc, second_nc.jetstream())
    try:
        drift = await second.start()
        assert drift == []
        ids = {r["id"] for r in await gather_replies(nc, f"$SRV.PING.{SERVICE}")}
        assert {broker.service.id, second.service.id} <= ids

        before = await endpoint_requests(nc, second.service.id)
        subject = f"bd.{org}.api.task.create"
        replies = await asyncio.gather(
            *(raw(nc, subject, {"id": f"t{i}", "name": f"task {i}", "command": ["true"]}) for i in range(40))
        )
        assert all(not (r.headers or {}).get("Nats-Service-Error-Code") for r in replies)
        listed = json.loads((await raw(nc, f"bd.{org}.api.task.list", {"per_page": 100})).data)
        assert listed["total"] == 40
        # the queue group spreads them: the second instance served some of the 40
        assert await endpoint_requests(nc, second.service.id) > before
    finally:
        await second.stop()
        await second_nc.close()

    # with the second one gone, the first keeps serving
    reply = await raw(nc, f"bd.{org}.api.task.get", {"id": "t0"})
    assert json.loads(reply.data)["id"] == "t0"
    ids = {r["id"] for r in await gather_replies(nc, f"$SRV.PING.{SERVICE}")}
    assert broker.service.id in ids and second.service.id not in ids

