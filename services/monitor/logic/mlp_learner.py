"""Online learning for a production network: small gradient steps from its weights.

The linear families learn online with river's updates over arrays (array_learner.py; river
itself in learner.py). A multilayer perceptron keeps learning here with the trainer's own
loss and weight decay (learn/mlp.py's gradients, one model, one labelled row per step) and
plain SGD with a small step, from the production version's weights and on its
standardization (the training statistics stay fixed, so a candidate is the production
network moved along the labelled stream). Pure numpy: a batch's rows are standardized and
their targets read at once; only the steps, each depending on the previous, loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from modelstream.contracts.builders import LinearTensors
from modelstream.contracts.records import DenseLayer, Label, OnlineLearnerState, Task
from modelstream.learn.mlp import MLPModel, gradients


class OnlineMLP:
    """Same interface as OnlineLearner: learn_one, as_model, export, state/restore."""

    def __init__(self, model: MLPModel, l2: float, learning_rate: float = 0.01) -> None:
        self.task = model.task
        self.feature_names = list(model.feature_names)
        self.classes = list(model.classes)
        self.mean, self.scale = model.mean, model.scale
        self.Ws = [W[None].copy() for W, _ in model.layers]
        self.bs = [b[None].copy() for _, b in model.layers]
        self.l2 = np.array([l2])
        self.learning_rate = learning_rate
        self.learned = 0

    def learn_one(self, x: Mapping[str, float], label: Label) -> None:
        self.learn_many(np.array([[x[n] for n in self.feature_names]], dtype=np.float64), [label])

    def learn_many(self, X: np.ndarray, labels: Sequence[Label]) -> None:
        """One gradient step per row of ``X`` (features in ``feature_names`` order), in order:
        the rows standardized and their targets read at once, then only the steps loop."""
        Z = (np.asarray(X, dtype=np.float64) - self.mean) / self.scale
        if self.task == Task.REGRESSION:
            targets = np.array([float(y) for y in labels])
        elif self.task == Task.BINARY:
            targets = np.array([int(str(y) == self.classes[1]) for y in labels])
        else:
            index = {c: k for k, c in enumerate(self.classes)}
            targets = np.array([index[str(y)] for y in labels])
        for i in range(len(targets)):
            gW, gb = gradients(
                self.task, Z[i : i + 1], targets[i : i + 1], self.Ws, self.bs, self.l2
            )
            for p, g in zip(self.Ws + self.bs, gW + gb, strict=True):
                p -= self.learning_rate * g
        self.learned += len(targets)

    def as_model(self) -> MLPModel:
        layers = [(W[0].copy(), b[0].copy()) for W, b in zip(self.Ws, self.bs, strict=True)]
        return MLPModel(self.task, self.feature_names, self.classes, layers, self.mean, self.scale)

    def export(self) -> LinearTensors:
        return self.as_model().tensors()

    def layer_records(self) -> list[DenseLayer]:
        return self.as_model().layer_records()

    @property
    def hidden(self) -> list[int]:
        return [W.shape[2] for W in self.Ws[:-1]]

    def state(self) -> OnlineLearnerState:
        """The layers flattened (weights row-major, then biases, per layer)."""
        return {
            "weights": [],
            "intercept": 0.0,
            "learned": self.learned,
            "counts": [],
            "means": [],
            "vars": [],
            "layers": [
                [*W[0].ravel().tolist(), *b[0].tolist()]
                for W, b in zip(self.Ws, self.bs, strict=True)
            ],
        }

    def restore(self, state: OnlineLearnerState) -> None:
        flat: Sequence[Sequence[float]] = state.get("layers") or []
        if len(flat) != len(self.Ws):
            return  # another kind's state: learning restarts from production
        for W, b, values in zip(self.Ws, self.bs, flat, strict=True):
            if len(values) != W[0].size + b[0].size:
                return
        for W, b, values in zip(self.Ws, self.bs, flat, strict=True):
            array = np.asarray(values, dtype=np.float64)
            W[0] = array[: W[0].size].reshape(W[0].shape)
            b[0] = array[W[0].size :]
        self.learned = int(state["learned"])
