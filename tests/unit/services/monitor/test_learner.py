"""The online learner starts exactly at the batch model and carries its state across restarts."""

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits

from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import MonitorModelState, Task
from modelstream.learn.linear import LinearModel
from modelstream.learn.procedure import train
from modelstream.learn.sgd import GDConfig
from modelstream.services.monitor.logic.learner import OnlineLearner


def batch_model(dataset: str) -> tuple[np.ndarray, np.ndarray, LinearModel]:
    data = load_breast_cancer() if dataset == "breast-cancer" else load_digits()
    X, y = data.data.astype(float), data.target
    names = [f"f{i}" for i in range(X.shape[1])]
    classes = [str(c) for c in sorted(set(y.tolist()))]
    task = Task.BINARY if len(classes) == 2 else Task.MULTICLASS
    return X, y, train(X, y, task, names, classes, GDConfig(seed=0), (1e-3,), 2).model


@pytest.mark.parametrize("dataset", ["breast-cancer", "digits"])
def test_online_learner_starts_exactly_at_the_batch_model(dataset):
    X, y, model = batch_model(dataset)
    learner = OnlineLearner.from_model(model, len(y))
    names = model.feature_names
    for row, expected in zip(X[:20], model.proba(X[:20]), strict=True):
        assert learner.proba_one(dict(zip(names, row, strict=True))) == pytest.approx(
            expected.tolist(), abs=1e-9
        )
    assert np.allclose(learner.as_model().proba(X[:20]), model.proba(X[:20]), atol=1e-9)


@pytest.mark.parametrize("dataset", ["breast-cancer", "digits"])
def test_a_restored_learner_continues_exactly_where_the_saved_one_was(dataset):
    X, y, model = batch_model(dataset)
    names = model.feature_names
    rows = [dict(zip(names, row, strict=True)) for row in X]
    first = OnlineLearner.from_model(model, len(y), learning_rate=0.05)
    for x, label in zip(rows[:200], y[:200], strict=True):
        first.learn_one(x, str(label))
    codec = default_codec()
    state: MonitorModelState = {
        "version": 1,
        "learner": first.state(),
        "metrics": {},
        "feedback_ranges": {},
        "learned_since_export": 0,
        "last_export_ms": 0,
        "paired": [],
        "rolled_back": [],
        "last_train_ms": 0,
        "joined_total": 0,
    }
    saved = codec.decode(codec.encode(MonitorModelState, state), MonitorModelState)
    second = OnlineLearner.from_model(model, len(y), learning_rate=0.05)
    assert saved["learner"] is not None
    second.restore(saved["learner"])
    for x, label in zip(rows[200:400], y[200:400], strict=True):
        first.learn_one(x, str(label))
        second.learn_one(x, str(label))
    assert second.learned == first.learned == 400
    assert np.array_equal(second.as_model().proba(X[:50]), first.as_model().proba(X[:50]))
