"""The notifier's two delivery channels against real receivers in the test process: an
SMTP server (aiosmtpd, plain, STARTTLS and implicit TLS with a certificate made here)
and an HTTP server. Each scenario is one delivery attempt and what its receiver saw."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from broker.server import free_port
from broker.types import ActionState, Execution, LogLine
from notifier import email, webhook
from notifier.destinations import WebhookPolicy
from notifier.errors import DeliveryError

RECIPIENT = "ops@example.com"
SENDER = "batchdeck@example.com"
USER, PASSWORD = "mailer", "s3cret:pw@"
LOG_COMMAND = "batchdeck logs 01JBQ7Y4X2 --org acme"

LOOPBACK = WebhookPolicy.parse(["127.0.0.1"])
"""The receivers here listen on loopback, which webhooks may not reach by default."""


# ---- an SMTP server -----------------------------------------------------------------


@dataclass
class Mailbox:
    """An aiosmtpd handler: keeps what it is given, refuses the addresses in `refuse`."""

    received: list = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802 - aiosmtpd's hook
        if address in self.refuse:
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.received.append(envelope)
        return "250 OK: queued"

    def only_message(self) -> tuple[EmailMessage, list[str]]:
        assert len(self.received) == 1, self.received
        envelope = self.received[0]
        return message_from_bytes(envelope.content, policy=policy.default), envelope.rcpt_tos


def _authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(), PASSWORD.encode())
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself


@dataclass
class SmtpServer:
    mailbox: Mailbox
    port: int


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, str]:
    """A server TLS context for 127.0.0.1 signed by a CA made here, and that CA's file."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return server_context, str(ca_file)


def _smtp_server(**options) -> Iterator[SmtpServer]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, authenticator=_authenticator, **options)
    controller.start()
    try:
        yield SmtpServer(mailbox, port)
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def _plain_smtp() -> Iterator[SmtpServer]:
    yield from _smtp_server(auth_require_tls=False)


@pytest.fixture
def smtp(_plain_smtp: SmtpServer) -> SmtpServer:
    """A plain SMTP server taking AUTH without TLS; an empty mailbox for each test."""
    _plain_smtp.mailbox.received.clear()
    _plain_smtp.mailbox.refuse.clear()
    return _plain_smtp


@pytest.fixture(scope="module")
def starttls_smtp(certificates) -> Iterator[SmtpServer]:
    """A server that takes nothing before STARTTLS, and AUTH only after it."""
    yield from _smtp_server(tls_context=certificates[0], require_starttls=True)


@pytest.fixture(scope="module")
def tls_smtp(certificates) -> Iterator[SmtpServer]:
    """A server speaking TLS from the first byte (smtps)."""
    yield from _smtp_server(ssl_context=certificates[0])


# ---- an execution that failed -------------------------------------------------------


def failed_execution(name: str = "Nightly report") -> Execution:
    return Execution(
        id="01JBQ7Y4X2", org="acme", batch_id="nightly-report", name=name, status="failed", attempt=2,
        runner_id="runner-a", queued_at="2026-11-23T14:05:00.000Z", started_at="2026-11-23T14:05:01.000Z",
        finished_at="2026-11-23T14:07:13.500Z", duration_ms=132_500,
        error="action 1 (load) exited with code 3",
        actions=[
            ActionState(index=0, task_id="extract", status="succeeded", exit_code=0,
                        started_at="2026-11-23T14:05:01.000Z", finished_at="2026-11-23T14:05:13.000Z"),
            ActionState(index=1, task_id="load", status="failed", exit_code=3,
                        started_at="2026-11-23T14:05:13.000Z", finished_at="2026-11-23T14:07:13.000Z"),
        ],
    )


def log_lines(count: int) -> list[LogLine]:
    return [LogLine(idx=i, ts=f"2026-11-23T14:06:{i:02d}.250Z", level="error" if i == count else "info",
                    msg=f"loading part {i:02d} of {count}") for i in range(1, count + 1)]


def settings_for(server: SmtpServer, scheme: str = "smtp", credentials: str = "", **options) -> email.SmtpSettings:
    return email.SmtpSettings.from_url(f"{scheme}://{credentials}127.0.0.1:{server.port}", SENDER, timeout=5.0,
                                       **options)


def mail_of(execution: Execution, lines: list[LogLine] = ()) -> EmailMessage:
    return email.compose(execution, list(lines), recipient=RECIPIENT, sender=SENDER, log_command=LOG_COMMAND)


# ---- email --------------------------------------------------------------------------


async def test_a_failed_run_arrives_as_a_mail_an_operator_reads_at_a_glance(smtp):
    lines = log_lines(25)
    execution = failed_execution()
    await email.send(settings_for(smtp), mail_of(execution, lines[-20:]))

    message, recipients = smtp.mailbox.only_message()
    assert recipients == [RECIPIENT]
    assert message["Subject"] == "[batchdeck] failed: Nightly report (acme)"
    assert message["To"] == RECIPIENT and message["From"] == SENDER
    assert message["Date"] is not None
    assert message["Message-ID"] == email.message_id(execution.id, RECIPIENT)
    assert message.get_content_type() == "text/plain"
    body = message.get_content()
    assert "Last 20 log lines" in body
    assert "loading part 06 of 25" in body and "loading part 25 of 25" in body
    assert "loading part 05 of 25" not in body
    assert "Exit code: 3 (action 1, load, failed)" in body
    assert "Duration:  2m 12s" in body
    assert "Batch:     nightly-report" in body
    assert f"Full log: {LOG_COMMAND}" in body


def test_the_message_id_is_the_same_for_a_resend_and_differs_per_recipient():
    execution = failed_execution()
    first, again = mail_of(execution), mail_of(execution)
    other = email.compose(execution, [], recipient="dev@example.com", sender=SENDER, log_command=LOG_COMMAND)
    assert first["Message-ID"] == again["Message-ID"]
    assert first["Message-ID"].startswith(f"<{execution.id}.") and first["Message-ID"].endswith("@batchdeck>")
    assert other["Message-ID"] != first["Message-ID"]


def test_a_run_without_log_lines_says_so_and_long_lines_are_cut():
    assert "(none: the run logged nothing" in mail_of(failed_execution()).get_content()
    long_line = LogLine(idx=1, ts="2026-11-23T14:06:00.000Z", msg="x" * 2000)
    shown = [line for line in mail_of(failed_execution(), [long_line]).get_content().splitlines() if "xxx" in line]
    assert len(shown) == 1 and shown[0].count("x") == email.LOG_LINE_CHARS - 1 and shown[0].endswith("…")


async def test_a_name_cannot_add_a_header(smtp):
    execution = failed_execution(name="Nightly\r\nBcc: intruder@example.net")
    execution.error = "boom\r\nX-Injected: yes"
    await email.send(settings_for(smtp), mail_of(execution, log_lines(3)))

    message, recipients = smtp.mailbox.only_message()
    assert recipients == [RECIPIENT]
    assert message["Bcc"] is None and message["X-Injected"] is None
    assert message["Subject"] == "[batchdeck] failed: Nightly Bcc: intruder@example.net (acme)"


async def test_a_login_with_the_right_password_delivers(smtp):
    await email.send(settings_for(smtp, credentials=f"{USER}:s3cret%3Apw%40@"), mail_of(failed_execution()))
    assert len(smtp.mailbox.received) == 1


async def test_a_wrong_password_fails_for_good_without_showing_it(smtp):
    settings = settings_for(smtp, credentials=f"{USER}:not-the-password@")
    with pytest.raises(DeliveryError) as caught:
        await email.send(settings, mail_of(failed_execution()))
    assert caught.value.permanent
    assert f"smtp 127.0.0.1:{smtp.port}" in caught.value.message and "535" in caught.value.message
    assert "not-the-password" not in caught.value.message
    assert smtp.mailbox.received == []


async def test_a_refused_recipient_fails_for_good(smtp):
    smtp.mailbox.refuse.add(RECIPIENT)
    with pytest.raises(DeliveryError) as caught:
        await email.send(settings_for(smtp), mail_of(failed_execution()))
    assert caught.value.permanent
    assert "550" in caught.value.message and RECIPIENT in caught.value.message


async def test_a_server_that_is_not_listening_is_tried_again_later():
    settings = email.SmtpSettings.from_url(f"smtp://127.0.0.1:{free_port()}", SENDER, timeout=5.0)
    with pytest.raises(DeliveryError) as caught:
        await email.send(settings, mail_of(failed_execution()))
    assert not caught.value.permanent
    assert "cannot reach smtp 127.0.0.1:" in caught.value.message


async def test_starttls_required_but_not_offered_fails_for_good(smtp):
    with pytest.raises(DeliveryError) as caught:
        await email.send(settings_for(smtp, "smtp+starttls"), mail_of(failed_execution()))
    assert caught.value.permanent and "STARTTLS" in caught.value.message


async def test_starttls_with_a_trusted_certificate_delivers_and_logs_in(starttls_smtp, certificates):
    starttls_smtp.mailbox.received.clear()
    settings = settings_for(starttls_smtp, "smtp+starttls", f"{USER}:s3cret%3Apw%40@", ca_file=certificates[1])
    await email.send(settings, mail_of(failed_execution()))
    message, _ = starttls_smtp.mailbox.only_message()
    assert message["Subject"] == "[batchdeck] failed: Nightly report (acme)"


async def test_implicit_tls_with_a_trusted_certificate_delivers(tls_smtp, certificates):
    tls_smtp.mailbox.received.clear()
    await email.send(settings_for(tls_smtp, "smtps", ca_file=certificates[1]), mail_of(failed_execution()))
    assert len(tls_smtp.mailbox.received) == 1


async def test_a_certificate_nobody_trusts_fails_for_good(tls_smtp):
    with pytest.raises(DeliveryError) as caught:
        await email.send(settings_for(tls_smtp, "smtps"), mail_of(failed_execution()))
    assert caught.value.permanent and "certificate" in caught.value.message


# ---- SMTP URLs ----------------------------------------------------------------------


@pytest.mark.parametrize(("url", "security", "port"), [
    ("smtp://mail.example.com", "none", 25),
    ("smtp+starttls://mail.example.com", "starttls", 587),
    ("smtps://mail.example.com", "tls", 465),
    ("smtps://mail.example.com:2465", "tls", 2465),
])
def test_each_scheme_has_its_security_and_default_port(url, security, port):
    settings = email.SmtpSettings.from_url(url)
    assert (settings.host, settings.security, settings.port) == ("mail.example.com", security, port)
    assert settings.sender == "batchdeck@mail.example.com"
    assert settings.username is None and settings.password is None


def test_credentials_are_percent_decoded_and_the_sender_comes_from_the_url_or_the_caller():
    settings = email.SmtpSettings.from_url("smtp+starttls://me%40corp:p%40ss%3Aw@mail.example.com:2525"
                                           "?from=ops+batchdeck@example.com", ca_file="ca.pem", timeout=5)
    assert (settings.username, settings.password, settings.port) == ("me@corp", "p@ss:w", 2525)
    assert settings.sender == "ops+batchdeck@example.com"
    assert (settings.ca_file, settings.timeout) == ("ca.pem", 5)
    chosen = email.SmtpSettings.from_url("smtp://mail.example.com?from=a@example.com", "Ops <ops@example.com>")
    assert chosen.sender == "Ops <ops@example.com>"


def test_the_password_shows_in_no_repr():
    settings = email.SmtpSettings.from_url("smtps://me:hunter2-secret@mail.example.com")
    assert settings.password == "hunter2-secret"
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)


@pytest.mark.parametrize(("url", "sender", "says"), [
    ("http://mail.example.com", None, "scheme http:// is not one of smtp://"),
    ("mail.example.com", None, "has no scheme"),
    ("smtp://:pw@mail.example.com", None, "a password but no user"),
    ("smtp://", None, "has no host"),
    ("smtp://user:pw@", None, "has no host"),
    ("smtp://mail.example.com:0", None, "port '0' is not a number from 1 to 65535"),
    ("smtp://mail.example.com:70000", None, "port '70000'"),
    ("smtp://mail.example.com:twenty", None, "port 'twenty'"),
    ("smtp://mail.example.com/inbox", None, "no path"),
    ("smtp://mail.example.com?to=x@example.com", None, "parameter 'to' is not known"),
    ("smtp://mail.example.com?from=", None, "?from= is empty"),
    ("smtp://mail.example.com?from=not-an-address", None, "sender 'not-an-address' is not an email address"),
    ("smtp://mail.example.com", "ops@example.com\r\nBcc: x@y", "is not an email address"),
])
def test_a_bad_url_says_what_is_wrong(url, sender, says):
    with pytest.raises(ValueError) as caught:
        email.SmtpSettings.from_url(url, sender)
    assert says in str(caught.value)


def test_a_bad_url_does_not_repeat_its_password():
    with pytest.raises(ValueError) as caught:
        email.SmtpSettings.from_url("smtp://me:hunter2-secret@mail.example.com:99999")
    assert "hunter2" not in str(caught.value)


# ---- an HTTP receiver ---------------------------------------------------------------

SECRET = b"0123456789abcdef-webhook"
SLOW = 1.0
"""Seconds the /slow receiver takes, more than the timeout the test allows."""


class Receiver(BaseHTTPRequestHandler):
    """Answers by path: /ok 204, /error 500, /busy 503 + Retry-After 7, /gone 404,
    /moved 302 to /ok, /slow a 200 after SLOW seconds."""

    def do_POST(self):  # noqa: N802 - http.server's hook
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append((self.path, dict(self.headers), body))
        if self.path == "/slow":
            time.sleep(SLOW)
        status, headers, reply = {
            "/ok": (204, {}, b""),
            "/slow": (200, {}, b""),
            "/error": (500, {}, b"database\nis down" + b"!" * 5000),
            "/busy": (503, {"Retry-After": "7"}, b"try later"),
            "/gone": (404, {}, b"no such hook"),
            "/moved": (302, {"Location": "/ok"}, b""),
        }[self.path]
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped waiting (/slow)

    def log_message(self, format, *args):  # noqa: A002 - quiet test output
        pass


@pytest.fixture(scope="module")
def _http_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Receiver)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def receiver(_http_server: ThreadingHTTPServer) -> ThreadingHTTPServer:
    _http_server.requests.clear()
    return _http_server


def hook(server: ThreadingHTTPServer, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


async def deliver(url: str, body: bytes = b'{"status":"failed"}', timeout: float = 5.0) -> int:
    return await webhook.post(url, body, secret=SECRET, delivery_id="acme.01JBQ7Y4X2.ab12", event="execution.failed",
                              timeout=timeout, policy=LOOPBACK)


# ---- webhooks -----------------------------------------------------------------------


async def test_a_post_arrives_signed_with_the_body_byte_for_byte(receiver):
    body = json.dumps({"id": "01JBQ7Y4X2", "name": "Nächtlich ✓", "status": "failed"}, ensure_ascii=False).encode()
    assert await deliver(hook(receiver, "/ok"), body) == 204

    [(path, headers, received)] = receiver.requests
    assert path == "/ok" and received == body
    assert webhook.verify(SECRET, received, headers[webhook.SIGNATURE_HEADER])
    assert not webhook.verify(b"another secret, 16+", received, headers[webhook.SIGNATURE_HEADER])
    assert not webhook.verify(SECRET, received + b" ", headers[webhook.SIGNATURE_HEADER])
    assert headers[webhook.DELIVERY_HEADER] == "acme.01JBQ7Y4X2.ab12"
    assert headers[webhook.EVENT_HEADER] == "execution.failed"
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("batchdeck")


def test_a_signature_is_the_hex_hmac_sha256_of_the_body():
    # A known HMAC-SHA256 test vector (RFC 4231, test case 2).
    assert webhook.sign(b"Jefe", b"what do ya want for nothing?") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    assert not webhook.verify(b"Jefe", b"what do ya want for nothing?", "sha256=ü")


async def test_a_server_error_is_tried_again_later_and_says_the_status_not_the_body(receiver):
    with pytest.raises(DeliveryError) as caught:
        await deliver(hook(receiver, "/error"))
    error = caught.value
    assert not error.permanent and error.retry_after is None
    # The status, never what the receiver said: the record is readable by SQL, and a
    # body would make the notifier a way to read whatever port a webhook names.
    assert "answered 500" in error.message and "database is down" not in error.message


async def test_a_busy_receiver_says_when_to_come_back(receiver):
    with pytest.raises(DeliveryError) as caught:
        await deliver(hook(receiver, "/busy"))
    assert not caught.value.permanent and caught.value.retry_after == 7
    assert "answered 503" in caught.value.message and "try later" not in caught.value.message


def test_retry_after_is_capped():
    assert webhook.retry_after("86400") == webhook.MAX_RETRY_AFTER
    assert webhook.retry_after("soon") is None and webhook.retry_after(None) is None


async def test_a_missing_hook_fails_for_good(receiver):
    with pytest.raises(DeliveryError) as caught:
        await deliver(hook(receiver, "/gone"))
    assert caught.value.permanent and "answered 404" in caught.value.message
    assert "no such hook" not in caught.value.message


async def test_a_redirect_fails_for_good_and_is_not_followed(receiver):
    with pytest.raises(DeliveryError) as caught:
        await deliver(hook(receiver, "/moved"))
    assert caught.value.permanent and "answered 302, a redirect (not followed" in caught.value.message
    assert [path for path, _, _ in receiver.requests] == ["/moved"]


async def test_a_receiver_slower_than_the_timeout_is_tried_again_later(receiver):
    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        await deliver(hook(receiver, "/slow"), timeout=0.3)
    assert time.monotonic() - started < SLOW
    assert not caught.value.permanent and "0.3s" in caught.value.message


async def test_nothing_listening_is_tried_again_later():
    with pytest.raises(DeliveryError) as caught:
        await deliver(f"http://127.0.0.1:{free_port()}/hook")
    assert not caught.value.permanent and "cannot reach" in caught.value.message


# ---- where webhooks may go ---------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "10.1.2.3", "192.168.0.10", "169.254.169.254", "[::1]",
                                  "[fd00:ec2::254]", "100.100.100.200", "0.0.0.0", "[::ffff:127.0.0.1]"])
async def test_a_webhook_to_a_loopback_private_or_metadata_address_is_refused_for_good(host):
    with pytest.raises(DeliveryError) as caught:
        await webhook.post(f"http://{host}:1/hook", b"{}", secret=SECRET, delivery_id="d", event="execution.failed",
                           timeout=2.0)
    assert caught.value.permanent and "--webhook-allow" in caught.value.message, caught.value.message


async def test_the_refusal_is_made_on_the_address_a_name_resolves_to(receiver):
    # `localhost` is a name: it is resolved, and its loopback address refused ...
    url = hook(receiver, "/ok").replace("127.0.0.1", "localhost")
    with pytest.raises(DeliveryError, match="a loopback address"):
        await webhook.post(url, b"{}", secret=SECRET, delivery_id="d", event="execution.failed", timeout=2.0)
    assert receiver.requests == []
    # ... unless the name itself is allowed, or the network it resolves into.
    for allowed in (["localhost"], ["127.0.0.0/8"]):
        assert await webhook.post(url, b"{}", secret=SECRET, delivery_id="d", event="execution.failed",
                                  timeout=2.0, policy=WebhookPolicy.parse(allowed)) == 204
    assert len(receiver.requests) == 2


async def test_a_reply_that_is_not_http_is_named_by_its_kind_not_its_content():
    """The NATS port (or any other) answers with a banner: the record says it was not
    HTTP, and nothing of what came back."""
    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b'INFO {"server_id":"NSECRETSERVERID","version":"2.15.1"}\r\n')
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(banner, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(DeliveryError) as caught:
            await deliver(f"http://127.0.0.1:{port}/hook")
    finally:
        server.close()
    assert "did not answer in HTTP" in caught.value.message
    assert "NSECRETSERVERID" not in caught.value.message and "INFO" not in caught.value.message


@pytest.mark.parametrize("entry", ["", "a b", "http://x", "host/path", "10.0.0.0/33"])
def test_a_bad_allow_entry_is_refused_with_an_example(entry):
    with pytest.raises(ValueError, match="--webhook-allow"):
        WebhookPolicy.parse([entry])
