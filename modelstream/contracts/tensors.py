"""Named tensors on the wire: the Open Inference Protocol's datatypes as raw bytes.

A request (or training example, or prediction) may carry named tensors beside or instead of
features. On the wire a tensor is ``NamedTensor`` (see ``schemas/PredictionRequest.avsc``):
a name, a datatype, a shape and the elements as little-endian bytes in C order. BYTES
elements (an encoded image, a UTF-8 text, a file) are each a 4-byte little-endian length
followed by the bytes, the layout of the protocol's binary tensor extension.

Every reader checks a tensor before using it, because a producer can write anything: a
shape whose product disagrees with the byte length, negative or astronomically large
dimensions, a BYTES length prefix that points past the end. Those are refused with reason
``invalid-tensor``. A tensor's size is bounded by the record that carries it (the message
limit, ``MODELSTREAM_MAX_MESSAGE_BYTES``), not by an element count: a 3×224×224 FP32 image
is 602 KB of raw bytes.

The JSON form of a tensor takes the data as nested (or flat) lists of numbers, as a list
of strings or of ``{"b64": ...}`` objects for BYTES (TensorFlow Serving's convention), or
as base64 of the raw bytes; :func:`from_plain` turns any of them into the Avro form.

>>> t = from_array("x", np.arange(6, dtype=np.float32).reshape(2, 3))
>>> str(t["datatype"]), t["shape"], len(t["data"])
('FP32', [2, 3], 24)
>>> numeric(t)[1].tolist()
[3.0, 4.0, 5.0]
>>> elements(from_elements("text", ["hi", b"\\xff"]))
[b'hi', b'\\xff']
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from modelstream.contracts.records import NamedTensor, TensorDatatype
from modelstream.errors import InvalidEventError

# numpy dtype of each datatype's elements (little-endian); BYTES has none.
NUMPY_TYPES: dict[str, str] = {
    "BOOL": "|b1",
    "UINT8": "|u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "|i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
DATATYPES = (*NUMPY_TYPES, "BYTES")
DATATYPE_OF = {np.dtype(v).newbyteorder("<"): k for k, v in NUMPY_TYPES.items()}
MAX_RANK = 8
MAX_DIMENSION = 2**31 - 1
MAX_ELEMENTS = 2**32  # far above what a record holds; keeps numpy's shape arithmetic in range
LENGTH_PREFIX = 4
INVALID = "invalid-tensor"


def invalid(name: str, message: str) -> InvalidEventError:
    return InvalidEventError(INVALID, f"tensor {name[:64]!r}: {message}")


def element_count(tensor: NamedTensor) -> int:
    """The number of elements the shape declares, after checking the shape itself: each
    dimension in range, and the dimensions other than 0 together within MAX_ELEMENTS (an
    empty tensor of shape [0, 2**31, 2**31] is still one no array can have)."""
    name, shape = tensor["name"], tensor["shape"]
    if len(shape) > MAX_RANK:
        raise invalid(name, f"rank {len(shape)} is over {MAX_RANK}")
    for size in shape:
        if not 0 <= size <= MAX_DIMENSION:
            raise invalid(name, f"dimension {size} of shape {list(shape)} is out of range")
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise invalid(name, f"shape {list(shape)} is larger than any record holds")
    return math.prod(shape)


def numeric(tensor: NamedTensor) -> np.ndarray:
    """A numeric tensor as a read-only array of its shape (no copy); ``invalid-tensor``
    when its bytes do not hold exactly the elements its shape declares."""
    datatype = tensor["datatype"]
    name = tensor["name"]
    if datatype not in NUMPY_TYPES:
        raise invalid(name, f"datatype {datatype} is not numeric")
    count = element_count(tensor)
    dtype = np.dtype(NUMPY_TYPES[datatype])
    data = tensor["data"]
    if len(data) != count * dtype.itemsize:
        raise invalid(
            name,
            f"shape {list(tensor['shape'])} of {datatype} needs {count * dtype.itemsize} "
            f"bytes, the data has {len(data)}",
        )
    return np.frombuffer(data, dtype=dtype).reshape(tensor["shape"])


def elements(tensor: NamedTensor) -> list[bytes]:
    """The elements of a BYTES tensor; ``invalid-tensor`` when a length prefix points past
    the data, the data has bytes after the last element, or the count differs from the
    shape's."""
    name = tensor["name"]
    if tensor["datatype"] != "BYTES":
        raise invalid(name, f"datatype {tensor['datatype']} is not BYTES")
    count = element_count(tensor)
    data = tensor["data"]
    if count * LENGTH_PREFIX > len(data):
        raise invalid(name, f"{count} elements cannot fit in {len(data)} bytes")
    out = split_elements(data, name)
    if len(out) != count:
        raise invalid(name, f"the data holds {len(out)} elements, the shape {count}")
    return out


def split_elements(data: bytes, name: str = "") -> list[bytes]:
    """BYTES elements laid end to end, each a 4-byte little-endian length and its bytes;
    ``invalid-tensor`` when a length prefix points past the data."""
    out: list[bytes] = []
    view = memoryview(data)
    at = 0
    while at < len(data):
        if at + LENGTH_PREFIX > len(data):
            raise invalid(name, f"{len(data) - at} bytes after the last element")
        size = int.from_bytes(view[at : at + LENGTH_PREFIX], "little")
        at += LENGTH_PREFIX
        if at + size > len(data):
            raise invalid(
                name, f"element {len(out)} declares {size} bytes, {len(data) - at} remain"
            )
        out.append(bytes(view[at : at + size]))
        at += size
    return out


def check(tensor: NamedTensor) -> None:
    """Refuse a tensor whose parts disagree (the reader's first step)."""
    if tensor["datatype"] == "BYTES":
        elements(tensor)
    else:
        numeric(tensor)


def pack_elements(values: Sequence[bytes | str]) -> bytes:
    parts = []
    for value in values:
        raw = value.encode() if isinstance(value, str) else bytes(value)
        parts.append(len(raw).to_bytes(LENGTH_PREFIX, "little"))
        parts.append(raw)
    return b"".join(parts)


def from_elements(
    name: str, values: Sequence[bytes | str], shape: Sequence[int] | None = None
) -> NamedTensor:
    """A BYTES tensor (strings are UTF-8 encoded); shape defaults to ``[len(values)]``."""
    return {
        "name": name,
        "datatype": TensorDatatype.BYTES,
        "shape": list(shape) if shape is not None else [len(values)],
        "data": pack_elements(values),
    }


def from_array(name: str, array: np.ndarray) -> NamedTensor:
    """A numeric tensor from an array of one of the protocol's numeric types."""
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    datatype = DATATYPE_OF.get(np.dtype(dtype).newbyteorder("<"))
    if datatype is None:
        raise ValueError(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype")
    data = np.ascontiguousarray(array, dtype=NUMPY_TYPES[datatype]).tobytes()
    return {
        "name": name,
        "datatype": TensorDatatype(datatype),
        "shape": list(array.shape),
        "data": data,
    }


def by_name(tensors: Sequence[NamedTensor]) -> dict[str, NamedTensor]:
    """Tensors by name; a name given twice is refused (which one would the model take?)."""
    out: dict[str, NamedTensor] = {}
    for tensor in tensors:
        if tensor["name"] in out:
            raise invalid(tensor["name"], "given twice")
        out[tensor["name"]] = tensor
    return out


# -- JSON -----------------------------------------------------------------------------------
def _json_fail(path: str, message: str, reason: str = "invalid-json") -> InvalidEventError:
    return InvalidEventError(reason, f"{path}: {message}")


def from_plain(plain: Any, path: str) -> Any:
    """A JSON tensor with its data in Avro's form (bytes as base64 text, as the schema-driven
    reader takes them); anything not shaped like a tensor is left for that reader to refuse.
    ``datatype`` is required; ``shape`` defaults to the nesting of the lists."""
    if not isinstance(plain, dict) or "data" not in plain:
        return plain
    datatype = plain.get("datatype")
    data = plain["data"]
    where = f"{path}.data"
    if isinstance(datatype, str):
        datatype = datatype.upper()
    if isinstance(data, str):  # base64 of the raw bytes: Avro's JSON shape already
        return {**plain, "datatype": datatype, "shape": plain.get("shape", [])}
    if datatype not in DATATYPES:
        raise _json_fail(f"{path}.datatype", f"expected one of {list(DATATYPES)}, got {datatype!r}")
    raw, shape = json_data(datatype, data, where)
    return {
        **plain,
        "datatype": datatype,
        "shape": plain.get("shape", shape),
        "data": base64.b64encode(raw).decode(),
    }


def json_data(datatype: str, data: Any, where: str) -> tuple[bytes, list[int]]:
    """The raw bytes of JSON tensor data (lists of numbers; strings or ``{"b64": ...}`` for
    BYTES), and the shape its nesting gives; InvalidEventError names what is wrong."""
    if datatype == "BYTES":
        values = _flatten_bytes(data, where)
        return pack_elements(values), [len(values)]
    array = _numbers(data, datatype, where)
    return array.tobytes(), list(array.shape)


def _flatten_bytes(data: Any, where: str) -> list[bytes]:
    out: list[bytes] = []
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(reversed(node))
        elif isinstance(node, str):
            out.append(node.encode())
        elif isinstance(node, dict) and set(node) == {"b64"} and isinstance(node["b64"], str):
            try:
                out.append(base64.b64decode(node["b64"], validate=True))
            except (binascii.Error, ValueError) as exc:
                raise _json_fail(where, f"invalid base64: {exc}") from None
        else:
            raise _json_fail(where, 'BYTES elements are strings or {"b64": ...} objects')
    return out


def _numbers(data: Any, datatype: str, where: str) -> np.ndarray:
    if not isinstance(data, list | int | float):
        raise _json_fail(where, f"expected (nested) lists of numbers for {datatype}")
    try:
        array = np.asarray(data)
    except (ValueError, OverflowError) as exc:  # ragged lists, huge integers
        raise _json_fail(where, f"not a regular array of numbers: {str(exc)[:200]}") from None
    target = np.dtype(NUMPY_TYPES[datatype])
    if datatype == "BOOL":
        if array.dtype.kind != "b":
            raise _json_fail(where, "BOOL elements are true or false")
        return array.astype(target)
    if array.dtype.kind not in "iuf":
        raise _json_fail(where, f"expected numbers for {datatype}, got {array.dtype.kind!r} values")
    if target.kind == "f":
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise _json_fail(where, "NaN or infinity in a tensor", "non-finite")
        with np.errstate(over="ignore"):
            out = array.astype(target)
        if not np.isfinite(out).all():
            raise _json_fail(where, f"a value overflows {datatype}", "out-of-range")
        return out
    if array.dtype.kind == "f" and not (np.isfinite(array) & (array == np.round(array))).all():
        raise _json_fail(where, f"{datatype} elements must be integers")
    info = np.iinfo(target)
    if array.size:
        if array.dtype.kind == "f":  # compared as floats: the exclusive bound is exact
            outside = array.min() < float(info.min) or array.max() >= float(info.max) + 1
        else:
            outside = array.min() < info.min or array.max() > info.max
        if outside:
            raise _json_fail(where, f"a value is outside the range of {datatype}", "out-of-range")
    return array.astype(target)


def to_plain(tensor: Mapping[str, Any]) -> dict[str, Any]:
    """A tensor as readable JSON: numbers as nested lists, BYTES as strings when they are
    UTF-8 (else ``{"b64": ...}``); a tensor that does not decode keeps its base64 bytes."""
    record: NamedTensor = {
        "name": tensor["name"],
        "datatype": tensor["datatype"],
        "shape": list(tensor["shape"]),
        "data": tensor["data"],
    }
    try:
        if record["datatype"] == "BYTES":
            data: Any = [_text_or_b64(v) for v in elements(record)]
        else:
            data = numeric(record).tolist()
    except InvalidEventError:
        data = base64.b64encode(record["data"]).decode()
    return {**record, "data": data}


def _text_or_b64(value: bytes) -> Any:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode()}
