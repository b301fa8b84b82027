"""A production network keeps learning on the labelled stream from its own weights."""

from pathlib import Path

import numpy as np

from modelstream.convert import convert
from modelstream.learn.procedure import train
from modelstream.learn.sgd import GDConfig
from modelstream.registry.importing import network_candidate
from modelstream.registry.scoring import scorer_for
from modelstream.registry.trained import trained_candidate
from modelstream.services.monitor.logic.mlp_learner import OnlineMLP
from modelstream.services.monitor.logic.watch import ModelWatch, WatchConfig

NAMES = ["x0", "x1"]


def _concept(threshold: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    X = np.random.default_rng(seed).uniform(0, 10, size=(n, 2))
    return X, (X.sum(axis=1) > threshold).astype(int)


def _production():  # type: ignore[no-untyped-def]
    X, y = _concept(10.0, 1000, 0)
    config = GDConfig(seed=0, hidden=(8,), learning_rate=0.01, batch_size=64, max_epochs=60)
    trained = train(X, y, "BINARY", NAMES, ["0", "1"], config, (1e-4,), 2)
    body = trained_candidate("sea", trained, [], 1000, None, created_at_ms=1)
    return body, trained.model


def test_the_network_moves_to_a_new_concept_and_its_state_survives_a_restart():
    _, model = _production()
    X_new, y_new = _concept(13.0, 3000, 1)
    before = (model.proba(X_new).argmax(axis=1) == y_new).mean()
    learner = OnlineMLP(model, l2=1e-4, learning_rate=0.05)
    for row, label in zip(X_new[:2000], y_new[:2000], strict=True):
        learner.learn_one(dict(zip(NAMES, row.tolist(), strict=True)), str(label))
    after = (learner.as_model().proba(X_new[2000:]).argmax(axis=1) == y_new[2000:]).mean()
    assert after > before + 0.05 and learner.learned == 2000
    restored = OnlineMLP(model, l2=1e-4)
    restored.restore(learner.state())
    np.testing.assert_array_equal(restored.as_model().proba(X_new), learner.as_model().proba(X_new))
    assert restored.learned == 2000


def test_the_watch_exports_a_network_candidate_the_gate_can_score():
    body, model = _production()
    watch = ModelWatch("sea", WatchConfig(learning_rate=0.05))
    watch.install({**body, "version": 1}, model)
    assert isinstance(watch.learner, OnlineMLP) and watch.feature_drift is not None
    X, y = _concept(13.0, 50, 2)
    for row, label in zip(X, y, strict=True):
        watch.learner.learn_one(dict(zip(NAMES, row.tolist(), strict=True)), str(label))
    candidate = watch.candidate_body(now_ms=5)
    assert candidate["layers"] and candidate["training"]["algorithm"] == "online-sgd"
    assert candidate["training"]["hidden"] == [8] and candidate["parent_version"] == 1
    scorer = scorer_for(candidate)
    np.testing.assert_allclose(scorer.score(X), watch.learner.as_model().proba(X))


def test_an_imported_network_keeps_learning_without_feature_drift_against_placeholders():
    """A Keras network imported as the native family has no training statistics (mean 0,
    scale 1 stand in): it keeps learning, and its features are not called drifted against
    statistics of no data."""
    keras = Path(__file__).resolve().parents[3] / "data" / "keras" / "relu_softmax.keras"
    network = convert(keras).network
    assert network is not None
    body = network_candidate("imported", network, created_by="t")
    watch = ModelWatch("imported", WatchConfig(learning_rate=0.05))
    watch.install({**body, "version": 1}, network)
    assert isinstance(watch.learner, OnlineMLP) and watch.feature_drift is None
    trained_body, trained = _production()
    watch.install({**trained_body, "version": 2}, trained)
    assert watch.feature_drift is not None
