"""Regression with packed/JSON features and encrypted weights; fixed-weight candidates
judged on a holdout; the registry CLI."""

from __future__ import annotations

import asyncio
import json
import os

import numpy as np
import pytest
from sklearn.datasets import load_diabetes

from modelstream.contracts.builders import command
from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import ModelArtifact, TrainingExample
from modelstream.kafka.control import send_command
from modelstream.learn.linear import LinearModel
from modelstream.registry.artifact import (
    decrypt_tensors,
    from_tensor,
    generate_keys,
    load_private_key,
    load_public_key,
    seal_candidate,
    to_tensor,
)
from modelstream.registry.follower import load_production
from modelstream.services.publisher.app import PublisherApp
from modelstream.services.publisher.settings import PublisherSettings
from modelstream.services.trainer.app import TrainerApp
from modelstream.services.trainer.settings import TrainerSettings
from modelstream.services.validator.app import ValidatorApp
from modelstream.services.validator.settings import ValidatorSettings
from modelstream.settings import load
from tests.support.helpers import cli, consume_until, decoded, define, produce, running

MODEL = "diabetes"


@pytest.fixture
def keys(tmp_path):  # type: ignore[no-untyped-def]
    generate_keys(tmp_path / "keys")
    (tmp_path / "keys" / "data.key").write_text(os.urandom(32).hex())
    return tmp_path / "keys"


def cli_with_keys(base, keys, *args):  # type: ignore[no-untyped-def]
    return cli(
        *args,
        MODELSTREAM_BOOTSTRAP_SERVERS=base.bootstrap,
        MODELSTREAM_TOPIC_PREFIX=base.topic_prefix,
        MODELSTREAM_PUBLIC_KEY_FILE=str(keys / "modelstream.pub"),
        MODELSTREAM_DATA_KEY_FILE=str(keys / "data.key"),
    )


async def test_regression_encrypted_and_holdout_paths(topics, keys):  # type: ignore[no-untyped-def]
    base = topics
    common = {
        "bootstrap_servers": base.bootstrap,
        "topic_prefix": base.topic_prefix,
        "public_key_file": keys / "modelstream.pub",
        "private_key_file": keys / "modelstream.key",
        "data_key_file": keys / "data.key",
    }
    public = load_public_key(keys / "modelstream.pub")
    data = load_diabetes()
    names = [str(n) for n in data.feature_names]
    codec = default_codec()
    await define(
        base,
        MODEL,
        "REGRESSION",
        feature_names=tuple(names),
        min_examples=50,
        thresholds={"min_r2": 0.3},
    )
    messages = []
    for i, (row, target) in enumerate(zip(data.data, data.target, strict=True)):
        if i % 2:  # packed little-endian float64 in feature order
            messages.append(
                codec.encode(
                    TrainingExample,
                    {
                        "model": MODEL,
                        "features": row.astype("<f8").tobytes(),
                        "label": float(target),
                    },
                )
            )
        else:  # plain JSON with a list
            messages.append(
                json.dumps(
                    {"model": MODEL, "features": row.tolist(), "label": float(target)}
                ).encode()
            )
    await produce(base, "training", [(MODEL.encode(), m) for m in messages])

    async with (
        running(TrainerApp(load(TrainerSettings, **common))),
        running(ValidatorApp(load(ValidatorSettings, holdout_size=200, **common))),
        running(PublisherApp(load(PublisherSettings, **common))),
    ):
        await send_command(base, command(MODEL, "TRAIN"))
        (report,) = decoded(
            await consume_until(base, "validations", lambda r: len(r) >= 1), "ValidationReport"
        )
        assert report["passed"], report["reasons"]
        assert report["examples"] == len(data.target)
        assert {"rmse_mean", "rmse_std", "r2_mean", "mae_mean"} <= set(report["metrics"])
        assert report["metrics"]["r2_mean"] > 0.4

        production = await _wait(lambda p: MODEL in p, base, public)
        v1 = production[MODEL]
        assert (
            v1.body["encryption"] is not None
            and v1.body["encryption"]["algorithm"] == "AES-256-GCM"
        )
        # The weights on the topic are ciphertext: not readable as floats of that shape.
        with pytest.raises(Exception):  # noqa: B017 - any failure to parse is the point
            LinearModel.from_body(v1.body)
        plain = decrypt_tensors(v1.body, bytes.fromhex((keys / "data.key").read_text()))
        model = LinearModel.from_body(plain)
        rmse = float(np.sqrt(np.mean((model.output(data.data) - data.target) ** 2)))
        assert rmse < 60  # target std is 77

        # Fixed weights from online learning are judged on a holdout, never retrained.
        def online(weights_scale: float):  # type: ignore[no-untyped-def]
            body = dict(plain)
            body.update(
                version=0,
                stage="CANDIDATE",
                encryption=None,
                created_by="monitor",
                lineage={"origin": "ONLINE", "ranges": [], "example_count": 300},
                parent_version=1,
            )
            body["weights"] = to_tensor(from_tensor(plain["weights"]) * weights_scale)
            return seal_candidate(body, load_private_key(keys / "monitor.key"))

        await produce(
            base,
            "candidates",
            [
                (MODEL.encode(), codec.encode(ModelArtifact, online(1.0))),
                (MODEL.encode(), codec.encode(ModelArtifact, online(-1.0))),
            ],
        )
        reports = decoded(
            await consume_until(base, "validations", lambda r: len(r) >= 3), "ValidationReport"
        )
        same, broken = reports[1], reports[2]
        assert same["method"] == "holdout" and broken["method"] == "holdout"
        assert same["examples"] == 200
        assert same["passed"], same["reasons"]
        assert not broken["passed"]
        assert any(
            "worse than champion v1" in r or "below the minimum" in r for r in broken["reasons"]
        )
        production = await _wait(lambda p: p[MODEL].body["version"] == 2, base, public)
        assert production[MODEL].body["lineage"]["origin"] == "ONLINE"
        assert production[MODEL].body["parent_version"] == 1

    listed = await asyncio.to_thread(cli_with_keys, base, keys, "models", "list")
    assert listed.returncode == 0, listed.stderr
    assert MODEL in listed.stdout and "v2" in listed.stdout
    shown = await asyncio.to_thread(
        cli_with_keys, base, keys, "models", "show", MODEL, "--version", "1"
    )
    summary = json.loads(shown.stdout)
    assert summary["signature"] == "verified" and summary["encrypted"] is True
    assert summary["task"] == "regression" and summary["features"] == names
    reproduced = await asyncio.to_thread(
        cli_with_keys, base, keys, "models", "reproduce", MODEL, "1"
    )
    assert reproduced.returncode == 0, reproduced.stdout + reproduced.stderr
    assert "MATCH (bit for bit)" in reproduced.stdout


async def _wait(condition, settings, public, timeout_s=60.0):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        production = await load_production(settings, public)
        if production and condition(production):
            return production
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"registry never satisfied the condition: {production}")
        await asyncio.sleep(0.3)
