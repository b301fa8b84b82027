"""Kafka plumbing shared by every service: clients, dead letters and log re-reads."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from modelstream.settings import Settings

log = logging.getLogger(__name__)

Header = tuple[str, bytes]


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection options common to producers, consumers and admin clients."""
    options: dict[str, Any] = {"bootstrap_servers": settings.bootstrap,
                               "client_id": settings.client_id}
    options.update(security_options(settings))
    return options


def security_options(settings: Settings) -> dict[str, Any]:
    """TLS and SASL options from the settings (none for PLAINTEXT)."""
    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        cafile = str(settings.ssl_ca_file) if settings.ssl_ca_file else None
        options["ssl_context"] = create_ssl_context(cafile=cafile)
    if protocol.startswith("SASL"):
        options.update(sasl_mechanism=settings.sasl_mechanism,
                       sasl_plain_username=settings.sasl_username,
                       sasl_plain_password=settings.sasl_password)
    return options


def make_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """A durable producer: acks from all in-sync replicas, idempotent, lz4-free (pure python)."""
    options: dict[str, Any] = {
        **client_options(settings),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_consumer(
    settings: Settings, *topics: str, group_id: str | None, **overrides: Any
) -> AIOKafkaConsumer:
    options: dict[str, Any] = {
        **client_options(settings),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


def dead_letter_headers(
    record: ConsumerRecord, reason: str, message: str, service: str
) -> list[Header]:
    return [
        ("reason", reason.encode()),
        ("error", message[:1000].encode("utf-8", "replace")),
        ("source.topic", record.topic.encode()),
        ("source.partition", str(record.partition).encode()),
        ("source.offset", str(record.offset).encode()),
        ("service", service.encode()),
        ("failed.at.ms", str(int(time.time() * 1000)).encode()),
    ]


class DeadLetterWriter:
    """Sends an undecodable or invalid record, unchanged, to the dead-letter topic."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, service: str) -> None:
        self._producer = producer
        self._topic = topic
        self._service = service

    async def send(self, record: ConsumerRecord, reason: str, message: str) -> asyncio.Future:  # type: ignore[type-arg]
        """Queue the record; returns its delivery future (await it before committing)."""
        log.warning(
            "dead-letter %s[%d]@%d: %s: %s",
            record.topic, record.partition, record.offset, reason, message,
        )
        return await self._producer.send(  # type: ignore[no-any-return]
            self._topic,
            key=record.key,
            value=record.value,
            headers=dead_letter_headers(record, reason, message, self._service),
        )


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """A topic's partitions, fetching metadata first when the consumer has none for it."""
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        if topic not in await consumer.topics():  # fresh cluster metadata
            return []
        await consumer._client._wait_on_metadata(topic)
        parts = consumer.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(parts)]


async def read_to_end(
    settings: Settings, topic: str, *, timeout_s: float = 30.0
) -> AsyncIterator[ConsumerRecord]:
    """Every committed record of ``topic`` from the beginning up to its end at call time."""
    consumer = make_consumer(settings, group_id=None, fetch_max_wait_ms=50)
    await consumer.start()
    try:
        tps = await partitions_of(consumer, topic)
        if not tps:
            return
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        async for record in _drain(consumer, ends, timeout_s):
            yield record
    finally:
        await consumer.stop()


@dataclass(frozen=True)
class OffsetRange:
    topic: str
    partition: int
    start: int
    end: int  # exclusive


async def read_ranges(
    settings: Settings, ranges: Iterable[OffsetRange], *, timeout_s: float = 60.0
) -> AsyncIterator[ConsumerRecord]:
    """The committed records inside ``[start, end)`` of each range, partition by partition."""
    wanted = [r for r in ranges if r.end > r.start]
    if not wanted:
        return
    consumer = make_consumer(settings, group_id=None, fetch_max_wait_ms=50)
    await consumer.start()
    try:
        tps = {TopicPartition(r.topic, r.partition): r for r in wanted}
        consumer.assign(list(tps))
        for tp, r in tps.items():
            consumer.seek(tp, r.start)
        ends = {tp: r.end for tp, r in tps.items()}
        async for record in _drain(consumer, ends, timeout_s):
            if record.offset < ends[TopicPartition(record.topic, record.partition)]:
                yield record
    finally:
        await consumer.stop()


async def _drain(
    consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int], timeout_s: float
) -> AsyncIterator[ConsumerRecord]:
    """Yield records until every partition's position reaches its end offset."""
    deadline = time.monotonic() + timeout_s
    pending = {tp for tp, end in ends.items() if end > 0}
    for tp in list(pending):
        if await consumer.position(tp) >= ends[tp]:
            pending.discard(tp)
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"read did not reach the end offsets of {sorted(map(str, pending))}")
        batch = await consumer.getmany(*pending, timeout_ms=500)
        for tp, records in batch.items():
            for record in records:
                if record.offset < ends[tp]:
                    yield record
        for tp in list(pending):
            # Positions can jump past transaction markers and compacted gaps.
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)
        await asyncio.sleep(0)


def fix_describe_groups_decoding() -> None:
    """aiokafka 0.14 pairs the DescribeGroups v3 request with the v2 response schema, which
    lacks v3's ``authorized_operations`` field, so decoding any v3 answer (Kafka >= 2.3)
    underruns. Point the request at its own response schema; a no-op once fixed upstream."""
    from aiokafka.protocol import admin as protocol

    if protocol.DescribeGroupsRequest_v3.RESPONSE_TYPE is protocol.DescribeGroupsResponse_v2:
        protocol.DescribeGroupsRequest_v3.RESPONSE_TYPE = protocol.DescribeGroupsResponse_v3
