"""The predictor in-process on the real broker: scoring, hot swap, routing, bad input."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelstream.contracts.builders import command
from modelstream.contracts.client import RequestEncoder, decode_prediction
from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import ModelArtifact, Prediction, PredictionRequest
from modelstream.kafka.control import send_command
from modelstream.learn.linear import LinearModel
from modelstream.registry.artifact import seal
from modelstream.services.predictor.app import PredictorApp
from tests.support.helpers import consume_until, decoded, produce, running
from tests.support.models import (
    BC,
    dataset,
    predictor_settings,
    publish,
    requests_for,
    trained_body,
)


def ids_done(n):  # type: ignore[no-untyped-def]
    return lambda records: len({r.key for r in records}) >= n


async def test_scores_match_the_trainers_own(topics, keys):  # type: ignore[no-untyped-def]
    base = topics
    artifact = await publish(base, keys, trained_body(BC), 1)
    digits = await publish(base, keys, trained_body("digits"), 1)
    X, _, names, _ = dataset(BC)
    Xd, _, dnames, _ = dataset("digits")
    json_encoder = RequestEncoder(names, fmt="json")
    messages = (
        requests_for(BC, 100)
        + requests_for(BC, 100, 100, packed=True)
        + requests_for("digits", 100, prefix="d")
        + [(f"j-{i}".encode(), json_encoder.encode(f"j-{i}", BC, X[i].tolist())) for i in range(50)]
    )
    async with running(PredictorApp(predictor_settings(base, keys))):
        await produce(base, "requests", messages)
        records = await consume_until(base, "predictions", ids_done(len(messages)))
    predictions = {p["request_id"]: p for p in decoded(records, "Prediction")}
    assert len(predictions) == len(messages) == len(records)
    model = LinearModel.from_body(artifact["body"])
    expected = model.proba(X[:200])
    for i in range(200):
        p = predictions[f"r-{i}"]
        assert p["version"] == 1 and p["digest_prefix"] == artifact["digest"][:12]
        assert p["route"] == "production"
        assert [p["scores"]["0"], p["scores"]["1"]] == pytest.approx(expected[i], abs=1e-12)
        assert p["prediction"] == str(int(expected[i].argmax()))
    for i in range(50):
        assert predictions[f"j-{i}"]["scores"]["1"] == pytest.approx(expected[i, 1], abs=1e-12)
    digits_model = LinearModel.from_body(digits["body"])
    digits_expected = digits_model.proba(Xd[:100])
    for i in range(100):
        p = predictions[f"d-{i}"]
        assert p["prediction"] == str(int(digits_expected[i].argmax()))
        assert p["scores"][p["prediction"]] == pytest.approx(digits_expected[i].max(), abs=1e-12)
    assert len(dnames) == 64


async def test_poison_messages_are_dead_lettered_and_good_ones_scored(topics, keys):  # type: ignore[no-untyped-def]
    base = topics
    await publish(base, keys, trained_body(BC), 1)
    _, _, names, _ = dataset(BC)
    encoder = RequestEncoder(names)
    good = requests_for(BC, 40)
    full = dict(zip(names, [1.0] * len(names), strict=True))
    bad = [
        (b"b-1", b"\x00\x01 not avro"),
        (b"b-2", json.dumps({"request_id": "b-2", "model": "nope", "features": [1]}).encode()),
        (b"b-3", encoder.encode("b-3", BC, [1.0, 2.0])),
        (b"b-4", encoder.encode("b-4", BC, {k: v for k, v in list(full.items())[1:]})),
        (b"b-5", encoder.encode("b-5", BC, {**full, names[0]: float("nan")})),
        (b"b-6", encoder.encode("b-6", BC, full, version=99)),
        (b"b-7", encoder.encode("b-7", BC, np.ones(len(names) + 1), packed=True)),
        (b"b-8", b'{"request_id": "b-8", "model": "breast-cancer", "features": "x"}'),
    ]
    interleaved = [m for pair in zip(good[:8], bad, strict=True) for m in pair] + good[8:]
    async with running(PredictorApp(predictor_settings(base, keys))) as app:
        await produce(base, "requests", interleaved)
        records = await consume_until(base, "predictions", ids_done(len(good)))
        dead = await consume_until(base, "deadletter", lambda r: len(r) >= len(bad))
        assert app.pipeline.records_in == len(interleaved)
    assert sorted(r.key for r in records) == sorted(k for k, _ in good)
    reasons = {r.key.decode(): dict(r.headers)["reason"].decode() for r in dead}
    assert reasons == {
        "b-1": "undecodable",
        "b-2": "unknown-model",
        "b-3": "wrong-feature-count",
        "b-4": "missing-features",
        "b-5": "non-finite",
        "b-6": "unknown-version",
        "b-7": "wrong-feature-count",
        "b-8": "invalid-json",
    }
    assert all(dict(r.headers)["service"] == b"predictor" for r in dead)
    assert {r.value for r in dead} == {v for _, v in bad}  # bytes kept as sent


async def test_tampered_and_forged_artifacts_are_never_served(topics, keys):  # type: ignore[no-untyped-def]
    base = topics
    v1 = await publish(base, keys, trained_body(BC), 1)
    async with running(PredictorApp(predictor_settings(base, keys))) as app:
        await publish(base, keys, trained_body(BC, seed=5), 2, tamper=True)
        forged = seal(
            dict(trained_body(BC, seed=6), version=3, stage="PRODUCTION"),
            Ed25519PrivateKey.generate(),
        )
        await produce(
            base, "models", [(BC.encode(), default_codec().encode(ModelArtifact, forged))]
        )
        audit = decoded(await consume_until(base, "audit", lambda r: len(r) >= 3), "AuditEvent")
        refused = [a for a in audit if a["event"].endswith("_refused")]
        assert len(refused) >= 3  # tampered v2 on history and models, forged v3 on models
        assert any("digest mismatch" in a["reason"] for a in refused)
        assert any("unknown key" in a["reason"] for a in refused)
        await produce(base, "requests", requests_for(BC, 50))
        records = await consume_until(base, "predictions", ids_done(50))
        assert app.logic.production[BC] == 1
    assert {p["version"] for p in decoded(records, "Prediction")} == {1}
    assert {p["digest_prefix"] for p in decoded(records, "Prediction")} == {v1["digest"][:12]}


async def test_hot_swap_under_load_loses_and_duplicates_nothing(topics, keys):  # type: ignore[no-untyped-def]
    base = topics
    v1 = await publish(base, keys, trained_body(BC), 1)
    total, chunk = 6000, 500
    async with running(PredictorApp(predictor_settings(base, keys))):
        for start in range(0, total, chunk):
            await produce(base, "requests", requests_for(BC, chunk, start, packed=True))
            if start == total // 2:
                v2 = await publish(base, keys, trained_body(BC, seed=9), 2)
            await asyncio.sleep(0.05)
        records = await consume_until(base, "predictions", ids_done(total))
    counts = Counter(r.key for r in records)
    assert len(counts) == total and max(counts.values()) == 1
    predictions = decoded(records, "Prediction")
    digests = {1: v1["digest"][:12], 2: v2["digest"][:12]}
    assert all(p["digest_prefix"] == digests[p["version"]] for p in predictions)
    by_offset = sorted((p["predicted_at_ms"], p["version"]) for p in predictions)
    versions = [v for _, v in by_offset]
    first_v2 = versions.index(2)
    assert set(versions[:first_v2]) == {1} and set(versions[first_v2:]) == {2}  # one switch
    assert versions.count(1) > 0 and versions.count(2) > 0


async def test_traffic_split_and_shadow(topics, keys):  # type: ignore[no-untyped-def]
    base = topics
    await publish(base, keys, trained_body(BC), 1)
    await publish(base, keys, trained_body(BC, seed=3), 2, production=False)  # history only
    n = 4000
    async with running(PredictorApp(predictor_settings(base, keys))) as app:
        assert app.logic.production[BC] == 1 and 2 in app.logic.versions[BC]
        await send_command(
            base,
            command(
                BC,
                "SET_TRAFFIC",
                traffic={"challenger_version": 2, "fraction": 0.3, "shadow": False},
            ),
        )
        await _until(lambda: BC in app.logic.traffic)
        await produce(base, "requests", requests_for(BC, n, packed=True, prefix="s"))
        split = decoded(await consume_until(base, "predictions", ids_done(n)), "Prediction")
        routes = Counter(p["route"] for p in split)
        assert routes["challenger"] / n == pytest.approx(0.3, abs=0.03)
        assert {p["version"] for p in split if p["route"] == "challenger"} == {2}
        assert {p["version"] for p in split if p["route"] == "production"} == {1}
        # deterministic by request id: the same ids take the same routes again
        await produce(base, "requests", requests_for(BC, 500, packed=True, prefix="s"))
        again = decoded(
            await consume_until(base, "predictions", lambda r: len(r) >= n + 500), "Prediction"
        )
        first_route = {p["request_id"]: p["route"] for p in split}
        assert all(first_route[p["request_id"]] == p["route"] for p in again[n:])

        await send_command(
            base,
            command(
                BC,
                "SET_TRAFFIC",
                traffic={"challenger_version": 2, "fraction": 0.0, "shadow": True},
            ),
        )
        await _until(lambda: app.logic.traffic[BC].shadow)
        await produce(base, "requests", requests_for(BC, 300, packed=True, prefix="w"))
        shadow = decoded(
            await consume_until(base, "shadow-predictions", ids_done(300)), "Prediction"
        )
        everything = decoded(
            await consume_until(base, "predictions", lambda r: len(r) >= n + 800), "Prediction"
        )
    assert {p["route"] for p in shadow} == {"shadow"} and {p["version"] for p in shadow} == {2}
    assert len({p["request_id"] for p in shadow}) == 300
    shadowed = [p for p in everything if p["request_id"].startswith("w-")]
    assert len(shadowed) == 300 and {p["version"] for p in shadowed} == {1}


async def _until(condition, timeout_s=30.0):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.1)


def test_client_round_trip():
    encoder = RequestEncoder(["a", "b"])
    packed = default_codec().decode(
        encoder.encode("r", "m", {"b": 2.0, "a": 1.0}, packed=True), PredictionRequest
    )
    assert np.frombuffer(packed["features"], "<f8").tolist() == [1.0, 2.0]
    as_json = RequestEncoder(fmt="json").encode("r", "m", [1.0, 2.0], version=3)
    assert json.loads(as_json)["version"] == 3
    prediction = {
        "request_id": "r",
        "model": "m",
        "version": 1,
        "digest_prefix": "ab",
        "prediction": "1",
        "scores": {"1": 1.0},
        "route": "production",
        "requested_at_ms": 1,
        "predicted_at_ms": 2,
    }
    decoded = decode_prediction(default_codec().encode(Prediction, prediction))
    assert decoded == {**prediction, "outputs": []}  # written before there were outputs


async def test_at_least_once_mode_scores_without_transactions(topics, keys):  # type: ignore[no-untyped-def]
    base = topics
    await publish(base, keys, trained_body(BC), 1)
    app = PredictorApp(predictor_settings(base, keys, delivery="at-least-once"))
    assert not app.pipeline.exactly_once
    sent = requests_for(BC, 500, packed=True)
    async with running(app):
        await produce(base, "requests", sent)
        records = await consume_until(base, "predictions", ids_done(500))
        consumer = app.pipeline.consumer
        committed: dict[object, int | None] = {}

        async def all_committed() -> bool:
            # The fetch loop commits what was acknowledged on its next pass, shortly after
            # the predictions became visible.
            for tp in app.pipeline.assigned_partitions():
                committed[tp] = await consumer.committed(tp)
            return sum(offset or 0 for offset in committed.values()) == len(sent)

        deadline = asyncio.get_running_loop().time() + 30.0
        while not await all_committed():
            assert asyncio.get_running_loop().time() < deadline, committed
            await asyncio.sleep(0.1)
    assert len({r.key for r in records}) == 500


async def test_encrypted_artifact_is_served_only_with_the_data_key(topics, keys, tmp_path):  # type: ignore[no-untyped-def]
    import os

    base = topics
    key = os.urandom(32)
    (tmp_path / "data.key").write_text(key.hex())
    await publish(base, keys, trained_body(BC), 1, data_key=(key, "k1"))
    with_key = PredictorApp(predictor_settings(base, keys, data_key_file=tmp_path / "data.key"))
    async with running(with_key):
        assert with_key.logic.production == {BC: 1}
        await produce(base, "requests", requests_for(BC, 20, packed=True))
        served = await consume_until(base, "predictions", ids_done(20))
    assert {p["version"] for p in decoded(served, "Prediction")} == {1}

    without_key = PredictorApp(predictor_settings(base, keys))
    async with running(without_key):
        assert without_key.logic.production == {}  # refused, never served
        audit = decoded(await consume_until(base, "audit", lambda r: len(r) >= 1), "AuditEvent")
        assert any("not configured" in a["reason"] for a in audit)
