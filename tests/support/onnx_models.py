"""ONNX graphs as users bring them: scikit-learn pipelines (skl2onnx), XGBoost and LightGBM
(onnxmltools), and a network written the way ``torch.onnx.export`` writes one.

Each builder trains on a data set shipped with scikit-learn and returns the serialized
graph with the rows it can be scored on. Used by the unit and integration tests and by
``bench/models.py``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

CENTRES = ("north", "south", "east", "west")


@dataclass
class Bundle:
    """A converted model and data to score it on."""

    graph: bytes
    X: np.ndarray  # numeric features, float64
    y: list[str]  # labels as strings (class labels) - or targets for regression
    feature_names: list[str]
    classes: list[str]
    categories: list[dict[str, str]] = field(default_factory=list)  # per row, when categorical


def _breast_cancer() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    return data.data.astype(np.float64), data.target, names


def xgboost_model(
    trees: int = 30, depth: int = 4, features: int = 30, rows: int | None = None
) -> Bundle:
    """Binary gradient-boosted trees (xgboost-cpu) converted by onnxmltools: on
    breast-cancer, or with ``rows`` on a noisy synthetic set large enough that every tree
    grows to its full depth (the size of a production ensemble)."""
    import xgboost
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    if rows is None:
        X, y, _ = _breast_cancer()
        X = X[:, :features]
    else:
        from sklearn.datasets import make_classification

        X, y = make_classification(
            n_samples=rows, n_features=features, n_informative=12, flip_y=0.1, random_state=0
        )
    model = xgboost.XGBClassifier(n_estimators=trees, max_depth=depth, n_jobs=1, random_state=0)
    model.fit(X, y)
    onx = convert_xgboost(
        model, initial_types=[("features", FloatTensorType([None, X.shape[1]]))], target_opset=15
    )
    names = [f"f{i}" for i in range(X.shape[1])]
    return Bundle(onx.SerializeToString(), X, [str(v) for v in y], names, ["0", "1"])


def lightgbm_model(trees: int = 40) -> Bundle:
    """Multiclass gradient-boosted trees (LightGBM) converted by onnxmltools (with the
    ZipMap output it writes by default)."""
    import lightgbm
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType
    from sklearn.datasets import load_wine

    data = load_wine()
    X, y = data.data.astype(np.float64), data.target
    model = lightgbm.LGBMClassifier(n_estimators=trees, num_leaves=8, n_jobs=1, verbose=-1)
    model.fit(X, y)
    onx = convert_lightgbm(
        model, initial_types=[("input", FloatTensorType([None, X.shape[1]]))], target_opset=15
    )
    names = [n.replace("/", "_") for n in data.feature_names]
    return Bundle(onx.SerializeToString(), X, [str(v) for v in y], names, ["0", "1", "2"])


def pipeline_model() -> Bundle:
    """A scikit-learn pipeline converted by skl2onnx: imputer and scaler on the numeric
    columns, a one-hot encoder on a categorical one, gradient boosting on top; one graph
    input per column, as skl2onnx writes for a ColumnTransformer."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    X, y, names = _breast_cancer()
    X, names = X[:, :6], names[:6]
    rng = np.random.default_rng(0)
    centre = rng.choice(CENTRES, size=len(X))
    # the centre carries signal the numeric columns do not
    flip = (centre == "east") & (rng.random(len(X)) < 0.5)
    y = np.where(flip, 1 - y, y)
    import pandas as pd

    frame = pd.DataFrame(X, columns=names).astype(np.float32)
    frame["centre"] = centre
    numeric = Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())])
    model = Pipeline(
        [
            (
                "columns",
                ColumnTransformer(
                    [
                        ("numeric", numeric, names),
                        ("centre", OneHotEncoder(handle_unknown="ignore"), ["centre"]),
                    ]
                ),
            ),
            ("boost", GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=0)),
        ]
    )
    model.fit(frame, y)
    types = [(n, FloatTensorType([None, 1])) for n in names] + [
        ("centre", StringTensorType([None, 1]))
    ]
    onx = convert_sklearn(model, initial_types=types, target_opset=15)
    categories = [{"centre": str(c)} for c in centre]
    return Bundle(onx.SerializeToString(), X, [str(v) for v in y], names, ["0", "1"], categories)


def mlp_graph(sizes: tuple[int, ...] = (64, 128, 10), seed: int = 0) -> Bundle:
    """A multilayer perceptron as ``torch.onnx.export`` writes one (Gemm, Relu, Softmax;
    input ``input``, output ``output``), built with onnx.helper from numpy weights: the
    digits data set, weights from a few epochs of plain gradient descent so the scores
    mean something."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.datasets import load_digits

    digits = load_digits()
    X, y = digits.data.astype(np.float64), digits.target
    rng = np.random.default_rng(seed)
    d_in, hidden, d_out = sizes[0], sizes[1:-1], sizes[-1]
    layers = [d_in, *hidden, d_out]
    weights = [
        rng.normal(0, np.sqrt(2.0 / a), size=(a, b)).astype(np.float32)
        for a, b in itertools.pairwise(layers)
    ]
    biases = [np.zeros(b, dtype=np.float32) for b in layers[1:]]
    _train_mlp(X / 16.0, y, weights, biases)
    weights[0] = weights[0] / 16.0  # the graph takes raw pixel values
    nodes, inits = [], []
    current = "input"
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        inits += [
            numpy_helper.from_array(w.T.copy(), f"layers.{i}.weight"),
            numpy_helper.from_array(b, f"layers.{i}.bias"),
        ]
        out = f"/layers.{i}/Gemm_output_0"
        nodes.append(
            helper.make_node(
                "Gemm", [current, f"layers.{i}.weight", f"layers.{i}.bias"], [out], transB=1
            )
        )
        current = out
        if i < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"/act.{i}/Relu_output_0"]))
            current = f"/act.{i}/Relu_output_0"
    nodes.append(helper.make_node("Softmax", [current], ["output"], axis=1))
    graph = helper.make_graph(
        nodes,
        "main_graph",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch_size", d_in])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch_size", d_out])],
        inits,
    )
    model = helper.make_model(
        graph, producer_name="pytorch", opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    names = [f"pixel_{i}" for i in range(d_in)]
    return Bundle(
        model.SerializeToString(), X, [str(v) for v in y], names, [str(c) for c in range(d_out)]
    )


def _train_mlp(
    X: np.ndarray, y: np.ndarray, weights: list[np.ndarray], biases: list[np.ndarray]
) -> None:
    """A few epochs of full-batch gradient descent with softmax cross-entropy."""
    onehot = np.eye(weights[-1].shape[1])[y]
    for _ in range(150):
        activations = [X.astype(np.float32)]
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            z = activations[-1] @ w + b
            activations.append(np.maximum(z, 0) if i < len(weights) - 1 else z)
        z = activations[-1]
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        grad = (p - onehot) / len(X)
        for i in range(len(weights) - 1, -1, -1):
            gw, gb = activations[i].T @ grad, grad.sum(axis=0)
            if i:
                grad = (grad @ weights[i].T) * (activations[i] > 0)
            weights[i] -= 0.5 * gw.astype(np.float32)
            biases[i] -= 0.5 * gb.astype(np.float32)


def failing_graph() -> Bundle:
    """A regression graph that fails at run time for some inputs: its 4-entry lookup table
    is indexed by the first feature (Gather out of bounds when that is >= 4 or < -4)."""
    return lookup_graph(0.0)


def lookup_graph(megabytes: float, features: int = 3, seed: int = 0) -> Bundle:
    """A regression graph carrying a table of ``megabytes`` of float32 (the size of a large
    tree ensemble or network): the value is the table entry indexed by the first feature
    (0..3) plus the sum of the features, so scoring stays cheap whatever the size."""
    from onnx import TensorProto, helper, numpy_helper

    entries = max(4, int(megabytes * 2**20 / 4))
    table = np.random.default_rng(seed).normal(size=entries).astype(np.float32)
    nodes = [
        helper.make_node("Slice", ["x", "start", "end", "axis"], ["first"]),
        helper.make_node("Cast", ["first"], ["index"], to=TensorProto.INT64),
        helper.make_node("Squeeze", ["index", "axis"], ["flat"]),
        helper.make_node("Gather", ["table", "flat"], ["looked_up"]),
        helper.make_node("ReduceSum", ["x", "axis"], ["total"], keepdims=0),
        helper.make_node("Add", ["looked_up", "total"], ["value"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], dtype=np.int64), "start"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "end"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis"),
        numpy_helper.from_array(table, "table"),
    ]
    graph = helper.make_graph(
        nodes,
        "large_lookup",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, features])],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, [None])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    rng = np.random.default_rng(seed + 1)
    X = np.column_stack([rng.integers(0, 4, 500), rng.normal(size=(500, features - 1))])
    y = table[X[:, 0].astype(int)] + X.sum(axis=1)
    names = [f"x{i}" for i in range(features)]
    return Bundle(model.SerializeToString(), X, [str(v) for v in y], names, [])
