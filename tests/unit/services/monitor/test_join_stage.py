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
