"""Gradient-boosted trees by LightGBM, exported to ONNX by onnxmltools.

The trees are LightGBM's (a library built for them; nothing here grows a tree). What is
ours: deterministic settings (one thread, row-wise histograms, ``deterministic=True`` and
the seed), so that the same window gives the same booster and ``models reproduce`` the same
digest; the ONNX graph's random parts (its name, the order of its opset imports) fixed;
and the search of L2 (``lambda_l2``) and complexity (``num_leaves``, ``min_data_in_leaf``)
by the same k-fold CV as the other families (procedure.py).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(400, 2)); y = (X[:, 0] * X[:, 1] > 0).astype(int)  # XOR
>>> model = fit_gbdt(X, y, "BINARY", ["a", "b"], ["0", "1"], GBDTParams(l2=1e-3, num_leaves=7,
...                  min_data_in_leaf=5, seed=0))
>>> bool((model.proba(X).argmax(axis=1) == y).mean() > 0.95)
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelstream.contracts.records import Task

# (num_leaves, min_data_in_leaf) pairs searched with every L2 value: a small, shallow
# ensemble and LightGBM's defaults.
COMPLEXITY_GRID: tuple[tuple[int, int], ...] = ((7, 5), (31, 20))
# learning rates searched with each: LightGBM's default, and half of it (on small data the
# smaller step generalizes better at the same number of rounds)
RATE_GRID: tuple[float, ...] = (0.05, 0.1)
N_ESTIMATORS = 100
LEARNING_RATE = 0.1
ONNX_OPSET = 15


@dataclass(frozen=True)
class GBDTParams:
    l2: float
    num_leaves: int
    min_data_in_leaf: int
    seed: int
    n_estimators: int = N_ESTIMATORS
    learning_rate: float = LEARNING_RATE


def _objective(task: Task, n_classes: int) -> dict[str, Any]:
    if task == Task.BINARY:
        return {"objective": "binary"}
    if task == Task.MULTICLASS:
        return {"objective": "multiclass", "num_class": n_classes}
    return {"objective": "regression"}


@dataclass(frozen=True)
class GBDTModel:
    task: Task
    feature_names: list[str]
    classes: list[str]
    booster: Any  # lightgbm.Booster
    params: GBDTParams
    mean: np.ndarray  # training statistics, for the monitor's feature drift
    scale: np.ndarray

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def categorical(self) -> list[str]:
        return []

    def proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (n × n_classes); for regression, the predicted values (n)."""
        out = np.asarray(self.booster.predict(X, num_threads=1), dtype=np.float64)
        if self.task == Task.BINARY:
            return np.column_stack((1.0 - out, out))
        return out

    def output(self, X: np.ndarray) -> np.ndarray:
        return self.proba(X)

    def score(self, X: np.ndarray, categories: object = None) -> np.ndarray:
        return self.proba(X)

    def to_onnx(self, name: str) -> bytes:
        """The ensemble as an ONNX graph (input ``features`` [N, d] float; probabilities
        without ZipMap), byte-identical for the same booster."""
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

        graph = convert_lightgbm(
            self.booster,
            initial_types=[("features", FloatTensorType([None, self.n_features]))],
            target_opset=ONNX_OPSET,
            zipmap=False,
        )
        # What onnxmltools leaves to chance: the graph's name (a random uuid) and the order of
        # the opset imports (a set's, which follows the process's string hash seed).
        graph.graph.name = f"modelstream_{name}"
        opsets = sorted((o.domain, o.version) for o in graph.opset_import)
        del graph.opset_import[:]
        for domain, version in opsets:
            entry = graph.opset_import.add()
            entry.domain, entry.version = domain, version
        serialized: bytes = graph.SerializeToString()
        return serialized


def fit_gbdt(
    X: np.ndarray,
    y: np.ndarray,
    task: Task,
    feature_names: Sequence[str],
    classes: Sequence[str],
    params: GBDTParams,
) -> GBDTModel:
    import lightgbm

    settings = {
        **_objective(task, len(classes)),
        "num_leaves": params.num_leaves,
        "min_data_in_leaf": params.min_data_in_leaf,
        "lambda_l2": params.l2,
        "learning_rate": params.learning_rate,
        "seed": params.seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 1,
        "verbosity": -1,
    }
    booster = lightgbm.train(
        settings, lightgbm.Dataset(X, y.astype(np.float64)), num_boost_round=params.n_estimators
    )
    mean = X.mean(axis=0) if len(X) else np.zeros(X.shape[1])
    scale = X.std(axis=0) if len(X) else np.ones(X.shape[1])
    scale = np.where(scale > 0, scale, 1.0)
    return GBDTModel(task, list(feature_names), list(classes), booster, params, mean, scale)
