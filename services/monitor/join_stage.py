"""The monitor's join on the streaming core: requests, predictions and feedback meet by
request id, exactly once, whatever partitioner wrote them.

One task per partition number of six co-partitioned topics: ``requests``, ``predictions``,
``feedback`` and their internal copies ``monitor-requests``, ``monitor-predictions``,
``monitor-feedback``. A request id belongs to join partition ``crc32(id) % 6``. A record
read from a user topic in that partition is joined where it is (the predictor writes
predictions there, and so does any producer that partitions by the CRC-32 of the request id,
such as librdkafka's default); any other is forwarded to the internal copy's partition of its
request id, in the same transaction, and joined when it arrives there. So co-partitioning
never depends on the partitioner of a user's producer.

A task's join entries live in memory and in the compacted ``monitor-join-state`` changelog
(partition = task), written in the transaction that commits the inputs that changed them;
a complete label goes, in that transaction too, to ``monitor-labelled`` (one record per model
and batch, in the partition of its model) for the learner. Feedback whose request id saw no
prediction within the TTL is dead-lettered (reason ``no-prediction``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

from aiokafka import ConsumerRecord

from modelstream.contracts.builders import now_ms
from modelstream.contracts.codec import MAGIC, AvroCodec
from modelstream.contracts.definitions import check_request_id
from modelstream.contracts.limits import Limits
from modelstream.contracts.records import (
    Feedback,
    MonitorJoinState,
    MonitorLabelled,
    MonitorLabelledBatch,
    Prediction,
    PredictionRequest,
)
from modelstream.contracts.wire import string, zigzag
from modelstream.errors import DecodeError, InvalidEventError
from modelstream.kafka.boundary import Boundary, Failure
from modelstream.kafka.changelog import Changelog, Restored
from modelstream.kafka.pipeline import Outgoing, Written, dead_letter, key_partition
from modelstream.kafka.topology import (
    DEADLETTER,
    FEEDBACK,
    JOIN_PARTITIONS,
    LEARN_PARTITIONS,
    MONITOR_FEEDBACK,
    MONITOR_JOIN_STATE,
    MONITOR_LABELLED,
    MONITOR_PREDICTIONS,
    MONITOR_REQUESTS,
    PREDICTIONS,
    REQUESTS,
)
from modelstream.kafka.writers import Header, SourcePosition
from modelstream.services.monitor import logic
from modelstream.services.monitor.logic.join import (
    Completed,
    Entry,
    JoinTable,
    Staged,
    from_state,
)
from modelstream.settings import Settings
from modelstream.telemetry import (
    EVENTS_CONSUMED,
    FEEDBACK_ACCEPTED,
    JOIN_DUPLICATES,
    JOIN_EXPIRED,
    JOIN_PENDING,
    JOIN_STATE_BYTES,
    MONITOR_FORWARDED,
    MONITOR_RESTORE_SECONDS,
)

log = logging.getLogger("modelstream.monitor.join")
SERVICE = "monitor"
# Where forwarded feedback was on `feedback` (lineage and dead letters name that record).
FEEDBACK_PARTITION = "feedback.partition"
FEEDBACK_OFFSET = "feedback.offset"
LABELLED_RECORD_BYTES = 1024 * 1024  # one `monitor-labelled` record holds labels up to this
# Requests larger than this are kept without their tensors: a join entry holds ids, features
# and the prediction, not a 1 MB image for the length of the TTL (and three changelog writes).
SLIM_OVER = 16 * 1024
EXPIRE_PER_TICK = 20_000

RECORD_TYPES: dict[str, type] = {
    logic.REQUESTS: PredictionRequest,
    logic.PREDICTIONS: Prediction,
    logic.FEEDBACK: Feedback,
}


class JoinStateWriter:
    """MonitorJoinState, encoded by hand: written for every change of every join entry, it is
    the join's most frequent output (the same bytes as the codec's, unit-tested)."""

    def __init__(self, fingerprint: bytes) -> None:
        self.header = MAGIC + fingerprint

    def encode(self, entry: Entry) -> bytes:
        parts = [self.header, zigzag(entry.first_seen_ms)]
        for value in (entry.request, entry.prediction, entry.feedback):
            parts.append(b"\x00" if value is None else b"\x02" + string(value))
        if entry.feedback_source is None:
            parts.append(b"\x00\x00")
        else:
            partition, offset = entry.feedback_source
            parts.append(b"\x02" + zigzag(partition) + b"\x02" + zigzag(offset))
        parts.append(b"\x01" if entry.done else b"\x00")
        return b"".join(parts)


def join_partition(request_id: bytes) -> int:
    """The join task a request id belongs to: where the predictor writes its prediction."""
    return key_partition(request_id, JOIN_PARTITIONS)


def learn_partition(model: str) -> int:
    """The learner task a model belongs to."""
    return key_partition(model.encode(), LEARN_PARTITIONS)


def join_inputs(settings: Settings) -> list[str]:
    return [
        settings.topic(t)
        for t in (
            REQUESTS,
            PREDICTIONS,
            FEEDBACK,
            MONITOR_REQUESTS,
            MONITOR_PREDICTIONS,
            MONITOR_FEEDBACK,
        )
    ]


class JoinStage:
    """The join's processor (see :class:`modelstream.kafka.pipeline.Processor`)."""

    def __init__(
        self, settings: Settings, codec: AvroCodec, changelog: Changelog, ttl_ms: int
    ) -> None:
        self.codec = codec
        self.changelog = changelog
        self.ttl_ms = ttl_ms
        self.limits: Limits = settings.limits()
        self.boundary = Boundary(SERVICE)
        self.topic_changelog = settings.topic(MONITOR_JOIN_STATE)
        self.topic_labelled = settings.topic(MONITOR_LABELLED)
        self.topic_deadletter = settings.topic(DEADLETTER)
        self.topic_feedback = settings.topic(FEEDBACK)
        # topic -> (kind, internal)
        self.kinds: dict[str, tuple[str, bool]] = {
            settings.topic(REQUESTS): (logic.REQUESTS, False),
            settings.topic(PREDICTIONS): (logic.PREDICTIONS, False),
            settings.topic(FEEDBACK): (logic.FEEDBACK, False),
            settings.topic(MONITOR_REQUESTS): (logic.REQUESTS, True),
            settings.topic(MONITOR_PREDICTIONS): (logic.PREDICTIONS, True),
            settings.topic(MONITOR_FEEDBACK): (logic.FEEDBACK, True),
        }
        self.forward_to = {
            logic.REQUESTS: settings.topic(MONITOR_REQUESTS),
            logic.PREDICTIONS: settings.topic(MONITOR_PREDICTIONS),
            logic.FEEDBACK: settings.topic(MONITOR_FEEDBACK),
        }
        self.join_state = JoinStateWriter(codec.schema(MonitorJoinState).fingerprint)
        self.tables: dict[int, JoinTable] = {}
        self.staged: dict[int, Staged] = {}
        self.owned: set[int] = set()
        self.restores: list[Restored] = []
        self.joined = 0  # labels completed and committed, since start
        self.expired_by_model: dict[str, int] = defaultdict(int)
        self.forwarded = 0

    # -- processing ----------------------------------------------------------------------
    def _staged(self, task: int) -> Staged:
        staged = self.staged.get(task)
        if staged is None:
            staged = self.staged[task] = self.tables.setdefault(task, JoinTable()).stage()
        return staged

    def process(self, task: int, records: list[ConsumerRecord]) -> list[Outgoing]:
        staged = self._staged(task)
        first_new = len(staged.completed)
        now = now_ms()
        out: list[Outgoing] = []
        touched: dict[bytes, ConsumerRecord] = {}
        for record in records:
            kind, internal = self.kinds[record.topic]
            try:
                request_id, _ = self.codec.ids(record.value, RECORD_TYPES[kind], self.limits)
                check_request_id(request_id, None)
            except (DecodeError, InvalidEventError) as exc:
                self._unreadable(record, kind, exc, out)
                continue
            key = request_id.encode()
            partition = join_partition(key)
            value = record.value
            if kind == logic.REQUESTS and len(value) > SLIM_OVER:
                value = self._slim(value)
            if internal:
                source = _feedback_source(record) if kind == logic.FEEDBACK else None
            elif partition != record.partition:
                out.append(self._forward(record, kind, key, partition, value))
                continue
            else:
                source = (record.partition, record.offset)
            if staged.add(key, kind, value, now, source):
                touched[key] = record
            elif kind == logic.FEEDBACK:  # a second label for the request: the first one holds
                self._refuse(
                    record,
                    Failure(
                        "duplicate-feedback",
                        f"request {request_id!r} already has a label; the first one is used",
                    ),
                    out,
                )
        EVENTS_CONSUMED.labels(SERVICE).inc(len(records))
        for key in touched:
            entry = staged.changed[key]
            assert entry is not None
            value = self.join_state.encode(entry)
            out.append(Outgoing(self.topic_changelog, key, value, task, None, touched[key]))
        out.extend(self._labelled(staged.completed[first_new:], touched))
        return out

    def _unreadable(
        self,
        record: ConsumerRecord,
        kind: str,
        exc: DecodeError | InvalidEventError,
        out: list[Outgoing],
    ) -> None:
        """Feedback nobody else reads is dead-lettered here; requests are the predictor's to
        dead-letter (it reads them first), and predictions are the predictor's own output."""
        if kind != logic.FEEDBACK:
            log.debug("skipping unreadable %s record: %s", kind, exc)
            return
        self._refuse(record, Failure(exc.reason, str(exc)), out)

    def _refuse(self, record: ConsumerRecord, failure: Failure, out: list[Outgoing]) -> None:
        """Dead-letter feedback, naming where it was on `feedback` (also when forwarded)."""
        position = _original_position(record, self.topic_feedback)
        self.boundary.reject(position.topic, position.partition, position.offset, failure)
        out.append(
            dead_letter(self.topic_deadletter, SERVICE, position, record.key, record.value, failure)
        )

    def _slim(self, value: bytes) -> bytes:
        """A large request as the join keeps it: without its tensors (an image, a file),
        which nothing after the join reads; one that does not decode stays as it is (the
        predictor dead-letters it, and its entry expires)."""
        try:
            request = self.codec.decode_any(value, PredictionRequest, self.limits)
        except (DecodeError, InvalidEventError):
            return value
        if not request.get("tensors"):
            return value
        return self.codec.encode(PredictionRequest, {**request, "tensors": []})

    def _forward(
        self, record: ConsumerRecord, kind: str, key: bytes, partition: int, value: bytes
    ) -> Outgoing:
        headers: list[Header] = []
        if kind == logic.FEEDBACK:
            headers = [
                (FEEDBACK_PARTITION, str(record.partition).encode()),
                (FEEDBACK_OFFSET, str(record.offset).encode()),
            ]
        self.forwarded += 1
        MONITOR_FORWARDED.labels(kind).inc()  # kind is the logical topic name
        return Outgoing(self.forward_to[kind], key, value, partition, headers, record)

    def _labelled(
        self, completed: Sequence[Completed], sources: dict[bytes, ConsumerRecord]
    ) -> list[Outgoing]:
        """Complete labels, one record per model (and size chunk), in the model's partition."""
        by_model: dict[str, list[MonitorLabelled]] = defaultdict(list)
        for label in completed:
            try:
                _, model = self.codec.ids(label.prediction, Prediction, self.limits)
            except (DecodeError, InvalidEventError):
                model = ""  # the learner dead-letters what it cannot decode
            by_model[model].append(
                {
                    "request_id": label.request_id.decode(),
                    "request": label.request,
                    "prediction": label.prediction,
                    "feedback": label.feedback,
                    "feedback_partition": label.feedback_source[0],
                    "feedback_offset": label.feedback_source[1],
                }
            )
        out = []
        for model, labels in by_model.items():
            for chunk in self._chunks(labels):
                value = self.codec.encode(MonitorLabelledBatch, {"labels": chunk})
                # A single label too large for the topic dead-letters the record completing it.
                source = sources.get(chunk[0]["request_id"].encode()) if len(chunk) == 1 else None
                out.append(
                    Outgoing(
                        self.topic_labelled,
                        model.encode(),
                        value,
                        learn_partition(model),
                        None,
                        source,
                    )
                )
        return out

    @staticmethod
    def _chunks(labels: list[MonitorLabelled]) -> list[list[MonitorLabelled]]:
        chunks: list[list[MonitorLabelled]] = [[]]
        size = 0
        for label in labels:
            n = len(label["request"]) + len(label["prediction"]) + len(label["feedback"]) + 64
            if chunks[-1] and size + n > LABELLED_RECORD_BYTES:
                chunks.append([])
                size = 0
            chunks[-1].append(label)
            size += n
        return chunks

    def punctuate(self, task: int) -> list[Outgoing]:
        """Entries past the TTL leave the table (tombstones); feedback that never met a
        prediction is dead-lettered."""
        if task not in self.tables:
            return []
        in_transaction = task in self.staged  # batches of the open transaction staged it
        staged = self._staged(task)
        removed = staged.expire(now_ms(), self.ttl_ms, EXPIRE_PER_TICK)
        if not removed:
            if not in_transaction:
                self.staged.pop(task, None)
            return []
        out = [Outgoing(self.topic_changelog, key, None, task) for key in removed]
        for expired in staged.expired:
            entry = expired.entry
            if entry.feedback is None or entry.prediction is not None:
                continue
            partition, offset = entry.feedback_source or (-1, -1)
            position = SourcePosition(self.topic_feedback, partition, offset)
            failure = Failure(
                "no-prediction",
                f"no prediction of request {expired.request_id.decode(errors='replace')!r} "
                f"arrived within the join TTL of {self.ttl_ms / 1000:.0f} s",
            )
            self.boundary.reject(position.topic, partition, offset, failure)
            out.append(
                dead_letter(
                    self.topic_deadletter,
                    SERVICE,
                    position,
                    expired.request_id,
                    entry.feedback,
                    failure,
                )
            )
        return out

    # -- transactions --------------------------------------------------------------------
    def committed(self, task: int, written: Written) -> None:
        staged = self.staged.pop(task, None)
        if staged is None:
            return
        self.tables[task].commit(staged)
        self.changelog.wrote(task, written)
        self.joined += len(staged.completed)
        for label in staged.completed:
            try:
                _, model = self.codec.ids(label.feedback, Feedback, self.limits)
            except (DecodeError, InvalidEventError):
                continue
            FEEDBACK_ACCEPTED.labels(model).inc()
        for expired in staged.expired:
            model = self._model_of(expired.entry)
            self.expired_by_model[model] += 1
            JOIN_EXPIRED.labels(model).inc()
            log.info(
                "join of %s expired without %s",
                expired.request_id.decode(errors="replace"),
                " and ".join(expired.entry.missing()),
            )
        if staged.duplicates:
            JOIN_DUPLICATES.labels("").inc(staged.duplicates)
        JOIN_PENDING.labels(SERVICE).set(self.pending())
        JOIN_STATE_BYTES.labels(SERVICE).set(
            sum(self.tables[t].size for t in self.owned if t in self.tables)
        )

    def aborted(self, task: int) -> None:
        self.staged.pop(task, None)

    def dead_lettered(self, record: ConsumerRecord, failure: Failure) -> list[Outgoing]:
        return []  # nobody waits on the monitor

    def _model_of(self, entry: Entry) -> str:
        for part, record_type in (
            (entry.prediction, Prediction),
            (entry.request, PredictionRequest),
            (entry.feedback, Feedback),
        ):
            if part is not None:
                try:
                    return self.codec.ids(part, record_type, self.limits)[1]
                except (DecodeError, InvalidEventError):
                    continue
        return ""

    def pending(self) -> int:
        return sum(len(self.tables[t].entries) for t in self.owned if t in self.tables)

    # -- rebalancing ---------------------------------------------------------------------
    async def refresh(self) -> None:
        return None

    async def assigned(self, tasks: set[int]) -> None:
        for task in self.changelog.stale():
            self.tables.pop(task, None)
            self.changelog.forget(task)
        for task in sorted(tasks):
            self.tables.setdefault(task, JoinTable())

            def apply(record: ConsumerRecord, task: int = task) -> None:
                entry = None
                if record.value is not None:
                    state = self.codec.decode(record.value, MonitorJoinState, checked=False)
                    entry = from_state(state)
                self.tables[task].restore(record.key, entry)

            def reset(task: int = task) -> None:
                self.tables[task] = JoinTable()

            restored = await self.changelog.restore(task, apply, reset)
            self.tables[task].reorder()
            self.restores.append(restored)
            MONITOR_RESTORE_SECONDS.labels("join").observe(restored.seconds)
        self.owned |= tasks

    async def revoked(self, tasks: set[int]) -> None:
        for task in tasks:
            self.staged.pop(task, None)
            self.changelog.left(task)
        self.owned -= tasks


def _feedback_source(record: ConsumerRecord) -> tuple[int, int]:
    """Where forwarded feedback was on `feedback` (from the headers the join wrote)."""
    headers = dict(record.headers or ())
    try:
        return int(headers[FEEDBACK_PARTITION]), int(headers[FEEDBACK_OFFSET])
    except (KeyError, ValueError):
        return record.partition, record.offset  # not forwarded by the join: name this copy


def _original_position(record: ConsumerRecord, feedback_topic: str) -> SourcePosition:
    if record.topic == feedback_topic:
        return SourcePosition(record.topic, record.partition, record.offset)
    partition, offset = _feedback_source(record)
    if (partition, offset) == (record.partition, record.offset):
        return SourcePosition(record.topic, partition, offset)
    return SourcePosition(feedback_topic, partition, offset)
