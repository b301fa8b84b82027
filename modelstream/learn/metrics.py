"""Evaluation metrics, vectorized over whole arrays.

Classifier metrics take ``y`` as class indices and ``proba`` as an (n × n_classes) matrix.

>>> import numpy as np
>>> roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
0.75
"""

from __future__ import annotations

import numpy as np

from modelstream.contracts.records import Task

EPS = 1e-15


def accuracy(y: np.ndarray, proba: np.ndarray) -> float:
    return float(np.mean(proba.argmax(axis=1) == y))


def log_loss(y: np.ndarray, proba: np.ndarray) -> float:
    p = np.clip(proba[np.arange(len(y)), y], EPS, 1.0)
    return float(-np.mean(np.log(p)))


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of binary ``y`` (0/1) by ``score``; ties count half."""
    y = np.asarray(y)
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    sorted_scores = score[order]
    ranks = np.empty(len(score))
    # average ranks over ties (Mann-Whitney U)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def macro_f1(y: np.ndarray, proba: np.ndarray) -> float:
    n_classes = proba.shape[1]
    pred = proba.argmax(axis=1)
    scores = []
    for c in range(n_classes):
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        denom = 2 * tp + fp + fn
        if np.sum(y == c) == 0 and np.sum(pred == c) == 0:
            continue  # class absent from this fold and never predicted
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores)) if scores else float("nan")


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


def rmse(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - y) ** 2)))


def mae(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - y)))


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    total = np.sum((y - y.mean()) ** 2)
    if total == 0:
        return float("nan")
    return float(1.0 - np.sum((y - pred) ** 2) / total)


def evaluate(task: Task, y: np.ndarray, output: np.ndarray) -> dict[str, float]:
    """Every metric of a task: ``output`` is probabilities (classifiers) or values."""
    if task == Task.REGRESSION:
        return {"rmse": rmse(y, output), "mae": mae(y, output), "r2": r2(y, output)}
    top = output.argmax(axis=1)
    metrics = {
        "accuracy": accuracy(y, output),
        "log_loss": log_loss(y, output),
        "macro_f1": macro_f1(y, output),
        "calibration_error": expected_calibration_error(
            output[np.arange(len(y)), top], (top == y).astype(np.float64)
        ),
    }
    if task == Task.BINARY:
        metrics["roc_auc"] = roc_auc(y, output[:, 1])
    return metrics


# The metric each task is judged by, and whether larger is better.
PRIMARY: dict[Task, tuple[str, bool]] = {
    Task.BINARY: ("accuracy", True),
    Task.MULTICLASS: ("accuracy", True),
    Task.REGRESSION: ("rmse", False),
}
