"""Mini-batch gradient descent with momentum, a decaying learning rate and early stopping.

Deterministic for a given seed: the only randomness is the per-epoch shuffle and the
early-stopping split, both drawn from ``numpy.random.default_rng(seed)``.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(200, 2)); y = (X[:, 0] + X[:, 1] > 0).astype(int)
>>> fit = fit_linear(X, y, "BINARY", n_classes=2, config=GDConfig(seed=1))
>>> bool(((X @ fit.W[:, 0] + fit.b[0] > 0) == y).mean() > 0.95)
True
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from modelstream.contracts.records import Task
from modelstream.learn.objectives import objective_for
from modelstream.learn.stopping import CONVERGENCE_REDUCTIONS, EarlyStopping, validation_rows


@dataclass(frozen=True)
class GDConfig:
    l2: float = 1e-3
    learning_rate: float = 0.05
    lr_decay: float = 0.01
    momentum: float = 0.9
    batch_size: int = 128
    max_epochs: int = 100
    patience: int = 10
    validation_fraction: float = 0.1
    tolerance: float = 1e-5
    seed: int = 0
    hidden: tuple[int, ...] = ()  # hidden layer sizes: a multilayer perceptron (learn/mlp.py)
    # family "gbdt": LightGBM trees (learn/gbdt.py) with these; the fields above that only
    # gradient descent uses are then unused
    family: str = "linear"
    num_leaves: int = 31
    min_data_in_leaf: int = 20

    def with_l2(self, l2: float) -> GDConfig:
        return replace(self, l2=l2)


@dataclass(frozen=True)
class LinearFit:
    W: np.ndarray  # d × k
    b: np.ndarray  # k
    epochs_run: int
    best_validation_loss: float


def fit_linear(
    X: np.ndarray, y: np.ndarray, task: Task, n_classes: int, config: GDConfig
) -> LinearFit:
    """Fit weights on standardized ``X``; keeps the weights of the best validation epoch."""
    return fit_linear_grid(X, y, task, n_classes, config, (config.l2,))[0]


def fit_linear_grid(
    X: np.ndarray,
    y: np.ndarray,
    task: Task,
    n_classes: int,
    config: GDConfig,
    l2_values: tuple[float, ...],
) -> list[LinearFit]:
    """Fit one model per L2 value in a single pass: the models share the shuffles (same
    seed), so each equals its own separate run up to BLAS rounding; a model that stopped
    early leaves the pass."""
    objective = objective_for(task)
    n, d = X.shape
    k = objective.outputs(n_classes)
    groups = len(l2_values)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(n)
    n_val = validation_rows(n, config.validation_fraction)
    # A ones column carries the intercepts as the last weight row, so one matrix product
    # and one update serve weights and intercepts alike; its penalty is masked off.
    Xa = np.hstack((X, np.ones((n, 1))))
    val_idx, train_idx = order[:n_val], order[n_val:]
    X_train, y_train = Xa[train_idx], y[train_idx]
    X_val, y_val = Xa[val_idx], y[val_idx]
    n_train = X_train.shape[0]
    l2 = np.asarray(l2_values, dtype=np.float64)  # of the models still training
    unpenalized_intercept = np.r_[np.ones(d), 0.0][:, None]
    penalty_mask = np.repeat(l2, k)[None, :] * unpenalized_intercept

    W = np.zeros((d + 1, groups * k))  # the alive models' columns only
    velocity = np.zeros_like(W)
    grad = np.empty_like(W)
    best_W = W.copy()  # every model's, by its place in the grid
    stopping = EarlyStopping(
        groups, config.patience, config.tolerance, 0 if n_val else CONVERGENCE_REDUCTIONS
    )
    batch = max(1, min(config.batch_size, n_train))
    epoch = 0
    for epoch in range(1, config.max_epochs + 1):
        alive = len(stopping.alive)
        lr = config.learning_rate / (1.0 + config.lr_decay * (epoch - 1))
        steps = np.repeat(lr * stopping.step_scale[stopping.alive], k)[None, :]
        perm = rng.permutation(n_train)
        Xs, ys = X_train[perm], y_train[perm]  # one gather per epoch; batches are views
        for start in range(0, n_train, batch):
            Xb = Xs[start : start + batch]
            residual = objective.residual(Xb, ys[start : start + batch], W, alive)
            np.matmul(Xb.T, residual, out=grad)
            grad += penalty_mask * W
            velocity *= config.momentum
            grad *= steps
            velocity -= grad
            W += velocity
        Xe, ye = (X_val, y_val) if n_val else (X_train, y_train)
        penalty = 0.5 * l2 * (W[:d] * W[:d]).reshape(d, alive, k).sum(axis=(0, 2))
        models = stopping.alive
        for i in stopping.update(epoch, objective.losses(Xe, ye, W, alive) + penalty):
            g = models[i]
            best_W[:, g * k : (g + 1) * k] = W[:, i * k : (i + 1) * k]
        if not stopping.kept.all():  # stopped models leave the pass
            columns = (np.flatnonzero(stopping.kept)[:, None] * k + np.arange(k)).ravel()
            W, velocity = W[:, columns], velocity[:, columns]
            grad = np.empty_like(W)
            l2 = l2[stopping.kept]
            penalty_mask = np.repeat(l2, k)[None, :] * unpenalized_intercept
        if not len(stopping.alive):
            break
    stopping.finish(epoch)
    stopped_at, best_loss = stopping.stopped_at, stopping.best_loss
    return [
        LinearFit(
            W=best_W[:d, g * k : (g + 1) * k].copy(),
            b=best_W[d, g * k : (g + 1) * k].copy(),
            epochs_run=int(stopped_at[g]),
            best_validation_loss=float(best_loss[g]),
        )
        for g in range(groups)
    ]
