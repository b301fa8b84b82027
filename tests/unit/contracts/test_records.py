"""The Python record types in contracts/records.py say exactly what the schemas say.

For every record (and every record nested in one) the TypedDict has the same field names,
and each field's annotation is the Python type the Avro type decodes to; every enum class
has the schema's symbols in order."""

import types
import typing
from enum import StrEnum

import pytest

from modelstream.contracts import records
from modelstream.contracts.codec import SCHEMA_FILES, default_codec
from modelstream.contracts.records import RECORD_TYPES

PRIMITIVES = {
    "string": str,
    "int": int,
    "long": int,
    "double": float,
    "float": float,
    "boolean": bool,
    "bytes": bytes,
    "null": type(None),
}


def expected(schema: object, named: dict[str, dict]) -> object:
    """The Python type an Avro schema node decodes to, as a comparable structure."""
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return PRIMITIVES[schema]
        return expected(named[schema.rsplit(".", 1)[-1]], named)  # a named type's reference
    if isinstance(schema, list):
        return ("union", frozenset(expected(branch, named) for branch in schema))
    assert isinstance(schema, dict)
    kind = schema["type"]
    if kind == "record":
        return ("record", schema["name"].rsplit(".", 1)[-1])
    if kind == "enum":
        return ("enum", schema["name"].rsplit(".", 1)[-1])
    if kind == "array":
        return ("list", expected(schema["items"], named))
    if kind == "map":
        return ("dict", expected(schema["values"], named))
    return expected(kind, named)


def actual(annotation: object) -> object:
    """The same structure for a Python annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        flat: set[object] = set()
        for arg in typing.get_args(annotation):
            inner = actual(arg)
            flat |= inner[1] if isinstance(inner, tuple) and inner[0] == "union" else {inner}
        return ("union", frozenset(flat))
    if origin is list:
        return ("list", actual(typing.get_args(annotation)[0]))
    if origin is dict:
        key, value = typing.get_args(annotation)
        assert key is str
        return ("dict", actual(value))
    if isinstance(annotation, type) and issubclass(annotation, StrEnum):
        return ("enum", annotation.__name__)
    if typing.is_typeddict(annotation):
        return ("record", annotation.__name__)
    return annotation


def every_named(schema: object, found: dict[str, dict]) -> dict[str, dict]:
    if isinstance(schema, list):
        for branch in schema:
            every_named(branch, found)
    elif isinstance(schema, dict):
        if schema["type"] in ("record", "enum"):
            found[schema["name"].rsplit(".", 1)[-1]] = schema
        for child in (
            schema.get("items"),
            schema.get("values"),
            *(f["type"] for f in schema.get("fields", [])),
        ):
            if child is not None:
                every_named(child, found)
        if isinstance(schema["type"], dict | list):
            every_named(schema["type"], found)
    return found


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_record_types_match_the_schema(name):
    parsed = default_codec().schema(RECORD_TYPES[name]).parsed
    named = every_named(parsed, {})
    for type_name, schema in named.items():
        python_type = getattr(records, type_name, None)
        assert python_type is not None, f"records.py has no {type_name} ({name}.avsc)"
        if schema["type"] == "enum":
            assert [m.value for m in python_type] == schema["symbols"], type_name
            continue
        hints = typing.get_type_hints(python_type)
        assert list(hints) == [f["name"] for f in schema["fields"]], type_name
        for field in schema["fields"]:
            assert actual(hints[field["name"]]) == expected(field["type"], named), (
                f"{type_name}.{field['name']}: {hints[field['name']]} vs {field['type']}"
            )


def test_a_drifted_type_is_caught():
    class Feedback(typing.TypedDict):
        request_id: str
        model: str
        label: str  # the schema says string | double
        timestamp_ms: int | None

    schema = default_codec().schema(records.Feedback).parsed
    label = next(f for f in schema["fields"] if f["name"] == "label")
    assert actual(typing.get_type_hints(Feedback)["label"]) != expected(label["type"], {})
