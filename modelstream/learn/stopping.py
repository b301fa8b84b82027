"""Early stopping for a grid of models trained side by side (learn/sgd.py, learn/mlp.py).

Each model keeps the loss of its best epoch and stops after ``patience`` epochs without
improving on it by ``tolerance``, or at once on a non-finite loss. Given ``reductions``,
a model that stalls first takes a step ``REDUCTION`` times smaller (:attr:`step_scale`)
that many times, and stops only when it stalls at the smallest (or at the epoch cap): a
model that converges on its own training loss then reaches the optimum rather than the
noise floor of its step.

Stopped models leave the batched pass: the trainers keep only the
:attr:`~EarlyStopping.alive` models' parameters, so a grid costs what its running models
cost, not what its slowest one does.

>>> import numpy as np
>>> stopping = EarlyStopping(groups=2, patience=1, tolerance=0.0)
>>> stopping.update(1, np.array([1.0, 1.0])).tolist()  # both improved
[0, 1]
>>> _ = stopping.update(2, np.array([0.5, 2.0]))  # model 1 did not: it stops
>>> stopping.alive.tolist(), stopping.stopped_at.tolist()
([0], [0, 2])
"""

from __future__ import annotations

import numpy as np

REDUCTION = 5.0  # how much smaller a stalled model's next step is


class EarlyStopping:
    def __init__(self, groups: int, patience: int, tolerance: float, reductions: int = 0) -> None:
        self.patience = patience
        self.tolerance = tolerance
        self.best_loss = np.full(groups, np.inf)
        self.stale = np.zeros(groups, dtype=np.int64)
        self.stopped_at = np.zeros(groups, dtype=np.int64)
        self.alive = np.arange(groups)  # the models still training, in grid order
        self.reductions_left = np.full(groups, reductions, dtype=np.int64)
        self.step_scale = np.ones(groups)  # each model's step, relative to the schedule's

    def update(self, epoch: int, losses: np.ndarray) -> np.ndarray:
        """Record the epoch's losses of the alive models (in :attr:`alive` order); returns
        the positions among them that improved (the caller keeps their parameters as the
        best). Models that stop leave :attr:`alive` after the call."""
        models = self.alive
        finite = np.isfinite(losses)
        improved = finite & (losses < self.best_loss[models] - self.tolerance)
        self.best_loss[models[improved]] = losses[improved]
        self.stale[models] = np.where(improved, 0, self.stale[models] + 1)
        stalled = finite & (self.stale[models] >= self.patience)
        reduce = models[stalled & (self.reductions_left[models] > 0)]
        self.step_scale[reduce] /= REDUCTION
        self.reductions_left[reduce] -= 1
        self.stale[reduce] = 0
        done = ~finite | (self.stale[models] >= self.patience)
        self.stopped_at[models[done]] = epoch
        self.alive = models[~done]
        self.kept = ~done  # which of the models passed in remain, for compacting arrays
        return np.flatnonzero(improved)

    def finish(self, epoch: int) -> None:
        """The last epoch ran: models still training stop there."""
        self.stopped_at[self.alive] = epoch


# A split smaller than this judges epochs by noise (12 rows of a 124-row data set): a linear
# model then keeps every row and stops when its penalized loss on all of them converges (its
# strength is chosen by CV; a network keeps its split, where stopping early regularizes).
MIN_VALIDATION_ROWS = 500
# Step reductions of a model converging on its own training loss: at a constant step,
# momentum descent stalls where its noise hides further progress (on 2,000 Fashion-MNIST
# images 12 % above the optimum's penalized loss, about 2 points of accuracy lost)
CONVERGENCE_REDUCTIONS = 3


def validation_rows(n: int, fraction: float) -> int:
    """How many of ``n`` rows to hold out for early stopping (0: none, see above)."""
    rows = round(n * fraction)
    return rows if rows >= MIN_VALIDATION_ROWS else 0
