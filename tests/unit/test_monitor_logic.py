"""The monitor's decisions on river's synthetic drift streams and real data."""

import numpy as np
import pytest
from river import datasets
from sklearn.datasets import load_breast_cancer

from modelstream.learn.linear import LinearModel
from modelstream.learn.procedure import train
from modelstream.learn.sgd import GDConfig
from modelstream.services.monitor.logic import (
    ErrorDrift,
    FeatureDrift,
    LiveMetrics,
    OnlineLearner,
    expected_calibration_error,
    outcome,
    should_roll_back,
)


def batch_body(X, y, names, classes, task):  # type: ignore[no-untyped-def]
    trained = train(X, y, task, names, classes, GDConfig(seed=0), (1e-3,), 2)
    tensors = trained.model.tensors()
    return {"task": task, "feature_names": names, "classes": classes, **tensors,
            "lineage": {"example_count": len(y)}}, trained.model


@pytest.mark.parametrize("dataset", ["breast-cancer", "digits"])
def test_online_learner_starts_exactly_at_the_batch_model(dataset):
    from sklearn.datasets import load_digits

    data = load_breast_cancer() if dataset == "breast-cancer" else load_digits()
    X, y = data.data.astype(float), data.target
    names = [f"f{i}" for i in range(X.shape[1])]
    classes = [str(c) for c in sorted(set(y.tolist()))]
    task = "BINARY" if len(classes) == 2 else "MULTICLASS"
    body, model = batch_body(X, y, names, classes, task)
    learner = OnlineLearner.from_arrays(body)
    for row, expected in zip(X[:20], model.proba(X[:20]), strict=True):
        assert learner.proba_one(dict(zip(names, row, strict=True))) == pytest.approx(
            expected.tolist(), abs=1e-9)
    exported = LinearModel.from_body({**body, **learner.export()})
    assert np.allclose(exported.proba(X[:20]), model.proba(X[:20]), atol=1e-9)


def test_drift_is_detected_and_online_learning_recovers_on_sea():
    # SEA concept 0 before the change, concept 3 after it (river's synthetic stream)
    def named(stream):  # type: ignore[no-untyped-def]
        return [({str(k): v for k, v in x.items()}, y) for x, y in stream]

    before = named(datasets.synth.SEA(variant=0, seed=1).take(3000))
    after = named(datasets.synth.SEA(variant=3, seed=2).take(4000))
    names = ["0", "1", "2"]
    X0 = np.array([[x[n] for n in names] for x, _ in before])
    y0 = np.array([int(label) for _, label in before])
    body, model = batch_body(X0, y0, names, ["0", "1"], "BINARY")
    learner = OnlineLearner.from_arrays(body, learning_rate=0.05)
    detector = ErrorDrift()
    stream = named(datasets.synth.SEA(variant=0, seed=5).take(2000)) + after  # change at 2000
    detections = []
    live_batch, live_online = [], []
    for i, (x, label) in enumerate(stream):
        row = np.array([[x[n] for n in names]])
        batch_correct = int(model.proba(row)[0].argmax()) == int(label)
        online_correct = int(np.argmax(learner.proba_one(x))) == int(label)
        live_batch.append(batch_correct)
        live_online.append(online_correct)
        if detector.update(0.0 if batch_correct else 1.0):
            detections.append(i)
        learner.learn_one(x, str(int(label)))
    pre_drift_accuracy = np.mean(live_batch[:2000])
    assert detections and all(i >= 2000 for i in detections)  # no false alarm before it
    assert detections[0] < 3000  # found within 1000 events of the change
    assert np.mean(live_batch[-1000:]) < pre_drift_accuracy - 0.05  # the change hurts
    assert np.mean(live_online[-1000:]) > np.mean(live_batch[-1000:]) + 0.02
    assert np.mean(live_online[-1000:]) > pre_drift_accuracy - 0.05  # and is recovered


def test_feature_drift_flags_only_moved_features():
    mean, scale = np.zeros(3), np.ones(3)
    check = FeatureDrift(mean, scale, ["a", "b", "c"], window=200)
    rng = np.random.default_rng(0)
    flagged = []
    for _ in range(200):
        flagged = check.update(rng.normal(size=3) + np.array([0.0, 2.0, 0.0]))
    assert flagged == ["b"]


def test_live_metrics_and_calibration():
    live = LiveMetrics("BINARY", window=4)
    for correct in (1, 1, 0, 1, 1):
        label = "1" if correct else "0"
        live.add(outcome("BINARY", ["0", "1"], {"0": 0.2, "1": 0.8}, "1", label, 50.0))
    snap = live.snapshot()
    assert snap["labels"] == 4 and snap["accuracy"] == 0.75 and live.total == 5
    assert snap["log_loss"] == pytest.approx((3 * -np.log(0.8) - np.log(0.2)) / 4)
    assert snap["calibration_error"] == pytest.approx(0.05)
    assert expected_calibration_error(np.array([0.9, 0.9]), np.array([1.0, 1.0])) == (
        pytest.approx(0.1))
    regression = LiveMetrics("REGRESSION")
    regression.add(outcome("REGRESSION", [], {}, 3.0, 1.0, 10.0))
    assert regression.snapshot()["rmse"] == 2.0


def test_rollback_needs_enough_labels_and_a_real_margin():
    good, bad = LiveMetrics("BINARY"), LiveMetrics("BINARY")
    for i in range(300):
        good.add(outcome("BINARY", ["0", "1"], {"0": 0.1, "1": 0.9}, "1", "1", 1.0))
        bad.add(outcome("BINARY", ["0", "1"], {"0": 0.1, "1": 0.9}, "1",
                        "1" if i % 2 else "0", 1.0))
    metrics = {1: good, 2: bad}
    decision = should_roll_back(2, 1, metrics, margin=0.05, min_labels=200)
    assert decision is not None and decision.parent == 1 and "worse than parent v1" in (
        decision.reason)
    assert should_roll_back(2, 1, metrics, margin=0.05, min_labels=500) is None
    assert should_roll_back(1, None, metrics, margin=0.05, min_labels=10) is None
    assert should_roll_back(2, 1, {1: good, 2: good}, margin=0.05, min_labels=10) is None
