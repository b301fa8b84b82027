"""Model quality and training cost against scikit-learn, through the real broker.

Streams scikit-learn's breast-cancer, digits and diabetes (regression) data sets to
``training``; the trainer (L2 chosen by 5-fold CV over its grid) and the validator
(5-fold CV re-read from Kafka) run in-process, for each family: linear, mlp (one hidden
layer of 64) and gbdt (LightGBM). scikit-learn does the same procedure on the same data:
GridSearchCV over the equivalent grid (C = 1/(n·λ) for LogisticRegression, alpha = n·λ for
MLPClassifier/MLPRegressor and Ridge), then the chosen model on exactly the validator's
folds; HistGradientBoosting beside gbdt (reported, no target).

    python bench/quality.py            # last line: one JSON object
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
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
from modelstream.contracts.limits import INTERNAL
from modelstream.contracts.records import TrainingExample, ValidationReport
from modelstream.kafka.control import send_command
from modelstream.learn.cv import folds_for
from modelstream.learn.procedure import DEFAULT_L2_GRID
from modelstream.services.trainer.app import TrainerApp
from modelstream.services.trainer.settings import TrainerSettings
from modelstream.services.validator.app import ValidatorApp
from modelstream.services.validator.settings import ValidatorSettings
from modelstream.settings import Settings, load
from modelstream.telemetry import (
    CROSS_VALIDATION_SECONDS,
    TRAINING_SECONDS,
    VALIDATION_SECONDS,
)

FOLDS = 5
SEED = 0
DATASETS = {
    "breast_cancer": (load_breast_cancer, "BINARY"),
    "digits": (load_digits, "MULTICLASS"),
    "diabetes": (load_diabetes, "REGRESSION"),
}
HIDDEN = (64,)


async def modelstream_run(
    settings: Settings, name: str, X: np.ndarray, y: np.ndarray, task: str, family: str = "linear"
) -> tuple[float, float]:
    codec = default_codec()
    trainer = TrainerApp(load(TrainerSettings, **_same(settings)))
    validator = ValidatorApp(load(ValidatorSettings, **_same(settings), allow_unsigned=True))
    await send_command(
        settings,
        command(
            name,
            "DEFINE",
            definition=Definition(
                name=name,
                task=task,
                min_examples=50,
                cv_folds=FOLDS,
                seed=SEED,
                family=family,
                hidden=HIDDEN if family == "mlp" else (),
            ),
        ),
    )
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, linger_ms=5)
    await producer.start()
    futures = [
        await producer.send(
            settings.topic("training"),
            key=name.encode(),
            value=codec.encode(
                TrainingExample,
                {
                    "model": name,
                    "features": row.tolist(),
                    "label": float(label) if task == "REGRESSION" else str(label),
                },
            ),
        )
        for row, label in zip(X, y, strict=True)
    ]
    await asyncio.gather(*futures)
    await producer.stop()
    for app in (trainer, validator):
        await app.start()
    tasks = [asyncio.create_task(app.run()) for app in (trainer, validator)]
    await send_command(settings, command(name, "TRAIN"))
    report = await _first_report(settings, name)
    for app in (trainer, validator):
        app.request_stop()
    await asyncio.gather(*tasks)
    for app in (trainer, validator):
        await app.stop()
    if not report["passed"]:
        print(f"  note: the gate rejected it: {report['reasons']}")
    compute = (
        TRAINING_SECONDS.labels(name)._sum.get() + CROSS_VALIDATION_SECONDS.labels(name)._sum.get()
    )
    wall = TRAINING_SECONDS.labels(name)._sum.get() + VALIDATION_SECONDS.labels(name)._sum.get()
    print(
        f"  {name}: trainer {TRAINING_SECONDS.labels(name)._sum.get():.3f}s, validator CV "
        f"{CROSS_VALIDATION_SECONDS.labels(name)._sum.get():.3f}s, validator with its Kafka "
        f"re-read {VALIDATION_SECONDS.labels(name)._sum.get():.3f}s (wall incl. I/O {wall:.3f}s)"
    )
    metric = "rmse_mean" if task == "REGRESSION" else "accuracy_mean"
    return report["metrics"][metric], compute


async def _first_report(settings: Settings, name: str) -> dict:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        settings.topic("validations"),
        group_id=None,
        bootstrap_servers=settings.bootstrap,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    report = default_codec().decode(record.value, ValidationReport, INTERNAL)
                    if report["model"] == name:
                        return report
    finally:
        await consumer.stop()


def _same(settings: Settings) -> dict:
    return {"bootstrap_servers": settings.bootstrap, "topic_prefix": settings.topic_prefix}


def sklearn_run(X: np.ndarray, y: np.ndarray, task: str, family: str) -> tuple[float, float]:
    """The same procedure: choose the penalty by 5-fold CV over the equivalent grid, then CV
    of the chosen model on our exact folds. Accuracy (classification) or RMSE."""
    n = len(y)
    regression = task == "REGRESSION"
    if family == "linear":
        estimator: Any = Ridge() if regression else LogisticRegression(max_iter=1000)
        key = "alpha" if regression else "C"
        values = [n * l2 if regression else 1.0 / (n * l2) for l2 in DEFAULT_L2_GRID]
    elif family == "mlp":
        estimator = (MLPRegressor if regression else MLPClassifier)(
            hidden_layer_sizes=HIDDEN, max_iter=200, early_stopping=True, random_state=SEED
        )
        key, values = "alpha", [n * l2 for l2 in DEFAULT_L2_GRID]
    else:
        estimator = (
            HistGradientBoostingRegressor if regression else HistGradientBoostingClassifier
        )(l2_regularization=0.0, random_state=SEED)
        key, values = "l2_regularization", list(DEFAULT_L2_GRID)
    name = type(estimator).__name__.lower()
    grid = {f"{name}__{key}": values}
    folds = list(folds_for(task, y, FOLDS, SEED))  # the validator's own folds
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search = GridSearchCV(
            make_pipeline(StandardScaler(), estimator),
            grid,
            cv=folds,
            scoring="neg_root_mean_squared_error" if regression else "accuracy",
        )
        search.fit(X, y)
        chosen = search.best_params_
        scores = []
        for train, test in folds:
            pipe = make_pipeline(StandardScaler(), estimator).set_params(**chosen)
            predicted = pipe.fit(X[train], y[train]).predict(X[test])
            if regression:
                scores.append(float(np.sqrt(np.mean((predicted - y[test]) ** 2))))
            else:
                scores.append(float(np.mean(predicted == y[test])))
    return float(np.mean(scores)), time.perf_counter() - start


def main() -> None:
    results: dict[str, dict[str, float]] = {}
    with broker() as settings:
        print(f"broker {settings.bootstrap}, topics {settings.topic_prefix}*")
        for key, (loader, task) in DATASETS.items():
            data = loader()
            X, y = data.data.astype(np.float64), data.target
            metric = "rmse" if task == "REGRESSION" else "acc"
            out = results.setdefault(key, {})
            for family in ("linear", "mlp", "gbdt"):
                name = f"{key.replace('_', '-')}-{family}"
                ours, ours_s = asyncio.run(modelstream_run(settings, name, X, y, task, family))
                theirs, theirs_s = sklearn_run(X, y, task, family)
                # the first round's keys (linear, accuracy) keep their names
                suffix = "" if family == "linear" and metric == "acc" else f"_{family}"
                out[f"modelstream{suffix}_{metric}"] = round(ours, 4)
                out[f"sklearn{suffix}_{metric}"] = round(theirs, 4)
                out[f"modelstream{suffix}_s"] = round(ours_s, 3)
                out[f"sklearn{suffix}_s"] = round(theirs_s, 3)
                better = "lower is better" if metric == "rmse" else "higher is better"
                print(
                    f"{key:14} {family:6} n={len(y):5} d={X.shape[1]:3}  modelstream {metric} "
                    f"{ours:.4f} in {ours_s:.2f}s  |  scikit-learn {theirs:.4f} in "
                    f"{theirs_s:.2f}s ({better}); time ratio {ours_s / theirs_s:.2f}x"
                )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
