"""The candidate body of a trained model, for each family: built by the trainer, and
rebuilt by ``models reproduce`` to compare digests."""

from __future__ import annotations

import numpy as np

from modelstream.contracts.builders import (
    LinearTensors,
    candidate_body,
    lineage,
    training_config,
)
from modelstream.contracts.records import ModelBody, OffsetRange, OnnxGraph, Origin
from modelstream.learn.gbdt import GBDTModel
from modelstream.learn.mlp import MLPModel
from modelstream.learn.procedure import TrainedModel
from modelstream.registry.artifact import to_tensor
from modelstream.registry.onnx_model import describe


def trained_candidate(
    name: str,
    trained: TrainedModel,
    ranges: list[OffsetRange],
    example_count: int,
    parent_version: int | None,
    *,
    created_at_ms: int | None = None,
) -> ModelBody:
    """The candidate body of a model trained on ``example_count`` rows of ``ranges``: a
    linear model's or a network's tensors, or a tree ensemble as its ONNX graph (served
    by the same path as an imported graph)."""
    cfg = trained.config
    model = trained.model
    graph: OnnxGraph | None = None
    hyperparameters: dict[str, float] = {}
    if isinstance(model, GBDTModel):
        algorithm = "lightgbm"
        signature = describe(
            model.to_onnx(name),
            features=model.feature_names,
            classes=model.classes or None,
            task=model.task,
        )
        graph = signature.onnx
        empty = to_tensor(np.empty(0))
        tensors: LinearTensors = {
            "weights": empty,
            "intercepts": empty,
            "feature_mean": to_tensor(model.mean),
            "feature_scale": to_tensor(model.scale),
        }
        hyperparameters = {
            "num_leaves": float(model.params.num_leaves),
            "min_data_in_leaf": float(model.params.min_data_in_leaf),
            "n_estimators": float(model.params.n_estimators),
        }
    else:
        algorithm = "minibatch-adam" if isinstance(model, MLPModel) else "minibatch-gd"
        tensors = model.tensors()
    return candidate_body(
        name=name,
        task=model.task,
        feature_names=model.feature_names,
        classes=model.classes,
        tensors=tensors,
        layers=model.layer_records() if isinstance(model, MLPModel) else None,
        onnx=graph,
        training=training_config(
            algorithm,
            hidden=cfg.hidden,
            hyperparameters=hyperparameters,
            l2=cfg.l2,
            learning_rate=cfg.learning_rate,
            lr_decay=cfg.lr_decay,
            batch_size=cfg.batch_size,
            max_epochs=cfg.max_epochs,
            patience=cfg.patience,
            validation_fraction=cfg.validation_fraction,
            seed=cfg.seed,
            cv_folds=trained.cv_folds,
            l2_grid=trained.l2_grid,
            l2_grid_scores=trained.l2_grid_scores,
            epochs_run=trained.epochs_run,
        ),
        metrics=trained.metrics,
        lineage=lineage(Origin.BATCH, ranges, example_count),
        parent_version=parent_version,
        created_by="trainer",
        created_at_ms=created_at_ms,
    )
