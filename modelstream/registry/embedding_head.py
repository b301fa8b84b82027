"""A linear head on a tensor model's embedding, learned online and served inside its graph.

A tensor model (an image or text classifier) may declare an output besides its scores: an
embedding, one float vector per row. The predictor hands that vector to the monitor as the
row's features (named ``embedding[0]`` ... by the spec's output name); the monitor learns a
linear head on it from labelled feedback (standardize, then logistic, softmax or linear
regression) and proposes the head as a candidate. The candidate is the same graph with the
head's nodes added (``modelstream_head/...``: Sub the mean, Div the scale, MatMul, Add) and
the spec's scores read from the head's output, so any ONNX runtime serves it, the validator
gates it on the model's held-out tensors against the production graph, and it exports and
imports again like any graph. A head already in the graph is replaced, and read back as the
starting point of the next one (:func:`head_of`).

Which output: the spec's first declared output, other than the scores' own, that gives one
fixed-width float vector per row, [N, D] as declared (pooling NONE) or the first token of
[N, T, D] (CLS), normalized or not. A MEAN or MAX pooling weighs tokens by the attention
mask, which the head's graph does not see: such an output gets no head, nor does an
embedding model (no labels to learn), nor a graph whose default-domain opset is under 8
(the head's broadcasting Max) or missing.

Rows are learned from only when they come from the same backbone: the identity of the
head's columns (:attr:`HeadInput.features_id`) covers the graph without any head, so a
version that differs only by its head shares it, and another network with an output of the
same name and width does not.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelstream.contracts.definitions import features_id
from modelstream.contracts.records import (
    Activation,
    ModelBody,
    Normalization,
    OnnxGraph,
    Pooling,
    ServingSpec,
    Task,
)
from modelstream.errors import ArtifactVerificationError
from modelstream.learn.linear import LinearModel
from modelstream.registry.artifact import to_tensor
from modelstream.registry.tensor_model import (
    FLOAT_DATATYPES,
    GraphTensor,
    decode_spec,
    encode_spec,
    graph_signature,
)

HEAD_PREFIX = "modelstream_head/"
HEAD_SCORES = HEAD_PREFIX + "scores"
_WEIGHTS, _BIAS, _MEAN, _SCALE = (HEAD_PREFIX + n for n in ("weights", "bias", "mean", "scale"))
# the spec's L2 normalization divides by max(norm, 1e-12) (TensorScorer._outputs)
_MIN_NORM = 1e-12
_MIN_OPSET = 8  # Max with broadcasting


@dataclass(frozen=True)
class HeadInput:
    """The declared output a head learns on."""

    name: str  # the spec's name for the output (what predictions carry)
    graph_output: str
    width: int
    pool: Pooling
    normalize: Normalization
    backbone: str = ""  # sha-256 of the graph without any head (hex)

    @property
    def feature_names(self) -> list[str]:
        return [f"{self.name}[{i}]" for i in range(self.width)]

    @property
    def features_id(self) -> bytes:
        """The identity of the head's columns: the output's components, of this backbone."""
        return features_id([*self.feature_names, f"backbone:{self.backbone}"])


def head_input(
    task: Task, spec: ServingSpec, outputs: list[GraphTensor], backbone: str = ""
) -> HeadInput | None:
    """The output a head can learn on (see the module's docstring), or None."""
    if task == Task.EMBEDDING:
        return None
    shapes = {o.name: o for o in outputs}
    scores = spec["scores"]
    for item in spec["outputs"]:
        graph_output = shapes.get(item["graph_output"])
        if graph_output is None or graph_output.datatype not in FLOAT_DATATYPES:
            continue
        if scores is not None and item["graph_output"] == scores["graph_output"]:
            continue  # the scores themselves are no embedding
        if item["datatype"] not in FLOAT_DATATYPES:
            continue
        shape, pool = graph_output.shape, Pooling(item["pool"])
        rank = {Pooling.NONE: 2, Pooling.CLS: 3}.get(pool)
        if rank is not None and len(shape) == rank:
            width = shape[-1]
            if width is not None and width > 0:
                return HeadInput(
                    item["name"],
                    item["graph_output"],
                    width,
                    pool,
                    Normalization(item["normalize"]),
                    backbone,
                )
    return None


def head_input_of(body: ModelBody) -> HeadInput | None:
    """The head input of an artifact's graph (None for a model that is not a tensor model,
    or whose graph cannot take a head)."""
    graph = body.get("onnx")
    if graph is None or not graph.get("spec"):
        return None
    model, _, outputs = graph_signature(graph["graph"])
    if _default_opset(model) < _MIN_OPSET:
        return None
    spec = decode_spec(graph["spec"] or b"")
    if head_input(Task(body["task"]), spec, outputs) is None:
        return None  # no output to learn on: spare hashing the graph
    return head_input(Task(body["task"]), spec, outputs, backbone(model))


def backbone(model: Any) -> str:
    """The sha-256 of a parsed graph without any head: what its embedding depends on."""
    graph = type(model.graph)()
    graph.CopyFrom(model.graph)
    _drop_head(graph)
    return hashlib.sha256(graph.SerializeToString(deterministic=True)).hexdigest()


def with_head(body: ModelBody, head: LinearModel) -> OnnxGraph:
    """``body``'s graph with ``head`` on its embedding, scores read from the head (an
    earlier head in the graph is replaced); the record a candidate carries."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    source = body["onnx"]
    assert source is not None and source.get("spec")
    spec = decode_spec(source["spec"] or b"")
    model, _, outputs = graph_signature(source["graph"])
    wanted = head_input(Task(body["task"]), spec, outputs)
    if wanted is None or wanted.feature_names != head.feature_names:
        raise ValueError("the head does not fit the graph's embedding output")
    if _default_opset(model) < _MIN_OPSET:
        raise ValueError(f"the graph's opset is under {_MIN_OPSET}: no head")
    graph = model.graph
    _drop_head(graph)
    x = wanted.graph_output
    nodes: list[Any] = []

    def step(op: str, inputs: list[str], **attrs: Any) -> str:
        name = f"{HEAD_PREFIX}{len(nodes)}_{op.lower()}"
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    datatype = {o.name: o.datatype for o in outputs}[x]
    if datatype != "FP32":
        x = step("Cast", [x], to=TensorProto.FLOAT)
    if wanted.pool == Pooling.CLS:
        first = HEAD_PREFIX + "first_token"
        graph.initializer.append(numpy_helper.from_array(np.array(0, np.int64), first))
        x = step("Gather", [x, first], axis=1)
    if wanted.normalize == Normalization.L2:
        squares = step("Mul", [x, x])
        opset = _default_opset(model)
        if opset >= 13:
            axes = HEAD_PREFIX + "last_axis"
            graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), axes))
            total = step("ReduceSum", [squares, axes], keepdims=1)
        else:
            total = step("ReduceSum", [squares], axes=[-1], keepdims=1)
        floor = HEAD_PREFIX + "min_norm"
        graph.initializer.append(numpy_helper.from_array(np.array(_MIN_NORM, np.float32), floor))
        x = step("Div", [x, step("Max", [step("Sqrt", [total]), floor])])
    for name, value in (
        (_MEAN, head.mean),
        (_SCALE, head.scale),
        (_WEIGHTS, head.W),
        (_BIAS, head.b),
    ):
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
    if model.ir_version < 4:  # before IR 4 every initializer is also a graph input
        listed = {i.name for i in graph.input}
        for tensor in graph.initializer:
            if tensor.name.startswith(HEAD_PREFIX) and tensor.name not in listed:
                graph.input.append(
                    helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
                )
    z = step(
        "Add", [step("MatMul", [step("Div", [step("Sub", [x, _MEAN]), _SCALE]), _WEIGHTS]), _BIAS]
    )
    nodes.append(helper.make_node("Identity", [z], [HEAD_SCORES], name=HEAD_SCORES))
    graph.node.extend(nodes)
    width = np.asarray(head.W).reshape(wanted.width, -1).shape[1]
    scores_info = helper.make_tensor_value_info(HEAD_SCORES, TensorProto.FLOAT, ["batch", width])
    graph.output.append(scores_info)
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    scores = spec["scores"]
    assert scores is not None
    task = Task(body["task"])
    activation = {
        Task.BINARY: Activation.SIGMOID,
        Task.MULTICLASS: Activation.SOFTMAX,
    }.get(task, Activation.NONE)
    spec["scores"] = {**scores, "graph_output": HEAD_SCORES, "activation": activation}
    return {
        "graph": data,
        "graph_sha256": hashlib.sha256(data).hexdigest(),
        "inputs": [],
        "scores_output": HEAD_SCORES,
        "zipmap_input": None,
        "spec": encode_spec(spec),
    }


def head_of(body: ModelBody) -> LinearModel | None:
    """The head a graph already serves (one :func:`with_head` added), as a linear model
    over its embedding; None when its scores come from the graph's own layers."""
    from onnx import numpy_helper

    source = body.get("onnx")
    if source is None or source.get("scores_output") != HEAD_SCORES:
        return None
    wanted = head_input_of(body)
    model, _, _ = graph_signature(source["graph"])
    found = {
        t.name: numpy_helper.to_array(t).astype(np.float64)
        for t in model.graph.initializer
        if t.name in (_WEIGHTS, _BIAS, _MEAN, _SCALE)
    }
    if wanted is None or len(found) != 4:
        return None
    try:
        model = LinearModel.from_tensors(
            Task(body["task"]),
            wanted.feature_names,
            list(body["classes"]),
            {
                "weights": to_tensor(found[_WEIGHTS]),
                "intercepts": to_tensor(found[_BIAS]),
                "feature_mean": to_tensor(found[_MEAN]),
                "feature_scale": to_tensor(found[_SCALE]),
            },
        )
    except (ValueError, ArtifactVerificationError):
        return None  # not a head this module wrote: learn one from zero
    usable = np.isfinite(model.W).all() and np.isfinite(model.b).all()
    return model if usable and (model.scale > 0).all() and np.isfinite(model.mean).all() else None


def _drop_head(graph: Any) -> None:
    for listing in (graph.node, graph.initializer, graph.input, graph.output):
        kept = [item for item in listing if not item.name.startswith(HEAD_PREFIX)]
        del listing[:]
        listing.extend(kept)


def _default_opset(model: Any) -> int:
    """The graph's default-domain opset (0: none imported)."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
