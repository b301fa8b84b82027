"""The predictor's logic with tensor models: each row prepared alone (its reason when it
cannot be), the rest scored in batches, predictions with labels, top scores and output
tensors; hostile tensor requests, mutated byte by byte, are scored or refused, never raised."""

import json
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelstream.contracts import tensors
from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import Prediction, PredictionRequest
from modelstream.registry.artifact import Verified, seal
from modelstream.registry.tensor_model import describe, parse_spec, tensor_candidate
from modelstream.services.predictor.logic import PredictorLogic, ServingModel
from tests.support.tensor_models import (
    image_graph,
    jpeg,
    png,
    png_bomb,
    softmax,
    spec,
    token_graph,
    tokenizer_json,
    wordpiece_input,
)

CODEC = default_codec()
IMAGE, W, B = image_graph()
RNG = np.random.default_rng(11)


@dataclass
class Record:
    value: bytes | None
    key: bytes | None = None
    timestamp: int = 1_790_000_000_000


def serving(name: str, graph: bytes, spec_text: str, version: int = 1) -> ServingModel:
    body = tensor_candidate(name, describe(graph, parse_spec(spec_text)), created_by="t")
    body["version"] = version
    record = seal(body)
    return ServingModel.from_verified(Verified(record, False), None)


def logic_with(*models: ServingModel, output_format: str = "avro") -> PredictorLogic:
    logic = PredictorLogic(CODEC, output_format=output_format)
    for model in models:
        logic.install(model, production=True)
    return logic


def request(rid: str, model: str, named: list[dict], **extra: object) -> bytes:
    return CODEC.encode(
        PredictionRequest, {"request_id": rid, "model": model, "tensors": named, **extra}
    )


def image(data: bytes) -> list[dict]:
    return [tensors.from_elements("image", [data])]


@pytest.mark.parametrize("output_format", ["avro", "json"])
def test_good_rows_are_scored_and_bad_ones_rejected_with_their_reason(output_format):
    pixels = RNG.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    top = spec(scores={"graph_output": "probs", "labels": ["a", "b", "c"], "top_k": 2})
    logic = logic_with(serving("img", IMAGE, top), output_format=output_format)
    records = [
        Record(request("ok-0", "img", image(png(pixels[0])))),
        Record(request("bomb", "img", image(png_bomb()))),
        Record(request("ok-1", "img", image(png(pixels[1])))),
        Record(request("trunc", "img", image(jpeg(pixels[2])[:100]))),
        Record(request("feat", "img", image(png(pixels[3])), features=b"\x00" * 8)),
        Record(request("none", "img", [])),
        Record(
            request(
                "lie",
                "img",
                [
                    {
                        "name": "image",
                        "datatype": "BYTES",
                        "shape": [1],
                        "data": b"\xff\xff\xff\x7fab",
                    }
                ],
            )
        ),
        Record(request("raw-ok", "img", [tensors.from_array("image", pixels[2])])),
    ]
    scored = logic.process(records)
    reasons = {r.message.value: r.reason for r in scored.rejected}
    assert sorted(reasons.values()) == sorted(
        ["image-too-large", "invalid-image", "extra-features", "missing-tensors", "invalid-tensor"]
    )
    (group,) = scored.groups
    predictions = [CODEC.decode_any(v, Prediction) for v in group.values]
    assert [p["request_id"] for p in predictions] == ["ok-0", "ok-1", "raw-ok"]
    x = (pixels[[0, 1, 2]].astype(np.float32) / 255).transpose(0, 3, 1, 2).reshape(3, -1)
    expected = softmax(x @ W + B)
    for prediction, row in zip(predictions, expected, strict=True):
        best = np.argsort(-row)[:2]
        assert list(prediction["scores"]) == [["a", "b", "c"][j] for j in best]
        np.testing.assert_allclose(list(prediction["scores"].values()), row[best], atol=1e-5)
        assert prediction["prediction"] == ["a", "b", "c"][int(row.argmax())]


def test_embeddings_travel_as_output_tensors():
    graph, E = token_graph()
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "hello": 5, "world": 6}
    text_spec = {
        "inputs": [wordpiece_input("text", tokenizer_json(vocab))],
        "outputs": [{"name": "embedding", "graph_output": "hidden", "pool": "mean"}],
    }
    logic = logic_with(serving("emb", graph, json.dumps(text_spec)))
    texts = ["hello world", "world", "hello hello hello world"]
    scored = logic.process(
        [
            Record(request(f"r{i}", "emb", [tensors.from_elements("text", [t])]))
            for i, t in enumerate(texts)
        ]
    )
    assert not scored.rejected
    for value, text in zip(scored.groups[0].values, texts, strict=True):
        prediction = CODEC.decode(value, Prediction)
        assert prediction["prediction"] == "" and prediction["scores"] == {}
        (embedding,) = prediction["outputs"]
        ids = [2] + [vocab[w] for w in text.split()] + [3]
        np.testing.assert_allclose(tensors.numeric(embedding), E[ids].mean(axis=0), atol=1e-6)


def test_a_classifiers_embedding_goes_to_the_monitor_as_the_rows_features():
    """The monitor learns a head on it: the rows' embeddings, named by their components."""
    from modelstream.contracts.definitions import features_id
    from modelstream.registry.embedding_head import head_input_of
    from tests.support.tensor_models import embedding_graph, embedding_spec

    graph, P = embedding_graph()
    text = embedding_spec(["a", "b", "c"])
    logic = logic_with(serving("clf", graph, text))
    x = RNG.normal(size=(5, 6)).astype(np.float32)
    scored = logic.process(
        [Record(request(f"r{i}", "clf", [tensors.from_array("x", r)])) for i, r in enumerate(x)]
    )
    (group,) = scored.groups
    assert group.rows is not None and group.rows.classes == ["a", "b", "c"]
    # what the monitor computes from the artifact
    wanted = head_input_of(
        tensor_candidate("clf", describe(graph, parse_spec(text)), created_by="t")
    )
    assert wanted is not None and group.rows.features_id == wanted.features_id
    np.testing.assert_allclose(group.rows.features, np.maximum(x @ P, 0), atol=1e-6)
    # a per-token output is no one vector per row: no head, no features
    plain = logic_with(serving("clf", graph, embedding_spec(["a", "b", "c"], output="tokens")))
    (group,) = plain.process([Record(request("r", "clf", [tensors.from_array("x", x[0])]))]).groups
    assert group.rows is not None and group.rows.features.shape == (1, 0)
    assert group.rows.features_id == features_id([])


def test_feature_models_refuse_tensors_and_tensor_models_refuse_features():
    from modelstream.registry.onnx_model import describe as describe_features
    from modelstream.registry.onnx_model import onnx_candidate
    from tests.support.onnx_models import mlp_graph

    bundle = mlp_graph((64, 8, 10))
    body = onnx_candidate("mlp", describe_features(bundle.graph, classes=bundle.classes))
    body["version"] = 1
    feature_model = ServingModel.from_verified(Verified(seal(body), False), None)
    logic = logic_with(serving("img", IMAGE, spec()), feature_model)
    scored = logic.process(
        [
            Record(request("a", "img", [], features=b"\x00" * 16)),
            Record(request("b", "mlp", image(b"x"), features=b"\x00" * 512)),
            Record(request("c", "mlp", [], features=b"\x00" * 512)),
        ]
    )
    assert sorted((r.message.value[11:12], r.reason) for r in scored.rejected) == [
        (b"a", "extra-features"),
        (b"b", "unknown-tensors"),
    ]
    assert sum(len(g.values) for g in scored.groups) == 1


def test_queue_delay_holds_a_partial_batch_until_it_runs_out():
    delayed = spec(max_batch_size=4, max_queue_delay_ms=200)
    logic = logic_with(serving("img", IMAGE, delayed), serving("now", IMAGE, spec()))
    now_ms = 1_790_000_000_000
    fresh = [Record(request(f"r{i}", "img", []), timestamp=now_ms) for i in range(3)]
    import time

    real = time.time
    try:
        time.time = lambda: now_ms / 1000 + 0.05  # 50 ms after the requests were sent
        assert logic.hold_s(fresh) == pytest.approx(0.15, abs=1e-3)
        full = [*fresh, Record(request("r3", "img", []), timestamp=now_ms)]
        assert logic.hold_s(full) == 0.0  # a full batch goes at once
        mixed = [*fresh, Record(request("x", "now", []), timestamp=now_ms)]
        assert logic.hold_s(mixed) == 0.0  # a model without a delay is never held
        time.time = lambda: now_ms / 1000 + 0.5
        assert logic.hold_s(fresh) == 0.0  # the delay has run out
        future = [Record(request("f", "img", []), timestamp=now_ms + 10**12)]
        assert logic.hold_s(future) <= 0.2  # a producer's clock never holds longer
    finally:
        time.time = real


SEED_PIXELS = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
SEEDS = [
    request("p", "img", image(png(SEED_PIXELS))),
    request("j", "img", image(jpeg(SEED_PIXELS))),
    request("r", "img", [tensors.from_array("image", SEED_PIXELS)]),
    json.dumps(
        {
            "request_id": "js",
            "model": "img",
            "tensors": [{"name": "image", "datatype": "UINT8", "data": SEED_PIXELS.tolist()}],
        }
    ).encode(),
]
FUZZ_LOGIC = logic_with(serving("img", IMAGE, spec()))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(0, len(data) - 1)))
        kind = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate"]))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite" and data:
            data[at] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data)


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(mutated(), min_size=10, max_size=10))
def test_mutated_tensor_requests_are_scored_or_refused_with_a_reason(batch):
    """10,000 mutated image requests (PNG, JPEG, raw pixels, JSON) through the tensor path."""
    records = [Record(value) for value in batch]
    scored = FUZZ_LOGIC.process(records)
    answered = sum(len(g.values) for g in scored.groups)
    assert answered + len(scored.rejected) == len(records)
    for rejected in scored.rejected:
        assert rejected.reason and rejected.error
    for group in scored.groups:
        for value in group.values:
            prediction = CODEC.decode(value, Prediction)
            assert abs(sum(prediction["scores"].values()) - 1) < 1e-5


def test_a_row_the_graph_fails_on_fails_alone():
    """Two dynamic inputs added together: a row whose inputs disagree fails in onnxruntime;
    its neighbours in the batch are still answered."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("ReduceSum", ["sum"], ["total"], keepdims=1),
            helper.make_node("Concat", ["total", "total"], ["pair"], axis=1),
            helper.make_node("Softmax", ["pair"], ["scores"], axis=1),
        ],
        "adder",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", "D"]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", "E"]),
        ],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    signature = describe(model.SerializeToString(), None, classes=["x", "y"])
    body = tensor_candidate("adder", signature, created_by="t")
    body["version"] = 1
    logic = logic_with(ServingModel.from_verified(Verified(seal(body), False), None))

    def row(rid: str, a: int, b: int) -> Record:
        named = [
            tensors.from_array("a", np.ones((1, a), np.float32)),
            tensors.from_array("b", np.ones((1, b), np.float32)),
        ]
        return Record(request(rid, "adder", named))

    scored = logic.process([row("ok-1", 3, 3), row("bad", 3, 4), row("ok-2", 3, 3)])
    assert [(r.reason, r.message.value[11:14]) for r in scored.rejected] == [
        ("model-failed", b"bad")
    ]
    assert sum(len(g.values) for g in scored.groups) == 2


def test_a_row_read_into_a_column_that_the_graph_fails_on_fails_alone():
    """Rows of the graph's exact shape go into one column; an index out of the graph's
    table fails the batch in onnxruntime, then only its own row."""
    from onnx import TensorProto, helper, numpy_helper

    table = np.eye(3, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "x"], ["rows"], axis=0),  # [N, 1, 3]
            helper.make_node("Flatten", ["rows"], ["z"], axis=1),
            helper.make_node("Softmax", ["z"], ["scores"], axis=1),
        ],
        "lookup",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 1])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    signature = describe(model.SerializeToString(), None, classes=["a", "b", "c"])
    body = tensor_candidate("lookup", signature, created_by="t")
    body["version"] = 1
    serving_model = ServingModel.from_verified(Verified(seal(body), False), None)
    logic = logic_with(serving_model)

    def row(rid: str, index: int) -> Record:
        return Record(request(rid, "lookup", [tensors.from_array("x", np.array([index]))]))

    records = [row("r0", 2), row("r1", 0), row("bad", 7), row("r3", 1)]
    stacked, rest = serving_model.model.stack(
        [CODEC.decode(r.value, PredictionRequest)["tensors"] for r in records]
    )  # type: ignore[union-attr]
    assert stacked is not None and len(stacked) == 4 and rest == []
    scored = logic.process(records)
    assert [(r.reason, r.message.value[11:14]) for r in scored.rejected] == [
        ("model-failed", b"bad")
    ]
    (group,) = scored.groups
    predictions = [CODEC.decode_any(v, Prediction) for v in group.values]
    assert [(p["request_id"], p["prediction"]) for p in predictions] == [
        ("r0", "c"),
        ("r1", "a"),
        ("r3", "b"),
    ]
