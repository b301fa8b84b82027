"""The candidate body ``models import`` sends: from an ONNX graph (over features or over
tensors), or from a network converted from another format (:mod:`modelstream.convert`).

A graph of linear operators only becomes the native linear kind (the monitor can keep
learning from its weights) unless the caller keeps the graph, or names classes or a task
the graph's own reading should not be second-guessed on.
"""

from __future__ import annotations

from collections.abc import Sequence

from modelstream.contracts.builders import candidate_body, lineage, training_config
from modelstream.contracts.records import ModelBody, Origin, ServingSpec, Task
from modelstream.learn.mlp import MLPModel
from modelstream.registry.onnx_interop import UnsupportedModelError, import_onnx
from modelstream.registry.onnx_model import (
    UnmappableGraphError,
    check_runs,
    describe,
    onnx_candidate,
)
from modelstream.registry.tensor_model import describe as describe_tensors
from modelstream.registry.tensor_model import takes_tensors, tensor_candidate


def graph_candidate(
    name: str,
    data: bytes,
    *,
    features: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    task: Task | None = None,
    keep_graph: bool = False,
    spec: ServingSpec | None = None,
    created_by: str,
) -> ModelBody:
    """A serialized ONNX graph as a candidate body; UnmappableGraphError says what in the
    graph cannot be served."""
    if spec is not None or takes_tensors(data):
        if features:
            raise UnmappableGraphError("--features is for graphs over features, not tensors")
        signature = describe_tensors(data, spec, classes=classes, task=task)
        return tensor_candidate(name, signature, created_by=created_by)
    if not keep_graph and classes is None and task is None:
        try:
            linear = import_onnx(data, features)
        except UnsupportedModelError:
            linear = None
        if linear is not None:
            return candidate_body(
                name=name,
                task=linear.task,
                feature_names=linear.feature_names,
                classes=linear.classes,
                tensors=linear.tensors(),
                training=training_config("imported"),
                lineage=lineage(Origin.IMPORTED),
                created_by=created_by,
            )
    graph_signature = describe(data, features=features, classes=classes, task=task)
    check_runs(graph_signature, name)
    return onnx_candidate(name, graph_signature, created_by=created_by)


def network_candidate(name: str, network: MLPModel, *, created_by: str) -> ModelBody:
    """A network the native mlp family expresses, as a candidate body."""
    return candidate_body(
        name=name,
        task=network.task,
        feature_names=network.feature_names,
        classes=network.classes,
        tensors=network.tensors(),
        training=training_config("imported", hidden=[len(b) for _, b in network.layers[:-1]]),
        lineage=lineage(Origin.IMPORTED),
        created_by=created_by,
        layers=network.layer_records(),
    )
