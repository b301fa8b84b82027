"""The join stage's hand-written encoding is the codec's, byte for byte."""

from hypothesis import given
from hypothesis import strategies as st

from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import MonitorJoinState
from modelstream.services.monitor.join_stage import JoinStateWriter
from modelstream.services.monitor.logic.join import Entry, to_state

CODEC = default_codec()
parts = st.none() | st.binary(max_size=300)


@given(
    st.integers(0, 2**62),
    parts,
    parts,
    parts,
    st.none() | st.tuples(st.integers(0, 2**31 - 1), st.integers(0, 2**62)),
    st.booleans(),
)
def test_join_state_writer_matches_the_codec(
    first_seen, request, prediction, feedback, source, done
):
    entry = Entry(first_seen, request, prediction, feedback, source, done)
    writer = JoinStateWriter(CODEC.schema(MonitorJoinState).fingerprint)
    assert writer.encode(entry) == CODEC.encode(MonitorJoinState, to_state(entry))


def test_large_requests_are_joined_without_their_tensors():
    """A 1 MB image request is joined (and forwarded) as its id, model and features: the
    join keeps it for its TTL and writes it to its changelog, nothing after it reads images."""
    from dataclasses import dataclass
    from unittest import mock

    from modelstream.contracts import tensors
    from modelstream.contracts.records import PredictionRequest
    from modelstream.services.monitor.join_stage import JoinStage, join_partition
    from modelstream.settings import load

    @dataclass
    class Record:
        topic: str
        partition: int
        offset: int
        key: bytes
        value: bytes
        headers: tuple = ()

    settings = load(topic_prefix="t.")
    stage = JoinStage(settings, CODEC, mock.Mock(), ttl_ms=60_000)
    image = tensors.from_elements("image", [b"\x89PNG" + b"\x00" * 1_000_000])
    small = tensors.from_elements("text", ["a short text stays"])
    out = []
    for rid, named in (("big-1", [image]), ("small-1", [small])):
        value = CODEC.encode(PredictionRequest, {"request_id": rid, "model": "m", "tensors": named})
        partition = join_partition(rid.encode())
        out += stage.process(partition, [Record("t.requests", partition, 0, rid.encode(), value)])
    kept = {
        (o.key or b"").decode(): CODEC.decode(o.value, MonitorJoinState)["request"]
        for o in out
        if o.topic == "t.monitor-join-state"
    }
    assert CODEC.decode(kept["big-1"], PredictionRequest)["tensors"] == []
    assert len(kept["big-1"]) < 100
    assert CODEC.decode(kept["small-1"], PredictionRequest)["tensors"] == [small]


def test_punctuation_inside_an_open_transaction_keeps_its_batches_pending_state():
    """The pipeline punctuates a busy task in its open transaction: a punctuation that
    expires nothing must leave the batches' staged entries for the commit to apply."""
    from dataclasses import dataclass
    from unittest import mock

    from modelstream.contracts.records import PredictionRequest
    from modelstream.services.monitor.join_stage import JoinStage, join_partition
    from modelstream.settings import load

    @dataclass
    class Record:
        topic: str
        partition: int
        offset: int
        key: bytes
        value: bytes
        headers: tuple = ()

    stage = JoinStage(load(topic_prefix="t."), CODEC, mock.Mock(), ttl_ms=60_000)
    partition = join_partition(b"r-1")
    value = CODEC.encode(PredictionRequest, {"request_id": "r-1", "model": "m", "features": {}})
    stage.process(partition, [Record("t.requests", partition, 0, b"r-1", value)])
    assert stage.punctuate(partition) == []  # nothing is old enough to expire
    stage.committed(partition, {})
    assert b"r-1" in stage.tables[partition].entries
