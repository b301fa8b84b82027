"""Gradient descent against closed forms and scikit-learn."""

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression

from modelstream.learn.linear import standardization
from modelstream.learn.sgd import GDConfig, fit_linear

RNG = np.random.default_rng(42)


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


@pytest.mark.parametrize(("task", "classes"), [("BINARY", 2), ("MULTICLASS", 3), ("REGRESSION", 1)])
def test_a_grid_model_equals_its_own_run_after_others_stopped_early(task, classes):
    """Models that stop leave the batched pass; the others go on as if alone."""
    from modelstream.learn.sgd import fit_linear_grid

    X = RNG.normal(size=(300, 5))
    z = X @ RNG.normal(size=5)
    y = {
        "BINARY": (z > 0).astype(int),
        "MULTICLASS": np.digitize(z, [-0.5, 0.5]),
        "REGRESSION": z + 0.3 * RNG.normal(size=300),
    }[task]
    config = GDConfig(max_epochs=80, patience=4, seed=3)
    grid = (1e-5, 1e-2, 1.0)
    fits = fit_linear_grid(X, y, task, classes, config, grid)
    assert len({f.epochs_run for f in fits}) > 1  # they stopped at different epochs
    for l2, fit in zip(grid, fits, strict=True):
        alone = fit_linear(X, y, task, classes, config.with_l2(l2))
        assert fit.epochs_run == alone.epochs_run
        np.testing.assert_allclose(fit.W, alone.W, atol=1e-9)
        np.testing.assert_allclose(fit.b, alone.b, atol=1e-9)
