"""The join stage: its hand-written changelog encoding is the codec's, byte for byte; scored
rows and feedback become one labelled batch in columns; what cannot be joined is
dead-lettered with its reason."""

from dataclasses import dataclass
from unittest import mock

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from modelstream.contracts.codec import default_codec
from modelstream.contracts.definitions import features_id
from modelstream.contracts.records import (
    Feedback,
    MonitorJoinState,
    MonitorLabelledBatch,
    MonitorScored,
)
from modelstream.services.monitor.join_stage import JoinStage, JoinStateWriter, join_partition
from modelstream.services.monitor.logic.join import Entry, ScoredPart, to_state
from modelstream.settings import load

CODEC = default_codec()
text = st.text(max_size=20)
scored_parts = st.none() | st.builds(
    ScoredPart,
    text,
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**62), 2**62),
    st.binary(max_size=8),
    st.binary(max_size=80),
    st.lists(text, max_size=3).map(tuple),
    st.lists(text, max_size=3).map(tuple),
    st.binary(max_size=80),
    text | st.floats(allow_nan=False),
)


@given(
    st.integers(0, 2**62),
    scored_parts,
    st.none() | st.binary(max_size=300),
    st.none() | st.tuples(st.integers(0, 2**31 - 1), st.integers(0, 2**62)),
    st.booleans(),
)
def test_join_state_writer_matches_the_codec(first_seen, scored, feedback, source, done):
    entry = Entry(first_seen, scored, feedback, source, done)
    writer = JoinStateWriter(CODEC.schema(MonitorJoinState).fingerprint)
    assert writer.encode(entry) == CODEC.encode(MonitorJoinState, to_state(entry))


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: tuple = ()
    timestamp: int = 0


def stage() -> JoinStage:
    return JoinStage(load(topic_prefix="t."), CODEC, mock.Mock(), ttl_ms=60_000)


def scored(ids: list[str], X: np.ndarray, P: np.ndarray, model: str = "m") -> bytes:
    record: MonitorScored = {
        "model": model,
        "version": 2,
        "predicted_at_ms": 1_000,
        "request_ids": ids,
        "feature_count": X.shape[1],
        "features_id": features_id([f"x{i}" for i in range(X.shape[1])]),
        "features": X.astype("<f8").tobytes(),
        "categories": [],
        "classes": ["0", "1"],
        "scores": P.astype("<f8").tobytes(),
        "predictions": [str(int(p.argmax())) for p in P],
    }
    return CODEC.encode(MonitorScored, record)


def feedback(rid: str, label: str, model: str = "m") -> bytes:
    return CODEC.encode(
        Feedback, {"request_id": rid, "model": model, "label": label, "timestamp_ms": 5_000}
    )


def ids_in(partition: int, n: int) -> list[str]:
    found = (f"r-{i}" for i in range(10_000))
    return [rid for rid in found if join_partition(rid.encode()) == partition][:n]


def test_scored_rows_and_feedback_become_one_labelled_batch_in_columns():
    join = stage()
    p = 2
    ids = ids_in(p, 3)
    X = np.arange(12, dtype=float).reshape(3, 4)
    P = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    inputs = [Record("t.monitor-scored", p, 0, b"m", scored(ids, X, P))]
    inputs += [
        Record("t.feedback", p, 10 + i, r.encode(), feedback(r, "1")) for i, r in enumerate(ids)
    ]
    out = join.process(p, inputs)
    (labelled,) = [o for o in out if o.topic == "t.monitor-labelled"]
    batch = CODEC.decode(labelled.value, MonitorLabelledBatch)
    assert batch["request_ids"] == ids and batch["versions"] == [2, 2, 2]
    assert np.array_equal(np.frombuffer(batch["features"], "<f8").reshape(3, 4), X)
    assert np.array_equal(np.frombuffer(batch["scores"], "<f8").reshape(3, 2), P)
    assert batch["predictions"] == ["0", "1", "0"] and batch["labels"] == ["1", "1", "1"]
    assert batch["feedback_offsets"] == [10, 11, 12] and batch["labelled_at_ms"] == [5_000] * 3
    # each id's state is written once, as a done marker: both parts met in the batch
    states = [o for o in out if o.topic == "t.monitor-join-state"]
    assert sorted(o.key for o in states) == sorted(r.encode() for r in ids)
    assert all(CODEC.decode(o.value, MonitorJoinState)["done"] for o in states)


def test_feedback_outside_its_join_partition_is_forwarded_not_joined():
    join = stage()
    (rid,) = ids_in(4, 1)
    out = join.process(1, [Record("t.feedback", 1, 3, rid.encode(), feedback(rid, "0"))])
    (forward,) = out
    assert (forward.topic, forward.partition) == ("t.monitor-feedback", 4)
    assert dict(forward.headers) == {"feedback.partition": b"1", "feedback.offset": b"3"}


def test_what_cannot_be_joined_is_dead_lettered_with_its_reason():
    join = stage()
    p = 0
    ids = ids_in(p, 2)
    X, P = np.zeros((2, 1)), np.full((2, 2), 0.5)
    truncated = scored(ids, X, P)[:-5]
    disagreeing = CODEC.decode(scored(ids, X, P), MonitorScored)
    disagreeing["feature_count"] = 3  # 2 rows of 1 feature said to be of 3
    mismatch = feedback(ids[1], "0", model="another")
    out = join.process(
        p,
        [
            Record("t.monitor-scored", p, 0, b"m", truncated),
            Record("t.monitor-scored", p, 1, b"m", CODEC.encode(MonitorScored, disagreeing)),
            Record("t.monitor-scored", p, 2, b"m", scored(ids, X, P)),
            Record("t.feedback", p, 7, ids[0].encode(), b"\x00garbage"),
            Record("t.feedback", p, 8, ids[1].encode(), mismatch),
            Record("t.feedback", p, 9, ids[1].encode(), feedback(ids[1], "1")),
        ],
    )
    dead = [dict(o.headers) for o in out if o.topic == "t.deadletter"]
    reasons = {(h["source.topic"], h["source.offset"], h["reason"]) for h in dead}
    assert reasons == {
        (b"t.monitor-scored", b"0", b"undecodable"),
        (b"t.monitor-scored", b"1", b"invalid-scored"),
        (b"t.feedback", b"7", b"undecodable"),
        (b"t.feedback", b"8", b"model-mismatch"),
        (b"t.feedback", b"9", b"duplicate-feedback"),  # the mismatched label came first
    }
    assert not [o for o in out if o.topic == "t.monitor-labelled"]


def test_punctuation_inside_an_open_transaction_keeps_its_batches_pending_state():
    """The pipeline punctuates a busy task in its open transaction: a punctuation that
    expires nothing must leave the batches' staged entries for the commit to apply."""
    join = stage()
    (rid,) = ids_in(3, 1)
    join.process(3, [Record("t.feedback", 3, 0, rid.encode(), feedback(rid, "1"))])
    assert join.punctuate(3) == []  # nothing is old enough to expire
    join.committed(3, {})
    assert rid.encode() in join.tables[3].entries
