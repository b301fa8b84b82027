"""Named tensors: the wire form checked before use, the JSON forms a producer can write."""

import base64
import json

import numpy as np
import pytest

from modelstream.contracts import tensors
from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import Prediction, PredictionRequest, TrainingExample
from modelstream.errors import InvalidEventError

CODEC = default_codec()


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        np.asarray([[1, -2], [3, 2**40]], dtype=np.int64),
        np.asarray([True, False]),
        np.zeros((0, 5), dtype=np.uint8),
        np.asarray(3.5, dtype=np.float64),
        np.asarray([1.5, -2.25], dtype=np.float16),
    ],
)
def test_numeric_tensors_round_trip_through_avro(array):
    tensor = tensors.from_array("t", array)
    decoded = CODEC.decode(
        CODEC.encode(PredictionRequest, {"request_id": "r", "model": "m", "tensors": [tensor]}),
        PredictionRequest,
    )
    back = tensors.numeric(decoded["tensors"][0])
    assert back.dtype == array.dtype.newbyteorder("<") and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_bytes_elements_round_trip():
    values = [b"", b"\x00\xff", "héllo".encode(), b"x" * 70_000]
    tensor = tensors.from_elements("b", values, shape=[2, 2])
    assert tensors.elements(tensor) == values


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"datatype": "FP32", "shape": [2, 3], "data": b"\x00" * 20}, "needs 24 bytes"),
        ({"datatype": "FP32", "shape": [-1, 3], "data": b""}, "out of range"),
        ({"datatype": "INT8", "shape": [2**40], "data": b""}, "out of range"),
        ({"datatype": "FP64", "shape": [2**30, 2**30], "data": b"\x00" * 8}, "larger than any"),
        ({"datatype": "UINT8", "shape": [1, 0, 2**31 - 1, 2**31 - 1], "data": b""}, "larger than"),
        ({"datatype": "BYTES", "shape": [0, 2**31 - 1, 2**31 - 1], "data": b""}, "larger than"),
        ({"datatype": "UINT8", "shape": [1] * 9, "data": b"\x00"}, "rank 9"),
        ({"datatype": "BYTES", "shape": [1], "data": b"\x05\x00\x00\x00abc"}, "declares 5 bytes"),
        ({"datatype": "BYTES", "shape": [1], "data": b"\xff\xff\xff\xffa"}, "declares"),
        ({"datatype": "BYTES", "shape": [2], "data": b"\x01\x00\x00\x00a"}, "cannot fit"),
        ({"datatype": "BYTES", "shape": [1], "data": b"\x01\x00\x00\x00ab"}, "after the last"),
        ({"datatype": "BYTES", "shape": [3], "data": b"\x00" * 12 + b"\x01"}, "after the last"),
        ({"datatype": "BYTES", "shape": [10**9], "data": b"\x00" * 8}, "cannot fit"),
    ],
)
def test_tensors_whose_parts_disagree_are_refused(tensor, message):
    with pytest.raises(InvalidEventError, match=message) as caught:
        tensors.check({"name": "t", **tensor})
    assert caught.value.reason == "invalid-tensor"


def test_json_tensors_take_lists_strings_b64_and_base64():
    image = b"\x89PNG\r\n\x1a\n..."
    plain = {
        "request_id": "r",
        "model": "m",
        "tensors": [
            {"name": "pixels", "datatype": "uint8", "data": [[1, 2], [3, 4]]},
            {
                "name": "image",
                "datatype": "BYTES",
                "data": [{"b64": base64.b64encode(image).decode()}],
            },
            {"name": "text", "datatype": "BYTES", "shape": [1, 2], "data": [["héllo", "wörld"]]},
            {
                "name": "raw",
                "datatype": "FP32",
                "shape": [2],
                "data": base64.b64encode(np.asarray([1.5, 2.5], "<f4").tobytes()).decode(),
            },
        ],
    }
    request = CODEC.decode_any(json.dumps(plain).encode(), PredictionRequest)
    pixels, encoded, text, raw = request["tensors"]
    assert tensors.numeric(pixels).tolist() == [[1, 2], [3, 4]] and pixels["shape"] == [2, 2]
    assert tensors.elements(encoded) == [image] and encoded["shape"] == [1]
    assert tensors.elements(text) == ["héllo".encode(), "wörld".encode()]
    assert tensors.numeric(raw).tolist() == [1.5, 2.5]
    assert request["features"] == b""
    # and back: numbers as lists, UTF-8 as strings, other bytes as {"b64": ...}
    again = json.loads(CODEC.encode_json(PredictionRequest, request))
    assert again["tensors"][0]["data"] == [[1, 2], [3, 4]]
    assert again["tensors"][1]["data"] == [{"b64": base64.b64encode(image).decode()}]
    assert again["tensors"][2]["data"] == ["héllo", "wörld"]
    assert CODEC.decode_any(json.dumps(again).encode(), PredictionRequest) == request


def test_a_3x224x224_image_fits_a_json_request():
    """150,528 numbers in nested lists: over MAX_ITEMS as one flat array, but a tensor's
    elements are bounded by the message size, not by an item count."""
    pixels = np.random.default_rng(0).integers(0, 256, (1, 3, 224, 224)).astype(np.float32)
    plain = {
        "request_id": "r",
        "model": "m",
        "tensors": [{"name": "x", "datatype": "FP32", "data": pixels.astype(int).tolist()}],
    }
    data = json.dumps(plain).encode()
    assert 500_000 < len(data) < CODEC_LIMIT
    request = CODEC.decode_any(data, PredictionRequest)
    np.testing.assert_array_equal(tensors.numeric(request["tensors"][0]), pixels)
    flat = {
        **plain,
        "tensors": [{"name": "x", "datatype": "FP32", "data": pixels.ravel().tolist()}],
    }
    assert (
        tensors.numeric(
            CODEC.decode_any(json.dumps(flat).encode(), PredictionRequest)["tensors"][0]
        ).size
        == 150_528
    )


CODEC_LIMIT = 2 * 1024 * 1024


@pytest.mark.parametrize(
    ("tensor", "reason", "message"),
    [
        ({"datatype": "UINT8", "data": [256]}, "out-of-range", "range of UINT8"),
        ({"datatype": "INT8", "data": [1.5]}, "invalid-json", "integers"),
        ({"datatype": "FP32", "data": [[1], [2, 3]]}, "invalid-json", "regular array"),
        ({"datatype": "FP16", "data": [1e10]}, "out-of-range", "overflows"),
        ({"datatype": "FP32", "data": ["a"]}, "invalid-json", "numbers"),
        ({"datatype": "BOOL", "data": [1]}, "invalid-json", "true or false"),
        ({"datatype": "BYTES", "data": [1]}, "invalid-json", "strings or"),
        ({"datatype": "BYTES", "data": [{"b64": "***"}]}, "invalid-json", "base64"),
        ({"datatype": "COMPLEX64", "data": [1]}, "invalid-json", "expected one of"),
        ({"datatype": "INT64", "data": [2**64]}, "invalid-json", "expected numbers"),
        ({"datatype": "INT64", "data": [9223372036854775808.0]}, "out-of-range", "range of INT64"),
        ({"datatype": "UINT64", "data": [1.8446744073709552e19]}, "out-of-range", "range"),
        ({"datatype": "INT8", "data": [-129.0]}, "out-of-range", "range of INT8"),
    ],
)
def test_bad_json_tensors_name_the_problem(tensor, reason, message):
    plain = {"request_id": "r", "model": "m", "tensors": [{"name": "t", **tensor}]}
    with pytest.raises(InvalidEventError, match=message) as caught:
        CODEC.decode_any(json.dumps(plain).encode(), PredictionRequest)
    assert caught.value.reason == reason


def test_non_finite_json_numbers_are_refused():
    tensor = b'{"name": "t", "datatype": "FP32", "data": [NaN]}'
    data = b'{"request_id": "r", "model": "m", "tensors": [' + tensor + b"]}"
    with pytest.raises(InvalidEventError) as caught:
        CODEC.decode_any(data, PredictionRequest)
    assert caught.value.reason == "non-finite"


def test_a_row_needs_features_or_tensors():
    with pytest.raises(InvalidEventError, match="features, tensors or both"):
        CODEC.decode_any(b'{"request_id": "r", "model": "m"}', PredictionRequest)
    example = CODEC.decode_any(
        json.dumps(
            {
                "model": "m",
                "label": "cat",
                "tensors": [{"name": "t", "datatype": "BYTES", "data": ["x"]}],
            }
        ).encode(),
        TrainingExample,
    )
    assert example["features"] == b"" and len(example["tensors"]) == 1


def test_predictions_carry_output_tensors():
    embedding = np.linspace(-1, 1, 384, dtype=np.float32)
    record = {
        "request_id": "r",
        "model": "m",
        "version": 1,
        "digest_prefix": "ab",
        "prediction": "",
        "scores": {},
        "route": "production",
        "requested_at_ms": 1,
        "predicted_at_ms": 2,
        "outputs": [tensors.from_array("embedding", embedding)],
    }
    decoded = CODEC.decode(CODEC.encode(Prediction, record), Prediction)
    np.testing.assert_array_equal(tensors.numeric(decoded["outputs"][0]), embedding)
    plain = json.loads(CODEC.encode_json(Prediction, record))
    assert plain["outputs"][0]["shape"] == [384] and len(plain["outputs"][0]["data"]) == 384


def test_tensor_names_repeat_is_refused():
    one = tensors.from_elements("x", ["a"])
    with pytest.raises(InvalidEventError, match="given twice"):
        tensors.by_name([one, one])


def test_records_built_without_the_new_fields_are_written_with_their_defaults():
    """Callers that build records as before (no tensors, no outputs) write JSON and Avro."""
    request = {"request_id": "r", "model": "m", "features": [1.0], "version": None}
    request["sent_at_ms"] = None
    assert json.loads(CODEC.encode_json(PredictionRequest, request))["tensors"] == []
    assert (
        CODEC.decode(CODEC.encode(PredictionRequest, request), PredictionRequest)["tensors"] == []
    )
    prediction = {
        "request_id": "r",
        "model": "m",
        "version": 1,
        "digest_prefix": "ab",
        "prediction": "1",
        "scores": {"0": 0.1, "1": 0.9},
        "route": "production",
        "requested_at_ms": 1,
        "predicted_at_ms": 2,
    }
    assert json.loads(CODEC.encode_json(Prediction, prediction))["outputs"] == []
