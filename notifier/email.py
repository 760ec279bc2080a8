"""The email channel: SMTP settings from a URL, the plain-text message an operator reads
about a finished execution, and one delivery attempt over SMTP.

A message's Message-ID depends only on the execution and the recipient, so a resend
after a crash is recognisable as the same message.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import smtplib
import ssl
import unicodedata
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Literal
from urllib.parse import unquote, urlsplit

from broker.timestamps import parse_iso
from broker.types import FAILURE_STATUSES, ActionState, Execution, LogLine
from notifier.errors import DeliveryError

Security = Literal["none", "starttls", "tls"]

SCHEMES: dict[str, tuple[Security, int]] = {
    "smtp": ("none", 25),
    "smtp+starttls": ("starttls", 587),
    "smtps": ("tls", 465),
}
"""URL scheme -> how the connection is secured, and its default port."""

LOG_LINE_CHARS = 500
"""A log line longer than this is cut in the message."""
ERROR_CHARS = 2000
"""An execution's error longer than this is cut in the message."""

_ADDRESS_RE = re.compile(r"[^@\s<>,;:\"()\[\]\\]+@(?:[^@\s<>,;:\"()\[\]\\]+|\[[0-9A-Fa-f:.]+\])")
_ANSI_ESCAPE_RE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")


# ---- settings -----------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how emails are sent. `timeout`: seconds any one network operation
    (connect, a command's reply) may take. `ca_file`: PEM file of the CAs that may sign
    the server's certificate (default: the system's)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in logs or tracebacks
    _: KW_ONLY
    security: Security
    sender: str
    timeout: float = 30.0
    ca_file: str | None = None

    @property
    def server(self) -> str:
        """How messages name the server: `smtp host:port`."""
        return f"smtp {self.host}:{self.port}"

    @classmethod
    def from_url(cls, url: str, sender: str | None = None, *, ca_file: str | None = None,
                 timeout: float = 30.0) -> SmtpSettings:
        """Settings from `smtp://` (plain, port 25), `smtp+starttls://` (STARTTLS
        required, 587) or `smtps://` (implicit TLS, 465) `[user[:password]@]host[:port]`,
        user and password percent-encoded. The sender is `sender`, else the URL's
        `?from=` parameter, else `batchdeck@{host}`. ValueError says what is wrong."""
        parts = urlsplit(url.strip())
        if parts.scheme not in SCHEMES:
            said = f"scheme {parts.scheme}:// is not" if parts.scheme else "has no scheme; it is"
            raise ValueError(f"SMTP URL {said} one of smtp://, smtp+starttls:// (STARTTLS) or smtps:// (TLS)")
        security, default_port = SCHEMES[parts.scheme]
        host = parts.hostname
        if not host:
            raise ValueError(f"SMTP URL has no host: expected {parts.scheme}://[user[:password]@]host[:port]")
        if parts.path not in ("", "/") or parts.fragment:
            raise ValueError(f"SMTP URL takes no path or fragment after the host {host}")
        if parts.password is not None and not parts.username:
            raise ValueError("SMTP URL has a password but no user: expected user:password@host")
        if timeout <= 0:
            raise ValueError(f"SMTP timeout must be more than 0 seconds, got {timeout}")
        return cls(
            host=host,
            port=_port(parts.netloc, default_port),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            security=security,
            sender=_checked_sender(sender or _from_parameter(parts.query) or _default_sender(host)),
            timeout=timeout,
            ca_file=ca_file,
        )


def _port(netloc: str, default: int) -> int:
    host_port = netloc.rpartition("@")[2]
    if host_port.startswith("["):  # an IPv6 host holds colons of its own
        text = host_port.partition("]")[2].removeprefix(":")
    else:
        text = host_port.partition(":")[2]
    if not text:
        return default
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"SMTP URL port {text!r} is not a number from 1 to 65535")
    return int(text)


def _from_parameter(query: str) -> str | None:
    """The `?from=` address; `+` stays a plus, as in ops+batchdeck@example.com."""
    found: str | None = None
    for pair in query.split("&") if query else []:
        name, sep, value = pair.partition("=")
        if name != "from":
            raise ValueError(f"SMTP URL parameter {unquote(name)!r} is not known (the one parameter is ?from=ADDRESS)")
        if not sep or not value:
            raise ValueError("SMTP URL parameter ?from= is empty")
        if found is not None:
            raise ValueError("SMTP URL names ?from= more than once")
        found = unquote(value)
    return found


def _default_sender(host: str) -> str:
    return f"batchdeck@[{host}]" if ":" in host else f"batchdeck@{host}"


def _checked_sender(sender: str) -> str:
    """`addr@domain` or `Display Name <addr@domain>`, on one line."""
    address = parseaddr(sender)[1]
    if _has_control(sender) or not _ADDRESS_RE.fullmatch(address):
        raise ValueError(f"sender {sender!r} is not an email address such as batchdeck@example.com "
                         "or 'Batchdeck <batchdeck@example.com>'")
    return sender.strip()


# ---- the message --------------------------------------------------------------------


def compose(execution: Execution, lines: list[LogLine], *, recipient: str, sender: str,
            log_command: str) -> EmailMessage:
    """The plain-text email telling `recipient` how `execution` ended, with `lines`
    (the run's last log lines, oldest first) and how to see the whole log."""
    message = EmailMessage()
    message["Subject"] = _header(f"[batchdeck] {execution.status}: {_title(execution)} ({execution.org})")
    message["From"] = _header(sender)
    message["To"] = _header(recipient)
    message["Date"] = format_datetime(datetime.now(timezone.utc))
    message["Message-ID"] = message_id(execution.id, recipient)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: auto-responders do not answer it
    message["X-Batchdeck-Execution"] = _header(execution.id)
    message.set_content(_body(execution, lines, log_command))
    return message


def message_id(execution_id: str, recipient: str) -> str:
    """The same for every send of one execution's message to one recipient."""
    digest = hashlib.sha256(recipient.encode()).hexdigest()[:16]
    return f"<{_header(execution_id).replace(' ', '')}.{digest}@batchdeck>"


def _body(execution: Execution, lines: list[LogLine], log_command: str) -> str:
    sections = [
        f"{_title(execution)} {execution.status}.",
        _summary(execution),
        _actions(execution.actions),
        _log(lines),
        f"Full log: {_one_line(log_command)}",
    ]
    return "\n\n".join(sections) + "\n"


def _summary(execution: Execution) -> str:
    if execution.batch_id is not None:
        what = ("Batch", execution.batch_id)
    else:
        what = ("Task", execution.task_id or "-")
    rows = [
        ("Name", _one_line(execution.name) or "-"),
        what,
        ("Org", execution.org),
        ("Status", execution.status),
        ("Execution", execution.id),
        ("Attempt", str(execution.attempt)),
        ("Runner", execution.runner_id or "-"),
        ("Queued", _moment(execution.queued_at)),
        ("Started", _moment(execution.started_at)),
        ("Finished", _moment(execution.finished_at)),
        ("Duration", _run_duration(execution)),
        ("Exit code", _exit_code(execution.actions)),
    ]
    block = "\n".join(f"  {label + ':':<11}{_one_line(value)}" for label, value in rows)
    return f"{block}\n  {'Error:':<11}{_indented(execution.error[:ERROR_CHARS], 13) if execution.error else '-'}"


def _actions(actions: list[ActionState]) -> str:
    if not actions:
        return "Actions\n  (none)"
    rows = [("#", "Task", "Status", "Exit", "Duration")]
    rows += [(str(a.index), _one_line(a.task_id), a.status, _code(a.exit_code),
              _duration(_span(a.started_at, a.finished_at))) for a in actions]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    table = ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    return "Actions\n" + "\n".join(table)


def _log(lines: list[LogLine]) -> str:
    if not lines:
        return "Last log lines\n  (none: the run logged nothing, or its log could not be read)"
    heading = "Last log line" if len(lines) == 1 else f"Last {len(lines)} log lines"
    width = len(str(max(line.idx for line in lines)))
    shown = [f"  {line.idx:>{width}}  {_clock(line.ts)}  {line.level:<7}  {_cut(_one_line(line.msg))}"
             for line in lines]
    return f"{heading} (UTC)\n" + "\n".join(shown)


def _title(execution: Execution) -> str:
    return _one_line(execution.name) or execution.batch_id or execution.task_id or execution.id


def _exit_code(actions: list[ActionState]) -> str:
    """The first failed action's exit code, else the last action's, and whose it is."""
    failed = [a for a in actions if a.status in FAILURE_STATUSES]
    action = failed[0] if failed else (actions[-1] if actions else None)
    if action is None:
        return "-"
    return f"{_code(action.exit_code)} (action {action.index}, {action.task_id}, {action.status})"


def _run_duration(execution: Execution) -> str:
    if execution.duration_ms is not None:
        return _duration(execution.duration_ms / 1000)
    return _duration(_span(execution.started_at, execution.finished_at))


def _span(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        return max(0.0, (parse_iso(end) - parse_iso(start)).total_seconds())
    except ValueError:
        return None


def _duration(seconds: float | None) -> str:
    """`850ms`, `12.3s`, `2m 05s`, `3h 12m`, `2d 4h`."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if round(seconds, 1) < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def _moment(value: str | None) -> str:
    if not value:
        return "-"
    try:
        return parse_iso(value).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return value


def _clock(value: str) -> str:
    try:
        moment = parse_iso(value).astimezone(timezone.utc)
    except ValueError:
        return _one_line(value)
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _code(exit_code: int | None) -> str:
    return "-" if exit_code is None else str(exit_code)


def _cut(text: str) -> str:
    return text if len(text) <= LOG_LINE_CHARS else text[:LOG_LINE_CHARS - 1] + "…"


def _indented(text: str, indent: int) -> str:
    """Multi-line text under a label: every line after the first indented to line up."""
    lines = [_one_line(line) for line in text.splitlines()] or [""]
    return ("\n" + " " * indent).join(lines)


def _has_control(text: str) -> bool:
    return any(unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in text)


def _one_line(text: str) -> str:
    """`text` without line breaks or control characters (a tab, a CR, an ANSI escape)."""
    if not _has_control(text):
        return text
    text = _ANSI_ESCAPE_RE.sub("", text)  # colours of a terminal-minded program: noise in a mail
    cleaned = "".join(" " if unicodedata.category(char) in ("Cc", "Zl", "Zp") else char for char in text)
    return re.sub(r" {2,}", " ", cleaned).strip()


def _header(text: str) -> str:
    """A value safe in a header: user text must not end the header or start another."""
    return _one_line(text).strip()


# ---- sending ------------------------------------------------------------------------


async def send(settings: SmtpSettings, message: EmailMessage) -> None:
    """One attempt to hand `message` to the SMTP server; DeliveryError when it fails,
    `permanent` when trying again cannot help."""
    await asyncio.to_thread(_send_blocking, settings, message)


def _send_blocking(settings: SmtpSettings, message: EmailMessage) -> None:
    try:
        client = _connect(settings)
        try:
            _secure_and_login(client, settings)
            refused = client.send_message(message)
        except BaseException:
            client.close()
            raise
        _quit(client)
    except DeliveryError:
        raise
    except Exception as err:  # noqa: BLE001 - every failure becomes a DeliveryError
        raise _delivery_error(settings, err) from err
    if refused:  # some recipients refused, some taken: only happens with several
        raise _refused_recipients(settings, refused)


def _connect(settings: SmtpSettings) -> smtplib.SMTP:
    if settings.security == "tls":
        return smtplib.SMTP_SSL(settings.host, settings.port, timeout=settings.timeout, context=_tls(settings))
    return smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)


def _secure_and_login(client: smtplib.SMTP, settings: SmtpSettings) -> None:
    if settings.security == "starttls":
        client.ehlo()
        if not client.has_extn("starttls"):
            raise DeliveryError(f"{settings.server} does not offer STARTTLS, which smtp+starttls:// requires",
                                permanent=True)
        client.starttls(context=_tls(settings))
        client.ehlo()
    if settings.username is not None:
        client.login(settings.username, settings.password or "")


def _tls(settings: SmtpSettings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=settings.ca_file)


def _quit(client: smtplib.SMTP) -> None:
    """Say goodbye; the message is already accepted, so a failure here is no failure."""
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()


def _delivery_error(settings: SmtpSettings, err: Exception) -> DeliveryError:
    server = settings.server
    if isinstance(err, smtplib.SMTPAuthenticationError):
        return DeliveryError(f"{server} refused the login of {settings.username!r}: {_reply(err)}", permanent=True)
    if isinstance(err, smtplib.SMTPRecipientsRefused):
        return _refused_recipients(settings, err.recipients)
    if isinstance(err, smtplib.SMTPSenderRefused):
        return _by_code(err.smtp_code, f"{server} refused the sender {err.sender!r}: {_reply(err)}")
    if isinstance(err, smtplib.SMTPDataError):
        return _by_code(err.smtp_code, f"{server} refused the message: {_reply(err)}")
    if isinstance(err, smtplib.SMTPServerDisconnected):
        return DeliveryError(f"{server} closed the connection: {err}", permanent=False)
    if isinstance(err, smtplib.SMTPResponseException):  # a bad greeting, HELO or STARTTLS reply
        return _by_code(err.smtp_code, f"{server} answered {_reply(err)}")
    if isinstance(err, smtplib.SMTPNotSupportedError):
        return DeliveryError(f"{server} does not support what the settings ask: {err}", permanent=True)
    if isinstance(err, smtplib.SMTPException):  # e.g. no authentication method in common
        return DeliveryError(f"{server}: {err}", permanent=True)
    if isinstance(err, ssl.SSLCertVerificationError):
        # A certificate we do not trust stays untrusted until someone changes it or the CA file.
        return DeliveryError(f"{server}: TLS certificate not trusted: {err.verify_message}", permanent=True)
    if isinstance(err, TimeoutError):
        return DeliveryError(f"{server} did not answer within {settings.timeout:g}s", permanent=False)
    if isinstance(err, OSError):  # refused, reset, unreachable, DNS, a TLS handshake cut short
        return DeliveryError(f"cannot reach {server}: {err}", permanent=False)
    return DeliveryError(f"{server}: {err!r}", permanent=False)


def _refused_recipients(settings: SmtpSettings, refused: dict[str, tuple[int, bytes]]) -> DeliveryError:
    codes = [code for code, _ in refused.values()]
    said = "; ".join(f"{address!r}: {code} {_text(reply)}" for address, (code, reply) in refused.items())
    return DeliveryError(f"{settings.server} refused the recipient {said}",
                         permanent=all(code >= 500 for code in codes))


def _by_code(code: int, message: str) -> DeliveryError:
    """5xx: the server will not take it; 4xx (or anything else): maybe later."""
    return DeliveryError(message, permanent=500 <= code < 600)


def _reply(err: smtplib.SMTPResponseException) -> str:
    return f"{err.smtp_code} {_text(err.smtp_error)}"


def _text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return _one_line(text)[:200]
