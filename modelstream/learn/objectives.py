"""Loss functions of the three linear tasks, vectorized over a grid of models.

Weights hold ``G`` models side by side: ``W`` is (d × G·k) and ``b`` is (G·k), model ``g``
owning columns ``g·k … g·k+k-1`` (k = 1 for binary and regression, the class count for
softmax). Training a whole L2 grid is then one matrix product per step instead of G.
The L2 penalty ``l2_g/2 · ||W_g||²`` (never the intercept) is part of each model's loss.

>>> import numpy as np
>>> X = np.array([[0.0], [1.0]]); y = np.array([0, 1])
>>> loss, gW, gb = loss_grad("BINARY", X, y, np.zeros((1, 1)), np.zeros(1), l2=0.0)
>>> round(float(loss), 4)
0.6931
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from modelstream.contracts.records import Task

EPS = 1e-15


def sigmoid(z: np.ndarray) -> np.ndarray:
    # tanh form: one ufunc pass, no overflow for any z
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def softmax(z: np.ndarray) -> np.ndarray:
    """Softmax over the last axis."""
    shifted: np.ndarray = z - z.max(axis=-1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=-1, keepdims=True)
    return shifted


def link(task: Task, z: np.ndarray) -> np.ndarray:
    """A model's answers from its outputs ``z`` (n × k): class probabilities (n × classes,
    by the sigmoid or the softmax) or, for regression, the values (n)."""
    if task == Task.BINARY:
        p1 = sigmoid(z[:, 0])
        return np.column_stack((1.0 - p1, p1))
    if task == Task.MULTICLASS:
        return softmax(z)
    return z[:, 0]


class Objective(Protocol):
    @property
    def task(self) -> Task: ...

    def outputs(self, n_classes: int) -> int: ...

    def residual(self, Xa: np.ndarray, y: np.ndarray, W: np.ndarray, groups: int) -> np.ndarray: ...

    def losses(self, Xa: np.ndarray, y: np.ndarray, W: np.ndarray, groups: int) -> np.ndarray: ...


# Inputs ``Xa`` end with a column of ones and ``W``'s last row holds the intercepts.
# ``residual`` is d(mean loss)/d(linear output): the gradient is then ``Xa.T @ residual``.


@dataclass(frozen=True)
class BinaryLogistic:
    """Log-loss of a sigmoid per model; ``y`` in {0, 1}."""

    task: Task = Task.BINARY

    def outputs(self, n_classes: int) -> int:
        return 1

    def residual(self, Xa: np.ndarray, y: np.ndarray, W: np.ndarray, groups: int) -> np.ndarray:
        r = Xa @ W
        r *= 0.5
        np.tanh(r, out=r)
        r += 1.0 - 2.0 * y[:, None]  # = 2·(sigmoid(z) - y)
        r *= 0.5 / Xa.shape[0]
        return r

    def losses(self, Xa: np.ndarray, y: np.ndarray, W: np.ndarray, groups: int) -> np.ndarray:
        p = sigmoid(Xa @ W)
        yc = y[:, None]
        return -np.mean(yc * np.log(p + EPS) + (1 - yc) * np.log(1 - p + EPS), axis=0)


@dataclass(frozen=True)
class MultinomialLogistic:
    """Cross-entropy of a softmax over k columns per model; ``y`` are class indices."""

    task: Task = Task.MULTICLASS

    def outputs(self, n_classes: int) -> int:
        return n_classes

    def residual(self, Xa: np.ndarray, y: np.ndarray, W: np.ndarray, groups: int) -> np.ndarray:
        n = Xa.shape[0]
        p = softmax((Xa @ W).reshape(n, groups, -1))
        p[np.arange(n), :, y] -= 1.0
        p /= n
        return p.reshape(n, -1)

    def losses(self, Xa: np.ndarray, y: np.ndarray, W: np.ndarray, groups: int) -> np.ndarray:
        n = Xa.shape[0]
        p = softmax((Xa @ W).reshape(n, groups, -1))
        return -np.mean(np.log(p[np.arange(n), :, y] + EPS), axis=0)


@dataclass(frozen=True)
class SquaredError:
    """Half mean squared error of a linear output per model; ``y`` are real values."""

    task: Task = Task.REGRESSION

    def outputs(self, n_classes: int) -> int:
        return 1

    def residual(self, Xa: np.ndarray, y: np.ndarray, W: np.ndarray, groups: int) -> np.ndarray:
        r = Xa @ W
        r -= y[:, None]
        r /= Xa.shape[0]
        return r

    def losses(self, Xa: np.ndarray, y: np.ndarray, W: np.ndarray, groups: int) -> np.ndarray:
        r = Xa @ W - y[:, None]
        return 0.5 * np.mean(r * r, axis=0)


OBJECTIVES: dict[Task, Objective] = {
    Task.BINARY: BinaryLogistic(),
    Task.MULTICLASS: MultinomialLogistic(),
    Task.REGRESSION: SquaredError(),
}


def objective_for(task: Task) -> Objective:
    return OBJECTIVES[task]


def loss_grad(
    task: Task, X: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray, l2: float
) -> tuple[float, np.ndarray, np.ndarray]:
    """Penalized mean loss of one model and its gradient in (W, b)."""
    objective = objective_for(task)
    Xa = np.hstack((X, np.ones((X.shape[0], 1))))
    Wa = np.vstack((W, b[None, :]))
    grad = Xa.T @ objective.residual(Xa, y, Wa, 1)
    loss = float(objective.losses(Xa, y, Wa, 1)[0]) + 0.5 * l2 * float(np.sum(W * W))
    return loss, grad[:-1] + l2 * W, grad[-1]
