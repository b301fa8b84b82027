"""The join of scored rows and feedback by request id, one task's table at a time.

Each request id collects two parts - the scored row (features, version, scores, from the
predictor) and the feedback (the label) - in either order. When the second part arrives the
label is *complete* and leaves the join; the entry stays, reduced to a marker, until the TTL
so that a part sent twice is recognised and ignored (the first complete join wins). An entry
that reaches the TTL incomplete *expires*: it is counted by its missing part, and feedback
that never met a prediction goes to the dead letters.

Pure: no Kafka. A batch's changes are staged (:meth:`JoinTable.stage`) and applied only when
the transaction that carried their outputs has committed (:meth:`JoinTable.commit`), so a
batch processed again after an abort sees the table as it was.

>>> row = ScoredPart("m", 1, 100, b"", b"", (), ("0", "1"), b"", "1")
>>> table = JoinTable()
>>> staged = table.stage()
>>> staged.add(b"r1", FEEDBACK, b"label-bytes", 100, (2, 7))
True
>>> staged.add(b"r1", SCORED, row, 101)
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

from modelstream.contracts.records import Label, MonitorJoinState, ScoredRow

SCORED, FEEDBACK = "scored", "feedback"
PARTS = (SCORED, FEEDBACK)


@dataclass(frozen=True, slots=True)
class ScoredPart:
    """One row a predictor scored: what the learner needs of the request and prediction."""

    model: str
    version: int
    predicted_at_ms: int
    features_id: bytes  # of the scoring version's feature names
    features: bytes  # little-endian float64, model order
    categories: tuple[str, ...]
    classes: tuple[str, ...]
    scores: bytes  # little-endian float64
    prediction: Label

    @property
    def size(self) -> int:
        return len(self.features) + len(self.scores) + sum(len(c) for c in self.categories)


@dataclass
class Entry:
    """What the join holds for one request id."""

    first_seen_ms: int
    scored: ScoredPart | None = None
    feedback: bytes | None = None
    feedback_source: tuple[int, int] | None = None  # (partition, offset) on `feedback`
    done: bool = False

    def copy(self) -> Entry:
        return Entry(
            self.first_seen_ms, self.scored, self.feedback, self.feedback_source, self.done
        )

    @property
    def complete(self) -> bool:
        return self.scored is not None and self.feedback is not None

    @property
    def size(self) -> int:
        """Bytes of the parts held (what the table's memory and changelog grow with)."""
        return (self.scored.size if self.scored is not None else 0) + len(self.feedback or b"")

    def missing(self) -> list[str]:
        return [
            kind
            for kind, part in ((SCORED, self.scored), (FEEDBACK, self.feedback))
            if part is None
        ]


@dataclass(frozen=True, slots=True)
class Completed:
    """A label whose two parts met."""

    request_id: bytes
    scored: ScoredPart
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
        part: ScoredPart | bytes,
        now_ms: int,
        feedback_source: tuple[int, int] | None = None,
    ) -> bool:
        """Add one part; False when it was seen before (and is ignored)."""
        current = self._current(request_id)
        if current is not None and current.done:
            self.duplicates += 1
            return False
        entry = Entry(now_ms) if current is None else current.copy()
        if isinstance(part, ScoredPart):
            if entry.scored is not None:
                self.duplicates += 1
                return False
            entry.scored = part
        else:
            if entry.feedback is not None:
                self.duplicates += 1
                return False
            entry.feedback, entry.feedback_source = part, feedback_source
        if entry.complete:
            assert entry.scored is not None and entry.feedback is not None
            assert entry.feedback_source is not None
            self.completed.append(
                Completed(request_id, entry.scored, entry.feedback, entry.feedback_source)
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
    scored = entry.scored
    row: ScoredRow | None = (
        {
            "model": scored.model,
            "version": scored.version,
            "predicted_at_ms": scored.predicted_at_ms,
            "features_id": scored.features_id,
            "features": scored.features,
            "categories": list(scored.categories),
            "classes": list(scored.classes),
            "scores": scored.scores,
            "prediction": scored.prediction,
        }
        if scored is not None
        else None
    )
    return {
        "first_seen_ms": entry.first_seen_ms,
        "request": None,
        "prediction": None,
        "feedback": entry.feedback,
        "feedback_partition": partition,
        "feedback_offset": offset,
        "done": entry.done,
        "scored": row,
    }


def from_state(state: MonitorJoinState) -> Entry:
    """The entry a changelog record holds. One written by the first version of the record
    keeps its feedback and done marker; its request and prediction (whole records, which
    the join no longer reads) are not kept: such a label's feedback expires to the dead
    letters (``no-prediction``), where it can be sent again."""
    partition, offset = state["feedback_partition"], state["feedback_offset"]
    row = state.get("scored")
    scored = (
        ScoredPart(
            row["model"],
            row["version"],
            row["predicted_at_ms"],
            row["features_id"],
            row["features"],
            tuple(row["categories"]),
            tuple(row["classes"]),
            row["scores"],
            row["prediction"],
        )
        if row is not None
        else None
    )
    return Entry(
        state["first_seen_ms"],
        scored,
        state["feedback"],
        (partition, offset) if partition is not None and offset is not None else None,
        state["done"],
    )
