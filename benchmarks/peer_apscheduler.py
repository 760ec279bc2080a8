"""The APScheduler 3.x peer of `benchmarks.scheduler`: the same cron schedules, one job
each, in an `AsyncIOScheduler`, every fire publishing a trigger to NATS.

    python -m benchmarks.peer_apscheduler --nats URL --specs FILE

FILE is a JSON list of `{"id", "cron", "timezone"}` (`cron` with macros expanded, 5 or
6 fields, seconds first; weekdays in cron numbering, 0 = Sunday). 5-field schedules
become `CronTrigger.from_crontab`, 6-field ones `CronTrigger(second=..., ...)`, each in
its own timezone; weekday numbers are passed as names because APScheduler 3.x counts
0 as Monday.

Per fire the job does what batchdeck's scheduler does per tick, minus JetStream: it
builds a trigger of the same shape (`batch_id`, `scheduled_at`, `fired_at` in RFC 3339
with milliseconds), encodes it as JSON and publishes it with a core NATS publish on
`apsbench.trigger.{id}`. `scheduled_at` is the run time APScheduler scheduled the job
for (`JobSubmissionEvent.scheduled_run_times`), `fired_at` the wall clock when the job
body started. Misfired runs are not dropped (`misfire_grace_time=None`), late ones are
coalesced (as batchdeck's default `catch_up: last`).

Prints `ready N` once every job is added and the scheduler runs; on SIGTERM prints one
JSON line of counts (fires, missed, max_instances, errors) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from datetime import datetime, timezone

import nats
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobEvent,
)
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from nats.aio.client import Client

SUBJECT_PREFIX = "apsbench.trigger"
ORG = "default"
WEEKDAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")  # cron numbering, 7 = Sunday too


def weekday_names(field: str) -> str:
    """A cron weekday field (`*`, `1`, `1-5`, `0,6`) with APScheduler weekday names."""
    if field == "*":
        return field
    parts = []
    for part in field.split(","):
        bounds, _, step = part.partition("/")
        names = "-".join(WEEKDAY_NAMES[int(b)] if b.isdigit() else b for b in bounds.split("-"))
        parts.append(f"{names}/{step}" if step else names)
    return ",".join(parts)


def cron_trigger(cron: str, tz: str) -> CronTrigger:
    fields = cron.split()
    if len(fields) == 5:
        minute, hour, day, month, weekday = fields
        return CronTrigger.from_crontab(" ".join([minute, hour, day, month, weekday_names(weekday)]), timezone=tz)
    second, minute, hour, day, month, weekday = fields
    return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month,
                       day_of_week=weekday_names(weekday), timezone=tz)


def iso(moment: float) -> str:
    """Epoch seconds as RFC 3339 UTC with milliseconds (batchdeck's wire format)."""
    utc = datetime.fromtimestamp(moment, timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


class Peer:
    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.scheduled: dict[str, float] = {}  # job id -> run time it was just submitted for
        self.counts = {"fires": 0, "missed": 0, "max_instances": 0, "errors": 0}

    def on_event(self, event: JobEvent) -> None:
        # Submission events are dispatched synchronously at the end of the scheduler's
        # pass over due jobs, before the event loop runs any submitted coroutine.
        if event.code == EVENT_JOB_SUBMITTED:
            self.scheduled[event.job_id] = event.scheduled_run_times[-1].timestamp()
        elif event.code == EVENT_JOB_MISSED:
            self.counts["missed"] += 1
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            self.counts["max_instances"] += 1
        elif event.code == EVENT_JOB_ERROR:
            self.counts["errors"] += 1

    async def fire(self, batch_id: str) -> None:
        fired = time.time()
        scheduled = iso(self.scheduled.pop(batch_id, fired))
        trigger = {"trigger_id": f"{ORG}.{batch_id}@{scheduled}", "batch_id": batch_id, "source": "cron",
                   "scheduled_at": scheduled, "fired_at": iso(fired), "org": ORG}
        await self.nc.publish(f"{SUBJECT_PREFIX}.{batch_id}", json.dumps(trigger).encode())
        self.counts["fires"] += 1


async def run(url: str, specs: list[dict[str, str]]) -> None:
    nc = await nats.connect(url, name="apscheduler-peer")
    peer = Peer(nc)
    scheduler = AsyncIOScheduler(job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1})
    scheduler.add_listener(peer.on_event,
                           EVENT_JOB_SUBMITTED | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_ERROR)
    for spec in specs:
        scheduler.add_job(peer.fire, cron_trigger(spec["cron"], spec["timezone"]), args=[spec["id"]], id=spec["id"])
    scheduler.start()
    print(f"ready {len(scheduler.get_jobs())}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    scheduler.shutdown(wait=False)
    await nc.drain()
    print(json.dumps(peer.counts), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nats", required=True, metavar="URL")
    parser.add_argument("--specs", required=True, metavar="FILE")
    args = parser.parse_args()
    with open(args.specs, encoding="utf-8") as handle:
        specs = json.load(handle)
    asyncio.run(run(args.nats, specs))
    sys.exit(0)


if __name__ == "__main__":
    main()
