"""The error boundary around one record, shared by every consumer in every service.

Handling a record (decoding, validating, processing, producing what it leads to) either
succeeds or the record goes to ``deadletter`` with a reason, is counted, is logged (once, or
under a flood only in a summary of counts: see :mod:`modelstream.kafka.quiet`), and the
consumer goes on - the contract of Kafka Streams' deserialization and processing
exception handlers (KIP-1033). What decides between "this record" and "the infrastructure"
is :func:`record_failure`: a modelstream error or any unexpected exception while handling one
record is that record's fault (reason ``internal-error`` for the unexpected); a Kafka error
that says the broker, the network or our own producer is in trouble is not, and propagates
so that the service retries or stops.

Two further guards keep one bad record from stopping a service for good:

* :class:`Attempts` bounds how often the same record (by position) may fail at the batch
  level - where the record cannot be told apart from its batch, e.g. a transaction that
  does not commit. Past the bound the caller handles that batch one record at a time, and a
  record that still fails is dead-lettered with its offset committed.
* :class:`CrashGuard` survives a crash of the process itself (a native library aborting on
  a record): it notes the positions in flight in a local file before handling them, so that
  the restarted service finds them and, past the bound, dead-letters instead of crashing again.
  It serves the one-record-per-transaction services (validator, publisher), which run one
  copy; the transactional batch pipeline (the predictor's, several copies) keeps its counts
  in Kafka instead, so they follow the partition (``kafka/in_flight.py``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import (
    CorruptRecordException,
    InvalidMessageError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from modelstream.errors import BrokerError, ConfigurationError, ModelstreamError
from modelstream.kafka.quiet import QuietLog, quiet_log
from modelstream.kafka.writers import DeadLetterWriter
from modelstream.telemetry import DEAD_LETTERS, RECORDS_READ, RECORDS_REJECTED

log = logging.getLogger(__name__)

INTERNAL_ERROR = "internal-error"
# Kafka errors about one record's own bytes (or what it produced), not about the cluster.
_RECORD_KAFKA_ERRORS: dict[type[KafkaError], str] = {
    MessageSizeTooLargeError: "output-too-large",
    RecordTooLargeError: "output-too-large",
    RecordListTooLargeError: "output-too-large",
    InvalidMessageError: "invalid-output",
    CorruptRecordException: "invalid-output",
}


@dataclass(frozen=True, slots=True)
class Failure:
    """Why one record could not be handled: the dead-letter reason and a short error text."""

    reason: str
    error: str


def record_failure(exc: BaseException) -> Failure | None:
    """The record's failure, or None when ``exc`` is about the infrastructure (or a
    cancellation), which the caller must not absorb."""
    if not isinstance(exc, Exception):
        return None  # CancelledError, KeyboardInterrupt, SystemExit
    if isinstance(exc, BrokerError | ConfigurationError):
        return None
    if isinstance(exc, ModelstreamError):
        return Failure(exc.reason, str(exc))
    if isinstance(exc, KafkaError):
        for kind, reason in _RECORD_KAFKA_ERRORS.items():
            if isinstance(exc, kind):
                return Failure(reason, f"{type(exc).__name__}: {exc}")
        return None
    return Failure(INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:1000])


def logical_topic(topic: str) -> str:
    """The topic's name without the deployment's prefix (``modelstream.requests``:
    ``requests``): one metric label per topic whatever the prefix."""
    return topic.rsplit(".", 1)[-1]


class Boundary:
    """Counts the failures of one service's records, each, and logs them quietly.

    ``reject(topic, partition, offset, failure)`` is what every consumer calls when a record
    goes to the dead letters (or, for consumers that cannot write them, is skipped). The
    metrics count every record; the log goes through the service's :class:`QuietLog` (shared
    by all its boundaries): the first rejection of each topic and reason in an interval with
    its error text, then one line of counts per interval, so that a flood of bad input cannot
    flood the log. An unexpected exception says *where* with its traceback, at most once a
    minute per place it was raised (its type, file and line: a bounded set, unlike its text,
    which can quote the record); how often it happened is in the rejections' counts."""

    TRACEBACK_EVERY_S = 60.0
    _last_traceback: ClassVar[dict[tuple[str, str, int], float]] = {}  # per process

    def __init__(self, service: str, rejections: QuietLog | None = None) -> None:
        self.service = service
        self._rejections = rejections or quiet_log(log, f"{service} rejected")

    def failure(self, exc: BaseException) -> Failure:
        """The record's failure for ``exc``; re-raises infrastructure errors."""
        failure = record_failure(exc)
        if failure is None:
            raise exc
        if failure.reason == INTERNAL_ERROR:
            site = _raised_at(exc)
            now = time.monotonic()
            if now - self._last_traceback.get(site, -1e9) >= self.TRACEBACK_EVERY_S:
                self._last_traceback[site] = now
                log.error("unexpected error while handling a record", exc_info=exc)
        return failure

    def read(self, topic: str, count: int = 1) -> None:
        """Count records read from ``topic`` (what every rejection is a part of)."""
        RECORDS_READ.labels(self.service, logical_topic(topic)).inc(count)

    def reject(
        self, topic: str, partition: int, offset: int, failure: Failure, model: str = ""
    ) -> None:
        logical = logical_topic(topic)
        RECORDS_REJECTED.labels(self.service, logical, failure.reason).inc()
        self._rejections.warn(
            logical,
            failure.reason,
            "%s[%d]@%d rejected: %s: %s",
            topic,
            partition,
            offset,
            failure.reason,
            failure.error,
        )


def _raised_at(exc: BaseException) -> tuple[str, str, int]:
    """Where ``exc`` was raised: its type and the innermost frame's file and line."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return type(exc).__qualname__, "", 0
    return type(exc).__qualname__, tb.tb_frame.f_code.co_filename, tb.tb_lineno


class Attempts:
    """How often handling failed at each position (a batch's first record, or one record),
    for failures at the batch level; past ``bound`` the caller handles the position more
    narrowly: a batch record by record, a record by dead-lettering it."""

    def __init__(self, bound: int = 3) -> None:
        self.bound = bound
        self._failures: dict[Hashable, int] = {}

    def failed(self, key: Hashable) -> int:
        self._failures[key] = self._failures.get(key, 0) + 1
        if len(self._failures) > 10_000:  # positions long past; keep the newest
            for old in list(self._failures)[:5_000]:
                del self._failures[old]
        return self._failures[key]

    def exhausted(self, key: Hashable) -> bool:
        return self._failures.get(key, 0) >= self.bound

    def succeeded(self, key: Hashable) -> None:
        self._failures.pop(key, None)


class CrashGuard:
    """Positions in flight, noted in a local file before they are handled and cleared after.

    A file left behind by a process that died counts one crash for each position in it;
    :meth:`crashes` tells the restarted service how often a position has taken the process
    down, so that past the bound it is dead-lettered unhandled. The file is written without
    fsync: it has to survive the process, not the machine."""

    def __init__(self, path: Path, bound: int = 2) -> None:
        self.path = path
        self.bound = bound
        self._crashes: dict[str, int] = {}
        self._in_flight: dict[str, int] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            saved = json.loads(path.read_text() or "{}")
        except (OSError, ValueError):
            saved = {}
        for key, count in saved.get("in_flight", {}).items():
            self._crashes[key] = int(count) + 1  # it was in flight when the process died
            log.warning(
                "%s was being handled when this service last died (%d time(s))",
                key,
                self._crashes[key],
            )
        self._save()

    @staticmethod
    def key(topic: str, partition: int, offset: int) -> str:
        return f"{topic}:{partition}:{offset}"

    def crashes(self, topic: str, partition: int, offset: int) -> int:
        return self._crashes.get(self.key(topic, partition, offset), 0)

    def begin(self, positions: Iterable[tuple[str, int, int]]) -> None:
        for topic, partition, offset in positions:
            key = self.key(topic, partition, offset)
            self._in_flight[key] = self._crashes.get(key, 0)
        self._save()

    def end(self, positions: Iterable[tuple[str, int, int]]) -> None:
        for topic, partition, offset in positions:
            key = self.key(topic, partition, offset)
            self._in_flight.pop(key, None)
            self._crashes.pop(key, None)
        self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"in_flight": self._in_flight}))
        os.replace(tmp, self.path)


AfterCommit = Callable[[], None] | None
Emit = Callable[[], Awaitable[AfterCommit]]


class OneRecordTransactions:
    """Handles records one transaction each, in two steps: ``prepare(record)`` decodes,
    validates and computes without side effects (it may take long: no transaction is open),
    and returns ``emit``, which sends the outputs inside the record's transaction together
    with its offset and may return a callback for in-memory effects after the commit.

    A record whose prepare or emit fails is dead-lettered, with its offset, in a transaction
    of its own, so it is never handled again (no poison-pill loop, also on ``control``)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        group: str,
        dead: DeadLetterWriter,
        boundary: Boundary,
        model_label: Callable[[ConsumerRecord], str],
        on_reject: Callable[[ConsumerRecord, Failure], Awaitable[None]] | None = None,
    ) -> None:
        self.producer = producer
        self.group = group
        self.dead = dead
        self.boundary = boundary
        self.model_label = model_label
        self.on_reject = on_reject

    async def handle(
        self, record: ConsumerRecord, prepare: Callable[[ConsumerRecord], Awaitable[Emit]]
    ) -> bool:
        """True when the record was handled, False when it was dead-lettered."""
        tp = TopicPartition(record.topic, record.partition)
        offsets = {tp: record.offset + 1}
        self.boundary.read(record.topic)
        try:
            emit = await prepare(record)
            async with self.producer.transaction():
                after = await emit()
                await self.producer.send_offsets_to_transaction(offsets, self.group)
        except Exception as exc:
            failure = self.boundary.failure(exc)  # infrastructure errors propagate
            async with self.producer.transaction():
                await self.dead.send(record, failure.reason, failure.error)
                if self.on_reject is not None:
                    await self.on_reject(record, failure)
                await self.producer.send_offsets_to_transaction(offsets, self.group)
            self.boundary.reject(record.topic, record.partition, record.offset, failure)
            DEAD_LETTERS.labels(self.boundary.service, self.model_label(record)).inc()
            return False
        if after is not None:
            after()
        return True
