"""Model quality and training cost against scikit-learn tuned on its own terms.

For each data set (scikit-learn's breast-cancer, digits, wine and diabetes, and a subset of
Fashion-MNIST from Debian's ``dataset-fashion-mnist``) and each family (linear, mlp, gbdt)
beside its scikit-learn peer, two blocks:

* **nested CV**: the same outer folds for everyone (the validator's splitter and seed;
  three fold seeds for the small sets, reported as mean and std). On each outer training
  part each side chooses its hyper-parameters by its own inner CV (``INNER`` folds): ours
  is the trainer's procedure (``learn.procedure.train`` with the trainer's settings: its L2
  search), the peer a GridSearchCV over its own grid (below), refit on the whole part.
  Both are scored on the outer test part.
* **held-out**: 70 % of the data set (stratified, seed 0) through the real pipeline: the
  examples to ``training`` on the broker, the trainer, validator and publisher running;
  the published, signed artifact verified and scored with the predictor's scorer on the
  other 30 %. The peer's GridSearchCV on the same 70 %, scored on the same 30 %.

The peers' grids are their own scale, not our parameter mapped onto theirs:
LogisticRegression C and Ridge alpha over 1e-3..1e3; MLPClassifier / MLPRegressor (one
hidden layer of 64, as ours; a regression's target standardized) with and without early
stopping over alpha 1e-5..10;
HistGradientBoosting over learning rate and leaf count. The best configuration is reported
with its grid. Metrics: accuracy, log-loss, macro-F1 and the expected calibration error
(classifiers), RMSE (regression). Time: seconds per fitted configuration (the search's
fits, refit included), ours against the peer's.

    python bench/quality.py [--sets breast_cancer,digits,...] [--families linear,mlp,gbdt]
    # last line: one JSON object
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.compose import TransformedTargetRegressor
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_wine
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import broker

from modelstream.contracts.builders import command
from modelstream.contracts.codec import default_codec
from modelstream.contracts.definitions import Definition
from modelstream.contracts.records import Action, Task, TrainingExample
from modelstream.kafka.control import send_command
from modelstream.kafka.topology import create_topics
from modelstream.learn.cv import folds_for
from modelstream.learn.gbdt import COMPLEXITY_GRID, RATE_GRID
from modelstream.learn.metrics import evaluate
from modelstream.learn.procedure import DEFAULT_L2_GRID, train
from modelstream.registry.artifact import decrypt_tensors, generate_keys, load_public_key
from modelstream.registry.follower import load_production
from modelstream.registry.scoring import scorer_for
from modelstream.services.publisher.app import PublisherApp
from modelstream.services.publisher.settings import PublisherSettings
from modelstream.services.trainer.app import TrainerApp
from modelstream.services.trainer.logic import procedure_config
from modelstream.services.trainer.settings import TrainerSettings
from modelstream.services.validator.app import ValidatorApp
from modelstream.services.validator.settings import ValidatorSettings
from modelstream.settings import Settings, load

FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_ROWS = 3000
INNER = 3  # inner folds of every search, ours and the peers'
OUTER = 5
SMALL_SEEDS = (0, 1, 2)  # outer-fold seeds of the small sets
HIDDEN = (64,)
FAMILIES = ("linear", "mlp", "gbdt")


def fashion_mnist() -> Any:
    """The first FASHION_ROWS images of Fashion-MNIST's training set, pixels / 255."""
    with gzip.open(FASHION / "train-images-idx3-ubyte.gz") as f:
        f.read(16)
        pixels = np.frombuffer(f.read(FASHION_ROWS * 784), np.uint8)
    with gzip.open(FASHION / "train-labels-idx1-ubyte.gz") as f:
        f.read(8)
        labels = np.frombuffer(f.read(FASHION_ROWS), np.uint8)
    return argparse.Namespace(data=pixels.reshape(-1, 784) / 255.0, target=labels.astype(int))


@dataclass(frozen=True)
class DataSet:
    load: Callable[[], Any]
    task: Task
    seeds: tuple[int, ...]
    outer: int


DATASETS = {
    "breast_cancer": DataSet(load_breast_cancer, Task.BINARY, (0,), OUTER),
    "digits": DataSet(load_digits, Task.MULTICLASS, (0,), OUTER),
    "wine": DataSet(load_wine, Task.MULTICLASS, SMALL_SEEDS, OUTER),
    "diabetes": DataSet(load_diabetes, Task.REGRESSION, SMALL_SEEDS, OUTER),
    "fashion_mnist": DataSet(fashion_mnist, Task.MULTICLASS, (0,), 3),
}


# -- the peers, on their own terms --------------------------------------------------------
def peer(family: str, task: Task) -> tuple[Any, dict[str, list[Any]]]:
    """The scikit-learn estimator of a family (behind a StandardScaler) and its own grid."""
    regression = task == Task.REGRESSION
    if family == "linear":
        if regression:
            return make_pipeline(StandardScaler(), Ridge()), {
                "ridge__alpha": np.logspace(-3, 3, 13).tolist()
            }
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)), {
            "logisticregression__C": np.logspace(-3, 3, 13).tolist()
        }
    if family == "mlp":
        grid = {"alpha": np.logspace(-5, 1, 7).tolist(), "early_stopping": [False, True]}
        if regression:  # a network's regression target is standardized too, as users do
            net: Any = TransformedTargetRegressor(
                MLPRegressor(hidden_layer_sizes=HIDDEN, max_iter=1000, random_state=0),
                transformer=StandardScaler(),
            )
            step = "transformedtargetregressor__regressor"
        else:
            net = MLPClassifier(hidden_layer_sizes=HIDDEN, max_iter=1000, random_state=0)
            step = "mlpclassifier"
        return make_pipeline(StandardScaler(), net), {f"{step}__{k}": v for k, v in grid.items()}
    trees = (HistGradientBoostingRegressor if regression else HistGradientBoostingClassifier)(
        random_state=0
    )
    step = type(trees).__name__.lower()
    return make_pipeline(StandardScaler(), trees), {
        f"{step}__learning_rate": [0.05, 0.1, 0.2],
        f"{step}__max_leaf_nodes": [7, 15, 31],
    }


def peer_fit(
    family: str, task: Task, X: np.ndarray, y: np.ndarray, seed: int
) -> tuple[Any, dict[str, Any], int]:
    """GridSearchCV over the peer's grid on (X, y): the refit best, its parameters, and
    how many configurations were fitted (refit included)."""
    estimator, grid = peer(family, task)
    folds = folds_for(task, y, INNER, seed)
    search = GridSearchCV(
        estimator,
        grid,
        cv=folds,
        scoring="neg_root_mean_squared_error" if task == Task.REGRESSION else "neg_log_loss",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs and Adam iteration caps, on purpose
        search.fit(X, y)
    fits = len(search.cv_results_["params"]) * INNER + 1
    params = {k.rsplit("__", 1)[1]: v for k, v in search.best_params_.items()}
    return search.best_estimator_, params, fits


def peer_output(model: Any, task: Task, X: np.ndarray) -> np.ndarray:
    return model.predict(X) if task == Task.REGRESSION else model.predict_proba(X)


# -- ours -----------------------------------------------------------------------------------
def ours_fit(family: str, task: Task, X: np.ndarray, y: np.ndarray, seed: int) -> tuple[Any, int]:
    """The trainer's procedure on (X, y) with INNER-fold CV: the model and its fit count."""
    definition = Definition(
        name="bench", task=task, family=family, hidden=HIDDEN if family == "mlp" else (), seed=seed
    )
    config = procedure_config(definition, load(TrainerSettings).descent())
    classes = [str(c) for c in range(int(y.max()) + 1)] if task != Task.REGRESSION else []
    names = [f"f{i}" for i in range(X.shape[1])]
    trained = train(X, y, task, names, classes, config, DEFAULT_L2_GRID, INNER)
    if family == "gbdt":  # every (L2, leaves, rate) on every fold, then the refit
        tried = len(trained.l2_grid) * len(COMPLEXITY_GRID) * len(RATE_GRID)
    else:  # the grid and its refinements on every fold, then the refit
        tried = len(trained.l2_tried)
    return trained.model, tried * trained.cv_folds + 1


def scores(task: Task, y: np.ndarray, output: np.ndarray) -> dict[str, float]:
    metrics = evaluate(task, y, output)
    if task == Task.REGRESSION:
        return {"rmse": metrics["rmse"]}
    return {k: metrics[k] for k in ("accuracy", "log_loss", "macro_f1", "calibration_error")}


def nested_cv(key: str, data: DataSet, X: np.ndarray, y: np.ndarray, family: str) -> dict[str, Any]:
    """Both sides on the same outer folds, each choosing by its own inner CV."""
    ours: list[dict[str, float]] = []
    theirs: list[dict[str, float]] = []
    ours_s = theirs_s = 0.0
    ours_fits = theirs_fits = 0
    chosen: list[dict[str, Any]] = []
    for seed in data.seeds:
        for train_idx, test_idx in folds_for(data.task, y, data.outer, seed):
            start = time.perf_counter()
            model, fits = ours_fit(family, data.task, X[train_idx], y[train_idx], seed)
            ours_s += time.perf_counter() - start
            ours_fits += fits
            ours.append(scores(data.task, y[test_idx], model.output(X[test_idx])))
            start = time.perf_counter()
            best, params, fits = peer_fit(family, data.task, X[train_idx], y[train_idx], seed)
            theirs_s += time.perf_counter() - start
            theirs_fits += fits
            chosen.append(params)
            theirs.append(scores(data.task, y[test_idx], peer_output(best, data.task, X[test_idx])))
    return {
        "ours": _summary(ours),
        "theirs": _summary(theirs),
        "ours_s_per_fit": ours_s / ours_fits,
        "theirs_s_per_fit": theirs_s / theirs_fits,
        "ours_s": ours_s,
        "theirs_s": theirs_s,
        "theirs_params": _most_chosen(chosen),
    }


def _summary(per_fold: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in per_fold[0]:
        values = np.array([m[name] for m in per_fold])
        out[name] = float(values.mean())
        out[f"{name}_std"] = float(values.std())
    return out


def _most_chosen(chosen: list[dict[str, Any]]) -> dict[str, Any]:
    as_text = [json.dumps(c, sort_keys=True) for c in chosen]
    return json.loads(max(set(as_text), key=as_text.count))


# -- the held-out block, through the pipeline ---------------------------------------------------
def split(task: Task, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """70/30, stratified for classifiers, seed 0."""
    rng = np.random.default_rng(0)
    test = np.zeros(len(y), bool)
    groups = (
        [np.arange(len(y))]
        if task == Task.REGRESSION
        else [np.flatnonzero(y == c) for c in np.unique(y)]
    )
    for members in groups:
        members = rng.permutation(members)
        test[members[: round(0.3 * len(members))]] = True
    return np.flatnonzero(~test), np.flatnonzero(test)


async def published(
    base: Settings, keys: Path, name: str, X: np.ndarray, y: np.ndarray, task: Task, family: str
) -> Any:
    """Define, write (X, y) to `training`, run trainer, validator and publisher until the
    model is published; the verified artifact's scorer."""
    from aiokafka import AIOKafkaProducer

    codec = default_codec()
    definition = Definition(
        name=name,
        task=task,
        min_examples=20,
        cv_folds=INNER,
        family=family,
        hidden=HIDDEN if family == "mlp" else (),
        classes=tuple(str(c) for c in range(int(y.max()) + 1)) if task != Task.REGRESSION else (),
    )
    await send_command(base, command(name, Action.DEFINE, definition=definition))
    producer = AIOKafkaProducer(bootstrap_servers=base.bootstrap, linger_ms=5)
    await producer.start()
    sent = [
        await producer.send(
            base.topic("training"),
            key=name.encode(),
            value=codec.encode(
                TrainingExample,
                {
                    "model": name,
                    "features": row.tolist(),
                    "label": float(label) if task == Task.REGRESSION else str(label),
                },
            ),
        )
        for row, label in zip(X, y, strict=True)
    ]
    await asyncio.gather(*sent)
    await producer.stop()
    same = {
        "bootstrap_servers": base.bootstrap,
        "topic_prefix": base.topic_prefix,
        "public_key_file": keys / "modelstream.pub",
        "private_key_file": keys / "modelstream.key",
        "state_dir": base.state_dir,
    }
    apps = [
        TrainerApp(load(TrainerSettings, **same)),
        ValidatorApp(load(ValidatorSettings, **same)),
        PublisherApp(load(PublisherSettings, **same)),
    ]
    for app in apps:
        await app.start()
    tasks = [asyncio.create_task(app.run()) for app in apps]
    try:
        await send_command(base, command(name, Action.TRAIN))
        public = load_public_key(keys / "modelstream.pub")
        deadline = time.monotonic() + 1800
        while name not in (production := await load_production(base, public)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} was not published (did the gate reject it?)")
            await asyncio.sleep(0.5)
    finally:
        for app in apps:
            app.request_stop()
        await asyncio.gather(*tasks)
        for app in apps:
            await app.stop()
    return scorer_for(decrypt_tensors(production[name].body, None))


def held_out(
    base: Settings, keys: Path, key: str, data: DataSet, X: np.ndarray, y: np.ndarray, family: str
) -> dict[str, Any]:
    fit, test = split(data.task, y)
    name = f"{key.replace('_', '-')}-{family}"
    scorer = asyncio.run(published(base, keys, name, X[fit], y[fit], data.task, family))
    best, params, _ = peer_fit(family, data.task, X[fit], y[fit], 0)
    return {
        "ours": scores(data.task, y[test], scorer.score(X[test])),
        "theirs": scores(data.task, y[test], peer_output(best, data.task, X[test])),
        "theirs_params": params,
        "rows": [len(fit), len(test)],
    }


# -- the report -----------------------------------------------------------------------------
def within(
    task: Task, ours: float, theirs: float, rows: int, points: float, percent: float
) -> bool:
    """Accuracy at most max(``points``, one row) below; RMSE at most ``percent`` % above."""
    if task == Task.REGRESSION:
        return ours <= theirs * (1 + percent / 100)
    return ours >= theirs - max(points / 100, 1 / rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sets", default=",".join(DATASETS))
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--no-heldout", action="store_true")
    parser.add_argument("--no-nested", action="store_true", help="the held-out block only")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    results: dict[str, dict[str, Any]] = {}
    keys = Path(__import__("tempfile").mkdtemp(prefix="bench-keys-"))
    generate_keys(keys)
    with broker() as base:
        asyncio.run(create_topics(base))
        print(f"broker {base.bootstrap}, topics {base.topic_prefix}*")
        for key in args.sets.split(","):
            data = DATASETS[key]
            raw = data.load()
            X, y = np.asarray(raw.data, np.float64), np.asarray(raw.target)
            primary = "rmse" if data.task == Task.REGRESSION else "accuracy"
            out = results.setdefault(key, {"rows": len(y), "features": X.shape[1]})
            for family in args.families.split(","):
                if not args.no_nested:
                    _nested_block(out, key, data, X, y, family)
                if not args.no_heldout:
                    block = held_out(base, keys, key, data, X, y, family)
                    out[f"heldout_modelstream_{family}"] = _rounded(block["ours"])
                    out[f"heldout_sklearn_{family}"] = _rounded(block["theirs"])
                    out[f"heldout_sklearn_{family}_params"] = block["theirs_params"]
                    print(
                        f"{key:14} {family:6} held-out {block['rows'][1]} rows: {primary} "
                        f"published {block['ours'][primary]:.4f} | peer "
                        f"{block['theirs'][primary]:.4f} {block['theirs_params']}"
                    )
            _verdicts(
                out, data, len(y), args.families.split(","), not args.no_nested, not args.no_heldout
            )
    print(json.dumps(results))


def _nested_block(
    out: dict[str, Any], key: str, data: DataSet, X: np.ndarray, y: np.ndarray, family: str
) -> None:
    primary = "rmse" if data.task == Task.REGRESSION else "accuracy"
    nested = nested_cv(key, data, X, y, family)
    out[f"modelstream_{family}"] = _rounded(nested["ours"])
    out[f"sklearn_{family}"] = _rounded(nested["theirs"])
    out[f"sklearn_{family}_best_params"] = nested["theirs_params"]
    out[f"sklearn_{family}_grid"] = {
        k.rsplit("__", 1)[1]: v for k, v in peer(family, data.task)[1].items()
    }
    out[f"modelstream_{family}_s_per_fit"] = round(nested["ours_s_per_fit"], 4)
    out[f"sklearn_{family}_s_per_fit"] = round(nested["theirs_s_per_fit"], 4)
    ours_v, theirs_v = nested["ours"][primary], nested["theirs"][primary]
    # the earlier rounds' keys: the primary metric and the whole search's seconds
    short = "rmse" if primary == "rmse" else "acc"
    suffix = "" if family == "linear" and short == "acc" else f"_{family}"
    out[f"modelstream{suffix}_{short}"] = round(ours_v, 4)
    out[f"sklearn{suffix}_{short}"] = round(theirs_v, 4)
    out[f"modelstream{suffix}_s"] = round(nested["ours_s"], 3)
    out[f"sklearn{suffix}_s"] = round(nested["theirs_s"], 3)
    print(
        f"{key:14} {family:6} nested CV ({len(data.seeds)}x{data.outer} outer folds) "
        f"{primary} ours {ours_v:.4f} +- {nested['ours'][primary + '_std']:.4f} | "
        f"peer {theirs_v:.4f} +- {nested['theirs'][primary + '_std']:.4f} "
        f"{nested['theirs_params']} | s per fit {nested['ours_s_per_fit']:.4f} vs "
        f"{nested['theirs_s_per_fit']:.4f}"
    )


def _verdicts(
    out: dict[str, Any], data: DataSet, n: int, families: list[str], nested: bool, heldout: bool
) -> None:
    """The issue's targets, per data set: our best family within max(0.5 points, one row)
    of the best peer (3 % of RMSE); each family within 1 point (5 %) of its peer."""
    primary = "rmse" if data.task == Task.REGRESSION else "accuracy"
    lower = data.task == Task.REGRESSION
    blocks = ([("", max(1, n // data.outer))] if nested else []) + (
        [("heldout_", round(0.3 * n))] if heldout else []
    )
    for prefix, rows in blocks:
        ours = {f: out[f"{prefix}modelstream_{f}"][primary] for f in families}
        theirs = {f: out[f"{prefix}sklearn_{f}"][primary] for f in families}
        pick = min if lower else max
        best_ours, best_theirs = pick(ours.values()), pick(theirs.values())
        out[f"{prefix}best_within_target"] = within(
            data.task, best_ours, best_theirs, rows, 0.5, 3.0
        )
        for f in families:
            out[f"{prefix}{f}_within_target"] = within(
                data.task, ours[f], theirs[f], rows, 1.0, 5.0
            )
        print(
            f"  {prefix or 'nested '}targets: best {best_ours:.4f} vs {best_theirs:.4f} "
            f"-> {out[f'{prefix}best_within_target']}; "
            + ", ".join(f"{f} {out[f'{prefix}{f}_within_target']}" for f in families)
        )


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in metrics.items()}


if __name__ == "__main__":
    main()
