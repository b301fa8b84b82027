"""Byte-level fuzzing of every decoder a topic's bytes reach: arbitrary bytes, and valid Avro
and JSON records of the contract mutated byte by byte (flips, overwrites, insertions,
deletions, truncations, splices with another contract's record).

The property: a record is decoded, or refused with a typed modelstream error that carries a
reason; nothing else is raised. Each type runs 1,000 examples of 10 records: 10,000 records
per type. Structure-aware mutations of whole fields (wrong types, huge numbers, deep
nesting) are in tests/support/corpus.py and run through the real services."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import RECORD_TYPES
from modelstream.errors import DecodeError, InvalidEventError
from tests.support.samples import SAMPLES

CODEC = default_codec()
# What a misconfigured or hostile producer can write to a topic some service reads.
READ_FROM_TOPICS = [
    "PredictionRequest",  # requests
    "TrainingExample",  # training
    "Feedback",  # feedback
    "Command",  # control
    "ModelArtifact",  # candidates, models
    "ValidationReport",  # validations
    "Prediction",  # predictions (the monitor's join)
]
BYTE_FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))


def _seeds(type_name: str) -> list[bytes]:
    record = SAMPLES[type_name]
    seeds = [CODEC.encode(RECORD_TYPES[type_name], record)]
    try:
        seeds.append(CODEC.encode_json(RECORD_TYPES[type_name], record))
    except (TypeError, ValueError):
        pass  # a contract with no JSON form on the wire
    return seeds


SEEDS = {name: _seeds(name) for name in READ_FROM_TOPICS}
MUTATIONS = ["flip", "overwrite", "insert", "delete", "truncate", "splice"]
OTHERS = [seed for seeds in SEEDS.values() for seed in seeds]


@st.composite
def mutated(draw: st.DrawFn, type_name: str) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS[type_name])))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(
            st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate", "splice"])
        )
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite" and data:
            data[at] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF, ord("{"), ord('"')]))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=12))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "splice":
            other = draw(st.sampled_from(OTHERS))
            data[at:] = other[draw(st.integers(0, len(other))) :]
    return bytes(data)


def records(type_name: str) -> st.SearchStrategy[list[bytes]]:
    one = st.one_of(st.binary(max_size=300), mutated(type_name))
    return st.lists(one, min_size=10, max_size=10)


@pytest.mark.parametrize("type_name", READ_FROM_TOPICS)
@BYTE_FUZZ
@given(data=st.data())
def test_bytes_decode_or_are_refused_with_a_reason(type_name: str, data: st.DataObject) -> None:
    record_type = RECORD_TYPES[type_name]
    for message in data.draw(records(type_name)):
        for decode in (CODEC.decode_any, CODEC.decode):
            try:
                decode(message, record_type)
            except (DecodeError, InvalidEventError) as exc:
                assert exc.reason and str(exc)


@pytest.mark.parametrize("type_name", READ_FROM_TOPICS)
def test_the_seeds_themselves_decode(type_name: str) -> None:
    """The mutations start from records the decoders accept (else the fuzz tests little)."""
    for seed in SEEDS[type_name]:
        decoded = CODEC.decode_any(seed, RECORD_TYPES[type_name])
        assert json.dumps(decoded, default=repr)
