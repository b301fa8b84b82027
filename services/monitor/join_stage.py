"""The monitor's join on the streaming core: scored rows and feedback meet by request id,
exactly once, whatever partitioner wrote the feedback.

One task per partition number of three co-partitioned topics: ``monitor-scored`` (what the
predictor scored, in columns, written in the join partition ``crc32(id) % 6`` of each
request id in the transaction of its predictions), ``feedback`` and its internal copy
``monitor-feedback``. Feedback read from ``feedback`` in the join partition of its request id
is joined where it is (any producer that partitions by the CRC-32 of the key, such as
librdkafka's default, puts it there); any other is forwarded to ``monitor-feedback``'s
partition of its request id, in the same transaction, and joined when it arrives there. So
co-partitioning never depends on the partitioner of a user's producer, and neither requests
nor predictions are read again.

A task's join entries live in memory and in the compacted ``monitor-join-state`` changelog
(partition = task), written in the transaction that commits the inputs that changed them;
complete labels go, in that transaction too, to ``monitor-labelled`` (one columnar record per
model and batch, in the partition of its model) for the learner. Feedback whose request id saw
no prediction within the TTL is dead-lettered (reason ``no-prediction``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import struct
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
    MonitorLabelledBatch,
    MonitorScored,
)
from modelstream.contracts.wire import string, zigzag
from modelstream.errors import DecodeError, InvalidEventError
from modelstream.kafka.boundary import Boundary, Failure
from modelstream.kafka.changelog import Changelog, Restored
from modelstream.kafka.pipeline import Outgoing, Written, dead_letter, key_partition
from modelstream.kafka.topology import (
    DEADLETTER,
    FEEDBACK,
    INTERNAL_MAX_BYTES,
    JOIN_PARTITIONS,
    LEARN_PARTITIONS,
    MONITOR_FEEDBACK,
    MONITOR_JOIN_STATE,
    MONITOR_LABELLED,
    MONITOR_SCORED,
)
from modelstream.kafka.writers import Header, SourcePosition
from modelstream.services.monitor import logic
from modelstream.services.monitor.logic.join import (
    Completed,
    Entry,
    JoinTable,
    ScoredPart,
    Staged,
    from_state,
)
from modelstream.services.monitor.records import FeedbackReader
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
EXPIRE_PER_TICK = 20_000


class JoinStateWriter:
    """MonitorJoinState, encoded by hand: written for every change of every join entry, it is
    the join's most frequent output (the same bytes as the codec's, unit-tested)."""

    def __init__(self, fingerprint: bytes) -> None:
        self.header = MAGIC + fingerprint

    def encode(self, entry: Entry) -> bytes:
        # request and prediction (version 1's fields) are never written: null
        parts = [self.header, _long(entry.first_seen_ms), b"\x00\x00"]
        parts.append(b"\x00" if entry.feedback is None else b"\x02" + string(entry.feedback))
        if entry.feedback_source is None:
            parts.append(b"\x00\x00")
        else:
            partition, offset = entry.feedback_source
            parts.append(b"\x02" + zigzag(partition) + b"\x02" + zigzag(offset))
        parts.append(b"\x01" if entry.done else b"\x00")
        scored = entry.scored
        if scored is None:
            parts.append(b"\x00")
        else:
            parts += (
                b"\x02",
                string(scored.model.encode()),
                _long(scored.version),
                _long(scored.predicted_at_ms),
                string(scored.features_id),
                string(scored.features),
                _strings(scored.categories),
                _class_strings(scored.classes),
                string(scored.scores),
            )
            if isinstance(scored.prediction, str):
                parts.append(b"\x00" + string(scored.prediction.encode()))
            else:
                parts.append(b"\x02" + struct.pack("<d", scored.prediction))
        return b"".join(parts)


@functools.lru_cache(maxsize=256)
def _long(value: int) -> bytes:
    """zigzag, remembered: a batch's entries share their first-seen time, a scored record's
    rows their version and time."""
    return zigzag(value)


def _strings(values: Sequence[str]) -> bytes:
    """An Avro array of strings (one block)."""
    if not values:
        return b"\x00"
    return zigzag(len(values)) + b"".join(string(v.encode()) for v in values) + b"\x00"


_class_strings = functools.lru_cache(maxsize=64)(_strings)  # a model's classes, once


def join_partition(request_id: bytes) -> int:
    """The join task a request id belongs to: where the predictor writes its scored row."""
    return key_partition(request_id, JOIN_PARTITIONS)


def learn_partition(model: str) -> int:
    """The learner task a model belongs to."""
    return key_partition(model.encode(), LEARN_PARTITIONS)


def join_inputs(settings: Settings) -> list[str]:
    return [settings.topic(t) for t in (MONITOR_SCORED, FEEDBACK, MONITOR_FEEDBACK)]


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
        self.topic_scored = settings.topic(MONITOR_SCORED)
        self.topic_forwarded = settings.topic(MONITOR_FEEDBACK)
        self.feedback_reader = FeedbackReader(codec, self.limits)
        # what the internal topics take (a scored row may carry up to a request's size)
        self.internal = dataclasses.replace(self.limits, max_bytes=INTERNAL_MAX_BYTES)
        self.join_state = JoinStateWriter(codec.schema(MonitorJoinState).fingerprint)
        self.tables: dict[int, JoinTable] = {}
        self.staged: dict[int, Staged] = {}
        self.owned: set[int] = set()
        self.restores: list[Restored] = []
        self.joined = 0  # labels sent to the learner and committed, since start
        self.expired_by_model: dict[str, int] = defaultdict(int)
        self.forwarded = 0
        self.accepted: dict[int, dict[str, int]] = {}  # labels sent to the learner, per model

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
        forwarded = self.forwarded
        for record in records:
            if record.topic == self.topic_scored:
                self._add_scored(record, staged, now, touched, out)
            else:
                self._add_feedback(record, staged, now, touched, out)
        EVENTS_CONSUMED.labels(SERVICE).inc(len(records))
        if self.forwarded > forwarded:
            MONITOR_FORWARDED.labels(logic.FEEDBACK).inc(self.forwarded - forwarded)
        for key in touched:
            entry = staged.changed[key]
            assert entry is not None
            value = self.join_state.encode(entry)
            out.append(Outgoing(self.topic_changelog, key, value, task, None, touched[key]))
        out.extend(self._labelled(task, staged.completed[first_new:], touched))
        return out

    def _add_scored(
        self,
        record: ConsumerRecord,
        staged: Staged,
        now: int,
        touched: dict[bytes, ConsumerRecord],
        out: list[Outgoing],
    ) -> None:
        try:
            scored = self.codec.decode(record.value, MonitorScored, self.internal, checked=False)
            rows = _scored_rows(scored)
        except (DecodeError, InvalidEventError) as exc:
            failure = Failure(exc.reason, str(exc))
            self.boundary.reject(record.topic, record.partition, record.offset, failure)
            out.append(
                dead_letter(
                    self.topic_deadletter, SERVICE, record, record.key, record.value, failure
                )
            )
            return
        misplaced = 0
        for request_id, part in rows:
            key = request_id.encode()
            if join_partition(key) != record.partition:
                misplaced += 1  # its feedback is joined elsewhere: it could only expire
                continue
            if staged.add(key, logic.SCORED, part, now):
                touched[key] = record
        if misplaced:
            log.warning(
                "%s[%d]@%d: %d scored rows outside their join partition were skipped",
                record.topic,
                record.partition,
                record.offset,
                misplaced,
            )

    def _add_feedback(
        self,
        record: ConsumerRecord,
        staged: Staged,
        now: int,
        touched: dict[bytes, ConsumerRecord],
        out: list[Outgoing],
    ) -> None:
        try:
            request_id, _ = self.codec.ids(record.value, Feedback, self.limits)
            check_request_id(request_id, None)
        except (DecodeError, InvalidEventError) as exc:
            self._refuse(record, Failure(exc.reason, str(exc)), out)
            return
        key = request_id.encode()
        partition = join_partition(key)
        if record.topic == self.topic_forwarded:
            source = _feedback_source(record)
        elif partition != record.partition:
            out.append(self._forward(record, key, partition))
            return
        else:
            source = (record.partition, record.offset)
        if staged.add(key, logic.FEEDBACK, record.value, now, source):
            touched[key] = record
        else:  # a second label for the request: the first one holds
            self._refuse(
                record,
                Failure(
                    "duplicate-feedback",
                    f"request {request_id!r} already has a label; the first one is used",
                ),
                out,
            )

    def _refuse(self, record: ConsumerRecord, failure: Failure, out: list[Outgoing]) -> None:
        """Dead-letter feedback, naming where it was on `feedback` (also when forwarded)."""
        position = _original_position(record, self.topic_feedback)
        self.boundary.reject(position.topic, position.partition, position.offset, failure)
        out.append(
            dead_letter(self.topic_deadletter, SERVICE, position, record.key, record.value, failure)
        )

    def _forward(self, record: ConsumerRecord, key: bytes, partition: int) -> Outgoing:
        headers: list[Header] = [
            (FEEDBACK_PARTITION, str(record.partition).encode()),
            (FEEDBACK_OFFSET, str(record.offset).encode()),
        ]
        self.forwarded += 1
        return Outgoing(self.topic_forwarded, key, record.value, partition, headers, record)

    def _labelled(
        self, task: int, completed: Sequence[Completed], sources: dict[bytes, ConsumerRecord]
    ) -> list[Outgoing]:
        """Complete labels in columns, one record per model (and size chunk), in the model's
        partition. A label whose feedback does not decode, or names another model than the
        prediction, is dead-lettered here: it is the feedback that is wrong."""
        groups: dict[tuple[str, bytes, int, int, tuple[str, ...]], list[tuple[Completed, Feedback]]]
        groups = defaultdict(list)
        out: list[Outgoing] = []
        accepted = self.accepted.setdefault(task, defaultdict(int))  # until the commit
        for label in completed:
            scored = label.scored
            try:
                # unchecked: the learner checks the label against the model (check_label)
                feedback = self.feedback_reader.read(label.feedback)
                if feedback["model"] != scored.model:
                    raise InvalidEventError(
                        "model-mismatch",
                        f"feedback names model {feedback['model']!r}, the prediction was made "
                        f"by {scored.model!r}",
                    )
            except (DecodeError, InvalidEventError) as exc:
                out.append(self._label_refused(label, Failure(exc.reason, str(exc))))
                continue
            # one batch holds rows of one shape: the same features (names, order, count), as
            # many categorical values and the same classes
            accepted[scored.model] += 1
            group = (
                scored.model,
                scored.features_id,
                len(scored.features),
                len(scored.categories),
                scored.classes,
            )
            groups[group].append((label, feedback))
        for (model, _, _, _, _), labels in groups.items():
            for chunk in _chunks(labels):
                value = self.codec.encode(MonitorLabelledBatch, _columns(model, chunk))
                # A single label too large for the topic dead-letters the record completing it.
                first = chunk[0][0].request_id
                source = sources.get(first) if len(chunk) == 1 else None
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

    def _label_refused(self, label: Completed, failure: Failure) -> Outgoing:
        partition, offset = label.feedback_source
        position = SourcePosition(self.topic_feedback, partition, offset)
        self.boundary.reject(position.topic, partition, offset, failure)
        return dead_letter(
            self.topic_deadletter, SERVICE, position, label.request_id, label.feedback, failure
        )

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
            if entry.feedback is None or entry.scored is not None:
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
        for model, count in self.accepted.pop(task, {}).items():
            self.joined += count
            FEEDBACK_ACCEPTED.labels(model).inc(count)
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
        self.accepted.pop(task, None)

    def dead_lettered(self, record: ConsumerRecord, failure: Failure) -> list[Outgoing]:
        return []  # nobody waits on the monitor

    def _model_of(self, entry: Entry) -> str:
        if entry.scored is not None:
            return entry.scored.model
        try:
            return self.codec.ids(entry.feedback, Feedback, self.limits)[1]
        except (DecodeError, InvalidEventError):
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
            self.accepted.pop(task, None)
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


def _scored_rows(scored: MonitorScored) -> list[tuple[str, ScoredPart]]:
    """The rows of a `monitor-scored` record; InvalidEventError when its columns disagree."""
    ids = scored["request_ids"]
    n = len(ids)
    d, classes = scored["feature_count"], tuple(scored["classes"])
    features, scores, categories = scored["features"], scored["scores"], scored["categories"]
    k = len(scores) // (8 * n) if n else 0
    if (
        d < 0
        or len(features) != 8 * d * n
        or len(scores) != 8 * k * n
        or k != (len(classes) or (1 if k else 0))
        or len(scored["predictions"]) != n
        or (n and len(categories) % n)
    ):
        raise InvalidEventError(
            "invalid-scored",
            f"columns of {n} rows disagree: {len(features)} feature bytes for {d} features, "
            f"{len(scores)} score bytes for {len(classes)} classes, "
            f"{len(scored['predictions'])} predictions, {len(categories)} categorical values",
        )
    c = len(categories) // n if n else 0
    model, version, at = scored["model"], scored["version"], scored["predicted_at_ms"]
    features_id = scored["features_id"]
    w, s = 8 * d, 8 * k
    return [
        (
            request_id,
            ScoredPart(
                model,
                version,
                at,
                features_id,
                features[i * w : (i + 1) * w],
                tuple(categories[i * c : (i + 1) * c]),
                classes,
                scores[i * s : (i + 1) * s],
                prediction,
            ),
        )
        for i, (request_id, prediction) in enumerate(zip(ids, scored["predictions"], strict=True))
    ]


def _chunks(
    labels: list[tuple[Completed, Feedback]],
) -> list[list[tuple[Completed, Feedback]]]:
    chunks: list[list[tuple[Completed, Feedback]]] = [[]]
    size = 0
    for label in labels:
        n = label[0].scored.size + len(label[0].feedback) + 96
        if chunks[-1] and size + n > LABELLED_RECORD_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(label)
        size += n
    return chunks


def _columns(model: str, labels: list[tuple[Completed, Feedback]]) -> MonitorLabelledBatch:
    first = labels[0][0].scored
    return {
        "model": model,
        "request_ids": [c.request_id.decode() for c, _ in labels],
        "versions": [c.scored.version for c, _ in labels],
        "predicted_at_ms": [c.scored.predicted_at_ms for c, _ in labels],
        "feature_count": len(first.features) // 8,
        "features_id": first.features_id,
        "features": b"".join(c.scored.features for c, _ in labels),
        "categories": [v for c, _ in labels for v in c.scored.categories],
        "classes": list(first.classes),
        "scores": b"".join(c.scored.scores for c, _ in labels),
        "predictions": [c.scored.prediction for c, _ in labels],
        "labels": [f["label"] for _, f in labels],
        "labelled_at_ms": [
            f["timestamp_ms"] or -1
            for _, f in labels  # 0 or none: "when it arrived"
        ],
        "feedback_partitions": [c.feedback_source[0] for c, _ in labels],
        "feedback_offsets": [c.feedback_source[1] for c, _ in labels],
        "feedback": [c.feedback for c, _ in labels],
    }
