"""Bring your own model: scikit-learn -> skl2onnx -> import -> gate -> publish -> serve;
and the served model exported to ONNX scores like the predictor in onnxruntime."""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelstream.contracts.client import RequestEncoder
from modelstream.registry.artifact import generate_keys, load_public_key
from modelstream.registry.follower import load_production
from modelstream.services.predictor.app import PredictorApp
from modelstream.services.predictor.settings import PredictorSettings
from modelstream.services.publisher.app import PublisherApp
from modelstream.services.publisher.settings import PublisherSettings
from modelstream.services.validator.app import ValidatorApp
from modelstream.services.validator.settings import ValidatorSettings
from modelstream.settings import load
from tests.support.helpers import consume_until, decoded, define, produce_records, run_cli, running
from tests.support.models import dataset

BC = "breast-cancer"


async def cli(base, keys, *args):  # type: ignore[no-untyped-def]
    return await run_cli(base, *args, MODELSTREAM_PUBLIC_KEY_FILE=str(keys / "modelstream.pub"))


async def test_scikit_learn_model_imported_gated_served_and_exported(topics, tmp_path):  # type: ignore[no-untyped-def]
    base = topics
    generate_keys(tmp_path / "keys")
    keys = tmp_path / "keys"
    X, y, names, _ = dataset(BC)
    sklearn_model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, y)
    onnx_path = tmp_path / "sklearn.onnx"
    onnx_path.write_bytes(to_onnx(sklearn_model, X[:1].astype(np.float32)).SerializeToString())

    await define(
        base,
        BC,
        "BINARY",
        feature_names=tuple(names),
        classes=("0", "1"),
        thresholds={"min_accuracy": 0.9},
    )
    # recent labelled data for the holdout gate
    await produce_records(
        base,
        "training",
        "TrainingExample",
        [
            {
                "model": BC,
                "features": dict(zip(names, row.tolist(), strict=True)),
                "label": str(int(label)),
            }
            for row, label in zip(X, y, strict=True)
        ],
        key=lambda r: r["model"],
    )
    common = {
        "bootstrap_servers": base.bootstrap,
        "topic_prefix": base.topic_prefix,
        "public_key_file": keys / "modelstream.pub",
    }
    async with (
        running(ValidatorApp(load(ValidatorSettings, **common))),
        running(
            PublisherApp(
                load(PublisherSettings, **common, private_key_file=keys / "modelstream.key")
            )
        ),
    ):
        imported = await cli(
            base, keys, "models", "import", BC, str(onnx_path), "--features", ",".join(names)
        )
        assert imported.returncode == 0, imported.stderr
        (report,) = decoded(
            await consume_until(base, "validations", lambda r: len(r) >= 1), "ValidationReport"
        )
        assert report["passed"] and report["method"] == "holdout", report["reasons"]
        public = load_public_key(keys / "modelstream.pub")
        deadline = asyncio.get_running_loop().time() + 60
        while BC not in await load_production(base, public):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.3)

    encoder = RequestEncoder(names)
    async with running(PredictorApp(load(PredictorSettings, **common))):
        from tests.support.helpers import produce

        await produce(
            base,
            "requests",
            [
                (f"o{i}".encode(), encoder.encode(f"o{i}", BC, X[i], packed=True))
                for i in range(len(y))
            ],
        )
        records = await consume_until(base, "predictions", lambda r: len(r) >= len(y))
    served = {p["request_id"]: p for p in decoded(records, "Prediction")}
    ours = np.array([served[f"o{i}"]["scores"]["1"] for i in range(len(y))])
    assert np.allclose(ours, sklearn_model.predict_proba(X)[:, 1], atol=1e-5)
    assert (
        np.array([int(served[f"o{i}"]["prediction"]) for i in range(len(y))])
        == sklearn_model.predict(X)
    ).all()

    exported_path = tmp_path / "served.onnx"
    exported = await cli(
        base, keys, "models", "export", BC, "--format", "onnx", "-o", str(exported_path)
    )
    assert exported.returncode == 0, exported.stderr
    session = ort.InferenceSession(exported_path.read_bytes(), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(None, {"features": X.astype(np.float32)})
    assert np.allclose(probabilities[:, 1], ours, atol=1e-5)
