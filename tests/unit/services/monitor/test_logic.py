"""The monitor's decisions on river's synthetic drift streams and real data."""

import itertools

import numpy as np
import pytest
from river import datasets
from sklearn.datasets import load_breast_cancer

from modelstream.contracts.codec import default_codec
from modelstream.contracts.definitions import in_online_holdout
from modelstream.contracts.records import MonitorJoin, MonitorModelState
from modelstream.learn.linear import LinearModel
from modelstream.learn.procedure import train
from modelstream.learn.sgd import GDConfig
from modelstream.services.monitor.logic import (
    ErrorDrift,
    FeatureDrift,
    LiveMetrics,
    ModelWatch,
    OnlineLearner,
    WatchConfig,
    expected_calibration_error,
    expired,
    is_complete,
    merge,
    missing_parts,
    outcome,
    should_roll_back,
)


def batch_body(X, y, names, classes, task):  # type: ignore[no-untyped-def]
    trained = train(X, y, task, names, classes, GDConfig(seed=0), (1e-3,), 2)
    tensors = trained.model.tensors()
    return {
        "task": task,
        "feature_names": names,
        "classes": classes,
        **tensors,
        "lineage": {"example_count": len(y)},
    }, trained.model


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
            expected.tolist(), abs=1e-9
        )
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
        pytest.approx(0.1)
    )
    regression = LiveMetrics("REGRESSION")
    regression.add(outcome("REGRESSION", [], {}, 3.0, 1.0, 10.0))
    assert regression.snapshot()["rmse"] == 2.0


def test_rollback_needs_enough_labels_and_a_real_margin():
    good, bad = LiveMetrics("BINARY"), LiveMetrics("BINARY")
    for i in range(300):
        good.add(outcome("BINARY", ["0", "1"], {"0": 0.1, "1": 0.9}, "1", "1", 1.0))
        bad.add(
            outcome("BINARY", ["0", "1"], {"0": 0.1, "1": 0.9}, "1", "1" if i % 2 else "0", 1.0)
        )
    metrics = {1: good, 2: bad}
    decision = should_roll_back(2, 1, metrics, margin=0.05, min_labels=200)
    assert (
        decision is not None
        and decision.parent == 1
        and "worse than parent v1" in (decision.reason)
    )
    assert should_roll_back(2, 1, metrics, margin=0.05, min_labels=500) is None
    assert should_roll_back(1, None, metrics, margin=0.05, min_labels=10) is None
    assert should_roll_back(2, 1, {1: good, 2: good}, margin=0.05, min_labels=10) is None


# -- the join and one model's watch --------------------------------------------------------
PARTS = {
    "requests": {"request_id": "r", "model": "m", "features": {"x": 1.0}, "sent_at_ms": 10},
    "predictions": {
        "request_id": "r",
        "model": "m",
        "version": 1,
        "route": "production",
        "prediction": "1",
        "scores": {"0": 0.2, "1": 0.8},
        "requested_at_ms": 10,
        "predicted_at_ms": 12,
    },
    "feedback": {"request_id": "r", "model": "m", "label": "1", "timestamp_ms": 50},
}


@pytest.mark.parametrize("order", list(itertools.permutations(PARTS)))
def test_the_join_completes_in_any_order_and_then_never_changes(order):
    entry = None
    for offset, kind in enumerate(order):
        assert entry is None or not is_complete(entry)
        entry = merge(entry, kind, PARTS[kind], 3, 100 + offset, 1_000)
    assert is_complete(entry) and missing_parts(entry) == []
    assert entry["completed_by"] == order[-1] and entry["completed_offset"] == 102
    assert entry["feedback_offset"] == 100 + order.index("feedback")
    assert entry["features"] == {"x": 1.0} and entry["label"] == "1" and entry["version"] == 1
    again = merge(dict(entry), "feedback", {**PARTS["feedback"], "label": "0"}, 3, 999, 2_000)
    assert again == entry  # a re-delivered or corrected part does not rewrite a complete join
    round_trip = default_codec().decode(default_codec().encode(MonitorJoin, entry), MonitorJoin)
    assert round_trip == entry
    assert expired(entry, 1_000 + 601_000, 600_000) and not expired(entry, 2_000, 600_000)


def _body(task: str = "BINARY") -> dict:  # type: ignore[type-arg]
    return {
        "name": "m",
        "version": 1,
        "parent_version": None,
        "task": task,
        "feature_names": ["x0", "x1"],
        "classes": ["0", "1"],
        "weights": np.array([[1.0], [1.0]]),
        "intercepts": np.array([0.0]),
        "feature_mean": np.zeros(2),
        "feature_scale": np.ones(2),
        "lineage": {"example_count": 100},
    }


def _joins(X, labels, predictions, version=1, start=0):  # type: ignore[no-untyped-def]
    out = []
    for i, (row, label, predicted) in enumerate(zip(X, labels, predictions, strict=True)):
        p = 0.9 if predicted == "1" else 0.1
        out.append(
            {
                "request_id": f"r{start + i}",
                "model": "m",
                "partition": 0,
                "features": np.asarray(row, "<f8").tobytes(),
                "version": version,
                "route": "production",
                "prediction": predicted,
                "scores": {"0": 1 - p, "1": p},
                "predicted_at_ms": 0,
                "label": label,
                "labelled_at_ms": 40,
                "feedback_offset": start + i,
                "completed_by": "feedback",
                "completed_offset": start + i,
            }
        )
    return out


def test_watch_learns_each_join_once_and_resumes_from_its_state():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(600, 2))
    labels = ["1" if x0 - x1 > 0 else "0" for x0, x1 in X]  # not what v1 learned (x0 + x1)
    predictions = ["1" if x0 + x1 > 0 else "0" for x0, x1 in X]
    joins = _joins(X, labels, predictions)
    config = WatchConfig(export_every_labels=10**9, export_min_gain=1.0)
    watch = ModelWatch("m", config)
    watch.install(_body())
    first = watch.observe(joins[:300], now_ms=1)
    assert first.joined == 300 and first.duplicates == 0
    assert first.learned == sum(not in_online_holdout(j["request_id"]) for j in joins[:300])
    replay = watch.observe(joins[250:300], now_ms=2)  # re-delivered after a crash
    assert replay.joined == 0 and replay.duplicates == 50 and replay.learned == 0

    # A fresh watch restored from the state carries on exactly where this one is.
    codec = default_codec()  # the state travels as Avro on the changelog
    saved = codec.decode(codec.encode(MonitorModelState, watch.state()), MonitorModelState)
    resumed = ModelWatch("m", config)
    resumed.install(_body())
    resumed.restore(saved, "BINARY")
    assert resumed.learner.learned == watch.learner.learned
    assert resumed.metrics[1].snapshot() == watch.metrics[1].snapshot()
    rest_a, rest_b = watch.observe(joins[300:], 3), resumed.observe(joins[300:], 3)
    assert rest_a.learned == rest_b.learned
    probe = {"x0": 0.3, "x1": -0.2}
    assert resumed.learner.proba_one(probe) == pytest.approx(watch.learner.proba_one(probe))
    # the learner moved towards the new concept: it now beats v1 on recent labels
    assert watch.gain() > 0.1


def test_watch_exports_an_online_candidate_with_lineage_and_parent():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(1200, 2))
    labels = ["1" if x0 - x1 > 0 else "0" for x0, x1 in X]
    predictions = ["1" if x0 + x1 > 0 else "0" for x0, x1 in X]
    watch = ModelWatch(
        "m",
        WatchConfig(
            export_every_labels=400, export_min_labels=100, export_min_gain=0.05, learning_rate=0.05
        ),
    )
    watch.install(_body())
    candidates = [
        watch.observe(chunk, now_ms=i).candidate
        for i, chunk in enumerate(np.array_split(np.array(_joins(X, labels, predictions)), 12))
    ]
    exported = [c for c in candidates if c is not None]
    assert exported, "a learner that beats production by far must export"
    body = exported[0]
    assert body["lineage"]["origin"] == "ONLINE" and body["parent_version"] == 1
    assert body["lineage"]["ranges"][0]["topic"] == "feedback"
    assert body["training"]["algorithm"] == "river-online"
    model = LinearModel.from_body(body)
    agree = (model.proba(X[-300:]).argmax(axis=1) == [int(v) for v in labels[-300:]]).mean()
    assert agree > 0.85


def test_watch_asks_for_one_rollback_of_a_worse_version():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(600, 2))
    labels = ["1" if x0 + x1 > 0 else "0" for x0, x1 in X]
    right = labels
    wrong = ["0" if v == "1" else "1" for v in labels]
    watch = ModelWatch("m", WatchConfig(rollback_min_labels=200, rollback_margin=0.05))
    watch.install(_body())
    assert watch.observe(_joins(X[:300], labels[:300], right[:300]), 1).rollback is None
    watch.install({**_body(), "version": 2, "parent_version": 1})
    decisions = [
        watch.observe(
            _joins(
                X[i : i + 100], labels[i : i + 100], wrong[i : i + 100], version=2, start=300 + i
            ),
            2,
        ).rollback
        for i in range(300, 600, 100)
    ]
    asked = [d for d in decisions if d is not None]
    assert len(asked) == 1 and asked[0].version == 2 and asked[0].parent == 1
    assert asked[0].labels >= 200
