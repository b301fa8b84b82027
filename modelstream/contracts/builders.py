"""The one place where commands, audit events and candidate artifacts are put together.

The trainer, the monitor and ``models import`` all make candidates through
:func:`candidate_body`; only the publisher turns a candidate into a production version.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from modelstream.contracts.definitions import Definition
from modelstream.contracts.records import (
    Action,
    AuditEvent,
    Command,
    DenseLayer,
    Lineage,
    ModelBody,
    OffsetRange,
    OnnxGraph,
    Origin,
    Stage,
    Task,
    Tensor,
    TrafficSplit,
    TrainingConfig,
)


def now_ms() -> int:
    return int(time.time() * 1000)


def command(
    model: str,
    action: Action,
    *,
    definition: Definition | None = None,
    version: int | None = None,
    traffic: TrafficSplit | None = None,
    actor: str = "cli",
    reason: str = "",
) -> Command:
    return {
        "model": model,
        "action": action,
        "definition": definition.to_record() if definition else None,
        "version": version,
        "traffic": traffic,
        "actor": actor,
        "reason": reason,
        "issued_at_ms": now_ms(),
    }


def audit_event(
    model: str,
    event: str,
    *,
    service: str,
    actor: str | None = None,
    version: int | None = None,
    digest: str | None = None,
    reason: str = "",
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    return {
        "model": model,
        "event": event,
        "version": version,
        "digest": digest,
        "actor": actor or service,
        "service": service,
        "reason": reason,
        "details": {k: str(v) for k, v in (details or {}).items()},
        "at_ms": now_ms(),
    }


class LinearTensors(TypedDict):
    """The four tensors of a linear artifact body (empty in an ONNX one)."""

    weights: Tensor
    intercepts: Tensor
    feature_mean: Tensor
    feature_scale: Tensor


def training_config(
    algorithm: str,
    *,
    l2: float = 0.0,
    learning_rate: float = 0.0,
    lr_decay: float = 0.0,
    batch_size: int = 0,
    max_epochs: int = 0,
    patience: int = 0,
    validation_fraction: float = 0.0,
    seed: int = 0,
    cv_folds: int = 0,
    l2_grid: Sequence[float] = (),
    l2_grid_scores: Sequence[float] = (),
    epochs_run: int = 0,
    hidden: Sequence[int] = (),
    hyperparameters: Mapping[str, float] | None = None,
) -> TrainingConfig:
    """How a candidate was made; what an algorithm does not use stays zero or empty."""
    return {
        "algorithm": algorithm,
        "l2": l2,
        "learning_rate": learning_rate,
        "lr_decay": lr_decay,
        "batch_size": batch_size,
        "max_epochs": max_epochs,
        "patience": patience,
        "validation_fraction": validation_fraction,
        "seed": seed,
        "cv_folds": cv_folds,
        "l2_grid": list(l2_grid),
        "l2_grid_scores": list(l2_grid_scores),
        "epochs_run": epochs_run,
        "hidden": list(hidden),
        "hyperparameters": dict(hyperparameters or {}),
    }


def lineage(origin: Origin, ranges: Sequence[OffsetRange] = (), example_count: int = 0) -> Lineage:
    return {"origin": origin, "ranges": list(ranges), "example_count": example_count}


def candidate_body(
    *,
    name: str,
    task: Task,
    feature_names: Sequence[str],
    classes: Sequence[str],
    tensors: LinearTensors,
    training: TrainingConfig,
    lineage: Lineage,
    metrics: Mapping[str, float] | None = None,
    parent_version: int | None = None,
    created_by: str,
    created_at_ms: int | None = None,
    onnx: OnnxGraph | None = None,
    layers: Sequence[DenseLayer] | None = None,
) -> ModelBody:
    """An unpublished model: version 0, stage CANDIDATE, never encrypted (the publisher
    encrypts), to be sealed with a digest and sent to ``candidates``."""
    return {
        "name": name,
        "version": 0,
        "stage": Stage.CANDIDATE,
        "task": task,
        "feature_names": list(feature_names),
        "classes": list(classes),
        "weights": tensors["weights"],
        "intercepts": tensors["intercepts"],
        "feature_mean": tensors["feature_mean"],
        "feature_scale": tensors["feature_scale"],
        "training": training,
        "metrics": dict(metrics or {}),
        "lineage": lineage,
        "parent_version": parent_version,
        "created_at_ms": now_ms() if created_at_ms is None else created_at_ms,
        "created_by": created_by,
        "encryption": None,
        "onnx": onnx,
        "layers": list(layers) if layers is not None else None,
    }
