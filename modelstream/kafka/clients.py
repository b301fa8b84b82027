"""Kafka clients configured from the settings, and re-reads of a log's committed records."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from modelstream.errors import ConfigurationError
from modelstream.kafka.compat import shorten_concurrent_transactions_backoff, wait_for_metadata
from modelstream.settings import Settings
from modelstream.telemetry import CONSUMER_LAG


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection options common to producers, consumers and admin clients."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap,
        "client_id": settings.client_id,
    }
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
        if not settings.sasl_username or settings.sasl_password is None:
            raise ConfigurationError(
                f"MODELSTREAM_SECURITY_PROTOCOL={protocol} needs MODELSTREAM_SASL_USERNAME and "
                "MODELSTREAM_SASL_PASSWORD"
            )
        password = settings.sasl_password.get_secret_value()
        options.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=password,
        )
    return options


ARTIFACT_REQUEST_BYTES = 129 * 1024 * 1024  # an artifact of ARTIFACT_MAX_BYTES with framing


def make_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """A durable producer: acks from all in-sync replicas, idempotent. Use it with
    ``async with`` where the caller owns it."""
    options: dict[str, Any] = {
        **client_options(settings),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        # Room for the largest artifact (topology.ARTIFACT_MAX_BYTES); what each topic
        # accepts is its max.message.bytes, checked before sending (ensure_fits).
        "max_request_size": ARTIFACT_REQUEST_BYTES,
    }
    options.update(overrides)
    if options.get("transactional_id") is not None:
        shorten_concurrent_transactions_backoff()
    return AIOKafkaProducer(**options)


def make_consumer(
    settings: Settings, *topics: str, group_id: str | None, **overrides: Any
) -> AIOKafkaConsumer:
    """A consumer that commits only when told to and never reads aborted transactions."""
    options: dict[str, Any] = {
        **client_options(settings),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


class LagReporter:
    """Reports a consumer's lag (records behind the end of its assigned partitions, as of
    its last fetch) as ``modelstream_consumer_lag_records``, at most once a second."""

    def __init__(self, service: str, consumer: AIOKafkaConsumer) -> None:
        self._gauge = CONSUMER_LAG.labels(service)
        self._consumer = consumer
        self._last = 0.0

    async def report(self) -> None:
        now = time.monotonic()
        if now - self._last < 1.0:
            return
        self._last = now
        self._gauge.set(sum((await consumer_lag(self._consumer)).values()))


async def consumer_lag(consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
    """Records behind the end of each assigned partition (from the last fetch)."""
    out = {}
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        if highwater is not None:
            out[tp] = max(0, highwater - await consumer.position(tp))
    return out


async def reach(settings: Settings, timeout_s: float) -> None:
    """Connect to the bootstrap servers as every client does (TCP, TLS, SASL) and ask for
    the cluster's metadata, all of them at once and within ``timeout_s``; one answer is
    enough. Otherwise raises what the first listed server failed with (TimeoutError when it
    did not answer in time). A client's own start only logs those causes, raises "Unable to
    bootstrap", and waits up to its request timeout (40 s) on each server that never answers.

    ``create_conn`` and ``collect_hosts`` are what aiokafka's client bootstraps with; they
    are not in its documented API (pinned by tests/unit/cli/test_broker_down.py)."""
    from aiokafka.conn import collect_hosts, create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    async def ask(host: str, port: int) -> None:
        conn = await create_conn(
            host,
            port,
            client_id=settings.client_id,
            request_timeout_ms=int(timeout_s * 1000),
            **security_options(settings),
        )
        try:
            await conn.send(MetadataRequest([]))
        finally:
            conn.close()

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    hosts = collect_hosts(settings.bootstrap, randomize=False)
    tasks = [asyncio.create_task(ask(host, port)) for host, port, _ in hosts]
    pending = set(tasks)
    try:
        while pending:
            done, pending = await asyncio.wait(
                pending, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                break
            if any(task.exception() is None for task in done):
                return
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    first = tasks[0]
    failure = None if first.cancelled() else first.exception()
    raise failure or TimeoutError(f"no answer within {timeout_s:g} s")


@asynccontextmanager
async def admin_client(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client, closed on exit (aiokafka's has no ``async with`` of its own)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """A topic's partitions, fetching metadata first when the consumer has none for it."""
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        if topic not in await consumer.topics():  # fresh cluster metadata
            return []
        await wait_for_metadata(consumer, topic)
        parts = consumer.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(parts)]


async def read_to_end(
    settings: Settings, topic: str, *, timeout_s: float = 30.0
) -> AsyncIterator[ConsumerRecord]:
    """Every committed record of ``topic`` from the beginning up to its end at call time."""
    async with make_consumer(settings, group_id=None, fetch_max_wait_ms=50) as consumer:
        tps = await partitions_of(consumer, topic)
        if not tps:
            return
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        async for record in drain(consumer, ends, timeout_s):
            yield record


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
    async with make_consumer(settings, group_id=None, fetch_max_wait_ms=50) as consumer:
        tps = {TopicPartition(r.topic, r.partition): r for r in wanted}
        consumer.assign(list(tps))
        for tp, r in tps.items():
            consumer.seek(tp, r.start)
        ends = {tp: r.end for tp, r in tps.items()}
        async for record in drain(consumer, ends, timeout_s):
            if record.offset < ends[TopicPartition(record.topic, record.partition)]:
                yield record


async def drain(
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
