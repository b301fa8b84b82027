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

from modelstream.contracts.builders import (
    LinearTensors,
    candidate_body,
    lineage,
    training_config,
)
from modelstream.contracts.definitions import feature_vector, in_online_holdout
from modelstream.contracts.records import ModelBody, MonitorJoin, OffsetRange, Origin, Task
from modelstream.errors import InvalidEventError
from modelstream.learn.linear import LinearModel
from modelstream.registry.artifact import from_tensor, to_tensor

BIAS = "__bias__"  # river's softmax has no intercept: a constant input carries it


class OnlineLearner:
    """river StandardScaler + logistic / softmax / linear regression, initialised from a
    production artifact so that it starts exactly where the batch model is."""

    def __init__(
        self,
        task: str,
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
        self.scaler = preprocessing.StandardScaler()
        sgd = optim.SGD(learning_rate)
        if task == Task.BINARY:
            self.model: Any = linear_model.LogisticRegression(optimizer=sgd, l2=l2)
        elif task == Task.MULTICLASS:
            self.model = linear_model.SoftmaxRegression(optimizer=sgd, l2=l2)
        else:
            self.model = linear_model.LinearRegression(optimizer=sgd, l2=l2)
        self.learned = 0

    @classmethod
    def from_arrays(
        cls, body: Mapping[str, Any], learning_rate: float = 0.01, l2: float = 0.0
    ) -> OnlineLearner:
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
        if learner.task == Task.MULTICLASS:
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
        if self.task == Task.MULTICLASS:
            scaled[BIAS] = 1.0
        return scaled

    def proba_one(self, x: Mapping[str, float]) -> list[float]:
        """Class probabilities in class order (regression: [prediction])."""
        scaled = self._scaled(x)
        if self.task == Task.BINARY:
            p = self.model.predict_proba_one(scaled)[True]
            return [1.0 - p, p]
        if self.task == Task.MULTICLASS:
            proba = self.model.predict_proba_one(scaled)
            return [proba.get(c, 0.0) for c in self.classes]
        return [float(self.model.predict_one(scaled))]

    def learn_one(self, x: Mapping[str, float], label: str | float) -> None:
        self.scaler.learn_one(dict(x))
        scaled = self._scaled(x)
        if self.task == Task.BINARY:
            self.model.learn_one(scaled, label == self.classes[1])
        elif self.task == Task.MULTICLASS:
            self.model.learn_one(scaled, label)
        else:
            self.model.learn_one(scaled, float(label))
        self.learned += 1

    def state(self) -> dict[str, Any]:
        """Everything needed to continue learning after a restart (JSON-friendly)."""
        names = self.feature_names
        if self.task == Task.MULTICLASS:
            weights = [
                [self.model.weights[c].get(n, 0.0) for n in [*names, BIAS]] for c in self.classes
            ]
            intercept = 0.0
        else:
            weights = [[self.model._weights.get(n, 0.0) for n in names]]
            intercept = float(self.model.intercept)
        return {
            "weights": weights,
            "intercept": intercept,
            "learned": self.learned,
            "counts": [self.scaler.counts.get(n, 0) for n in names],
            "means": [self.scaler.means.get(n, 0.0) for n in names],
            "vars": [self.scaler.vars.get(n, 0.0) for n in names],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        names = self.feature_names
        for i, name in enumerate(names):
            self.scaler.counts[name] = int(state["counts"][i])
            self.scaler.means[name] = float(state["means"][i])
            self.scaler.vars[name] = float(state["vars"][i])
        if self.task == Task.MULTICLASS:
            for label, row in zip(self.classes, state["weights"], strict=True):
                weights = self.model.weights[label]
                for name, w in zip([*names, BIAS], row, strict=True):
                    weights[name] = float(w)
        else:
            for name, w in zip(names, state["weights"][0], strict=True):
                self.model._weights[name] = float(w)
            self.model.intercept = float(state["intercept"])
        self.learned = int(state["learned"])

    def export(self) -> LinearTensors:
        """Weights and standardization as artifact tensors (the predictor's format)."""
        names = self.feature_names
        mean = np.array([self.scaler.means.get(n, 0.0) for n in names])
        var = np.array([self.scaler.vars.get(n, 0.0) for n in names])
        scale = np.sqrt(var)
        scale[scale < 1e-12] = 1.0
        if self.task == Task.MULTICLASS:
            W = np.array([[self.model.weights[c].get(n, 0.0) for c in self.classes] for n in names])
            b = np.array([self.model.weights[c].get(BIAS, 0.0) for c in self.classes])
        else:
            W = np.array([[self.model._weights.get(n, 0.0)] for n in names])
            b = np.array([float(self.model.intercept)])
        return {
            "weights": to_tensor(W),
            "intercepts": to_tensor(b),
            "feature_mean": to_tensor(mean),
            "feature_scale": to_tensor(scale),
        }


@dataclass
class Outcome:
    """One prediction matched with its true label."""

    correct: float  # 1/0 for classifiers; unused for regression
    log_loss: float  # -log p(true class); 0 for regression
    confidence: float  # probability of the predicted class; 0 for regression
    abs_error: float  # regression; 0 for classifiers
    delay_ms: float  # label arrival minus prediction time


def outcome(
    task: str,
    classes: Sequence[str],
    scores: Mapping[str, float],
    prediction: str | float,
    label: str | float,
    delay_ms: float,
) -> Outcome:
    if task == Task.REGRESSION:
        return Outcome(0.0, 0.0, 0.0, abs(float(prediction) - float(label)), delay_ms)
    p_true = max(float(scores.get(str(label), 0.0)), 1e-15)
    return Outcome(
        float(str(prediction) == str(label)),
        -math.log(p_true),
        float(scores.get(str(prediction), 0.0)),
        0.0,
        delay_ms,
    )


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
        if self.task == Task.REGRESSION:
            errors = np.array([o.abs_error for o in self.outcomes])
            return {
                "labels": float(n),
                "mae": float(errors.mean()),
                "rmse": float(np.sqrt(np.mean(errors**2))),
                "label_delay_ms": delay,
            }
        correct = np.array([o.correct for o in self.outcomes])
        confidence = np.array([o.confidence for o in self.outcomes])
        return {
            "labels": float(n),
            "accuracy": float(correct.mean()),
            "log_loss": float(np.mean([o.log_loss for o in self.outcomes])),
            "calibration_error": expected_calibration_error(confidence, correct),
            "label_delay_ms": delay,
        }

    def state(self) -> dict[str, Any]:
        columns = (
            list(
                zip(
                    *(
                        (o.correct, o.log_loss, o.confidence, o.abs_error, o.delay_ms)
                        for o in self.outcomes
                    ),
                    strict=True,
                )
            )
            if self.outcomes
            else []
        )
        return {"total": self.total, "columns": [list(c) for c in columns]}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.total = int(state["total"])
        self.outcomes.clear()
        if state["columns"]:
            for row in zip(*state["columns"], strict=True):
                self.outcomes.append(Outcome(*row))

    def primary(self) -> float:
        """Accuracy (larger is better), or negative RMSE for regression."""
        snap = self.snapshot()
        return snap["accuracy"] if self.task != Task.REGRESSION else -snap["rmse"]


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = 10
) -> float:
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
    deviations (well beyond the 1/sqrt(n) noise of a window mean). A ring buffer with a
    running sum keeps each update O(features), whatever the window."""

    def __init__(
        self,
        mean: np.ndarray,
        scale: np.ndarray,
        names: Sequence[str],
        window: int = 500,
        threshold: float = 0.5,
    ) -> None:
        self.mean, self.scale, self.names = mean, scale, list(names)
        self.window, self.threshold = window, threshold
        self.reset()

    def reset(self) -> None:
        self.ring = np.zeros((self.window, len(self.names)))
        self.total = np.zeros(len(self.names))
        self.seen = 0

    def update(self, x: np.ndarray) -> list[str]:
        return self.update_many(np.asarray(x, dtype=np.float64)[None, :])

    def update_many(self, X: np.ndarray) -> list[str]:
        """Add rows; the features whose window mean has moved, checked after the last row."""
        Z = (X - self.mean) / self.scale
        if len(Z) >= self.window:
            Z = Z[-self.window :]
            self.ring[:] = Z
            self.total = Z.sum(axis=0)
            self.seen += len(X)
        else:
            slots = (self.seen + np.arange(len(Z))) % self.window
            self.total += Z.sum(axis=0) - self.ring[slots].sum(axis=0)
            self.ring[slots] = Z
            self.seen += len(Z)
        if self.seen < self.window:
            return []
        shift = np.abs(self.total / self.window)
        noise = 4.0 / math.sqrt(self.window)
        return [n for n, v in zip(self.names, shift, strict=True) if v > max(self.threshold, noise)]


@dataclass(frozen=True)
class RollbackDecision:
    version: int
    parent: int
    newest_metric: float
    parent_metric: float
    labels: int

    @property
    def reason(self) -> str:
        return (
            f"live metric of v{self.version} {self.newest_metric:.4f} is worse than parent "
            f"v{self.parent}'s {self.parent_metric:.4f} over {self.labels} labels"
        )


def should_roll_back(
    newest: int,
    parent: int | None,
    metrics: Mapping[int, LiveMetrics],
    *,
    margin: float,
    min_labels: int,
) -> RollbackDecision | None:
    """Roll back when the newest version, after ``min_labels`` labels, is worse than what
    its parent achieved while it served, by more than ``margin``."""
    if parent is None or newest not in metrics or parent not in metrics:
        return None
    ours, theirs = metrics[newest], metrics[parent]
    if len(ours.outcomes) < min_labels or len(theirs.outcomes) < min_labels:
        return None
    if ours.primary() < theirs.primary() - margin:
        return RollbackDecision(
            newest, parent, ours.primary(), theirs.primary(), len(ours.outcomes)
        )
    return None


# -- the join of requests, predictions and feedback ------------------------------------------
REQUESTS, PREDICTIONS, FEEDBACK = "requests", "predictions", "feedback"
INPUTS = (REQUESTS, PREDICTIONS, FEEDBACK)


def new_entry(request_id: str, model: str, partition: int, now_ms: int) -> MonitorJoin:
    return {
        "request_id": request_id,
        "model": model,
        "partition": partition,
        "first_seen_ms": now_ms,
        "features": None,
        "requested_at_ms": None,
        "version": None,
        "route": None,
        "prediction": None,
        "scores": {},
        "predicted_at_ms": None,
        "label": None,
        "labelled_at_ms": None,
        "feedback_offset": None,
        "completed_by": None,
        "completed_offset": None,
    }


def is_complete(entry: MonitorJoin) -> bool:
    return (
        entry["features"] is not None
        and entry["version"] is not None
        and entry["label"] is not None
    )


def missing_parts(entry: MonitorJoin) -> list[str]:
    return [
        kind
        for kind, field_name in (
            (REQUESTS, "features"),
            (PREDICTIONS, "version"),
            (FEEDBACK, "label"),
        )
        if entry[field_name] is None
    ]


def merge(
    entry: MonitorJoin | None,
    kind: str,
    value: Mapping[str, Any],
    partition: int,
    offset: int,
    now_ms: int,
) -> MonitorJoin:
    """Fold one decoded input into the join entry of its request id (new when ``None``).

    Inputs may arrive in any order. A complete entry never changes again, so a re-delivered
    input after a restart re-emits exactly what was first completed, with the position of
    the input that completed it (learners de-duplicate on that position).

    >>> e = merge(None, FEEDBACK, {"request_id": "r", "model": "m", "label": "1",
    ...                            "timestamp_ms": 5}, 0, 7, 1)
    >>> e = merge(e, REQUESTS, {"request_id": "r", "model": "m", "features": [1.0],
    ...                         "sent_at_ms": 2}, 0, 3, 1)
    >>> is_complete(e), missing_parts(e)
    (False, ['predictions'])
    >>> e = merge(e, PREDICTIONS, {"request_id": "r", "model": "m", "version": 1,
    ...     "route": "production", "prediction": "1", "scores": {"1": 0.9, "0": 0.1},
    ...     "requested_at_ms": 2, "predicted_at_ms": 3}, 0, 4, 1)
    >>> e["completed_by"], e["completed_offset"]
    ('predictions', 4)
    """
    if entry is None:
        entry = new_entry(value["request_id"], value["model"], partition, now_ms)
    elif is_complete(entry):
        return entry
    if kind == REQUESTS:
        entry["features"] = value["features"]
        if entry["requested_at_ms"] is None:
            entry["requested_at_ms"] = value["sent_at_ms"]
    elif kind == PREDICTIONS:
        entry["model"] = value["model"]
        entry["version"] = value["version"]
        entry["route"] = value["route"]
        entry["prediction"] = value["prediction"]
        entry["scores"] = dict(value["scores"])
        entry["predicted_at_ms"] = value["predicted_at_ms"]
        entry["requested_at_ms"] = value["requested_at_ms"]
    else:
        entry["label"] = value["label"]
        entry["labelled_at_ms"] = value["timestamp_ms"] or now_ms
        entry["feedback_offset"] = offset
    if is_complete(entry):
        entry["completed_by"], entry["completed_offset"] = kind, offset
    return entry


def expired(entry: MonitorJoin, now_ms: int, ttl_ms: int) -> bool:
    return now_ms - entry["first_seen_ms"] > ttl_ms


# -- one model: live metrics, drift, online learning, rollback ------------------------------
@dataclass(frozen=True)
class WatchConfig:
    window: int = 1000
    drift_delta: float = 0.002
    feature_drift_window: int = 500
    feature_drift_threshold: float = 0.5
    learning_rate: float = 0.01
    l2: float = 0.0
    export_every_labels: int = 2000
    export_every_ms: int = 60_000
    export_min_labels: int = 200
    export_min_gain: float = 0.01
    rollback_margin: float = 0.05
    rollback_min_labels: int = 200
    train_cooldown_ms: int = 60_000


@dataclass
class DriftEvent:
    kind: str  # "error" (ADWIN on a version's error stream) or "features"
    version: int
    detail: str


@dataclass
class Decisions:
    """What one batch of labelled outcomes asks the application to do."""

    fresh: list[MonitorJoin] = field(default_factory=list)  # joins not seen before
    joined: int = 0
    duplicates: int = 0
    learned: int = 0
    unusable: list[tuple[MonitorJoin, str, str]] = field(default_factory=list)
    drift: list[DriftEvent] = field(default_factory=list)
    train_reason: str | None = None
    rollback: RollbackDecision | None = None
    candidate: ModelBody | None = None


def _float(value: Any) -> float:
    return float(value) if value is not None else 0.0


class ModelWatch:
    """Everything the monitor knows about one model. Fed batches of complete joins
    (:func:`merge`) in the order they were completed; pure, so the app and the tests drive
    it the same way.

    ``state()``/``restore()`` carry the online learner, the metric windows and the
    de-duplication positions across restarts; drift detectors start afresh."""

    def __init__(self, name: str, config: WatchConfig) -> None:
        self.name = name
        self.config = config
        self.body: dict[str, Any] | None = None  # production body, tensors as numpy arrays
        self.learner: OnlineLearner | None = None
        self.metrics: dict[int, LiveMetrics] = {}
        self.error_drift: dict[int, ErrorDrift] = {}
        self.feature_drift: FeatureDrift | None = None
        self.positions: dict[str, int] = {}  # "input:partition" -> newest completed offset
        self.feedback_ranges: dict[int, list[int]] = {}  # partition -> [first, last + 1]
        self.learned_since_export = 0
        self.last_export_ms = 0
        self.paired: deque[tuple[float, float]] = deque(maxlen=config.window)
        self.rolled_back: set[int] = set()
        self.last_train_ms = 0
        self.joined_total = 0

    @property
    def version(self) -> int | None:
        return self.body["version"] if self.body is not None else None

    # -- production changes ------------------------------------------------------------
    def install(self, body: Mapping[str, Any]) -> None:
        """A new production version: the learner restarts from its weights."""
        self.body = dict(body)
        self.learner = OnlineLearner.from_arrays(body, self.config.learning_rate, self.config.l2)
        self.feature_drift = FeatureDrift(
            np.asarray(body["feature_mean"]),
            np.asarray(body["feature_scale"]),
            body["feature_names"],
            self.config.feature_drift_window,
            self.config.feature_drift_threshold,
        )
        self.feedback_ranges.clear()
        self.learned_since_export = 0
        self.paired.clear()
        for version in sorted(self.metrics)[:-3]:
            if version not in (body["version"], body["parent_version"]):
                del self.metrics[version]
                self.error_drift.pop(version, None)

    # -- one batch -----------------------------------------------------------------------
    def observe(self, joins: Sequence[MonitorJoin], now_ms: int) -> Decisions:
        out = Decisions()
        fresh: list[MonitorJoin] = []
        for join in joins:
            where = f"{join['completed_by']}:{join['partition']}"
            if join["completed_offset"] <= self.positions.get(where, -1):
                out.duplicates += 1
                continue
            self.positions[where] = join["completed_offset"]
            fresh.append(join)
        out.fresh, out.joined = fresh, len(fresh)
        self.joined_total += len(fresh)
        if self.body is None or not fresh:
            return out
        task, classes = self.body["task"], self.body["classes"]
        names = self.body["feature_names"]
        rows: list[np.ndarray] = []
        usable: list[MonitorJoin] = []
        for join in fresh:
            version = join["version"]
            metrics = self.metrics.setdefault(version, LiveMetrics(task, self.config.window))
            delay = _float(join["labelled_at_ms"]) - _float(join["predicted_at_ms"])
            try:
                result = outcome(
                    task,
                    classes,
                    join["scores"],
                    join["prediction"],
                    join["label"],
                    max(0.0, delay),
                )
                row = feature_vector(join["features"], names)
            except (ValueError, InvalidEventError) as exc:
                reason = getattr(exc, "reason", "invalid-label")
                out.unusable.append((join, reason, str(exc)))
                continue
            metrics.add(result)
            detector = self.error_drift.setdefault(version, ErrorDrift(self.config.drift_delta))
            error = result.abs_error if task == Task.REGRESSION else 1.0 - result.correct
            if detector.update(error):
                out.drift.append(
                    DriftEvent(
                        "error",
                        version,
                        (
                            f"ADWIN: error rate of v{version} changed; window mean now "
                            f"{detector.detector.estimation:.4f}"
                        ),
                    )
                )
            rows.append(row)
            usable.append(join)
        if usable:
            self._drift_in_features(np.vstack(rows), out)
            self._learn(np.vstack(rows), usable, out)
        if out.drift and now_ms - self.last_train_ms >= self.config.train_cooldown_ms:
            self.last_train_ms = now_ms
            out.train_reason = "; ".join(sorted({d.detail for d in out.drift}))
        out.rollback = self._rollback()
        out.candidate = self._export(now_ms)
        return out

    def _drift_in_features(self, X: np.ndarray, out: Decisions) -> None:
        assert self.feature_drift is not None and self.body is not None
        shifted = self.feature_drift.update_many(X)
        if shifted:
            self.feature_drift.reset()  # one event per window, not one per batch
            out.drift.append(
                DriftEvent(
                    "features",
                    self.body["version"],
                    (
                        f"features moved > {self.feature_drift.threshold} training standard "
                        f"deviations: {', '.join(shifted[:5])}"
                    ),
                )
            )

    def _learn(self, X: np.ndarray, joins: Sequence[MonitorJoin], out: Decisions) -> None:
        assert self.learner is not None and self.body is not None
        task, names = self.body["task"], self.learner.feature_names
        # Progressive validation: the learner as it was at the start of the batch scores the
        # batch before learning from it, beside the production version's own predictions.
        online_scores = LinearModel.from_tensors(
            task, names, self.learner.classes, self.learner.export()
        ).proba(X)
        for i, join in enumerate(joins):
            label = join["label"]
            if task == Task.REGRESSION:
                ours = -abs(float(online_scores[i]) - float(label))
                theirs = -abs(float(join["prediction"]) - float(label))
            else:
                ours = float(self.learner.classes[int(np.argmax(online_scores[i]))] == str(label))
                theirs = float(str(join["prediction"]) == str(label))
            self.paired.append((ours, theirs))
            if in_online_holdout(join["request_id"]):
                continue
            self.learner.learn_one(
                dict(zip(names, X[i].tolist(), strict=True)),
                label if task != Task.REGRESSION else float(label),
            )
            partition, offset = join["partition"], join["feedback_offset"]
            span = self.feedback_ranges.setdefault(partition, [offset, offset + 1])
            span[0], span[1] = min(span[0], offset), max(span[1], offset + 1)
            self.learned_since_export += 1
            out.learned += 1

    def gain(self) -> float:
        """Online learner minus production on the same recent labels (accuracy or -MAE)."""
        if not self.paired:
            return 0.0
        pairs = np.asarray(self.paired)
        return float(pairs[:, 0].mean() - pairs[:, 1].mean())

    def _export(self, now_ms: int) -> ModelBody | None:
        c = self.config
        if self.learner is None or self.body is None:
            return None
        due = self.learned_since_export >= c.export_every_labels or (
            now_ms - self.last_export_ms >= c.export_every_ms
            and self.learned_since_export >= c.export_min_labels
        )
        if not due or len(self.paired) < c.export_min_labels or self.gain() < c.export_min_gain:
            return None
        self.last_export_ms = now_ms
        self.learned_since_export = 0
        return self.candidate_body(now_ms)

    def candidate_body(self, now_ms: int) -> ModelBody:
        """The learner's weights as a candidate the validator gates like any other."""
        assert self.learner is not None and self.body is not None
        body = self.body
        ranges: list[OffsetRange] = [
            {"topic": FEEDBACK, "partition": p, "start": a, "end": b}
            for p, (a, b) in sorted(self.feedback_ranges.items())
        ]
        return candidate_body(
            name=self.name,
            task=body["task"],
            feature_names=body["feature_names"],
            classes=body["classes"],
            tensors=self.learner.export(),
            training=training_config(
                "river-online",
                l2=self.config.l2,
                learning_rate=self.config.learning_rate,
                batch_size=1,
                max_epochs=1,
                epochs_run=1,
            ),
            metrics={"online_gain": self.gain(), "online_labels": float(len(self.paired))},
            lineage=lineage(Origin.ONLINE, ranges, self.learner.learned),
            parent_version=body["version"],
            created_by="monitor",
            created_at_ms=now_ms,
        )

    def _rollback(self) -> RollbackDecision | None:
        if self.body is None or self.version in self.rolled_back:
            return None
        decision = should_roll_back(
            self.body["version"],
            self.body["parent_version"],
            self.metrics,
            margin=self.config.rollback_margin,
            min_labels=self.config.rollback_min_labels,
        )
        if decision is not None:
            self.rolled_back.add(decision.version)
        return decision

    # -- persistence -----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "learner": self.learner.state() if self.learner is not None else None,
            "metrics": {str(v): m.state() for v, m in self.metrics.items()},
            "positions": dict(self.positions),
            "feedback_ranges": {str(p): r for p, r in self.feedback_ranges.items()},
            "learned_since_export": self.learned_since_export,
            "last_export_ms": self.last_export_ms,
            "paired": [list(p) for p in self.paired],
            "rolled_back": sorted(self.rolled_back),
            "last_train_ms": self.last_train_ms,
            "joined_total": self.joined_total,
        }

    def restore(self, state: Mapping[str, Any], task: str) -> None:
        """Continue from ``state``; the learner only when it belongs to the production
        version already installed (else learning restarts from the new production)."""
        for version, metrics_state in state["metrics"].items():
            metrics = LiveMetrics(task, self.config.window)
            metrics.restore(metrics_state)
            self.metrics[int(version)] = metrics
        self.positions = dict(state["positions"])
        self.rolled_back = set(state["rolled_back"])
        self.last_train_ms = state["last_train_ms"]
        self.joined_total = state["joined_total"]
        self.last_export_ms = state["last_export_ms"]
        if (
            self.learner is not None
            and state["learner"] is not None
            and state["version"] == self.version
        ):
            self.learner.restore(state["learner"])
            self.feedback_ranges = {int(p): list(r) for p, r in state["feedback_ranges"].items()}
            self.learned_since_export = state["learned_since_export"]
            self.paired.extend(tuple(p) for p in state["paired"])
