"""Model definitions and the rules an event must follow to be used with a model.

The same rules run in the trainer (deciding what to dead-letter), in the validator (when
it re-reads the examples named by a lineage) and in ``models reproduce``, so all three
see exactly the same dataset.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from modelstream.contracts.records import Action, Command, Features, Label, ModelDefinition, Task
from modelstream.errors import InvalidEventError

MAX_FEATURES = 100_000
MAX_REQUEST_ID = 256
MAX_NAME = 255  # model, feature and class names: Kafka keys, metric labels, JSON keys
MAX_WINDOW = 10_000_000
FAMILIES = ("linear", "mlp", "gbdt")  # what the trainer makes
MAX_HIDDEN_LAYERS = 8
MAX_HIDDEN_UNITS = 4096
DEFAULT_HIDDEN: tuple[int, ...] = (64,)
# Labelled examples the monitor writes to ``training`` carry this example-id prefix. One in
# ONLINE_HOLDOUT_MODULUS of them is never learned online, so the validator can judge
# online-learned candidates on rows they have not seen.
FEEDBACK_EXAMPLE_PREFIX = "feedback:"
ONLINE_HOLDOUT_MODULUS = 5


@dataclass(frozen=True)
class Definition:
    """What a DEFINE command says about a model (see Command.avsc: ModelDefinition)."""

    name: str
    task: Task
    feature_names: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    retrain_every: int = 0
    min_examples: int = 50
    window_size: int = 20000
    cv_folds: int = 5
    thresholds: Mapping[str, float] = field(default_factory=dict)
    tolerance: float = 0.01
    l2_grid: tuple[float, ...] = ()
    seed: int = 0
    family: str = "linear"
    hidden: tuple[int, ...] = ()

    @classmethod
    def from_command(cls, command: Command) -> Definition:
        d = command["definition"]
        if d is None:
            raise InvalidEventError("invalid-command", "DEFINE command without a definition")
        definition = cls(
            name=command["model"],
            task=Task(d["task"]),
            feature_names=tuple(d["feature_names"]),
            classes=tuple(d["classes"]),
            retrain_every=d["retrain_every"],
            min_examples=d["min_examples"],
            window_size=d["window_size"],
            cv_folds=d["cv_folds"],
            thresholds=dict(d["thresholds"]),
            tolerance=d["tolerance"],
            l2_grid=tuple(d["l2_grid"]),
            seed=d["seed"],
            family=d.get("family", "linear"),
            hidden=tuple(d.get("hidden", ())),
        )
        definition.check()
        return definition

    def check(self) -> None:
        problems = []
        if self.task not in Task.__members__:
            problems.append(f"task must be one of {list(Task)}")
        if self.task == "BINARY" and self.classes and len(self.classes) != 2:
            problems.append("a binary model has exactly 2 classes")
        if self.task in ("REGRESSION", "EMBEDDING") and self.classes:
            problems.append(f"a {self.task.lower()} model has no classes")
        if self.task == "EMBEDDING" and self.retrain_every:
            problems.append("an embedding model is imported, not trained: no retrain_every")
        if len(set(self.feature_names)) != len(self.feature_names):
            problems.append("feature names must be unique")
        if len(self.feature_names) > MAX_FEATURES:
            problems.append(f"at most {MAX_FEATURES} features")
        if len(set(self.classes)) != len(self.classes):
            problems.append("classes must be unique")
        for kind, names in (("feature", self.feature_names), ("class", self.classes)):
            bad = next((n for n in names if not _valid_name(n)), None)
            if bad is not None:
                problems.append(
                    f"{kind} name {bad[:40]!r} must have 1..{MAX_NAME} printable characters"
                )
        if not all(
            math.isfinite(v) for v in (self.tolerance, *self.l2_grid, *self.thresholds.values())
        ):
            problems.append("tolerance, l2_grid and thresholds must be finite")
        if max(self.window_size, self.min_examples, self.cv_folds) > MAX_WINDOW:
            problems.append(f"window_size, min_examples and cv_folds must be <= {MAX_WINDOW}")
        if self.window_size < 2 or self.min_examples < 2 or self.cv_folds < 2:
            problems.append("window_size, min_examples and cv_folds must be >= 2")
        if self.retrain_every < 0 or self.tolerance < 0:
            problems.append("retrain_every and tolerance must be >= 0")
        if any(v <= 0 for v in self.l2_grid):
            problems.append("l2_grid values must be > 0")
        if self.family not in FAMILIES:
            problems.append(f"family must be one of {list(FAMILIES)}")
        if self.hidden and self.family != "mlp":
            problems.append("hidden layer sizes are for the mlp family")
        if len(self.hidden) > MAX_HIDDEN_LAYERS or any(
            not 1 <= h <= MAX_HIDDEN_UNITS for h in self.hidden
        ):
            problems.append(
                f"at most {MAX_HIDDEN_LAYERS} hidden layers of 1..{MAX_HIDDEN_UNITS} units"
            )
        for key in self.thresholds:
            if not key.startswith(("min_", "max_")):
                problems.append(f"threshold {key!r} must start with min_ or max_")
        if problems:
            raise InvalidEventError("invalid-definition", f"{self.name}: " + "; ".join(problems))

    def to_record(self) -> ModelDefinition:
        return {
            "task": self.task,
            "feature_names": list(self.feature_names),
            "classes": list(self.classes),
            "retrain_every": self.retrain_every,
            "min_examples": self.min_examples,
            "window_size": self.window_size,
            "cv_folds": self.cv_folds,
            "thresholds": dict(self.thresholds),
            "tolerance": self.tolerance,
            "l2_grid": list(self.l2_grid),
            "seed": self.seed,
            "family": self.family,
            "hidden": list(self.hidden),
        }

    def fixed(self, feature_names: Sequence[str], classes: Sequence[str]) -> Definition:
        return replace(self, feature_names=tuple(feature_names), classes=tuple(classes))


def _valid_name(name: str) -> bool:
    return 0 < len(name) <= MAX_NAME and name.isprintable()


def check_model_name(name: str) -> None:
    """A model name is a Kafka key, a metric label and part of file names in exports."""
    if not _valid_name(name):
        raise InvalidEventError(
            "bad-model-name",
            f"model name {name[:40]!r} must have 1..{MAX_NAME} printable characters",
        )


def check_command(cmd: Command) -> None:
    """What any reader of ``control`` can check without knowing the registry: the name, and
    the values the action needs. Whether the model or version exists is the publisher's to
    say (it knows both)."""
    check_model_name(cmd["model"])
    action = cmd["action"]
    if action == Action.DEFINE:
        Definition.from_command(cmd)
    elif action == Action.ROLLBACK:
        if cmd["version"] is None or cmd["version"] < 1:
            raise InvalidEventError("invalid-command", "ROLLBACK needs a version >= 1")
    elif action == Action.SET_TRAFFIC:
        split = cmd["traffic"]
        if split is None:
            raise InvalidEventError("invalid-command", "SET_TRAFFIC needs a traffic split")
        challenger = split["challenger_version"]
        if challenger is not None and challenger < 1:
            raise InvalidEventError("invalid-command", "the challenger version must be >= 1")
        if not 0.0 <= split["fraction"] <= 1.0:
            raise InvalidEventError("invalid-command", "the traffic fraction must be in [0, 1]")


# -- features ----------------------------------------------------------------------------
def infer_feature_names(features: Features) -> list[str]:
    """Names from a first example: a map's keys in order, else f0..f{n-1}."""
    if isinstance(features, Mapping):
        return list(features)
    if isinstance(features, bytes | bytearray | memoryview):
        return [f"f{i}" for i in range(len(features) // 8)]
    return [f"f{i}" for i in range(len(features))]


def features_id(names: Sequence[str]) -> bytes:
    """A short identity of a feature list (names and order): rows scored with one list are
    learned only by a model over the same list."""
    return hashlib.sha256("\0".join(names).encode()).digest()[:8]


def feature_vector(features: Features | np.ndarray, names: Sequence[str]) -> np.ndarray:
    """One example's features in ``names`` order; raises InvalidEventError with a reason."""
    d = len(names)
    if isinstance(features, Mapping):
        if len(features) != d or any(n not in features for n in names):
            missing = [n for n in names if n not in features]
            extra = [k for k in features if k not in set(names)]
            if missing:
                raise InvalidEventError(
                    "missing-features",
                    f"missing features {missing[:5]}"
                    + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""),
                )
            raise InvalidEventError("extra-features", f"unknown features {extra[:5]}")
        row = np.fromiter((features[n] for n in names), dtype=np.float64, count=d)
    elif isinstance(features, bytes | bytearray | memoryview):
        if len(features) != 8 * d:
            raise InvalidEventError(
                "wrong-feature-count",
                f"packed features have {len(features)} bytes, the model needs {8 * d}",
            )
        row = np.frombuffer(features, dtype="<f8").astype(np.float64)
    else:
        if len(features) != d:
            raise InvalidEventError(
                "wrong-feature-count", f"{len(features)} features, the model needs {d}"
            )
        row = np.asarray(features, dtype=np.float64)
    if not np.all(np.isfinite(row)):
        raise InvalidEventError("non-finite", "features contain NaN or infinity")
    return row


def class_label(label: object, task: Task, classes: Sequence[str]) -> str:
    """A classifier's label as its class string; integral numbers are accepted as '3'."""
    if isinstance(label, str):
        text = label
    elif isinstance(label, float) and math.isfinite(label) and label.is_integer():
        text = str(int(label))
    else:
        raise InvalidEventError(
            "wrong-label-type", f"{task.lower()} label must be a class name, got {label!r}"
        )
    if classes and text not in classes:
        raise InvalidEventError("unknown-class", f"label {text!r} is not one of {list(classes)}")
    return text


def regression_label(label: object) -> float:
    if isinstance(label, str) or not isinstance(label, int | float):
        raise InvalidEventError(
            "wrong-label-type", f"regression label must be a number, got {label!r}"
        )
    if not math.isfinite(label):
        raise InvalidEventError("non-finite", "label is NaN or infinity")
    return float(label)


def check_label(label: object, definition: Definition) -> Label:
    if definition.task == Task.REGRESSION:
        return regression_label(label)
    return class_label(label, definition.task, definition.classes)


def labels_to_targets(labels: Sequence[Label], task: Task, classes: Sequence[str]) -> np.ndarray:
    if task == Task.REGRESSION:
        return np.asarray(labels, dtype=np.float64)
    index = {c: i for i, c in enumerate(classes)}
    return np.fromiter((index[str(v)] for v in labels), dtype=np.int64, count=len(labels))


def sorted_classes(labels: Sequence[str]) -> list[str]:
    """Inferred class order: numeric labels numerically ('2' < '10'), others lexically."""
    unique = set(labels)
    try:
        return sorted(unique, key=float)
    except ValueError:
        return sorted(unique)


def check_feature_count(names: Sequence[str]) -> None:
    """Names inferred from a first example must make a valid definition."""
    if len(names) == 0 or len(names) > MAX_FEATURES:
        raise InvalidEventError(
            "wrong-feature-count", f"a model needs 1..{MAX_FEATURES} features, got {len(names)}"
        )
    bad = next((n for n in names if not _valid_name(n)), None)
    if bad is not None:
        raise InvalidEventError(
            "bad-feature-name",
            f"feature name {bad[:40]!r} must have 1..{MAX_NAME} printable characters",
        )


def check_request_id(request_id: str, key: bytes | None) -> None:
    """A request id joins requests, predictions and feedback: it must be usable as the
    Kafka key all three are partitioned by."""
    if not request_id or len(request_id) > MAX_REQUEST_ID:
        raise InvalidEventError(
            "bad-request-id", f"request id must have 1..{MAX_REQUEST_ID} characters"
        )
    if not request_id.isprintable():
        raise InvalidEventError("bad-request-id", "request id has control characters")
    if key is not None and key != request_id.encode():
        raise InvalidEventError(
            "bad-request-id",
            "the record key differs from the request id, so the record "
            "is not co-partitioned with its request and prediction",
        )


def in_online_holdout(request_id: str) -> bool:
    """Whether a labelled request is held out of online learning (stable across processes)."""
    return zlib.crc32(request_id.encode()) % ONLINE_HOLDOUT_MODULUS == 0


def unseen_by_online_learning(example_id: str | None) -> bool:
    """Whether a ``training`` row can judge an online-learned candidate: rows the monitor
    wrote are usable only if held out of online learning; other rows never reach it."""
    if example_id is None or not example_id.startswith(FEEDBACK_EXAMPLE_PREFIX):
        return True
    return in_online_holdout(example_id[len(FEEDBACK_EXAMPLE_PREFIX) :])
