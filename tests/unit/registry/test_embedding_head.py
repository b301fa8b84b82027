"""A head learned on a tensor model's embedding, served inside its graph: the composite
graph scores what the head gives on the embedding the predictor hands the monitor (every
pooling, normalization, datatype and opset path), an earlier head is replaced and read back,
the head's columns name their backbone, and only outputs the graph can pool itself get a
head."""

import json
from typing import Any

import numpy as np
import pytest

from modelstream.contracts import tensors
from modelstream.contracts.records import ModelBody, Pooling, Task
from modelstream.learn.linear import LinearModel
from modelstream.registry.embedding_head import (
    HEAD_SCORES,
    head_input,
    head_input_of,
    head_of,
    with_head,
)
from modelstream.registry.tensor_model import (
    TensorScorer,
    decode_spec,
    describe,
    graph_signature,
    parse_spec,
    tensor_candidate,
)
from tests.support.tensor_models import embedding_graph, embedding_spec

RNG = np.random.default_rng(11)


def tensor_body(
    labels: list[str], task: Task | None = None, graph: dict[str, Any] | None = None, **output: Any
) -> ModelBody:
    data, _ = embedding_graph(classes=max(len(labels), 1), **(graph or {}))
    signature = describe(data, parse_spec(embedding_spec(labels, **output)), task=task)
    return tensor_candidate("m", signature, created_by="test")


def rows(x: np.ndarray) -> list[list[dict[str, Any]]]:
    return [[tensors.from_array("x", r)] for r in x]


def head(task: Task, classes: list[str], width: int = 4) -> LinearModel:
    k = len(classes) if task == Task.MULTICLASS else 1
    return LinearModel(
        task,
        [f"embedding[{i}]" for i in range(width)],
        classes,
        RNG.normal(size=(width, k)),
        RNG.normal(size=k),
        RNG.normal(size=width),
        RNG.uniform(0.5, 2.0, size=width),
    )


@pytest.mark.parametrize(
    ("labels", "task", "output", "graph"),
    [
        (["a", "b", "c"], None, {}, {}),
        (["no", "yes"], None, {"normalize": "l2"}, {}),
        ([], Task.REGRESSION, {"output": "tokens", "pool": "cls"}, {}),
        (["a", "b", "c"], None, {"output": "tokens", "pool": "cls", "normalize": "l2"}, {}),
        (["a", "b", "c"], None, {"normalize": "l2"}, {"opset": 11}),  # ReduceSum's axes
        (["a", "b", "c"], None, {"normalize": "l2"}, {"double": True}),  # a float64 output
        (["a", "b", "c"], None, {"datatype": "fp16"}, {}),  # returned as float16
        (["a", "b", "c"], None, {}, {"opset": 9, "ir_version": 3}),  # inputs list initializers
    ],
)
def test_the_graph_with_a_head_scores_what_the_head_gives_on_the_predictors_embedding(
    labels, task, output, graph
):
    body = tensor_body(labels, task, graph, **output)
    wanted = head_input_of(body)
    assert wanted is not None and wanted.width == 4 and wanted.name == "embedding"
    model = head(Task(body["task"]), labels)
    composite = with_head(body, model)
    candidate = {**body, "onnx": composite}
    x = RNG.normal(size=(9, 6)).astype(np.float32)
    x[0] = 0.0  # an embedding of zeros
    # what the predictor sends the monitor: the declared output as the scorer gives it
    scorer = TensorScorer(body)
    embedding = scorer.infer([scorer.prepare(r) for r in rows(x)]).outputs["embedding"]
    expected = model.proba(np.asarray(embedding, np.float64))
    served = TensorScorer(candidate).score(np.empty((9, 0)), tensor_rows=rows(x))
    tolerance = 2e-3 if output.get("datatype") == "fp16" else 2e-5
    np.testing.assert_allclose(served.reshape(expected.shape), expected, atol=tolerance)
    spec = decode_spec(composite["spec"] or b"")
    assert spec["scores"] is not None and spec["scores"]["graph_output"] == HEAD_SCORES
    assert spec["outputs"] == decode_spec(body["onnx"]["spec"] or b"")["outputs"]
    # read back (to float32), and a second head replaces the first
    back = head_of(candidate)
    assert back is not None
    np.testing.assert_allclose(back.W, model.W, rtol=1e-6)
    np.testing.assert_allclose(back.scale, model.scale, rtol=1e-6)
    again = with_head(candidate, head(Task(body["task"]), labels))
    import onnx

    nodes = [n.name for n in onnx.load_model_from_string(again["graph"]).graph.node]
    first = [n.name for n in onnx.load_model_from_string(composite["graph"]).graph.node]
    assert len(nodes) == len(first) and nodes.count(HEAD_SCORES) == 1
    assert head_of(body) is None  # the graph's own scores: no head to continue from
    # the same backbone with or without a head: its rows are learned from
    assert head_input_of(candidate) == wanted


def test_the_embeddings_numpy_computes():
    body = tensor_body(["a", "b", "c"])
    _, P = embedding_graph()
    x = RNG.normal(size=(5, 6)).astype(np.float32)
    scorer = TensorScorer(body)
    embedding = scorer.infer([scorer.prepare(r) for r in rows(x)]).outputs["embedding"]
    np.testing.assert_allclose(embedding, np.maximum(x @ P, 0), atol=1e-6)
    cls = TensorScorer(tensor_body(["a", "b", "c"], output="tokens", pool="cls"))
    first = cls.infer([cls.prepare(r) for r in rows(x)]).outputs["embedding"]
    np.testing.assert_allclose(first, -np.maximum(x @ P, 0), atol=1e-6)


def test_another_network_with_the_same_output_is_another_backbone():
    ours = head_input_of(tensor_body(["a", "b", "c"]))
    theirs = head_input_of(tensor_body(["a", "b", "c"], graph={"seed": 1}))
    assert ours is not None and theirs is not None
    assert ours.feature_names == theirs.feature_names and ours.features_id != theirs.features_id


def test_outputs_the_graph_cannot_pool_itself_get_no_head():
    graph, _ = embedding_graph()
    _, _, outputs = graph_signature(graph)
    pooled = parse_spec(embedding_spec(["a", "b", "c"], output="tokens", pool="cls"))
    assert head_input(Task.MULTICLASS, pooled, outputs) is not None
    pooled["outputs"][0]["pool"] = Pooling.MEAN  # over a text's attention mask
    assert head_input(Task.MULTICLASS, pooled, outputs) is None
    assert head_input_of(tensor_body(["a", "b", "c"], output="tokens")) is None  # per token
    scores = parse_spec(embedding_spec(["a", "b", "c"], output="logits"))
    assert head_input(Task.MULTICLASS, scores, outputs) is None  # the scores are no embedding
    plain = json.loads(embedding_spec([]))
    del plain["scores"]
    spec = parse_spec(json.dumps(plain))
    embedder = tensor_candidate("e", describe(graph, spec, task=Task.EMBEDDING), created_by="t")
    assert head_input_of(embedder) is None  # no labels to learn
    old = tensor_body(["a", "b", "c"], graph={"opset": 7, "ir_version": 3})
    assert head_input_of(old) is None  # no broadcasting Max before opset 8
    with pytest.raises(ValueError, match="does not fit"):
        with_head(tensor_body(["a", "b", "c"]), head(Task.MULTICLASS, ["a", "b", "c"], width=5))
