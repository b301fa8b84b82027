"""Per-record warnings that stay quiet under a flood: counted per (topic, reason), summed up
in one line per interval.

A hostile producer can write a million bad records a minute; one WARNING line each would
bury the log (and fill the disk) without saying more than the first few did. A
:class:`QuietLog` logs the first occurrence of each (topic, reason) in an interval at once,
with its error text, so that a single bad record is visible immediately; later ones are
only counted, and the interval's counts are logged as one line::

    predictor rejected 1,234 records in the last 10 s: requests: invalid-json 1,000, too-deep 234

An interval starts with the first record counted; its summary is logged by the first call
after it has elapsed, by :func:`flush_all` with ``if_due=True`` (which the runner calls from
its one-second heartbeat, so no task of its own is needed), or by :func:`flush_all` when a
service stops (and at interpreter exit), so the last counts are not lost. An interval in
which every record was logged in full has no summary: one bad record is one line.

The log is only a view. Prometheus counters (``modelstream_records_rejected_total`` and
the like) are incremented per record by the callers and stay the exact truth.

One QuietLog per name per process (as ``logging.getLogger``): the several boundaries of one
service share one summary line. Keys must come from a bounded set (logical topic names,
model names, designed reasons), never from a record's content.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable

DEFAULT_INTERVAL_S = 10.0

Key = tuple[str, str]


class QuietLog:
    """Logs the first ``warn`` of each (topic, reason) per interval; counts the rest and logs
    them as ``<name> <n> <noun> in the last <s> s: <topic>: <reason> <n>, ...; <topic>: ...``."""

    def __init__(
        self,
        logger: logging.Logger,
        name: str,
        noun: str = "records",
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.name = name
        self.noun = noun
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[Key, int] = {}
        self._started = 0.0

    def warn(self, topic: str, reason: str, message: str, *args: object) -> None:
        """Count one occurrence; log ``message % args`` at WARNING when it is the first of
        (``topic``, ``reason``) in the interval."""
        now = self._clock()
        with self._lock:
            summary = self._take(now) if self._due(now) else None
            if not self._counts:
                self._started = now
            count = self._counts.get((topic, reason), 0) + 1
            self._counts[(topic, reason)] = count
        # stacklevel: the record names the caller's line, not this one
        if summary:
            self.logger.warning("%s", summary, stacklevel=2)
        if count == 1:
            self.logger.warning(message, *args, stacklevel=2)

    def flush(self, *, if_due: bool = False) -> None:
        """Log the counts of the interval so far and start a new one (with ``if_due``, only
        once the interval has elapsed)."""
        now = self._clock()
        with self._lock:
            summary = self._take(now) if not if_due or self._due(now) else None
        if summary:
            self.logger.warning("%s", summary)

    def _due(self, now: float) -> bool:
        return bool(self._counts) and now - self._started >= self.interval_s

    def _take(self, now: float) -> str | None:
        counts, self._counts = self._counts, {}
        total = sum(counts.values())
        if total == len(counts):
            return None  # each was logged in full
        by_topic: dict[str, dict[str, int]] = {}
        for (topic, reason), count in counts.items():
            by_topic.setdefault(topic, {})[reason] = count
        parts = []
        for topic, reasons in sorted(by_topic.items(), key=lambda t: (-sum(t[1].values()), t[0])):
            listed = sorted(reasons.items(), key=lambda r: (-r[1], r[0]))
            parts.append(f"{topic}: " + ", ".join(f"{reason} {n:,}" for reason, n in listed))
        seconds = max(1, round(now - self._started))
        return f"{self.name} {total:,} {self.noun} in the last {seconds} s: " + "; ".join(parts)


_lock = threading.Lock()
_logs: dict[str, QuietLog] = {}
_interval_s = DEFAULT_INTERVAL_S


def quiet_log(logger: logging.Logger, name: str, noun: str = "records") -> QuietLog:
    """The process's QuietLog called ``name``, created on first use."""
    with _lock:
        found = _logs.get(name)
        if found is None:
            found = _logs[name] = QuietLog(logger, name, noun, _interval_s)
        return found


def set_interval(seconds: float) -> None:
    """The interval of every QuietLog of the process (``MODELSTREAM_LOG_SUMMARY_S``)."""
    global _interval_s
    with _lock:
        _interval_s = seconds
        for each in _logs.values():
            each.interval_s = seconds


def flush_all(*, if_due: bool = False) -> None:
    """Flush every QuietLog of the process (with ``if_due``, those whose interval elapsed)."""
    with _lock:
        logs = list(_logs.values())
    for each in logs:
        each.flush(if_due=if_due)


atexit.register(flush_all)  # runs before logging's own shutdown (registered earlier)
