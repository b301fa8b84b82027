"""Avro single-object encoding (and plain JSON on user-facing topics).

Every Avro message on a modelstream topic is framed as the Avro specification's
single-object encoding: ``C3 01``, the 8-byte little-endian CRC-64-AVRO fingerprint of
the writer schema's Parsing Canonical Form, then the schemaless binary body. A reader
therefore always knows which schema wrote a message, and resolves older writer schemas
against its own (schema evolution).

User-facing input topics also accept a JSON object; the first non-blank byte tells the
two apart (``{`` for JSON, ``0xC3`` for Avro).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import fastavro
import fastavro.schema

from modelstream.contracts.jsonform import JsonForm
from modelstream.errors import DecodeError, SchemaMismatchError

MAGIC = b"\xc3\x01"
HEADER_SIZE = 10  # magic (2) + fingerprint (8)
NAMESPACE = "io.modelstream"

# Dependency order: later files refer to named types defined by earlier ones.
SCHEMA_FILES: tuple[str, ...] = (
    "ModelArtifact",
    "TrainingExample",
    "PredictionRequest",
    "Prediction",
    "Feedback",
    "Command",
    "ValidationReport",
    "AuditEvent",
    "MonitorJoin",
    "MonitorJoinBatch",
    "MonitorModelState",
)

Record = dict[str, Any]


@dataclass(frozen=True)
class Schema:
    """A fully expanded, parsed schema with its single-object fingerprint."""

    name: str
    parsed: dict[str, Any]
    fingerprint: bytes
    canonical_form: str

    @classmethod
    def from_parsed(cls, parsed: dict[str, Any], named: Mapping[str, Any]) -> Schema:
        expanded = fastavro.schema.parse_schema(inline_first_references(parsed, named, set()))
        canonical = fastavro.schema.to_parsing_canonical_form(expanded)
        fingerprint = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
        return cls(str(expanded["name"]).rsplit(".", 1)[-1], expanded, fingerprint, canonical)


_PRIMITIVES = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)


def inline_first_references(node: Any, named: Mapping[str, Any], seen: set[str]) -> Any:
    """Replace a reference to a type defined in another file by its definition.

    Only the first occurrence is inlined; later ones stay names, as the Avro specification's
    Parsing Canonical Form (and every other implementation) expects.
    """
    if isinstance(node, str):
        if node in _PRIMITIVES or node in seen or node not in named:
            return node
        return inline_first_references(named[node], named, seen)
    if isinstance(node, list):
        return [inline_first_references(branch, named, seen) for branch in node]
    if not isinstance(node, dict):
        return node
    out = dict(node)
    kind = node.get("type")
    if kind in ("record", "error", "enum", "fixed"):
        seen.add(node["name"])
    if kind in ("record", "error"):
        out["fields"] = [
            {**f, "type": inline_first_references(f["type"], named, seen)} for f in node["fields"]
        ]
    elif kind == "array":
        out["items"] = inline_first_references(node["items"], named, seen)
    elif kind == "map":
        out["values"] = inline_first_references(node["values"], named, seen)
    elif isinstance(kind, dict | list):
        out["type"] = inline_first_references(kind, named, seen)
    return out


def parse_schemas(raw: Iterable[Mapping[str, Any]]) -> dict[str, Schema]:
    """Parse schemas in dependency order; returns them by short name."""
    named: dict[str, Any] = {}
    out: dict[str, Schema] = {}
    for schema in raw:
        parsed = fastavro.schema.parse_schema(dict(schema), named_schemas=named)
        info = Schema.from_parsed(parsed, named)
        out[info.name] = info
    return out


def load_schema_json(name: str) -> dict[str, Any]:
    """The raw JSON of ``schemas/<name>.avsc`` as installed with the package."""
    text = resources.files("modelstream.schemas").joinpath(f"{name}.avsc").read_text("utf-8")
    return json.loads(text)


class AvroCodec:
    """Encodes and decodes modelstream records.

    ``readers`` are the schemas this process reads and writes with (the newest);
    ``writers`` are extra, older schemas it can still resolve messages from.
    """

    def __init__(self, readers: Mapping[str, Schema], writers: Iterable[Schema] = ()) -> None:
        self._readers = dict(readers)
        self._by_fingerprint: dict[bytes, Schema] = {s.fingerprint: s for s in readers.values()}
        for schema in writers:
            self._by_fingerprint.setdefault(schema.fingerprint, schema)
        self._json_forms: dict[str, JsonForm] = {}

    def schema(self, type_name: str) -> Schema:
        try:
            return self._readers[type_name]
        except KeyError:
            raise KeyError(f"no schema named {type_name!r}") from None

    def encode(self, type_name: str, record: Mapping[str, Any]) -> bytes:
        schema = self._readers[type_name]
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(schema.fingerprint)
        fastavro.schemaless_writer(buf, schema.parsed, record)
        return buf.getvalue()

    def writer_schema(self, data: bytes) -> Schema:
        """The schema that wrote ``data`` (a single-object encoded message)."""
        if len(data) < HEADER_SIZE or data[:2] != MAGIC:
            raise DecodeError("not Avro single-object encoding (missing C3 01 header)")
        writer = self._by_fingerprint.get(bytes(data[2:HEADER_SIZE]))
        if writer is None:
            raise SchemaMismatchError(
                f"unknown writer schema fingerprint {bytes(data[2:HEADER_SIZE]).hex()}"
            )
        return writer

    def decode(self, data: bytes, type_name: str) -> Record:
        """Decode a single-object encoded message into ``type_name``'s reader schema."""
        reader = self._readers[type_name]
        writer = self.writer_schema(data)
        if writer.name != reader.name:
            raise SchemaMismatchError(f"expected {reader.name}, message is a {writer.name}")
        stream = io.BytesIO(data)
        stream.seek(HEADER_SIZE)
        try:
            if writer is reader:
                record = fastavro.schemaless_reader(stream, writer.parsed, None)
            else:
                record = fastavro.schemaless_reader(stream, writer.parsed, reader.parsed)
        except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError, ...
            raise DecodeError(f"corrupt {reader.name} body: {type(exc).__name__}: {exc}") from exc
        if stream.tell() != len(data):
            raise DecodeError(f"{len(data) - stream.tell()} trailing bytes after {reader.name}")
        return record  # type: ignore[return-value]

    def json_form(self, type_name: str) -> JsonForm:
        form = self._json_forms.get(type_name)
        if form is None:
            form = self._json_forms[type_name] = JsonForm(self._readers[type_name].parsed)
        return form

    def decode_any(self, data: bytes, type_name: str) -> Record:
        """Decode Avro single-object or a plain JSON object (user-facing input topics)."""
        if is_json(data):
            return self.json_form(type_name).from_plain(parse_json_object(data))
        return self.decode(data, type_name)

    def encode_json(self, type_name: str, record: Mapping[str, Any]) -> bytes:
        plain = self.json_form(type_name).to_plain(record)
        return json.dumps(plain, separators=(",", ":"), allow_nan=False).encode()

    def encode_as(self, type_name: str, record: Mapping[str, Any], fmt: str) -> bytes:
        """Encode for an output topic in the configured format ('avro' or 'json')."""
        if fmt == "json":
            return self.encode_json(type_name, record)
        return self.encode(type_name, record)

    def encode_body(self, schema: dict[str, Any], record: Mapping[str, Any]) -> bytes:
        """Schemaless Avro binary of ``record``: the canonical bytes that digests cover."""
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, record)
        return buf.getvalue()


def is_json(data: bytes) -> bool:
    """JSON objects start with ``{`` (after optional blanks); Avro messages with 0xC3."""
    for byte in data[:64]:
        if byte in b" \t\r\n":
            continue
        return byte == 0x7B
    return False


def parse_json_object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(f"invalid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise DecodeError("JSON message must be an object")
    return value


@cache
def default_codec() -> AvroCodec:
    """The codec over the schemas shipped in ``schemas/`` (parsed once per process)."""
    return AvroCodec(parse_schemas(load_schema_json(n) for n in SCHEMA_FILES))
