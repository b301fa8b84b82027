import copy
import json

import pytest

from modelstream.contracts.codec import (
    HEADER_SIZE,
    MAGIC,
    SCHEMA_FILES,
    AvroCodec,
    Schema,
    default_codec,
    is_json,
    load_schema_json,
)
from modelstream.contracts.records import (
    RECORD_TYPES,
    Command,
    Feedback,
    Prediction,
    PredictionRequest,
    TrainingExample,
    ValidationReport,
)
from modelstream.errors import DecodeError, InvalidEventError, SchemaMismatchError
from tests.support.samples import SAMPLES

CODEC = default_codec()


def crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO as written in the Avro specification, independent of fastavro."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def test_every_contract_has_a_sample():
    assert set(SAMPLES) == set(SCHEMA_FILES)


@pytest.mark.parametrize("type_name", SCHEMA_FILES)
def test_avro_round_trip(type_name):
    record = SAMPLES[type_name]
    data = CODEC.encode(RECORD_TYPES[type_name], record)
    assert data[:2] == MAGIC
    assert CODEC.decode(data, RECORD_TYPES[type_name]) == record


@pytest.mark.parametrize("type_name", SCHEMA_FILES)
def test_json_round_trip(type_name):
    record = SAMPLES[type_name]
    text = CODEC.encode_json(RECORD_TYPES[type_name], record)
    assert is_json(text)
    assert CODEC.decode_any(text, RECORD_TYPES[type_name]) == record


@pytest.mark.parametrize("type_name", SCHEMA_FILES)
def test_fingerprint_is_crc64_avro_of_canonical_form(type_name):
    schema = CODEC.schema(RECORD_TYPES[type_name])
    expected = crc64_avro(schema.canonical_form.encode()).to_bytes(8, "little")
    assert schema.fingerprint == expected
    assert CODEC.encode(RECORD_TYPES[type_name], SAMPLES[type_name])[2:HEADER_SIZE] == expected


def test_canonical_form_is_self_contained():
    # Every file defines the named types it uses, so the fingerprint names a complete schema.
    form = CODEC.schema(ValidationReport).canonical_form
    assert '"name":"io.modelstream.ModelArtifact","type":"record"' in form
    assert '"name":"io.modelstream.Task","type":"enum"' in CODEC.schema(Command).canonical_form


def test_reader_resolves_older_writer_schema():
    old = load_schema_json("Feedback")
    new = copy.deepcopy(old)
    new["fields"].append(
        {"name": "source", "type": "string", "default": "unknown", "doc": "added in v2"}
    )
    old_schema = Schema.parse(old)
    writer = AvroCodec([old_schema])
    reader = AvroCodec([Schema.parse(new)], writers=[old_schema])
    data = writer.encode(Feedback, SAMPLES["Feedback"])
    assert reader.decode(data, Feedback) == {**SAMPLES["Feedback"], "source": "unknown"}
    # Without the old schema among its writers, the reader refuses rather than guesses.
    with pytest.raises(SchemaMismatchError):
        AvroCodec([Schema.parse(new)]).decode(data, Feedback)


def test_wrong_type_unknown_fingerprint_truncation_and_trailing_bytes():
    data = CODEC.encode(Feedback, SAMPLES["Feedback"])
    with pytest.raises(SchemaMismatchError, match="expected Prediction"):
        CODEC.decode(data, Prediction)
    with pytest.raises(SchemaMismatchError, match="unknown writer schema"):
        CODEC.decode(MAGIC + b"\0" * 8 + data[HEADER_SIZE:], Feedback)
    with pytest.raises(DecodeError, match="corrupt"):
        CODEC.decode(data[:-3], Feedback)
    with pytest.raises(DecodeError, match="trailing"):
        CODEC.decode(data + b"\0\0", Feedback)
    with pytest.raises(DecodeError):
        CODEC.decode_any(b"\x00garbage", Feedback)


def test_public_json_shapes_decode():
    request = CODEC.decode_any(
        json.dumps(
            {
                "request_id": "r-1",
                "model": "breast-cancer",
                "features": {"mean radius": 17.99},
                "version": 3,
            }
        ).encode(),
        PredictionRequest,
    )
    assert request["features"] == {"mean radius": 17.99} and request["version"] == 3
    listed = CODEC.decode_any(
        b'{"request_id": "r-2", "model": "m", "features": [1, 2.5]}', PredictionRequest
    )
    assert listed["features"] == [1.0, 2.5] and listed["version"] is None
    feedback = CODEC.decode_any(b'{"request_id":"r-1","model":"m","label":"1"}', Feedback)
    assert feedback["label"] == "1"
    example = CODEC.decode_any(
        b'{"model": "m", "features": {"x": 1}, "label": 2.5}', TrainingExample
    )
    assert example["label"] == 2.5
    command = CODEC.decode_any(b'{"model": "m", "action": "rollback", "version": 2}', Command)
    assert command["action"] == "ROLLBACK" and command["definition"] is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"request_id": 1, "model": "m", "features": [1]}', "request_id: expected string"),
        (b'{"request_id": "r", "model": "m"}', "features: missing required field"),
        (b'{"request_id": "r", "model": "m", "features": [1, "a"]}', r"features\[1\]"),
        (b'{"request_id": "r", "model": "m", "features": [1], "x": 1}', "unknown field"),
        (b'{"request_id": "r", "model": "m", "features": {"a": true}}', "features"),
        (b'{"request_id": "r", "model": "m", "features": [1], ', "invalid JSON"),
        (b'["not", "an", "object"]', "not Avro"),
    ],
)
def test_bad_json_names_the_problem(payload, message):
    with pytest.raises((InvalidEventError, DecodeError), match=message):
        CODEC.decode_any(payload, PredictionRequest)


def test_is_json_tells_json_from_avro():
    assert is_json(b'  \n{"a": 1}')
    assert not is_json(CODEC.encode(Feedback, SAMPLES["Feedback"]))
    assert not is_json(b"")


def test_packed_features_survive_json_as_base64():
    packed = {**SAMPLES["PredictionRequest"], "features": b"\x00" * 16}
    text = CODEC.encode_json(PredictionRequest, packed)
    assert json.loads(text)["features"] == "AAAAAAAAAAAAAAAAAAAAAA=="
    assert CODEC.decode_any(text, PredictionRequest) == packed


@pytest.mark.parametrize("type_name", ["TrainingExample", "PredictionRequest"])
@pytest.mark.parametrize("features", [b"\x00" * 16, [1.0, 2.0], {"a": 1.0}])
def test_every_feature_form_keeps_its_union_branch(type_name, features):
    record = {**SAMPLES[type_name], "features": features}
    record_type = RECORD_TYPES[type_name]
    assert CODEC.decode(CODEC.encode(record_type, record), record_type)["features"] == features


def test_the_writer_schema_of_no_value_is_a_null_value_error():
    for data, reason in ((None, "null-value"), (b"", "empty-value")):
        with pytest.raises(DecodeError) as raised:
            default_codec().writer_schema(data)
        assert raised.value.reason == reason
