"""A 3-node KRaft cluster on loopback, and a broker killed under load (pytest -m faults)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from modelstream.artifact import generate_keys
from modelstream.broker import CONTROLLER_PORT_OFFSET, EmbeddedCluster, fetch_broker_ids
from modelstream.settings import load
from modelstream.topics import create_topics, describe_topics
from tests.integration.predictor_support import publish, trained_body
from tests.integration.test_predictor import BC, requests_for

pytestmark = pytest.mark.faults


def free_port_block(nodes: int) -> int:
    """A port P such that P..P+n-1 and P+1000..P+1000+n-1 are free on loopback."""
    for _ in range(500):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        wanted = [base + i for i in range(nodes)] + [
            base + CONTROLLER_PORT_OFFSET + i for i in range(nodes)]
        if max(wanted) > 65535:
            continue
        sockets = []
        try:
            for port in wanted:
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free port block")


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
    settings = load(bootstrap_servers=cluster.bootstrap, topic_prefix="rf3.",
                    replication_factor=3)
    asyncio.run(create_topics(settings))
    described = asyncio.run(describe_topics(settings))
    for name, info in described.items():
        assert info["replication_factor"] == 3, name
        assert info["config"]["min.insync.replicas"] == "2", name
    status = subprocess.run(
        [sys.executable, "-m", "modelstream.cli", "broker", "status"],
        env={**os.environ, "MODELSTREAM_STATE_DIR": str(cluster.root),
             "MODELSTREAM_BROKER_PORT": str(cluster.nodes[0].port)},
        capture_output=True, text=True, timeout=60, check=False)
    assert status.returncode == 0 and "3 broker(s) registered" in status.stdout, status.stdout


async def test_sigkill_one_broker_mid_stream_loses_and_duplicates_nothing(  # type: ignore[no-untyped-def]
        cluster, tmp_path):
    settings = load(bootstrap_servers=cluster.bootstrap,
                    topic_prefix=f"kill{uuid.uuid4().hex[:6]}.", replication_factor=3)
    await create_topics(settings)
    generate_keys(tmp_path / "keys")
    await publish(settings, tmp_path / "keys", trained_body(BC), 1)
    env = {**os.environ, "MODELSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap,
           "MODELSTREAM_TOPIC_PREFIX": settings.topic_prefix, "MODELSTREAM_METRICS_PORT": "0",
           "MODELSTREAM_PUBLIC_KEY_FILE": str(tmp_path / "keys" / "modelstream.pub")}
    log = (tmp_path / "predictor.log").open("wb")
    predictor = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "modelstream.cli", "run", "predictor"], env=env, stdout=log,
        stderr=subprocess.STDOUT)
    total, rate, chunk = 50_000, 5_000, 500
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all",
                                enable_idempotence=True, linger_ms=5)
    await producer.start()
    killed_at = restarted_at = 0.0
    try:
        start = time.monotonic()
        for i in range(0, total, chunk):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            futures = [await producer.send(settings.topic("requests"), key=k, value=v)
                       for k, v in requests_for(BC, chunk, i, packed=True, prefix="f")]
            await asyncio.gather(*futures)
            if i == total // 4:
                cluster.kill_node(1, signal.SIGKILL)  # a broker leading some partitions
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
    print(f"broker SIGKILL: sent {total} in {sent_s:.1f}s, answered {len(counts)}, lost {lost}, "
          f"duplicated {duplicated}, node restarted after {restarted_at - killed_at:.1f}s, "
          f"all answered {recovered - killed_at:.1f}s after the kill")
    predictor_log = await asyncio.to_thread((tmp_path / "predictor.log").read_text)
    assert lost == 0 and duplicated == 0, predictor_log[-3000:]
    assert len(cluster.running_nodes()) == 3


async def _count_predictions(settings, total, timeout_s):  # type: ignore[no-untyped-def]
    consumer = AIOKafkaConsumer(settings.topic("predictions"),
                                bootstrap_servers=settings.bootstrap, group_id=None,
                                auto_offset_reset="earliest", isolation_level="read_committed")
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
