"""A trained linear model as the predictor, validator and monitor score it.

Scoring is standardize -> linear layer -> link (sigmoid, softmax or identity), over a whole
matrix at once; this is the same math the trainer optimizes.

>>> import numpy as np
>>> m = LinearModel(Task.BINARY, ["x"], ["0", "1"], np.array([[2.0]]), np.array([0.0]),
...                 np.array([0.0]), np.array([1.0]))
>>> m.proba(np.array([[0.0]])).round(2).tolist()
[[0.5, 0.5]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from modelstream.contracts.builders import LinearTensors
from modelstream.contracts.records import ModelBody, Task
from modelstream.errors import ArtifactVerificationError
from modelstream.learn.objectives import link
from modelstream.registry.artifact import from_tensor, to_tensor


@dataclass(frozen=True)
class LinearModel:
    task: Task
    feature_names: list[str]
    classes: list[str]
    W: np.ndarray  # d × k
    b: np.ndarray  # k
    mean: np.ndarray  # d
    scale: np.ndarray  # d

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def linear(self, X: np.ndarray) -> np.ndarray:
        z: np.ndarray = ((X - self.mean) / self.scale) @ self.W + self.b
        return z

    def proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (n × n_classes); for regression, the predicted values (n)."""
        return link(self.task, self.linear(X))

    def output(self, X: np.ndarray) -> np.ndarray:
        return self.proba(X)

    @property
    def categorical(self) -> list[str]:
        """The linear families take numeric features only."""
        return []

    def score(
        self, X: np.ndarray, categories: object = None, tensor_rows: object = None
    ) -> np.ndarray:
        """:meth:`proba`, under the name every served kind shares (``categories`` and
        ``tensor_rows`` unused)."""
        return self.proba(X)

    @classmethod
    def from_body(cls, body: ModelBody) -> LinearModel:
        """Build from a (decrypted) artifact body, checking that every shape agrees."""
        return cls.from_tensors(Task(body["task"]), body["feature_names"], body["classes"], body)

    @classmethod
    def from_tensors(
        cls,
        task: Task,
        feature_names: Sequence[str],
        classes: Sequence[str],
        tensors: LinearTensors | ModelBody,
    ) -> LinearModel:
        """Build from the four tensors, checking that every shape agrees."""
        names = list(feature_names)
        classes = list(classes)
        W = from_tensor(tensors["weights"])
        b = from_tensor(tensors["intercepts"])
        mean = from_tensor(tensors["feature_mean"])
        scale = from_tensor(tensors["feature_scale"])
        d = len(names)
        k = len(classes) if task == Task.MULTICLASS else 1
        if task == Task.BINARY and len(classes) != 2:
            raise ArtifactVerificationError(f"binary model with {len(classes)} classes")
        if task == Task.MULTICLASS and len(classes) < 2:
            raise ArtifactVerificationError("multiclass model needs at least 2 classes")
        expected = {
            "weights": (W.shape, (d, k)),
            "intercepts": (b.shape, (k,)),
            "feature_mean": (mean.shape, (d,)),
            "feature_scale": (scale.shape, (d,)),
        }
        for name, (got, want) in expected.items():
            if tuple(got) != want:
                raise ArtifactVerificationError(f"{name} has shape {got}, expected {want}")
        if not (np.all(np.isfinite(W)) and np.all(np.isfinite(b)) and np.all(scale > 0)):
            raise ArtifactVerificationError("weights must be finite and scales positive")
        return cls(task, names, classes, W, b, mean, scale)

    def tensors(self) -> LinearTensors:
        return {
            "weights": to_tensor(self.W),
            "intercepts": to_tensor(self.b),
            "feature_mean": to_tensor(self.mean),
            "feature_scale": to_tensor(self.scale),
        }


def standardization(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations (1 where a column is constant)."""
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale < 1e-12] = 1.0
    return mean, scale
