"""Model quality and training cost against scikit-learn, through the real broker.

Streams scikit-learn's breast-cancer and digits data sets to ``training``; the trainer
(L2 chosen by 5-fold CV over its grid) and the validator (stratified 5-fold CV re-read from
Kafka) run in-process. scikit-learn does the same procedure on the same data: GridSearchCV
over the equivalent C grid, then StandardScaler + LogisticRegression on exactly the
validator's folds.

    python bench/quality.py            # last line: one JSON object
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import broker

from modelstream.contracts.builders import command
from modelstream.contracts.codec import default_codec
from modelstream.contracts.definitions import Definition
from modelstream.contracts.records import TrainingExample, ValidationReport
from modelstream.kafka.control import send_command
from modelstream.learn.cv import stratified_kfold
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
DATASETS = {"breast_cancer": (load_breast_cancer, "BINARY"), "digits": (load_digits, "MULTICLASS")}


async def modelstream_run(
    settings: Settings, name: str, X: np.ndarray, y: np.ndarray, task: str
) -> tuple[float, float]:
    codec = default_codec()
    trainer = TrainerApp(load(TrainerSettings, **_same(settings)))
    validator = ValidatorApp(load(ValidatorSettings, **_same(settings), allow_unsigned=True))
    await send_command(
        settings,
        command(
            name,
            "DEFINE",
            definition=Definition(name=name, task=task, min_examples=50, cv_folds=FOLDS, seed=SEED),
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
                TrainingExample, {"model": name, "features": row.tolist(), "label": str(label)}
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
    return report["metrics"]["accuracy_mean"], compute


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
                    report = default_codec().decode(record.value, ValidationReport)
                    if report["model"] == name:
                        return report
    finally:
        await consumer.stop()


def _same(settings: Settings) -> dict:
    return {"bootstrap_servers": settings.bootstrap, "topic_prefix": settings.topic_prefix}


def sklearn_run(X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The same procedure: choose C (= 1/(n·λ)) by 5-fold CV, then CV on our exact folds."""
    n = len(y)
    grid = {"logisticregression__C": [1.0 / (n * l2) for l2 in DEFAULT_L2_GRID]}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search = GridSearchCV(
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
            grid,
            cv=StratifiedKFold(FOLDS, shuffle=True, random_state=SEED),
        )
        search.fit(X, y)
        best_c = search.best_params_["logisticregression__C"]
        scores = []
        for train, test in stratified_kfold(y, FOLDS, SEED):
            pipe = make_pipeline(StandardScaler(), LogisticRegression(C=best_c, max_iter=1000))
            scores.append(pipe.fit(X[train], y[train]).score(X[test], y[test]))
    return float(np.mean(scores)), time.perf_counter() - start


def main() -> None:
    results: dict[str, dict[str, float]] = {}
    with broker() as settings:
        print(f"broker {settings.bootstrap}, topics {settings.topic_prefix}*")
        for key, (loader, task) in DATASETS.items():
            data = loader()
            X, y = data.data.astype(np.float64), data.target
            name = key.replace("_", "-")
            ms_acc, ms_s = asyncio.run(modelstream_run(settings, name, X, y, task))
            sk_acc, sk_s = sklearn_run(X, y)
            results[key] = {
                "modelstream_acc": round(ms_acc, 4),
                "sklearn_acc": round(sk_acc, 4),
                "modelstream_s": round(ms_s, 3),
                "sklearn_s": round(sk_s, 3),
            }
            print(
                f"{key:14} n={len(y):5} d={X.shape[1]:3}  modelstream acc {ms_acc:.4f} in "
                f"{ms_s:.2f}s  |  scikit-learn acc {sk_acc:.4f} in {sk_s:.2f}s  |  "
                f"Δacc {100 * (ms_acc - sk_acc):+.2f} pts, time ratio {ms_s / sk_s:.2f}x"
            )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
