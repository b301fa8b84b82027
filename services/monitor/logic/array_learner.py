"""The online learner over arrays: the same updates as :class:`OnlineLearner`'s river
pipeline (a running StandardScaler, then SGD on a logistic, softmax or squared loss, one
label at a time, in order), computed on numpy arrays with no per-label dicts.

river's pipeline takes ~45 µs a label in Python objects. Here a batch's scaler statistics
come out of cumulative sums at once (each row still scaled with the statistics that include
it, as river's ``learn_one`` then ``transform_one`` does), and only the SGD step, which
depends on the previous one, loops: a dot product and an update of one weight vector per
label. The state is :class:`OnlineLearnerState`, the same as river's learner writes, so
either learner continues from the other's; a test holds the two equal to 1e-9 on the
same streams from the same model. One difference from a zero start (the challenger of an
imported graph): river's softmax knows only the classes it has seen, this learner every
class of the model from the first label, so their first multiclass updates differ.

>>> model = LinearModel(Task.BINARY, ["x"], ["0", "1"], np.array([[2.0]]), np.array([0.0]),
...                     np.array([0.0]), np.array([1.0]))
>>> learner = ArrayLearner.from_model(model, example_count=100)
>>> round(learner.proba_one({"x": 0.0})[1], 3)
0.5
>>> learner.learn_one({"x": 1.0}, "0"); learner.learned
1
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from modelstream.contracts.builders import LinearTensors
from modelstream.contracts.records import Label, OnlineLearnerState, Task
from modelstream.learn.linear import LinearModel
from modelstream.services.monitor.logic.learner import linear_tensors

# river's defaults that the pipeline relies on (linear_model.LogisticRegression and
# LinearRegression): the intercept moves at a constant 0.01 whatever the optimizer's rate,
# loss gradients are clipped at 1e12, probabilities in the cross-entropy at 1e-15.
INTERCEPT_LR = 0.01
CLIP_GRADIENT = 1e12
PROBA_CLAMP = 1e-15


class ArrayLearner:
    """StandardScaler + logistic / softmax / linear regression by SGD, over arrays."""

    def __init__(
        self,
        task: Task,
        feature_names: Sequence[str],
        classes: Sequence[str],
        learning_rate: float = 0.01,
        l2: float = 0.0,
    ) -> None:
        self.task = task
        self.feature_names = list(feature_names)
        self.classes = list(classes)
        self.learning_rate = learning_rate
        self.l2 = l2
        d = len(self.feature_names)
        self.counts = np.zeros(d, dtype=np.int64)
        self.means = np.zeros(d)
        self.vars = np.zeros(d)
        # softmax: one column per class, the last row the bias (river's constant input);
        # otherwise one column, and the intercept apart
        rows = d + 1 if task == Task.MULTICLASS else d
        self.W = np.zeros((rows, len(self.classes) if task == Task.MULTICLASS else 1))
        self.intercept = 0.0
        self.learned = 0
        self._class_index = {c: k for k, c in enumerate(self.classes)}

    @classmethod
    def from_model(
        cls, model: LinearModel, example_count: int, learning_rate: float = 0.01, l2: float = 0.0
    ) -> ArrayLearner:
        """Start at ``model``'s weights; the scaler continues from its training statistics,
        weighted by the training size."""
        learner = cls(model.task, model.feature_names, model.classes, learning_rate, l2)
        learner.counts[:] = max(1, int(example_count))
        learner.means[:] = model.mean
        learner.vars[:] = np.asarray(model.scale, dtype=np.float64) ** 2
        d = len(learner.feature_names)
        if learner.task == Task.MULTICLASS:
            learner.W[:d] = model.W
            learner.W[d] = model.b
        else:
            learner.W[:, 0] = model.W[:, 0]
            learner.intercept = float(model.b[0])
        return learner

    # -- scaling -------------------------------------------------------------------------
    def _transform(self, X: np.ndarray, means: np.ndarray, variances: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            Z = (X - means) / np.sqrt(variances)
        return np.where(variances != 0.0, Z, 0.0)

    def _learn_scaler(self, X: np.ndarray) -> np.ndarray:
        """Every row added to the running statistics in order; each row scaled with the
        statistics just after it was added (river's learn_one, then transform_one)."""
        n = len(X)
        counts = self.counts + np.arange(1, n + 1)[:, None]  # [n, d]
        # sums taken from a reference (the current mean, or the first row when there is
        # none) so a constant feature sums exact zeros: its mean stays exact and its
        # variance exactly 0, as Welford's update keeps them (it is then scaled to 0)
        ref = np.where(self.counts > 0, self.means, X[0])
        means = ref + (self.counts * (self.means - ref) + np.cumsum(X - ref, axis=0)) / counts
        before = np.vstack((self.means[None, :], means[:-1]))
        spread = self.counts * self.vars + np.cumsum((X - before) * (X - means), axis=0)
        variances = spread / counts
        self.counts = counts[-1].copy()
        self.means, self.vars = means[-1].copy(), variances[-1].copy()
        return self._transform(X, means, variances)

    # -- learning ------------------------------------------------------------------------
    def learn_many(self, X: np.ndarray, labels: Sequence[Label]) -> None:
        """Learn the rows of ``X`` (features in ``feature_names`` order) in order."""
        if not len(labels):
            return
        Z = self._learn_scaler(np.asarray(X, dtype=np.float64).reshape(len(labels), -1))
        if self.task == Task.MULTICLASS:
            self._softmax_steps(Z, labels)
        elif self.task == Task.BINARY:
            positive = self.classes[1]
            self._glm_steps(Z, np.array([1.0 if y == positive else -1.0 for y in labels]), True)
        else:
            self._glm_steps(Z, np.asarray([float(y) for y in labels]), False)
        self.learned += len(labels)

    def learn_one(self, x: Mapping[str, float], label: Label) -> None:
        self.learn_many(np.array([[x[n] for n in self.feature_names]], dtype=np.float64), [label])

    def _glm_steps(self, Z: np.ndarray, targets: np.ndarray, logistic: bool) -> None:
        w = self.W[:, 0].copy()
        b = self.intercept
        lr, l2 = self.learning_rate, self.l2
        for z, y in zip(Z, targets.tolist(), strict=True):
            raw = float(w @ z) + b
            if logistic:  # river's Log loss, y in {-1, 1}
                margin = raw * y
                if margin > 18.0:
                    g = math.exp(-margin) * -y
                elif margin < -18.0:
                    g = -y
                else:
                    g = -y / (math.exp(margin) + 1.0)
            else:  # squared loss
                g = 2.0 * (raw - y)
            g = min(max(g, -CLIP_GRADIENT), CLIP_GRADIENT)
            b -= INTERCEPT_LR * g
            if l2:
                w -= lr * (z * g + l2 * w)
            else:
                w -= (lr * g) * z
        self.W[:, 0] = w
        self.intercept = b

    def _softmax_steps(self, Z: np.ndarray, labels: Sequence[Label]) -> None:
        W = self.W
        lr, l2 = self.learning_rate, self.l2
        extended = np.hstack((Z, np.ones((len(Z), 1))))
        for z, label in zip(extended, labels, strict=True):
            logits = z @ W
            p = np.exp(logits - logits.max())
            p /= p.sum()
            g = np.clip(p, PROBA_CLAMP, 1.0 - PROBA_CLAMP)
            k = self._class_index.get(str(label))
            if k is not None:
                g[k] -= 1.0
            if l2:
                W -= lr * (np.outer(z, g) + l2 * W)
            else:
                W -= lr * np.outer(z, g)

    # -- scoring -------------------------------------------------------------------------
    def proba_one(self, x: Mapping[str, float]) -> list[float]:
        """Class probabilities in class order (regression: [prediction])."""
        row = np.array([x[n] for n in self.feature_names], dtype=np.float64)
        z = self._transform(row, self.means, self.vars)
        if self.task == Task.MULTICLASS:
            logits = np.append(z, 1.0) @ self.W
            p = np.exp(logits - logits.max())
            return (p / p.sum()).tolist()
        raw = float(self.W[:, 0] @ z) + self.intercept
        if self.task == Task.REGRESSION:
            return [raw]
        p = 0.0 if raw < -30 else 1.0 if raw > 30 else 1.0 / (1.0 + math.exp(-raw))
        return [1.0 - p, p]

    # -- state ---------------------------------------------------------------------------
    def state(self) -> OnlineLearnerState:
        """Everything needed to continue learning after a restart (river's learner reads it
        too)."""
        if self.task == Task.MULTICLASS:
            weights = self.W.T.tolist()  # per class: the features' weights, then the bias
            intercept = 0.0
        else:
            weights = [self.W[:, 0].tolist()]
            intercept = self.intercept
        return {
            "weights": weights,
            "intercept": float(intercept),
            "learned": self.learned,
            "counts": self.counts.tolist(),
            "means": self.means.tolist(),
            "vars": self.vars.tolist(),
            "layers": [],
        }

    def restore(self, state: OnlineLearnerState) -> None:
        self.counts = np.asarray(state["counts"], dtype=np.int64)
        self.means = np.asarray(state["means"], dtype=np.float64)
        self.vars = np.asarray(state["vars"], dtype=np.float64)
        weights = np.asarray(state["weights"], dtype=np.float64)
        if self.task == Task.MULTICLASS:
            self.W = weights.T.copy()
        else:
            self.W = weights[0].reshape(-1, 1).copy()
            self.intercept = float(state["intercept"])
        self.learned = int(state["learned"])

    def export(self) -> LinearTensors:
        """Weights and standardization as artifact tensors (the predictor's format)."""
        d = len(self.feature_names)
        if self.task == Task.MULTICLASS:
            W, b = self.W[:d].copy(), self.W[d].copy()
        else:
            W, b = self.W.copy(), np.array([self.intercept])
        return linear_tensors(W, b, self.means.copy(), self.vars.copy())

    def layer_records(self) -> None:
        """A linear learner has no dense layers (see OnlineMLP)."""
        return None

    def as_model(self) -> LinearModel:
        """The learner as it is now, as a model that scores whole matrices."""
        return LinearModel.from_tensors(self.task, self.feature_names, self.classes, self.export())
