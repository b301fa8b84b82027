"""The gate: absolute thresholds and champion/challenger; pure numpy, no Kafka.

A fair comparison needs data neither model trained on. The challenger's fold models are
scored on their held-out folds; the champion is scored only on held-out rows outside its
own lineage (rows it never trained on), and the challenger on the same rows. When fewer
than ``MIN_FRESH`` such rows exist (a retrain on the same window), the challenger's CV
estimate is compared with the champion's CV estimate recorded when it was published.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from modelstream.contracts.builders import now_ms
from modelstream.contracts.definitions import Definition
from modelstream.contracts.records import (
    ModelArtifact,
    ModelBody,
    NamedTensor,
    Task,
    ValidationReport,
)
from modelstream.learn.metrics import PRIMARY, evaluate
from modelstream.learn.procedure import cross_validate, summarize
from modelstream.learn.sgd import GDConfig
from modelstream.registry.scoring import Scorer

MIN_FRESH = 30
RECORDED_PREFIX = "validation_"


@dataclass(frozen=True)
class Champion:
    model: Scorer
    version: int
    recorded: Mapping[str, float]  # the published artifact's metrics


@dataclass
class Verdict:
    method: str
    metrics: dict[str, float]
    champion_metrics: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    folds: int = 0
    examples: int = 0
    comparison: str = "no champion"

    @property
    def passed(self) -> bool:
        return not self.reasons


def cross_validation_verdict(
    body: ModelBody,
    X: np.ndarray,
    y: np.ndarray,
    definition: Definition,
    config: GDConfig,
    champion: Champion | None,
    unseen_by_champion: np.ndarray | None,
) -> Verdict:
    """Re-train the candidate's procedure on k folds of the re-read examples."""
    claimed = body["lineage"]["example_count"]
    verdict = Verdict("cross-validation", {}, examples=len(y))
    if len(y) != claimed:
        verdict.reasons.append(
            f"lineage names {claimed} examples but {len(y)} were re-read from Kafka"
        )
        return verdict
    k = definition.cv_folds
    if body["task"] == Task.REGRESSION:
        smallest = len(y)
    else:
        smallest = int(np.bincount(y, minlength=len(body["classes"])).min()) if len(y) else 0
    if smallest < k:
        verdict.reasons.append(f"{k}-fold cross-validation needs >= {k} examples per class")
        return verdict
    cv = cross_validate(
        X,
        y,
        body["task"],
        body["feature_names"],
        body["classes"],
        config,
        k,
        seed=definition.seed,
        champion=champion.model if champion else None,
        unseen_by_champion=unseen_by_champion,
    )
    verdict.metrics, verdict.folds = cv.metrics, cv.folds
    apply_thresholds(verdict, definition)
    if champion is not None:
        compare(
            verdict,
            body["task"],
            definition,
            champion,
            cv.challenger_on_fresh,
            cv.champion_on_fresh,
            cv.fresh_examples,
        )
    return verdict


# How a model reads the rows of a hold-out: numeric matrix, categories per row, and the
# named tensors per row (None for a model over features).
View = tuple[np.ndarray, list[dict[str, str]], list[list[NamedTensor]] | None]
# Quantiles of the hold-out's top scores, recorded with a published model: the monitor
# compares live score distributions with them (drift on what the model outputs, for models
# without training statistics of their features).
SCORE_QUANTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


@dataclass(frozen=True)
class Holdout:
    """Recent labelled examples, as each model to be compared reads them."""

    y: np.ndarray
    candidate: View
    champion: View | None = None


def _rows(view: View, rows: np.ndarray) -> View:
    X, categories, tensors = view
    return (
        X[rows],
        [categories[i] for i in rows],
        [tensors[i] for i in rows] if tensors is not None else None,
    )


def score_reference(task: Task, scores: np.ndarray) -> dict[str, float]:
    """Deciles of the top score (a classifier's confidence) or of the values (regression),
    and the share of the hold-out in each of the bins they cut (``score_f0`` .. ``f9``: a
    tenth each, unless scores tie, as a confident classifier's saturated 1.0s do)."""
    if task == Task.EMBEDDING or not len(scores):
        return {}
    top = scores if task == Task.REGRESSION else scores.max(axis=1)
    quantiles = np.percentile(top, SCORE_QUANTILES)
    bins = np.bincount(np.searchsorted(quantiles, top, side="right"), minlength=len(quantiles) + 1)
    return {
        **{f"score_q{q}": float(v) for q, v in zip(SCORE_QUANTILES, quantiles, strict=True)},
        **{f"score_f{i}": float(c) / len(top) for i, c in enumerate(bins)},
    }


def holdout_verdict(
    body: ModelBody,
    candidate: Scorer,
    data: Holdout,
    definition: Definition,
    champion: Champion | None,
    unseen_by_champion: np.ndarray,
) -> Verdict:
    """Score a fixed model (online-learned, imported: any kind) on recent labelled
    examples; a champion, of the same kind or another, is scored on the same rows."""
    y = data.y
    task = body["task"]
    if task == Task.EMBEDDING:
        return _embedding_verdict(candidate, data, definition)
    verdict = Verdict("holdout", {}, examples=len(y), folds=1)
    if len(y) < 10:
        verdict.reasons.append(f"only {len(y)} labelled examples available for the holdout")
        return verdict
    scores = candidate.score(*data.candidate)
    verdict.metrics = {**summarize([evaluate(task, y, scores)]), **score_reference(task, scores)}
    apply_thresholds(verdict, definition)
    if champion is not None and data.champion is not None:
        rows = np.flatnonzero(unseen_by_champion)
        ours = theirs = {}
        if len(rows):
            ours = summarize([evaluate(task, y[rows], scores[rows])])
            theirs = summarize(
                [evaluate(task, y[rows], champion.model.score(*_rows(data.champion, rows)))]
            )
        compare(verdict, task, definition, champion, ours, theirs, len(rows))
    return verdict


def _embedding_verdict(candidate: Scorer, data: Holdout, definition: Definition) -> Verdict:
    """An embedding model has no label to be right or wrong about: it is judged on running
    over recent examples of ``training`` (their labels unused), every output finite, and
    on the definition's thresholds over ``rows`` and ``finite``."""
    rows = len(data.y)
    verdict = Verdict("holdout-run", {}, examples=rows, folds=1)
    verdict.comparison = "an embedding model has no labels to be compared on"
    if rows < 1:
        verdict.reasons.append("no example of the model in training to run the candidate on")
        return verdict
    outputs = candidate.score(*data.candidate)
    finite = float(np.isfinite(outputs).all(axis=1).mean())
    verdict.metrics = {"rows_mean": float(rows), "finite_mean": finite}
    if finite < 1.0:
        verdict.reasons.append(f"{1 - finite:.1%} of the rows gave outputs that are not finite")
    apply_thresholds(verdict, definition)
    return verdict


def apply_thresholds(verdict: Verdict, definition: Definition) -> None:
    for key, bound in sorted(definition.thresholds.items()):
        kind, metric = key.split("_", 1)
        value = verdict.metrics.get(f"{metric}_mean")
        if value is None:
            verdict.reasons.append(f"threshold {key}: metric {metric!r} is not computed")
        elif kind == "min" and value < bound:
            verdict.reasons.append(f"{metric} {value:.4f} is below the minimum {bound}")
        elif kind == "max" and value > bound:
            verdict.reasons.append(f"{metric} {value:.4f} is above the maximum {bound}")


def compare(
    verdict: Verdict,
    task: Task,
    definition: Definition,
    champion: Champion,
    challenger_fresh: Mapping[str, float],
    champion_fresh: Mapping[str, float],
    fresh: int,
) -> None:
    name, larger_is_better = PRIMARY[task]
    key = f"{name}_mean"
    recorded = {
        k[len(RECORDED_PREFIX) :]: v
        for k, v in champion.recorded.items()
        if k.startswith(RECORDED_PREFIX)
    }
    if fresh >= MIN_FRESH:
        ours, theirs = challenger_fresh[key], champion_fresh[key]
        verdict.champion_metrics = {**champion_fresh, "fresh_examples": float(fresh)}
        verdict.comparison = f"both on {fresh} held-out examples the champion never trained on"
    elif key in recorded:
        ours, theirs = verdict.metrics[key], recorded[key]
        verdict.champion_metrics = dict(recorded)
        verdict.comparison = (
            f"cross-validation estimates (only {fresh} held-out examples were new to the champion)"
        )
    else:
        verdict.comparison = "no fair comparison possible (no fresh data, no recorded estimate)"
        return
    tol = definition.tolerance
    worse = ours < theirs - tol if larger_is_better else ours > theirs + tol
    if worse:
        verdict.reasons.append(
            f"{name} {ours:.4f} is worse than champion v{champion.version}'s {theirs:.4f} by "
            f"more than {tol} ({verdict.comparison})"
        )


def report(
    body: ModelBody,
    artifact: ModelArtifact,
    verdict: Verdict,
    champion_version: int | None,
    validator: str,
) -> ValidationReport:
    return {
        "model": body["name"],
        "candidate_digest": artifact["digest"],
        "passed": verdict.passed,
        "method": verdict.method,
        "metrics": verdict.metrics,
        "champion_version": champion_version,
        "champion_metrics": verdict.champion_metrics,
        "reasons": verdict.reasons,
        "folds": verdict.folds,
        "examples": verdict.examples,
        "artifact": artifact if verdict.passed else None,
        "validated_at_ms": now_ms(),
        "validator": validator,
    }
