"""The array learner makes river's updates: on the same streams, from the same batch model,
its weights, scaler statistics and probabilities equal river's pipeline's to 1e-9, in
batches of any size, and either continues from the other's saved state."""

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits

from modelstream.contracts.records import Task
from modelstream.learn.linear import LinearModel
from modelstream.learn.procedure import train
from modelstream.learn.sgd import GDConfig
from modelstream.services.monitor.logic.array_learner import ArrayLearner
from modelstream.services.monitor.logic.learner import OnlineLearner


def stream(dataset: str) -> tuple[np.ndarray, list[str], LinearModel]:
    """A batch model trained on the first 150 rows, and the rest as the live stream (its
    labels strings, as they arrive from feedback)."""
    loader = {"binary": load_breast_cancer, "multiclass": load_digits}.get(dataset, load_diabetes)
    data = loader()
    X, y = data.data.astype(float), data.target
    names = [f"f{i}" for i in range(X.shape[1])]
    if dataset == "regression":
        task, classes, labels = Task.REGRESSION, [], [str(v) for v in y.tolist()]
    else:
        classes = [str(c) for c in sorted(set(y.tolist()))]
        task = Task.BINARY if len(classes) == 2 else Task.MULTICLASS
        labels = [str(v) for v in y.tolist()]
    model = train(X[:150], y[:150], task, names, classes, GDConfig(seed=0), (1e-3,), 2).model
    return X[150:], labels[150:], model


def assert_same(ours: ArrayLearner, river: OnlineLearner, X: np.ndarray) -> None:
    a, b = ours.state(), river.state()
    for key in ("weights", "means", "vars"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-9, atol=1e-9, err_msg=key)  # type: ignore[literal-required]
    assert a["counts"] == b["counts"] and a["learned"] == b["learned"]
    assert a["intercept"] == pytest.approx(b["intercept"], rel=1e-9, abs=1e-9)
    names = ours.feature_names
    for row in X[:10]:
        x = dict(zip(names, row.tolist(), strict=True))
        np.testing.assert_allclose(ours.proba_one(x), river.proba_one(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dataset", ["binary", "multiclass", "regression"])
@pytest.mark.parametrize("l2", [0.0, 0.01])
def test_the_array_learner_makes_rivers_updates(dataset, l2):
    X, labels, model = stream(dataset)
    rate = 0.001 if dataset == "regression" else 0.05
    ours = ArrayLearner.from_model(model, 150, rate, l2)
    river = OnlineLearner.from_model(model, 150, rate, l2)
    names = model.feature_names
    rng = np.random.default_rng(0)
    start = 0
    while start < len(X):  # batches of 1 to 97 labels
        end = min(len(X), start + int(rng.integers(1, 98)))
        ours.learn_many(X[start:end], labels[start:end])
        for row, label in zip(X[start:end], labels[start:end], strict=True):
            river.learn_one(
                dict(zip(names, row.tolist(), strict=True)),
                label if dataset != "regression" else float(label),
            )
        start = end
    assert ours.learned == len(X)
    assert_same(ours, river, X)
    moved = np.abs(
        np.asarray(ours.state()["weights"])
        - np.asarray(ArrayLearner.from_model(model, 150, rate, l2).state()["weights"])
    )
    assert moved.max() > 1e-3  # it learned: the equality is not two idle learners


@pytest.mark.parametrize("dataset", ["binary", "multiclass"])
def test_either_learner_continues_from_the_others_state(dataset):
    X, labels, model = stream(dataset)
    names = model.feature_names
    river = OnlineLearner.from_model(model, 150, 0.05)
    for row, label in zip(X[:100], labels[:100], strict=True):
        river.learn_one(dict(zip(names, row.tolist(), strict=True)), label)
    ours = ArrayLearner(model.task, names, model.classes, 0.05)
    ours.restore(river.state())
    ours.learn_many(X[100:200], labels[100:200])
    back = OnlineLearner(model.task, names, model.classes, 0.05)
    back.restore(ours.state())
    for row, label in zip(X[100:200], labels[100:200], strict=True):
        river.learn_one(dict(zip(names, row.tolist(), strict=True)), label)
    assert_same(ours, river, X)
    np.testing.assert_allclose(
        back.as_model().proba(X[:20]), river.as_model().proba(X[:20]), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(
        ours.as_model().proba(X[:20]), river.as_model().proba(X[:20]), rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("start", ["zero", "model"])
def test_a_constant_feature_is_scaled_to_zero_as_river_scales_it(start):
    """A feature with one value in every row (0.1: not exact in binary) keeps variance 0,
    so it is scaled to 0 and moves no weight, from a zero start or from a model whose
    statistics say it never varied."""
    rng = np.random.default_rng(4)
    X = np.column_stack((np.full(60, 0.1), rng.normal(size=60)))
    labels = ["1" if x > 0 else "0" for x in X[:, 1]]
    names, classes = ["c", "x"], ["0", "1"]
    if start == "zero":
        ours = ArrayLearner(Task.BINARY, names, classes, 0.05)
        river = OnlineLearner(Task.BINARY, names, classes, 0.05)
    else:
        model = LinearModel(
            Task.BINARY,
            names,
            classes,
            np.array([[0.0], [1.0]]),
            np.array([0.0]),
            np.array([0.1, 0.0]),
            np.array([0.0, 1.0]),  # the constant column's scale: 0
        )
        ours = ArrayLearner.from_model(model, 100, 0.05)
        river = OnlineLearner.from_model(model, 100, 0.05)
    ours.learn_many(X, labels)
    for row, label in zip(X, labels, strict=True):
        river.learn_one({"c": row[0], "x": row[1]}, label)
    assert ours.state()["vars"][0] == river.state()["vars"][0] == 0.0
    assert ours.state()["weights"][0][0] == river.state()["weights"][0][0] == 0.0
    assert_same(ours, river, X)
