"""The loss gradients of every task against finite differences."""

import numpy as np
import pytest

from modelstream.learn.objectives import loss_grad

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
