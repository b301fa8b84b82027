"""A head learned on a tensor model's embedding, served inside its graph: the composite
graph scores what numpy computes from the embedding, an earlier head is replaced and read
back, and only outputs the graph can pool itself get a head."""

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


def tensor_body(labels: list[str], task: Task | None = None, **output: Any) -> ModelBody:
    graph, _ = embedding_graph(classes=max(len(labels), 1))
    signature = describe(graph, parse_spec(embedding_spec(labels, **output)), task=task)
    return tensor_candidate("m", signature, created_by="test")


def embeddings(x: np.ndarray, pool: str = "none", normalize: str = "none") -> np.ndarray:
    _, P = embedding_graph()
    e = np.maximum(x.astype(np.float32) @ P, 0).astype(np.float64)
    if normalize == "l2":
        e = e / np.clip(np.linalg.norm(e, axis=1, keepdims=True), 1e-12, None)
    return e


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


def served(body: ModelBody, x: np.ndarray) -> np.ndarray:
    scorer = TensorScorer(body)
    scores = scorer.score(
        np.empty((len(x), 0)), tensor_rows=[[tensors.from_array("x", r)] for r in x]
    )
    return scores


@pytest.mark.parametrize(
    ("labels", "task", "output"),
    [
        (["a", "b", "c"], None, {}),
        (["no", "yes"], None, {"normalize": "l2"}),
        ([], Task.REGRESSION, {"output": "tokens", "pool": "cls"}),
        (["a", "b", "c"], None, {"output": "tokens", "pool": "cls", "normalize": "l2"}),
    ],
)
def test_the_graph_with_a_head_scores_what_the_head_gives_on_the_embedding(labels, task, output):
    body = tensor_body(labels, task, **output)
    wanted = head_input_of(body)
    assert wanted is not None and wanted.width == 4 and wanted.name == "embedding"
    model = head(Task(body["task"]), labels)
    graph = with_head(body, model)
    candidate = {**body, "onnx": graph}
    x = RNG.normal(size=(9, 6)).astype(np.float32)
    expected = model.proba(embeddings(x, normalize=output.get("normalize", "none")))
    np.testing.assert_allclose(served(candidate, x).reshape(expected.shape), expected, atol=2e-5)
    spec = decode_spec(graph["spec"] or b"")
    assert spec["scores"] is not None and spec["scores"]["graph_output"] == HEAD_SCORES
    assert spec["outputs"] == decode_spec(body["onnx"]["spec"] or b"")["outputs"]
    # the head is read back (to float32) and a second one replaces it
    back = head_of(candidate)
    assert back is not None
    np.testing.assert_allclose(back.W, model.W, rtol=1e-6)
    np.testing.assert_allclose(back.scale, model.scale, rtol=1e-6)
    again = with_head(candidate, head(Task(body["task"]), labels))
    import onnx

    nodes = [n.name for n in onnx.load_model_from_string(again["graph"]).graph.node]
    first = [n.name for n in onnx.load_model_from_string(graph["graph"]).graph.node]
    assert len(nodes) == len(first) and nodes.count(HEAD_SCORES) == 1
    assert head_of(body) is None  # the graph's own scores: no head to continue from


def test_outputs_the_graph_cannot_pool_itself_get_no_head():
    graph, _ = embedding_graph()
    _, _, outputs = graph_signature(graph)
    pooled = parse_spec(embedding_spec(["a", "b", "c"], output="tokens", pool="cls"))
    assert head_input(Task.MULTICLASS, pooled, outputs) is not None
    pooled["outputs"][0]["pool"] = Pooling.MEAN  # over a text's attention mask
    assert head_input(Task.MULTICLASS, pooled, outputs) is None
    assert head_input_of(tensor_body(["a", "b", "c"], output="tokens")) is None  # per token
    plain = json.loads(embedding_spec([]))
    del plain["scores"]
    spec = parse_spec(json.dumps(plain))
    embedder = tensor_candidate("e", describe(graph, spec, task=Task.EMBEDDING), created_by="t")
    assert head_input_of(embedder) is None  # no labels to learn
    with pytest.raises(ValueError, match="does not fit"):
        with_head(tensor_body(["a", "b", "c"]), head(Task.MULTICLASS, ["a", "b", "c"], width=5))
