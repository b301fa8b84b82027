"""10,000 hostile messages per input topic through the running services on the real broker:
no service crashes, and every message is processed or dead-lettered (count in = out)."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import numpy as np
from aiokafka import AIOKafkaProducer

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
from tests.support.scored import scored_records

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
        answered, dead = await until_accounted(base, N)
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
        # still serving: a well-formed scored row and label join as usual
        codec = default_codec()
        producer = AIOKafkaProducer(bootstrap_servers=base.bootstrap)
        await producer.start()
        try:
            row = np.ones((1, 30))
            names = body["feature_names"]
            proba = np.array([[0.2, 0.8]])
            for partition, value in scored_records(
                BC, 1, ["ok-1"], names, row, proba, ["0", "1"], 0
            ):
                await producer.send_and_wait(
                    base.topic("monitor-scored"), value, partition=partition
                )
        finally:
            await producer.stop()
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


async def test_hostile_records_on_the_column_paths_through_a_predictor_process(  # type: ignore[no-untyped-def]
    topics, keys, tmp_path
):
    """The two forms read straight into columns, broken on purpose: requests for a
    categorical graph with their categories in the model's order, and raw pixels of an
    image model's exact size, then every single-byte change, truncation, a huge or empty
    value, an unknown key, a wrong byte count, datatype or shape, and null and empty
    records. The running predictor answers or dead-letters each one, once, with a reason,
    and exits cleanly."""
    import random

    import numpy as np

    from modelstream.contracts import tensors
    from modelstream.contracts.client import RequestEncoder
    from modelstream.registry.onnx_model import describe as describe_graph
    from modelstream.registry.onnx_model import onnx_candidate
    from modelstream.registry.tensor_model import describe, parse_spec, tensor_candidate
    from tests.support import onnx_models
    from tests.support.tensor_models import image_graph, spec

    base = topics
    bundle = onnx_models.pipeline_model()
    await publish(base, keys, onnx_candidate("shop", describe_graph(bundle.graph)), 1)
    image = tensor_candidate("img", describe(image_graph()[0], parse_spec(spec())), created_by="t")
    await publish(base, keys, image, 1)
    codec = default_codec()
    encoder = RequestEncoder(categorical=["centre"])
    rng = random.Random(5)
    pixels = np.random.default_rng(5).integers(0, 256, (8, 8, 3), dtype=np.uint8)

    def shop(rid: str, **categories: str) -> bytes:
        return encoder.encode(rid, "shop", bundle.X[0], packed=True, categories=categories)

    def img(rid: str, *named: dict) -> bytes:  # type: ignore[type-arg]
        return codec.encode(
            PredictionRequest, {"request_id": rid, "model": "img", "tensors": list(named)}
        )

    good = [shop("s", centre="north"), img("i", tensors.from_array("image", pixels))]
    values: list[bytes | None] = [None, b"", None]
    for template in good:
        for _ in range(1500):  # one byte changed anywhere, or the record cut short
            at = rng.randrange(len(template))
            if rng.random() < 0.15:
                values.append(template[:at])
            else:
                values.append(template[:at] + bytes([rng.randrange(256)]) + template[at + 1 :])
    raw = tensors.from_array("image", pixels)
    named = {
        "huge": shop("huge", centre="n" * 1_500_000),
        "empty": shop("empty", centre=""),
        "unknown": shop("unknown", centre="north", colour="red"),
        "none": shop("none"),
        "short": img("short", {**raw, "data": raw["data"][:-1]}),
        "long": img("long", {**raw, "data": raw["data"] + b"\0"}),
        "fp32": img("fp32", tensors.from_array("image", pixels.astype(np.float32))),
        "giant": img("giant", {**raw, "shape": [2**31 - 1, 8, 3]}),
        "negative": img("negative", {**raw, "shape": [-8, 8, 3]}),
        "deep": img("deep", {**raw, "shape": [1] * 9 + [8, 8, 3]}),
        "two": img("two", raw, tensors.from_array("image", pixels)),
        "batch": img("batch", tensors.from_array("image", np.stack([pixels, pixels]))),
    }
    messages = [(f"h{i}".encode(), v) for i, v in enumerate(values)]
    messages += [(name.encode(), value) for name, value in named.items()]
    n = len(messages)
    predictor = Predictor(base, keys, "hostile-columns", tmp_path)
    try:
        await produce(base, "requests", messages)  # type: ignore[arg-type]
        answered, dead = await until_accounted(base, n)
        assert predictor.process.poll() is None, predictor.output()  # still running
    finally:
        predictor.process.send_signal(signal.SIGTERM)
        code = predictor.process.wait(timeout=60)
        predictor.stop()
    reasons = Counter(dict(r.headers)["reason"].decode() for r in dead)
    print(
        f"column paths: in {n}, predicted {len(answered)}, dead-lettered {len(dead)} "
        f"{dict(reasons)}"
    )
    assert code == 0
    assert len(answered) + len(dead) == n
    positions = Counter(
        (dict(r.headers)["source.partition"], dict(r.headers)["source.offset"]) for r in dead
    )
    assert max(positions.values(), default=1) == 1
    assert all(dict(r.headers)["error"] for r in dead)
    predicted = {codec.decode(r.value, Prediction)["request_id"] for r in answered}
    refused = {r.key.decode(): dict(r.headers)["reason"].decode() for r in dead if r.key}
    for name in ("unknown", "none", "short", "long", "fp32", "giant", "negative", "deep"):
        assert name in refused, (name, sorted(predicted & set(named)))
    for name in ("two", "batch", "huge", "empty"):  # answered or refused, never lost
        assert (name in predicted) != (name in refused), name


async def test_hostile_scored_rows_through_the_monitor(topics, keys):  # type: ignore[no-untyped-def]
    """`monitor-scored` is internal, but anyone granted it can write anything: a null value,
    an empty one, 3 MB of junk, deep JSON, out-of-range counts, every truncation and many
    single-byte mutations of a real record. Each record the codec cannot read, or whose
    columns disagree, is dead-lettered once with its reason; the others are rows; the
    monitor keeps running and still joins a well-formed row with its label."""
    import dataclasses

    from modelstream.contracts.codec import default_codec
    from modelstream.contracts.limits import Limits
    from modelstream.contracts.records import MonitorScored
    from modelstream.errors import DecodeError, InvalidEventError
    from modelstream.kafka.topology import INTERNAL_MAX_BYTES
    from modelstream.services.monitor.app import MonitorApp
    from modelstream.services.monitor.join_stage import _scored_rows
    from modelstream.services.monitor.settings import MonitorSettings
    from tests.support.helpers import service_settings

    base = topics
    body = trained_body(BC)
    await publish(base, keys, body, 1)
    codec = default_codec()
    names = body["feature_names"]
    row, proba, classes = np.ones((1, 30)), np.array([[0.2, 0.8]]), ["0", "1"]
    ((partition, valid),) = scored_records(BC, 1, ["a"], names, row, proba, classes, 0)
    record = codec.decode(valid, MonitorScored)
    hostile: list[bytes | None] = [
        None,
        b"",
        b"\xc3\x01" + b"\xff" * 3_000_000,
        b"[" * 5000 + b"]" * 5000,
    ]
    for field, value in (
        ("feature_count", -1),
        ("feature_count", 2**31 - 1),
        ("version", -(2**31)),
    ):
        hostile.append(codec.encode(MonitorScored, {**record, field: value}))
    hostile += [valid[:n] for n in range(len(valid))]
    for i in range(0, len(valid), 3):
        hostile.append(valid[:i] + bytes([valid[i] ^ 0xA5]) + valid[i + 1 :])
    internal = dataclasses.replace(Limits(), max_bytes=INTERNAL_MAX_BYTES)

    def refused(value: bytes | None) -> bool:
        try:
            _scored_rows(codec.decode(value, MonitorScored, internal, checked=False))
        except (DecodeError, InvalidEventError):
            return True
        return False

    expected = sum(refused(v) for v in hostile)
    monitor = MonitorApp(service_settings(MonitorSettings, base, keys))
    producer = AIOKafkaProducer(bootstrap_servers=base.bootstrap, max_request_size=8 * 1024 * 1024)
    async with running(monitor):
        await producer.start()
        try:
            for value in hostile:
                await producer.send(
                    base.topic("monitor-scored"), value, key=b"m", partition=partition
                )
            await producer.flush()
            dead = await until_dead_lettered(base, "monitor-scored", expected)
            # still serving: a well-formed row and its label join
            for p, value in scored_records(BC, 1, ["ok-2"], names, row, proba, classes, 0):
                await producer.send(base.topic("monitor-scored"), value, partition=p)
            await producer.send(
                base.topic("feedback"),
                codec.encode(
                    Feedback,
                    {"request_id": "ok-2", "model": BC, "label": "1", "timestamp_ms": None},
                ),
                key=b"ok-2",
            )
            await producer.flush()
            deadline = asyncio.get_running_loop().time() + 60
            while monitor.joined_total(BC) < 1:
                assert asyncio.get_running_loop().time() < deadline, "monitor stopped joining"
                await asyncio.sleep(0.2)
        finally:
            await producer.stop()
    reasons = Counter(dict(r.headers)["reason"].decode() for r in dead)
    print(f"monitor-scored: in {len(hostile)}, dead-lettered {len(dead)} {dict(reasons)}")
    assert len(dead) == expected and expected > len(valid)  # each once, none lost
    offsets = Counter(dict(r.headers)["source.offset"] for r in dead)
    assert max(offsets.values()) == 1 and all(dict(r.headers)["error"] for r in dead)
    assert {"null-value", "empty-value", "invalid-scored"} <= set(reasons)


async def until_dead_lettered(settings, topic: str, n: int, timeout_s: float = 120):  # type: ignore[no-untyped-def]
    """The dead letters of records read from ``topic``, once there are ``n`` (or at the
    timeout, with as many as there are)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        dead = [
            r
            for r in await read_all(settings, "deadletter")
            if dict(r.headers)["source.topic"] == settings.topic(topic).encode()
        ]
        if len(dead) >= n or asyncio.get_running_loop().time() > deadline:
            return dead
        await asyncio.sleep(0.5)


async def until_accounted(settings, n: int, timeout_s: float = 180):  # type: ignore[no-untyped-def]
    """Predictions and dead letters once ``n`` requests are accounted for on one of the two
    (or at the timeout, with what there is)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        answered = await read_all(settings, "predictions")
        dead = await read_all(settings, "deadletter")
        if len(answered) + len(dead) >= n or asyncio.get_running_loop().time() > deadline:
            return answered, dead
        await asyncio.sleep(1)
