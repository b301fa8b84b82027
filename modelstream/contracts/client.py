"""Helpers for applications that produce requests and consume predictions.

>>> encoder = RequestEncoder(["mean radius", "mean texture"])
>>> data = encoder.encode("r-1", "breast-cancer", {"mean radius": 17.99, "mean texture": 10.38},
...                       packed=True)
>>> default_codec().decode(data, PredictionRequest)["features"] == (
...     np.array([17.99, 10.38], dtype="<f8").tobytes())
True

Packed requests carry the features as little-endian float64 in the model's feature order;
the predictor turns a batch of them into its matrix with ``numpy.frombuffer`` and skips
per-feature decoding, which is the fastest path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import Prediction, PredictionRequest

Features = Mapping[str, float] | Sequence[float] | np.ndarray


class RequestEncoder:
    """Encodes PredictionRequests as Avro single-object (default) or JSON."""

    def __init__(
        self,
        feature_names: Sequence[str] | None = None,
        *,
        fmt: str = "avro",
        categorical: Sequence[str] | None = None,
    ) -> None:
        """``categorical``: the model's categorical features in its order; categories are
        written in that order, the form the predictor reads straight into its columns."""
        self.feature_names = list(feature_names) if feature_names is not None else None
        self.categorical = list(categorical) if categorical is not None else None
        self.fmt = fmt
        self._codec = default_codec()

    def encode(
        self,
        request_id: str,
        model: str,
        features: Features,
        *,
        version: int | None = None,
        packed: bool = False,
        sent_at_ms: int | None = None,
        categories: Mapping[str, str] | None = None,
    ) -> bytes:
        """``categories`` carries the string values of categorical features (models whose
        ONNX graph one-hot encodes them); numeric features go in ``features``."""
        if packed:
            payload: Any = self._ordered(features).astype("<f8").tobytes()
        elif isinstance(features, Mapping):
            payload = {str(k): float(v) for k, v in features.items()}
        else:
            payload = [float(v) for v in features]
        record = {
            "request_id": request_id,
            "model": model,
            "features": payload,
            "version": version,
            "sent_at_ms": sent_at_ms,
            "categories": self._categories(categories or {}),
        }
        if self.fmt == "json":
            return self._codec.encode_json(PredictionRequest, record)
        return self._codec.encode(PredictionRequest, record)

    def _categories(self, given: Mapping[str, str]) -> dict[str, str]:
        if self.categorical is None:
            return {str(k): str(v) for k, v in given.items()}
        ordered = {c: str(given[c]) for c in self.categorical if c in given}
        ordered.update((str(k), str(v)) for k, v in given.items() if k not in ordered)
        return ordered

    def _ordered(self, features: Features) -> np.ndarray:
        if isinstance(features, Mapping):
            if self.feature_names is None:
                raise ValueError("packing named features needs the model's feature names")
            return np.array([features[n] for n in self.feature_names], dtype=np.float64)
        return np.asarray(features, dtype=np.float64)


def decode_prediction(data: bytes) -> Prediction:
    """A Prediction from Avro single-object or JSON bytes."""
    return default_codec().decode_any(data, Prediction)
