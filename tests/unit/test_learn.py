"""The numpy learners against numerical gradients, closed forms and scikit-learn."""

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.metrics import log_loss as sk_log_loss

from modelstream.learn.cv import kfold, stratified_kfold
from modelstream.learn.linear import standardization
from modelstream.learn.metrics import log_loss, macro_f1, roc_auc
from modelstream.learn.objectives import loss_grad
from modelstream.learn.procedure import cross_validate, train
from modelstream.learn.sgd import GDConfig, fit_linear

RNG = np.random.default_rng(42)


@pytest.mark.parametrize(("task", "k"), [("BINARY", 1), ("MULTICLASS", 4), ("REGRESSION", 1)])
def test_gradients_match_finite_differences(task, k):
    X = RNG.normal(size=(30, 5))
    y = RNG.integers(0, 4 if task == "MULTICLASS" else 2, size=30)
    if task == "REGRESSION":
        y = RNG.normal(size=30)
    W, b = RNG.normal(size=(5, k)) * 0.3, RNG.normal(size=k) * 0.1
    _, grad_w, grad_b = loss_grad(task, X, y, W, b, l2=0.05)
    eps = 1e-6
    for i in range(5):
        for j in range(k):
            plus, minus = W.copy(), W.copy()
            plus[i, j] += eps
            minus[i, j] -= eps
            numeric = (
                loss_grad(task, X, y, plus, b, 0.05)[0] - loss_grad(task, X, y, minus, b, 0.05)[0]
            ) / (2 * eps)
            assert grad_w[i, j] == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    for j in range(k):
        plus, minus = b.copy(), b.copy()
        plus[j] += eps
        minus[j] -= eps
        numeric = (
            loss_grad(task, X, y, W, plus, 0.05)[0] - loss_grad(task, X, y, W, minus, 0.05)[0]
        ) / (2 * eps)
        assert grad_b[j] == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_linear_regression_converges_to_closed_form_ridge():
    X = RNG.normal(size=(400, 4))
    y = X @ np.array([1.5, -2.0, 0.5, 3.0]) + 0.7 + RNG.normal(scale=0.1, size=400)
    l2 = 0.01
    fit = fit_linear(
        X,
        y,
        "REGRESSION",
        1,
        GDConfig(
            l2=l2,
            learning_rate=0.05,
            max_epochs=500,
            patience=50,
            validation_fraction=0.0,
            tolerance=1e-12,
            batch_size=400,
            lr_decay=0.0,
        ),
    )
    # minimise 1/2n ||Xw + b - y||² + l2/2 ||w||²  (intercept unpenalised)
    Xc, yc = X - X.mean(axis=0), y - y.mean()
    w = np.linalg.solve(Xc.T @ Xc / len(y) + l2 * np.eye(4), Xc.T @ yc / len(y))
    b = y.mean() - X.mean(axis=0) @ w
    assert np.allclose(fit.W[:, 0], w, atol=1e-3)
    assert fit.b[0] == pytest.approx(b, abs=1e-3)


def test_logistic_regression_matches_scikit_learn():
    data = load_breast_cancer()
    mean, scale = standardization(data.data)
    X, y = (data.data - mean) / scale, data.target
    l2 = 0.01
    fit = fit_linear(
        X,
        y,
        "BINARY",
        2,
        GDConfig(
            l2=l2,
            learning_rate=0.5,
            max_epochs=3000,
            patience=3000,
            validation_fraction=0.0,
            batch_size=len(y),
            lr_decay=0.0,
            tolerance=0.0,
        ),
    )
    # scikit-learn minimises C·Σ logloss + ½||w||², i.e. ours with C = 1 / (n · l2)
    reference = LogisticRegression(C=1 / (len(y) * l2), tol=1e-10, max_iter=10000).fit(X, y)
    assert np.allclose(fit.W[:, 0], reference.coef_[0], atol=2e-3)
    assert fit.b[0] == pytest.approx(reference.intercept_[0], abs=2e-3)


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


def test_stratified_kfold_partitions_and_keeps_proportions():
    y = np.array([0] * 50 + [1] * 30 + [2] * 7)
    folds = stratified_kfold(y, 5, seed=1)
    tests = np.concatenate([t for _, t in folds])
    assert sorted(tests) == list(range(len(y)))
    for train_idx, test_idx in folds:
        assert not set(train_idx) & set(test_idx)
        counts = np.bincount(y[test_idx], minlength=3)
        assert list(counts[:2]) == [10, 6] and counts[2] in (1, 2)
    assert [list(t) for _, t in folds] == [list(t) for _, t in stratified_kfold(y, 5, seed=1)]
    with pytest.raises(ValueError):
        kfold(3, 5, seed=0)


def test_metrics_match_scikit_learn():
    y = RNG.integers(0, 2, size=200)
    score = np.clip(y * 0.3 + RNG.random(200) * 0.7, 0, 1)
    score[:20] = 0.5  # ties
    assert roc_auc(y, score) == pytest.approx(roc_auc_score(y, score))
    y3 = RNG.integers(0, 3, size=200)
    proba = RNG.dirichlet(np.ones(3), size=200)
    assert macro_f1(y3, proba) == pytest.approx(f1_score(y3, proba.argmax(1), average="macro"))
    assert log_loss(y3, proba) == pytest.approx(sk_log_loss(y3, proba))
