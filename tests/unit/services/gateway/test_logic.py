"""The gateway's protocols in modelstream's terms: calls to rows, answers to responses."""

import numpy as np
import pytest

from modelstream.services.gateway.logic import (
    CallError,
    ModelInfo,
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
