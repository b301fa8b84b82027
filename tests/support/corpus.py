"""A byte-level corpus of hostile records for every topic a service reads.

Built structurally from valid records of each contract, not from random bytes alone: null
and empty values and keys, truncations and bit flips of valid Avro, the header of another
schema, JSON with every field swapped for a value of every wrong type, missing and unknown
fields, integers outside Avro's int and long, NaN and infinities, strings, arrays and maps
past the limits, JSON nested up to tens of thousands of levels, non-UTF-8 text, records near
the broker's size limit, and records that decode but must not be applied (unknown models and
versions, commands with bad values, tampered or forged artifacts). Every record is distinct
(by key and value); each carries the family it comes from.
"""

from __future__ import annotations

import copy
import io
import json
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fastavro

from modelstream.contracts.codec import HEADER_SIZE, MAGIC, default_codec
from modelstream.contracts.records import RECORD_TYPES

CODEC = default_codec()
WRONG_VALUES: list[Any] = [None, True, 0, -1, 1.5, "x", "", [], [1, "a"], {}, {"a": None}]
NEAR_LIMIT = 1_000_000  # under the broker's default max.message.bytes (1,048,588)


@dataclass(frozen=True)
class Hostile:
    family: str
    key: bytes | None
    value: bytes | None


def _avro(type_name: str, record: dict[str, Any]) -> bytes:
    return CODEC.encode(RECORD_TYPES[type_name], record)


def _json(record: Any) -> bytes:
    return json.dumps(record, default=_json_default).encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(type(value).__name__)


def _widened(schema: Any, field_path: list[str]) -> Any:
    """The schema with the int field at ``field_path`` written as a long: the reader, which
    expects an int there, then decodes a value past 2**31."""
    schema = copy.deepcopy(schema)
    node = schema
    for name in field_path:
        if isinstance(node, list):  # a union: the record branch
            node = next(branch for branch in node if isinstance(branch, dict))
        field = next(f for f in node["fields"] if f["name"] == name)
        if name == field_path[-1]:
            field["type"] = ["null", "long"] if isinstance(field["type"], list) else "long"
        else:
            node = field["type"]
    return schema


def _with_value_of(
    type_name: str, record: dict[str, Any], field_path: list[str], value: int
) -> bytes:
    """Avro bytes under ``type_name``'s header whose int field holds ``value``."""
    parsed = CODEC.schema(RECORD_TYPES[type_name]).parsed
    wide = fastavro.parse_schema(_widened(json.loads(json.dumps(parsed)), field_path))
    record = copy.deepcopy(record)
    target = record
    for name in field_path[:-1]:
        target = target[name]
    target[field_path[-1]] = value
    out = io.BytesIO()
    out.write(MAGIC + CODEC.schema(RECORD_TYPES[type_name]).fingerprint)
    fastavro.schemaless_writer(out, wide, record)
    return out.getvalue()


def mutations(
    type_name: str, valid: list[dict[str, Any]], key: bytes, seed: int, int_fields: list[list[str]]
) -> Iterator[Hostile]:
    """The structural families, for one contract, from its valid records."""
    rng = random.Random(seed)
    other_types = [t for t in RECORD_TYPES if t != type_name]
    yield Hostile("null-value", key, None)
    yield Hostile("null-value-null-key", None, None)
    yield Hostile("empty-value", key, b"")
    yield Hostile("empty-key-and-value", b"", b"")
    yield Hostile("random-bytes", key, rng.randbytes(64))
    yield Hostile("magic-only", key, MAGIC)
    yield Hostile("header-only", key, MAGIC + CODEC.schema(RECORD_TYPES[type_name]).fingerprint)
    yield Hostile("unknown-fingerprint", key, MAGIC + rng.randbytes(8) + b"\x00" * 16)
    for record in valid:
        avro = _avro(type_name, record)
        for length in sorted(
            {1, 2, 9, HEADER_SIZE, HEADER_SIZE + 1, len(avro) // 2, len(avro) - 1}
        ):
            yield Hostile("truncated-avro", key, avro[:length])
        yield Hostile("trailing-bytes", key, avro + b"\x00\x01")
        for _ in range(12):
            flipped = bytearray(avro)
            at = rng.randrange(len(flipped))
            flipped[at] ^= 1 << rng.randrange(8)
            yield Hostile("bit-flip", key, bytes(flipped))
        other = rng.choice(other_types)
        body = _avro(other, _sample(other))[HEADER_SIZE:]
        yield Hostile("other-schema-body", key, avro[:HEADER_SIZE] + body)
        yield Hostile("other-schema-header", key, _avro(other, _sample(other)))
        for path in int_fields:
            if not _has_path(record, path):
                continue
            for value in (2**31, -(2**31) - 1, 2**40, 2**62):
                yield Hostile(
                    "int-out-of-range", key, _with_value_of(type_name, record, path, value)
                )
        plain = json.loads(_json(record))
        yield Hostile("valid-json-array", key, _json([plain]))
        yield Hostile("json-scalar", key, b'"just a string"')
        for field in list(plain):
            missing = dict(plain)
            del missing[field]
            yield Hostile("json-missing-field", key, _json(missing))
            for wrong in WRONG_VALUES:
                if wrong == plain[field]:
                    continue
                yield Hostile("json-wrong-type", key, _json({**plain, field: wrong}))
            yield Hostile("json-huge-int", key, _json({**plain, field: 10**30}))
            yield Hostile("json-nan", key, _json({**plain, field: float("nan")}))
            yield Hostile("json-infinity", key, _json({**plain, field: float("inf")}))
            yield Hostile("json-long-string", key, _json({**plain, field: "x" * 70_000}))
            yield Hostile("json-deep", key, _json({**plain, field: _nested(40)}))
        yield Hostile("json-unknown-field", key, _json({**plain, "surprise": 1}))
        for depth in (100, 1_000, 30_000):
            yield Hostile("json-very-deep", key, b'{"a": ' + b"[" * depth + b"]" * depth + b"}")
        yield Hostile("json-not-utf8", key, _json(plain).replace(b'"', b'"\xff\xfe', 1))
        yield Hostile("json-truncated", key, _json(plain)[:-3])
        yield Hostile("near-size-limit", key, _json({**plain, "pad": "p" * NEAR_LIMIT}))
    yield Hostile("huge-key", b"k" * 100_000, _avro(type_name, valid[0]))
    yield Hostile("non-utf8-key", b"\xff\xfe\xfd", _avro(type_name, valid[0]))


def _has_path(record: dict[str, Any], path: list[str]) -> bool:
    node: Any = record
    for name in path[:-1]:
        node = node.get(name) if isinstance(node, dict) else None
    return isinstance(node, dict) and path[-1] in node


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _sample(type_name: str) -> dict[str, Any]:
    from tests.support.samples import SAMPLES

    return copy.deepcopy(SAMPLES[type_name])


def distinct(records: Iterator[Hostile]) -> list[Hostile]:
    seen: set[tuple[bytes | None, bytes | None]] = set()
    out = []
    for record in records:
        if (record.key, record.value) not in seen:
            seen.add((record.key, record.value))
            out.append(record)
    return out


def f64(value: float) -> bytes:
    return struct.pack("<d", value)


def tensor_hostiles(key: bytes, model: str) -> Iterator[Hostile]:
    """Requests to a tensor model (an image classifier) built to break its readers: corrupt,
    truncated and bomb images, BYTES whose length prefix lies, shapes negative or
    astronomical, the wrong datatype, text that is not UTF-8, a 1 MB image that is not one."""
    import numpy as np

    from modelstream.contracts import tensors
    from tests.support.tensor_models import jpeg, png, png_bomb

    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    good_png, good_jpeg = png(pixels), jpeg(pixels)

    def request(name: str, named: list[Any]) -> Hostile:
        record = {"request_id": f"t-{name}", "model": model, "tensors": named}
        return Hostile(f"tensor-{name}", key, _avro("PredictionRequest", record))

    def image(data: bytes) -> list[Any]:
        return [tensors.from_elements("image", [data])]

    yield request("truncated-png", image(good_png[: len(good_png) // 2]))
    yield request("truncated-jpeg", image(good_jpeg[: len(good_jpeg) // 3]))
    flipped = bytearray(good_png)
    flipped[len(flipped) // 2] ^= 0xFF
    yield request("corrupt-png", image(bytes(flipped)))
    yield request("png-bomb", image(png_bomb()))
    yield request("not-an-image", image(b"GIF89a" + rng.bytes(200)))
    yield request("empty-image", image(b""))
    yield request("one-mb-noise", image(b"\x89PNG\r\n\x1a\n" + rng.bytes(1_000_000)))
    yield request(
        "lying-prefix",
        [{"name": "image", "datatype": "BYTES", "shape": [1], "data": b"\xff\xff\xff\x7fab"}],
    )
    yield request(
        "negative-shape", [{"name": "image", "datatype": "UINT8", "shape": [8, -8, 3], "data": b""}]
    )
    yield request(
        "huge-shape",
        [{"name": "image", "datatype": "UINT8", "shape": [2**40, 2**40], "data": b"\x00"}],
    )
    yield request(
        "byte-length", [{"name": "image", "datatype": "UINT8", "shape": [8, 8, 3], "data": b"\x00"}]
    )
    yield request("wrong-datatype", [tensors.from_array("image", np.zeros((8, 8, 3), np.float32))])
    yield request("two-elements", [tensors.from_elements("image", [good_png, good_png])])
    yield request("non-utf8-text", [tensors.from_elements("image", [b"\xff\xfe text"])])
    yield request("unknown-tensor", [tensors.from_elements("caption", ["a cat"])])
    yield request("no-tensor", [])
    yield request("tensor-twice", [tensors.from_elements("image", [good_png])] * 2)
    yield request("raw-pixels-4-channels", [tensors.from_array("image", pixels[:, :, :2])])
    yield request("valid-png", image(good_png))  # processed: the good path runs too
