"""Newest-first pages of the messages on one subject of a stream, for listings that the
store (DuckDB) does not answer yet, e.g. `batch.triggers`.

JetStream reads forward only, and a subject's messages are scattered among millions
of others in BD_EVENTS. A consumer's `num_pending` counts the subject's messages from a
start sequence on, so a binary search over start sequences finds where the wanted
page begins in about log2(stream length) probes; then one consumer reads the page.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from broker import ids

FETCH_TIMEOUT = 5.0
IDLE_SECONDS = 5.0


@dataclass
class TailPage:
    items: list[bytes]
    """Message bodies, newest first."""
    total: int


async def tail_page(js: JetStreamContext, stream: str, subject: str, page: int, per_page: int) -> TailPage:
    """Page `page` (from 1) of the messages on `subject`, newest first."""
    try:
        info = await js.stream_info(stream, subjects_filter=subject)
    except NotFoundError:
        return TailPage([], 0)
    total = (info.state.subjects or {}).get(subject, 0)
    skip = (page - 1) * per_page
    want = min(per_page, total - skip)
    if want <= 0:
        return TailPage([], total)
    start = await _start_of_newest(js, stream, subject, skip + want, info.state.first_seq, info.state.last_seq)
    bodies = await _read(js, stream, subject, start, want)
    return TailPage(list(reversed(bodies)), total)


async def _start_of_newest(js: JetStreamContext, stream: str, subject: str, count: int, first: int, last: int) -> int:
    """The largest start sequence from which `subject` still has `count` messages."""
    low, high = max(first, 1), last
    while low < high:
        middle = (low + high + 1) // 2
        if await _pending_from(js, stream, subject, middle) >= count:
            low = middle
        else:
            high = middle - 1
    return low


async def _pending_from(js: JetStreamContext, stream: str, subject: str, start: int) -> int:
    name = f"tail_{ids.new_id().lower()}"
    info = await js.add_consumer(stream, _config(name, subject, start))
    await _delete(js, stream, name)
    return info.num_pending


async def _read(js: JetStreamContext, stream: str, subject: str, start: int, count: int) -> list[bytes]:
    name = f"tail_{ids.new_id().lower()}"
    await js.add_consumer(stream, _config(name, subject, start))
    bodies: list[bytes] = []
    try:
        sub = await js.pull_subscribe_bind(consumer=name, stream=stream)
        try:
            while len(bodies) < count:
                for msg in await sub.fetch(count - len(bodies), timeout=FETCH_TIMEOUT):
                    bodies.append(msg.data)
        finally:
            await sub.unsubscribe()
    finally:
        await _delete(js, stream, name)
    return bodies[:count]


def _config(name: str, subject: str, start: int) -> ConsumerConfig:
    return ConsumerConfig(
        name=name, filter_subject=subject, deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start,
        ack_policy=AckPolicy.NONE, inactive_threshold=IDLE_SECONDS, mem_storage=True, num_replicas=1,
    )


async def _delete(js: JetStreamContext, stream: str, name: str) -> None:
    # Fire and forget, as in Records.scan_items: inactive_threshold is the backstop.
    await js._nc.publish(f"$JS.API.CONSUMER.DELETE.{stream}.{name}", b"")  # noqa: SLF001
