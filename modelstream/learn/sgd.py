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

from modelstream.learn.objectives import objective_for


@dataclass(frozen=True)
class GDConfig:
    l2: float = 1e-3
    learning_rate: float = 0.1
    lr_decay: float = 0.01
    momentum: float = 0.9
    batch_size: int = 64
    max_epochs: int = 200
    patience: int = 10
    validation_fraction: float = 0.1
    tolerance: float = 1e-5
    seed: int = 0

    def with_l2(self, l2: float) -> GDConfig:
        return replace(self, l2=l2)


@dataclass(frozen=True)
class LinearFit:
    W: np.ndarray  # d × k
    b: np.ndarray  # k
    epochs_run: int
    best_validation_loss: float


def fit_linear(
    X: np.ndarray, y: np.ndarray, task: str, n_classes: int, config: GDConfig
) -> LinearFit:
    """Fit weights on standardized ``X``; keeps the weights of the best validation epoch."""
    objective = objective_for(task)
    n, d = X.shape
    k = objective.outputs(n_classes)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(n)
    n_val = round(n * config.validation_fraction) if n >= 20 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    X_train, y_train = X[train_idx], y[train_idx]
    X_val, y_val = X[val_idx], y[val_idx]
    n_train = X_train.shape[0]

    W = np.zeros((d, k))
    b = np.zeros(k)
    vel_w = np.zeros_like(W)
    vel_b = np.zeros_like(b)
    best = (np.inf, W.copy(), b.copy(), 0)
    stale = 0
    epoch = 0
    batch = max(1, min(config.batch_size, n_train))
    for epoch in range(1, config.max_epochs + 1):
        lr = config.learning_rate / (1.0 + config.lr_decay * (epoch - 1))
        perm = rng.permutation(n_train)
        for start in range(0, n_train, batch):
            idx = perm[start:start + batch]
            _, grad_w, grad_b = objective.loss_grad(X_train[idx], y_train[idx], W, b, config.l2)
            vel_w *= config.momentum
            vel_w -= lr * grad_w
            vel_b *= config.momentum
            vel_b -= lr * grad_b
            W += vel_w
            b += vel_b
        if n_val:
            val_loss = objective.loss(X_val, y_val, W, b) + 0.5 * config.l2 * float(np.sum(W * W))
        else:
            val_loss = objective.loss_grad(X_train, y_train, W, b, config.l2)[0]
        if not np.isfinite(val_loss):
            break  # diverged: keep the best weights so far
        if val_loss < best[0] - config.tolerance:
            best = (val_loss, W.copy(), b.copy(), epoch)
            stale = 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    return LinearFit(W=best[1], b=best[2], epochs_run=epoch, best_validation_loss=best[0])
