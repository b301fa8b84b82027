"""A 3-node KRaft cluster on loopback, and a broker killed under load (pytest -m faults)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.errors import KafkaError

from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import ModelArtifact, ValidationReport
from modelstream.kafka.clients import make_producer
from modelstream.kafka.topology import create_topics, describe_topics
from modelstream.ops.broker import EmbeddedCluster, fetch_broker_ids
from modelstream.registry.artifact import generate_keys, load_private_key, load_public_key
from modelstream.registry.follower import load_production
from modelstream.registry.onnx_model import describe, onnx_candidate
from modelstream.settings import load
from tests.support import onnx_models
from tests.support.helpers import eventually
from tests.support.models import BC, publish, publishable, requests_for, trained_body
from tests.support.ports import free_port_block

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):  # type: ignore[no-untyped-def]
    state = tmp_path_factory.mktemp("cluster")
    settings = load(state_dir=state, broker_port=free_port_block(3))
    nodes = EmbeddedCluster(settings, node_count=3)
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()


def test_three_node_cluster_has_replicated_topics(cluster):  # type: ignore[no-untyped-def]
    assert len(cluster.running_nodes()) == 3
    assert asyncio.run(fetch_broker_ids(cluster.bootstrap)) == [0, 1, 2]
    settings = load(bootstrap_servers=cluster.bootstrap, topic_prefix="rf3.", replication_factor=3)
    asyncio.run(create_topics(settings))
    described = asyncio.run(describe_topics(settings))
    for name, info in described.items():
        assert info.replication_factor == 3, name
        assert info.config["min.insync.replicas"] == "2", name
    status = subprocess.run(
        [sys.executable, "-m", "modelstream.cli", "broker", "status"],
        env={
            **os.environ,
            "MODELSTREAM_STATE_DIR": str(cluster.root),
            "MODELSTREAM_BROKER_PORT": str(cluster.nodes[0].port),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0 and "3 broker(s) registered" in status.stdout, status.stdout


async def _group_coordinator(bootstrap: str, group: str) -> int:
    """The broker coordinating ``group`` (answered once __consumer_offsets has leaders)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                return int(await client.coordinator_lookup(CoordinationType.GROUP, group))
            except KafkaError:
                assert time.monotonic() < deadline, f"no coordinator for {group}"
                await asyncio.sleep(0.5)
    finally:
        await client.close()


async def test_sigkill_one_broker_mid_stream_loses_and_duplicates_nothing(  # type: ignore[no-untyped-def]
    cluster, tmp_path
):
    settings = load(
        bootstrap_servers=cluster.bootstrap,
        topic_prefix=f"kill{uuid.uuid4().hex[:6]}.",
        replication_factor=3,
    )
    await create_topics(settings)
    generate_keys(tmp_path / "keys")
    await publish(settings, tmp_path / "keys", trained_body(BC), 1)
    env = {
        **os.environ,
        "MODELSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap,
        "MODELSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "MODELSTREAM_PUBLIC_KEY_FILE": str(tmp_path / "keys" / "modelstream.pub"),
    }
    log = (tmp_path / "predictor.log").open("wb")
    predictor = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "modelstream.cli", "run", "predictor"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    total, rate, chunk = 50_000, 5_000, 500
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    killed_at = restarted_at = 0.0
    # the broker coordinating the predictor's group: every transaction commits its offsets
    # through it (and it leads some partitions)
    victim = await _group_coordinator(settings.bootstrap, settings.group("predictor"))
    try:
        start = time.monotonic()
        for i in range(0, total, chunk):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            futures = [
                await producer.send(settings.topic("requests"), key=k, value=v)
                for k, v in requests_for(BC, chunk, i, packed=True, prefix="f")
            ]
            await asyncio.gather(*futures)
            if i == total // 4:
                cluster.kill_node(victim, signal.SIGKILL)
                killed_at = time.monotonic()
            if i == (3 * total) // 4:
                await asyncio.to_thread(cluster.start)  # restart the killed node
                restarted_at = time.monotonic()
        sent_s = time.monotonic() - start
        counts, recovered = await _count_predictions(settings, total, timeout_s=180)
    finally:
        await producer.stop()
        predictor.send_signal(signal.SIGTERM)
        predictor.wait(timeout=60)
        log.close()
    lost = total - len(counts)
    duplicated = sum(c - 1 for c in counts.values() if c > 1)
    print(
        f"broker SIGKILL: sent {total} in {sent_s:.1f}s, answered {len(counts)}, lost {lost}, "
        f"duplicated {duplicated}, node {victim} (the group coordinator) restarted after "
        f"{restarted_at - killed_at:.1f}s, "
        f"all answered {recovered - killed_at:.1f}s after the kill"
    )
    predictor_log = await asyncio.to_thread((tmp_path / "predictor.log").read_text)
    assert lost == 0 and duplicated == 0, predictor_log[-3000:]
    assert len(cluster.running_nodes()) == 3


async def _count_predictions(settings, total, timeout_s):  # type: ignore[no-untyped-def]
    consumer = AIOKafkaConsumer(
        settings.topic("predictions"),
        bootstrap_servers=settings.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    counts: Counter[bytes] = Counter()
    deadline = time.monotonic() + timeout_s
    recovered = 0.0
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                counts.update(r.key for r in records)
            if len(counts) >= total and not recovered:
                recovered = time.monotonic()
                deadline = min(deadline, recovered + 3)  # duplicates would arrive right behind
    finally:
        await consumer.stop()
    return counts, recovered


class Load:
    """Sends uniquely-identified requests at a steady rate, running a hook at fractions."""

    def __init__(self, settings, total: int = 50_000, rate: int = 5_000) -> None:  # type: ignore[no-untyped-def]
        self.settings, self.total, self.rate = settings, total, rate

    async def run(self, hooks: dict[float, object]) -> float:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
        )
        await producer.start()
        chunk = 500
        pending = sorted(hooks.items())
        try:
            start = time.monotonic()
            for i in range(0, self.total, chunk):
                await asyncio.sleep(max(0.0, start + i / self.rate - time.monotonic()))
                futures = [
                    await producer.send(self.settings.topic("requests"), key=k, value=v)
                    for k, v in requests_for(BC, chunk, i, packed=True, prefix="z")
                ]
                await asyncio.gather(*futures)
                while pending and i >= pending[0][0] * self.total:
                    hook = pending.pop(0)[1]
                    result = hook()  # type: ignore[operator]
                    if asyncio.iscoroutine(result):
                        await result
            return time.monotonic() - start
        finally:
            await producer.stop()


def start_predictor(settings, keys, log_path, instance):  # type: ignore[no-untyped-def]
    env = {
        **os.environ,
        "MODELSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap,
        "MODELSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "MODELSTREAM_PUBLIC_KEY_FILE": str(keys / "modelstream.pub"),
        "MODELSTREAM_PREDICTOR_SESSION_TIMEOUT_S": "6",
        "MODELSTREAM_INSTANCE_ID": instance,
    }
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "modelstream.cli", "run", "predictor"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return process, log


async def _fresh_cluster_settings(cluster, tmp_path, name):  # type: ignore[no-untyped-def]
    settings = load(
        bootstrap_servers=cluster.bootstrap,
        topic_prefix=f"{name}{uuid.uuid4().hex[:6]}.",
        replication_factor=3,
    )
    await create_topics(settings)
    generate_keys(tmp_path / "keys")
    await publish(settings, tmp_path / "keys", trained_body(BC), 1)
    return settings


async def _wait_members(settings, processes, seconds=8.0):  # type: ignore[no-untyped-def]
    # Let every copy join the group before the load starts, so the faults hit owners.
    await asyncio.sleep(seconds)
    for process, _ in processes:
        assert process.poll() is None


@pytest.mark.parametrize("fault", ["sigkill-one-of-three", "sigstop-zombie"])
async def test_predictor_faults_lose_and_duplicate_nothing(cluster, tmp_path, fault):  # type: ignore[no-untyped-def]
    settings = await _fresh_cluster_settings(cluster, tmp_path, "p")
    copies = 3 if fault == "sigkill-one-of-three" else 2
    processes = [
        start_predictor(settings, tmp_path / "keys", tmp_path / f"p{i}.log", str(i))
        for i in range(copies)
    ]
    victim = processes[-1][0]
    events: dict[str, float] = {}

    def kill() -> None:
        victim.send_signal(signal.SIGKILL)
        events["fault"] = time.monotonic()

    def pause() -> None:
        victim.send_signal(signal.SIGSTOP)  # longer than the 6 s session timeout
        events["fault"] = time.monotonic()

    def resume() -> None:
        victim.send_signal(signal.SIGCONT)  # a zombie: its late transactions must be fenced
        events["resumed"] = time.monotonic()

    hooks = {0.25: kill} if fault == "sigkill-one-of-three" else {0.25: pause, 0.6: resume}
    try:
        await _wait_members(settings, processes)
        sent_s = await Load(settings).run(hooks)
        counts, recovered = await _count_predictions(settings, 50_000, timeout_s=180)
    finally:
        for process, log in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
            log.close()
    lost = 50_000 - len(counts)
    duplicated = sum(c - 1 for c in counts.values() if c > 1)
    print(
        f"{fault}: sent 50000 in {sent_s:.1f}s, answered {len(counts)}, lost {lost}, "
        f"duplicated {duplicated}, all answered {recovered - events['fault']:.1f}s after "
        f"the fault"
    )
    assert lost == 0 and duplicated == 0


async def test_publisher_restart_mid_publishing_leaves_no_gap(cluster, tmp_path):  # type: ignore[no-untyped-def]
    from modelstream.contracts.codec import default_codec
    from modelstream.registry.artifact import load_private_key, load_public_key, seal_candidate
    from modelstream.registry.follower import load_history, load_production
    from tests.support.helpers import produce

    settings = await _fresh_cluster_settings(cluster, tmp_path, "pub")
    keys = tmp_path / "keys"
    codec = default_codec()
    queued = 20
    reports = []
    for seed in range(queued):
        candidate = seal_candidate(
            dict(trained_body(BC, seed=seed + 10)), load_private_key(keys / "trainer.key")
        )
        reports.append(
            (
                BC.encode(),
                codec.encode(
                    ValidationReport,
                    {
                        "model": BC,
                        "candidate_digest": candidate["digest"],
                        "passed": True,
                        "method": "cross-validation",
                        "metrics": {"accuracy_mean": 0.97},
                        "champion_version": None,
                        "champion_metrics": {},
                        "reasons": [],
                        "folds": 5,
                        "examples": 569,
                        "artifact": candidate,
                        "validated_at_ms": 0,
                        "validator": "test",
                    },
                ),
            )
        )
    await produce(settings, "validations", reports)
    env = {
        **os.environ,
        "MODELSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap,
        "MODELSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "MODELSTREAM_PRIVATE_KEY_FILE": str(keys / "modelstream.key"),
        "MODELSTREAM_PUBLIC_KEY_FILE": str(keys / "modelstream.pub"),
    }
    public = load_public_key(keys / "modelstream.pub")

    def run_publisher():  # type: ignore[no-untyped-def]
        return subprocess.Popen(
            [sys.executable, "-m", "modelstream.cli", "run", "publisher"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    first = run_publisher()
    try:
        deadline = time.monotonic() + 60
        while len(await load_history(settings)) < 6:  # v1 (seeded) + some published
            assert time.monotonic() < deadline, "the publisher published nothing"
            await asyncio.sleep(0.05)
        first.send_signal(signal.SIGKILL)  # in the middle of the queue
        first.wait(timeout=30)
        published_before = len(await load_history(settings)) - 1
        second = run_publisher()
        try:
            deadline = time.monotonic() + 120
            while len(await load_history(settings)) < queued + 1:
                assert time.monotonic() < deadline, "the restarted publisher did not finish"
                await asyncio.sleep(0.2)
            await asyncio.sleep(2)  # anything published twice would show up now
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    history = await load_history(settings)
    versions = sorted(v for n, v in history if n == BC)
    production = await load_production(settings, public)
    print(
        f"publisher SIGKILL after {published_before} of {queued} versions: history "
        f"v{versions[0]}..v{versions[-1]} ({len(versions)} versions), production "
        f"v{production[BC].body['version']}"
    )
    assert versions == list(range(1, queued + 2))  # no gap, no duplicate
    assert production[BC].signed and production[BC].body["version"] == queued + 1
    assert 0 < published_before < queued


async def test_monitor_kill_9_on_the_cluster_loses_no_label(cluster, tmp_path):  # type: ignore[no-untyped-def]
    from tests.integration.test_monitor import monitor_restart_scenario

    settings = await _fresh_cluster_settings(cluster, tmp_path, "mon")
    counts = await monitor_restart_scenario(
        settings, tmp_path / "keys", tmp_path, n=20_000, per_s=5000
    )
    print(f"monitor SIGKILL on 3 brokers: {counts}")


async def test_a_100_mib_artifact_replicates_to_every_broker_and_verifies(cluster, tmp_path):  # type: ignore[no-untyped-def]
    """The largest artifacts are written with acks=all to 3 replicas (min ISR 2): every
    broker's log holds the whole record, and it reads back and verifies."""
    settings = load(
        bootstrap_servers=cluster.bootstrap,
        topic_prefix=f"big{uuid.uuid4().hex[:6]}.",
        replication_factor=3,
    )
    await create_topics(settings)
    keys = tmp_path / "keys"
    generate_keys(keys)
    bundle = onnx_models.lookup_graph(100)
    body = onnx_candidate("large", describe(bundle.graph, features=bundle.feature_names))
    artifact = publishable(body, 1, None, load_private_key(keys / "modelstream.key"), None)
    value = default_codec().encode(ModelArtifact, artifact)
    assert len(value) > 100 * 2**20
    async with make_producer(settings) as producer:  # acks=all, as the publisher writes
        sent = await producer.send_and_wait(settings.topic("models"), key=b"large", value=value)
    folder = f"{settings.topic('models')}-{sent.partition}"

    def replicated() -> bool:
        sizes = [
            sum(f.stat().st_size for f in (node.data_dir / folder).glob("*.log"))
            for node in cluster.nodes
        ]
        return all(size > len(value) for size in sizes)

    await eventually(replicated, 60, "the artifact on all three brokers")
    public = load_public_key(keys / "modelstream.pub")
    production = await load_production(settings, public)
    assert production["large"].signed and production["large"].digest == artifact["digest"]
    assert production["large"].body["onnx"]["graph"] == bundle.graph
