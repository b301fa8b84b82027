"""10,000 hostile messages per input topic through the running services on the real broker:
no service crashes, and every message is processed or dead-lettered (count in = out)."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import Feedback, Prediction, PredictionRequest
from modelstream.services.trainer.app import TrainerApp
from modelstream.services.trainer.settings import TrainerSettings
from modelstream.settings import load
from modelstream.telemetry import TRAINING_EXAMPLES
from tests.support.fuzzing import SeededFuzzer
from tests.support.helpers import define, produce, read_all, running
from tests.support.models import publish, trained_body
from tests.support.processes import Predictor

BC = "breast-cancer"
N = 10_000


async def test_fuzzed_requests_through_a_predictor_process(topics, keys, tmp_path):  # type: ignore[no-untyped-def]
    base = topics
    body = trained_body(BC)
    await publish(base, keys, body, 1)
    fuzz = SeededFuzzer(7, [BC], body["feature_names"])
    messages = [(f"z{i}".encode(), fuzz.message("PredictionRequest")) for i in range(N)]
    predictor = Predictor(base, keys, "fuzz", tmp_path)
    try:
        await produce(base, "requests", messages)
        # wait until every key is accounted for on one of the two output topics
        deadline = asyncio.get_running_loop().time() + 180
        while True:
            answered = await read_all(base, "predictions")
            dead = await read_all(base, "deadletter")
            if len(answered) + len(dead) >= N or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(1)
        assert predictor.process.poll() is None, predictor.output()  # still running
    finally:
        predictor.process.send_signal(signal.SIGTERM)
        code = predictor.process.wait(timeout=60)
        predictor.stop()
    reasons = Counter(dict(r.headers)["reason"].decode() for r in dead)
    print(f"requests: in {N}, predicted {len(answered)}, dead-lettered {len(dead)} {dict(reasons)}")
    assert code == 0
    # Each request is answered or dead-lettered, once: dead letters carry the request's key
    # and position; predictions are keyed by the request id inside them.
    assert len(answered) + len(dead) == N
    positions = Counter(
        (dict(r.headers)["source.partition"], dict(r.headers)["source.offset"]) for r in dead
    )
    assert max(positions.values(), default=1) == 1
    assert {r.key for r in dead} <= {k for k, _ in messages}
    codec = default_codec()
    assert all(codec.decode(r.value, Prediction)["request_id"].encode() == r.key for r in answered)
    assert all(dict(r.headers)["error"] for r in dead)


async def test_fuzzed_training_examples_through_the_trainer(topics, tmp_path):  # type: ignore[no-untyped-def]
    base = topics
    body = trained_body(BC)
    await define(
        base,
        BC,
        "BINARY",
        feature_names=tuple(body["feature_names"]),
        classes=("0", "1"),
        window_size=N,
    )
    fuzz = SeededFuzzer(11, [BC], body["feature_names"])
    await produce(
        base, "training", [(BC.encode(), fuzz.message("TrainingExample")) for _ in range(N)]
    )
    before = TRAINING_EXAMPLES.labels(BC)._value.get()
    settings = load(
        TrainerSettings, bootstrap_servers=base.bootstrap, topic_prefix=base.topic_prefix
    )
    async with running(TrainerApp(settings)) as trainer:
        deadline = asyncio.get_running_loop().time() + 120
        while True:
            dead = await read_all(base, "deadletter")
            accepted = TRAINING_EXAMPLES.labels(BC)._value.get() - before
            if accepted + len(dead) >= N or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.5)
        window = len(trainer.logic.windows[BC].examples)
    print(f"training: in {N}, accepted {accepted:.0f}, dead-lettered {len(dead)}")
    assert accepted + len(dead) == N and window == accepted


async def test_fuzzed_feedback_through_the_monitor(topics, keys):  # type: ignore[no-untyped-def]
    from modelstream.contracts.codec import default_codec
    from modelstream.services.monitor.app import MonitorApp
    from modelstream.services.monitor.settings import MonitorSettings

    base = topics
    body = trained_body(BC)
    await publish(base, keys, body, 1)
    fuzz = SeededFuzzer(13, [BC], body["feature_names"])
    # Half keyed by their request id ("x"), half by another key: the join reads the request
    # id from the value, so both are joined (or refused) alike.
    messages = [(b"x" if i % 2 else f"z{i}".encode(), fuzz.message("Feedback")) for i in range(N)]
    await produce(base, "feedback", messages)
    settings = load(
        MonitorSettings,
        bootstrap_servers=base.bootstrap,
        topic_prefix=base.topic_prefix,
        state_dir=base.state_dir,
        public_key_file=keys / "modelstream.pub",
        join_ttl_s=3.0,  # no hostile label has a prediction: each expires, dead-lettered
    )
    monitor = MonitorApp(settings)
    async with running(monitor):
        deadline = asyncio.get_running_loop().time() + 180
        while True:
            dead = [
                r
                for r in await read_all(base, "deadletter")
                if dict(r.headers)["service"] == b"monitor"
            ]
            if len(dead) >= N or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.5)
        # still serving: a well-formed request, prediction and label join as usual
        codec = default_codec()
        await produce(
            base,
            "requests",
            [
                (
                    b"ok-1",
                    codec.encode(
                        PredictionRequest,
                        {
                            "request_id": "ok-1",
                            "model": BC,
                            "features": [1.0] * 30,
                            "version": None,
                            "sent_at_ms": None,
                        },
                    ),
                )
            ],
        )
        await produce(
            base,
            "predictions",
            [
                (
                    b"ok-1",
                    codec.encode(
                        Prediction,
                        {
                            "request_id": "ok-1",
                            "model": BC,
                            "version": 1,
                            "digest_prefix": "",
                            "prediction": "1",
                            "scores": {"0": 0.2, "1": 0.8},
                            "route": "production",
                            "requested_at_ms": 0,
                            "predicted_at_ms": 0,
                        },
                    ),
                )
            ],
        )
        await produce(
            base,
            "feedback",
            [
                (
                    b"ok-1",
                    codec.encode(
                        Feedback,
                        {"request_id": "ok-1", "model": BC, "label": "1", "timestamp_ms": None},
                    ),
                )
            ],
        )
        while monitor.joined_total(BC) < 1:
            assert asyncio.get_running_loop().time() < deadline + 30, "monitor stopped joining"
            await asyncio.sleep(0.2)
    reasons = Counter(dict(r.headers)["reason"].decode() for r in dead)
    print(f"feedback: in {N}, dead-lettered {len(dead)} {dict(reasons)}")
    # Unreadable feedback is refused at once; readable feedback never met a prediction (or
    # repeats a request id whose first label holds): every record is accounted for once.
    assert len(dead) == N
    assert {"undecodable", "no-prediction", "duplicate-feedback"} <= set(reasons)
    sources = Counter(
        (dict(r.headers)["source.partition"], dict(r.headers)["source.offset"]) for r in dead
    )
    assert max(sources.values()) == 1
    assert all(dict(r.headers)["error"] for r in dead)
