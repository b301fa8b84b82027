"""The whole training procedure: accuracy, determinism, cross-validation."""

from sklearn.datasets import load_digits

from modelstream.learn.procedure import cross_validate, train
from modelstream.learn.sgd import GDConfig


def test_softmax_on_digits_is_accurate_and_deterministic():
    data = load_digits()
    X, y = data.data.astype(float), data.target
    names, classes = [f"p{i}" for i in range(64)], [str(c) for c in range(10)]
    first = train(X, y, "MULTICLASS", names, classes, GDConfig(seed=3), (1e-3, 1e-2), 3)
    again = train(X, y, "MULTICLASS", names, classes, GDConfig(seed=3), (1e-3, 1e-2), 3)
    assert first.model.W.tobytes() == again.model.W.tobytes()
    assert first.l2_grid_scores == again.l2_grid_scores
    assert first.metrics["train_accuracy"] > 0.97
    cv = cross_validate(X, y, "MULTICLASS", names, classes, first.config, 5, seed=0)
    assert cv.metrics["accuracy_mean"] > 0.94
