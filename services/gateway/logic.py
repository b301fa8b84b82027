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
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelstream.contracts.records import ModelBody, Prediction, Task

NUMERIC_DATATYPES = frozenset(
    {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}
    | {"FP16", "FP32", "FP64"}
)


class CallError(Exception):
    """A call answered with an error status and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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

    @classmethod
    def from_body(cls, body: ModelBody) -> ModelInfo:
        graph = body.get("onnx")
        categorical = (
            [f for i in graph["inputs"] if i["element_type"] == "string" for f in i["features"]]
            if graph
            else []
        )
        kind = "onnx" if graph else "mlp" if body.get("layers") else "linear"
        return cls(
            body["name"],
            body["version"],
            Task(body["task"]),
            list(body["feature_names"]),
            categorical,
            list(body["classes"]),
            kind,
        )


@dataclass
class Rows:
    """The rows of one call."""

    X: np.ndarray  # N x d numeric features
    categories: list[dict[str, str]] | None  # per row, for models with categorical inputs

    def __len__(self) -> int:
        return len(self.X)


# Little-endian numpy types of the Open Inference Protocol's binary tensor extension.
BINARY_DTYPES = {
    "BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}  # fmt: skip


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
    for tensor in body.get("inputs", []) if isinstance(body, dict) else []:
        size = (
            (tensor.get("parameters") or {}).get("binary_data_size")
            if isinstance(tensor, dict)
            else None
        )
        if size is None:
            continue
        if not isinstance(size, int) or size < 0 or at + size > len(raw):
            raise CallError(400, f"input {tensor.get('name')!r}: bad binary_data_size")
        blob, at = raw[at : at + size], at + size
        datatype = tensor.get("datatype")
        if datatype == "BYTES":
            tensor["data"] = _binary_strings(blob)
        elif datatype in BINARY_DTYPES:
            itemsize = np.dtype(BINARY_DTYPES[datatype]).itemsize
            if size % itemsize:
                raise CallError(400, f"input {tensor.get('name')!r}: {size} bytes of {datatype}")
            tensor["data"] = np.frombuffer(blob, dtype=BINARY_DTYPES[datatype]).tolist()
        else:
            raise CallError(400, f"input {tensor.get('name')!r} has datatype {datatype!r}")
    if at != len(raw):
        raise CallError(400, f"{len(raw) - at} bytes after the last binary input")
    return body


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise CallError(400, "the request body is not JSON") from None


def _binary_strings(blob: bytes) -> list[str]:
    """BYTES elements: each a 4-byte little-endian length, then the bytes."""
    out, at = [], 0
    while at < len(blob):
        if at + 4 > len(blob):
            raise CallError(400, "truncated BYTES element")
        n = int.from_bytes(blob[at : at + 4], "little")
        at += 4
        if at + n > len(blob):
            raise CallError(400, "truncated BYTES element")
        out.append(blob[at : at + n].decode("utf-8", errors="replace"))
        at += n
    return out


def oip_rows(body: Any, model: ModelInfo, max_rows: int) -> Rows:
    """Rows of an Open Inference Protocol inference request."""
    if not isinstance(body, dict):
        raise CallError(400, "the request body must be a JSON object")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise CallError(400, "'inputs' must be a non-empty list of tensors")
    tensors = [_oip_tensor(t, i) for i, t in enumerate(inputs)]
    names = set(model.feature_names) | set(model.categorical)
    if len(tensors) == 1 and tensors[0][0] not in names:
        _, values, shape, _ = tensors[0]
        if len(shape) != 2 or shape[1] != len(model.feature_names):
            raise CallError(
                400,
                f"input {tensors[0][0]!r} has shape {shape}; {model.name} takes "
                f"[N, {len(model.feature_names)}] (features in order) or one tensor per feature",
            )
        if model.categorical:
            raise CallError(400, f"{model.name} also needs categories {model.categorical}")
        return Rows(_numeric(values, shape, max_rows).reshape(shape), None)
    columns: dict[str, np.ndarray] = {}
    for name, values, shape, datatype in tensors:
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
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise CallError(400, f"input {name!r} needs a shape (a list of sizes)")
    if datatype != "BYTES" and datatype not in NUMERIC_DATATYPES:
        raise CallError(400, f"input {name!r} has datatype {datatype!r}")
    if "data" not in tensor:
        raise CallError(400, f"input {name!r} has no data")
    return name, tensor["data"], shape, datatype


def tf_rows(body: Any, model: ModelInfo, max_rows: int) -> Rows:
    """Rows of a TensorFlow Serving ``:predict`` request."""
    if not isinstance(body, dict):
        raise CallError(400, "the request body must be a JSON object")
    if ("instances" in body) == ("inputs" in body):
        raise CallError(400, "the request needs exactly one of 'instances' and 'inputs'")
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
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        raise CallError(400, "every feature needs the same number of rows")
    (n,) = lengths
    if not 1 <= n <= max_rows:
        raise CallError(400, f"{n} rows; a call takes 1..{max_rows}")
    X = np.column_stack([columns[f] for f in model.feature_names]).astype(np.float64)
    categories = (
        [{c: str(columns[c][i]) for c in model.categorical} for i in range(n)]
        if model.categorical
        else None
    )
    return Rows(X.reshape(n, len(model.feature_names)), categories)


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


# -- answering -------------------------------------------------------------------------------
def oip_response(
    model: ModelInfo, call_id: str, request_ids: Sequence[str], answers: Sequence[Prediction]
) -> dict[str, Any]:
    versions = sorted({a["version"] for a in answers})
    outputs: list[dict[str, Any]]
    if model.task == Task.REGRESSION:
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
    return {
        "model_name": model.name,
        "model_version": ",".join(str(v) for v in versions),
        "id": call_id,
        "parameters": {"request_ids": list(request_ids)},
        "outputs": outputs,
    }


def tf_response(model: ModelInfo, answers: Sequence[Prediction]) -> dict[str, Any]:
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
