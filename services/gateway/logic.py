"""The two HTTP protocols in modelstream's terms; pure, no Kafka and no HTTP types.

A call's body becomes rows (numeric features in the model's order, categorical values by
name) and its answers become the protocol's response:

* Open Inference Protocol v2 (KServe V2; MLServer, Triton and their clients):
  ``inputs`` is one ``[N, d]`` tensor in feature order, or one tensor per named feature
  (``[N]`` or ``[N, 1]``; BYTES for categorical features); the response has the outputs
  ``predict`` (labels, or values for regression) and ``scores`` (``[N, classes]``).
* TensorFlow Serving REST: ``instances`` (rows as lists in feature order or objects of
  named features) or ``inputs`` (columnar: an object of feature -> values, or a list of
  rows); the response is ``predictions``, one per row.

A model that takes tensors (an image, a text, a file, any tensor: see
``registry/tensor_model.py``) takes one protocol tensor per input, its first axis the rows:
BYTES elements (encoded images, UTF-8 text, raw files; ``{"b64": ...}`` in TensorFlow
Serving's JSON), or numbers (UINT8 pixels, FP32 tensors, token ids). Its answers add the
outputs it declares (an embedding) and, when it keeps only the top k scores, ``top_labels``
and ``top_scores`` instead of ``scores``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelstream.contracts import tensors
from modelstream.contracts.limits import json_depth
from modelstream.contracts.records import (
    ModelBody,
    NamedTensor,
    Prediction,
    ServingSpec,
    Task,
    TensorDatatype,
)
from modelstream.errors import InvalidEventError

MAX_MESSAGE = 400  # characters of an error's reason
# a request's JSON: a tensor of rank 8 in nested lists, inside inputs, inside the body
MAX_BODY_DEPTH = 16
NUMERIC_DATATYPES = frozenset(
    {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}
    | {"FP16", "FP32", "FP64"}
)


class CallError(Exception):
    """A call answered with an error status and a one-line reason."""

    def __init__(self, status: int, message: str, request_ids: list[str] | None = None) -> None:
        if len(message) > MAX_MESSAGE:  # reasons quote the caller's names and values
            message = message[: MAX_MESSAGE - 3] + "..."
        super().__init__(message)
        self.status = status
        self.message = message
        self.request_ids = request_ids  # the rows' ids, when they were sent


@dataclass(frozen=True)
class ModelInfo:
    """What the gateway knows of a model: its production version and its signature."""

    name: str
    version: int
    task: Task
    feature_names: list[str]  # numeric, in packed order
    categorical: list[str]
    classes: list[str]
    kind: str
    spec: ServingSpec | None = None  # a tensor model's serving spec
    inputs: tuple[tuple[str, str, tuple[int, ...]], ...] = ()  # its tensors: name, type, row

    @classmethod
    def from_body(cls, body: ModelBody) -> ModelInfo:
        from modelstream.registry.tensor_model import decode_spec, input_signature

        graph = body.get("onnx")
        categorical = (
            [f for i in graph["inputs"] if i["element_type"] == "string" for f in i["features"]]
            if graph
            else []
        )
        kind = "onnx" if graph else "mlp" if body.get("layers") else "linear"
        spec_bytes = graph.get("spec") if graph else None
        spec = decode_spec(spec_bytes) if spec_bytes else None
        return cls(
            body["name"],
            body["version"],
            Task(body["task"]),
            list(body["feature_names"]),
            categorical,
            list(body["classes"]),
            "tensor" if spec is not None else kind,
            spec,
            tuple((n, d, tuple(shape)) for n, d, shape in input_signature(spec)) if spec else (),
        )

    @property
    def top_k(self) -> int:
        from modelstream.registry.tensor_model import top_k_of

        return top_k_of(self.spec, len(self.classes)) if self.spec is not None else 0


@dataclass
class Rows:
    """The rows of one call."""

    X: np.ndarray  # N x d numeric features
    categories: list[dict[str, str]] | None  # per row, for models with categorical inputs
    tensors: list[list[NamedTensor]] | None = None  # per row, for a model that takes tensors

    def __len__(self) -> int:
        return len(self.tensors) if self.tensors is not None else len(self.X)


@dataclass(frozen=True)
class Binary:
    """A binary-extension input's bytes, in place of its JSON data (no JSON value is one):
    read as the model needs it, lists for features, bytes for tensors."""

    blob: bytes


# -- reading calls ---------------------------------------------------------------------------
def oip_body(raw: bytes, header_length: str | None) -> Any:
    """The JSON of an inference request; with the binary tensor extension (the
    ``Inference-Header-Content-Length`` header, what tritonclient sends by default), the
    JSON comes first and each input's ``binary_data_size`` bytes follow in order."""
    if header_length is None:
        return _json(raw)
    try:
        length = int(header_length)
    except ValueError:
        raise CallError(400, "Inference-Header-Content-Length is not a number") from None
    if not 0 < length <= len(raw):
        raise CallError(400, "Inference-Header-Content-Length is outside the body")
    body = _json(raw[:length])
    at = length
    inputs = body.get("inputs") if isinstance(body, dict) else None
    for tensor in inputs if isinstance(inputs, list) else []:
        parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is None:
            continue
        name = str(tensor.get("name"))[:64]
        if not isinstance(size, int) or size < 0 or at + size > len(raw):
            raise CallError(400, f"input {name!r}: bad binary_data_size")
        blob, at = raw[at : at + size], at + size
        datatype = tensor.get("datatype")
        if datatype == "BYTES":
            _binary_strings(blob)  # the length prefixes must add up
        elif isinstance(datatype, str) and datatype in tensors.NUMPY_TYPES:
            itemsize = np.dtype(tensors.NUMPY_TYPES[datatype]).itemsize
            if size % itemsize:
                raise CallError(400, f"input {name!r}: {size} bytes of {datatype}")
        else:
            raise CallError(400, f"input {name!r} has datatype {str(datatype)[:32]!r}")
        tensor["data"] = Binary(blob)
    if at != len(raw):
        raise CallError(400, f"{len(raw) - at} bytes after the last binary input")
    return body


def _json(raw: bytes) -> Any:
    try:
        body = json.loads(raw)
    except RecursionError:
        raise CallError(400, "the request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise CallError(400, "the request body is not JSON") from None
    # what parses may still be deeper than any tensor, and the readers below recurse
    if json_depth(body) > MAX_BODY_DEPTH:
        raise CallError(400, f"the request body is nested deeper than {MAX_BODY_DEPTH} levels")
    return body


def _binary_strings(blob: bytes) -> list[bytes]:
    """BYTES elements: each a 4-byte little-endian length, then the bytes."""
    try:
        return tensors.split_elements(blob)
    except InvalidEventError as exc:
        raise CallError(400, f"BYTES elements: {exc}") from None


def _json_values(tensor: dict[str, Any]) -> Any:
    """A feature tensor's values as JSON would carry them (a binary input converted)."""
    data = tensor["data"]
    if not isinstance(data, Binary):
        return data
    if tensor.get("datatype") == "BYTES":
        return [v.decode("utf-8", errors="replace") for v in _binary_strings(data.blob)]
    return np.frombuffer(data.blob, dtype=tensors.NUMPY_TYPES[tensor["datatype"]]).tolist()


def oip_rows(body: Any, model: ModelInfo, max_rows: int) -> Rows:
    """Rows of an Open Inference Protocol inference request."""
    if not isinstance(body, dict):
        raise CallError(400, "the request body must be a JSON object")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise CallError(400, "'inputs' must be a non-empty list of tensors")
    if model.spec is not None:
        return _oip_tensor_rows(inputs, model, max_rows)
    given = [_oip_tensor(t, i) for i, t in enumerate(inputs)]
    names = set(model.feature_names) | set(model.categorical)
    if len(given) == 1 and given[0][0] not in names:
        _, values, shape, _ = given[0]
        if len(shape) != 2 or shape[1] != len(model.feature_names):
            raise CallError(
                400,
                f"input {given[0][0]!r} has shape {shape}; {model.name} takes "
                f"[N, {len(model.feature_names)}] (features in order) or one tensor per feature",
            )
        if model.categorical:
            raise CallError(400, f"{model.name} also needs categories {model.categorical}")
        return Rows(_numeric(values, shape, max_rows).reshape(shape), None)
    columns: dict[str, np.ndarray] = {}
    for name, values, shape, datatype in given:
        if name not in names:
            raise CallError(400, f"unknown feature {name!r} (not an input of {model.name})")
        if (len(shape) == 2 and shape[1] != 1) or len(shape) not in (1, 2):
            raise CallError(400, f"input {name!r} has shape {shape}; one feature is [N] or [N, 1]")
        if name in model.categorical:
            if datatype != "BYTES":
                raise CallError(400, f"categorical input {name!r} must be BYTES")
            columns[name] = np.asarray([str(v) for v in _flat(values)], dtype=object)
        else:
            columns[name] = _numeric(values, shape, max_rows)
    return _from_columns(columns, model, max_rows)


def _oip_tensor(tensor: Any, index: int) -> tuple[str, Any, list[int], str]:
    if not isinstance(tensor, dict):
        raise CallError(400, f"input {index} is not an object")
    name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
    if not isinstance(name, str) or not name:
        raise CallError(400, f"input {index} has no name")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape
    ):
        raise CallError(400, f"input {name!r} needs a shape (a list of sizes)")
    if not isinstance(datatype, str) or (datatype != "BYTES" and datatype not in NUMERIC_DATATYPES):
        raise CallError(400, f"input {name!r} has datatype {datatype!r}")
    if "data" not in tensor:
        raise CallError(400, f"input {name!r} has no data")
    return name, _json_values(tensor), shape, datatype


def tf_rows(body: Any, model: ModelInfo, max_rows: int) -> Rows:
    """Rows of a TensorFlow Serving ``:predict`` request."""
    if not isinstance(body, dict):
        raise CallError(400, "the request body must be a JSON object")
    if ("instances" in body) == ("inputs" in body):
        raise CallError(400, "the request needs exactly one of 'instances' and 'inputs'")
    if model.spec is not None:
        return _tf_tensor_rows(body, model, max_rows)
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise CallError(400, "'instances' must be a non-empty list")
        if len(instances) > max_rows:
            raise CallError(400, f"{len(instances)} rows; a call takes at most {max_rows}")
        if all(isinstance(i, dict) for i in instances):
            names = {k for i in instances for k in i}
            columns = {
                name: [instance.get(name) for instance in instances] for name in sorted(names)
            }
            return _columns_from_lists(columns, model, max_rows)
        if all(isinstance(i, list) for i in instances):
            return _rows_from_lists(instances, model, max_rows)
        raise CallError(
            400, "each instance is a list of feature values or an object of named features"
        )
    inputs = body["inputs"]
    if isinstance(inputs, dict):
        return _columns_from_lists(inputs, model, max_rows)
    if isinstance(inputs, list) and inputs and all(isinstance(r, list) for r in inputs):
        return _rows_from_lists(inputs, model, max_rows)
    raise CallError(400, "'inputs' must be an object of feature -> values or a list of rows")


def _rows_from_lists(rows: list[Any], model: ModelInfo, max_rows: int) -> Rows:
    if model.categorical:
        raise CallError(400, f"{model.name} takes named features (categories {model.categorical})")
    d = len(model.feature_names)
    if any(len(r) != d for r in rows):
        raise CallError(400, f"each row must have {d} values in feature order")
    return Rows(_numeric(rows, [len(rows), d], max_rows).reshape(len(rows), d), None)


def _columns_from_lists(columns: Mapping[str, Any], model: ModelInfo, max_rows: int) -> Rows:
    names = set(model.feature_names) | set(model.categorical)
    arrays: dict[str, np.ndarray] = {}
    for name, values in columns.items():
        if name not in names:
            raise CallError(400, f"unknown feature {name!r} (not an input of {model.name})")
        values = values if isinstance(values, list) else [values]
        if name in model.categorical:
            if not all(isinstance(v, str) for v in values):
                raise CallError(400, f"categorical feature {name!r} takes strings")
            arrays[name] = np.asarray(values, dtype=object)
        else:
            arrays[name] = _numeric(values, [len(values)], max_rows)
    return _from_columns(arrays, model, max_rows)


def _from_columns(columns: Mapping[str, np.ndarray], model: ModelInfo, max_rows: int) -> Rows:
    missing = [n for n in (*model.feature_names, *model.categorical) if n not in columns]
    if missing:
        raise CallError(400, f"missing features {missing[:5]}")
    n = _row_count([len(v) for v in columns.values()], "feature", max_rows)
    X = np.column_stack([columns[f] for f in model.feature_names]).astype(np.float64)
    categories = (
        [{c: str(columns[c][i]) for c in model.categorical} for i in range(n)]
        if model.categorical
        else None
    )
    return Rows(X.reshape(n, len(model.feature_names)), categories)


def _row_count(counts: Sequence[int], what: str, max_rows: int) -> int:
    """The rows of a call whose columns (features, or inputs' first axes) must agree."""
    if len(set(counts)) != 1:
        raise CallError(400, f"every {what} needs the same number of rows")
    n = counts[0]
    if not 1 <= n <= max_rows:
        raise CallError(400, f"{n} rows; a call takes 1..{max_rows}")
    return n


def _flat(values: Any) -> list[Any]:
    if isinstance(values, list) and values and isinstance(values[0], list):
        return [v for row in values for v in _flat(row)]
    return values if isinstance(values, list) else [values]


def _numeric(values: Any, shape: Sequence[int], max_rows: int) -> np.ndarray:
    flat = _flat(values)
    expected = math.prod(shape)
    if len(flat) != expected:
        raise CallError(400, f"{len(flat)} values for shape {list(shape)}")
    if shape and shape[0] > max_rows:
        raise CallError(400, f"{shape[0]} rows; a call takes at most {max_rows}")
    if not all(
        (isinstance(v, int | float) and not isinstance(v, bool)) or v is True or v is False
        for v in flat
    ):
        raise CallError(400, "feature values must be numbers")
    array = np.asarray(flat, dtype=np.float64)
    if not np.isfinite(array).all():
        raise CallError(400, "feature values must be finite")
    return array


# -- tensors ---------------------------------------------------------------------------------
def _oip_tensor_rows(inputs: list[Any], model: ModelInfo, max_rows: int) -> Rows:
    """One protocol tensor per model input, its first axis the rows."""
    wanted = {name: datatype for name, datatype, _ in model.inputs}
    accepted = _accepted_datatypes(model)
    batches: dict[str, NamedTensor] = {}
    for index, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise CallError(400, f"input {index} is not an object")
        name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
        if not isinstance(name, str) or name not in wanted:
            raise CallError(400, f"unknown input {str(name)[:64]!r} (inputs: {sorted(wanted)})")
        if name in batches:
            raise CallError(400, f"input {name!r} given twice")
        if (
            not isinstance(shape, list)
            or not shape
            or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape
            )
        ):
            raise CallError(400, f"input {name!r} needs a shape whose first axis is the rows")
        if not isinstance(datatype, str) or datatype not in accepted[name]:
            raise CallError(
                400,
                f"input {name!r} is {str(datatype)[:32]!r}; the model takes "
                f"{' or '.join(sorted(accepted[name]))}",
            )
        try:
            if "data" not in tensor:
                raise CallError(400, f"input {name!r} has no data")
            if isinstance(tensor["data"], Binary):
                data = tensor["data"].blob
            else:
                data, _ = tensors.json_data(datatype, tensor["data"], f"input {name!r}")
            batch: NamedTensor = {
                "name": name,
                "datatype": TensorDatatype(datatype),
                "shape": shape,
                "data": data,
            }
            tensors.check(batch)
        except InvalidEventError as exc:
            raise CallError(400, str(exc)) from None
        batches[name] = batch
    missing = sorted(set(wanted) - set(batches))
    if missing:
        raise CallError(400, f"missing inputs {missing}")
    n = _row_count([t["shape"][0] for t in batches.values()], "input", max_rows)
    rows: list[list[NamedTensor]] = [[] for _ in range(n)]
    for batch in batches.values():
        for i, row in enumerate(_split_rows(batch, n)):
            rows[i].append(row)
    return Rows(np.empty((n, 0)), None, rows)


def _accepted_datatypes(model: ModelInfo) -> dict[str, set[str]]:
    """What each input takes: a tensor its own datatype, an image encoded bytes or UINT8
    pixels, a text or a file BYTES."""
    assert model.spec is not None
    kinds = {i["name"]: i["kind"] for i in model.spec["inputs"]}
    return {
        name: {datatype, "UINT8"} if kinds[name] == "IMAGE" else {datatype}
        for name, datatype, _ in model.inputs
    }


def _split_rows(batch: NamedTensor, n: int) -> list[NamedTensor]:
    """A batch tensor's rows, each without the batch axis (one BYTES element: shape [1])."""
    row_shape = list(batch["shape"][1:])
    if batch["datatype"] == "BYTES":
        values = tensors.elements(batch)
        per = len(values) // n if n else 0
        return [
            tensors.from_elements(batch["name"], values[i * per : (i + 1) * per], row_shape or [1])
            for i in range(n)
        ]
    array = tensors.numeric(batch)
    return [tensors.from_array(batch["name"], array[i]) for i in range(n)]


def _tf_tensor_rows(body: dict[str, Any], model: ModelInfo, max_rows: int) -> Rows:
    """``instances``: one object of input -> value per row (or the value itself for a
    one-input model); ``inputs``: an object of input -> list of values (or the list)."""
    names = [name for name, _, _ in model.inputs]
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise CallError(400, "'instances' must be a non-empty list")
        columns: dict[str, list[Any]] = {}
        for instance in instances:
            values = instance if _named_row(instance) else {names[0]: instance}
            if len(names) > 1 and not _named_row(instance):
                raise CallError(400, f"each instance is an object of the inputs {names}")
            for name, value in values.items():
                columns.setdefault(name, []).append(value)
    else:
        inputs = body["inputs"]
        columns = inputs if _named_row(inputs) else {names[0]: inputs}
        if not all(isinstance(v, list) for v in columns.values()):
            raise CallError(400, "'inputs' maps each input to a list of values, one per row")
    unknown = sorted(set(columns) - set(names))
    if unknown:
        raise CallError(400, f"unknown inputs {[u[:64] for u in unknown[:5]]} (inputs: {names})")
    missing = sorted(set(names) - set(columns))
    if missing:
        raise CallError(400, f"missing inputs {missing}")
    n = _row_count([len(v) for v in columns.values()], "input", max_rows)
    accepted = _accepted_datatypes(model)
    rows: list[list[NamedTensor]] = [[] for _ in range(n)]
    for name in names:
        for i, value in enumerate(columns[name]):
            rows[i].append(_tf_value(name, accepted[name], value))
    return Rows(np.empty((n, 0)), None, rows)


def _named_row(value: Any) -> bool:
    """An object of input -> value (not a ``{"b64": ...}`` value of the only input)."""
    return isinstance(value, dict) and set(value) != {"b64"}


def _tf_value(name: str, accepted: set[str], value: Any) -> NamedTensor:
    """One row's value of one input: ``{"b64": ...}`` or a string for BYTES, nested lists
    of numbers (UINT8 pixels for an image, the input's own datatype for a tensor)."""
    binary = isinstance(value, str | dict)
    numeric = next((d for d in sorted(accepted) if d != "BYTES"), None)
    if (binary and "BYTES" not in accepted) or (not binary and numeric is None):
        raise CallError(
            400, f"input {name!r} takes {' or '.join(sorted(accepted))}: not {_kind_of(value)}"
        )
    try:
        if binary:
            data, _ = tensors.json_data("BYTES", [value], f"input {name!r}")
            return tensors.from_elements(name, tensors.split_elements(data))
        assert numeric is not None
        data, shape = tensors.json_data(numeric, value, f"input {name!r}")
    except InvalidEventError as exc:
        raise CallError(400, str(exc)) from None
    return {
        "name": name,
        "datatype": TensorDatatype(numeric),
        "shape": shape,
        "data": data,
    }


def _kind_of(value: Any) -> str:
    return "a string" if isinstance(value, str | dict) else "numbers"


def _stack(name: str, values: Sequence[NamedTensor]) -> list[dict[str, Any]]:
    """One output over the rows, as a protocol tensor [N, ...] (JSON data). Rows of
    different lengths (a sequence per token of texts of different lengths) are padded with
    zeros to the longest, and ``<name>_lengths`` [N] says how long each row is."""
    datatype = str(values[0]["datatype"])
    if any(v["datatype"] != datatype or v["datatype"] == "BYTES" for v in values):
        raise CallError(502, f"output {name!r} has rows of different kinds")
    arrays = [tensors.numeric(v) for v in values]
    shapes = {a.shape for a in arrays}
    lengths = None
    if len(shapes) > 1:
        if len({a.shape[1:] for a in arrays}) != 1 or any(a.ndim == 0 for a in arrays):
            raise CallError(502, f"output {name!r} has rows of different shapes")
        longest = max(len(a) for a in arrays)
        lengths = [len(a) for a in arrays]
        arrays = [
            np.concatenate([a, np.zeros((longest - len(a), *a.shape[1:]), a.dtype)]) for a in arrays
        ]
    stacked = np.stack(arrays)
    out = [
        {
            "name": name,
            "shape": list(stacked.shape),
            "datatype": datatype,
            "data": stacked.reshape(-1).tolist(),
        }
    ]
    if lengths is not None:
        out.append(
            {
                "name": f"{name}_lengths",
                "shape": [len(lengths)],
                "datatype": "INT64",
                "data": lengths,
            }
        )
    return out


def _output_rows(answers: Sequence[Prediction]) -> dict[str, list[NamedTensor]]:
    by_name: dict[str, list[NamedTensor]] = {}
    for answer in answers:
        for tensor in answer.get("outputs") or ():
            by_name.setdefault(tensor["name"], []).append(tensor)
    return {name: rows for name, rows in by_name.items() if len(rows) == len(answers)}


def _oip_class_outputs(model: ModelInfo, answers: Sequence[Prediction]) -> list[dict[str, Any]]:
    n = len(answers)
    if model.task == Task.EMBEDDING:
        return []
    if model.task == Task.REGRESSION:
        return [
            {
                "name": "predict",
                "shape": [n],
                "datatype": "FP64",
                "data": [float(a["prediction"]) for a in answers],
            }
        ]
    outputs: list[dict[str, Any]] = [
        {
            "name": "predict",
            "shape": [n],
            "datatype": "BYTES",
            "data": [str(a["prediction"]) for a in answers],
        }
    ]
    k = model.top_k
    if k:
        outputs.append(
            {
                "name": "top_labels",
                "shape": [n, k],
                "datatype": "BYTES",
                "data": [label for a in answers for label in list(a["scores"])[:k]],
            }
        )
        outputs.append(
            {
                "name": "top_scores",
                "shape": [n, k],
                "datatype": "FP64",
                "data": [score for a in answers for score in list(a["scores"].values())[:k]],
            }
        )
    else:
        outputs.append(
            {
                "name": "scores",
                "shape": [n, len(model.classes)],
                "datatype": "FP64",
                "data": [a["scores"].get(c, 0.0) for a in answers for c in model.classes],
            }
        )
    return outputs


# -- answering -------------------------------------------------------------------------------
def oip_response(
    model: ModelInfo,
    call_id: str | None,
    request_ids: Sequence[str],
    answers: Sequence[Prediction],
) -> dict[str, Any]:
    versions = sorted({a["version"] for a in answers})
    outputs: list[dict[str, Any]]
    if model.spec is not None:
        outputs = _oip_class_outputs(model, answers) + [
            tensor for name, rows in _output_rows(answers).items() for tensor in _stack(name, rows)
        ]
    elif model.task == Task.REGRESSION:
        outputs = [
            {
                "name": "predict",
                "shape": [len(answers)],
                "datatype": "FP64",
                "data": [float(a["prediction"]) for a in answers],
            }
        ]
    else:
        outputs = [
            {
                "name": "predict",
                "shape": [len(answers)],
                "datatype": "BYTES",
                "data": [str(a["prediction"]) for a in answers],
            },
            {
                "name": "scores",
                "shape": [len(answers), len(model.classes)],
                "datatype": "FP64",
                "data": [a["scores"].get(c, 0.0) for a in answers for c in model.classes],
            },
        ]
    outputs.append(
        {
            "name": "version",
            "shape": [len(answers)],
            "datatype": "INT64",
            "data": [a["version"] for a in answers],
        }
    )
    response: dict[str, Any] = {
        "model_name": model.name,
        "model_version": ",".join(str(v) for v in versions),
        "parameters": {"request_ids": list(request_ids)},
        "outputs": outputs,
    }
    if call_id is not None:
        response["id"] = call_id
    return response


def tf_response(model: ModelInfo, answers: Sequence[Prediction]) -> dict[str, Any]:
    if model.spec is not None:
        rows: list[dict[str, Any]] = []
        for answer in answers:
            row: dict[str, Any] = {"version": answer["version"]}
            if model.task == Task.REGRESSION:
                row["predict"] = float(answer["prediction"])
            elif model.task != Task.EMBEDDING:
                row["predict"] = str(answer["prediction"])
                row["scores"] = dict(answer["scores"])
            for tensor in answer.get("outputs") or ():
                row[tensor["name"]] = tensors.to_plain(tensor)["data"]
            rows.append(row)
        return {"predictions": rows}
    if model.task == Task.REGRESSION:
        return {"predictions": [float(a["prediction"]) for a in answers]}
    return {
        "predictions": [
            {
                "predict": str(a["prediction"]),
                "scores": [a["scores"].get(c, 0.0) for c in model.classes],
                "version": a["version"],
            }
            for a in answers
        ]
    }


def oip_metadata(model: ModelInfo, versions: Sequence[int]) -> dict[str, Any]:
    if model.spec is not None:
        return _tensor_metadata(model, versions)
    inputs: list[dict[str, Any]] = [
        {"name": f, "datatype": "FP64", "shape": [-1, 1]} for f in model.feature_names
    ] + [{"name": c, "datatype": "BYTES", "shape": [-1, 1]} for c in model.categorical]
    outputs: list[dict[str, Any]] = [
        {
            "name": "predict",
            "datatype": "FP64" if model.task == Task.REGRESSION else "BYTES",
            "shape": [-1],
        }
    ]
    if model.task != Task.REGRESSION:
        outputs.append({"name": "scores", "datatype": "FP64", "shape": [-1, len(model.classes)]})
    outputs.append({"name": "version", "datatype": "INT64", "shape": [-1]})
    return {
        "name": model.name,
        "versions": [str(v) for v in versions],
        "platform": f"modelstream-{model.kind}",
        "inputs": inputs,
        "outputs": outputs,
        "parameters": {
            "task": model.task.lower(),
            "classes": model.classes,
            "production_version": model.version,
            "feature_order": model.feature_names,
        },
    }


def _tensor_metadata(model: ModelInfo, versions: Sequence[int]) -> dict[str, Any]:
    """A tensor model's inputs (rows first, -1 for any size) and outputs."""
    assert model.spec is not None
    kinds = {i["name"]: str(i["kind"]).lower() for i in model.spec["inputs"]}
    inputs = [
        {
            "name": name,
            "datatype": datatype,
            "shape": [-1, *shape],
            "parameters": {"content": kinds[name]},
        }
        for name, datatype, shape in model.inputs
    ]
    n = len(model.classes)
    outputs: list[dict[str, Any]] = []
    if model.task == Task.REGRESSION:
        outputs.append({"name": "predict", "datatype": "FP64", "shape": [-1]})
    elif model.task != Task.EMBEDDING:
        outputs.append({"name": "predict", "datatype": "BYTES", "shape": [-1]})
        if model.top_k:
            outputs.append({"name": "top_labels", "datatype": "BYTES", "shape": [-1, model.top_k]})
            outputs.append({"name": "top_scores", "datatype": "FP64", "shape": [-1, model.top_k]})
        else:
            outputs.append({"name": "scores", "datatype": "FP64", "shape": [-1, n]})
    for output in model.spec["outputs"]:
        outputs.append({"name": output["name"], "datatype": str(output["datatype"]), "shape": [-1]})
    outputs.append({"name": "version", "datatype": "INT64", "shape": [-1]})
    return {
        "name": model.name,
        "versions": [str(v) for v in versions],
        "platform": "modelstream-tensor",
        "inputs": inputs,
        "outputs": outputs,
        "parameters": {
            "task": model.task.lower(),
            "classes": model.classes,
            "production_version": model.version,
        },
    }


def tf_status(model: ModelInfo, versions: Sequence[int]) -> dict[str, Any]:
    return {
        "model_version_status": [
            {
                "version": str(v),
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
            for v in versions
        ]
    }
