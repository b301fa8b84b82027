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
from typing import Any, TypeVar, cast

import fastavro
import fastavro.schema

from modelstream.contracts import tensors
from modelstream.contracts.jsonform import JsonForm
from modelstream.contracts.limits import INTERNAL, Limits, check_record, json_depth
from modelstream.contracts.records import RECORD_TYPES
from modelstream.contracts.wire import read_string
from modelstream.errors import DecodeError, InvalidEventError, SchemaMismatchError

MAGIC = b"\xc3\x01"
HEADER_SIZE = 10  # magic (2) + fingerprint (8)
NAMESPACE = "io.modelstream"

# One file per top-level contract; each is self-contained (defines every type it uses), so
# each parses on its own with any Avro implementation.
SCHEMA_FILES: tuple[str, ...] = tuple(RECORD_TYPES)

R = TypeVar("R")
DEFAULTS = Limits()


@dataclass(frozen=True)
class Schema:
    """A parsed schema with its single-object fingerprint."""

    name: str
    parsed: dict[str, Any]
    fingerprint: bytes
    canonical_form: str
    bytes_defaults: tuple[str, ...] = ()  # top-level fields whose default is empty bytes

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Schema:
        parsed = cast(dict[str, Any], fastavro.schema.parse_schema(dict(raw)))
        canonical = fastavro.schema.to_parsing_canonical_form(parsed)
        fingerprint = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
        defaults = tuple(
            f["name"]
            for f in parsed.get("fields", [])
            if f.get("default") == ""
            and (f["type"][0] if isinstance(f["type"], list) else f["type"]) == "bytes"
        )
        name = str(parsed["name"]).rsplit(".", 1)[-1]
        return cls(name, parsed, fingerprint, canonical, defaults)


def load_schema_json(name: str) -> dict[str, Any]:
    """The raw JSON of ``schemas/<name>.avsc`` as installed with the package."""
    text = resources.files("modelstream.schemas").joinpath(f"{name}.avsc").read_text("utf-8")
    return cast(dict[str, Any], json.loads(text))


class AvroCodec:
    """Encodes and decodes modelstream records, named by their record type
    (``codec.decode(data, Prediction)``).

    ``readers`` are the schemas this process reads and writes with (the newest);
    ``writers`` are extra, older schemas it can still resolve messages from.
    """

    def __init__(self, readers: Iterable[Schema], writers: Iterable[Schema] = ()) -> None:
        self._readers = {s.name: s for s in readers}
        self._by_fingerprint: dict[bytes, Schema] = {
            s.fingerprint: s for s in self._readers.values()
        }
        for schema in writers:
            self._by_fingerprint.setdefault(schema.fingerprint, schema)
        self._json_forms: dict[str, JsonForm] = {}
        # Writer schemas whose first two fields are the strings request_id and model.
        self._with_ids = {
            fp
            for fp, schema in self._by_fingerprint.items()
            if [(f["name"], f["type"]) for f in schema.parsed["fields"][:2]]
            == [("request_id", "string"), ("model", "string")]
        }

    def schema(self, record_type: type) -> Schema:
        try:
            return self._readers[record_type.__name__]
        except KeyError:
            raise KeyError(f"no schema named {record_type.__name__!r}") from None

    def encode(self, record_type: type[R], record: R) -> bytes:
        schema = self.schema(record_type)
        missing = [f for f in schema.bytes_defaults if f not in cast(Mapping[str, Any], record)]
        if missing:  # fastavro writes a bytes default as the str the schema spells it with
            record = cast(R, {**cast(Mapping[str, Any], record), **{f: b"" for f in missing}})
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(schema.fingerprint)
        fastavro.schemaless_writer(buf, schema.parsed, record)
        return buf.getvalue()

    def writer_schema(self, data: bytes | None) -> Schema:
        """The schema that wrote ``data`` (a single-object encoded message)."""
        data = _present(data, INTERNAL)  # size limits are the caller's
        if len(data) < HEADER_SIZE or data[:2] != MAGIC:
            raise DecodeError("not Avro single-object encoding (missing C3 01 header)")
        writer = self._by_fingerprint.get(bytes(data[2:HEADER_SIZE]))
        if writer is None:
            raise SchemaMismatchError(
                f"unknown writer schema fingerprint {bytes(data[2:HEADER_SIZE]).hex()}"
            )
        return writer

    def decode(
        self,
        data: bytes | None,
        record_type: type[R],
        limits: Limits = DEFAULTS,
        *,
        checked: bool = True,
    ) -> R:
        """Decode a single-object encoded message into ``record_type``'s reader schema.

        Total: any bytes (or none) either decode into a record within ``limits`` or raise
        DecodeError / InvalidEventError with a reason. ``checked=False`` skips the walk over
        the decoded values (ranges, finite doubles, sizes): for hot paths that check the
        few values they use themselves."""
        data = _present(data, limits)
        reader = self.schema(record_type)
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
        if checked:
            check_record(record, reader.parsed, limits)
        return cast(R, record)

    def ids(
        self, data: bytes | None, record_type: type, limits: Limits = DEFAULTS
    ) -> tuple[str, str]:
        """The request id and model of a request, prediction or feedback message, read
        without decoding the rest (JSON messages are decoded whole). Raises like
        :meth:`decode` when the message is not a ``record_type`` or these fields are
        unreadable; what follows them is not checked."""
        data = _present(data, limits)
        if is_json(data):
            record = cast(Mapping[str, Any], self.decode_any(data, record_type, limits))
            return record["request_id"], record["model"]
        writer = self.writer_schema(data)
        if writer.name != record_type.__name__:
            raise SchemaMismatchError(
                f"expected {record_type.__name__}, message is a {writer.name}"
            )
        if writer.fingerprint not in self._with_ids:
            record = cast(Mapping[str, Any], self.decode(data, record_type, limits))
            return record["request_id"], record["model"]
        try:
            request_id, pos = read_string(data, HEADER_SIZE)
            model, _ = read_string(data, pos)
            if len(request_id) > limits.max_string_chars or len(model) > limits.max_string_chars:
                raise DecodeError("request id or model longer than the limit", reason="too-long")
            return request_id.decode(), model.decode()
        except IndexError:
            raise DecodeError(f"corrupt {writer.name} body: truncated") from None
        except UnicodeDecodeError:
            raise DecodeError(f"{writer.name} strings are not UTF-8") from None

    def json_form(self, record_type: type) -> JsonForm:
        name = record_type.__name__
        form = self._json_forms.get(name)
        if form is None:
            form = self._json_forms[name] = JsonForm(self.schema(record_type).parsed)
        return form

    def decode_any(self, data: bytes | None, record_type: type[R], limits: Limits = DEFAULTS) -> R:
        """Decode Avro single-object or a plain JSON object (user-facing input topics); as
        total as :meth:`decode`."""
        data = _present(data, limits)
        if not is_json(data):
            return self.decode(data, record_type, limits)
        plain = parse_json_object(data, limits)
        if record_type.__name__ in WITH_CATEGORIES:
            plain = split_categories(plain)
        tensor_field = TENSOR_FIELDS.get(record_type.__name__)
        if tensor_field == "tensors" and "features" not in plain and "tensors" not in plain:
            raise InvalidEventError(
                "invalid-json",
                "features: missing required field (a row has features, tensors or both)",
            )
        if tensor_field is not None and isinstance(plain.get(tensor_field), list):
            plain[tensor_field] = [
                tensors.from_plain(t, f"{tensor_field}[{i}]")
                for i, t in enumerate(plain[tensor_field])
            ]
        record = self.json_form(record_type).from_plain(plain)
        check_record(record, self.schema(record_type).parsed, limits)
        return cast(R, record)

    def to_plain(self, record_type: type[R], record: R) -> dict[str, Any]:
        """The public JSON shape of a record (tensors as lists of numbers or strings)."""
        plain = self.json_form(record_type).to_plain(cast(Mapping[str, Any], record))
        tensor_field = TENSOR_FIELDS.get(record_type.__name__)
        if tensor_field is not None and plain.get(tensor_field):
            source = cast(Mapping[str, Any], record)[tensor_field]
            plain[tensor_field] = [tensors.to_plain(t) for t in source]
        return plain

    def encode_json(self, record_type: type[R], record: R) -> bytes:
        plain = self.to_plain(record_type, record)
        return json.dumps(plain, separators=(",", ":"), allow_nan=False).encode()

    def encode_as(self, record_type: type[R], record: R, fmt: str) -> bytes:
        """Encode for an output topic in the configured format ('avro' or 'json')."""
        if fmt == "json":
            return self.encode_json(record_type, record)
        return self.encode(record_type, record)

    def encode_body(self, schema: Any, record: Mapping[str, Any]) -> bytes:
        """Schemaless Avro binary of ``record``: the canonical bytes that digests cover."""
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, record)
        return buf.getvalue()


# Contracts whose JSON form takes categorical values among the named features.
WITH_CATEGORIES = frozenset({"PredictionRequest", "TrainingExample"})
# Contracts that carry named tensors, by the field that holds them: their JSON form takes
# the data as lists of numbers or strings (contracts/tensors.py), not only as base64.
TENSOR_FIELDS = {
    "PredictionRequest": "tensors",
    "TrainingExample": "tensors",
    "Prediction": "outputs",
}


def split_categories(plain: dict[str, Any]) -> dict[str, Any]:
    """JSON features may hold strings (``{"radius": 17.9, "centre": "north"}``): those are
    categorical values and move to ``categories``, where the Avro form keeps them."""
    features, categories = plain.get("features"), plain.get("categories", {})
    if not isinstance(features, dict) or not isinstance(categories, dict):
        return plain
    strings = {k: v for k, v in features.items() if isinstance(v, str)}
    if not strings:
        return plain
    numeric = {k: v for k, v in features.items() if not isinstance(v, str)}
    return {**plain, "features": numeric, "categories": {**categories, **strings}}


def is_json(data: bytes) -> bool:
    """JSON objects start with ``{`` (after optional blanks); Avro messages with 0xC3."""
    if data[:1] == MAGIC[:1]:  # the common case, decided by one byte
        return False
    for byte in data[:64]:
        if byte in b" \t\r\n":
            continue
        return byte == 0x7B
    return False


def _present(data: bytes | None, limits: Limits) -> bytes:
    """The bytes of a record value, refusing what is not one at all."""
    if data is None:
        raise DecodeError("null value (a tombstone) is not a record", reason="null-value")
    if not data:
        raise DecodeError("empty value", reason="empty-value")
    if len(data) > limits.max_bytes:
        raise DecodeError(
            f"{len(data)} bytes exceed the limit of {limits.max_bytes}", reason="too-large"
        )
    return data


def parse_json_object(data: bytes, limits: Limits = DEFAULTS) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except RecursionError:
        raise DecodeError("JSON nested too deeply", reason="too-deep") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, int digit limits
        raise DecodeError(f"invalid JSON: {exc}", reason="invalid-json") from None
    if not isinstance(value, dict):
        raise DecodeError("JSON message must be an object", reason="invalid-json")
    if json_depth(value) > limits.max_json_depth:
        raise DecodeError(
            f"JSON nested deeper than {limits.max_json_depth} levels", reason="too-deep"
        )
    return value


def history_schemas() -> list[Schema]:
    """Earlier versions of the contracts (``schemas/history/<Name>.<n>.avsc``): messages
    their writers left on topics (artifacts on the compacted registry above all) still
    decode, resolved against the current reader schema."""
    folder = resources.files("modelstream.schemas").joinpath("history")
    return [
        Schema.parse(json.loads(entry.read_text("utf-8")))
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".avsc")
    ]


@cache
def default_codec() -> AvroCodec:
    """The codec over the schemas shipped in ``schemas/`` (parsed once per process)."""
    return AvroCodec((Schema.parse(load_schema_json(n)) for n in SCHEMA_FILES), history_schemas())
