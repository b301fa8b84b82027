"""Consume a batch, transform it, produce the results: exactly once, or at least once.

The predictor and the benchmark relays share this loop, so a relay measures exactly the
transport the predictor runs on.

Exactly-once without KIP-447: aiokafka commits offsets in a transaction with the
``TxnOffsetCommit`` v0 request, which carries no consumer-group generation, so the broker
cannot fence a zombie group member by generation. Instead each *input partition* gets its
own transactional producer whose id is derived from the partition (the pattern Kafka
Streams used before KIP-447). Whoever is assigned partition ``p`` initializes that id,
which aborts the previous owner's open transaction and fences its producer: a paused or
partitioned old owner can no longer commit output or offsets for ``p``.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced

from modelstream.kafka.clients import consumer_lag, make_consumer, make_producer
from modelstream.kafka.writers import Header
from modelstream.runner import Managed
from modelstream.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One output record. ``partition`` None: chosen from the key (CRC-32 of the key)."""

    topic: str
    key: bytes | None
    value: bytes
    partition: int | None = None
    headers: Sequence[Header] | None = None


class Processor(Protocol):
    def process(self, tp: TopicPartition, records: list[ConsumerRecord]) -> list[Outgoing]:
        """Pure, synchronous transformation of one partition's batch."""
        ...

    async def refresh(self) -> None:
        """Called between batches: the only point where a processor may change state."""
        ...


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, pipeline: BatchPipeline) -> None:
        self.pipeline = pipeline

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.pipeline._revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.pipeline._assigned(assigned)


class BatchPipeline(Managed):
    """A consumer-group member that turns each fetched batch into output records."""

    def __init__(
        self,
        settings: Settings,
        service: str,
        input_topic: str,
        processor: Processor,
        *,
        exactly_once: bool = True,
        max_records: int = 5000,
        session_timeout_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self.service = service
        self.input_topic = input_topic
        self.processor = processor
        self.exactly_once = exactly_once
        self.group = settings.group(service)
        self.max_records = max_records
        self.consumer = make_consumer(
            settings,
            group_id=self.group,
            max_poll_records=max_records,
            session_timeout_ms=int(session_timeout_s * 1000),
            heartbeat_interval_ms=max(1000, int(session_timeout_s * 250)),
            max_partition_fetch_bytes=1024 * 1024,
            fetch_max_bytes=8 * 1024 * 1024,
            fetch_max_wait_ms=20,
        )
        self._producers: dict[int, AIOKafkaProducer] = {}
        self._creating: dict[int, asyncio.Lock] = {}
        self._shared: AIOKafkaProducer | None = None
        self._partition_counts: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self.batches = 0
        self.records_in = 0
        self.records_out = 0

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        if not self.exactly_once:
            self._shared = make_producer(self.settings, linger_ms=2)
            await self._shared.start()
        self.consumer.subscribe([self.input_topic], listener=_Listener(self))
        await self.consumer.start()

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        await self.consumer.stop()  # leaves the group: partitions move on at once
        for producer in list(self._producers.values()):
            await producer.stop()
        self._producers.clear()
        if self._shared is not None:
            await self._shared.stop()

    async def run(self) -> None:
        while not self._stop.is_set():
            batch = await self.consumer.getmany(timeout_ms=100, max_records=self.max_records)
            async with self._lock:
                await self.processor.refresh()
                if batch:
                    await self._handle(batch)

    def assigned_partitions(self) -> set[TopicPartition]:
        return set(self.consumer.assignment())

    # -- rebalancing ---------------------------------------------------------------------
    def transactional_id(self, partition: int) -> str:
        # Must not contain the instance id: the next owner of the partition must reuse it.
        return f"{self.group}-{self.input_topic}-{partition}"

    async def _assigned(self, assigned: list[TopicPartition]) -> None:
        if self.exactly_once:
            await asyncio.gather(*(self._producer_for(tp.partition) for tp in assigned))

    async def _producer_for(self, partition: int) -> AIOKafkaProducer:
        """The partition's transactional producer, created once (the fetcher may hand out
        records before the assignment callback has finished starting it)."""
        lock = self._creating.setdefault(partition, asyncio.Lock())
        async with lock:
            producer = self._producers.get(partition)
            if producer is None:
                # Right after a commit the coordinator answers CONCURRENT_TRANSACTIONS until
                # its markers are written; aiokafka then sleeps retry_backoff (100 ms by
                # default) before the next batch's transaction can start.
                producer = make_producer(
                    self.settings,
                    linger_ms=2,
                    retry_backoff_ms=10,
                    transactional_id=self.transactional_id(partition),
                )
                await producer.start()  # InitProducerId: fences and aborts the previous owner
                self._producers[partition] = producer
            return producer

    async def _revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._lock:  # never in the middle of a batch
            for tp in revoked:
                producer = self._producers.pop(tp.partition, None)
                if producer is not None:
                    await producer.stop()

    # -- processing ----------------------------------------------------------------------
    async def _handle(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        self.batches += 1
        if self.exactly_once:
            await asyncio.gather(*(self._transact(tp, records) for tp, records in batch.items()))
            return
        assert self._shared is not None
        futures = []
        for tp, records in batch.items():
            outgoing = self.processor.process(tp, records)
            self.records_in += len(records)
            self.records_out += len(outgoing)
            futures.extend(await self._send(self._shared, outgoing))
        await asyncio.gather(*futures)
        await self.consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})

    async def _transact(self, tp: TopicPartition, records: list[ConsumerRecord]) -> None:
        if tp not in self.consumer.assignment():
            return  # revoked since the fetch: the new owner resumes from the committed offset
        producer = await self._producer_for(tp.partition)
        outgoing = self.processor.process(tp, records)
        try:
            async with producer.transaction():
                await self._send(producer, outgoing)
                await producer.send_offsets_to_transaction({tp: records[-1].offset + 1}, self.group)
        except ProducerFenced:
            # Another member owns this partition now; our batch was aborted, not lost.
            log.warning("fenced on %s: another member took it over", tp)
            self._producers.pop(tp.partition, None)
            await producer.stop()
            return
        except KafkaError:
            log.exception("transaction on %s failed; re-reading from the committed offset", tp)
            committed = await self.consumer.committed(tp)
            self.consumer.seek(tp, committed or 0)
            return
        self.records_in += len(records)
        self.records_out += len(outgoing)

    async def _send(self, producer: AIOKafkaProducer, outgoing: list[Outgoing]) -> list[Any]:
        grouped: dict[tuple[str, int], list[Outgoing]] = defaultdict(list)
        for out in outgoing:
            partition = out.partition
            if partition is None:
                partition = zlib.crc32(out.key or b"") % await self._count(producer, out.topic)
            grouped[(out.topic, partition)].append(out)
        futures = []
        for (topic, partition), items in grouped.items():
            builder = producer.create_batch()
            for out in items:
                if (
                    builder.append(
                        key=out.key,
                        value=out.value,
                        timestamp=None,
                        headers=list(out.headers) if out.headers else [],
                    )
                    is None
                ):
                    futures.append(await producer.send_batch(builder, topic, partition=partition))
                    builder = producer.create_batch()
                    builder.append(
                        key=out.key,
                        value=out.value,
                        timestamp=None,
                        headers=list(out.headers) if out.headers else [],
                    )
            if builder.record_count():
                futures.append(await producer.send_batch(builder, topic, partition=partition))
        return futures

    async def _count(self, producer: AIOKafkaProducer, topic: str) -> int:
        count = self._partition_counts.get(topic)
        if count is None:
            count = len(await producer.partitions_for(topic))
            self._partition_counts[topic] = count
        return count

    async def lag(self) -> dict[TopicPartition, int]:
        """Records behind the end of each assigned partition (from the last fetch)."""
        return await consumer_lag(self.consumer)
