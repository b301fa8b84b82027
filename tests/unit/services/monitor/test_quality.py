"""Live metrics, calibration, window sums and drift detection."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from river import datasets

from modelstream.contracts.records import Task
from modelstream.learn.linear import LinearModel
from modelstream.learn.metrics import expected_calibration_error
from modelstream.learn.procedure import train
from modelstream.learn.sgd import GDConfig
from modelstream.services.monitor.logic.learner import OnlineLearner
from modelstream.services.monitor.logic.quality import (
    ErrorDrift,
    FeatureDrift,
    LiveMetrics,
    Outcome,
    add_sums,
    outcome,
    quality_of,
    summarize,
)


def test_live_metrics_and_calibration():
    live = LiveMetrics(Task.BINARY, window=4)
    for correct in (1, 1, 0, 1, 1):
        label = "1" if correct else "0"
        live.add(outcome(Task.BINARY, ["0", "1"], {"0": 0.2, "1": 0.8}, "1", label, 50.0))
    snap = live.snapshot()
    assert snap["labels"] == 4 and snap["accuracy"] == 0.75 and live.total == 5
    assert snap["log_loss"] == pytest.approx((3 * -np.log(0.8) - np.log(0.2)) / 4)
    assert snap["calibration_error"] == pytest.approx(0.05)
    assert expected_calibration_error(np.array([0.9, 0.9]), np.array([1.0, 1.0])) == (
        pytest.approx(0.1)
    )
    regression = LiveMetrics(Task.REGRESSION)
    regression.add(outcome(Task.REGRESSION, [], {}, 3.0, 1.0, 10.0))
    assert regression.snapshot()["rmse"] == 2.0


outcomes = st.lists(
    st.builds(
        Outcome,
        st.sampled_from([0.0, 1.0]),
        st.floats(0, 20),
        st.floats(0, 1),
        st.floats(0, 100),
        st.floats(0, 1e6),
    ),
    max_size=50,
)


@given(outcomes, outcomes)
def test_window_sums_add_up_like_the_outcomes_they_sum(a, b):
    for task in (Task.BINARY, Task.REGRESSION):
        together, apart = summarize(task, a + b), add_sums(summarize(task, a), summarize(task, b))
        assert together["count"] == apart["count"]
        for field in ("correct", "log_loss", "abs_error", "squared_error", "delay_ms"):
            assert together[field] == pytest.approx(apart[field], rel=1e-9, abs=1e-6)
        assert together["bin_count"] == apart["bin_count"]


@given(outcomes.filter(bool))
def test_a_window_of_sums_reports_what_the_live_metrics_report(items):
    live = LiveMetrics(Task.BINARY, window=len(items))
    for item in items:
        live.add(item)
    snap, windowed = live.snapshot(), quality_of(summarize(Task.BINARY, items))
    for metric in ("accuracy", "log_loss", "calibration_error"):
        assert windowed[metric] == pytest.approx(snap[metric], abs=1e-9)
    assert windowed["label_delay_s"] == pytest.approx(snap["label_delay_ms"] / 1000)
    assert quality_of(summarize(Task.BINARY, [])) == {"labels": 0.0}


def test_feature_drift_flags_only_moved_features():
    check = FeatureDrift(np.zeros(3), np.ones(3), ["a", "b", "c"], window=200)
    rng = np.random.default_rng(0)
    flagged = []
    for _ in range(200):
        flagged = check.update(rng.normal(size=3) + np.array([0.0, 2.0, 0.0]))
    assert flagged == ["b"]
    check.reset()
    assert check.update_many(rng.normal(size=(500, 3))) == []  # a window in one call


def test_drift_is_detected_and_online_learning_recovers_on_sea():
    # SEA concept 0 before the change, concept 3 after it (river's synthetic stream)
    def named(stream):  # type: ignore[no-untyped-def]
        return [({str(k): v for k, v in x.items()}, y) for x, y in stream]

    before = named(datasets.synth.SEA(variant=0, seed=1).take(3000))
    after = named(datasets.synth.SEA(variant=3, seed=2).take(4000))
    names = ["0", "1", "2"]
    X0 = np.array([[x[n] for n in names] for x, _ in before])
    y0 = np.array([int(label) for _, label in before])
    model: LinearModel = train(
        X0, y0, Task.BINARY, names, ["0", "1"], GDConfig(seed=0), (1e-3,), 2
    ).model
    learner = OnlineLearner.from_model(model, len(y0), learning_rate=0.05)
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
