"""Topic provisioning from the declarative topology, checked through the admin API."""

import os
import subprocess
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import TrainingExample
from modelstream.kafka.clients import make_producer
from modelstream.kafka.topology import (
    DEADLETTER,
    TOPOLOGY,
    TRAINING,
    create_topics,
    describe_topics,
)
from modelstream.kafka.writers import DeadLetterWriter
from tests.support.samples import SAMPLES


async def test_create_topics_is_idempotent_and_matches_topology(settings):
    first = await create_topics(settings)
    assert sorted(first.created) == sorted(t.name for t in TOPOLOGY)
    second = await create_topics(settings)
    assert second.created == [] and sorted(second.existing) == sorted(t.name for t in TOPOLOGY)

    described = await describe_topics(settings)
    assert set(described) == {settings.topic(t.name) for t in TOPOLOGY}
    for spec in TOPOLOGY:
        info = described[settings.topic(spec.name)]
        assert info.partitions == spec.partitions, spec.name
        assert info.replication_factor == settings.replication_factor
        for key, value in spec.config.items():
            assert info.config.get(key) == value, (spec.name, key)
    assert described[settings.topic("models")].config["cleanup.policy"] == "compact"
    assert described[settings.topic("requests")].config.get("cleanup.policy") != "compact"


def test_topics_cli_lists_every_topic(settings):
    env = {
        **os.environ,
        "MODELSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap,
        "MODELSTREAM_TOPIC_PREFIX": settings.topic_prefix,
    }
    created = subprocess.run(
        [sys.executable, "-m", "modelstream.cli", "topics", "create"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    assert f"{len(TOPOLOGY)} created" in created.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "modelstream.cli", "topics", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = listed.stdout.splitlines()
    assert len(lines) == len(TOPOLOGY) and not any("MISSING" in line for line in lines)
    assert any("models" in line and "cleanup.policy=compact" in line for line in lines)


async def test_avro_and_json_records_cross_the_broker(topics):
    settings = topics
    codec = default_codec()
    topic = settings.topic(TRAINING)
    avro_bytes = codec.encode(TrainingExample, SAMPLES["TrainingExample"])
    json_bytes = codec.encode_json(TrainingExample, SAMPLES["TrainingExample"])
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, avro_bytes, key=b"breast-cancer", partition=0)
        await producer.send_and_wait(topic, json_bytes, key=b"breast-cancer", partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        records = []
        while len(records) < 2:
            batch = await consumer.getmany(timeout_ms=5000)
            assert batch, "no records arrived"
            for recs in batch.values():
                records.extend(recs)
    finally:
        await consumer.stop()
    decoded = [codec.decode_any(r.value, TrainingExample) for r in records]
    assert decoded == [SAMPLES["TrainingExample"]] * 2


async def test_dead_letter_keeps_bytes_and_reason(topics):
    settings = topics
    producer = make_producer(settings)
    await producer.start()
    source = settings.topic(TRAINING)
    try:
        await producer.send_and_wait(source, b"\x00not-avro", key=b"m", partition=1)
        consumer = AIOKafkaConsumer(
            source,
            bootstrap_servers=settings.bootstrap,
            auto_offset_reset="earliest",
            group_id=None,
        )
        await consumer.start()
        try:
            batch = await consumer.getmany(timeout_ms=10000)
            (bad,) = [r for recs in batch.values() for r in recs]
        finally:
            await consumer.stop()
        writer = DeadLetterWriter(producer, settings.topic(DEADLETTER), "test")
        await writer.send(bad, "undecodable", "not Avro")
        await producer.flush()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        settings.topic(DEADLETTER),
        bootstrap_servers=settings.bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=10000)
        (dead,) = [r for recs in batch.values() for r in recs]
    finally:
        await consumer.stop()
    headers = dict(dead.headers)
    assert dead.value == b"\x00not-avro" and dead.key == b"m"
    assert headers["reason"] == b"undecodable"
    assert headers["source.topic"] == source.encode()
    assert headers["source.partition"] == b"1" and headers["source.offset"] == b"0"
    assert headers["service"] == b"test"
