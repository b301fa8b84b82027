"""Live quality of each served version, and drift: what was predicted against what the
labels say, over the newest labels of each version; ADWIN on each version's error stream;
live feature means against the training statistics in the artifact.

>>> from modelstream.contracts.records import Task
>>> metrics = LiveMetrics(Task.BINARY, window=3)
>>> for correct in (1.0, 0.0, 1.0, 1.0):
...     metrics.add(Outcome(correct, 0.1, 0.9, 0.0, 20.0))
>>> metrics.snapshot()["accuracy"], metrics.total
(0.6666666666666666, 4)

Windows over time add up :class:`QualitySums` instead (sums of two windows' outcomes are
the sums of their union):

>>> first = summarize(Task.BINARY, [Outcome(1.0, 0.1, 0.9, 0.0, 20.0)])
>>> both = add_sums(first, summarize(Task.BINARY, [Outcome(0.0, 2.3, 0.9, 0.0, 40.0)]))
>>> quality_of(both)["accuracy"], quality_of(both)["label_delay_s"]
(0.5, 0.03)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from river import drift

from modelstream.contracts.records import Label, MetricWindowState, QualitySums, Task
from modelstream.learn.metrics import expected_calibration_error


@dataclass
class Outcome:
    """One prediction matched with its true label."""

    correct: float  # 1/0 for classifiers; unused for regression
    log_loss: float  # -log p(true class); 0 for regression
    confidence: float  # probability of the predicted class; 0 for regression
    abs_error: float  # regression; 0 for classifiers
    delay_ms: float  # label arrival minus prediction time


def outcome(
    task: Task,
    classes: Sequence[str],
    scores: Mapping[str, float],
    prediction: Label,
    label: Label,
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

    task: Task
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

    def state(self) -> MetricWindowState:
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

    def restore(self, state: MetricWindowState) -> None:
        self.total = int(state["total"])
        self.outcomes.clear()
        if state["columns"]:
            for row in zip(*state["columns"], strict=True):
                self.outcomes.append(Outcome(*row))

    def primary(self) -> float:
        """Accuracy (larger is better), or negative RMSE for regression."""
        snap = self.snapshot()
        return snap["accuracy"] if self.task != Task.REGRESSION else -snap["rmse"]


BINS = 10  # equal-width confidence bins of the calibration error


def summarize(task: Task, outcomes: Sequence[Outcome]) -> QualitySums:
    """The sums a time window of outcomes is made of."""
    correct = np.array([o.correct for o in outcomes])
    confidence = np.array([o.confidence for o in outcomes])
    errors = np.array([o.abs_error for o in outcomes])
    classifier = task != Task.REGRESSION
    which = np.minimum((confidence * BINS).astype(int), BINS - 1) if classifier else None
    return {
        "task": str(task),
        "count": len(outcomes),
        "correct": float(correct.sum()),
        "log_loss": float(sum(o.log_loss for o in outcomes)),
        "abs_error": float(errors.sum()),
        "squared_error": float((errors**2).sum()),
        "delay_ms": float(sum(o.delay_ms for o in outcomes)),
        "bin_count": np.bincount(which, minlength=BINS).tolist() if which is not None else [],
        "bin_correct": (
            np.bincount(which, correct, minlength=BINS).tolist() if which is not None else []
        ),
        "bin_confidence": (
            np.bincount(which, confidence, minlength=BINS).tolist() if which is not None else []
        ),
    }


def add_sums(a: QualitySums, b: QualitySums) -> QualitySums:
    def pairwise(x: list[Any], y: list[Any]) -> list[Any]:
        return [p + q for p, q in zip(x, y, strict=True)] if x and y else list(x or y)

    return {
        "task": a["task"] or b["task"],
        "count": a["count"] + b["count"],
        "correct": a["correct"] + b["correct"],
        "log_loss": a["log_loss"] + b["log_loss"],
        "abs_error": a["abs_error"] + b["abs_error"],
        "squared_error": a["squared_error"] + b["squared_error"],
        "delay_ms": a["delay_ms"] + b["delay_ms"],
        "bin_count": pairwise(a["bin_count"], b["bin_count"]),
        "bin_correct": pairwise(a["bin_correct"], b["bin_correct"]),
        "bin_confidence": pairwise(a["bin_confidence"], b["bin_confidence"]),
    }


def quality_of(sums: QualitySums) -> dict[str, float]:
    """The metrics of a window's sums (those of its task)."""
    n = sums["count"]
    if n == 0:
        return {"labels": 0.0}
    out = {"labels": float(n), "label_delay_s": sums["delay_ms"] / n / 1000.0}
    if sums["task"] == Task.REGRESSION:
        out["mae"] = sums["abs_error"] / n
        out["rmse"] = math.sqrt(sums["squared_error"] / n)
        return out
    out["accuracy"] = sums["correct"] / n
    out["log_loss"] = sums["log_loss"] / n
    out["calibration_error"] = float(
        sum(
            abs(c - conf)  # per bin: count * |accuracy - confidence|
            for c, conf in zip(sums["bin_correct"], sums["bin_confidence"], strict=True)
        )
        / n
    )
    return out


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

    def state(self) -> tuple[list[float], int]:
        """The window's per-feature sums and the rows seen: O(features), where the ring
        itself is window x features."""
        return self.total.tolist(), self.seen

    def restore(self, sums: Sequence[float], seen: int) -> None:
        """Continue a window from its sums. The ring's rows are not kept, so each slot
        takes the window's mean row: the window mean is exact at once, and the sliding
        sum is exact again once ``window`` new rows have replaced the restored ones."""
        if len(sums) != len(self.names):
            return  # another model's shape: start the window over
        self.reset()
        self.total = np.asarray(sums, dtype=np.float64)
        self.seen = max(0, int(seen))
        filled = min(self.seen, self.window)
        if filled:
            slots = (self.seen - filled + np.arange(filled)) % self.window
            self.ring[slots] = self.total / filled

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


class ScoreDrift:
    """Compares the live distribution of a model's top score (its confidence; a regression
    model's values) with the one the validator recorded on its hold-out: the deciles in the
    artifact (``validation_score_q10`` .. ``q90``) cut the line into ten bins, which held
    the shares of the hold-out recorded beside them (``validation_score_f0`` .. ``f9``: a
    tenth each unless scores tied). Each full window of live scores gives the population
    stability index sum((live - expected) * ln(live / expected)) over the bins; above ``threshold``
    (0.25 is the customary "shifted" mark) the distribution has moved. For models without
    training statistics of their features (imported graphs, images, text) this is what says
    the inputs changed, whether or not the model's accuracy has moved yet."""

    def __init__(
        self,
        edges: Sequence[float],
        window: int = 500,
        threshold: float = 0.25,
        expected: Sequence[float] | None = None,
    ) -> None:
        self.edges = np.asarray(edges, dtype=np.float64)
        self.window, self.threshold = window, threshold
        self.counts = np.zeros(len(self.edges) + 1)
        # the hold-out's share in each bin: a tenth each, unless its scores tied
        self.expected = (
            np.full(len(self.counts), 1.0 / len(self.counts))
            if expected is None
            else np.asarray(expected, dtype=np.float64)
        )
        self.last_index = 0.0

    @classmethod
    def from_metrics(
        cls, metrics: dict[str, float], window: int, threshold: float
    ) -> ScoreDrift | None:
        def series(prefix: str) -> list[float]:
            keys = sorted(
                (k for k in metrics if k.startswith(prefix) and k[len(prefix) :].isdigit()),
                key=lambda k: int(k[len(prefix) :]),
            )
            return [metrics[k] for k in keys]

        edges, shares = series("validation_score_q"), series("validation_score_f")
        if len(edges) < 3:
            return None
        return cls(edges, window, threshold, shares if len(shares) == len(edges) + 1 else None)

    def update_many(self, scores: np.ndarray) -> float | None:
        """Add live scores; the stability index of each window that completed above the
        threshold (the last of them), else None."""
        shifted = None
        for start in range(0, len(scores), self.window):
            part = scores[start : start + self.window]
            room = int(self.window - self.counts.sum())
            head, tail = part[:room], part[room:]
            self.counts += np.bincount(
                np.searchsorted(self.edges, head, side="right"), minlength=len(self.counts)
            )
            if self.counts.sum() >= self.window:
                index = self.stability_index()
                self.last_index = index
                self.counts[:] = 0
                if index > self.threshold:
                    shifted = index
                if len(tail):
                    self.counts += np.bincount(
                        np.searchsorted(self.edges, tail, side="right"),
                        minlength=len(self.counts),
                    )
        return shifted

    def state(self) -> list[int]:
        return [int(c) for c in self.counts]

    def restore(self, counts: Sequence[int]) -> None:
        """Continue the current window (counts of another shape start it over)."""
        if len(counts) == len(self.counts) and 0 <= sum(counts) < self.window:
            self.counts = np.asarray(counts, dtype=np.float64)

    def stability_index(self) -> float:
        expected = np.maximum(self.expected, 1e-4)
        live = np.maximum(self.counts / max(self.counts.sum(), 1.0), 1e-4)
        return float(((live - expected) * np.log(live / expected)).sum())


@dataclass
class DriftEvent:
    kind: str  # "error" (ADWIN on a version's error stream), "features" or "scores"
    version: int
    detail: str
