"""The trainer's non-linear families on Kafka: define -> examples -> candidate -> gate (k-fold
CV of the family's procedure) -> signed v1 -> served -> exported -> reproduced bit for bit."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
from sklearn.datasets import load_breast_cancer, load_digits

from modelstream.contracts.builders import command
from modelstream.contracts.client import RequestEncoder
from modelstream.kafka.control import send_command
from modelstream.learn.gbdt import GBDTModel
from modelstream.learn.mlp import MLPModel
from modelstream.registry.artifact import load_public_key
from modelstream.registry.follower import load_production
from modelstream.registry.lineage import load_lineage, retrain
from modelstream.services.predictor.app import PredictorApp
from modelstream.services.predictor.settings import PredictorSettings
from modelstream.services.publisher.app import PublisherApp
from modelstream.services.publisher.settings import PublisherSettings
from modelstream.services.trainer.app import TrainerApp
from modelstream.services.trainer.settings import TrainerSettings
from modelstream.services.validator.app import ValidatorApp
from modelstream.services.validator.settings import ValidatorSettings
from tests.support.helpers import (
    consume_until,
    decoded,
    define,
    produce,
    produce_records,
    running,
    service_settings,
)

MODEL = "digits-mlp"
NAMES = [f"pixel_{i}" for i in range(64)]


async def test_an_mlp_is_trained_gated_served_exported_and_reproduced(topics, keys, tmp_path):  # type: ignore[no-untyped-def]
    base = topics
    digits = load_digits()
    X, y = digits.data[:900].astype(np.float64), digits.target[:900]
    await define(
        base,
        MODEL,
        "MULTICLASS",
        feature_names=tuple(NAMES),
        classes=tuple(str(c) for c in range(10)),
        cv_folds=3,
        l2_grid=(1e-4, 1e-3),
        thresholds={"min_accuracy": 0.9},
        family="mlp",
        hidden=(32,),
    )
    await produce_records(
        base,
        "training",
        "TrainingExample",
        [
            {"model": MODEL, "features": row.tolist(), "label": str(label)}
            for row, label in zip(X, y, strict=True)
        ],
        key=lambda r: r["model"],
    )
    public = load_public_key(keys / "modelstream.pub")
    async with (
        running(TrainerApp(service_settings(TrainerSettings, base, keys))),
        running(ValidatorApp(service_settings(ValidatorSettings, base, keys))),
        running(PublisherApp(service_settings(PublisherSettings, base, keys))),
    ):
        await send_command(base, command(MODEL, "TRAIN"))
        (report,) = decoded(
            await consume_until(base, "validations", lambda r: len(r) >= 1, timeout_s=120),
            "ValidationReport",
        )
        assert report["passed"], report["reasons"]
        assert report["method"] == "cross-validation" and report["folds"] == 3
        assert report["metrics"]["accuracy_mean"] > 0.9
        deadline = asyncio.get_running_loop().time() + 60
        while MODEL not in (production := await load_production(base, public)):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.3)
    v1 = production[MODEL]
    assert v1.signed and v1.body["layers"] and v1.body["training"]["hidden"] == [32]
    trainers_own = MLPModel.from_body(v1.body)

    encoder = RequestEncoder(NAMES)
    async with running(PredictorApp(service_settings(PredictorSettings, base, keys))):
        await produce(
            base,
            "requests",
            [
                (f"d{i}".encode(), encoder.encode(f"d{i}", MODEL, X[i], packed=True))
                for i in range(300)
            ],
        )
        records = await consume_until(base, "predictions", lambda r: len(r) >= 300)
    served = {p["request_id"]: p for p in decoded(records, "Prediction")}
    scores = np.array([[served[f"d{i}"]["scores"][str(c)] for c in range(10)] for i in range(300)])
    np.testing.assert_allclose(scores, trainers_own.proba(X[:300]), atol=1e-12)

    env = {
        **os.environ,
        "MODELSTREAM_BOOTSTRAP_SERVERS": base.bootstrap,
        "MODELSTREAM_TOPIC_PREFIX": base.topic_prefix,
        "MODELSTREAM_PUBLIC_KEY_FILE": str(keys / "modelstream.pub"),
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "modelstream.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    exported = await asyncio.to_thread(cli, "models", "export", MODEL, "-o", str(keys / "m.onnx"))
    assert exported.returncode == 0, exported.stderr
    session = ort.InferenceSession(
        (keys / "m.onnx").read_bytes(), providers=["CPUExecutionProvider"]
    )
    (probabilities,) = session.run(None, {"features": X[:300].astype(np.float32)})
    np.testing.assert_allclose(probabilities, scores, atol=1e-5)
    reproduced = await asyncio.to_thread(cli, "models", "reproduce", MODEL, "1")
    assert reproduced.returncode == 0, reproduced.stdout + reproduced.stderr
    assert "MATCH (bit for bit)" in reproduced.stdout


async def test_gradient_boosted_trees_are_trained_gated_served_and_reproduced(topics, keys):  # type: ignore[no-untyped-def]
    """define --family gbdt -> LightGBM on the window, L2 and complexity by k-fold CV ->
    an ONNX artifact served by the any-model path; scores equal LightGBM's own."""
    base, name = topics, "cancer-trees"
    data = load_breast_cancer()
    X, y = data.data.astype(np.float64), data.target
    names = [f"f{i}" for i in range(X.shape[1])]
    await define(
        base,
        name,
        "BINARY",
        feature_names=tuple(names),
        classes=("0", "1"),
        cv_folds=3,
        l2_grid=(1e-3, 1.0),
        thresholds={"min_accuracy": 0.9},
        family="gbdt",
    )
    await produce_records(
        base,
        "training",
        "TrainingExample",
        [
            {"model": name, "features": row.tolist(), "label": str(label)}
            for row, label in zip(X, y, strict=True)
        ],
        key=lambda r: r["model"],
    )
    public = load_public_key(keys / "modelstream.pub")
    async with (
        running(TrainerApp(service_settings(TrainerSettings, base, keys))),
        running(ValidatorApp(service_settings(ValidatorSettings, base, keys))),
        running(PublisherApp(service_settings(PublisherSettings, base, keys))),
    ):
        await send_command(base, command(name, "TRAIN"))
        (report,) = decoded(
            await consume_until(base, "validations", lambda r: len(r) >= 1, timeout_s=120),
            "ValidationReport",
        )
        assert report["passed"], report["reasons"]
        assert report["method"] == "cross-validation" and report["folds"] == 3
        deadline = asyncio.get_running_loop().time() + 60
        while name not in (production := await load_production(base, public)):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.3)
    v1 = production[name].body
    assert v1["onnx"] is not None and v1["training"]["algorithm"] == "lightgbm"
    assert set(v1["training"]["hyperparameters"]) == {
        "num_leaves",
        "min_data_in_leaf",
        "n_estimators",
    }
    trees = retrain(v1, await load_lineage(base, v1)).model  # LightGBM, as the trainer ran it
    assert isinstance(trees, GBDTModel)
    encoder = RequestEncoder(names)
    async with running(PredictorApp(service_settings(PredictorSettings, base, keys))):
        await produce(
            base,
            "requests",
            [
                (f"c{i}".encode(), encoder.encode(f"c{i}", name, X[i], packed=True))
                for i in range(len(y))
            ],
        )
        records = await consume_until(base, "predictions", lambda r: len(r) >= len(y))
    served = {p["request_id"]: p for p in decoded(records, "Prediction")}
    ours = np.array([served[f"c{i}"]["scores"]["1"] for i in range(len(y))])
    np.testing.assert_allclose(ours, trees.proba(X)[:, 1], atol=1e-5)
    env = {
        **os.environ,
        "MODELSTREAM_BOOTSTRAP_SERVERS": base.bootstrap,
        "MODELSTREAM_TOPIC_PREFIX": base.topic_prefix,
        "MODELSTREAM_PUBLIC_KEY_FILE": str(keys / "modelstream.pub"),
    }
    reproduced = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "modelstream.cli", "models", "reproduce", name, "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert reproduced.returncode == 0, reproduced.stdout + reproduced.stderr
    assert "MATCH (bit for bit)" in reproduced.stdout
