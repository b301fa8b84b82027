"""Signed lineage against the real broker: candidates count only when their maker signed
them. Forged candidates (unsigned, a stranger's key, another maker's key, a genuine
signature over a changed lineage) and a passed report carrying one are refused by the
validator, the publisher and the trainer alike, and change nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sklearn.datasets import load_breast_cancer

from modelstream.contracts.builders import command
from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import ModelArtifact, ValidationReport
from modelstream.kafka.control import send_command
from modelstream.registry.artifact import load_private_key, load_public_key, seal_candidate
from modelstream.registry.follower import load_production
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
    eventually,
    produce,
    produce_records,
    read_all,
    running,
    service_settings,
)

MODEL = "signed-lineage"
CODEC = default_codec()


def examples(start: int, count: int) -> list[dict[str, Any]]:
    data = load_breast_cancer()
    names = [str(n) for n in data.feature_names]
    return [
        {
            "model": MODEL,
            "features": dict(zip(names, map(float, data.data[i]), strict=True)),
            "label": str(int(data.target[i])),
            "example_id": f"e{i}",
            "timestamp_ms": None,
        }
        for i in range(start, start + count)
    ]


def forgeries(genuine: ModelArtifact, keys: Any) -> dict[str, bytes]:
    """Candidates claiming that every example of the topic, now and to come, was trained
    on (so that none counts as new), newer than the genuine one, each forged one way."""
    body: Any = dict(genuine["body"])
    body["lineage"] = {
        **body["lineage"],
        "ranges": [{**r, "end": 10**12} for r in body["lineage"]["ranges"]],
    }
    body["created_at_ms"] = int(time.time() * 1000) + 10**9
    lifted: Any = dict(seal_candidate(body, None))
    lifted["signature"], lifted["key_id"] = genuine["signature"], genuine["key_id"]
    made = {
        "unsigned": seal_candidate(body, None),
        "a stranger's key": seal_candidate(body, Ed25519PrivateKey.generate()),
        "the monitor's key": seal_candidate(body, load_private_key(keys / "monitor.key")),
        "a lifted signature": lifted,
    }
    return {how: CODEC.encode(ModelArtifact, artifact) for how, artifact in made.items()}


async def test_forged_candidates_change_nothing(topics, keys):  # type: ignore[no-untyped-def]
    base = topics
    trainer_settings = service_settings(TrainerSettings, base, keys)
    await define(base, MODEL, "BINARY", min_examples=50, retrain_every=0)
    await produce_records(base, "training", "TrainingExample", examples(0, 120), key=_model)

    # 1. A genuine candidate, signed by the trainer's key, is validated.
    async with (
        running(TrainerApp(trainer_settings)) as trainer,
        running(ValidatorApp(service_settings(ValidatorSettings, base, keys))),
    ):
        await send_command(base, command(MODEL, "TRAIN"))
        (report,) = decoded(
            await consume_until(base, "validations", lambda r: len(r) >= 1), "ValidationReport"
        )
        (genuine_record,) = await read_all(base, "candidates")
        genuine = CODEC.decode(genuine_record.value, ModelArtifact)
        assert report["candidate_digest"] == genuine["digest"] and report["passed"]
        assert genuine["key_id"] and genuine["signature"]
        # More examples, consumed and committed after that training: new to the model.
        await produce_records(base, "training", "TrainingExample", examples(120, 40), key=_model)
        await eventually(
            lambda: trainer.logic.windows[MODEL].new_since_training == 40, 30, "40 new examples"
        )
        (ranges,) = genuine["body"]["lineage"]["ranges"]
        training = TopicPartition(base.topic("training"), ranges["partition"])
        end = (await trainer.consumer.end_offsets([training]))[training]
        deadline = time.monotonic() + 30
        while await trainer.consumer.committed(training) != end:
            assert time.monotonic() < deadline, "the trainer did not commit its offsets"
            await _sleep()

        # 2. Forged candidates: each dead-lettered by the validator with its reason, none
        # judged (no report), whichever way it was forged.
        forged = forgeries(genuine, keys)
        await produce(base, "candidates", [(MODEL.encode(), v) for v in forged.values()])
        dead = await consume_until(
            base, "deadletter", lambda r: len(_from(r, "validator")) >= len(forged)
        )
        refused = _from(dead, "validator")
        assert {r.value for r in refused} == set(forged.values())
        assert {dict(r.headers)["reason"] for r in refused} == {b"artifact-verification"}
        errors = sorted(dict(r.headers)["error"].decode() for r in refused)
        assert sum("unsigned" in e for e in errors) == 1
        assert sum("unknown key" in e for e in errors) == 1
        assert sum("signed by the monitor's key" in e for e in errors) == 1
        assert sum("does not verify" in e for e in errors) == 1
        assert len(await read_all(base, "validations")) == 1

    # 3. A trainer starting now takes its lineage from the genuine candidate only: the 40
    # examples after it are still new (the forgeries claim they were trained on).
    async with running(TrainerApp(trainer_settings)) as restarted:
        assert restarted.lineage[MODEL] == {ranges["partition"]: (ranges["start"], ranges["end"])}
        assert restarted.last_trained_ms[MODEL] == genuine["body"]["created_at_ms"]
        await eventually(
            lambda: (
                MODEL in restarted.logic.windows
                and len(restarted.logic.windows[MODEL].examples) == 160
            ),
            30,
            "the window rebuilt from the log",
        )
        assert restarted.logic.windows[MODEL].new_since_training == 40

    # 4. The publisher publishes the genuine report; a passed report carrying a forged
    # candidate after it (as anyone who can write `validations` could write one) is
    # refused and publishes nothing.
    passed: ValidationReport = {
        **report,
        "candidate_digest": CODEC.decode(forged["a stranger's key"], ModelArtifact)["digest"],
        "artifact": CODEC.decode(forged["a stranger's key"], ModelArtifact),
    }
    public = load_public_key(keys / "modelstream.pub")
    async with running(PublisherApp(service_settings(PublisherSettings, base, keys))):
        v1 = await _published(base, public)
        assert v1.body["version"] == 1 and v1.body["lineage"] == genuine["body"]["lineage"]
        await produce(
            base, "validations", [(MODEL.encode(), CODEC.encode(ValidationReport, passed))]
        )
        dead = await consume_until(base, "deadletter", lambda r: len(_from(r, "publisher")) >= 1)
        (refusal,) = _from(dead, "publisher")
        assert dict(refusal.headers)["reason"] == b"artifact-verification"
        assert b"unknown key" in dict(refusal.headers)["error"]
        assert (await load_production(base, public))[MODEL].digest == v1.digest
        history = await read_all(base, "model-history")
        assert [r.key for r in history] == [f"{MODEL}:1".encode()]


async def _published(base: Any, public: Any) -> Any:
    deadline = time.monotonic() + 30
    while MODEL not in (production := await load_production(base, public)):
        assert time.monotonic() < deadline, "the genuine candidate was not published"
        await _sleep()
    return production[MODEL]


def _model(record: dict[str, Any]) -> str:
    return str(record["model"])


def _from(records: list[Any], service: str) -> list[Any]:
    return [r for r in records if dict(r.headers).get("service") == service.encode()]


async def _sleep() -> None:
    await asyncio.sleep(0.3)
