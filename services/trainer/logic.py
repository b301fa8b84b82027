"""Per-model training windows and candidate building; pure Python/numpy, no Kafka."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelstream.contracts.definitions import (
    DEFAULT_HIDDEN,
    Definition,
    check_feature_count,
    check_label,
    feature_vector,
    infer_feature_names,
    labels_to_targets,
    sorted_classes,
)
from modelstream.contracts.records import (
    Label,
    ModelArtifact,
    ModelBody,
    OffsetRange,
    Task,
    TrainingExample,
)
from modelstream.errors import InvalidEventError
from modelstream.learn.gbdt import LEARNING_RATE
from modelstream.learn.mlp import mlp_config
from modelstream.learn.procedure import DEFAULT_L2_GRID, TrainedModel, train
from modelstream.learn.sgd import GDConfig
from modelstream.registry.artifact import seal_candidate
from modelstream.registry.trained import trained_candidate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    partition: int
    offset: int
    x: np.ndarray
    label: Label


@dataclass
class ModelWindow:
    """The newest ``window_size`` valid examples of one model, and what is due."""

    definition: Definition
    examples: deque[Example] = field(default_factory=deque)
    new_since_training: int = 0
    train_requested: bool = False

    def __post_init__(self) -> None:
        self.examples = deque(self.examples, maxlen=self.definition.window_size)

    def redefine(self, definition: Definition) -> None:
        kept = list(self.examples)
        self.definition = definition
        self.examples = deque(kept, maxlen=definition.window_size)

    @property
    def due(self) -> bool:
        d = self.definition
        enough = len(self.examples) >= d.min_examples
        by_count = d.retrain_every > 0 and self.new_since_training >= d.retrain_every
        return enough and (self.train_requested or by_count)


@dataclass(frozen=True)
class Candidate:
    body: ModelBody
    trained: TrainedModel
    inferred: Definition | None  # set when feature names or classes were just fixed


class TrainingError(InvalidEventError):
    pass


class TrainerLogic:
    def __init__(self, gd: GDConfig) -> None:
        self.gd = gd
        self.windows: dict[str, ModelWindow] = {}

    def define(self, definition: Definition) -> None:
        window = self.windows.get(definition.name)
        if window is None:
            self.windows[definition.name] = ModelWindow(definition)
        else:
            window.redefine(definition)

    def require_model(self, model: str) -> None:
        if model not in self.windows:
            raise InvalidEventError("unknown-model", f"no model named {model!r} is defined")

    def request_training(self, model: str) -> None:
        self.require_model(model)
        self.windows[model].train_requested = True

    def accept(
        self, example: TrainingExample, partition: int, offset: int, *, count_as_new: bool = True
    ) -> bool:
        """Validate one TrainingExample and add it to its model's window. False for an
        example that is not the trainer's: one that carries tensors only (it labels an
        imported tensor model, which the validator judges on such rows), or one of an
        embedding model (nothing to train)."""
        name = example["model"]
        window = self.windows.get(name)
        if window is None:
            raise InvalidEventError("unknown-model", f"no model named {name!r} is defined")
        d = window.definition
        if d.task == Task.EMBEDDING or (example.get("tensors") and not example["features"]):
            return False
        names = d.feature_names
        if not names:
            names = tuple(infer_feature_names(example["features"]))
            check_feature_count(names)
            d = d.fixed(names, d.classes)
            window.redefine(d)  # fixed from now on
        x = feature_vector(example["features"], names)
        label = check_label(example["label"], d)
        window.examples.append(Example(partition, offset, x, label))
        if count_as_new:
            window.new_since_training += 1
        return True

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        for window in self.windows.values():
            kept = [e for e in window.examples if e.partition not in gone]
            window.examples = deque(kept, maxlen=window.definition.window_size)

    def due_models(self) -> list[str]:
        return sorted(name for name, w in self.windows.items() if w.due)

    def build_candidate(self, name: str, topic: str, parent_version: int | None) -> Candidate:
        """Train on the window and wrap the result as an (unsigned) candidate artifact."""
        window = self.windows[name]
        d = window.definition
        examples = list(window.examples)
        labels = [e.label for e in examples]
        classes: tuple[str, ...] = d.classes
        if d.task != Task.REGRESSION and not classes:
            classes = tuple(sorted_classes([str(v) for v in labels]))
        if d.task == Task.BINARY and len(classes) != 2:
            raise TrainingError(
                "too-few-classes", f"binary model {name!r} has seen classes {list(classes)}"
            )
        if d.task == Task.MULTICLASS and len(classes) < 2:
            raise TrainingError("too-few-classes", f"{name!r} has seen only {list(classes)}")
        inferred = d.fixed(d.feature_names, classes) if classes != d.classes else None
        X = np.vstack([e.x for e in examples])
        y = labels_to_targets(labels, d.task, classes)
        trained = train(
            X,
            y,
            d.task,
            d.feature_names,
            classes,
            procedure_config(d, self.gd),
            d.l2_grid or DEFAULT_L2_GRID,
            d.cv_folds,
        )
        body = trained_candidate(
            name, trained, lineage_ranges(topic, examples), len(examples), parent_version
        )
        return Candidate(body, trained, inferred)

    def trained(self, name: str) -> None:
        window = self.windows[name]
        window.new_since_training = 0
        window.train_requested = False


def procedure_config(d: Definition, gd: GDConfig) -> GDConfig:
    """The hyper-parameters the trainer runs a definition's family with: the service's
    descent settings (``gd``), the definition's seed, and each family's own."""
    config = GDConfig(
        learning_rate=gd.learning_rate,
        lr_decay=gd.lr_decay,
        momentum=gd.momentum,
        batch_size=gd.batch_size,
        max_epochs=gd.max_epochs,
        patience=gd.patience,
        validation_fraction=gd.validation_fraction,
        seed=d.seed,
    )
    if d.family == "mlp":
        return mlp_config(config, d.hidden or DEFAULT_HIDDEN)
    if d.family == "gbdt":
        return replace(config, family="gbdt", learning_rate=LEARNING_RATE)
    return config


def lineage_ranges(topic: str, examples: Iterable[Example]) -> list[OffsetRange]:
    bounds: dict[int, list[int]] = {}
    for e in examples:
        lo_hi = bounds.setdefault(e.partition, [e.offset, e.offset])
        lo_hi[0] = min(lo_hi[0], e.offset)
        lo_hi[1] = max(lo_hi[1], e.offset)
    return [
        {"topic": topic, "partition": p, "start": lo, "end": hi + 1}
        for p, (lo, hi) in sorted(bounds.items())
    ]


def sealed_candidate(candidate: Candidate, trainer_key: Ed25519PrivateKey | None) -> ModelArtifact:
    """A candidate signed by the trainer's key: the validator checks who made it, and
    trainers take lineage from nothing else."""
    return seal_candidate(candidate.body, trainer_key)
