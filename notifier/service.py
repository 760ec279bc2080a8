"""The notifier service: final execution states in, one delivery per recipient out.

It reads every execution state event through the durable pull consumer `notifier` on
BD_EVENTS (instances share it, so each event goes to one of them), and for a final
state evaluates the rules (`notifier.rules`). Each recipient's delivery is claimed in KV
(`notifier.claims`), tried up to `max_attempts` times with a doubling pause, recorded
`sent` or `failed`, and published as `bd.{org}.evt.notify.{execution_id}` for the store.
An event is acked once every delivery it asked for is settled; a delivery held by
another instance leaves the event to come back after the claim's lease.

Retries of a run's actions happen inside one execution, which reaches a final state
once: people hear about the final outcome only, never about each failed try.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError, NotFoundError

from broker import codec, ids, streams, subjects
from broker.buckets import open_buckets
from broker.metrics import Metrics
from broker.refusals import Refusals
from broker.timestamps import now_iso, seconds_since
from broker.types import Execution, LogLine, Notification
from notifier import email, log_tail, webhook
from notifier.claims import Claim, ClaimLost, Claims, delivery_key
from notifier.destinations import WebhookPolicy
from notifier.errors import DeliveryError
from notifier.rules import Recipient, Rules

log = logging.getLogger("batchdeck.notifier")

CONSUMER = "notifier"
ACK_WAIT = 60.0
KEEP_ALIVE = 20.0
"""Seconds between `in_progress` signals while an event's deliveries run."""
FETCH = 64
LOG_LINES = 20
"""Log lines an email shows."""
SERVICE_NAME = "batchdeck-notifier"
"""The micro service whose stats carry a notifier's metrics (`broker.metrics`)."""


@dataclass
class NotifierSettings:
    smtp: email.SmtpSettings | None = None
    webhook_secrets: dict[str, bytes] = field(default_factory=dict)
    """Per org; the key `*` is every other org's."""
    webhook_policy: WebhookPolicy = field(default_factory=WebhookPolicy)
    """Where webhooks may go besides public addresses (`--webhook-allow`)."""
    max_attempts: int = 5
    retry_backoff: float = 2.0
    """Seconds before the second attempt; doubled before each next one (at most 5 minutes)."""
    webhook_timeout: float = 10.0
    max_age: float = 24 * 3600.0
    """Runs that ended longer ago than this are not reported (a notifier back after a long
    stop does not flood inboxes with old news)."""
    lease: float = 120.0
    """Seconds a `sending` claim is left to its holder before another instance takes it over."""
    concurrency: int = 16
    """Events handled at once."""
    org: str | None = None
    """Serve one org only (its own SMTP server and secret), through a consumer of its own;
    None: every org."""
    log_command: str = "batchdeck logs {id} --org {org}"
    """How an email tells the reader to see the whole log."""

    def channels(self) -> list[str]:
        """What can be delivered: "email" with SMTP, "webhooks" with a secret."""
        return [name for name, on in (("email", self.smtp), ("webhooks", self.webhook_secrets)) if on]

    def consumer(self) -> str:
        return CONSUMER if self.org is None else f"{CONSUMER}_{self.org}"

    def secret_for(self, org: str) -> bytes | None:
        return self.webhook_secrets.get(org, self.webhook_secrets.get("*"))


@dataclass
class Counters:
    events: int = 0
    final: int = 0
    sent: int = 0
    failed: int = 0
    attempts: int = 0
    old: int = 0


class NotifierService:
    def __init__(self, nc: Client, settings: NotifierSettings, name: str | None = None) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.settings = settings
        self.id = name or ids.instance_id()
        self.counters = Counters()
        self.refusals = Refusals(log)
        self.metrics = self._metrics()
        self._fetching = False
        self._task: asyncio.Task[None] | None = None
        self._handling: set[asyncio.Task[None]] = set()
        self._room = asyncio.Semaphore(settings.concurrency)
        self.rules: Rules | None = None
        self.claims: Claims | None = None

    def _metrics(self) -> Metrics:
        counted, metrics = self.counters, Metrics("notifier", self.id)
        metrics.counter("notifier_events", "execution state events read", lambda: counted.events)
        metrics.counter("notifier_final_events", "state events of runs that ended (the ones rules are checked on)",
                        lambda: counted.final)
        metrics.counter("notifier_old_events", "ended runs not reported because they ended longer ago than "
                        "--max-age", lambda: counted.old)
        metrics.counter("notifications_sent", "deliveries recorded sent", lambda: counted.sent)
        metrics.counter("notifications_failed", "deliveries recorded failed (attempts spent, or a permanent "
                        "error)", lambda: counted.failed)
        metrics.counter("notification_attempts", "attempts to deliver (an email sent or a webhook posted)",
                        lambda: counted.attempts)
        metrics.counter("notifier_events_refused", "state events whose body named another org or execution than "
                        "their subject (not reported)", self.refusals.total)
        metrics.gauge("notifier_events_in_progress", "events whose deliveries are under way",
                      lambda: len(self._handling))
        metrics.connection(self.nc)
        return metrics

    async def start(self) -> None:
        await self.metrics.serve(self.nc, SERVICE_NAME, f"batchdeck notifier {self.id}", {"notifier_id": self.id})
        await streams.wait_for_provisioning(self.js, log)
        buckets = await open_buckets(self.js)
        self.rules = Rules(buckets)
        self.claims = Claims(await self.js.key_value(streams.NOTIFICATIONS_BUCKET), self.id, self.settings.lease)
        await self._ensure_consumer()  # before start returns: what ends from now on is reported
        self._fetching = True
        self._task = asyncio.create_task(self._fetch_forever(), name="notifier-fetch")
        log.info("notifier %s: delivering %s", self.id, " and ".join(self.settings.channels()) or "nothing (no SMTP, "
                 "no webhook secret): every delivery will be recorded as failed")

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop taking events, give the deliveries under way `timeout` seconds to settle,
        then cut the rest short (their events come back to another instance)."""
        self._fetching = False
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._handling:
            _, late = await asyncio.wait(set(self._handling), timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self.metrics.close()

    # ---- the consumer -----------------------------------------------------------------

    async def _ensure_consumer(self) -> str:
        """The durable consumer, created if missing; its name."""
        name = self.settings.consumer()
        wanted = subjects.exec_event(self.settings.org or "*", "*", "state")
        try:
            info = await self.js.consumer_info(streams.EVENTS, name)
        except NotFoundError:
            # NEW: a first start reports what ends from now on, not the stream's week of history.
            config = ConsumerConfig(
                durable_name=name, filter_subject=wanted, ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT,
                deliver_policy=DeliverPolicy.NEW, max_deliver=-1, max_ack_pending=10_000,
            )
            try:
                info = await self.js.add_consumer(streams.EVENTS, config)
            except BadRequestError:
                info = await self.js.consumer_info(streams.EVENTS, name)  # another instance was first
        if info.config.filter_subject != wanted:
            raise RuntimeError(f"consumer {name} filters {info.config.filter_subject}, not {wanted}")
        return name

    async def _subscription(self) -> Any:
        name = await self._ensure_consumer()
        return await self.js.pull_subscribe_bind(durable=name, stream=streams.EVENTS)

    async def _fetch_forever(self) -> None:
        while self._fetching:
            sub = None
            try:
                sub = await self._subscription()
                while self._fetching:
                    try:
                        messages = await sub.fetch(FETCH, timeout=1.0)
                    except (NatsTimeout, asyncio.TimeoutError):
                        continue
                    for msg in messages:
                        if not self._fetching:
                            await msg.nak()  # fetched as we stopped: another instance takes it
                            continue
                        await self._room.acquire()
                        task = asyncio.create_task(self._handle(msg))
                        self._handling.add(task)
                        task.add_done_callback(self._handled)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # server restart, consumer removed: bind again
                log.warning("notifier: reading %s: %r; retrying", streams.EVENTS, err)
                await asyncio.sleep(1.0)
            finally:
                if sub is not None:
                    try:
                        await sub.unsubscribe()
                    except Exception:  # noqa: BLE001 - the connection may be gone already
                        pass

    def _handled(self, task: asyncio.Task[None]) -> None:
        self._handling.discard(task)
        self._room.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("notifier: an event failed: %r", task.exception())

    async def _handle(self, msg: Any) -> None:
        self.counters.events += 1
        try:
            execution = codec.decode(msg.data, Execution)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            log.warning("state event on %s is not an Execution (%s); skipped", msg.subject, err)
            await msg.ack()
            return
        org, execution_id = _subject_parts(msg.subject)
        if execution.org != org or execution.id != execution_id:
            # A runner writes the body of its org's events: the org (whose rules, webhook
            # secret and SMTP apply) is the subject's, never the body's.
            self.refusals.refuse("org", "state event on %s names org %r and execution %r: not reported",
                                 msg.subject, execution.org, execution.id)
            await msg.ack()
            return
        if not execution.is_final:
            await msg.ack()
            return
        self.counters.final += 1
        if _age(execution.finished_at) > self.settings.max_age:
            self.counters.old += 1
            await msg.ack()
            return
        traced = (msg.headers or {}).get(subjects.TRACE_HEADER) != "false"
        keep_alive = asyncio.create_task(_keep_alive(msg))
        try:
            settled = await self.report(execution, traced)
        finally:
            keep_alive.cancel()
        if settled:
            await msg.ack()
        else:
            await msg.nak(delay=self.settings.lease / 2)

    # ---- deliveries ---------------------------------------------------------------------

    async def report(self, execution: Execution, traced: bool = True) -> bool:
        """Deliver the final `execution` to everyone its rules name; False when some
        delivery is another instance's to finish (ask again later). The deliveries of an
        untraced run are marked so too: the store keeps no rows of it."""
        assert self.rules is not None
        recipients = await self.rules.recipients(execution)
        if not recipients:
            return True
        lines = _Lines(self.nc, execution)
        results = await asyncio.gather(*(self._deliver(execution, r, lines, traced) for r in recipients))
        return all(results)

    async def _deliver(self, execution: Execution, recipient: Recipient, lines: _Lines, traced: bool) -> bool:
        assert self.claims is not None
        now = now_iso()
        claim = await self.claims.claim(Notification(
            org=execution.org, execution_id=execution.id, channel=recipient.channel, target=recipient.target,
            rules=recipient.rules, execution_status=execution.status, notifier=self.id, created_at=now,
            updated_at=now, claim_id=secrets.token_hex(8),
        ))
        if claim.state == "settled":
            return True
        if claim.state == "busy":
            return False
        try:
            await self._attempt_until_settled(execution, claim, lines)
            await self.claims.save(claim)
        except ClaimLost:
            log.warning("notifier: delivery %s was taken over by another instance", delivery_key(claim.record))
            return True
        await self._publish(claim.record, traced)
        return True

    async def _attempt_until_settled(self, execution: Execution, claim: Claim, lines: _Lines) -> None:
        record = claim.record
        while record.status == "sending":
            if record.attempts >= self.settings.max_attempts:
                record.status = "failed"
                record.error = record.error or f"gave up after {record.attempts} attempts"
                break
            record.attempts += 1
            self.counters.attempts += 1
            await self.claims.save(claim)  # renews the lease before each attempt
            try:
                await self._send(execution, record, lines)
            except DeliveryError as err:
                record.error = err.message
                if err.permanent or record.attempts >= self.settings.max_attempts:
                    record.status = "failed"
                else:
                    await asyncio.sleep(self._pause(record.attempts, err.retry_after))
            else:
                record.status, record.error, record.sent_at = "sent", None, now_iso()
        if record.status == "sent":
            self.counters.sent += 1
            log.info("notified %s of %s (%s, %s)", record.target, execution.id, execution.name, execution.status)
        else:
            self.counters.failed += 1
            log.warning("could not notify %s of %s after %d attempts: %s", record.target, execution.id,
                        record.attempts, record.error)

    def _pause(self, attempt: int, asked: float | None) -> float:
        pause = min(self.settings.retry_backoff * 2 ** (attempt - 1), 300.0)
        return max(pause, asked) if asked is not None else pause

    async def _send(self, execution: Execution, record: Notification, lines: _Lines) -> None:
        if record.channel == "email":
            smtp = self.settings.smtp
            if smtp is None:
                raise DeliveryError("no SMTP server is configured (--smtp-url)", permanent=True)
            message = email.compose(execution, await lines.get(), recipient=record.target, sender=smtp.sender,
                                    log_command=self.settings.log_command.format(id=execution.id, org=execution.org))
            await email.send(smtp, message)
            return
        secret = self.settings.secret_for(execution.org)
        if secret is None:
            raise DeliveryError(f"no webhook secret is configured for org {execution.org!r} (--webhook-secret)",
                                permanent=True)
        await webhook.post(record.target, codec.encode(execution), secret=secret,
                           delivery_id=delivery_key(record), event=f"execution.{execution.status}",
                           timeout=self.settings.webhook_timeout, policy=self.settings.webhook_policy)

    async def _publish(self, record: Notification, traced: bool) -> None:
        subject = subjects.notify_event(record.org, record.execution_id)
        # The claim's random id keeps the key out of reach of another org's runner, which
        # publishes into BD_EVENTS too (de-duplication is stream-wide).
        msg_id = f"{delivery_key(record)}.{record.claim_id or 'claim'}.{record.status}.{record.attempts}"
        headers = {"Nats-Msg-Id": msg_id} if traced else {"Nats-Msg-Id": msg_id, subjects.TRACE_HEADER: "false"}
        delay = 0.1
        while True:  # the delivery happened: its record must reach the history
            try:
                await self.js.publish(subject, codec.encode(record), headers=headers)
                return
            except Exception as err:  # noqa: BLE001 - a server restart; JetStream de-duplicates the retry
                log.warning("notifier: recording %s: %r; retrying", msg_id, err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


class _Lines:
    """An execution's last log lines, read once for all of its emails."""

    def __init__(self, nc: Client, execution: Execution) -> None:
        self.nc = nc
        self.execution = execution
        self._lines: asyncio.Task[list[LogLine]] | None = None

    async def get(self) -> list[LogLine]:
        if self._lines is None:
            self._lines = asyncio.ensure_future(log_tail.last_lines(self.nc, self.execution, LOG_LINES))
        return await asyncio.shield(self._lines)


async def _keep_alive(msg: Any) -> None:
    while True:
        await asyncio.sleep(KEEP_ALIVE)
        try:
            await msg.in_progress()
        except Exception:  # noqa: BLE001 - the event comes back later; the claims keep it single
            return


def _subject_parts(subject: str) -> tuple[str, str]:
    """(org, execution id) of `bd.{org}.evt.exec.{id}.state`."""
    tokens = subject.split(".")
    return (tokens[1], tokens[4]) if len(tokens) == 6 else ("", "")


def _age(moment: str | None) -> float:
    if not moment:
        return 0.0
    try:
        return seconds_since(moment)
    except ValueError:
        return 0.0

