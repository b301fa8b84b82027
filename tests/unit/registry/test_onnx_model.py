"""ONNX graphs as artifacts: signature mapping, scoring, sealing, encryption, compatibility."""

import io
import json
import os
from pathlib import Path

import avro.io
import avro.schema
import numpy as np
import onnxruntime as ort
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelstream.contracts.codec import HEADER_SIZE, Schema, default_codec
from modelstream.contracts.definitions import Definition
from modelstream.contracts.records import (
    RECORD_TYPES,
    ModelArtifact,
    PredictionRequest,
    Task,
    TrainingExample,
)
from modelstream.errors import ArtifactVerificationError
from modelstream.registry.artifact import (
    body_digest,
    decrypt_tensors,
    encrypt_tensors,
    seal,
    verify_bytes,
)
from modelstream.registry.onnx_model import (
    OnnxScorer,
    UnmappableGraphError,
    check_runs,
    describe,
    onnx_candidate,
)
from modelstream.registry.scoring import scorer_for
from tests.support import onnx_models
from tests.support.samples import SAMPLES, model_artifact

CODEC = default_codec()
SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"


@pytest.fixture(scope="module")
def bundles():
    return {
        "xgboost": onnx_models.xgboost_model(),
        "lightgbm": onnx_models.lightgbm_model(),
        "pipeline": onnx_models.pipeline_model(),
        "mlp": onnx_models.mlp_graph(),
    }


def _signature(name, bundle):
    if name in ("xgboost", "lightgbm"):
        return describe(bundle.graph, features=bundle.feature_names)
    if name == "mlp":
        return describe(bundle.graph, features=bundle.feature_names, classes=bundle.classes)
    return describe(bundle.graph)


def _reference(bundle, signature):
    """onnxruntime on the graph exactly as the user exported it."""
    session = ort.InferenceSession(bundle.graph, providers=["CPUExecutionProvider"])
    feeds = {}
    for spec in signature.onnx["inputs"]:
        if spec["element_type"] == "string":
            feeds[spec["name"]] = np.array(
                [[row[f] for f in spec["features"]] for row in bundle.categories], dtype=object
            )
        else:
            columns = [signature.feature_names.index(f) for f in spec["features"]]
            feeds[spec["name"]] = bundle.X[:, columns].astype(np.float32)
    outputs = session.run(None, feeds)
    names = [o.name for o in session.get_outputs()]
    scores = outputs[names.index(signature.onnx["scores_output"])]
    if isinstance(scores, list):  # ZipMap: a list of {class: probability}
        return np.array([[row[k] for k in sorted(row)] for row in scores])
    return np.asarray(scores, dtype=np.float64)


@pytest.mark.parametrize("name", ["xgboost", "lightgbm", "pipeline", "mlp"])
def test_each_library_graph_is_mapped_and_scored_like_onnxruntime(bundles, name):
    bundle = bundles[name]
    signature = _signature(name, bundle)
    check_runs(signature, name)
    body = onnx_candidate(name, signature)
    scorer = scorer_for(body)
    assert scorer.classes == bundle.classes and scorer.task != Task.REGRESSION
    scores = scorer.score(bundle.X, bundle.categories or None)
    np.testing.assert_allclose(scores, _reference(bundle, signature), atol=1e-5)
    accuracy = (np.asarray(scorer.classes)[scores.argmax(axis=1)] == bundle.y).mean()
    assert accuracy > 0.85  # a real model, not noise


def test_pipeline_inputs_name_numeric_and_categorical_features(bundles):
    signature = describe(bundles["pipeline"].graph)
    assert signature.categorical == ["centre"]
    assert signature.feature_names == bundles["pipeline"].feature_names
    assert signature.onnx["zipmap_input"] is not None  # skl2onnx's ZipMap is read around


def test_the_centre_changes_the_pipelines_scores(bundles):
    bundle = bundles["pipeline"]
    scorer = scorer_for(onnx_candidate("p", describe(bundle.graph)))
    X = np.repeat(bundle.X[:1], 4, axis=0)
    scores = scorer.score(X, [{"centre": c} for c in onnx_models.CENTRES])
    assert len({round(float(s), 6) for s in scores[:, 1]}) > 1


def test_unmappable_graphs_are_refused_with_what_is_missing(bundles):
    mlp = bundles["mlp"].graph
    with pytest.raises(UnmappableGraphError, match="pass --classes"):
        describe(mlp)
    with pytest.raises(UnmappableGraphError, match="3 feature names"):
        describe(mlp, features=["a", "b", "c"])
    with pytest.raises(UnmappableGraphError, match="not an ONNX model"):
        describe(b"\x08\x01\x12\xff\xff")
    with pytest.raises(UnmappableGraphError, match=r"only \[batch, features\] inputs"):
        describe(_image_graph())
    with pytest.raises(UnmappableGraphError, match="no probability output"):
        describe(_label_only_graph())


def _image_graph() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["mean"], keepdims=0)],
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 3, 224, 224])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, [None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


def _label_only_graph() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ArgMax", ["x"], ["label"], axis=1, keepdims=0)],
        "svm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


def test_a_graph_that_fails_at_run_time_raises_and_scores_other_rows():
    bundle = onnx_models.failing_graph()
    scorer = scorer_for(onnx_candidate("f", describe(bundle.graph, features=bundle.feature_names)))
    good = scorer.score(bundle.X)
    np.testing.assert_allclose(good, np.array(bundle.y, dtype=float), rtol=1e-5, atol=1e-4)
    with pytest.raises(Exception, match=r"out of data bounds|Gather"):
        scorer.score(np.array([[9.0, 0.0, 0.0]]))


def test_onnx_artifact_is_signed_and_every_graph_byte_counts(bundles):
    private = Ed25519PrivateKey.generate()
    body = onnx_candidate("mlp", _signature("mlp", bundles["mlp"]))
    data = CODEC.encode(ModelArtifact, seal(body, private))
    verified = verify_bytes(data, private.public_key())
    assert verified.body["onnx"]["graph"] == bundles["mlp"].graph
    at = data.index(bundles["mlp"].graph[100:140]) + 7  # a byte inside a weight
    tampered = bytearray(data)
    tampered[at] ^= 0x01
    with pytest.raises(ArtifactVerificationError, match="digest mismatch"):
        verify_bytes(bytes(tampered), private.public_key())


def test_graph_sha256_guards_the_scorer(bundles):
    body = onnx_candidate("mlp", _signature("mlp", bundles["mlp"]))
    graph = dict(body["onnx"])
    graph["graph"] = graph["graph"][:-1] + bytes([graph["graph"][-1] ^ 1])
    with pytest.raises(ArtifactVerificationError, match="graph_sha256"):
        OnnxScorer({**body, "onnx": graph})


def test_encrypted_graph_needs_the_data_key(bundles):
    body = onnx_candidate("xgb", _signature("xgboost", bundles["xgboost"]))
    key = os.urandom(32)
    sealed = encrypt_tensors(body, key, "k1")
    assert bundles["xgboost"].graph[:200] not in sealed["onnx"]["graph"]
    assert decrypt_tensors(sealed, key)["onnx"]["graph"] == bundles["xgboost"].graph
    with pytest.raises(ArtifactVerificationError):
        decrypt_tensors(sealed, None)
    with pytest.raises(ArtifactVerificationError, match="decrypt"):
        decrypt_tensors(sealed, os.urandom(32))


def test_apache_avro_reads_an_onnx_artifact_from_the_avsc_alone(bundles):
    body = onnx_candidate("lgbm", _signature("lightgbm", bundles["lightgbm"]))
    record = seal(body)
    data = CODEC.encode(ModelArtifact, record)
    schema = avro.schema.parse((SCHEMAS / "ModelArtifact.avsc").read_text())
    decoded = avro.io.DatumReader(schema).read(
        avro.io.BinaryDecoder(io.BytesIO(data[HEADER_SIZE:]))
    )
    assert decoded["body"]["onnx"]["graph"] == bundles["lightgbm"].graph
    assert decoded["digest"] == record["digest"]


@pytest.mark.parametrize(
    "name", ["ModelArtifact", "PredictionRequest", "TrainingExample", "Command"]
)
def test_messages_of_the_previous_schemas_still_decode_and_verify(name):
    """Writers of the first contracts (no graph or layers, no categories, no family) are
    resolved against the current readers."""
    old = avro.schema.parse((SCHEMAS / "history" / f"{name}.1.avsc").read_text())
    sample = {
        "ModelArtifact": model_artifact(),
        "PredictionRequest": {
            "request_id": "r-1",
            "model": "m",
            "features": [1.0, 2.0],
            "version": None,
            "sent_at_ms": None,
        },
        "TrainingExample": {
            "model": "m",
            "features": {"a": 1.0},
            "label": "1",
            "example_id": None,
            "timestamp_ms": None,
        },
        "Command": {
            "model": "m",
            "action": "DEFINE",
            "definition": {
                k: v
                for k, v in SAMPLES["Command"]["definition"].items()
                if k not in ("family", "hidden")
            },
            "version": None,
            "traffic": None,
            "actor": "cli",
            "reason": "",
            "issued_at_ms": 1,
        },
    }[name]
    if name == "ModelArtifact":
        body = dict(sample["body"])
        for newer in ("onnx", "layers"):
            del body[newer]
        body["training"] = {
            k: v for k, v in body["training"].items() if k not in ("hidden", "hyperparameters")
        }
        raw = json.loads((SCHEMAS / "history" / f"{name}.1.avsc").read_text())
        digest = body_digest(body, Schema.parse(raw).parsed["fields"][0]["type"])
        sample = {"body": body, "digest": digest, "signature": b"", "key_id": ""}
    buffer = io.BytesIO()
    avro.io.DatumWriter(old).write(sample, avro.io.BinaryEncoder(buffer))
    data = b"\xc3\x01" + old.fingerprint("CRC-64-AVRO") + buffer.getvalue()
    decoded = CODEC.decode(data, RECORD_TYPES[name])
    if name == "ModelArtifact":
        assert decoded["body"]["onnx"] is None and decoded["body"]["layers"] is None
        assert decoded["body"]["training"]["hidden"] == []
        assert verify_bytes(data, None, allow_unsigned=True).digest == sample["digest"]
    elif name == "Command":
        assert decoded["definition"]["family"] == "linear"
        assert Definition.from_command(decoded).family == "linear"
    else:
        assert decoded["categories"] == {}


def test_json_features_with_strings_are_categories():
    data = json.dumps(
        {"request_id": "r", "model": "m", "features": {"radius": 17.5, "centre": "north"}}
    ).encode()
    request = CODEC.decode_any(data, PredictionRequest)
    assert request["features"] == {"radius": 17.5}
    assert request["categories"] == {"centre": "north"}
    example = CODEC.decode_any(
        json.dumps({"model": "m", "features": {"x": 1, "c": "a"}, "label": "1"}).encode(),
        TrainingExample,
    )
    assert example["categories"] == {"c": "a"} and example["features"] == {"x": 1.0}


@pytest.mark.parametrize(
    "history",
    [
        "PredictionRequest.2",
        "TrainingExample.2",
        "Prediction.1",
        "Command.2",
        "ModelArtifact.2",
        "ValidationReport.2",
    ],
)
def test_messages_of_the_schemas_before_tensors_still_decode(history):
    """Writers from before named tensors, EMBEDDING and the serving spec are resolved against
    the current readers: no tensors, no outputs, no spec."""
    name = history.split(".")[0]
    old = avro.schema.parse((SCHEMAS / "history" / f"{history}.avsc").read_text())
    raw = json.loads((SCHEMAS / "history" / f"{history}.avsc").read_text())
    sample = _fit(SAMPLES[name], raw, {})
    if name == "ModelArtifact":  # a digest computed as its writer computed it
        body_schema = Schema.parse(raw).parsed["fields"][0]["type"]
        sample = {**sample, "digest": body_digest(sample["body"], body_schema), "signature": b""}
    buffer = io.BytesIO()
    avro.io.DatumWriter(old).write(sample, avro.io.BinaryEncoder(buffer))
    data = b"\xc3\x01" + old.fingerprint("CRC-64-AVRO") + buffer.getvalue()
    decoded = CODEC.decode(data, RECORD_TYPES[name])
    if name in ("PredictionRequest", "TrainingExample"):
        assert decoded["tensors"] == []
    elif name == "Prediction":
        assert decoded["outputs"] == []
    elif name == "ModelArtifact":
        assert decoded["body"]["onnx"] is None
        assert verify_bytes(data, None, allow_unsigned=True)  # the digest under its writer
    assert decoded  # and everything else as written


def _fit(value, schema, named):  # type: ignore[no-untyped-def]
    """``value`` reduced to the fields ``schema`` (an older one) has."""
    if isinstance(schema, str):
        return _fit(value, named[schema], named) if schema in named else value
    if isinstance(schema, list):
        if value is None:
            return None
        branch = next(b for b in schema if b != "null")
        return _fit(value, branch, named)
    kind = schema.get("type")
    if kind in ("record", "enum"):
        named[schema["name"]] = schema
    if kind == "record":
        return {f["name"]: _fit(value[f["name"]], f["type"], named) for f in schema["fields"]}
    if kind == "array":
        return [_fit(v, schema["items"], named) for v in value]
    if kind == "map":
        return {k: _fit(v, schema["values"], named) for k, v in value.items()}
    return value if isinstance(kind, str) else _fit(value, kind, named)
