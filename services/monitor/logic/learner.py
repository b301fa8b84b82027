"""Online learning from the production model: a river pipeline (StandardScaler, then a
logistic, softmax or linear regression trained by SGD) that starts exactly where the batch
model is and learns one label at a time.

>>> import numpy as np
>>> model = LinearModel(Task.BINARY, ["x"], ["0", "1"], np.array([[2.0]]), np.array([0.0]),
...                     np.array([0.0]), np.array([1.0]))
>>> learner = OnlineLearner.from_model(model, example_count=100)
>>> round(learner.proba_one({"x": 0.0})[1], 3)
0.5
>>> learner.learn_one({"x": 1.0}, "0"); learner.learned
1
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from river import linear_model, optim, preprocessing

from modelstream.contracts.builders import LinearTensors
from modelstream.contracts.records import Label, OnlineLearnerState, Task
from modelstream.learn.linear import LinearModel
from modelstream.registry.artifact import to_tensor

BIAS = "__bias__"  # river's softmax has no intercept: a constant input carries it


class OnlineLearner:
    """river StandardScaler + logistic / softmax / linear regression."""

    def __init__(
        self,
        task: Task,
        feature_names: Sequence[str],
        classes: Sequence[str],
        learning_rate: float = 0.01,
        l2: float = 0.0,
    ) -> None:
        self.task = task
        self.feature_names = list(feature_names)
        self.classes = list(classes)
        self.learning_rate = learning_rate
        self.l2 = l2
        self.scaler = preprocessing.StandardScaler()
        sgd = optim.SGD(learning_rate)
        if task == Task.BINARY:
            self.model: Any = linear_model.LogisticRegression(optimizer=sgd, l2=l2)
        elif task == Task.MULTICLASS:
            self.model = linear_model.SoftmaxRegression(optimizer=sgd, l2=l2)
        else:
            self.model = linear_model.LinearRegression(optimizer=sgd, l2=l2)
        self.learned = 0

    @classmethod
    def from_model(
        cls, model: LinearModel, example_count: int, learning_rate: float = 0.01, l2: float = 0.0
    ) -> OnlineLearner:
        """Start at ``model``'s weights; the scaler continues from its training statistics,
        weighted by the training size."""
        learner = cls(model.task, model.feature_names, model.classes, learning_rate, l2)
        names = learner.feature_names
        n0 = max(1, int(example_count))
        for i, name in enumerate(names):
            learner.scaler.counts[name] = n0
            learner.scaler.means[name] = float(model.mean[i])
            learner.scaler.vars[name] = float(model.scale[i]) ** 2
        if learner.task == Task.MULTICLASS:
            for k, label in enumerate(learner.classes):
                weights = learner.model.weights[label]
                for i, name in enumerate(names):
                    weights[name] = float(model.W[i, k])
                weights[BIAS] = float(model.b[k])
        else:
            for i, name in enumerate(names):
                learner.model._weights[name] = float(model.W[i, 0])
            learner.model.intercept = float(model.b[0])
        return learner

    def _scaled(self, x: Mapping[str, float]) -> dict[str, float]:
        scaled: dict[str, float] = self.scaler.transform_one(dict(x))
        if self.task == Task.MULTICLASS:
            scaled[BIAS] = 1.0
        return scaled

    def proba_one(self, x: Mapping[str, float]) -> list[float]:
        """Class probabilities in class order (regression: [prediction])."""
        scaled = self._scaled(x)
        if self.task == Task.BINARY:
            p = float(self.model.predict_proba_one(scaled)[True])
            return [1.0 - p, p]
        if self.task == Task.MULTICLASS:
            proba = self.model.predict_proba_one(scaled)
            return [float(proba.get(c, 0.0)) for c in self.classes]
        return [float(self.model.predict_one(scaled))]

    def learn_one(self, x: Mapping[str, float], label: Label) -> None:
        self.scaler.learn_one(dict(x))
        scaled = self._scaled(x)
        if self.task == Task.BINARY:
            self.model.learn_one(scaled, label == self.classes[1])
        elif self.task == Task.MULTICLASS:
            self.model.learn_one(scaled, label)
        else:
            self.model.learn_one(scaled, float(label))
        self.learned += 1

    def learn_many(self, X: np.ndarray, labels: Sequence[Label]) -> None:
        """Each row of ``X`` (features in ``feature_names`` order), in order, through river."""
        for row, label in zip(X.tolist(), labels, strict=True):
            self.learn_one(dict(zip(self.feature_names, row, strict=True)), label)

    def state(self) -> OnlineLearnerState:
        """Everything needed to continue learning after a restart."""
        names = self.feature_names
        if self.task == Task.MULTICLASS:
            weights = [
                [float(self.model.weights[c].get(n, 0.0)) for n in [*names, BIAS]]
                for c in self.classes
            ]
            intercept = 0.0
        else:
            weights = [[float(self.model._weights.get(n, 0.0)) for n in names]]
            intercept = float(self.model.intercept)
        return {
            "weights": weights,
            "intercept": intercept,
            "learned": self.learned,
            "counts": [int(self.scaler.counts.get(n, 0)) for n in names],
            "means": [float(self.scaler.means.get(n, 0.0)) for n in names],
            "vars": [float(self.scaler.vars.get(n, 0.0)) for n in names],
            "layers": [],
        }

    def restore(self, state: OnlineLearnerState) -> None:
        names = self.feature_names
        for i, name in enumerate(names):
            self.scaler.counts[name] = int(state["counts"][i])
            self.scaler.means[name] = float(state["means"][i])
            self.scaler.vars[name] = float(state["vars"][i])
        if self.task == Task.MULTICLASS:
            for label, row in zip(self.classes, state["weights"], strict=True):
                weights = self.model.weights[label]
                for name, w in zip([*names, BIAS], row, strict=True):
                    weights[name] = float(w)
        else:
            for name, w in zip(names, state["weights"][0], strict=True):
                self.model._weights[name] = float(w)
            self.model.intercept = float(state["intercept"])
        self.learned = int(state["learned"])

    def export(self) -> LinearTensors:
        """Weights and standardization as artifact tensors (the predictor's format)."""
        names = self.feature_names
        mean = np.array([self.scaler.means.get(n, 0.0) for n in names])
        var = np.array([self.scaler.vars.get(n, 0.0) for n in names])
        if self.task == Task.MULTICLASS:
            W = np.array([[self.model.weights[c].get(n, 0.0) for c in self.classes] for n in names])
            b = np.array([self.model.weights[c].get(BIAS, 0.0) for c in self.classes])
        else:
            W = np.array([[self.model._weights.get(n, 0.0)] for n in names])
            b = np.array([float(self.model.intercept)])
        return linear_tensors(W, b, mean, var)

    def layer_records(self) -> None:
        """A linear learner has no dense layers (see OnlineMLP)."""
        return None

    def as_model(self) -> LinearModel:
        """The learner as it is now, as a model that scores whole matrices."""
        return LinearModel.from_tensors(self.task, self.feature_names, self.classes, self.export())


def linear_tensors(
    W: np.ndarray, b: np.ndarray, mean: np.ndarray, var: np.ndarray
) -> LinearTensors:
    """An online learner's weights and scaler statistics as artifact tensors (the
    predictor's format); a feature that never varied gets scale 1."""
    scale = np.sqrt(var)
    scale[scale < 1e-12] = 1.0
    return {
        "weights": to_tensor(W),
        "intercepts": to_tensor(b),
        "feature_mean": to_tensor(mean),
        "feature_scale": to_tensor(scale),
    }
