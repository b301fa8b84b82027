"""What a decoded record may contain, beyond what its schema's types say.

Avro and JSON both decode values that no later code can use safely: an ``int`` field holding
2**40 (written by a producer with another schema, or by a JSON number), NaN in a threshold,
a string of a megabyte where a name belongs, a map of a million entries, JSON nested a
thousand levels deep. :func:`check_record` walks a decoded record against its schema once and
refuses such values with a reason a dead letter can carry, so that nothing downstream (an
Avro writer, numpy, a metric label) meets them. Limits are settings
(``MODELSTREAM_MAX_MESSAGE_BYTES`` and friends); the defaults are below.

>>> schema = {"type": "record", "name": "R", "fields": [{"name": "n", "type": "int"}]}
>>> check_record({"n": 2**40}, schema, Limits())
Traceback (most recent call last):
...
modelstream.errors.InvalidEventError: n: 1099511627776 is outside the range of an Avro int
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelstream.errors import InvalidEventError

INT_RANGE = (-(2**31), 2**31 - 1)
LONG_RANGE = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Limits:
    """Bounds every decoded input must stay within."""

    max_bytes: int = 2 * 1024 * 1024  # what `requests` and `training` take (an image)
    max_json_depth: int = 32
    max_string_chars: int = 65_536
    max_items: int = 100_000  # entries of one array or map (the feature limit)
    finite_numbers: bool = True  # NaN and infinities are refused in double fields


# Records modelstream writes itself (artifacts, reports) may carry NaN metrics, and artifacts
# are large; everything else about them is checked as for user input.
INTERNAL = Limits(max_bytes=2**31 - 1, max_items=50_000_000, finite_numbers=False)


def check_record(value: Any, schema: Any, limits: Limits, path: str = "") -> None:
    """Raise InvalidEventError (reason ``out-of-range``, ``non-finite``, ``too-long`` or
    ``too-many-items``) for the first value outside ``limits``; the path names the field."""
    _check(value, schema, limits, path, _named({}, schema))


def _named(found: dict[str, Any], schema: Any) -> dict[str, Any]:
    if isinstance(schema, list):
        for branch in schema:
            _named(found, branch)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "enum", "fixed", "error"):
            found[schema["name"]] = schema
            found[str(schema["name"]).rsplit(".", 1)[-1]] = schema
        if kind in ("record", "error"):
            for field in schema["fields"]:
                _named(found, field["type"])
        elif kind == "array":
            _named(found, schema["items"])
        elif kind == "map":
            _named(found, schema["values"])
        elif isinstance(kind, dict | list):
            _named(found, kind)
    return found


def _fail(reason: str, path: str, message: str) -> InvalidEventError:
    return InvalidEventError(reason, f"{path or 'message'}: {message}")


def _check(value: Any, schema: Any, limits: Limits, path: str, named: dict[str, Any]) -> None:
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, list):
        _check(value, _branch(schema, value, named), limits, path, named)
        return
    kind = schema if isinstance(schema, str) else schema["type"]
    if isinstance(kind, dict | list):
        _check(value, kind, limits, path, named)
    elif kind in ("int", "long"):
        low, high = INT_RANGE if kind == "int" else LONG_RANGE
        if isinstance(value, int) and not low <= value <= high:
            raise _fail("out-of-range", path, f"{value} is outside the range of an Avro {kind}")
    elif kind in ("double", "float"):
        if limits.finite_numbers and isinstance(value, float) and not math.isfinite(value):
            raise _fail("non-finite", path, f"{value} is not a finite number")
    elif kind in ("string", "bytes"):
        if len(value) > limits.max_string_chars and kind == "string":
            raise _fail(
                "too-long", path, f"{len(value)} characters (limit {limits.max_string_chars})"
            )
    elif kind == "array":
        if len(value) > limits.max_items:
            raise _fail("too-many-items", path, f"{len(value)} items (limit {limits.max_items})")
        items = schema["items"]
        if _needs_walk(items, named):
            for i, item in enumerate(value):
                _check(item, items, limits, f"{path}[{i}]", named)
    elif kind == "map":
        if len(value) > limits.max_items:
            raise _fail("too-many-items", path, f"{len(value)} entries (limit {limits.max_items})")
        values = schema["values"]
        walk = _needs_walk(values, named)
        for key, item in value.items():
            if len(key) > limits.max_string_chars:
                raise _fail("too-long", path, f"a key of {len(key)} characters")
            if walk:
                _check(item, values, limits, f"{path}.{key}", named)
    elif kind in ("record", "error"):
        for field in schema["fields"]:
            name = field["name"]
            if name in value:
                _check(
                    value[name], field["type"], limits, f"{path}.{name}" if path else name, named
                )


def _needs_walk(schema: Any, named: Mapping[str, Any]) -> bool:
    """Whether values of this type can break a limit beyond their container's (booleans,
    nulls, enums and bytes cannot, so a packed array of them is not walked item by item)."""
    if isinstance(schema, str):
        if schema in named:
            return _needs_walk(named[schema], named)
        return schema not in ("null", "boolean", "bytes")
    if isinstance(schema, list):
        return any(_needs_walk(branch, named) for branch in schema)
    return schema.get("type") != "enum"


def _branch(branches: list[Any], value: Any, named: Mapping[str, Any]) -> Any:
    """The union branch a decoded value belongs to (Avro and JSON decoding both produce
    plain Python values)."""
    for branch in branches:
        resolved = named.get(branch, branch) if isinstance(branch, str) else branch
        kind = resolved if isinstance(resolved, str) else resolved.get("type")
        if (
            (kind == "null" and value is None)
            or (kind == "boolean" and isinstance(value, bool))
            or (kind in ("int", "long") and isinstance(value, int) and not isinstance(value, bool))
            or (kind in ("double", "float") and isinstance(value, float))
            or (kind in ("string", "enum") and isinstance(value, str))
            or (kind == "bytes" and isinstance(value, bytes | bytearray))
            or (kind == "array" and isinstance(value, list))
            or (kind in ("map", "record") and isinstance(value, dict))
        ):
            return resolved
    return "null"  # nothing to check: the decoder already proved the value has a branch


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
            deepest = max(deepest, depth + 1)
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
            deepest = max(deepest, depth + 1)
    return deepest
