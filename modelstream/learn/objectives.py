"""Loss functions of the three linear tasks: mean loss and its gradient, vectorized.

Each objective works on standardized features ``X`` (n × d), weights ``W`` (d × k) and
intercepts ``b`` (k). Targets are ``y``: class indices for classifiers, values for regression.
The L2 penalty ``l2/2 · ||W||²`` (never the intercept) is part of the loss.

>>> import numpy as np
>>> X = np.array([[0.0], [1.0]]); y = np.array([0, 1])
>>> obj = objective_for("BINARY")
>>> loss, gW, gb = obj.loss_grad(X, y, np.zeros((1, 1)), np.zeros(1), l2=0.0)
>>> round(float(loss), 4)
0.6931
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

EPS = 1e-15


def sigmoid(z: np.ndarray) -> np.ndarray:
    # exp of a non-positive number never overflows, whatever the sign of z
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


class Objective(Protocol):
    task: str

    def outputs(self, n_classes: int) -> int: ...

    def loss_grad(
        self, X: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray, l2: float
    ) -> tuple[float, np.ndarray, np.ndarray]: ...

    def loss(self, X: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray) -> float: ...


@dataclass(frozen=True)
class BinaryLogistic:
    """Log-loss of a sigmoid over one output column; ``y`` in {0, 1}."""

    task: str = "BINARY"

    def outputs(self, n_classes: int) -> int:
        return 1

    def loss_grad(self, X, y, W, b, l2):  # type: ignore[no-untyped-def]
        p = sigmoid(X @ W[:, 0] + b[0])
        n = X.shape[0]
        loss = -np.mean(y * np.log(p + EPS) + (1 - y) * np.log(1 - p + EPS))
        residual = (p - y) / n
        grad_w = (X.T @ residual)[:, None] + l2 * W
        return float(loss + 0.5 * l2 * np.sum(W * W)), grad_w, np.array([residual.sum()])

    def loss(self, X, y, W, b):  # type: ignore[no-untyped-def]
        p = sigmoid(X @ W[:, 0] + b[0])
        return float(-np.mean(y * np.log(p + EPS) + (1 - y) * np.log(1 - p + EPS)))


@dataclass(frozen=True)
class MultinomialLogistic:
    """Cross-entropy of a softmax over one column per class; ``y`` are class indices."""

    task: str = "MULTICLASS"

    def outputs(self, n_classes: int) -> int:
        return n_classes

    def loss_grad(self, X, y, W, b, l2):  # type: ignore[no-untyped-def]
        n = X.shape[0]
        p = softmax(X @ W + b)
        rows = np.arange(n)
        loss = -np.mean(np.log(p[rows, y] + EPS))
        p[rows, y] -= 1.0
        p /= n
        grad_w = X.T @ p + l2 * W
        return float(loss + 0.5 * l2 * np.sum(W * W)), grad_w, p.sum(axis=0)

    def loss(self, X, y, W, b):  # type: ignore[no-untyped-def]
        p = softmax(X @ W + b)
        return float(-np.mean(np.log(p[np.arange(X.shape[0]), y] + EPS)))


@dataclass(frozen=True)
class SquaredError:
    """Half mean squared error of a linear output; ``y`` are real values."""

    task: str = "REGRESSION"

    def outputs(self, n_classes: int) -> int:
        return 1

    def loss_grad(self, X, y, W, b, l2):  # type: ignore[no-untyped-def]
        n = X.shape[0]
        residual = X @ W[:, 0] + b[0] - y
        loss = 0.5 * np.mean(residual * residual)
        grad_w = (X.T @ residual / n)[:, None] + l2 * W
        return float(loss + 0.5 * l2 * np.sum(W * W)), grad_w, np.array([residual.mean()])

    def loss(self, X, y, W, b):  # type: ignore[no-untyped-def]
        residual = X @ W[:, 0] + b[0] - y
        return float(0.5 * np.mean(residual * residual))


OBJECTIVES: dict[str, Objective] = {
    "BINARY": BinaryLogistic(),
    "MULTICLASS": MultinomialLogistic(),
    "REGRESSION": SquaredError(),
}


def objective_for(task: str) -> Objective:
    return OBJECTIVES[task]
