"""The monitor's hand-written Feedback reader and TrainingExample writer agree with the
codec: the same records, the same refusals for every single-byte mutation."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelstream.contracts.codec import default_codec
from modelstream.contracts.limits import Limits
from modelstream.contracts.records import Feedback, TrainingExample
from modelstream.errors import DecodeError, InvalidEventError
from modelstream.services.monitor.records import FeedbackReader, TrainingWriter

CODEC = default_codec()
READER = FeedbackReader(CODEC, Limits())
labels = st.text(max_size=30) | st.floats(allow_nan=False, allow_infinity=False)


def codec_or_error(value: bytes) -> object:
    try:
        return (
            CODEC.decode_any(value, Feedback, Limits())
            if value[:1] == b"{"
            else (CODEC.decode(value, Feedback, Limits(), checked=False))
        )
    except (DecodeError, InvalidEventError) as exc:
        return type(exc), exc.reason


def reader_or_error(value: bytes) -> object:
    try:
        return READER.read(value)
    except (DecodeError, InvalidEventError) as exc:
        return type(exc), exc.reason


@given(
    st.text(max_size=40), st.text(max_size=40), labels, st.none() | st.integers(-(2**63), 2**63 - 1)
)
def test_feedback_is_read_as_the_codec_reads_it(request_id, model, label, timestamp):
    record = {"request_id": request_id, "model": model, "label": label, "timestamp_ms": timestamp}
    value = CODEC.encode(Feedback, record)
    assert READER.read(value) == CODEC.decode(value, Feedback, checked=False) == record


@pytest.mark.parametrize(
    "record",
    [
        {"request_id": "r-1", "model": "m", "label": "1", "timestamp_ms": 1_790_000_000_000},
        {"request_id": "r-2", "model": "m", "label": 2.5, "timestamp_ms": None},
    ],
)
def test_every_mutation_and_truncation_is_read_or_refused_as_the_codec_does(record):
    value = CODEC.encode(Feedback, record)
    variants = [value[:n] for n in range(len(value))] + [value + b"\x00"]
    for i in range(len(value)):
        for byte in (0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF, value[i] ^ 0x01):
            variants.append(value[:i] + bytes([byte]) + value[i + 1 :])
    for variant in variants:
        assert reader_or_error(variant) == codec_or_error(variant), variant


def test_a_timestamp_beyond_64_bits_is_read_as_the_codec_reads_it():
    """A 10-byte varint can carry more than 64 bits: the reader does not make a number the
    codec would not (one that no Avro writer could encode again)."""
    value = CODEC.encode(
        Feedback, {"request_id": "r", "model": "m", "label": "1", "timestamp_ms": 1}
    )
    overflowing = value[:-1] + b"\xff" * 9 + b"\x7f"
    assert reader_or_error(overflowing) == codec_or_error(overflowing)


def test_json_feedback_is_decoded_and_checked_whole():
    value = b'{"request_id": "r", "model": "m", "label": "x", "timestamp_ms": null}'
    assert READER.read(value)["label"] == "x"
    with pytest.raises(InvalidEventError):
        READER.read(b'{"request_id": "r", "model": "m", "label": NaN}')


@given(
    st.text(max_size=30),
    st.binary(max_size=64),
    labels,
    st.text(max_size=30),
    st.integers(-(2**63), 2**63 - 1),
)
def test_training_examples_are_written_as_the_codec_writes_them(
    model, features, label, example_id, timestamp
):
    expected: TrainingExample = {
        "model": model,
        "features": features,
        "label": label,
        "example_id": example_id,
        "timestamp_ms": timestamp,
        "categories": {},
        "tensors": [],
    }
    written = TrainingWriter(CODEC).encode(model.encode(), features, label, example_id, timestamp)
    assert written == CODEC.encode(TrainingExample, expected)
