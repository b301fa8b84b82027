"""The gateway's protocols in modelstream's terms: calls to rows, answers to responses."""

import json

import numpy as np
import pytest

from modelstream.services.gateway.logic import (
    CallError,
    ModelInfo,
    oip_body,
    oip_metadata,
    oip_response,
    oip_rows,
    tf_response,
    tf_rows,
)

BC = ModelInfo("bc", 3, "BINARY", ["a", "b", "c"], [], ["0", "1"], "linear")
CHURN = ModelInfo("churn", 1, "BINARY", ["a", "b"], ["centre"], ["0", "1"], "onnx")
ROWS = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]


def test_oip_one_tensor_in_feature_order():
    body = {"inputs": [{"name": "input-0", "shape": [2, 3], "datatype": "FP32", "data": ROWS}]}
    np.testing.assert_array_equal(oip_rows(body, BC, 100).X, ROWS)
    values = [v for row in ROWS for v in row]
    flat = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP64", "data": values}]}
    np.testing.assert_array_equal(oip_rows(flat, BC, 100).X, ROWS)


def test_oip_one_tensor_per_feature_with_categories():
    body = {
        "inputs": [
            {"name": "b", "shape": [2, 1], "datatype": "FP64", "data": [[2.0], [5.0]]},
            {"name": "a", "shape": [2], "datatype": "INT64", "data": [1, 4]},
            {"name": "centre", "shape": [2, 1], "datatype": "BYTES", "data": ["north", "east"]},
        ]
    }
    rows = oip_rows(body, CHURN, 100)
    np.testing.assert_array_equal(rows.X, [[1.0, 2.0], [4.0, 5.0]])
    assert rows.categories == [{"centre": "north"}, {"centre": "east"}]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([], "JSON object"),
        ({"inputs": []}, "non-empty list"),
        (
            {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
            "takes [N, 3]",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2]}]},
            "2 values for shape",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, "a", 2]}]},
            "must be numbers",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "COMPLEX", "data": [1, 2, 3]}]},
            "datatype",
        ),
        (
            {
                "inputs": [
                    {"name": "a", "shape": [1], "datatype": "FP32", "data": [1]},
                    {"name": "zz", "shape": [1], "datatype": "FP32", "data": [1]},
                ]
            },
            "unknown feature 'zz'",
        ),
        (
            {"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}]},
            "missing features ['b', 'c']",
        ),
    ],
)
def test_oip_bad_calls_are_400_with_a_reason(body, reason):
    with pytest.raises(CallError) as caught:
        oip_rows(body, BC, 100)
    assert caught.value.status == 400 and reason in caught.value.message


def test_oip_refuses_non_finite_and_too_many_rows():
    nan = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 1e309]}]}
    with pytest.raises(CallError, match="finite"):
        oip_rows(nan, BC, 100)
    big = {"inputs": [{"name": "x", "shape": [3, 3], "datatype": "FP64", "data": [1.0] * 9}]}
    with pytest.raises(CallError, match="at most 2"):
        oip_rows(big, BC, 2)


def test_tf_instances_and_inputs():
    np.testing.assert_array_equal(tf_rows({"instances": ROWS}, BC, 100).X, ROWS)
    named = [{"a": 1, "b": 2, "c": 3}, {"c": 6, "b": 5, "a": 4}]
    np.testing.assert_array_equal(tf_rows({"instances": named}, BC, 100).X, ROWS)
    columnar = {"inputs": {"a": [1, 4], "b": [2, 5], "c": [3, 6]}}
    np.testing.assert_array_equal(tf_rows(columnar, BC, 100).X, ROWS)
    np.testing.assert_array_equal(tf_rows({"inputs": ROWS}, BC, 100).X, ROWS)
    with pytest.raises(CallError, match="exactly one"):
        tf_rows({"instances": ROWS, "inputs": ROWS}, BC, 100)
    with pytest.raises(CallError, match="3 values"):
        tf_rows({"instances": [[1, 2]]}, BC, 100)
    rows = tf_rows({"instances": [{"a": 1, "b": 2, "centre": "north"}]}, CHURN, 100)
    assert rows.categories == [{"centre": "north"}]


def test_responses_carry_labels_scores_and_versions():
    answers = [
        {"prediction": "1", "scores": {"0": 0.2, "1": 0.8}, "version": 3},
        {"prediction": "0", "scores": {"0": 0.9, "1": 0.1}, "version": 4},
    ]
    oip = oip_response(BC, "call", ["call-0", "call-1"], answers)  # type: ignore[arg-type]
    outputs = {o["name"]: o for o in oip["outputs"]}
    assert outputs["predict"]["data"] == ["1", "0"] and outputs["scores"]["shape"] == [2, 2]
    assert outputs["scores"]["data"] == [0.2, 0.8, 0.9, 0.1]
    assert oip["model_version"] == "3,4" and oip["id"] == "call"
    tf = tf_response(BC, answers)  # type: ignore[arg-type]
    assert tf["predictions"][0] == {"predict": "1", "scores": [0.2, 0.8], "version": 3}
    metadata = oip_metadata(CHURN, [1])
    assert [i["name"] for i in metadata["inputs"]] == ["a", "b", "centre"]
    assert metadata["inputs"][2]["datatype"] == "BYTES"


# -- tensor models ----------------------------------------------------------------------------
def tensor_model(top_k: int = 0, embedding: bool = False) -> ModelInfo:
    from modelstream.contracts.records import ModelBody
    from modelstream.registry.tensor_model import describe, parse_spec, tensor_candidate
    from tests.support.tensor_models import image_graph, spec

    scores = {"graph_output": "probs", "labels": ["a", "b", "c"], "top_k": top_k}
    outputs = [{"name": "probs_out", "graph_output": "probs"}] if embedding else []
    text = spec(scores=scores, outputs=outputs)
    body: ModelBody = tensor_candidate(
        "img", describe(image_graph()[0], parse_spec(text)), created_by="t"
    )
    body["version"] = 2
    return ModelInfo.from_body(body)


def test_oip_tensor_rows_split_along_the_first_axis():
    import base64

    from modelstream.contracts import tensors

    model = tensor_model()
    assert model.kind == "tensor" and model.inputs == (("image", "BYTES", (1,)),)
    json_body = {
        "inputs": [
            {
                "name": "image",
                "shape": [2],
                "datatype": "BYTES",
                "data": [{"b64": base64.b64encode(b"\x89PNG-one").decode()}, "two"],
            }
        ]
    }
    rows = oip_rows(json_body, model, 10)
    assert len(rows) == 2
    assert [tensors.elements(r[0]) for r in rows.tensors] == [[b"\x89PNG-one"], [b"two"]]
    # the binary extension keeps the bytes as they are (no UTF-8 round trip)
    blob = tensors.pack_elements([b"\xff\xd8jpeg", b"\x00\x01"])
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [2, 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    ).encode()
    body = oip_body(header + blob, str(len(header)))
    rows = oip_rows(body, model, 10)
    assert [tensors.elements(r[0]) for r in rows.tensors] == [[b"\xff\xd8jpeg"], [b"\x00\x01"]]
    # raw pixels, [N, H, W, C]
    pixels = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    numeric = {
        "inputs": [
            {"name": "image", "shape": [2, 4, 4, 3], "datatype": "UINT8", "data": pixels.tolist()}
        ]
    }
    rows = oip_rows(numeric, model, 10)
    np.testing.assert_array_equal(tensors.numeric(rows.tensors[1][0]), pixels[1])


@pytest.mark.parametrize(
    ("inputs", "reason"),
    [
        ([{"name": "nope", "shape": [1], "datatype": "BYTES", "data": ["x"]}], "unknown input"),
        ([{"name": "image", "shape": [], "datatype": "BYTES", "data": ["x"]}], "first axis"),
        ([{"name": "image", "shape": [-1], "datatype": "BYTES", "data": ["x"]}], "first axis"),
        ([{"name": "image", "shape": [2**70], "datatype": "BYTES", "data": ["x"]}], "first axis"),
        ([{"name": "image", "shape": [2], "datatype": "BYTES", "data": ["x"]}], "cannot fit"),
        ([{"name": "image", "shape": [1], "datatype": "FP8", "data": [1]}], "the model takes"),
        ([{"name": "image", "shape": [1], "datatype": "FP32", "data": [1]}], "BYTES or UINT8"),
        (
            [
                {
                    "name": "image",
                    "shape": [1, 0, 2**31 - 1, 2**31 - 1],
                    "datatype": "UINT8",
                    "data": [],
                }
            ],
            "larger",
        ),
        ([{"name": "image", "shape": [1, 2], "datatype": "UINT8", "data": [1, 300]}], "range"),
        ([{"name": "image", "shape": [20], "datatype": "BYTES", "data": ["x"] * 20}], "1..10"),
        ([{"name": "image", "shape": [1], "datatype": "BYTES"}], "no data"),
    ],
)
def test_oip_tensor_calls_that_cannot_be_read_are_400(inputs, reason):
    with pytest.raises(CallError) as caught:
        oip_rows({"inputs": inputs}, tensor_model(), 10)
    assert caught.value.status == 400 and reason in caught.value.message


def test_tf_serving_b64_instances_and_columnar_inputs():
    import base64

    from modelstream.contracts import tensors

    model = tensor_model()
    b64 = base64.b64encode(b"\x89PNG").decode()
    for body in (
        {"instances": [{"b64": b64}, {"image": {"b64": b64}}]},
        {"inputs": {"image": [{"b64": b64}, {"b64": b64}]}},
        {"inputs": [{"b64": b64}, {"b64": b64}]},
    ):
        rows = tf_rows(body, model, 10)
        assert [tensors.elements(r[0]) for r in rows.tensors] == [[b"\x89PNG"], [b"\x89PNG"]]
    pixels = tf_rows({"instances": [[[[1, 2, 3]]]]}, model, 10).tensors[0][0]
    assert pixels["datatype"] == "UINT8" and pixels["shape"] == [1, 1, 3]
    with pytest.raises(CallError, match="unknown inputs"):
        tf_rows({"instances": [{"text": "x"}]}, model, 10)


def test_tensor_answers_and_metadata():
    from modelstream.contracts import tensors

    model = tensor_model(top_k=2, embedding=True)
    answers = [
        {
            "prediction": "b",
            "scores": {"b": 0.7, "a": 0.2},
            "version": 2,
            "outputs": [tensors.from_array("probs_out", np.asarray([0.2, 0.7, 0.1], np.float32))],
        },
        {
            "prediction": "c",
            "scores": {"c": 0.6, "b": 0.3},
            "version": 2,
            "outputs": [tensors.from_array("probs_out", np.asarray([0.1, 0.3, 0.6], np.float32))],
        },
    ]
    oip = oip_response(model, "call", ["r0", "r1"], answers)  # type: ignore[arg-type]
    outputs = {o["name"]: o for o in oip["outputs"]}
    assert outputs["predict"]["data"] == ["b", "c"]
    assert outputs["top_labels"]["data"] == ["b", "a", "c", "b"]
    assert outputs["top_scores"]["shape"] == [2, 2]
    assert outputs["probs_out"]["shape"] == [2, 3] and outputs["probs_out"]["datatype"] == "FP32"
    np.testing.assert_allclose(outputs["probs_out"]["data"][:3], [0.2, 0.7, 0.1], atol=1e-7)
    tf = tf_response(model, answers)  # type: ignore[arg-type]
    assert tf["predictions"][1]["scores"] == {"c": 0.6, "b": 0.3}
    assert len(tf["predictions"][0]["probs_out"]) == 3
    metadata = oip_metadata(model, [2])
    assert metadata["inputs"] == [
        {"name": "image", "datatype": "BYTES", "shape": [-1, 1], "parameters": {"content": "image"}}
    ]
    assert [o["name"] for o in metadata["outputs"]] == [
        "predict",
        "top_labels",
        "top_scores",
        "probs_out",
        "version",
    ]


def test_rows_of_different_lengths_are_padded_with_their_lengths():
    from modelstream.contracts import tensors
    from modelstream.services.gateway.logic import _stack

    rows = [
        tensors.from_array("tokens", np.ones((2, 3), np.float32)),
        tensors.from_array("tokens", np.ones((4, 3), np.float32)),
    ]
    stacked, lengths = _stack("tokens", rows)
    assert stacked["shape"] == [2, 4, 3] and lengths["data"] == [2, 4]
    assert stacked["data"][6:12] == [0.0] * 6  # the first row's padding
