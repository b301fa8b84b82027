"""A hand-made corpus of hostile records on every topic a service reads, written through the
broker to a running `modelstream up` (every service a real child process).

Afterwards: no service crashed or was restarted, every hostile record is accounted for
(dead-lettered by the service that owns the topic, with a reason and its coordinates, or
processed), and valid input sent after the corpus is processed: a TRAIN command publishes a
new version, a request is answered, its label is joined."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import UnknownError

from modelstream.contracts import tensors
from modelstream.contracts.builders import command
from modelstream.contracts.codec import default_codec
from modelstream.contracts.limits import INTERNAL
from modelstream.contracts.records import (
    Feedback,
    PredictionRequest,
    TrainingExample,
    ValidationReport,
)
from modelstream.errors import ModelstreamError
from modelstream.kafka.control import send_command
from modelstream.settings import Settings
from tests.support.corpus import Hostile, distinct, mutations, tensor_hostiles
from tests.support.helpers import define, produce, produce_records, read_all, run_cli
from tests.support.http_corpus import hostile_calls
from tests.support.models import dataset
from tests.support.ports import free_base_below_ephemeral
from tests.support.processes import stop_up
from tests.support.samples import SAMPLES
from tests.support.tensor_models import image_graph, png, spec

pytestmark = pytest.mark.faults

BC = "breast-cancer"
IMAGES = "hostile-images"  # a tensor model: images decoded, so image bombs meet a decoder
CODEC = default_codec()
UP = [sys.executable, "-m", "modelstream.cli", "up"]
SERVICES = ("trainer", "validator", "publisher", "monitor", "predictor-0", "predictor-1")


def _valid(type_name: str, **changes: Any) -> dict[str, Any]:
    record = dict(SAMPLES[type_name])
    record.update(changes)
    return record


def corpus(names: list[str]) -> dict[str, tuple[str, list[Hostile]]]:
    """topic -> (service that dead-letters its records, hostile records)."""
    row = dict.fromkeys(names, 1.0)
    sample = SAMPLES["ModelArtifact"]
    artifacts = [
        sample,
        dict(sample, body=dict(sample["body"], stage="CANDIDATE", version=0)),
        dict(sample, body=dict(sample["body"], name="no-such-model"), key_id="ffffffffffffffff"),
    ]
    image_request = _valid(
        "PredictionRequest",
        request_id="h-3",
        model=IMAGES,
        features=b"",
        tensors=[tensors.from_elements("image", [png(np.zeros((8, 8, 3), np.uint8))])],
    )
    plans: dict[str, tuple[str, str, list[dict[str, Any]], list[list[str]]]] = {
        "requests": (
            "predictor",
            "PredictionRequest",
            [
                _valid("PredictionRequest", request_id="h-1", model=BC, features=[1.0] * 30),
                _valid("PredictionRequest", request_id="h-2", model="no-such-model", version=9),
                image_request,
            ],
            [["version"]],
        ),
        "training": (
            "trainer",
            "TrainingExample",
            [
                _valid("TrainingExample", model=BC, features=row, example_id="h-1"),
                _valid("TrainingExample", model="no-such-model", example_id="h-2"),
            ],
            [],
        ),
        "feedback": (
            "monitor",
            "Feedback",
            [
                _valid("Feedback", request_id="h-1", model=BC),
                _valid("Feedback", request_id="never-predicted", model=BC, label="0"),
                _valid("Feedback", request_id="h-3", model="no-such-model", timestamp_ms=None),
            ],
            [],
        ),
        "control": (
            "publisher",
            "Command",
            [
                _valid("Command", model="hostile-model"),  # DEFINE of a model nobody uses
                _valid("Command", model=BC, action="ROLLBACK", version=77, definition=None),
            ],
            [["version"], ["definition", "window_size"]],
        ),
        "candidates": (
            "validator",
            "ModelArtifact",
            artifacts,  # digests and signatures made up
            [["body", "version"]],
        ),
        "validations": (
            "publisher",
            "ValidationReport",
            [
                SAMPLES["ValidationReport"],
                _valid("ValidationReport", model="no-such-model", passed=False),
            ],
            [["folds"]],
        ),
        "models": ("publisher", "ModelArtifact", artifacts, [["body", "version"]]),
    }
    out = {}
    for seed, (topic, (owner, type_name, valid, int_fields)) in enumerate(plans.items()):
        key = f"hostile-{topic}".encode()  # not a model's key: `models` is compacted by key
        found = mutations(type_name, valid, key, seed, int_fields)
        if topic == "requests":
            found = itertools.chain(found, tensor_hostiles(key, IMAGES))
        records = distinct(found)
        assert len(records) >= 200, (topic, len(records))
        out[topic] = (owner, records)
    return out


async def _publish_image_model(base: Settings, tmp_path: Path, env: dict[str, str]) -> None:
    """A small image classifier, imported with its spec and gated on a few labelled PNGs."""
    await define(base, IMAGES, "MULTICLASS", classes=("a", "b", "c"))
    rng = np.random.default_rng(0)
    examples = [
        (
            IMAGES.encode(),
            CODEC.encode(
                TrainingExample,
                {
                    "model": IMAGES,
                    "label": "abc"[i % 3],
                    "tensors": [
                        tensors.from_elements(
                            "image", [png(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))]
                        )
                    ],
                },
            ),
        )
        for i in range(30)
    ]
    await produce(base, "training", examples)
    (tmp_path / "images.onnx").write_bytes(image_graph()[0])
    (tmp_path / "images.json").write_text(spec())
    imported = await run_cli(
        base,
        "models",
        "import",
        IMAGES,
        str(tmp_path / "images.onnx"),
        "--preprocess",
        str(tmp_path / "images.json"),
        **env,
    )
    assert imported.returncode == 0, imported.stderr
    await _until(lambda: _has(base, "models", IMAGES.encode()), 120, "the image model is published")


async def _write(
    settings: Settings, topic: str, records: list[Hostile]
) -> tuple[list[tuple[int, int]], int]:
    """Each record as it is (no codec on the way): where each landed, and how many the broker
    itself refused (a compacted topic takes no record without a key)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap, max_request_size=2 * 1024 * 1024
    )
    await producer.start()
    try:
        landed = []
        partitions = len(await producer.partitions_for(settings.topic(topic)))
        for i, record in enumerate(records):
            # One record per batch, written as is: `send` refuses a record with neither key
            # nor value, which other clients write without complaint.
            batch = producer.create_batch()
            batch.append(key=record.key, value=record.value, timestamp=None)
            future = await producer.send_batch(
                batch, settings.topic(topic), partition=i % partitions
            )
            landed.append(future)
        positions, refused = [], 0
        for future in landed:
            try:
                metadata = await future
            except UnknownError:  # INVALID_RECORD, which aiokafka does not know by name
                refused += 1
                continue
            positions.append((metadata.partition, metadata.offset))
        return positions, refused
    finally:
        await producer.stop()


def _spawn_up(env: dict[str, str], out: Path) -> subprocess.Popen[bytes]:
    base_port = str(free_base_below_ephemeral())
    with out.open("wb") as sink:
        return subprocess.Popen(
            [*UP, "--refresh", "0.5", "--metrics-base-port", base_port, "--gateway-port", "0"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def _frame(text: str) -> str:
    marker = "modelstream up - broker"
    return text[text.rindex(marker) :] if marker in text else text


async def _wait_frame(out: Path, up: subprocess.Popen[bytes], done: Any, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        text = await asyncio.to_thread(out.read_text, errors="replace")
        if done(_frame(text)):
            return text
        assert up.poll() is None, text[-3000:]
        assert time.monotonic() < deadline, text[-3000:]
        await asyncio.sleep(0.5)


async def _until(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, what
        await asyncio.sleep(1.0)


async def test_hostile_records_on_every_topic_stop_no_service(topics: Settings, tmp_path: Path):
    base = topics
    X, y, names, _ = dataset(BC)
    await define(base, BC, "BINARY", min_examples=50, thresholds={"min_accuracy": 0.9})
    examples = [
        {
            "model": BC,
            "features": dict(zip(names, map(float, x), strict=True)),
            "label": str(int(label)),
            "example_id": f"e{i}",
            "timestamp_ms": None,
        }
        for i, (x, label) in enumerate(zip(X[:300], y[:300], strict=True))
    ]
    await produce_records(base, "training", "TrainingExample", examples, key=lambda r: r["model"])
    await send_command(base, command(BC, "TRAIN"))

    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSTREAM_")}
    env.update(
        MODELSTREAM_BOOTSTRAP_SERVERS=base.bootstrap,
        MODELSTREAM_TOPIC_PREFIX=base.topic_prefix,
        MODELSTREAM_STATE_DIR=str(tmp_path / "state"),
    )
    out = tmp_path / "up.out"
    up = _spawn_up(env, out)
    try:
        await _wait_frame(out, up, lambda f: re.search(r"production\s+breast-cancer v1", f), 180)
        await _publish_image_model(
            base, tmp_path, {"MODELSTREAM_STATE_DIR": str(tmp_path / "state")}
        )

        hostile = corpus(names)
        sent: dict[str, list[tuple[int, int]]] = {}
        refused: dict[str, int] = {}
        for topic, (_, records) in hostile.items():
            sent[topic], refused[topic] = await _write(base, topic, records)

        # Valid input after the corpus is still processed.
        request = CODEC.encode(
            PredictionRequest,
            {
                "request_id": "probe-1",
                "model": BC,
                "features": [float(v) for v in X[0]],
                "version": None,
                "sent_at_ms": None,
            },
        )
        await produce(base, "requests", [(b"probe-1", request)])
        await _until(
            lambda: _has(base, "predictions", b"probe-1"), 120, "the probe request is answered"
        )
        label = {"request_id": "probe-1", "model": BC, "label": str(int(y[0])), "timestamp_ms": 1}
        await produce(base, "feedback", [(b"probe-1", CODEC.encode(Feedback, label))])
        await send_command(base, command(BC, "TRAIN"))
        # The window now holds the corpus's valid mutations too (features all 1.0, any
        # label), interleaved with the real rows in whatever order the partitions were read:
        # the gate may pass or refuse the retrained model. Either is the pipeline working;
        # a verdict that never comes is not.
        verdict = await _until(
            lambda: _second_verdict(base), 240, "the retrained candidate gets a verdict"
        )
        if verdict["passed"]:
            await _wait_frame(
                out, up, lambda f: re.search(r"production\s+breast-cancer v[2-9]", f), 120
            )
        else:
            print(f"\nretrained on the corpus's valid rows, refused: {verdict['reasons']}")
            assert all(GATE_REASON.search(r) for r in verdict["reasons"]), verdict["reasons"]
        await _until(
            lambda: _joined(base, "probe-1"), 120, "the probe's label is joined (a training row)"
        )

        # Every hostile record: dead-lettered by its topic's owner, or processed.
        async def dead_letters() -> dict[str, dict[tuple[int, int], str]]:
            found: dict[str, dict[tuple[int, int], str]] = defaultdict(dict)
            for record in await read_all(base, "deadletter"):
                headers = {k: v.decode() for k, v in record.headers}
                topic = headers["source.topic"].removeprefix(base.topic_prefix)
                position = (int(headers["source.partition"]), int(headers["source.offset"]))
                found[topic][position] = f"{headers['service']}:{headers['reason']}"
            return found

        async def settled() -> dict[str, dict[tuple[int, int], str]] | None:
            before = await dead_letters()
            await asyncio.sleep(5)
            after = await dead_letters()
            return after if after == before else None

        found = await _until(settled, 180, "the dead letters settle")
        committed = await _committed(base)
        table = []
        for topic, (owner, _) in hostile.items():
            positions = set(sent[topic])
            mine = {p: who for p, who in found.get(topic, {}).items() if p in positions}
            assert all(who.startswith(owner + ":") for who in mine.values()), (topic, mine)
            reasons = Counter(who.split(":", 1)[1] for who in mine.values())
            # Where the owner commits offsets in a group, it has committed past every record.
            ends: dict[int, int] = {}
            for partition, offset in positions:
                ends[partition] = max(ends.get(partition, -1), offset + 1)
            groups = committed.get(topic, {})
            behind = {
                (group, p): (offsets.get(p), end)
                for group, offsets in groups.items()
                for p, end in ends.items()
                if offsets.get(p, -1) < end
            }
            assert not behind, (topic, behind)
            table.append(
                (
                    topic,
                    len(positions),
                    refused[topic],
                    dict(reasons.most_common()),
                    len(positions) - len(mine),
                )
            )
            assert mine, f"nothing on {topic} was dead-lettered"

        text = await asyncio.to_thread(out.read_text, errors="replace")
        frame = _frame(text)
        for service in SERVICES:
            assert f"{service} up" in frame and f"{service} up (" not in frame, frame
        assert "restarting" not in text, text[-3000:]
        print("\ntopic | hostile written | refused by the broker | dead-lettered | processed")
        for topic, count, by_broker, reasons, processed in table:
            print(
                f"{topic} | {count} | {by_broker} | {sum(reasons.values())} {reasons} | {processed}"
            )
        print("offsets committed past the corpus by:", {t: sorted(g) for t, g in committed.items()})
        print("crashes 0, restarts 0")

        # The live gateway: hostile paths, headers and bodies of both protocols are each a
        # 4xx with a JSON reason (or an answer), never a 500; then a valid call is answered.
        gateway_log = (tmp_path / "state" / "logs" / "gateway.log").read_text(errors="replace")
        port = int(re.findall(r"gateway on [\d.]+:(\d+) serving", gateway_log)[-1])
        calls = await _hostile_http(port, X)
        print("hostile gateway calls by status:", dict(sorted(calls.items())))
        assert sum(calls.values()) == HOSTILE_CALLS
        assert not {status for status in calls if status >= 500} - {504}, calls

        # The CLI's readers go through the same records without stopping.
        cli_env = {"MODELSTREAM_STATE_DIR": str(tmp_path / "state")}
        topics_read = [*hostile, "deadletter"]
        tails = await asyncio.gather(
            *(
                run_cli(base, "tail", topic, "--from-beginning", "--idle-exit", "2", **cli_env)
                for topic in topics_read
            )
        )
        for topic, shown in zip(topics_read, tails, strict=True):
            assert shown.returncode == 0, (topic, shown.stderr[-2000:])
            lines = shown.stdout.count("\n")
            assert lines >= len(sent.get(topic, [])), (topic, lines)
        for args in (["status"], ["models", "list"], ["models", "show", BC]):
            result = await run_cli(base, *args, **cli_env)
            assert result.returncode == 0, (args, result.stdout[-1000:], result.stderr[-2000:])
        if verdict["passed"]:
            listed = (await run_cli(base, "models", "list", **cli_env)).stdout
            assert re.search(r"breast-cancer\s+v[2-9]", listed), listed

        up.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(up.wait, 90) == 0
    finally:
        await asyncio.to_thread(stop_up, up, tmp_path / "state")


HOSTILE_CALLS = 1_000


async def _hostile_http(port: int, X: Any) -> Counter[int]:
    """Hostile calls on the live gateway, 8 at a time; statuses counted. Every answer that
    is not a success must be JSON with a reason."""
    import aiohttp

    statuses: Counter[int] = Counter()
    base = f"http://127.0.0.1:{port}"
    calls = list(hostile_calls(BC, X[:2], random.Random(13), HOSTILE_CALLS))
    async with aiohttp.ClientSession() as http:

        async def one(method: str, path: str, headers: dict[str, str], body: bytes) -> None:
            async with http.request(method, base + path, data=body, headers=headers) as r:
                statuses[r.status] += 1
                if r.status != 200:
                    assert (await r.json())["error"], (method, path[:80], r.status)

        for at in range(0, len(calls), 8):
            await asyncio.gather(*(one(*call) for call in calls[at : at + 8]))
        async with http.post(
            f"{base}/v1/models/{BC}:predict", json={"instances": X[:2].tolist()}
        ) as r:
            assert r.status == 200, await r.text()
    return statuses


async def _committed(settings: Settings) -> dict[str, dict[str, dict[int, int]]]:
    """topic -> group -> partition -> committed offset, for the test's consumer groups."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        out: dict[str, dict[str, dict[int, int]]] = defaultdict(lambda: defaultdict(dict))
        for group, *_ in await admin.list_consumer_groups():
            if not group.startswith(settings.topic_prefix):
                continue
            for tp, meta in (await admin.list_consumer_group_offsets(group)).items():
                topic = tp.topic.removeprefix(settings.topic_prefix)
                out[topic][group][tp.partition] = meta.offset
        return out
    finally:
        await admin.close()


# what the gate says of a model it measured (thresholds, the champion comparison)
GATE_REASON = re.compile(r"is (below|above) the (minimum|maximum)|champion|production")


async def _second_verdict(settings: Settings) -> dict[str, Any] | None:
    """The validator's second report on the breast-cancer model (the first is v1's); the
    corpus writes under its own keys."""
    ours = []
    for record in await read_all(settings, "validations"):
        if record.key == BC.encode():  # the validator keys its reports by model
            ours.append(CODEC.decode(record.value, ValidationReport, INTERNAL))
    return dict(ours[1]) if len(ours) >= 2 else None


async def _has(settings: Settings, topic: str, key: bytes) -> bool:
    return any(r.key == key for r in await read_all(settings, topic))


async def _joined(settings: Settings, request_id: str) -> bool:
    wanted = f"feedback:{request_id}"
    for record in await read_all(settings, "training"):
        try:
            row = CODEC.decode_any(record.value, TrainingExample)
        except ModelstreamError:
            continue
        if row.get("example_id") == wanted:
            return True
    return False
