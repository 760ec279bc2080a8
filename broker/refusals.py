"""Counting what a service refused to act on, and saying so without flooding its log.

A hostile or broken client can send a refused message many times a second: every one
is counted (the counts are metrics), and each kind is logged at most once per
LOG_INTERVAL seconds, with how many were refused since the last line.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

LOG_INTERVAL = 10.0
"""Seconds between two log lines of the same kind of refusal."""


class Refusals:
    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.counts: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    def refuse(self, kind: str, message: str, *args: object) -> None:
        """Count one refusal of `kind` (a short stable name, e.g. "reply_not_inbox") and
        log `message % args` unless a line of this kind went out less than LOG_INTERVAL ago."""
        self.counts[kind] += 1
        now = time.monotonic()
        if now - self._logged_at.get(kind, -LOG_INTERVAL) < LOG_INTERVAL:
            self._unlogged[kind] += 1
            return
        self._logged_at[kind] = now
        since = self._unlogged.pop(kind, 0)
        suffix = f" ({since} more refused since the last line)" if since else ""
        self.log.warning(message + suffix, *args)

    def count(self, kind: str) -> int:
        return self.counts[kind]

    def total(self) -> int:
        return sum(self.counts.values())
