"""Every file in schemas/ stands on its own, and other Avro implementations agree with ours.

Each ``.avsc`` defines every named type it uses, so any Avro library can load it alone; the
types one file shares with another (the artifact inside a validation report, the task enum
in a command) are copies that must stay identical to their source file.
"""

import io
import json
from pathlib import Path

import avro.io
import avro.schema
import fastavro.schema
import pytest

from modelstream.contracts.codec import HEADER_SIZE, SCHEMA_FILES, default_codec
from modelstream.contracts.records import RECORD_TYPES
from tests.support.samples import SAMPLES

SCHEMA_DIR = Path(__file__).resolve().parents[3] / "schemas"
CODEC = default_codec()


def test_the_schema_directory_holds_exactly_the_contracts():
    assert sorted(p.stem for p in SCHEMA_DIR.glob("*.avsc")) == sorted(SCHEMA_FILES)


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_each_file_parses_alone_with_fastavro_and_apache_avro(name):
    path = SCHEMA_DIR / f"{name}.avsc"
    fastavro.schema.load_schema(str(path))  # resolves nothing from other files
    parsed = avro.schema.parse(path.read_text())
    # The single-object header names the writer schema by its CRC-64-AVRO fingerprint.
    assert parsed.fingerprint("CRC-64-AVRO") == CODEC.schema(RECORD_TYPES[name]).fingerprint


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_apache_avro_reads_what_the_codec_writes_from_the_avsc_alone(name):
    data = CODEC.encode(RECORD_TYPES[name], SAMPLES[name])
    schema = avro.schema.parse((SCHEMA_DIR / f"{name}.avsc").read_text())
    assert data[:2] == b"\xc3\x01"
    decoder = avro.io.BinaryDecoder(io.BytesIO(data[HEADER_SIZE:]))
    assert avro.io.DatumReader(schema).read(decoder) == SAMPLES[name]


def _named(node: object, name: str) -> object:
    """The definition of the named type ``name`` inside a raw schema."""
    if isinstance(node, dict):
        if node.get("name") == name and node.get("type") in ("record", "enum"):
            return node
        children = [
            node.get("type"),
            node.get("items"),
            node.get("values"),
            *(f["type"] for f in node.get("fields", [])),
        ]
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _named(child, name)
        if found is not None:
            return found
    return None


@pytest.mark.parametrize(
    ("holder", "copy", "source"),
    [
        ("ValidationReport", "ModelArtifact", "ModelArtifact"),
        ("Command", "Task", "ModelArtifact"),
    ],
)
def test_shared_types_are_identical_copies(holder, copy, source):
    def canonical(node: object) -> str:
        return fastavro.schema.to_parsing_canonical_form(fastavro.schema.parse_schema(node))

    held = _named(json.loads((SCHEMA_DIR / f"{holder}.avsc").read_text()), copy)
    original = _named(json.loads((SCHEMA_DIR / f"{source}.avsc").read_text()), copy)
    assert held is not None and original is not None
    assert canonical(held) == canonical(original), f"{holder}.avsc's {copy} differs from {source}"
