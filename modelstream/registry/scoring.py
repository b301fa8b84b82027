"""One interface for every kind of served model: the linear families, ONNX graphs over
features, and tensor models (ONNX graphs over images, text, bytes, any tensors).

The predictor, the validator and the monitor score through :func:`scorer_for`; what they
get takes a matrix of numeric features (``feature_names`` order) plus, per row, the
values of categorical features and the request's named tensors, and returns class
probabilities [N, classes] or regression values [N].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from modelstream.contracts.records import ModelBody, NamedTensor, Task
from modelstream.learn.linear import LinearModel
from modelstream.learn.mlp import MLPModel
from modelstream.registry.onnx_model import Categories, OnnxScorer
from modelstream.registry.tensor_model import TensorScorer, is_tensor_model


class Scorer(Protocol):
    @property
    def task(self) -> Task: ...

    @property
    def feature_names(self) -> list[str]: ...

    @property
    def classes(self) -> list[str]: ...

    @property
    def categorical(self) -> list[str]: ...

    @property
    def n_features(self) -> int: ...

    def score(
        self,
        X: np.ndarray,
        categories: Categories | None = None,
        tensor_rows: Sequence[Sequence[NamedTensor]] | None = None,
    ) -> np.ndarray: ...

    def output(self, X: np.ndarray) -> np.ndarray:
        """:meth:`score` of numeric features alone."""
        ...


def kind_of(body: ModelBody) -> str:
    """'tensor' (an imported graph over tensors), 'onnx' (over features), 'mlp' or
    'linear'."""
    if is_tensor_model(body):
        return "tensor"
    if body.get("onnx") is not None:
        return "onnx"
    return "mlp" if body.get("layers") else "linear"


def scorer_for(body: ModelBody, *, threads: int = 1, max_chars: int = 65_536) -> Scorer:
    """The scorer of a verified, decrypted body (ArtifactVerificationError when its parts
    do not add up; UnmappableGraphError when onnxruntime cannot load its graph).
    ``max_chars`` bounds a text input whose spec sets no limit of its own."""
    if is_tensor_model(body):
        return TensorScorer(body, threads=threads, max_chars=max_chars)
    if body.get("onnx") is not None:
        return OnnxScorer(body, threads=threads)
    if body.get("layers"):
        return MLPModel.from_body(body)
    return LinearModel.from_body(body)
