"""A subscription whose messages arrive as raw bytes, in bulk: the store's read path.

nats-py turns every message into a `Msg` (its header block parsed into a dict), queues
it for the subscription's task and runs the callback as a coroutine: together with its
regex parser about 20 us of CPU a message, more than the store's decode and write
together. The ingest needs none of that: the subject, the reply subject (the stream
sequence is in it), the payload and one header.

So the protocol parser of the connection is wrapped (`nc._ps`, nats-py's own
`Parser`): the wrapper frames the data read from the socket itself, and the messages
of the subscriptions registered here are cut out as tuples of bytes, every complete
one of a read at once, and handed to their subscription's callback in one list; every
other operation (other subscriptions, PING, INFO, -ERR) is passed to nats-py's parser
unchanged, in order. The connection stays nats-py's: authentication, TLS and
reconnects are untouched, and its buffer and state stay the wrapped parser's, so
installing the wrapper on a live connection loses nothing.

This relies on private parts of nats-py (pinned in pyproject.toml): the `_ps`
attribute and the `buf`/`state`/`needed` of its parser. When they are not what is
expected, nothing is wrapped and the messages come through nats-py's own path (a
plain callback subscription, converted to the same tuples): slower, not wrong, and
logged; `tests/test_store.py` fails when that happens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser

log = logging.getLogger("batchdeck.store")

RawMessage = tuple[bytes, bytes, bytes, bytes]
"""(subject, reply subject, header block, payload) as they came, b"" where absent; the
header block starts with `NATS/1.0` and carries a server status (`NATS/1.0 404 ...`)."""
SUBJECT, REPLY, HEADERS, DATA = range(4)
OnMessages = Callable[[list[RawMessage]], None]

CRLF = b"\r\n"
HEADER_LINE = b"NATS/1.0"


class RawSubscription:
    """A core subscription whose messages go, as RawMessage lists, to `on_messages`
    (called from the connection's read loop: it must not block)."""

    def __init__(self, nc: Client, subject: str, on_messages: OnMessages) -> None:
        self.nc = nc
        self.subject = subject
        self.on_messages = on_messages
        self.raw = 0
        """Messages that came through the wrapped parser."""
        self.converted = 0
        """Messages that came through nats-py's Msg path instead (the wrapper not installed)."""
        self._sub: Any = None
        self._parser: _RawParser | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self.subject, cb=self._on_msg, pending_msgs_limit=-1,
                                            pending_bytes_limit=-1)
        self._parser = _raw_parser(self.nc)
        if self._parser is not None:
            self._parser.targets[self._sub._id] = self._deliver

    async def stop(self) -> None:
        if self._parser is not None:
            self._parser.targets.pop(self._sub._id, None)
        if self._sub is not None:
            await self._sub.unsubscribe()

    def _deliver(self, messages: list[RawMessage]) -> None:
        self.raw += len(messages)
        self.on_messages(messages)

    async def _on_msg(self, msg: Msg) -> None:
        """nats-py's path: only taken when the parser is not wrapped (or for a message
        nats-py's parser had half read when the wrapper was installed)."""
        self.converted += 1
        self.on_messages([(msg.subject.encode(), (msg.reply or "").encode(), _header_block(msg.headers), msg.data)])


def status(message: RawMessage) -> tuple[str, str] | None:
    """(code, description) of a server status message (no payload, `NATS/1.0 408
    Request Timeout`), None for anything else."""
    headers = message[HEADERS]
    if message[DATA] or not headers.startswith(HEADER_LINE + b" "):
        return None
    first = headers[len(HEADER_LINE):headers.find(CRLF)].strip()
    code, _, description = first.partition(b" ")
    return (code.decode(), description.decode(errors="replace")) if code.isdigit() else None


def header(message: RawMessage, name: bytes) -> str | None:
    """A header's value (the last one when repeated), as nats-py would read it."""
    headers = message[HEADERS]
    if name not in headers:  # a plain substring test first: most messages do not have it
        return None
    value = None
    for line in headers.split(CRLF)[1:]:
        key, sep, rest = line.partition(b":")
        if sep and key.strip() == name:
            value = rest.strip().decode(errors="replace")
    return value


def _header_block(headers: dict[str, str] | None) -> bytes:
    """A Msg's parsed headers back as a header block (the fallback path)."""
    if not headers:
        return b""
    code, description = headers.get("Status"), headers.get("Description", "")
    first = f"{HEADER_LINE.decode()} {code} {description}".rstrip() if code else HEADER_LINE.decode()
    lines = [f"{k}: {v}" for k, v in headers.items() if k not in ("Status", "Description")]
    return ("\r\n".join([first, *lines]) + "\r\n\r\n").encode()


def _raw_parser(nc: Client) -> _RawParser | None:
    """The connection's parser, wrapped once; None when nats-py's is not what this expects."""
    parser = getattr(nc, "_ps", None)
    if isinstance(parser, _RawParser):
        return parser
    if not isinstance(parser, Parser) or not all(hasattr(parser, a) for a in ("buf", "state", "needed")):
        log.warning("nats-py's protocol parser is not the one the store knows (%r): reading events "
                    "through nats-py's message objects, several times slower", parser)
        return None
    wrapped = _RawParser(parser)
    nc._ps = wrapped  # type: ignore[assignment]  # nats-py only calls parse() and reset() on it
    return wrapped


class _RawParser:
    """nats-py's parser with the messages of `targets` (sid -> callback) cut out first."""

    def __init__(self, inner: Parser) -> None:
        self.inner = inner
        self.targets: dict[int, Callable[[list[RawMessage]], None]] = {}

    def reset(self) -> None:
        self.inner.reset()

    async def parse(self, data: bytes = b"") -> None:
        inner = self.inner
        inner.buf.extend(data)
        if not self.targets:
            await inner.parse()
            return
        while inner.buf:
            if inner.state != AWAITING_CONTROL_LINE:
                # nats-py's parser is inside a message it began before the wrapper was installed.
                await self._pass_on(min(len(inner.buf), inner.needed + len(CRLF)))
                if inner.state != AWAITING_CONTROL_LINE:
                    return
                continue
            taken, theirs = self._frame()
            if taken:
                self._deliver(taken)
            if not theirs:
                return  # what is left is the beginning of an operation: wait for the rest
            await self._pass_on(theirs)

    def _frame(self) -> tuple[dict[int, list[RawMessage]], int]:
        """Cut the target messages at the front of the buffer out; then measure the run
        of other operations that follows (bytes to hand to nats-py, 0 when none is complete)."""
        buf = self.inner.buf
        view = bytes(buf)  # one copy per read, then slices of bytes are the messages themselves
        targets, taken = self.targets, {}
        position = 0
        while True:  # one iteration per message: the store's hottest loop
            eol = view.find(CRLF, position)
            if eol < 0:
                break
            line = _message_line(view, position, eol)
            if line is None or line[0] not in targets:
                break
            sid, subject, reply, header_size, size = line
            body = eol + 2
            end = body + size + 2
            if end > len(view):
                break
            taken.setdefault(sid, []).append((subject, reply, view[body:body + header_size],
                                              view[body + header_size:body + size]))
            position = end
        del buf[:position]
        return taken, _others(view, position, targets) - position

    def _deliver(self, taken: dict[int, list[RawMessage]]) -> None:
        for sid, messages in taken.items():
            callback = self.targets.get(sid)
            if callback is not None:
                callback(messages)

    async def _pass_on(self, size: int) -> None:
        """Let nats-py's parser handle the first `size` bytes of the buffer, and only those."""
        buf = self.inner.buf
        rest = buf[size:]
        del buf[size:]
        try:
            await self.inner.parse()
        finally:
            self.inner.buf.extend(rest)  # after whatever it left (nothing, for whole operations)


def _others(view: bytes, start: int, targets: dict[int, Any]) -> int:
    """The end of the run of complete non-target operations from `start` (`start` if none)."""
    position = start
    while True:
        eol = view.find(CRLF, position)
        if eol < 0:
            return position
        line = _message_line(view, position, eol)
        if line is None:  # PING, PONG, +OK, -ERR, INFO, or a malformed line: nats-py's parser deals with it
            position = eol + 2
            continue
        if line[0] in targets:
            return position
        end = eol + 2 + line[4] + 2
        if end > len(view):
            return position
        position = end


def _message_line(view: bytes, start: int, eol: int) -> tuple[int, bytes, bytes, int, int] | None:
    """(sid, subject, reply, header size, total size) of a well-formed `MSG subject sid
    [reply] size` or `HMSG subject sid [reply] header-size total-size` line, else None."""
    args = view[start:eol].split()
    op, count = args[0] if args else b"", len(args)
    if op == b"HMSG" and count in (5, 6):
        header, total = args[-2], args[-1]
    elif op == b"MSG" and count in (4, 5):
        header, total = b"0", args[-1]
    else:
        return None
    if not (args[2].isdigit() and header.isdigit() and total.isdigit()) or int(header) > int(total):
        return None
    reply = args[3] if count in (5, 6) and (op == b"MSG" or count == 6) else b""
    return int(args[2]), args[1], reply, int(header), int(total)
