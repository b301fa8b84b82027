"""define -> examples -> candidate -> validation -> signed artifact -> rollback, on Kafka."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from modelstream.cli.models import audit_trail
from modelstream.contracts.builders import command
from modelstream.kafka.control import send_command
from modelstream.learn.linear import LinearModel
from modelstream.registry.artifact import load_public_key
from modelstream.registry.follower import load_history, load_production
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

MODEL = "breast-cancer"


def examples():  # type: ignore[no-untyped-def]
    data = load_breast_cancer()
    names = [str(n) for n in data.feature_names]
    return [
        {
            "model": MODEL,
            "features": dict(zip(names, map(float, row), strict=True)),
            "label": str(int(label)),
            "example_id": f"e{i}",
            "timestamp_ms": None,
        }
        for i, (row, label) in enumerate(zip(data.data, data.target, strict=True))
    ]


def reports_for(records, n):  # type: ignore[no-untyped-def]
    return len(records) >= n


async def test_model_lifecycle_on_kafka(topics, keys):  # type: ignore[no-untyped-def]
    base = topics
    trainer_settings = service_settings(TrainerSettings, base, keys)
    validator_settings = service_settings(ValidatorSettings, base, keys)
    publisher_settings = service_settings(PublisherSettings, base, keys)
    public = load_public_key(keys / "modelstream.pub")
    data = examples()

    await define(base, MODEL, "BINARY", min_examples=50, thresholds={"min_accuracy": 0.9})
    await produce_records(base, "training", "TrainingExample", data, key=lambda r: r["model"])
    poison = [
        b'{"model": "no-such-model", "features": {"a": 1}, "label": "1"}',
        b'{"model": "breast-cancer", "features": {"mean radius": 1}, "label": "1"}',
        b'{"model": "breast-cancer", "features": [1, 2], "label": "1", "x": 3}',
        b"\x00\x01garbage",
    ]
    nan_example = dict(
        data[0],
        features={
            k: (math.nan if i == 0 else v) for i, (k, v) in enumerate(data[0]["features"].items())
        },
    )
    await produce(base, "training", [(MODEL.encode(), p) for p in poison])
    await produce_records(
        base, "training", "TrainingExample", [nan_example], key=lambda r: r["model"]
    )

    async with (
        running(TrainerApp(trainer_settings)) as trainer,
        running(ValidatorApp(validator_settings)),
        running(PublisherApp(publisher_settings)),
    ):
        dead = await consume_until(base, "deadletter", lambda r: len(r) >= 5)
        reasons = sorted(dict(r.headers)["reason"].decode() for r in dead)
        assert reasons == [
            "invalid-json",
            "missing-features",
            "non-finite",
            "undecodable",
            "unknown-model",
        ]
        assert all(dict(r.headers)["service"] == b"trainer" for r in dead)

        # 1. train on an explicit command -> candidate -> validated -> signed v1
        await send_command(base, command(MODEL, "TRAIN"))
        reports = decoded(
            await consume_until(base, "validations", lambda r: reports_for(r, 1)),
            "ValidationReport",
        )
        first = reports[0]
        assert first["passed"], first["reasons"]
        assert first["method"] == "cross-validation" and first["folds"] == 5
        assert first["examples"] == len(data)
        assert first["metrics"]["accuracy_mean"] > 0.95
        assert 0.0 < first["metrics"]["roc_auc_mean"] <= 1.0
        assert first["champion_version"] is None

        production = await _wait_version(base, public, 1)
        v1 = production[MODEL]
        assert v1.signed and v1.body["stage"] == "PRODUCTION"
        assert v1.body["lineage"]["example_count"] == len(data)
        assert v1.body["lineage"]["ranges"][0]["topic"] == base.topic("training")
        grid = v1.body["training"]["l2_grid"]  # the search may leave it by one step (x10)
        assert min(grid) / 10 * (1 - 1e-9) <= v1.body["training"]["l2"] <= max(grid) * 10
        assert len(v1.body["training"]["l2_grid_scores"]) == len(v1.body["training"]["l2_grid"])
        assert v1.body["feature_names"] == list(data[0]["features"])
        assert v1.body["classes"] == ["0", "1"]
        model = LinearModel.from_body(v1.body)
        X = np.array([list(e["features"].values()) for e in data])
        y = np.array([int(e["label"]) for e in data])
        assert (model.proba(X).argmax(axis=1) == y).mean() > 0.95

        # 2. an impossible threshold: the candidate is rejected and never reaches `models`
        await define(
            base,
            MODEL,
            "BINARY",
            feature_names=tuple(v1.body["feature_names"]),
            classes=("0", "1"),
            min_examples=50,
            thresholds={"min_accuracy": 0.9999},
        )
        await send_command(base, command(MODEL, "TRAIN"))
        reports = decoded(
            await consume_until(base, "validations", lambda r: reports_for(r, 2)),
            "ValidationReport",
        )
        rejected = reports[1]
        assert not rejected["passed"] and rejected["artifact"] is None
        assert any("below the minimum 0.9999" in reason for reason in rejected["reasons"])
        assert rejected["champion_version"] == 1
        assert "accuracy_mean" in rejected["champion_metrics"]
        assert (await load_production(base, public))[MODEL].body["version"] == 1

        # 3. a passing retrain becomes v2 with v1 as parent
        await define(
            base,
            MODEL,
            "BINARY",
            feature_names=tuple(v1.body["feature_names"]),
            classes=("0", "1"),
            min_examples=50,
            thresholds={"min_accuracy": 0.9},
            seed=1,
        )
        await send_command(base, command(MODEL, "TRAIN"))
        v2 = (await _wait_version(base, public, 2))[MODEL]
        assert v2.body["parent_version"] == 1 and v2.digest != v1.digest

        # 4. rollback re-publishes v1's exact signed artifact
        await send_command(base, command(MODEL, "ROLLBACK", version=1, reason="test rollback"))
        rolled = (await _wait_version(base, public, 1))[MODEL]
        assert rolled.digest == v1.digest and rolled.record == v1.record
        history = await load_history(base)
        assert sorted(v for n, v in history if n == MODEL) == [1, 2]
        audit = decoded(
            await consume_until(base, "audit", lambda r: any(b"rolled_back" in x.value for x in r)),
            "AuditEvent",
        )
        events = [(a["event"], a["version"]) for a in audit]
        for expected in [
            ("trained", None),
            ("validated", None),
            ("published", 1),
            ("rejected", None),
            ("published", 2),
            ("rolled_back", 1),
        ]:
            assert expected in events, (expected, events)
        rollback = next(a for a in audit if a["event"] == "rolled_back")
        assert rollback["reason"] == "test rollback" and rollback["details"]["from_version"] == "2"

        window = trainer.logic.windows[MODEL]
        assert len(window.examples) == len(data)

    # 5. a restarted trainer rebuilds its window from the log (committed offsets + lineage)
    restarted = TrainerApp(trainer_settings)
    async with running(restarted):
        await consume_until(base, "training", lambda r: True)  # let the group assignment land
        await _eventually(lambda: len(restarted.logic.windows[MODEL].examples) == len(data))
        assert restarted.logic.windows[MODEL].new_since_training == 0

    # 6. the audit log alone tells the model's whole story
    trail = await audit_trail(base, MODEL)
    story = [(e["event"], e["version"], e["actor"]) for e in trail]
    assert story[:3] == [
        ("trained", None, "trainer"),
        ("validated", None, "validator"),
        ("published", 1, "publisher"),
    ]
    assert ("rolled_back", 1, "cli") in story
    trained_v1 = trail[0]
    first_range = v1.body["lineage"]["ranges"][0]
    assert trained_v1["details"]["ranges"] == (
        f"{first_range['partition']}:{first_range['start']}-{first_range['end']}"
    )
    assert (
        trained_v1["digest"]
        == next(e for e in trail if e["event"] == "published")["details"]["candidate_digest"]
    )
    validated = trail[1]
    assert float(validated["details"]["accuracy_mean"]) == pytest.approx(
        first["metrics"]["accuracy_mean"], rel=1e-5
    )
    published_v1 = next(e for e in trail if e["event"] == "published" and e["version"] == 1)
    assert published_v1["digest"] == v1.digest
    assert published_v1["details"]["key_id"] == v1.record["key_id"]

    # 7. the published v1 is reproducible bit for bit from the log
    env = {
        **os.environ,
        "MODELSTREAM_BOOTSTRAP_SERVERS": base.bootstrap,
        "MODELSTREAM_TOPIC_PREFIX": base.topic_prefix,
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "modelstream.cli", "models", "reproduce", MODEL, "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MATCH (bit for bit)" in result.stdout


async def _wait_version(settings, public, version, timeout_s=60.0):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        production = await load_production(settings, public)
        return MODEL in production and production[MODEL].body["version"] == version

    await _eventually_async(check, timeout_s)
    return await load_production(settings, public)


async def _eventually_async(check, timeout_s=60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.3)


async def _eventually(check, timeout_s=60.0):  # type: ignore[no-untyped-def]
    async def wrapped() -> bool:
        return bool(check())

    await _eventually_async(wrapped, timeout_s)
