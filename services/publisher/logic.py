"""Turning a validated candidate into a production artifact; pure, no Kafka."""

from __future__ import annotations

from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelstream.contracts.records import ModelArtifact, ModelBody, Stage
from modelstream.registry.artifact import encrypt_tensors, seal


def production_body(
    candidate: ModelBody,
    version: int,
    current_production: int | None,
    validation_metrics: Mapping[str, float] | None = None,
) -> ModelBody:
    body = candidate.copy()
    # The validator's estimate travels with the model: later challengers are compared with it.
    body["metrics"] = {
        **candidate["metrics"],
        **{f"validation_{k}": v for k, v in (validation_metrics or {}).items()},
    }
    body["version"] = version
    body["stage"] = Stage.PRODUCTION
    if body.get("parent_version") is None:
        body["parent_version"] = current_production
    return body


def publishable(
    candidate_body: ModelBody,
    version: int,
    current_production: int | None,
    private_key: Ed25519PrivateKey | None,
    data_key: tuple[bytes, str] | None,
    validation_metrics: Mapping[str, float] | None = None,
) -> ModelArtifact:
    """The signed (and, with a data key, encrypted) artifact record for ``version``."""
    body = production_body(candidate_body, version, current_production, validation_metrics)
    if data_key is not None:
        body = encrypt_tensors(body, data_key[0], data_key[1])
    return seal(body, private_key)


def history_key(name: str, version: int) -> bytes:
    return f"{name}:{version}".encode()
