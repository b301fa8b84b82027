"""A ModelArtifact written by our codec is readable by the Apache `avro` package alone."""

import io
from pathlib import Path

import avro.io
import avro.schema

from modelstream.contracts.codec import HEADER_SIZE, default_codec
from modelstream.contracts.records import ModelArtifact
from tests.support.samples import SAMPLES

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


def test_apache_avro_reads_model_artifact_from_the_avsc_alone():
    data = default_codec().encode(ModelArtifact, SAMPLES["ModelArtifact"])
    schema = avro.schema.parse((SCHEMA_DIR / "ModelArtifact.avsc").read_text())
    # The single-object header names the writer schema by its CRC-64-AVRO fingerprint.
    assert data[:2] == b"\xc3\x01"
    assert data[2:HEADER_SIZE] == schema.fingerprint("CRC-64-AVRO")
    decoder = avro.io.BinaryDecoder(io.BytesIO(data[HEADER_SIZE:]))
    record = avro.io.DatumReader(schema).read(decoder)
    assert record == SAMPLES["ModelArtifact"]
