"""The join of requests, predictions and feedback by request id, one task's table at a time.

Each request id collects three parts - the request (its features), the prediction (version,
scores) and the feedback (the label) - in any order. When the last part arrives the label is
*complete* and leaves the join; the entry stays, reduced to a marker, until the TTL so that a
part sent twice is recognised and ignored (the first complete join wins). An entry that
reaches the TTL incomplete *expires*: it is counted by its missing parts, and feedback that
never met a prediction goes to the dead letters.

Pure: no Kafka. A batch's changes are staged (:meth:`JoinTable.stage`) and applied only when
the transaction that carried their outputs has committed (:meth:`JoinTable.commit`), so a
batch processed again after an abort sees the table as it was.

>>> table = JoinTable()
>>> staged = table.stage()
>>> staged.add(b"r1", FEEDBACK, b"label-bytes", 100, (2, 7))
True
>>> staged.add(b"r1", REQUESTS, b"request-bytes", 101)
True
>>> staged.add(b"r1", PREDICTIONS, b"prediction-bytes", 102)
True
>>> staged.add(b"r1", FEEDBACK, b"label-bytes", 103, (2, 8))  # seen again: ignored
False
>>> [(c.request_id, c.feedback_source) for c in staged.completed]
[(b'r1', (2, 7))]
>>> table.commit(staged); table.entries[b"r1"].done
True
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from modelstream.contracts.records import MonitorJoinState

REQUESTS, PREDICTIONS, FEEDBACK = "requests", "predictions", "feedback"
PARTS = (REQUESTS, PREDICTIONS, FEEDBACK)


@dataclass
class Entry:
    """What the join holds for one request id."""

    first_seen_ms: int
    request: bytes | None = None
    prediction: bytes | None = None
    feedback: bytes | None = None
    feedback_source: tuple[int, int] | None = None  # (partition, offset) on `feedback`
    done: bool = False

    def copy(self) -> Entry:
        return Entry(
            self.first_seen_ms,
            self.request,
            self.prediction,
            self.feedback,
            self.feedback_source,
            self.done,
        )

    @property
    def complete(self) -> bool:
        return (
            self.request is not None and self.prediction is not None and (self.feedback is not None)
        )

    @property
    def size(self) -> int:
        """Bytes of the parts held (what the table's memory and changelog grow with)."""
        return len(self.request or b"") + len(self.prediction or b"") + len(self.feedback or b"")

    def missing(self) -> list[str]:
        return [
            kind
            for kind, part in (
                (REQUESTS, self.request),
                (PREDICTIONS, self.prediction),
                (FEEDBACK, self.feedback),
            )
            if part is None
        ]


@dataclass(frozen=True, slots=True)
class Completed:
    """A label whose three parts met: what the learner needs, still encoded."""

    request_id: bytes
    request: bytes
    prediction: bytes
    feedback: bytes
    feedback_source: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Expired:
    request_id: bytes
    entry: Entry


@dataclass
class Staged:
    """One batch's effect on a table, not yet applied."""

    table: JoinTable
    changed: dict[bytes, Entry | None] = field(default_factory=dict)  # None: removed
    completed: list[Completed] = field(default_factory=list)
    expired: list[Expired] = field(default_factory=list)
    duplicates: int = 0

    def _current(self, request_id: bytes) -> Entry | None:
        if request_id in self.changed:
            return self.changed[request_id]
        return self.table.entries.get(request_id)

    def add(
        self,
        request_id: bytes,
        kind: str,
        part: bytes,
        now_ms: int,
        feedback_source: tuple[int, int] | None = None,
    ) -> bool:
        """Add one part; False when it was seen before (and is ignored)."""
        current = self._current(request_id)
        if current is not None and current.done:
            self.duplicates += 1
            return False
        entry = Entry(now_ms) if current is None else current.copy()
        if kind == REQUESTS:
            if entry.request is not None:
                self.duplicates += 1
                return False
            entry.request = part
        elif kind == PREDICTIONS:
            if entry.prediction is not None:
                self.duplicates += 1
                return False
            entry.prediction = part
        else:
            if entry.feedback is not None:
                self.duplicates += 1
                return False
            entry.feedback, entry.feedback_source = part, feedback_source
        if entry.complete:
            assert entry.request is not None and entry.prediction is not None
            assert entry.feedback is not None and entry.feedback_source is not None
            self.completed.append(
                Completed(
                    request_id,
                    entry.request,
                    entry.prediction,
                    entry.feedback,
                    entry.feedback_source,
                )
            )
            entry = Entry(entry.first_seen_ms, done=True)  # a marker until the TTL
        self.changed[request_id] = entry
        return True

    def expire(self, now_ms: int, ttl_ms: int, limit: int = 10_000) -> list[bytes]:
        """Remove (at most ``limit``) entries older than the TTL and return their ids;
        incomplete ones are also reported in ``expired``. Entries are kept in first-seen
        order, so the scan stops at the first young one."""
        removed = []
        for request_id, entry in itertools.islice(self.table.entries.items(), limit):
            if now_ms - entry.first_seen_ms <= ttl_ms:
                break
            current = self._current(request_id)
            if current is None:
                continue
            if not current.done:
                self.expired.append(Expired(request_id, current))
            self.changed[request_id] = None
            removed.append(request_id)
        return removed


class JoinTable:
    """The entries of one task, by request id, in first-seen order."""

    def __init__(self) -> None:
        self.entries: dict[bytes, Entry] = {}
        self.size = 0  # bytes of the parts held, kept as entries change

    def stage(self) -> Staged:
        return Staged(self)

    def _put(self, request_id: bytes, entry: Entry | None) -> None:
        old = self.entries.get(request_id)
        if old is not None:
            self.size -= old.size
        if entry is None:
            self.entries.pop(request_id, None)
        else:
            self.entries[request_id] = entry  # a known id keeps its place in first-seen order
            self.size += entry.size

    def commit(self, staged: Staged) -> None:
        for request_id, entry in staged.changed.items():
            self._put(request_id, entry)

    def restore(self, request_id: bytes, entry: Entry | None) -> None:
        """Apply one changelog record while the table is rebuilt (then :meth:`reorder`)."""
        self._put(request_id, entry)

    def reorder(self) -> None:
        """First-seen order again after a restore (a compacted changelog holds each entry
        where it last changed)."""
        self.entries = dict(sorted(self.entries.items(), key=lambda item: item[1].first_seen_ms))


def to_state(entry: Entry) -> MonitorJoinState:
    partition, offset = entry.feedback_source or (None, None)
    return {
        "first_seen_ms": entry.first_seen_ms,
        "request": entry.request,
        "prediction": entry.prediction,
        "feedback": entry.feedback,
        "feedback_partition": partition,
        "feedback_offset": offset,
        "done": entry.done,
    }


def from_state(state: MonitorJoinState) -> Entry:
    partition, offset = state["feedback_partition"], state["feedback_offset"]
    return Entry(
        state["first_seen_ms"],
        state["request"],
        state["prediction"],
        state["feedback"],
        (partition, offset) if partition is not None and offset is not None else None,
        state["done"],
    )
