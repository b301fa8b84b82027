"""The mlp family on Kafka: define -> examples -> candidate -> gate (k-fold CV of the
network's procedure) -> signed v1 -> served -> exported -> reproduced bit for bit."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
from sklearn.datasets import load_digits

from modelstream.contracts.builders import command
from modelstream.contracts.client import RequestEncoder
from modelstream.kafka.control import send_command
from modelstream.learn.mlp import MLPModel
from modelstream.registry.artifact import load_public_key
from modelstream.registry.follower import load_production
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


async def test_an_mlp_is_trained_gated_served_exported_and_reproduced(
    topics, keys, tmp_path
):  # type: ignore[no-untyped-def]
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
