"""The monitor's decisions, pure Python/numpy/river, no Kafka: online learning from a
production artifact, live metrics over sliding windows, drift detection and rollback.

>>> import numpy as np
>>> body = {"task": "BINARY", "feature_names": ["x"], "classes": ["0", "1"],
...         "weights": np.array([[2.0]]), "intercepts": np.array([0.0]),
...         "feature_mean": np.array([0.0]), "feature_scale": np.array([1.0]),
...         "lineage": {"example_count": 100}}
>>> learner = OnlineLearner.from_arrays(body)
>>> round(learner.proba_one({"x": 0.0})[1], 3)
0.5
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from river import drift, linear_model, optim, preprocessing

from modelstream.artifact import from_tensor, to_tensor

BIAS = "__bias__"  # river's softmax has no intercept: a constant input carries it


class OnlineLearner:
    """river StandardScaler + logistic / softmax / linear regression, initialised from a
    production artifact so that it starts exactly where the batch model is."""

    def __init__(self, task: str, feature_names: Sequence[str], classes: Sequence[str],
                 learning_rate: float = 0.01, l2: float = 0.0) -> None:
        self.task = task
        self.feature_names = list(feature_names)
        self.classes = list(classes)
        self.learning_rate = learning_rate
        self.l2 = l2
        self.scaler = preprocessing.StandardScaler()
        sgd = optim.SGD(learning_rate)
        if task == "BINARY":
            self.model: Any = linear_model.LogisticRegression(optimizer=sgd, l2=l2)
        elif task == "MULTICLASS":
            self.model = linear_model.SoftmaxRegression(optimizer=sgd, l2=l2)
        else:
            self.model = linear_model.LinearRegression(optimizer=sgd, l2=l2)
        self.learned = 0

    @classmethod
    def from_arrays(cls, body: Mapping[str, Any], learning_rate: float = 0.01,
                    l2: float = 0.0) -> OnlineLearner:
        """From a (decrypted) artifact body whose tensors may already be numpy arrays."""
        def array(value: Any) -> np.ndarray:
            return value if isinstance(value, np.ndarray) else from_tensor(value)

        learner = cls(body["task"], body["feature_names"], body["classes"], learning_rate, l2)
        W, b = array(body["weights"]), array(body["intercepts"])
        mean, scale = array(body["feature_mean"]), array(body["feature_scale"])
        names = learner.feature_names
        # The scaler continues from the training statistics, weighted by the training size.
        n0 = max(1, int(body["lineage"]["example_count"]))
        for i, name in enumerate(names):
            learner.scaler.counts[name] = n0
            learner.scaler.means[name] = float(mean[i])
            learner.scaler.vars[name] = float(scale[i]) ** 2
        if learner.task == "MULTICLASS":
            for k, label in enumerate(learner.classes):
                weights = learner.model.weights[label]
                for i, name in enumerate(names):
                    weights[name] = float(W[i, k])
                weights[BIAS] = float(b[k])
        else:
            for i, name in enumerate(names):
                learner.model._weights[name] = float(W[i, 0])
            learner.model.intercept = float(b[0])
        return learner

    def _scaled(self, x: Mapping[str, float]) -> dict[str, float]:
        scaled = self.scaler.transform_one(dict(x))
        if self.task == "MULTICLASS":
            scaled[BIAS] = 1.0
        return scaled

    def proba_one(self, x: Mapping[str, float]) -> list[float]:
        """Class probabilities in class order (regression: [prediction])."""
        scaled = self._scaled(x)
        if self.task == "BINARY":
            p = self.model.predict_proba_one(scaled)[True]
            return [1.0 - p, p]
        if self.task == "MULTICLASS":
            proba = self.model.predict_proba_one(scaled)
            return [proba.get(c, 0.0) for c in self.classes]
        return [float(self.model.predict_one(scaled))]

    def learn_one(self, x: Mapping[str, float], label: str | float) -> None:
        self.scaler.learn_one(dict(x))
        scaled = self._scaled(x)
        if self.task == "BINARY":
            self.model.learn_one(scaled, label == self.classes[1])
        elif self.task == "MULTICLASS":
            self.model.learn_one(scaled, label)
        else:
            self.model.learn_one(scaled, float(label))
        self.learned += 1

    def export(self) -> dict[str, Any]:
        """Weights and standardization as artifact tensors (the predictor's format)."""
        names = self.feature_names
        mean = np.array([self.scaler.means.get(n, 0.0) for n in names])
        var = np.array([self.scaler.vars.get(n, 0.0) for n in names])
        scale = np.sqrt(var)
        scale[scale < 1e-12] = 1.0
        if self.task == "MULTICLASS":
            W = np.array([[self.model.weights[c].get(n, 0.0) for c in self.classes]
                          for n in names])
            b = np.array([self.model.weights[c].get(BIAS, 0.0) for c in self.classes])
        else:
            W = np.array([[self.model._weights.get(n, 0.0)] for n in names])
            b = np.array([float(self.model.intercept)])
        return {"weights": to_tensor(W), "intercepts": to_tensor(b),
                "feature_mean": to_tensor(mean), "feature_scale": to_tensor(scale)}


@dataclass
class Outcome:
    """One prediction matched with its true label."""

    correct: float  # 1/0 for classifiers; unused for regression
    log_loss: float  # -log p(true class); 0 for regression
    confidence: float  # probability of the predicted class; 0 for regression
    abs_error: float  # regression; 0 for classifiers
    delay_ms: float  # label arrival minus prediction time


def outcome(task: str, classes: Sequence[str], scores: Mapping[str, float],
            prediction: str | float, label: str | float, delay_ms: float) -> Outcome:
    if task == "REGRESSION":
        return Outcome(0.0, 0.0, 0.0, abs(float(prediction) - float(label)), delay_ms)
    p_true = max(float(scores.get(str(label), 0.0)), 1e-15)
    return Outcome(float(str(prediction) == str(label)), -math.log(p_true),
                   float(scores.get(str(prediction), 0.0)), 0.0, delay_ms)


@dataclass
class LiveMetrics:
    """The newest ``window`` outcomes of one model version."""

    task: str
    window: int = 1000
    outcomes: deque[Outcome] = field(default_factory=deque)
    total: int = 0

    def add(self, item: Outcome) -> None:
        if len(self.outcomes) == self.window:
            self.outcomes.popleft()
        self.outcomes.append(item)
        self.total += 1

    def snapshot(self) -> dict[str, float]:
        n = len(self.outcomes)
        if n == 0:
            return {"labels": 0.0}
        delay = float(np.mean([o.delay_ms for o in self.outcomes]))
        if self.task == "REGRESSION":
            errors = np.array([o.abs_error for o in self.outcomes])
            return {"labels": float(n), "mae": float(errors.mean()),
                    "rmse": float(np.sqrt(np.mean(errors ** 2))), "label_delay_ms": delay}
        correct = np.array([o.correct for o in self.outcomes])
        confidence = np.array([o.confidence for o in self.outcomes])
        return {"labels": float(n), "accuracy": float(correct.mean()),
                "log_loss": float(np.mean([o.log_loss for o in self.outcomes])),
                "calibration_error": expected_calibration_error(confidence, correct),
                "label_delay_ms": delay}

    def primary(self) -> float:
        """Accuracy (larger is better), or negative RMSE for regression."""
        snap = self.snapshot()
        return snap["accuracy"] if self.task != "REGRESSION" else -snap["rmse"]


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray,
                               bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by size."""
    if len(confidence) == 0:
        return 0.0
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            error += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(error)


class ErrorDrift:
    """ADWIN over a version's error stream (0/1 misses, or absolute errors)."""

    def __init__(self, delta: float = 0.002) -> None:
        self.detector = drift.ADWIN(delta=delta)
        self.detections = 0

    def update(self, error: float) -> bool:
        self.detector.update(error)
        if self.detector.drift_detected:
            self.detections += 1
            return True
        return False


class FeatureDrift:
    """Compares a window of live features with the training statistics in the artifact:
    flags features whose window mean moved more than ``threshold`` training standard
    deviations (well beyond the 1/sqrt(n) noise of a window mean)."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, names: Sequence[str],
                 window: int = 500, threshold: float = 0.5) -> None:
        self.mean, self.scale, self.names = mean, scale, list(names)
        self.window, self.threshold = window, threshold
        self.rows: deque[np.ndarray] = deque(maxlen=window)

    def update(self, x: np.ndarray) -> list[str]:
        self.rows.append((x - self.mean) / self.scale)
        if len(self.rows) < self.window:
            return []
        shift = np.abs(np.mean(self.rows, axis=0))
        noise = 4.0 / math.sqrt(len(self.rows))
        return [n for n, s in zip(self.names, shift, strict=True)
                if s > max(self.threshold, noise)]


@dataclass(frozen=True)
class RollbackDecision:
    version: int
    parent: int
    newest_metric: float
    parent_metric: float
    labels: int

    @property
    def reason(self) -> str:
        return (f"live metric of v{self.version} {self.newest_metric:.4f} is worse than parent "
                f"v{self.parent}'s {self.parent_metric:.4f} over {self.labels} labels")


def should_roll_back(newest: int, parent: int | None, metrics: Mapping[int, LiveMetrics],
                     *, margin: float, min_labels: int) -> RollbackDecision | None:
    """Roll back when the newest version, after ``min_labels`` labels, is worse than what
    its parent achieved while it served, by more than ``margin``."""
    if parent is None or newest not in metrics or parent not in metrics:
        return None
    ours, theirs = metrics[newest], metrics[parent]
    if len(ours.outcomes) < min_labels or len(theirs.outcomes) < min_labels:
        return None
    if ours.primary() < theirs.primary() - margin:
        return RollbackDecision(newest, parent, ours.primary(), theirs.primary(),
                                len(ours.outcomes))
    return None
