"""What the benchmarks share: a real broker (the configured one, else an embedded one), worker
processes, the data sets and models they score, fast preloading and a publishing shortcut."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from modelstream.cli.common import SERVICES
from modelstream.contracts.client import RequestEncoder
from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import ModelArtifact
from modelstream.kafka.clients import ARTIFACT_REQUEST_BYTES
from modelstream.kafka.topology import create_topics
from modelstream.learn.mlp import mlp_config
from modelstream.learn.procedure import train
from modelstream.learn.sgd import GDConfig
from modelstream.ops.broker import EmbeddedCluster, fetch_broker_ids
from modelstream.registry.artifact import load_private_key
from modelstream.registry.trained import trained_candidate
from modelstream.services.publisher.logic import history_key, publishable
from modelstream.settings import Settings, load

# Services in benchmark workers serve no /metrics endpoint (their default ports would clash).
for _service in SERVICES:
    os.environ.setdefault(f"MODELSTREAM_{_service.upper()}_METRICS_PORT", "0")


def _free_port_pair() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 1000 > 65535:
            continue
        with socket.socket() as s2, contextlib.suppress(OSError):
            s2.bind(("127.0.0.1", port + 1000))
            return port


@contextlib.contextmanager
def broker() -> Iterator[Settings]:
    """Settings pointing at a live broker with a fresh topic prefix (topics created)."""
    settings = load()
    owned: EmbeddedCluster | None = None
    try:
        asyncio.run(fetch_broker_ids(settings.bootstrap, timeout_s=5.0))
        bootstrap = settings.bootstrap
    except Exception:
        state = Path(tempfile.mkdtemp(prefix="modelstream-bench-"))
        owned = EmbeddedCluster(load(state_dir=state, broker_port=_free_port_pair()))
        owned.start()
        bootstrap = owned.bootstrap
    bench = load(bootstrap_servers=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:8]}.")
    asyncio.run(create_topics(bench))
    try:
        yield bench
    finally:
        if owned is not None:
            owned.stop()


def worker_command(
    script: Path, kind: str, settings: Settings, events: int, public_key: Path
) -> list[str]:
    """The command line of ``script --worker KIND`` against ``settings``' broker and prefix."""
    return [
        sys.executable,
        str(script),
        "--worker",
        kind,
        "--bootstrap",
        settings.bootstrap,
        "--prefix",
        settings.topic_prefix,
        "--events",
        str(events),
        "--public-key",
        str(public_key),
    ]


def spawn_worker(
    script: Path, kind: str, settings: Settings, events: int, public_key: Path
) -> dict[str, float]:
    """Run ``script --worker KIND`` in its own process against ``settings``' broker and topic
    prefix; its result is the JSON object on the last line it prints."""
    cmd = worker_command(script, kind, settings, events, public_key)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    # faust may put terminal control codes in front of the line
    lines = [line[line.index("{") :] for line in result.stdout.splitlines() if "{" in line]
    if result.returncode != 0 or not lines:
        raise RuntimeError(
            f"worker {kind} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        )
    return json.loads(lines[-1])  # type: ignore[no-any-return]


# -- data and models ------------------------------------------------------------------------
def dataset(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_breast_cancer, load_digits

    data = load_breast_cancer() if name == "breast-cancer" else load_digits()
    names = (
        [str(n) for n in data.feature_names]
        if name == "breast-cancer"
        else [f"pixel_{i}" for i in range(64)]
    )
    return data.data.astype(np.float64), data.target, names


def body_for(name: str, seed: int = 0, hidden: tuple[int, ...] = ()) -> dict[str, Any]:
    """A trained candidate of data set ``name``: linear, or an mlp with ``hidden`` layers."""
    X, y, names = dataset(name)
    classes = [str(c) for c in sorted(set(y.tolist()))]
    task = "BINARY" if len(classes) == 2 else "MULTICLASS"
    config = GDConfig(seed=seed, max_epochs=30)
    if hidden:
        config = mlp_config(config, hidden)
    trained = train(X, y, task, names, classes, config, (1e-3,), 2)
    return trained_candidate(name, trained, [], len(y), None, created_at_ms=1)


def request_bytes(
    name: str, n: int, *, packed: bool, prefix: str = "r", sent_at: bool = False
) -> list[tuple[bytes, bytes]]:
    X, _, names = dataset(name)
    encoder = RequestEncoder(names)
    out = []
    for i in range(n):
        row = X[i % len(X)]
        rid = f"{prefix}{i}"
        features = row if packed else dict(zip(names, row.tolist(), strict=True))
        out.append(
            (
                rid.encode(),
                encoder.encode(
                    rid,
                    name,
                    features,
                    packed=packed,
                    sent_at_ms=int(time.time() * 1000) if sent_at else None,
                ),
            )
        )
    return out


def by_position(key: bytes, index: int, partitions: int) -> int:
    """Item i to partition i mod partitions (equal positions of equally partitioned topics
    are co-partitioned)."""
    return index % partitions


def by_crc32(key: bytes, index: int, partitions: int) -> int:
    """CRC-32 of the key: the predictor's partitioner, and librdkafka's (kcat's) default."""
    return zlib.crc32(key) % partitions


def by_murmur2(key: bytes, index: int, partitions: int) -> int:
    """murmur2 of the key: the Java client's and aiokafka's default partitioner."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


async def preload(
    settings: Settings,
    items: list[tuple[bytes, bytes]],
    topic_name: str = "requests",
    partitioner: Callable[[bytes, int, int], int] = by_position,
) -> None:
    """Write records fast with batch builders, each to the partition ``partitioner`` picks."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap, linger_ms=20, max_batch_size=1024 * 1024
    )
    await producer.start()
    try:
        topic = settings.topic(topic_name)
        partitions = sorted(await producer.partitions_for(topic))
        per_partition: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in partitions}
        for i, item in enumerate(items):
            per_partition[partitions[partitioner(item[0], i, len(partitions))]].append(item)
        futures = []
        for partition, chunk in per_partition.items():
            builder = producer.create_batch()
            for key, value in chunk:
                if builder.append(key=key, value=value, timestamp=None) is None:
                    futures.append(await producer.send_batch(builder, topic, partition=partition))
                    builder = producer.create_batch()
                    builder.append(key=key, value=value, timestamp=None)
            futures.append(await producer.send_batch(builder, topic, partition=partition))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def publish(settings: Settings, keys: Path, body: dict[str, Any], version: int) -> float:
    """Sign and publish like the publisher; returns the time the registry write was acked."""
    from aiokafka import AIOKafkaProducer

    artifact = publishable(body, version, None, load_private_key(keys / "modelstream.key"), None)
    value = default_codec().encode(ModelArtifact, artifact)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap, max_request_size=ARTIFACT_REQUEST_BYTES
    )
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.topic("model-history"), key=history_key(body["name"], version), value=value
        )
        await producer.send_and_wait(
            settings.topic("models"), key=body["name"].encode(), value=value
        )
        return time.time()
    finally:
        await producer.stop()


def predictor_process(settings: Settings, keys: Path, **env: str) -> subprocess.Popen[bytes]:
    """``modelstream run predictor`` in a process of its own on ``settings``' broker and
    topics, verifying with the bench's public key (``env``: more MODELSTREAM_* variables)."""
    full = {
        **os.environ,
        "MODELSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap,
        "MODELSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "MODELSTREAM_PUBLIC_KEY_FILE": str(keys / "modelstream.pub"),
        "MODELSTREAM_LOG_LEVEL": "WARNING",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "modelstream.cli", "run", "predictor"],
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def predictions_consumer(settings: Settings) -> Any:
    """A consumer of ``predictions`` from the beginning, committed records only, polled with
    little wait (for latencies)."""
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(
        settings.topic("predictions"),
        bootstrap_servers=settings.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        fetch_max_wait_ms=5,
    )


def peak_rss_mib() -> float:
    """This process's own high-water RSS. (getrusage's ru_maxrss survives execve, so a worker
    spawned by a large parent would report the parent's size.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summarize(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per key: the median of the runs, and its min and max as keys of their own (a machine
    shared with others varies by a third from run to run)."""
    out: dict[str, float] = {}
    for key in runs[0]:
        values = [run[key] for run in runs if key in run and run[key] == run[key]]  # not NaN
        if not values:
            continue
        out[key] = round(float(np.median(values)), 3)
        if len(values) > 1 and key != "offered_rate":
            out[f"{key}_min"] = round(min(values), 3)
            out[f"{key}_max"] = round(max(values), 3)
    return out
