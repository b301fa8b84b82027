"""ONNX export of published models and import of linear ONNX models as candidates.

Export writes a standard ONNX graph (default domain, opset 17) that any runtime serving
ONNX can load: ``Sub(mean) -> Div(scale) -> MatMul(W) -> Add(b)`` then ``Sigmoid``
(binary, as two probability columns), ``Softmax`` (multiclass) or nothing (regression).
Inputs are float32 ``features [N, d]``; feature names, classes, task and the artifact's
digest are in the model's metadata.

Import reads a graph's tensors and attributes only - it never executes anything from the
file. It understands the graph export writes and scikit-learn's linear models converted by
``skl2onnx`` (``Scaler`` / ``LinearClassifier`` / ``LinearRegressor`` from ``ai.onnx.ml``);
any other operator is refused by name.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from modelstream.contracts.records import Task
from modelstream.errors import ModelstreamError
from modelstream.learn.linear import LinearModel
from modelstream.learn.mlp import MLPModel

OPSET = 17
ML_OPSET = 1


class UnsupportedModelError(ModelstreamError):
    """The ONNX graph holds something a linear modelstream artifact cannot represent."""

    reason = "unsupported-onnx"


def export_onnx(model: LinearModel | MLPModel, *, name: str, version: int, digest: str) -> bytes:
    """Serialized ONNX model of ``model`` (a network: one MatMul + Add per layer, Relu
    between them)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d = model.n_features
    f32 = np.float32
    inits = [
        numpy_helper.from_array(model.mean.astype(f32), "feature_mean"),
        numpy_helper.from_array(model.scale.astype(f32), "feature_scale"),
    ]
    nodes = [
        helper.make_node("Sub", ["features", "feature_mean"], ["centered"]),
        helper.make_node("Div", ["centered", "feature_scale"], ["standardized"]),
    ]
    if isinstance(model, MLPModel):
        current = "standardized"
        for i, (W, b) in enumerate(model.layers):
            inits += [
                numpy_helper.from_array(W.astype(f32), f"layers.{i}.weights"),
                numpy_helper.from_array(b.astype(f32), f"layers.{i}.biases"),
            ]
            last = i == len(model.layers) - 1
            out = "linear" if last else f"layers.{i}.output"
            nodes += [
                helper.make_node(
                    "MatMul", [current, f"layers.{i}.weights"], [f"layers.{i}.product"]
                ),
                helper.make_node("Add", [f"layers.{i}.product", f"layers.{i}.biases"], [out]),
            ]
            if not last:
                nodes.append(helper.make_node("Relu", [out], [f"layers.{i}.relu"]))
                current = f"layers.{i}.relu"
    else:
        inits += [
            numpy_helper.from_array(model.W.astype(f32), "weights"),
            numpy_helper.from_array(model.b.astype(f32), "intercepts"),
        ]
        nodes += [
            helper.make_node("MatMul", ["standardized", "weights"], ["product"]),
            helper.make_node("Add", ["product", "intercepts"], ["linear"]),
        ]
    if model.task == Task.BINARY:
        inits.append(numpy_helper.from_array(np.array([1.0], dtype=f32), "one"))
        nodes += [
            helper.make_node("Sigmoid", ["linear"], ["p_positive"]),
            helper.make_node("Sub", ["one", "p_positive"], ["p_negative"]),
            helper.make_node("Concat", ["p_negative", "p_positive"], ["probabilities"], axis=1),
        ]
        output = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])
    elif model.task == Task.MULTICLASS:
        nodes.append(helper.make_node("Softmax", ["linear"], ["probabilities"], axis=1))
        output = helper.make_tensor_value_info(
            "probabilities", TensorProto.FLOAT, [None, len(model.classes)]
        )
    else:
        nodes.append(helper.make_node("Identity", ["linear"], ["prediction"]))
        output = helper.make_tensor_value_info("prediction", TensorProto.FLOAT, [None, 1])
    graph = helper.make_graph(
        nodes,
        f"modelstream_{name}_v{version}",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, d])],
        [output],
        inits,
    )
    onnx_model = helper.make_model(
        graph, producer_name="modelstream", opset_imports=[helper.make_opsetid("", OPSET)]
    )
    onnx_model.ir_version = 8  # readable by runtimes from ONNX 1.10 on
    metadata = {
        "modelstream.name": name,
        "modelstream.version": str(version),
        "modelstream.task": model.task,
        "modelstream.digest": digest,
        "modelstream.feature_names": json.dumps(model.feature_names),
        "modelstream.classes": json.dumps(model.classes),
    }
    helper.set_model_props(onnx_model, metadata)
    onnx.checker.check_model(onnx_model)
    serialized: bytes = onnx_model.SerializeToString()
    return serialized


ALLOWED = {
    "Sub",
    "Div",
    "MatMul",
    "Add",
    "Sigmoid",
    "Concat",
    "Softmax",
    "Identity",
    "Cast",
    "Scaler",
    "LinearClassifier",
    "LinearRegressor",
    "ZipMap",
    "Normalizer",
}


def import_onnx(data: bytes, feature_names: Sequence[str] | None = None) -> LinearModel:
    """Read a linear model's parameters from serialized ONNX (tensors only)."""
    import onnx
    from onnx import helper, numpy_helper

    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # the protobuf parser raises DecodeError and friends
        raise UnsupportedModelError(f"not an ONNX model: {exc}") from None
    nodes = list(model.graph.node)
    for node in nodes:
        if node.op_type not in ALLOWED:
            raise UnsupportedModelError(
                f"unsupported operator {node.domain or 'ai.onnx'}.{node.op_type}: only linear, "
                "logistic and softmax models can be imported"
            )
    inputs = [
        i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
    ]
    if len(inputs) != 1:
        raise UnsupportedModelError(f"expected one input, found {len(inputs)}")
    dims = inputs[0].type.tensor_type.shape.dim
    d = dims[-1].dim_value if dims and dims[-1].dim_value else None
    tensors = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    props = {p.key: p.value for p in model.metadata_props}
    ops = {n.op_type: n for n in nodes}
    if "LinearClassifier" in ops or "LinearRegressor" in ops:
        imported = _from_onnx_ml(ops, helper, d)
    elif "MatMul" in ops:
        imported = _from_modelstream(ops, tensors, props)
    else:
        raise UnsupportedModelError(
            "no linear layer (LinearClassifier, LinearRegressor or MatMul) in the graph"
        )
    n = imported.W.shape[0]
    if feature_names:
        if len(feature_names) != n:
            raise UnsupportedModelError(f"{len(feature_names)} feature names for {n} features")
        names = list(feature_names)
    elif "modelstream.feature_names" in props:
        names = json.loads(props["modelstream.feature_names"])
    else:
        names = [f"f{i}" for i in range(n)]
    return LinearModel(
        imported.task,
        names,
        imported.classes,
        imported.W,
        imported.b,
        imported.mean,
        imported.scale,
    )


def _attrs(node: Any, helper: Any) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _from_onnx_ml(ops: dict[str, Any], helper: Any, d: int | None) -> LinearModel:
    mean = scale = None
    if "Scaler" in ops:
        a = _attrs(ops["Scaler"], helper)
        mean = np.asarray(a.get("offset", [0.0]), dtype=np.float64)
        inv = np.asarray(a.get("scale", [1.0]), dtype=np.float64)
        if np.any(inv == 0):
            raise UnsupportedModelError("Scaler with a zero scale")
        scale = 1.0 / inv
    if "LinearRegressor" in ops:
        a = _attrs(ops["LinearRegressor"], helper)
        if a.get("targets", 1) != 1 or a.get("post_transform", b"NONE") not in (b"NONE", "NONE"):
            raise UnsupportedModelError(
                "only single-target LinearRegressor without post_transform is supported"
            )
        W = np.asarray(a["coefficients"], dtype=np.float64).reshape(1, -1).T
        b = np.asarray(a.get("intercepts", [0.0]), dtype=np.float64)[:1]
        task, classes = Task.REGRESSION, []
    else:
        a = _attrs(ops["LinearClassifier"], helper)
        labels = a.get("classlabels_ints") or [
            x.decode() if isinstance(x, bytes) else x for x in a.get("classlabels_strings", [])
        ]
        classes = [str(c) for c in labels]
        k = len(classes)
        post = a.get("post_transform", b"NONE")
        post = post.decode() if isinstance(post, bytes) else post
        flat = np.asarray(a["coefficients"], dtype=np.float64)
        rows = len(a["intercepts"]) if a.get("intercepts") else (k if k > 2 else 1)
        if rows == 0 or flat.size % rows:
            raise UnsupportedModelError(f"{flat.size} coefficients do not split into {rows} rows")
        coef = flat.reshape(rows, -1)
        intercepts = np.asarray(a.get("intercepts") or [0.0] * rows, dtype=np.float64)
        if k == 2:
            if post != "LOGISTIC":
                raise UnsupportedModelError(f"binary LinearClassifier with {post} is unsupported")
            # skl2onnx writes [-w, w]; a single row is w itself
            W, b = coef[-1][:, None], intercepts[-1:]
            task = Task.BINARY
        elif post == "SOFTMAX":
            W, b, task = coef.T, intercepts, Task.MULTICLASS
        else:
            raise UnsupportedModelError(
                f"multiclass LinearClassifier with post_transform {post} (one-vs-rest) cannot "
                "be represented as softmax"
            )
    n = W.shape[0]
    if d is not None and n != d:
        raise UnsupportedModelError(f"{n} coefficients per output for {d} inputs")
    if mean is None or scale is None:
        mean, scale = np.zeros(n), np.ones(n)
    mean = np.broadcast_to(mean, (n,)).copy()
    scale = np.broadcast_to(scale, (n,)).copy()
    return LinearModel(task, [], classes, W, b, mean, scale)


def _from_modelstream(
    ops: dict[str, Any], tensors: dict[str, np.ndarray], props: dict[str, str]
) -> LinearModel:
    try:
        W, b = tensors["weights"], tensors["intercepts"]
        mean, scale = tensors["feature_mean"], tensors["feature_scale"]
    except KeyError as missing:
        raise UnsupportedModelError(
            f"MatMul graph without the {missing} initializer (not written by modelstream export)"
        ) from None
    task = Task(
        props.get("modelstream.task")
        or ("MULTICLASS" if "Softmax" in ops else "BINARY" if "Sigmoid" in ops else "REGRESSION")
    )
    classes = json.loads(props.get("modelstream.classes", "[]"))
    if task != Task.REGRESSION and not classes:
        classes = [str(i) for i in range(max(2, W.shape[1]))]
    return LinearModel(task, [], classes, W.reshape(W.shape[0], -1), b.reshape(-1), mean, scale)
