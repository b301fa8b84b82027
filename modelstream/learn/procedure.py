"""The training procedure: standardize, choose L2 by k-fold CV over a grid, fit, evaluate.

This one function is what the trainer runs, what the validator cross-validates and what
``modelstream models reproduce`` re-runs; identical inputs give identical bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from modelstream.contracts.records import Task
from modelstream.learn.cv import folds_for
from modelstream.learn.gbdt import (
    COMPLEXITY_GRID,
    N_ESTIMATORS,
    RATE_GRID,
    GBDTModel,
    GBDTParams,
    fit_gbdt,
)
from modelstream.learn.linear import LinearModel, standardization
from modelstream.learn.metrics import PRIMARY, evaluate
from modelstream.learn.mlp import MLPModel, fit_mlp, fit_mlp_grid
from modelstream.learn.sgd import GDConfig, fit_linear, fit_linear_grid

DEFAULT_L2_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)


class Scores(Protocol):
    """A fixed model to compare with: a linear model or an imported graph."""

    def output(self, X: np.ndarray) -> np.ndarray: ...


Model = LinearModel | MLPModel | GBDTModel


@dataclass(frozen=True)
class TrainedModel:
    model: Model
    config: GDConfig
    epochs_run: int
    l2_grid: tuple[float, ...]
    l2_grid_scores: tuple[float, ...]
    cv_folds: int
    metrics: dict[str, float]
    l2_tried: tuple[float, ...] = ()  # the grid and the search's refinements around its best


def fit_fixed(
    X: np.ndarray,
    y: np.ndarray,
    task: Task,
    feature_names: Sequence[str],
    classes: Sequence[str],
    config: GDConfig,
) -> tuple[Model, int]:
    """Standardize on ``X`` and fit with the given hyperparameters (no search); a network
    when ``config.hidden`` names hidden layers, else the linear family."""
    if config.family == "gbdt":  # trees need no standardization
        trees = fit_gbdt(X, y, task, feature_names, classes, gbdt_params(config))
        return trees, N_ESTIMATORS
    mean, scale = standardization(X)
    Z = (X - mean) / scale
    if config.hidden:
        net = fit_mlp(Z, y, task, len(classes), config)
        mlp = MLPModel(task, list(feature_names), list(classes), net.layers, mean, scale)
        return mlp, net.epochs_run
    fit = fit_linear(Z, y, task, len(classes), config)
    model = LinearModel(task, list(feature_names), list(classes), fit.W, fit.b, mean, scale)
    return model, fit.epochs_run


# rounds of the L2 search after its grid: one step beyond an edge, then halving the step
# around the best (a log-spaced grid needs no more)
SEARCH_ROUNDS = 2


@dataclass(frozen=True)
class L2Search:
    """What the L2 search found: the chosen strength, the grid's mean CV primary metric per
    value (the given grid's order), and the chosen value's CV estimate with its spread."""

    l2: float
    scores: tuple[float, ...]
    cv_primary: float
    cv_primary_std: float
    tried: tuple[float, ...]  # the grid and the refinements around its best


def search_l2(
    X: np.ndarray,
    y: np.ndarray,
    task: Task,
    n_classes: int,
    config: GDConfig,
    grid: Sequence[float],
    k: int,
) -> L2Search:
    """Choose L2 by k-fold CV: the grid first (log-spaced: its first step is taken as its
    step), trained at once per fold, then rounds around the best so far: a grid step beyond
    it while it sits at an edge of what was tried (never more than a step beyond the grid),
    and the strengths half-way (in log scale) to its neighbours while they are a whole grid
    step away (at most :data:`SEARCH_ROUNDS` rounds). A classifier's strengths are ranked
    by their mean CV log-loss, which moves smoothly with the strength (accuracy moves a row
    at a time, and on small data ties half the grid); a regression by RMSE. Remaining ties
    go to the stronger."""
    if any(not v > 0 for v in grid):
        raise ValueError(f"L2 grid values must be > 0, got {list(grid)}")
    folds = folds_for(task, y, k, config.seed)
    first = _cv_scores(X, y, task, n_classes, config, tuple(grid), folds)
    tried = {float(v): first[i] for i, v in enumerate(grid)}
    values = sorted(tried)
    step = float(np.log10(values[1] / values[0])) if len(values) > 1 else 0.0
    bounds = (values[0] / 10**step, values[-1] * 10**step)
    for _ in range(SEARCH_ROUNDS):
        best = _best(tried)
        proposals = tuple(v for v in _around(best, sorted(tried), step, bounds) if v not in tried)
        if not proposals:
            break
        scores = _cv_scores(X, y, task, n_classes, config, proposals, folds)
        tried.update(zip(proposals, scores, strict=True))
    chosen = _best(tried)
    primary = tried[chosen][1]
    return L2Search(
        chosen,
        tuple(float(tried[float(v)][1].mean()) for v in grid),
        float(primary.mean()),
        float(primary.std()),
        tuple(sorted(tried)),
    )


FoldScores = tuple[np.ndarray, np.ndarray]  # per fold: the selection loss, the primary metric


def _cv_scores(
    X: np.ndarray,
    y: np.ndarray,
    task: Task,
    n_classes: int,
    config: GDConfig,
    grid: tuple[float, ...],
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
) -> list[FoldScores]:
    loss = np.zeros((len(folds), len(grid)))
    primary = np.zeros((len(folds), len(grid)))
    for f, (train_idx, test_idx) in enumerate(folds):
        mean, scale = standardization(X[train_idx])
        Z = (X[train_idx] - mean) / scale
        models: list[Model]
        if config.hidden:
            nets = fit_mlp_grid(Z, y[train_idx], task, n_classes, config, grid)
            models = [MLPModel(task, [], [], net.layers, mean, scale) for net in nets]
        else:
            fits = fit_linear_grid(Z, y[train_idx], task, n_classes, config, grid)
            models = [LinearModel(task, [], [], fit.W, fit.b, mean, scale) for fit in fits]
        for g, model in enumerate(models):
            metrics = evaluate(task, y[test_idx], model.output(X[test_idx]))
            name, larger_is_better = PRIMARY[task]
            primary[f, g] = metrics[name] if larger_is_better else -metrics[name]
            loss[f, g] = metrics["log_loss"] if task != Task.REGRESSION else metrics["rmse"]
    return [(loss[:, g], primary[:, g]) for g in range(len(grid))]


def _best(tried: dict[float, FoldScores]) -> float:
    """The strength with the lowest mean selection loss (NaN losses last; ties to the
    stronger)."""

    def key(v: float) -> tuple[float, float]:
        mean = float(np.mean(tried[v][0]))
        return (round(mean, 12) if np.isfinite(mean) else np.inf, -v)

    return min(tried, key=key)


def _around(
    best: float, tried: list[float], step: float, bounds: tuple[float, float]
) -> tuple[float, ...]:
    """The strengths to try next around ``best`` (``tried`` sorted, ``step`` the grid's
    step in decades): one step beyond it at an edge, within ``bounds``; else, on each side
    whose neighbour is a whole step away, the strength half-way (geometrically) to it."""
    if step <= 0:
        return ()
    i = tried.index(best)
    slack = 1 + 1e-9
    if i == 0 and best / 10**step * slack >= bounds[0]:
        return (best / 10**step,)
    if i == len(tried) - 1 and best * 10**step <= bounds[1] * slack:
        return (best * 10**step,)
    neighbours = [tried[j] for j in (i - 1, i + 1) if 0 <= j < len(tried)]
    return tuple(
        float(np.sqrt(best * n)) for n in neighbours if abs(np.log10(n / best)) * slack >= step
    )


def gbdt_params(config: GDConfig) -> GBDTParams:
    return GBDTParams(
        l2=config.l2,
        num_leaves=config.num_leaves,
        min_data_in_leaf=config.min_data_in_leaf,
        seed=config.seed,
        learning_rate=config.learning_rate,
    )


def search_gbdt(
    X: np.ndarray,
    y: np.ndarray,
    task: Task,
    classes: Sequence[str],
    config: GDConfig,
    grid: Sequence[float],
    k: int,
) -> tuple[GDConfig, tuple[float, ...]]:
    """Mean CV score of each (L2, num_leaves, min_data_in_leaf, learning rate), ranked as
    :func:`search_l2` ranks strengths (CV log-loss, or RMSE); returns the best settings and,
    per L2 value, its best mean primary metric over the rest. Ties go to the stronger
    regularization, then the simpler trees, then the smaller step."""
    folds = folds_for(task, y, k, config.seed)
    candidates = [
        replace(config, l2=l2, num_leaves=leaves, min_data_in_leaf=min_data, learning_rate=rate)
        for l2 in (grid or (config.l2,))
        for leaves, min_data in COMPLEXITY_GRID
        for rate in RATE_GRID
    ]
    losses, primaries = [], []
    name, larger_is_better = PRIMARY[task]
    for candidate in candidates:
        loss, primary = [], []
        for train_idx, test_idx in folds:
            model = fit_gbdt(X[train_idx], y[train_idx], task, [], classes, gbdt_params(candidate))
            metrics = evaluate(task, y[test_idx], model.output(X[test_idx]))
            loss.append(metrics["log_loss"] if task != Task.REGRESSION else metrics["rmse"])
            primary.append(metrics[name] if larger_is_better else -metrics[name])
        losses.append(float(np.mean(loss)))
        primaries.append(float(np.mean(primary)))
    best = min(
        range(len(candidates)),
        key=lambda i: (
            round(losses[i], 12) if np.isfinite(losses[i]) else np.inf,
            -candidates[i].l2,
            candidates[i].num_leaves,
            -candidates[i].min_data_in_leaf,
            candidates[i].learning_rate,
        ),
    )
    per_l2 = tuple(
        max(m for c, m in zip(candidates, primaries, strict=True) if c.l2 == l2)
        for l2 in (grid or (config.l2,))
    )
    return candidates[best], per_l2


def train(
    X: np.ndarray,
    y: np.ndarray,
    task: Task,
    feature_names: Sequence[str],
    classes: Sequence[str],
    config: GDConfig,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    cv_folds: int = 5,
) -> TrainedModel:
    """The whole procedure; deterministic for a given ``config.seed``."""
    grid = tuple(float(v) for v in l2_grid)
    k = min(cv_folds, _max_folds(task, y))
    tried: tuple[float, ...] = grid
    if config.family == "gbdt" and k >= 2:
        chosen, scores = search_gbdt(X, y, task, classes, config, grid, k)
        estimate: tuple[float, float] | None = None
    elif len(grid) > 1 and k >= 2:
        search = search_l2(X, y, task, len(classes), config, grid, k)
        chosen, scores = replace(config, l2=search.l2), search.scores
        estimate = (search.cv_primary, search.cv_primary_std)
        tried = search.tried
    else:
        l2, scores = (grid[0] if grid else config.l2), tuple(float("nan") for _ in grid)
        chosen, estimate = replace(config, l2=l2), None
    model, epochs = fit_fixed(X, y, task, feature_names, classes, chosen)
    metrics = {f"train_{k_}": v for k_, v in evaluate(task, y, model.output(X)).items()}
    if estimate is not None:  # the chosen strength's CV estimate, with its spread
        metrics["cv_primary"], metrics["cv_primary_std"] = estimate
    elif scores and not all(map(np.isnan, scores)):
        metrics["cv_primary"] = float(max(s for s in scores if not np.isnan(s)))
    return TrainedModel(model, chosen, epochs, grid, scores, k, metrics, tried)


def _max_folds(task: Task, y: np.ndarray) -> int:
    if task == Task.REGRESSION:
        return len(y)
    return int(np.bincount(y).min()) if len(y) else 0


@dataclass(frozen=True)
class CrossValidation:
    metrics: dict[str, float]  # <metric>_mean and <metric>_std over the folds
    # Both models on the held-out rows the champion never trained on (pooled over folds).
    challenger_on_fresh: dict[str, float]
    champion_on_fresh: dict[str, float]
    fresh_examples: int
    folds: int


def cross_validate(
    X: np.ndarray,
    y: np.ndarray,
    task: Task,
    feature_names: Sequence[str],
    classes: Sequence[str],
    config: GDConfig,
    k: int,
    seed: int,
    champion: Scores | None = None,
    unseen_by_champion: np.ndarray | None = None,
) -> CrossValidation:
    """K-fold CV of the procedure with fixed hyperparameters. The champion (if any) is
    compared on the held-out rows it never trained on (``unseen_by_champion``), where the
    challenger's fold models are scored too."""
    folds = folds_for(task, y, k, seed)
    per_fold: list[dict[str, float]] = []
    fresh = np.ones(len(y), bool) if unseen_by_champion is None else unseen_by_champion
    fresh_rows: list[np.ndarray] = []
    challenger_out: list[np.ndarray] = []
    for train_idx, test_idx in folds:
        model, _ = fit_fixed(X[train_idx], y[train_idx], task, feature_names, classes, config)
        output = model.output(X[test_idx])
        per_fold.append(evaluate(task, y[test_idx], output))
        keep = fresh[test_idx]
        fresh_rows.append(test_idx[keep])
        challenger_out.append(output[keep])
    rows = np.concatenate(fresh_rows)
    challenger_fresh: dict[str, float] = {}
    champion_fresh: dict[str, float] = {}
    if champion is not None and len(rows):
        challenger_fresh = summarize([evaluate(task, y[rows], np.concatenate(challenger_out))])
        champion_fresh = summarize([evaluate(task, y[rows], champion.output(X[rows]))])
    return CrossValidation(
        summarize(per_fold),
        challenger_fresh,
        champion_fresh,
        len(rows) if champion is not None else 0,
        len(folds),
    )


def summarize(per_fold: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    if not per_fold:
        return out
    for name in per_fold[0]:
        values = np.array([m[name] for m in per_fold])
        out[f"{name}_mean"] = float(np.nanmean(values)) if not np.all(np.isnan(values)) else 0.0
        out[f"{name}_std"] = float(np.nanstd(values)) if not np.all(np.isnan(values)) else 0.0
    return out
