"""Data sets, trained models, a signing 'publisher', requests and feedback for tests."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits

from modelstream.contracts.client import RequestEncoder
from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import Feedback, ModelArtifact
from modelstream.learn.procedure import train
from modelstream.learn.sgd import GDConfig
from modelstream.registry.artifact import load_private_key
from modelstream.registry.trained import trained_candidate
from modelstream.services.predictor.settings import PredictorSettings
from modelstream.services.publisher.logic import history_key, publishable
from modelstream.settings import Settings, load
from tests.support.helpers import produce


@cache
def dataset(name: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    data = load_breast_cancer() if name == "breast-cancer" else load_digits()
    names = [str(n) for n in getattr(data, "feature_names", [])] or [
        f"pixel_{i}" for i in range(data.data.shape[1])
    ]
    classes = [str(c) for c in sorted(set(data.target.tolist()))]
    return data.data.astype(np.float64), data.target, names, classes


@cache
def trained_body(name: str, seed: int = 0) -> dict[str, Any]:
    X, y, names, classes = dataset(name)
    task = "BINARY" if len(classes) == 2 else "MULTICLASS"
    trained = train(X, y, task, names, classes, GDConfig(seed=seed, max_epochs=30), (1e-3,), 2)
    ranges = [{"topic": "external", "partition": 0, "start": 0, "end": len(y)}]
    return trained_candidate(name, trained, ranges, len(y), None, created_at_ms=1)


async def publish(
    settings: Settings,
    keys: Path,
    body: dict[str, Any],
    version: int,
    *,
    tamper: bool = False,
    tamper_bytes: bytes | None = None,
    data_key: tuple[bytes, str] | None = None,
    production: bool = True,
) -> dict[str, Any]:
    """Sign ``body`` as ``version`` and write it to history and registry, like the publisher."""
    artifact = publishable(
        body, version, version - 1 or None, load_private_key(keys / "modelstream.key"), data_key
    )
    value = default_codec().encode(ModelArtifact, artifact)
    if tamper or tamper_bytes:  # flip one bit inside the weights (or the given bytes, of a
        # graph); digest and signature stay as signed
        inside = tamper_bytes or artifact["body"]["weights"]["data"]
        at = value.index(inside) + len(inside) // 2
        value = value[:at] + bytes([value[at] ^ 0x01]) + value[at + 1 :]
    name = body["name"]
    await produce(settings, "model-history", [(history_key(name, version), value)])
    if production:
        await produce(settings, "models", [(name.encode(), value)])
    return artifact


BC = "breast-cancer"


def predictor_settings(base, keys, **extra):  # type: ignore[no-untyped-def]
    return load(
        PredictorSettings,
        bootstrap_servers=base.bootstrap,
        topic_prefix=base.topic_prefix,
        public_key_file=keys / "modelstream.pub",
        **extra,
    )


def requests_for(name, n, start=0, *, packed=False, version=None, prefix="r"):  # type: ignore[no-untyped-def]
    X, _, names, _ = dataset(name)
    encoder = RequestEncoder(names)
    out = []
    for i in range(start, start + n):
        row = X[i % len(X)]
        rid = f"{prefix}-{i}"
        features = row if packed else dict(zip(names, row.tolist(), strict=True))
        out.append(
            (rid.encode(), encoder.encode(rid, name, features, packed=packed, version=version))
        )
    return out


def feedback_records(model: str, labelled: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [
        (
            rid.encode(),
            default_codec().encode(
                Feedback, {"request_id": rid, "model": model, "label": label, "timestamp_ms": None}
            ),
        )
        for rid, label in labelled
    ]
