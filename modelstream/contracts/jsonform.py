"""Plain JSON <-> Avro records, driven by the schema.

This is the public JSON shape of every contract (not Avro's own JSON encoding): records
and maps are objects, unions are untagged (the value's JSON type picks the branch),
enums are their symbol, and ``bytes`` are base64 strings. Reading validates as it goes
and names the offending field in the error, so a bad JSON event is dead-lettered with a
reason a user can act on.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from typing import Any

from modelstream.errors import InvalidEventError

AvroSchema = Any  # a parsed fastavro schema node: str | list | dict


def named_types(
    schema: AvroSchema, into: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Every named type (record, enum, fixed) defined inside ``schema``, by full name."""
    found = {} if into is None else into
    if isinstance(schema, list):
        for branch in schema:
            named_types(branch, found)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "enum", "fixed", "error"):
            found[schema["name"]] = schema
        if kind in ("record", "error"):
            for f in schema["fields"]:
                named_types(f["type"], found)
        elif kind == "array":
            named_types(schema["items"], found)
        elif kind == "map":
            named_types(schema["values"], found)
    return found


class JsonForm:
    """Converts between plain JSON values and records of one top-level schema."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.names = named_types(schema)

    def _resolve(self, schema: AvroSchema) -> AvroSchema:
        if isinstance(schema, str) and schema in self.names:
            return self.names[schema]
        return schema

    # -- reading -------------------------------------------------------------------------
    def from_plain(self, value: Any) -> dict[str, Any]:
        record: dict[str, Any] = self._read(self.schema, value, "")
        return record

    def _fail(self, path: str, message: str) -> InvalidEventError:
        return InvalidEventError("invalid-json", f"{path or 'message'}: {message}")

    def _read(self, schema: AvroSchema, value: Any, path: str) -> Any:
        schema = self._resolve(schema)
        if isinstance(schema, list):
            return self._read_union(schema, value, path)
        kind = schema if isinstance(schema, str) else schema["type"]
        if isinstance(kind, dict | list):
            return self._read(kind, value, path)
        reader = getattr(self, f"_read_{kind}", None)
        if reader is None:
            raise self._fail(path, f"unsupported schema type {kind}")
        return reader(schema, value, path)

    def _read_union(self, branches: list[Any], value: Any, path: str) -> Any:
        errors = []
        for branch in branches:
            if not _plausible(self._resolve(branch), value):
                continue
            try:
                return self._read(branch, value, path)
            except InvalidEventError as exc:
                errors.append(str(exc))
        expected = "/".join(_type_name(self._resolve(b)) for b in branches)
        detail = f" ({errors[0]})" if errors else ""
        raise self._fail(path, f"expected {expected}, got {_json_type(value)}{detail}")

    def _read_null(self, _s: Any, value: Any, path: str) -> None:
        if value is not None:
            raise self._fail(path, f"expected null, got {_json_type(value)}")

    def _read_boolean(self, _s: Any, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self._fail(path, f"expected boolean, got {_json_type(value)}")
        return value

    def _read_int(self, _s: Any, value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(path, f"expected integer, got {_json_type(value)}")
        if isinstance(value, float) and not value.is_integer():
            raise self._fail(path, f"expected integer, got {value}")
        return int(value)

    _read_long = _read_int

    def _read_double(self, _s: Any, value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(path, f"expected number, got {_json_type(value)}")
        return float(value)

    _read_float = _read_double

    def _read_string(self, _s: Any, value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise self._fail(path, f"expected string, got {_json_type(value)}")
        return value

    def _read_bytes(self, _s: Any, value: Any, path: str) -> bytes:
        if not isinstance(value, str):
            raise self._fail(path, f"expected base64 string, got {_json_type(value)}")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise self._fail(path, f"invalid base64: {exc}") from None

    def _read_enum(self, schema: dict[str, Any], value: Any, path: str) -> str:
        symbol = value.upper() if isinstance(value, str) else value
        if symbol not in schema["symbols"]:
            raise self._fail(path, f"expected one of {schema['symbols']}, got {value!r}")
        return str(symbol)

    def _read_array(self, schema: dict[str, Any], value: Any, path: str) -> list[Any]:
        if not isinstance(value, list):
            raise self._fail(path, f"expected array, got {_json_type(value)}")
        return [self._read(schema["items"], v, f"{path}[{i}]") for i, v in enumerate(value)]

    def _read_map(self, schema: dict[str, Any], value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self._fail(path, f"expected object, got {_json_type(value)}")
        return {k: self._read(schema["values"], v, f"{path}.{k}") for k, v in value.items()}

    def _read_record(self, schema: dict[str, Any], value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self._fail(path, f"expected object, got {_json_type(value)}")
        fields = schema["fields"]
        known = {f["name"] for f in fields}
        unknown = sorted(set(value) - known)
        if unknown:
            raise self._fail(path, f"unknown field(s) {unknown}; expected {sorted(known)}")
        out: dict[str, Any] = {}
        for f in fields:
            name = f["name"]
            sub = f"{path}.{name}" if path else name
            if name in value:
                out[name] = self._read(f["type"], value[name], sub)
            elif "default" in f:
                out[name] = self._default(f["type"], f["default"])
            else:
                raise self._fail(sub, "missing required field")
        return out

    def _default(self, schema: AvroSchema, default: Any) -> Any:
        """A field's default as a decoded value: Avro writes a bytes default as a string of
        code points 0-255 (for a union, the default belongs to the first branch)."""
        schema = self._resolve(schema)
        first = self._resolve(schema[0]) if isinstance(schema, list) else schema
        kind = first if isinstance(first, str) else first.get("type")
        if kind == "bytes" and isinstance(default, str):
            return default.encode("latin-1")
        return _copy_default(default)

    # -- writing -------------------------------------------------------------------------
    def to_plain(self, record: Mapping[str, Any]) -> dict[str, Any]:
        plain: dict[str, Any] = self._write(self.schema, record)
        return plain

    def _field(self, field: dict[str, Any], record: Mapping[str, Any]) -> Any:
        """A record's field as written: an absent one with a default takes the default (a
        record built before the field existed: `tensors` of an older caller)."""
        if field["name"] in record:
            return record[field["name"]]
        if "default" in field:
            return self._default(field["type"], field["default"])
        return None

    def _write(self, schema: AvroSchema, value: Any) -> Any:
        schema = self._resolve(schema)
        if isinstance(value, bytes | bytearray | memoryview):
            return base64.b64encode(bytes(value)).decode("ascii")
        if isinstance(schema, list):
            for branch in schema:
                resolved = self._resolve(branch)
                if _plausible(resolved, value, strict=True):
                    return self._write(resolved, value)
            return value
        if isinstance(schema, dict):
            kind = schema["type"]
            if kind in ("record", "error"):
                return {
                    f["name"]: self._write(f["type"], self._field(f, value))
                    for f in schema["fields"]
                }
            if kind == "array":
                return [self._write(schema["items"], v) for v in value]
            if kind == "map":
                return {k: self._write(schema["values"], v) for k, v in value.items()}
            if isinstance(kind, dict | list):
                return self._write(kind, value)
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value


def _copy_default(default: Any) -> Any:
    if isinstance(default, list | dict):
        return type(default)(default)
    return default


def _type_name(schema: AvroSchema) -> str:
    if isinstance(schema, str):
        return schema
    kind = schema.get("type")
    return schema.get("name", kind) if kind in ("record", "enum") else str(kind)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _plausible(schema: AvroSchema, value: Any, strict: bool = False) -> bool:
    """Whether ``value``'s JSON type can be this union branch (untagged unions)."""
    kind = schema if isinstance(schema, str) else schema.get("type")
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind in ("int", "long"):
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in ("double", "float"):
        if strict:
            return isinstance(value, float | int) and not isinstance(value, bool)
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind in ("string", "enum"):
        return isinstance(value, str)
    if kind == "bytes":
        return isinstance(value, str | bytes | bytearray | memoryview)
    if kind == "array":
        return isinstance(value, list)
    if kind in ("map", "record", "error"):
        return isinstance(value, dict)
    return True
