"""Any ONNX graph as a model artifact: its signature mapped at import, and its scorer.

An imported graph travels inside the Avro artifact as the exact bytes that were imported
(``OnnxGraph.graph``), covered by the digest and the signature like every other field.
:func:`describe` reads the graph with ``onnx`` (a Protobuf parser: nothing is executed) and
maps its signature onto modelstream's terms: which request features fill which graph input,
which output holds the class scores or the regression values, the classes and the task.
:func:`check_runs` then builds an onnxruntime session and scores one row, so a graph that
onnxruntime cannot run on CPU is refused at import, not at serving time.

:class:`OnnxScorer` serves a verified, decrypted artifact: one session per (model,
version), one ``run`` per batch on preallocated input matrices, outputs turned into the
same shapes the linear families produce (class probabilities [N, classes], regression
values [N]).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelstream.contracts.records import ModelBody, OnnxGraph, OnnxInput, Task
from modelstream.errors import ArtifactVerificationError, ModelstreamError

# ONNX TensorProto element types a request can fill, by the name the artifact records.
NUMERIC_TYPES = {"float": np.float32, "double": np.float64, "int64": np.int64}
_ELEMENT_NAMES = {1: "float", 11: "double", 7: "int64", 8: "string"}
MAX_GRAPH_BYTES = 1 << 30
# where the ai.onnx.ml classifiers (trees, linear, SVM) keep their class labels
CLASS_LABEL_ATTRIBUTES = ("classlabels_strings", "classlabels_int64s", "classlabels_ints")


class UnmappableGraphError(ModelstreamError):
    """The graph's signature cannot be mapped onto features, classes and scores."""

    reason = "unsupported-onnx"


@dataclass(frozen=True)
class GraphSignature:
    """What an imported graph means in modelstream's terms."""

    task: Task
    feature_names: list[str]  # numeric features, in the order of packed requests
    categorical: list[str]  # string features, read from a request's categories
    classes: list[str]
    onnx: OnnxGraph


def _load(data: bytes) -> Any:
    import onnx

    if len(data) > MAX_GRAPH_BYTES:
        raise UnmappableGraphError(f"graph of {len(data)} bytes is over the 1 GiB limit")
    try:
        return onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise UnmappableGraphError(f"not an ONNX model: {exc}") from None


def _external_data(model: Any) -> bool:
    from onnx import TensorProto

    return any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)


def describe(
    data: bytes,
    *,
    features: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    task: Task | None = None,
) -> GraphSignature:
    """Map a serialized ONNX model's signature; :class:`UnmappableGraphError` names what
    is missing. ``features``, ``classes`` and ``task`` override what the graph and its
    metadata say."""
    model = _load(data)
    if _external_data(model):
        raise UnmappableGraphError(
            "the graph keeps its weights in external files; save it with "
            "onnx.save_model(model, path, save_as_external_data=False)"
        )
    graph = model.graph
    props = {p.key: p.value for p in model.metadata_props}
    initialized = {t.name for t in graph.initializer}
    shapes = [_input_shape(i) for i in graph.input if i.name not in initialized]
    if not shapes:
        raise UnmappableGraphError("the graph has no inputs")
    names = list(features) if features else _metadata_list(props, "modelstream.feature_names")
    inputs = _map_inputs(shapes, names)
    every = [f for i in inputs for f in i["features"]]
    if len(set(every)) != len(every):
        raise UnmappableGraphError(f"feature names repeat: {sorted(every)[:10]}")
    numeric = [f for i in inputs if i["element_type"] != "string" for f in i["features"]]
    categorical = [f for i in inputs if i["element_type"] == "string" for f in i["features"]]

    producers = {out: node for node in graph.node for out in node.output}
    labels = list(classes) if classes else _metadata_list(props, "modelstream.classes")
    if not labels:
        labels = _classifier_labels(graph)
    if task is None and props.get("modelstream.task"):
        task = Task(props["modelstream.task"])
    scores, zipmap_input, task = _map_output(graph, producers, labels, task)
    if task != Task.REGRESSION and len(labels) < 2:
        raise UnmappableGraphError(
            "the class labels are not in the graph: pass --classes (in score-column order)"
        )
    if task == Task.REGRESSION:
        labels = []
    elif task == Task.BINARY and len(labels) != 2:
        raise UnmappableGraphError(f"a binary classifier needs 2 classes, got {len(labels)}")
    record: OnnxGraph = {
        "graph": data,
        "graph_sha256": hashlib.sha256(data).hexdigest(),
        "inputs": inputs,
        "scores_output": scores,
        "zipmap_input": zipmap_input,
    }
    return GraphSignature(task, numeric, categorical, [str(c) for c in labels], record)


def _metadata_list(props: Mapping[str, str], key: str) -> list[str]:
    if key not in props:
        return []
    try:
        value = json.loads(props[key])
    except ValueError:
        raise UnmappableGraphError(f"metadata {key} is not a JSON list") from None
    if not isinstance(value, list):
        raise UnmappableGraphError(f"metadata {key} is not a JSON list")
    return [str(v) for v in value]


def _input_shape(value_info: Any) -> tuple[str, str, int | None]:
    """(name, element type, columns) of one graph input."""
    name = value_info.name
    kind = value_info.type.WhichOneof("value")
    if kind != "tensor_type":
        raise UnmappableGraphError(f"input {name!r} is a {kind}, not a tensor")
    tensor = value_info.type.tensor_type
    element = _ELEMENT_NAMES.get(tensor.elem_type)
    if element is None:
        raise UnmappableGraphError(
            f"input {name!r} has element type {tensor.elem_type}: only float, double, int64 "
            "and string inputs map to features"
        )
    dims = list(tensor.shape.dim) if tensor.HasField("shape") else []
    if len(dims) != 2:
        shape = [d.dim_value or d.dim_param or "?" for d in dims]
        raise UnmappableGraphError(
            f"input {name!r} has shape {shape}: only [batch, features] inputs can be mapped"
        )
    columns = dims[1].dim_value if dims[1].HasField("dim_value") else None
    return name, element, columns


def _map_inputs(shapes: list[tuple[str, str, int | None]], names: list[str]) -> list[OnnxInput]:
    if names:
        known = [c for _, _, c in shapes]
        if known.count(None) == 1:  # the one open width takes the remaining names
            open_width = len(names) - sum(c for c in known if c is not None)
            known = [open_width if c is None else c for c in known]
        if None in known or sum(c for c in known if c is not None) != len(names):
            raise UnmappableGraphError(
                f"{len(names)} feature names for inputs "
                f"{[(n, c if c is not None else '?') for n, _, c in shapes]}"
            )
        out: list[OnnxInput] = []
        at = 0
        for (name, element, _), width in zip(shapes, known, strict=True):
            assert width is not None
            if width <= 0:
                raise UnmappableGraphError(f"input {name!r} gets no feature names")
            out.append({"name": name, "element_type": element, "features": names[at : at + width]})
            at += width
        return out
    if len(shapes) == 1:
        name, element, columns = shapes[0]
        if columns is None:
            raise UnmappableGraphError(
                f"input {name!r} has no fixed number of columns: pass --features"
            )
        return [
            {"name": name, "element_type": element, "features": [f"f{i}" for i in range(columns)]}
        ]
    mapped: list[OnnxInput] = []
    for name, element, columns in shapes:
        if columns is None:
            raise UnmappableGraphError(
                f"input {name!r} has no fixed number of columns: pass --features"
            )
        features = [name] if columns == 1 else [f"{name}_{i}" for i in range(columns)]
        mapped.append({"name": name, "element_type": element, "features": features})
    return mapped


def _classifier_labels(graph: Any) -> list[str]:
    from onnx import helper

    for node in graph.node:
        if node.op_type.endswith("Classifier"):
            for attribute in node.attribute:
                if attribute.name in CLASS_LABEL_ATTRIBUTES:
                    values = helper.get_attribute_value(attribute)
                    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]
    return []


def _map_output(
    graph: Any, producers: Mapping[str, Any], labels: list[str], task: Task | None
) -> tuple[str, str | None, Task]:
    """(scores output, ZipMap input or None, task)."""
    tensors: list[tuple[str, str, int | None]] = []
    zipmaps: list[tuple[str, str]] = []
    has_label = False
    for output in graph.output:
        kind = output.type.WhichOneof("value")
        if kind == "sequence_type":
            node = producers.get(output.name)
            if node is not None and node.op_type == "ZipMap":
                zipmaps.append((output.name, node.input[0]))
            continue
        if kind != "tensor_type":
            continue
        element = _ELEMENT_NAMES.get(output.type.tensor_type.elem_type)
        dims = list(output.type.tensor_type.shape.dim)
        if element in ("string", "int64"):
            has_label = True
            continue
        if element not in ("float", "double"):
            continue
        width = dims[1].dim_value if len(dims) == 2 and dims[1].HasField("dim_value") else None
        if len(dims) == 1:
            width = 1
        tensors.append((output.name, element, width))
    classifier = (
        has_label or bool(zipmaps) or any(n.op_type.endswith("Classifier") for n in graph.node)
    )
    if task is None:
        if classifier or (labels and (not tensors or tensors[0][2] != 1 or len(labels) == 2)):
            task = Task.BINARY if len(labels) == 2 else Task.MULTICLASS
        elif tensors and tensors[0][2] in (1, None):
            task = Task.REGRESSION
        elif tensors:
            raise UnmappableGraphError(
                f"output {tensors[0][0]!r} has {tensors[0][2]} columns: pass --classes for a "
                "classifier or --task regression"
            )
        else:
            raise UnmappableGraphError("no float output to read scores or values from")
    if task == Task.REGRESSION:
        if not tensors:
            raise UnmappableGraphError("no float output to read regression values from")
        return tensors[0][0], None, task
    for name, _, width in tensors:
        if width is None or width == len(labels) or (width == 1 and len(labels) == 2):
            return name, None, task
    if zipmaps:
        return zipmaps[0][0], zipmaps[0][1], task
    raise UnmappableGraphError(
        "no probability output: the graph gives only a label; modelstream serves class "
        f"scores (outputs: {[o.name for o in graph.output]})"
    )


def serving_graph(
    onnx_graph: OnnxGraph, data: bytes, outputs: Sequence[str] | None = None
) -> bytes:
    """The graph reduced to the outputs the scorer reads (by default the scores; a ZipMap
    replaced by the tensor it zips), so onnxruntime computes nothing else."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_model_from_string(data)
    graph = model.graph
    wanted = list(outputs or [onnx_graph["zipmap_input"] or onnx_graph["scores_output"]])
    declared = {o.name: o for o in graph.output}
    keep_output = [
        declared.get(name) or helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
        for name in wanted
    ]
    needed = set(wanted)
    kept = []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    del graph.output[:]
    graph.output.extend(keep_output)
    serialized: bytes = model.SerializeToString()
    return serialized


# The operator domain of onnxruntime-extensions (tokenizers, string and image operators):
# a graph that uses it needs that library's operators registered with the session.
EXTENSIONS_DOMAIN = "ai.onnx.contrib"


def inference_session(data: bytes, threads: int) -> Any:
    """An onnxruntime CPU session over a serialized graph: ``threads`` intra-op threads,
    sequential execution, and onnxruntime-extensions' operators when the graph uses them
    (UnmappableGraphError names the missing package when it is not installed)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 4  # run-time failures are reported by the caller
    domains = {o.domain for o in onnx.load_model_from_string(data).opset_import}
    if EXTENSIONS_DOMAIN in domains:
        try:
            from onnxruntime_extensions import get_library_path
        except ImportError:
            raise UnmappableGraphError(
                f"the graph uses onnxruntime-extensions operators ({EXTENSIONS_DOMAIN}): "
                "pip install 'modelstream[extensions]'"
            ) from None
        options.register_custom_ops_library(get_library_path())
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise UnmappableGraphError(f"onnxruntime cannot load the graph: {exc}") from None


# A batch's categorical values: a [rows, categorical] matrix of strings in the scorer's
# ``categorical`` order, or a map per row.
Categories = np.ndarray | Sequence[Mapping[str, str] | None]


class OnnxScorer:
    """Scores one imported version with onnxruntime (CPU)."""

    def __init__(self, body: ModelBody, *, threads: int = 1) -> None:

        onnx_graph = body["onnx"]
        if onnx_graph is None:
            raise ValueError("not an ONNX artifact")
        data = onnx_graph["graph"]
        if hashlib.sha256(data).hexdigest() != onnx_graph["graph_sha256"]:
            raise ArtifactVerificationError("ONNX graph bytes do not match graph_sha256")
        self.task = Task(body["task"])
        self.feature_names = list(body["feature_names"])
        self.classes = list(body["classes"])
        self.inputs = onnx_graph["inputs"]
        self.categorical = [
            f for i in self.inputs if i["element_type"] == "string" for f in i["features"]
        ]
        self.session = inference_session(serving_graph(onnx_graph, data), threads)
        self.output_name = onnx_graph["zipmap_input"] or onnx_graph["scores_output"]
        column = {name: j for j, name in enumerate(self.feature_names)}
        # per input: (name, numpy dtype or None for strings, numeric column indices or
        # categorical names, whether the columns are X itself)
        self._plans: list[tuple[str, Any, Any, bool]] = []
        for spec in self.inputs:
            if spec["element_type"] == "string":
                position = {name: j for j, name in enumerate(self.categorical)}
                self._plans.append(
                    (
                        spec["name"],
                        None,
                        (list(spec["features"]), [position[f] for f in spec["features"]]),
                        False,
                    )
                )
                continue
            index = np.asarray([column[f] for f in spec["features"]], dtype=np.intp)
            whole = len(index) == len(self.feature_names) and bool(
                (index == np.arange(len(index))).all()
            )
            self._plans.append((spec["name"], NUMERIC_TYPES[spec["element_type"]], index, whole))

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def feeds(self, X: np.ndarray, categories: Categories | None = None) -> dict[str, np.ndarray]:
        n = len(X)
        feeds: dict[str, np.ndarray] = {}
        for name, dtype, columns, whole in self._plans:
            if dtype is None:
                names, positions = columns
                if isinstance(categories, np.ndarray):  # already columns, in our order
                    feeds[name] = categories[:, positions]
                    continue
                rows = categories if categories is not None else [None] * n
                feeds[name] = np.array(
                    [[(row or {}).get(c, "") for c in names] for row in rows], dtype=object
                ).reshape(n, len(names))
            elif whole and dtype == np.float64 and X.dtype == np.float64:
                feeds[name] = X
            else:  # a buffer of this call's own: batches may be scored side by side
                feeds[name] = np.ascontiguousarray(X if whole else X[:, columns], dtype=dtype)
        return feeds

    def score(
        self,
        X: np.ndarray,
        categories: Categories | None = None,
        tensor_rows: object = None,
    ) -> np.ndarray:
        """Class probabilities [N, classes] (regression: values [N]) for the rows of ``X``
        (numeric features in ``feature_names`` order) and their categorical values."""
        (raw,) = self.session.run([self.output_name], self.feeds(X, categories))
        out = np.asarray(raw, dtype=np.float64)
        if self.task == Task.REGRESSION:
            return out.reshape(len(X))
        out = out.reshape(len(X), -1)
        if out.shape[1] == 1 and self.task == Task.BINARY:
            out = np.column_stack((1.0 - out[:, 0], out[:, 0]))
        if out.shape[1] != len(self.classes):
            raise ValueError(
                f"the graph gave {out.shape[1]} score columns for {len(self.classes)} classes"
            )
        return out

    def output(self, X: np.ndarray) -> np.ndarray:
        return self.score(X)

    def warm_up(self) -> None:
        """Score one row of zeros, so the first real batch does not pay for onnxruntime's
        first-run allocations (a graph that refuses zeros is left cold)."""
        try:
            self.score(np.zeros((1, self.n_features)), [dict.fromkeys(self.categorical, "")])
        except Exception:  # a lookup graph may have no answer for zeros: serving will tell
            return


def onnx_candidate(
    name: str,
    signature: GraphSignature,
    *,
    created_by: str = "cli",
    metrics: Mapping[str, float] | None = None,
) -> ModelBody:
    """An imported graph as an unpublished candidate body; the linear tensors stay empty
    (feature drift is measured on the linear kinds' training statistics only)."""
    return imported_body(
        name,
        signature.task,
        signature.feature_names,
        signature.classes,
        signature.onnx,
        created_by=created_by,
        metrics=metrics,
    )


def imported_body(
    name: str,
    task: Task,
    feature_names: Sequence[str],
    classes: Sequence[str],
    graph: OnnxGraph,
    *,
    created_by: str,
    metrics: Mapping[str, float] | None = None,
) -> ModelBody:
    """The candidate body of an imported graph (over features or tensors): no linear tensors,
    no lineage to retrain from."""
    from modelstream.contracts.builders import candidate_body, lineage, training_config
    from modelstream.contracts.records import Origin
    from modelstream.registry.artifact import to_tensor

    empty = to_tensor(np.empty(0))
    return candidate_body(
        name=name,
        task=task,
        feature_names=list(feature_names),
        classes=list(classes),
        tensors={
            "weights": empty,
            "intercepts": empty,
            "feature_mean": empty,
            "feature_scale": empty,
        },
        training=training_config("imported-onnx"),
        lineage=lineage(Origin.IMPORTED),
        metrics=metrics,
        created_by=created_by,
        onnx=graph,
    )


def check_runs(signature: GraphSignature, name: str) -> None:
    """Build a session and score one row of zeros (empty strings for categories); raises
    UnmappableGraphError with onnxruntime's reason when the graph does not run."""
    body: Any = {
        "name": name,
        "task": signature.task,
        "feature_names": signature.feature_names,
        "classes": signature.classes,
        "onnx": signature.onnx,
    }
    scorer = OnnxScorer(body)
    row = np.zeros((1, len(signature.feature_names)))
    try:
        scorer.score(row, [dict.fromkeys(signature.categorical, "")])
    except Exception as exc:
        raise UnmappableGraphError(f"the graph does not run on one row: {exc}") from None
