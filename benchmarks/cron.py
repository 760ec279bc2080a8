"""Fire times per second: batchdeck's cron (`broker.schedule.fire_times`) against cronsim
and croniter, on the same expressions, in the same run.

    pip install -e '.[bench]'          # cronsim and croniter
    python -m benchmarks.cron [--rounds 5] [--times 2000] [--zone UTC --zone Europe/Berlin]

Expressions: a mix every implementation reads the same way (steps, ranges, lists, names,
`L`, `#`, 6 fields with seconds), none with both day fields restricted (where croniter
and classic cron disagree). For each zone and round, each implementation produces the
first `--times` fire times of every expression from the same start (aware datetimes in
that zone; batchdeck's are UTC instants, converted nowhere): fire times/s = all of them /
the time taken. Before timing, the first 200 fire times of every expression are compared
across implementations (as instants) and any difference is printed: a benchmark of
different answers would not be a comparison.

A second line per zone measures what `next_run_at` and `batch.next` cost on every reply:
parse + first fire time, with batchdeck's parse cache cleared before each expression.
Prints medians of the rounds and the ratio batchdeck / peer.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from broker import cron
from broker.schedule import fire_times

EXPRESSIONS = (
    "* * * * *",
    "*/5 * * * *",
    "0 * * * *",
    "15,45 9-17 * * 1-5",
    "0 3 * * *",
    "30 2 * * *",
    "0 0 1 * *",
    "0 0 L * *",
    "0 12 * * MON#2",
    "0 6 * * 5L",
    "0 0 1 JAN,JUL *",
    "10-50/20 */3 * * SUN",
    "0 8 1-7 * *",
    "0 0 1 1 *",
    "*/10 * * * * *",
    "30 0 4 * * *",
)
START = datetime(2026, 1, 1, 0, 0, 7)
CHECK_TIMES = 200

Generator = Callable[[str, str, datetime], Iterator[datetime]]


def batchdeck_times(expression: str, zone: str, start: datetime) -> Iterator[datetime]:
    return fire_times(expression, zone, start)


def cronsim_times(expression: str, zone: str, start: datetime) -> Iterator[datetime]:
    import cronsim
    return iter(cronsim.CronSim(expression, start))


def croniter_times(expression: str, zone: str, start: datetime) -> Iterator[datetime]:
    import croniter
    fields = expression.split()
    # croniter puts seconds last; the others (and batchdeck) put them first
    if len(fields) == 6:
        fields = fields[1:] + fields[:1]
    fields[4] = re.sub(r"^(\d)L$", r"L\1", fields[4])  # croniter writes the last Friday `L5`, not `5L`
    text = " ".join(fields)
    return croniter.croniter(text, start, ret_type=datetime, second_at_beginning=False).all_next(datetime)


def available() -> dict[str, Generator]:
    found: dict[str, Generator] = {"batchdeck": batchdeck_times}
    for name, generator in (("cronsim", cronsim_times), ("croniter", croniter_times)):
        try:
            __import__(name)
        except ImportError:
            print(f"{name} is not installed (pip install -e '.[bench]'): left out", file=sys.stderr)
            continue
        found[name] = generator
    return found


def first(generator: Generator, expression: str, zone: str, count: int) -> list[datetime]:
    start = START.replace(tzinfo=ZoneInfo(zone))
    return [t.astimezone(timezone.utc) for t in itertools.islice(generator(expression, zone, start), count)]


def check(generators: dict[str, Generator], zone: str) -> int:
    """Print where the implementations disagree; the number of expressions that differ."""
    differ = 0
    for expression in EXPRESSIONS:
        ours = first(generators["batchdeck"], expression, zone, CHECK_TIMES)
        for name, generator in generators.items():
            if name == "batchdeck":
                continue
            theirs = first(generator, expression, zone, CHECK_TIMES)
            if theirs != ours:
                differ += 1
                where = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
                print(f"  {zone} {expression!r}: {name} differs at fire time {where}: "
                      f"batchdeck {ours[where] if where < len(ours) else None}, "
                      f"{name} {theirs[where] if where < len(theirs) else None}")
    return differ


def iterate(generator: Generator, zone: str, count: int) -> float:
    """Fire times per second over every expression."""
    start = START.replace(tzinfo=ZoneInfo(zone))
    total = 0
    began = time.perf_counter()
    for expression in EXPRESSIONS:
        total += sum(1 for _ in itertools.islice(generator(expression, zone, start), count))
    return total / (time.perf_counter() - began)


def parse_and_next(generator: Generator, zone: str, repeat: int) -> float:
    """Expressions per second: parse, then the first fire time (batchdeck's cache cleared)."""
    start = START.replace(tzinfo=ZoneInfo(zone))
    began = time.perf_counter()
    for _ in range(repeat):
        for expression in EXPRESSIONS:
            cron.parse.cache_clear()
            next(generator(expression, zone, start))
    return repeat * len(EXPRESSIONS) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--times", type=int, default=2000, help="fire times per expression and round")
    parser.add_argument("--zone", action="append", help="IANA zone (repeatable); default UTC and Europe/Berlin")
    args = parser.parse_args()
    zones = args.zone or ["UTC", "Europe/Berlin"]
    generators = available()
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in generators if name != "batchdeck")
    print(f"{len(EXPRESSIONS)} expressions, {args.times} fire times each, {args.rounds} rounds; "
          f"Python {sys.version.split()[0]}; {versions or 'no peers'}")
    for zone in zones:
        if check(generators, zone):
            print(f"  ({zone}: the rates below compare different answers for the expressions above)")
        rates = {name: [iterate(g, zone, args.times) for _ in range(args.rounds)] for name, g in generators.items()}
        firsts = {name: [parse_and_next(g, zone, 20) for _ in range(args.rounds)] for name, g in generators.items()}
        for label, results, unit in (("fire times", rates, "fire times/s"), ("parse + next", firsts, "expr/s")):
            medians = {name: statistics.median(values) for name, values in results.items()}
            ours = medians["batchdeck"]
            peers = "  ".join(f"{name} {value:,.0f} (batchdeck {ours / value:.2f}x)"
                              for name, value in medians.items() if name != "batchdeck")
            print(f"{zone:<16} {label:<13} batchdeck {ours:,.0f} {unit}  {peers}")


if __name__ == "__main__":
    main()
