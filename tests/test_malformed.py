"""Hostile and malformed input on every API endpoint.

A Hypothesis sweep sends random bytes, random JSON values (non-objects, wrong types,
unknown fields, huge strings, deep nesting, hostile strings) and plausible bodies with
real ids of this org to every endpoint. Every reply must be either a success (the input
happened to be valid) or a well-formed error with code 400, 404 or 409: never a 500,
never a timeout. Deterministic cases pin the size limit and a few known edges.

The requests go raw over NATS (as any client's would), so the error headers are
checked too. Hypothesis runs each example on the session event loop (pytest-asyncio
drives async @given tests), where the broker lives.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from nats.errors import TimeoutError as NatsTimeout

LIMIT = 256 * 1024
TIMEOUT = 5.0
ALLOWED_ERRORS = {"400", "404", "409"}

ENDPOINTS = [
    ("task", "create"), ("task", "get"), ("task", "list"), ("task", "update"), ("task", "delete"),
    ("task", "start"), ("task", "modules"),
    ("batch", "create"), ("batch", "get"), ("batch", "list"), ("batch", "update"), ("batch", "delete"),
    ("batch", "status"), ("batch", "start"),
    ("exec", "get"), ("exec", "list"), ("exec", "cancel"),
    ("runner", "list"),
]

FIELDS = [
    "id", "name", "description", "kind", "command", "module", "params", "shell", "env", "cwd", "pool",
    "timeout_sec", "retries", "retry_backoff_sec", "cancellable", "trace", "owner", "system", "notify",
    "cron_expression", "schedule", "timezone", "is_enabled", "run_on_startup", "actions", "concurrency",
    "catch_up", "max_catch_up", "filter", "sort", "page", "per_page", "include_deleted", "force", "context",
    "source", "deadline", "version", "state", "created_at", "start_count",
]

HOSTILE = [
    "{{ x }}", "{{ x | attr('__class__') }}", "$(rm -rf /)", "`id`", "; rm -rf / #", "a\nb", "\r\n\r\n",
    "\x00", "a\x00b", "\u202e\u0647", "😀", "' OR 1=1 --", "../../etc/passwd", "*", ">", "a b", ".", "a.",
    "..", "bd.other.api.task.get", "%s%n%x", "\t", "", " ", "\\", '"', "null", "NaN", "-1", "1e999",
    "0 0 31 2 *", "@reboot", "* * * * * * *", "Europe/Nowhere",
]


# ---- strategies ---------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(HOSTILE)
)
keys = st.sampled_from(FIELDS) | st.sampled_from(HOSTILE) | st.text(max_size=12)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)
huge_strings = st.builds(lambda piece, n: piece * n, st.sampled_from(["x", "{{ x }}", "\x00", "é", "a\n"]),
                         st.integers(1_000, 40_000))


def nest(value: Any, depth: int, as_list: bool) -> bytes:
    """JSON text of `value` nested `depth` levels deep (built as text: json.dumps would
    hit Python's own recursion limit)."""
    inner = json.dumps(value).encode()
    if as_list:
        return b"[" * depth + inner + b"]" * depth
    return b'{"a":' * depth + inner + b"}" * depth


class Deep:
    """A deeply nested value inside a generated body, spliced in as text by encode()."""

    def __init__(self, text: bytes) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Deep({self.text[:40]!r}... {len(self.text)} bytes)"


deep_values = st.builds(lambda *args: Deep(nest(*args)), scalars, st.integers(1, 3_000), st.booleans())


def encode(value: Any, ascii_only: bool) -> bytes:
    """JSON bytes of a generated value; Deep parts are spliced in as text."""
    spliced: dict[str, bytes] = {}

    def placeholder(obj: Any) -> str:
        if isinstance(obj, Deep):
            key = f"__deep_{len(spliced)}__"
            spliced[key] = obj.text
            return key
        raise TypeError(type(obj).__name__)

    text = json.dumps(value, ensure_ascii=ascii_only, allow_nan=False, default=placeholder)
    data = text.encode("utf-8", "surrogatepass")
    for key, deep in spliced.items():
        data = data.replace(f'"{key}"'.encode(), deep)
    return data


def bodies(ids: list[str]) -> st.SearchStrategy[bytes]:
    """Request bodies: garbage, JSON that is not an object, objects of wrong shapes,
    and objects that look right but carry bad values (with real ids of this org)."""
    any_id = st.sampled_from(ids) | st.sampled_from(HOSTILE) | st.text(max_size=70)
    field_value = json_values | huge_strings | deep_values | st.sampled_from(ids)
    plausible = st.builds(
        lambda id_, extra: {"id": id_, **extra},
        any_id,
        st.dictionaries(st.sampled_from(FIELDS), field_value, max_size=4),
    )
    objects = st.dictionaries(keys, json_values | huge_strings, max_size=6)
    as_json = st.builds(encode, json_values | objects | deep_values, st.booleans())
    # plausible bodies get more weight: they reach furthest into the handlers
    as_plausible = st.builds(encode, plausible, st.booleans())
    return st.binary(max_size=600) | as_json | as_plausible | as_plausible | st.sampled_from(
        [b"", b"null", b"[]", b"{}", b"0", b'"x"', b"{", b"}", b'{"id":NaN}', b'{"id":Infinity}', b"\xff\xfe",
         b'{"id": "a", "id": "b"}', b"{}" * 3]
    )


# ---- helpers ------------------------------------------------------------------------


async def send(nc, org: str, resource: str, verb: str, data: bytes):
    subject = f"bd.{org}.api.{resource}.{verb}"
    try:
        return await nc.request(subject, data, timeout=TIMEOUT)
    except NatsTimeout:
        pytest.fail(f"{resource}.{verb}: no reply within {TIMEOUT} s to {data[:200]!r}")


def check_reply(resource: str, verb: str, data: bytes, msg) -> str | None:
    """Assert the reply is a success or a well-formed 400/404/409; return the code."""
    what = f"{resource}.{verb} <- {data[:300]!r} (len {len(data)})"
    headers = msg.headers or {}
    code = headers.get("Nats-Service-Error-Code")
    try:
        body = json.loads(msg.data)
    except ValueError:
        pytest.fail(f"{what}: reply is not JSON: {msg.data[:300]!r}")
    if code is None:
        assert isinstance(body, dict), f"{what}: success reply is not an object: {msg.data[:300]!r}"
        assert "error" not in body or set(body) != {"error"}, f"{what}: error body without error headers"
        return None
    assert code in ALLOWED_ERRORS, f"{what}: -> {code} {msg.data[:400]!r}"
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"{what}: bad error body {body!r}"
    error = body["error"]
    assert error.get("code") == int(code), f"{what}: body code {error.get('code')} != header {code}"
    assert isinstance(error.get("message"), str) and error["message"], f"{what}: empty message"
    assert isinstance(error.get("details"), dict), f"{what}: details is not an object"
    header_message = headers.get("Nats-Service-Error", "")
    assert header_message and "\n" not in header_message and "\r" not in header_message, what
    return code


async def call_ok(nc, org: str, resource: str, verb: str, body: dict[str, Any]) -> dict[str, Any]:
    msg = await send(nc, org, resource, verb, json.dumps(body).encode())
    assert not (msg.headers or {}).get("Nats-Service-Error-Code"), msg.data
    return json.loads(msg.data)


@pytest_asyncio.fixture
async def seeded(broker, nc, org) -> list[str]:
    """Real ids of this org (a task, a disabled batch, a queued execution), so the sweep
    reaches past the 404s into the code that works on existing objects."""
    task = await call_ok(nc, org, "task", "create", {"id": "seed-task", "name": "seed", "command": ["echo", "hi"]})
    await call_ok(nc, org, "batch", "create", {
        "id": "seed-batch", "name": "seed", "cron_expression": "0 3 * * *", "is_enabled": False,
        "run_on_startup": False, "actions": [{"task_id": task["id"]}],
    })
    started = await call_ok(nc, org, "task", "start", {"id": task["id"]})
    return ["seed-task", "seed-batch", started["execution_id"]]


# ---- the sweep ----------------------------------------------------------------------


@pytest.mark.parametrize(("resource", "verb"), ENDPOINTS, ids=[f"{r}.{v}" for r, v in ENDPOINTS])
@settings(
    max_examples=40,
    deadline=None,
    database=None,
    # no shrinking: a failure reports the body that failed (the assertion shows it), at
    # once, instead of spending many more requests looking for a smaller one
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
async def test_every_reply_is_success_or_a_clean_client_error(resource, verb, data, nc, org, seeded):
    body = data.draw(bodies(seeded), label="body")
    # several huge strings together can pass the server's max_payload, which the client
    # itself refuses to send: cut such a body (a truncated body is as good a test)
    body = body[: nc.max_payload - 4096]
    msg = await send(nc, org, resource, verb, body)
    check_reply(resource, verb, body, msg)


async def test_service_still_answers_after_the_sweep(broker, nc, org):
    task = await call_ok(nc, org, "task", "create", {"name": "after the storm", "command": ["true"]})
    got = await call_ok(nc, org, "task", "get", {"id": task["id"]})
    assert got["name"] == "after the storm"


# ---- deterministic cases ------------------------------------------------------------


@pytest.mark.parametrize(("resource", "verb"), [("task", "create"), ("task", "get"), ("batch", "update"),
                                                ("exec", "list"), ("runner", "list")])
async def test_body_over_the_limit_is_400_naming_it(broker, nc, org, resource, verb):
    body = json.dumps({"name": "big", "command": ["true"], "description": "x" * (300 * 1024)}).encode()
    assert LIMIT < len(body) < 1024 * 1024
    msg = await send(nc, org, resource, verb, body)
    assert check_reply(resource, verb, body, msg) == "400"
    error = json.loads(msg.data)["error"]
    assert str(LIMIT) in error["message"]
    assert error["details"]["limit"] == LIMIT
    assert error["details"]["size"] == len(body)


async def test_body_exactly_at_the_limit_is_not_refused_for_size(broker, nc, org):
    core = json.dumps({"name": "padded", "command": ["true"]}).encode()
    body = core[:-1] + b" " * (LIMIT - len(core)) + b"}"
    assert len(body) == LIMIT
    msg = await send(nc, org, "task", "create", body)
    assert not (msg.headers or {}).get("Nats-Service-Error-Code"), msg.data[:300]
    assert json.loads(msg.data)["name"] == "padded"

    over = core[:-1] + b" " * (LIMIT + 1 - len(core)) + b"}"
    msg = await send(nc, org, "task", "create", over)
    assert check_reply("task", "create", over, msg) == "400"


async def test_empty_body_on_get_is_400_naming_id(broker, nc, org):
    msg = await send(nc, org, "task", "get", b"")
    assert check_reply("task", "get", b"", msg) == "400"
    assert "id" in json.loads(msg.data)["error"]["message"]


async def test_empty_body_on_list_means_defaults(broker, nc, org):
    msg = await send(nc, org, "task", "list", b"")
    assert check_reply("task", "list", b"", msg) is None
    assert json.loads(msg.data) == {"items": [], "page": 1, "per_page": 50, "total": 0, "pages": 0}


@pytest.mark.parametrize(("resource", "verb"), ENDPOINTS, ids=[f"{r}.{v}" for r, v in ENDPOINTS])
async def test_json_array_body_is_400(broker, nc, org, resource, verb):
    body = b'[{"id": "x", "name": "n", "command": ["true"]}]'
    msg = await send(nc, org, resource, verb, body)
    assert check_reply(resource, verb, body, msg) == "400"


@pytest.mark.parametrize("body", [
    b'{"name": "n", "command": ["true"], "timeout_sec": NaN}',
    b'{"name": "n", "command": ["true"], "timeout_sec": Infinity}',
    b'{"name": "n", "command": ["true"], "params": {"x": -Infinity}}',
    b'{"name": "n", "command": ["true"], "params": {"x": NaN}}',
])
async def test_nan_and_infinity_tokens_are_400(broker, nc, org, body):
    msg = await send(nc, org, "task", "create", body)
    assert check_reply("task", "create", body, msg) == "400"
    assert (await call_ok(nc, org, "task", "list", {}))["total"] == 0


@pytest.mark.parametrize("body", [b"null", b"true", b"0", b'"task"', b"\xff\xfe\xfd", b"{", b'{"id": }'])
async def test_non_object_and_broken_bodies_are_400(broker, nc, org, body):
    msg = await send(nc, org, "task", "get", body)
    assert check_reply("task", "get", body, msg) == "400"


async def test_hostile_strings_are_stored_verbatim_not_interpreted(broker, nc, org):
    argv = ["echo", "{{ x }}", "$(rm -rf /)", "a\nb", "\u202e😀"]
    task = await call_ok(nc, org, "task", "create", {"name": "$(id)\n{{ y }}", "command": argv,
                                                     "params": {"x": "`id`"}})
    got = await call_ok(nc, org, "task", "get", {"id": task["id"]})
    assert got["command"] == argv
    assert got["name"] == "$(id)\n{{ y }}"
    assert got["params"] == {"x": "`id`"}


@pytest.mark.parametrize(("verb", "body", "where"), [
    ("create", {"name": "nul", "command": ["echo", "a\x00b"]}, "command[1]"),
    ("create", {"name": "nul", "command": ["echo"], "env": {"A": "\x00"}}, "env.A"),
    ("create", {"name": "nul", "command": ["echo"], "params": {"x": ["ok", "\x00"]}}, "params.x[1]"),
    ("start", {"id": "seed-task", "context": {"x": {"y": "a\x00"}}}, "context.x.y"),
])
async def test_a_nul_byte_no_process_can_take_is_a_clear_client_error(broker, nc, org, seeded, verb, body, where):
    msg = await send(nc, org, "task", verb, json.dumps(body).encode())
    assert check_reply("task", verb, json.dumps(body).encode(), msg) == "400"
    assert f"`{where}` contains a NUL byte" in json.loads(msg.data)["error"]["message"]


@pytest.mark.parametrize("depth", [2_000, 20_000])
@pytest.mark.parametrize(("resource", "verb", "wrap"), [
    ("task", "create", lambda deep: {"name": "deep", "command": ["true"], "params": {"a": deep}}),
    ("task", "update", lambda deep: {"id": "seed-task", "params": {"a": deep}}),
    ("task", "start", lambda deep: {"id": "seed-task", "context": {"a": deep}}),
    ("exec", "list", lambda deep: {"filter": {"status": deep}}),
], ids=["task.create", "task.update", "task.start", "exec.list"])
async def test_deeply_nested_json_is_a_client_error(broker, nc, org, seeded, resource, verb, wrap, depth):
    body = encode(wrap(Deep(nest(1, depth, as_list=True))), ascii_only=True)
    assert len(body) < LIMIT
    msg = await send(nc, org, resource, verb, body)
    assert check_reply(resource, verb, body, msg) == "400"


ID_BODIES = {
    "update": lambda bad: {"id": bad, "name": "renamed"},
    "status": lambda bad: {"id": bad, "is_enabled": False},
}


@pytest.mark.parametrize("bad_id", ["a b", "*", ">", "a.", "é", "a\x00b", "x\ny"])
@pytest.mark.parametrize(("resource", "verb"), [("task", "update"), ("batch", "update"), ("exec", "cancel"),
                                                ("task", "get"), ("task", "delete"), ("batch", "status")])
async def test_ids_that_are_not_valid_keys_are_client_errors(broker, nc, org, seeded, resource, verb, bad_id):
    """Ids that cannot be a KV key (space, wildcards, trailing dot, non-ASCII, control
    characters) are the client's mistake: 400 (or 404), never a 500 from the KV layer."""
    data = json.dumps(ID_BODIES.get(verb, lambda bad: {"id": bad})(bad_id)).encode()
    msg = await send(nc, org, resource, verb, data)
    assert check_reply(resource, verb, data, msg) in {"400", "404"}


async def test_wildcard_id_does_not_reach_other_records(broker, nc, org, seeded):
    for resource in ("task", "batch"):
        msg = await send(nc, org, resource, "update", json.dumps({"id": ">", "name": "pwned"}).encode())
        assert (msg.headers or {}).get("Nats-Service-Error-Code") in {"400", "404"}, msg.data
    assert (await call_ok(nc, org, "task", "get", {"id": "seed-task"}))["name"] == "seed"
    assert (await call_ok(nc, org, "batch", "get", {"id": "seed-batch"}))["name"] == "seed"


@pytest.mark.parametrize("schedule", [
    {"cron_expression": "0 0 31 2 *"},
    {"cron_expression": "0 0 30 2 *"},
    {"schedule": {"days_of_month": [31], "months": [2, 4]}},
])
async def test_enabled_batch_whose_schedule_never_fires_does_not_break_the_org(broker, nc, org, seeded, schedule):
    """A schedule whose fields are each valid but that has no next date (Feb 31) must be
    refused (400) or stored with no next_run_at; it must not 500, and it must not make
    every later batch.list of the org fail."""
    body = {"name": "never", "is_enabled": True, "run_on_startup": False, "catch_up": "none",
            "actions": [{"task_id": "seed-task"}], **schedule}
    data = json.dumps(body).encode()
    msg = await send(nc, org, "batch", "create", data)
    code = check_reply("batch", "create", data, msg)
    if code is None:
        assert json.loads(msg.data)["next_run_at"] is None
    for verb, request in (("list", {}), ("get", {"id": "seed-batch"})):
        payload = json.dumps(request).encode()
        reply = await send(nc, org, "batch", verb, payload)
        assert check_reply("batch", verb, payload, reply) is None, f"batch.{verb} after: {reply.data[:300]!r}"


async def test_enabling_a_batch_whose_schedule_never_fires_is_a_client_error(broker, nc, org, seeded):
    create = json.dumps({
        "id": "feb31", "name": "never", "cron_expression": "0 0 31 2 *", "is_enabled": False,
        "run_on_startup": False, "catch_up": "none", "actions": [{"task_id": "seed-task"}],
    }).encode()
    created = check_reply("batch", "create", create, await send(nc, org, "batch", "create", create))
    if created is None:  # stored while disabled: enabling it must not 500 either
        data = json.dumps({"id": "feb31", "is_enabled": True}).encode()
        check_reply("batch", "status", data, await send(nc, org, "batch", "status", data))
    reply = await send(nc, org, "batch", "list", b"{}")
    assert check_reply("batch", "list", b"{}", reply) is None, reply.data[:300]
