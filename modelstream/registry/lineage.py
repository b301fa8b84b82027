"""Re-reading the examples a model was trained on, straight from the ``training`` log.

The validator uses this instead of trusting the trainer's numbers, and
``models reproduce`` uses it to retrain a published version bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelstream.contracts.codec import default_codec
from modelstream.contracts.definitions import (
    Definition,
    check_label,
    feature_vector,
    labels_to_targets,
)
from modelstream.contracts.records import TrainingExample
from modelstream.errors import InvalidEventError
from modelstream.kafka.boundary import record_failure
from modelstream.kafka.clients import OffsetRange, read_ranges
from modelstream.learn.procedure import TrainedModel, train
from modelstream.learn.sgd import GDConfig
from modelstream.settings import Settings


@dataclass(frozen=True)
class LineageDataset:
    X: np.ndarray
    y: np.ndarray
    positions: list[tuple[str, int, int]]  # (topic, partition, offset) of each row
    skipped: int  # records of this model inside the ranges that fail its rules


def within_lineage(positions: list[tuple[str, int, int]], body: Mapping[str, Any]) -> np.ndarray:
    """Which positions fall inside ``body``'s lineage ranges (the rows it trained on)."""
    ranges = body["lineage"]["ranges"]
    return np.array(
        [
            any(
                r["topic"] == t and r["partition"] == p and r["start"] <= o < r["end"]
                for r in ranges
            )
            for t, p, o in positions
        ],
        dtype=bool,
    )


# the family a recorded training algorithm belongs to
FAMILY_OF_ALGORITHM = {"minibatch-gd": "linear", "minibatch-adam": "mlp", "lightgbm": "gbdt"}


def config_from_record(training: Mapping[str, Any]) -> GDConfig:
    extra = training.get("hyperparameters") or {}
    return GDConfig(
        l2=training["l2"],
        learning_rate=training["learning_rate"],
        lr_decay=training["lr_decay"],
        batch_size=training["batch_size"],
        max_epochs=training["max_epochs"],
        patience=training["patience"],
        validation_fraction=training["validation_fraction"],
        seed=training["seed"],
        hidden=tuple(training.get("hidden", ())),
        family=FAMILY_OF_ALGORITHM.get(training["algorithm"], "linear"),
        num_leaves=int(extra.get("num_leaves", 31)),
        min_data_in_leaf=int(extra.get("min_data_in_leaf", 20)),
    )


async def load_lineage(settings: Settings, body: Mapping[str, Any]) -> LineageDataset:
    """The examples of ``body['name']`` inside its lineage ranges that pass the same rules
    the trainer applied (feature names and classes as recorded in the artifact)."""
    codec = default_codec()
    rules = Definition(
        name=body["name"],
        task=body["task"],
        feature_names=tuple(body["feature_names"]),
        classes=tuple(body["classes"]),
    )
    ranges = [
        OffsetRange(r["topic"], r["partition"], r["start"], r["end"])
        for r in body["lineage"]["ranges"]
    ]
    rows: list[np.ndarray] = []
    labels: list[str | float] = []
    positions: list[tuple[str, int, int]] = []
    skipped = 0
    async for record in read_ranges(settings, ranges):
        try:
            example = codec.decode_any(record.value, TrainingExample, settings.limits())
        except Exception as exc:
            if record_failure(exc) is None:
                raise
            continue  # not an example of any model (dead-lettered by the trainer)
        if example["model"] != rules.name:
            continue
        try:
            row = feature_vector(example["features"], rules.feature_names)
            label = check_label(example["label"], rules)
        except InvalidEventError:
            skipped += 1
            continue
        rows.append(row)
        labels.append(label)
        positions.append((record.topic, record.partition, record.offset))
    d = len(rules.feature_names)
    X = np.vstack(rows) if rows else np.empty((0, d))
    y = labels_to_targets(labels, rules.task, rules.classes)
    return LineageDataset(X, y, positions, skipped)


def retrain(body: Mapping[str, Any], data: LineageDataset) -> TrainedModel:
    """Run the recorded procedure (grid, folds, seed) on the re-read examples."""
    training = body["training"]
    return train(
        data.X,
        data.y,
        body["task"],
        body["feature_names"],
        body["classes"],
        config_from_record(training),
        training["l2_grid"],
        training["cv_folds"],
    )
