"""Consume a batch, transform it, produce the results: exactly once, or at least once.

This is the core every path that must not lose or repeat data runs on: the predictor, the
monitor's repartition, join and learning stages, and the benchmark relays (so a relay
measures exactly the transport the services run on).

**Tasks.** The unit of work is a *task*: one partition number across the subscribed topics,
which are co-partitioned (same partition count, assigned by Kafka's range assignor so that
partition ``p`` of every topic goes to the same member). A task's records of one fetch are
processed together and their outputs and offsets commit in one transaction.

**Exactly-once without KIP-447.** aiokafka commits offsets in a transaction with the
``TxnOffsetCommit`` v0 request, which carries no consumer-group generation, so the broker
cannot fence a zombie group member by generation. Instead each task gets its own
transactional producer whose id is derived from the task (the pattern Kafka Streams used
before KIP-447). Whoever is assigned task ``p`` initializes that id, which aborts the
previous owner's open transaction and fences its producer: a paused or partitioned old
owner can no longer commit output or offsets for ``p``. Two details make the handover exact:

* aiokafka looks up the committed offsets of new partitions *before* the assignment
  callback runs, while the previous owner's last transaction may still be committing. So on
  assignment the task's producer is started first (fencing that owner, and waiting for its
  transaction to complete or abort), and only then are the committed offsets read again and
  the consumer seeked to them.
* A producer fenced while its task is still assigned has lost the batch it was committing;
  the consumer is seeked back to the committed offset, so the next transaction starts
  there instead of after the lost batch.

**Errors.** A record the processor cannot handle (it raises) is isolated by re-running the
batch one record at a time; the record that fails alone is dead-lettered with reason
``internal-error``. An output the topic would refuse (too large) dead-letters the record it
came from. A batch whose transaction fails for a reason that is not the cluster's is retried
a bounded number of times, then handled one record per transaction, and a record that still
fails is dead-lettered with its offset committed. A record that took the process itself
down (native crash) is dead-lettered unhandled after a bounded number of crashes, counted
in Kafka so that the count follows the partition to whichever member meets it next
(:class:`~modelstream.kafka.in_flight.KafkaCrashGuard`).

**State.** A stateful processor (the monitor's join and learner) restores what a task needs
in :meth:`Processor.assigned`, before any of the task's records is processed, and applies the
state changes of a batch only in :meth:`Processor.committed`, after its transaction commits;
that call also says where each output landed, so the processor knows how far its changelog
is its own. :meth:`Processor.punctuate` lets it write without input (expiry), in a
transaction of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from contextlib import AbstractAsyncContextManager, nullcontext, suppress
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import KafkaError, ProducerFenced

from modelstream.contracts.records import InFlightMode
from modelstream.kafka.boundary import Attempts, Boundary, Failure
from modelstream.kafka.clients import consumer_lag, make_consumer, make_producer
from modelstream.kafka.compat import TRANSACTION_ERRORS, retire_producer
from modelstream.kafka.in_flight import BATCH, RECORD, SHARED, KafkaCrashGuard, Quarantine
from modelstream.kafka.topology import ROW_MAX_BYTES
from modelstream.kafka.writers import Header, Position, dead_letter_headers, fitted_value
from modelstream.runner import Managed
from modelstream.settings import Settings
from modelstream.telemetry import (
    DEAD_LETTERS,
    RECORD_STAGE_SECONDS,
    TRANSACTION_SECONDS,
    observe_many,
)

log = logging.getLogger(__name__)

FRAMING_BYTES = 512  # record and batch overhead counted against a topic's message limit
# At least once: batches a lane sends ahead of the oldest one's acknowledgement.
ALO_BATCHES_IN_FLIGHT = 8


# producers see partitions added to a topic within this (aiokafka's default is 5 minutes)
METADATA_MAX_AGE_MS = 10_000


def key_partition(key: bytes | None, partitions: int) -> int:
    """The partition of a keyed output: CRC-32 of the key, librdkafka's default (so kcat and
    confluent-kafka producers put records with the same key in the same partition)."""
    return zlib.crc32(key or b"") % partitions


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One output record. ``partition`` None: chosen from the key (CRC-32 of the key).
    ``source`` is the input it came from, dead-lettered if the output cannot be written."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None
    headers: Sequence[Header] | None = None
    source: ConsumerRecord | None = None


# (topic, partition) -> offset of the last record a committed transaction wrote there
Written = Mapping[tuple[str, int], int]


def dead_letter(
    topic: str,
    service: str,
    source: Position,
    key: bytes | None,
    value: bytes | None,
    failure: Failure,
) -> Outgoing:
    """A dead letter of the record at ``source`` (whose key and value these are)."""
    fitted, cut = fitted_value(value)
    return Outgoing(
        topic,
        key,
        fitted,
        None,
        dead_letter_headers(source, failure.reason, failure.error, service) + cut,
    )


class Processor(Protocol):
    def process(self, task: int, records: list[ConsumerRecord]) -> list[Outgoing]:
        """Synchronous transformation of one task's records of one fetch (records of every
        topic of the task, each topic's in offset order). Later calls of the same open
        transaction see the pending state of earlier ones; nothing becomes committed state
        before :meth:`committed`, and :meth:`aborted` drops all of it (the records are
        processed again). It may raise. It may run in a worker thread (``executor``)."""
        ...

    async def refresh(self) -> None:
        """Called between batches: where a processor may take in outside changes."""
        ...

    async def assigned(self, tasks: set[int]) -> None:
        """The tasks this member owns from now on, before any of their records is processed."""
        ...

    async def revoked(self, tasks: set[int]) -> None:
        """The tasks this member no longer owns (no batch of theirs is in flight)."""
        ...

    def committed(self, task: int, written: Written) -> None:
        """The outputs of the task's ``process`` (or ``punctuate``) calls since the last
        commit or abort are committed; ``written`` says where they landed."""
        ...

    def punctuate(self, task: int) -> list[Outgoing]:
        """Called about once a second per owned task, between batches: outputs that no
        input asked for (expiry). They commit with the task's open transaction (its earlier
        batches' pending state is visible, and must be kept), or in one of their own."""
        ...

    def aborted(self, task: int) -> None:
        """The outputs of the task's last ``process`` call were not committed."""
        ...

    def dead_lettered(self, record: ConsumerRecord, failure: Failure) -> list[Outgoing]:
        """Outputs that go with a dead letter the pipeline writes for ``record`` (its
        processing failed, crashed the service, or its output was too large): e.g. the
        answer a waiting caller gets instead of a timeout."""
        ...


class Stateless:
    """Processor hooks for a processor that keeps no state per task."""

    async def refresh(self) -> None:
        return None

    async def assigned(self, tasks: set[int]) -> None:
        return None

    async def revoked(self, tasks: set[int]) -> None:
        return None

    def committed(self, task: int, written: Written) -> None:
        return None

    def punctuate(self, task: int) -> list[Outgoing]:
        return []

    def aborted(self, task: int) -> None:
        return None

    def dead_lettered(self, record: ConsumerRecord, failure: Failure) -> list[Outgoing]:
        return []


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
        input_topics: str | Sequence[str],
        processor: Processor,
        *,
        deadletter_topic: str,
        topic_limits: dict[str, int] | None = None,
        exactly_once: bool = True,
        max_records: int = 5000,
        session_timeout_s: float = 10.0,
        fetch_max_wait_ms: int = 20,
        name: str | None = None,
        crash_topic: str | None = None,
        punctuate_every_s: float = 1.0,
        commit_interval_s: float = 0.0,
        commit_max_records: int = 20_000,
        hold: Callable[[list[ConsumerRecord]], float] | None = None,
        executor: Callable[[], Executor | None] | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.input_topics = [input_topics] if isinstance(input_topics, str) else list(input_topics)
        self.processor = processor
        self.deadletter_topic = deadletter_topic
        self.topic_limits = topic_limits or {}
        self.exactly_once = exactly_once
        self.name = name or service
        self.group = settings.group(self.name)
        self.max_records = max_records
        assignor = (
            RangePartitionAssignor if len(self.input_topics) > 1 else (RoundRobinPartitionAssignor)
        )
        self.consumer = make_consumer(
            settings,
            group_id=self.group,
            max_poll_records=max_records,
            session_timeout_ms=int(session_timeout_s * 1000),
            heartbeat_interval_ms=max(1000, int(session_timeout_s * 250)),
            # one record of the largest row (an image) per partition and fetch, at least
            max_partition_fetch_bytes=ROW_MAX_BYTES + 64 * 1024,
            fetch_max_bytes=8 * 1024 * 1024,
            fetch_max_wait_ms=fetch_max_wait_ms,
            partition_assignment_strategy=(assignor,),
        )
        self.boundary = Boundary(service)
        self.attempts = Attempts()
        # where the crash counts of batches in flight are kept (exactly-once only)
        if crash_topic is not None and len(self.input_topics) > 1:
            raise ValueError("crash counts kept in Kafka take one input topic")
        self.crash_guard = (
            KafkaCrashGuard(settings, crash_topic)
            if crash_topic is not None and exactly_once
            else None
        )
        self._quarantine = Quarantine()
        self._producers: dict[int, AIOKafkaProducer] = {}
        self._creating: dict[int, asyncio.Lock] = {}
        self._shared: AIOKafkaProducer | None = None
        self._partition_counts: dict[str, int] = {}
        self._lock = asyncio.Lock()  # held by rebalance callbacks
        # How often this member has positioned each partition (seek). aiokafka hands out only
        # records fetched from the partition's current position; records handed out before
        # a seek that ran while they waited for the lock are from a position since abandoned.
        self._seeks: dict[TopicPartition, int] = defaultdict(int)
        # Each task's records wait in `_pending` for the task's lane: one transaction at a time
        # per task, tasks side by side, the fetch loop never waiting for a commit.
        self._pending: dict[int, dict[TopicPartition, list[ConsumerRecord]]] = {}
        self._lanes: dict[int, asyncio.Task[None]] = {}
        # Exactly once: each task's open transaction (batches sent, offsets not yet committed).
        self._open: dict[int, _OpenTransaction] = {}
        # Set when records are queued for a task (or it must commit now): wakes its lane.
        self._arrived: dict[int, asyncio.Event] = {}
        self._closing: set[int] = set()  # tasks whose open transactions commit now
        self._punctuated: dict[int, float] = {}
        # At least once: batches sent and not yet acknowledged, per task in order; offsets
        # whose outputs are acknowledged, committed by the fetch loop in the background.
        self._unacknowledged: dict[int, deque[_Unacknowledged]] = {}
        self._acknowledged: dict[TopicPartition, int] = {}
        self._committing: asyncio.Task[None] | None = None
        self.commit_interval_s = commit_interval_s
        self.commit_max_records = commit_max_records
        # Where the next ``process`` call runs: on the event loop (None, or the callable
        # answers None), or in a worker thread so that the loop fetches and sends meanwhile
        # (for a processor whose work releases the GIL).
        self.executor = executor
        # How long a lane may let its records wait for more before processing them (a
        # model's maximum queue delay), from the records that wait: seconds, 0 for none.
        self.hold = hold
        self._stop = asyncio.Event()
        self.batches = 0
        self.records_in = 0
        self.records_out = 0
        self.last_batch_at = time.monotonic()
        self.punctuate_every_s = punctuate_every_s
        self._punctuated_at = time.monotonic()
        self._stages = {
            stage: RECORD_STAGE_SECONDS.labels(service, stage)
            for stage in ("fetched", "processed", "sent", "committed")
        }

    def _reached(self, stage: str, stamps: np.ndarray) -> None:
        """Records whose timestamps (seconds) are ``stamps`` reached ``stage`` now."""
        observe_many(self._stages[stage], np.maximum(time.time() - stamps, 0.0))

    def _sent_when_acknowledged(self, sent: list[_Sent], stamps: np.ndarray) -> None:
        """Observe the ``sent`` stage once the broker has acknowledged every output."""
        if not sent:
            return
        acks = asyncio.gather(*(batch.future for batch in sent))

        def acknowledged(done: asyncio.Future[list[Any]]) -> None:
            if not done.cancelled() and done.exception() is None:
                self._reached("sent", stamps)

        acks.add_done_callback(acknowledged)

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        if self.crash_guard is not None:
            await self.crash_guard.start()
        if not self.exactly_once:
            self._shared = make_producer(
                self.settings, linger_ms=1, metadata_max_age_ms=METADATA_MAX_AGE_MS
            )
            await self._shared.start()
        self.consumer.subscribe(self.input_topics, listener=_Listener(self))
        await self.consumer.start()

    def request_stop(self) -> None:
        self._stop.set()
        for arrived in self._arrived.values():
            arrived.set()  # lanes waiting for their commit interval commit now

    async def stop(self) -> None:
        await self.consumer.stop()  # leaves the group: partitions move on at once
        for producer in list(self._producers.values()):
            await producer.stop()
        self._producers.clear()
        if self._shared is not None:
            await self._shared.stop()
        if self.crash_guard is not None:
            await self.crash_guard.stop()

    async def run(self) -> None:
        """Fetch, and hand each task's records to its lane; between fetches, let the processor
        take in outside changes, and punctuate. Returns once stopped and every lane is done;
        raises what a lane raised."""
        try:
            while not self._stop.is_set():
                self._check_lanes()
                if sum(len(r) for parts in self._pending.values() for r in parts.values()) > (
                    2 * self.max_records
                ):  # the lanes are behind: let them catch up before fetching more
                    await asyncio.wait(
                        list(self._lanes.values()), timeout=0.1, return_when="FIRST_COMPLETED"
                    )
                    continue
                batch = await self.consumer.getmany(timeout_ms=100, max_records=self.max_records)
                seen = {tp: self._seeks[tp] for tp in batch}  # before anything else can run
                async with self._lock:
                    await self.processor.refresh()
                    self._queue(batch, seen)
                    self._commit_acknowledged_soon()
                    if time.monotonic() - self._punctuated_at >= self.punctuate_every_s:
                        self._punctuated_at = time.monotonic()
                        await self._punctuate()
        finally:
            await asyncio.gather(*self._lanes.values(), return_exceptions=True)
            await self._commit_acknowledged()
        self._check_lanes()

    def _commit_acknowledged_soon(self) -> None:
        """At least once: one offset commit for every batch acknowledged since the last, in
        the background (the fetch loop does not wait for it); one commit at a time."""
        if self._acknowledged and (self._committing is None or self._committing.done()):
            offsets, self._acknowledged = self._acknowledged, {}
            self._committing = asyncio.create_task(self._commit_offsets(offsets))

    async def _commit_acknowledged(self) -> None:
        """At least once: every acknowledged offset committed before this returns."""
        if self._committing is not None:
            await self._committing
            self._committing = None
        if self._acknowledged:
            offsets, self._acknowledged = self._acknowledged, {}
            await self._commit_offsets(offsets)

    async def _commit_offsets(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:  # at least once: the records are read again, not lost
            log.warning("offset commit failed (read again after a rebalance): %s", exc)

    def _queue(
        self, batch: dict[TopicPartition, list[ConsumerRecord]], seen: dict[TopicPartition, int]
    ) -> None:
        """Hand each task's records to its lane. ``seen``: the seek count of each partition
        when the records were handed out. A partition positioned again since then reads
        them again from where that put it; one no longer assigned is its new owner's.
        (Dropping records handed out *after* a seek instead would lose them: the consumer
        has moved past them.)"""
        assignment = self.consumer.assignment()
        for tp, records in batch.items():
            task = tp.partition
            if tp not in assignment or self._seeks[tp] != seen[tp]:
                continue
            self.boundary.read(tp.topic, len(records))
            self._reached("fetched", _stamps(records))
            self._pending.setdefault(task, {}).setdefault(tp, []).extend(records)
            self._arrived.setdefault(task, asyncio.Event()).set()
            lane = self._lanes.get(task)
            if lane is None or lane.done():
                self._lanes[task] = asyncio.create_task(self._lane(task), name=f"task-{task}")

    def _check_lanes(self) -> None:
        for task, lane in list(self._lanes.items()):
            if lane.done():
                del self._lanes[task]
                lane.result()  # a lane that died takes the pipeline down with it

    async def _lane(self, task: int) -> None:
        """The task's records, batch after batch, in transactions committed every
        ``commit_interval_s`` (or ``commit_max_records``), or in at-least-once batches
        whose offsets are committed once acknowledged. Returns when nothing waits and
        nothing is open."""
        arrived = self._arrived.setdefault(task, asyncio.Event())
        while True:
            if task not in self._pending:
                wait = self._idle_wait(task)
                if wait is None:
                    return
                if wait > 0:
                    arrived.clear()
                    with suppress(TimeoutError):
                        await asyncio.wait_for(arrived.wait(), wait)
                    continue
                await self._conclude(task)
                continue
            waiting = self._pending.get(task)
            if waiting and self.hold is not None:
                delay = self.hold([r for records in waiting.values() for r in records])
                if delay > 0:  # the fetch loop keeps queueing meanwhile
                    await asyncio.sleep(delay)
            parts = self._pending.pop(task, None)
            if not parts:
                continue
            self.batches += 1
            self.last_batch_at = time.monotonic()
            if self.exactly_once:
                await self._transact(task, parts)
                if self._commit_due(task):
                    await self._commit(task)
            else:
                await self._at_least_once(task, parts)

    def _idle_wait(self, task: int) -> float | None:
        """With nothing queued: None when the lane is done, else how long it may wait for
        more records before it must commit (0: now)."""
        if self.exactly_once:
            transaction = self._open.get(task)
            if transaction is None:
                return None
            if self._stop.is_set() or task in self._closing:
                return 0.0
            return max(0.0, transaction.began + self.commit_interval_s - time.monotonic())
        unacknowledged = self._unacknowledged.get(task)
        return 0.0 if unacknowledged else None

    async def _conclude(self, task: int) -> None:
        """Nothing more comes for now: commit the open transaction, or wait for the oldest
        unacknowledged batch."""
        if self.exactly_once:
            await self._commit(task)
        else:
            await self._acknowledge_oldest(task)

    def _commit_due(self, task: int) -> bool:
        transaction = self._open.get(task)
        return transaction is not None and (
            time.monotonic() - transaction.began >= self.commit_interval_s
            or transaction.records >= self.commit_max_records
            or self._stop.is_set()
            or task in self._closing
        )

    async def _settle(self, tasks: set[int]) -> None:
        """Drop what waits for ``tasks``; their lanes commit their open transactions (the
        tasks are still ours) and finish."""
        self._closing |= tasks
        try:
            for task in tasks:
                self._pending.pop(task, None)
                arrived = self._arrived.get(task)
                if arrived is not None:
                    arrived.set()
            lanes = [self._lanes[t] for t in tasks if t in self._lanes]
            await asyncio.gather(*lanes, return_exceptions=True)
        finally:
            self._closing -= tasks
        await self._commit_acknowledged()  # still ours: what was delivered is committed

    def assigned_partitions(self) -> set[TopicPartition]:
        return set(self.consumer.assignment())

    def assigned_tasks(self) -> set[int]:
        return {tp.partition for tp in self.consumer.assignment()}

    # -- rebalancing ---------------------------------------------------------------------
    def transactional_id(self, task: int) -> str:
        # Must not contain the instance id: the next owner of the task must reuse it.
        label = self.input_topics[0] if len(self.input_topics) == 1 else "task"
        return f"{self.group}-{label}-{task}"

    async def _assigned(self, assigned: list[TopicPartition]) -> None:
        tasks = {tp.partition for tp in assigned}
        # Nothing of these partitions is handed out until they are positioned; what was
        # handed out already is dropped (see _queue).
        self.consumer.pause(*assigned)
        async with self._lock:
            await self._settle(tasks)
            if self.exactly_once:
                # Fence the previous owners first: their last transactions are complete
                # (committed or aborted) once this returns, so the committed offsets read
                # below are final.
                await asyncio.gather(*(self._producer_for(task) for task in tasks))
            await self.processor.assigned(tasks)
            committed = await self._seek_to_committed(list(assigned))
            if self.crash_guard is not None:
                await self.crash_guard.assigned(committed)
            for task in tasks:
                self._pending.pop(task, None)
        self.consumer.resume(*assigned)

    async def _seek_to_committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Position each partition at its committed offset, read now (not the one aiokafka
        looked up before the previous owner was fenced)."""
        # An explicit seek also drops records fetched from the old position (an offset reset
        # request would not, and they would be handed out twice).
        # Every offset is read before any partition is moved: nothing can be queued between
        # a partition's seek and the caller dropping what was queued before it.
        offsets = {tp: await self.consumer.committed(tp) for tp in tps}
        never = [tp for tp, offset in offsets.items() if offset is None]
        if never:
            offsets.update(await self.consumer.beginning_offsets(never))
        for tp, offset in offsets.items():
            self.consumer.seek(tp, offset)
            self._seeks[tp] += 1
        return offsets

    async def _producer_for(self, task: int) -> AIOKafkaProducer:
        """The task's transactional producer, created once (the fetcher may hand out records
        before the assignment callback has finished starting it)."""
        lock = self._creating.setdefault(task, asyncio.Lock())
        async with lock:
            producer = self._producers.get(task)
            if producer is None:
                # Right after a commit the coordinator answers CONCURRENT_TRANSACTIONS until
                # its markers are written; aiokafka then waits a fixed 20 ms, shortened in
                # compat.shorten_concurrent_transactions_backoff (make_producer applies it).
                producer = make_producer(
                    self.settings,
                    linger_ms=0,
                    retry_backoff_ms=5,
                    transactional_id=self.transactional_id(task),
                    metadata_max_age_ms=METADATA_MAX_AGE_MS,
                )
                await producer.start()  # InitProducerId: fences and aborts the previous owner
                self._producers[task] = producer
            return producer

    async def known_partitions(self, topic: str) -> int | None:
        """The fewest partitions of ``topic`` any of this member's producers knows of (None
        before there is a producer): a producer refuses a record for a partition it has
        not seen yet, so outputs to explicit partitions stay below this."""
        producers = list(self._producers.values())
        if self._shared is not None:
            producers.append(self._shared)
        if not producers:
            return None
        return min([len(await producer.partitions_for(topic)) for producer in producers])

    async def _revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._lock:
            tasks = {tp.partition for tp in revoked}
            await self._settle(tasks)  # never in the middle of a transaction
            for task in tasks:
                producer = self._producers.pop(task, None)
                if producer is not None:
                    await producer.stop()
            await self.processor.revoked(tasks)

    # -- processing ----------------------------------------------------------------------
    async def _transact(self, task: int, parts: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        assignment = self.consumer.assignment()
        if any(tp not in assignment for tp in parts):
            return  # revoked since the fetch: the new owner resumes from the committed offset
        records = [record for records in parts.values() for record in records]
        first = records[0]
        batch_key = ("batch", first.topic, first.partition, first.offset)
        guard = self.crash_guard
        if guard is not None:  # one input topic: one partition per task
            [(tp, recs)] = parts.items()
            suspect = guard.suspect(tp.topic, tp.partition, recs[0].offset)
            if suspect is not None:  # in flight when a process died: carefully, alone
                if not await self._commit(task):  # what is open commits first
                    return
                inside = [r for r in recs if r.offset <= suspect.last]
                rest = recs[len(inside) :]
                if suspect.step == BATCH:
                    done = await self._batch(task, {tp: inside}, ("batch", *batch_key[1:]), BATCH)
                else:
                    done = await self._one_by_one(task, tp, inside, RECORD)
                if done and rest:
                    await self._transact(task, {tp: rest})
                return
        if self.attempts.exhausted(batch_key):
            if not await self._commit(task):
                return
            for tp, tp_records in parts.items():
                if not await self._one_by_one(task, tp, tp_records, SHARED):
                    return
            return
        await self._add_to_transaction(task, parts, batch_key)

    async def _add_to_transaction(
        self,
        task: int,
        parts: dict[TopicPartition, list[ConsumerRecord]],
        batch_key: tuple[str, str, int, int],
    ) -> None:
        """The batch's outputs sent in the task's open transaction (begun here if none is):
        readers of uncommitted data see them at once, read_committed readers and the
        offsets at the transaction's commit (:meth:`_commit`)."""
        producer = await self._producer_for(task)
        transaction = self._open.get(task)
        if transaction is None:
            try:
                await producer.begin_transaction()
            except TRANSACTION_ERRORS as exc:  # a producer fenced or failed since its last use
                await self._failed(task, producer, list(parts), batch_key, exc)
                return
            transaction = self._open[task] = _OpenTransaction(producer, batch_key)
        records = [record for records in parts.values() for record in records]
        for tp, recs in parts.items():
            transaction.first.setdefault(tp, recs[0].offset)
        async with self._in_flight(SHARED):
            try:
                if self.crash_guard is not None:  # before scoring: a native crash there counts
                    [(tp, recs)] = parts.items()  # from the transaction's first record on
                    await self.crash_guard.begin(
                        tp.topic, tp.partition, transaction.first[tp], recs[-1].offset, SHARED
                    )
                outgoing = await self._process_off_loop(task, records, transaction)
                stamps = _stamps(records)
                self._reached("processed", stamps)
                sent = await self._send(producer, outgoing)
                self._sent_when_acknowledged(sent, stamps)
                transaction.sent.extend(sent)
                transaction.stamps.append(stamps)
            except _Reread:
                await self._reread(task, transaction)
                return
            except ProducerFenced:
                del self._open[task]
                await self._fenced(task, producer, transaction.partitions())
                return
            except TRANSACTION_ERRORS as exc:
                del self._open[task]
                await self._failed(task, producer, transaction.partitions(), transaction.key, exc)
                return
        transaction.added(parts, len(outgoing))

    async def _commit(self, task: int) -> bool:
        """The task's open transaction (if any) committed with its offsets; False when the
        task must stop here (the records are read again from the committed offset)."""
        transaction = self._open.pop(task, None)
        if transaction is None:
            return True
        producer = transaction.producer
        try:
            now = time.monotonic()
            if now - self._punctuated.get(task, 0.0) >= self.punctuate_every_s:
                # a lane that is always busy is punctuated here, not by the fetch loop
                self._punctuated[task] = now
                punctuated = self.processor.punctuate(task)
                if punctuated:
                    transaction.sent.extend(await self._send(producer, punctuated))
            await producer.send_offsets_to_transaction(transaction.offsets, self.group)
            await producer.commit_transaction()
        except ProducerFenced:
            await self._fenced(task, producer, transaction.partitions())
            return False
        except TRANSACTION_ERRORS as exc:
            await self._failed(task, producer, transaction.partitions(), transaction.key, exc)
            return False
        self._settled({tp: offset - 1 for tp, offset in transaction.offsets.items()})
        if transaction.stamps:
            self._reached("committed", np.concatenate(transaction.stamps))
        self.processor.committed(task, _written(transaction.sent))
        self.attempts.succeeded(transaction.key)
        self.records_in += transaction.records
        self.records_out += transaction.outputs
        TRANSACTION_SECONDS.labels(self.service).observe(time.monotonic() - transaction.began)
        return True

    async def _reread(self, task: int, transaction: _OpenTransaction) -> None:
        """A batch after the first of an open transaction failed in the processor: the
        transaction is aborted and its records read again from the committed offset, so
        that the failing batch comes first and its records are isolated one by one."""
        self._open.pop(task, None)
        self.processor.aborted(task)
        log.info("task %d: a batch failed in the processor; reading on from the last commit", task)
        try:
            await transaction.producer.abort_transaction()
        except KafkaError as exc:
            await self._failed(
                task, transaction.producer, transaction.partitions(), transaction.key, exc
            )
            return
        await self._reposition(task, transaction.partitions())

    async def _process_off_loop(
        self,
        task: int,
        records: list[ConsumerRecord],
        transaction: _OpenTransaction | None = None,
    ) -> list[Outgoing]:
        """:meth:`_process`, in the executor when there is one. In an open transaction with
        earlier batches, a processor failure raises _Reread instead of isolating records:
        isolation aborts the processor's state, and that of the earlier batches with it."""
        isolate = transaction is None or transaction.batches == 0
        executor = self.executor() if self.executor is not None else None
        if executor is None:
            return self._process(task, records, isolate)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, self._process, task, records, isolate)

    def _in_flight(self, mode: InFlightMode) -> AbstractAsyncContextManager[None]:
        """Side by side with other tasks' batches, or alone in the process (a crash while
        handling these records then names them)."""
        if self.crash_guard is None:
            return nullcontext()
        return self._quarantine.shared() if mode == SHARED else self._quarantine.solo()

    async def _batch(
        self,
        task: int,
        parts: dict[TopicPartition, list[ConsumerRecord]],
        batch_key: tuple[str, str, int, int],
        mode: InFlightMode,
    ) -> bool:
        """The records in one transaction; False when the task must stop here."""
        producer = await self._producer_for(task)
        records = [record for records in parts.values() for record in records]
        async with self._in_flight(mode):
            if self.crash_guard is not None:  # before scoring: a native crash there counts
                [(tp, recs)] = parts.items()
                await self.crash_guard.begin(
                    tp.topic, tp.partition, recs[0].offset, recs[-1].offset, mode
                )
            try:
                outgoing = await self._process_off_loop(task, records)
                async with producer.transaction():
                    sent = await self._send(producer, outgoing)
                    await producer.send_offsets_to_transaction(
                        {tp: recs[-1].offset + 1 for tp, recs in parts.items()}, self.group
                    )
            except ProducerFenced:
                await self._fenced(task, producer, list(parts))
                return False
            except KafkaError as exc:
                await self._failed(task, producer, list(parts), batch_key, exc)
                return False
        self._settled({tp: recs[-1].offset for tp, recs in parts.items()})
        self._reached("committed", _stamps(records))
        self.processor.committed(task, _written(sent))
        self.attempts.succeeded(batch_key)
        self.records_in += len(records)
        self.records_out += len(outgoing)
        return True

    def _settled(self, last: dict[TopicPartition, int]) -> None:
        """Records up to ``last`` (of each partition) are committed."""
        if self.crash_guard is not None:
            for tp, offset in last.items():
                self.crash_guard.done(tp.topic, tp.partition, offset)

    async def _one_by_one(
        self, task: int, tp: TopicPartition, records: list[ConsumerRecord], mode: InFlightMode
    ) -> bool:
        """Each record in a transaction of its own; False when the task must stop here."""
        for record in records:
            if not await self._transact_one(task, tp, record, mode):
                return False
        return True

    async def _transact_one(
        self, task: int, tp: TopicPartition, record: ConsumerRecord, mode: InFlightMode = SHARED
    ) -> bool:
        """One record in a transaction of its own; False when the task must stop here.
        ``mode`` RECORD: a crash suspect, handled with nothing else in flight in this process,
        dead-lettered past the bound of crashes."""
        producer = await self._producer_for(task)
        position = (record.topic, record.partition, record.offset)
        record_key = ("record", *position)
        guard = self.crash_guard
        crashes = guard.crashes(*position) if guard is not None and mode == RECORD else 0
        async with self._in_flight(mode):
            if guard is not None:  # before handling: a native crash there counts
                await guard.begin(
                    record.topic, record.partition, record.offset, record.offset, mode
                )
            try:
                if (guard is not None and crashes >= guard.bound) or self.attempts.exhausted(
                    record_key
                ):
                    reason = "crashed-service" if crashes else "failed-repeatedly"
                    outgoing = self._dead_letter(
                        record,
                        Failure(
                            reason,
                            f"handling this record failed {max(crashes, self.attempts.bound)} "
                            "times; dead-lettered without handling it again",
                        ),
                    )
                else:
                    outgoing = await self._process_off_loop(task, [record])
                async with producer.transaction():
                    sent = await self._send(producer, outgoing)
                    await producer.send_offsets_to_transaction({tp: record.offset + 1}, self.group)
            except ProducerFenced:
                await self._fenced(task, producer, [tp])
                return False
            except KafkaError as exc:
                await self._failed(task, producer, [tp], record_key, exc)
                return False
        self._settled({tp: record.offset})
        self._reached("committed", _stamps([record]))
        self.processor.committed(task, _written(sent))
        self.attempts.succeeded(record_key)
        self.records_in += 1
        self.records_out += len(outgoing)
        return True

    async def _fenced(
        self, task: int, producer: AIOKafkaProducer, tps: list[TopicPartition]
    ) -> None:
        """Another member took the task over, or will: our batch was aborted, not lost. If
        the task is still ours (the rebalance has not reached us yet), read on from the
        committed offset, not from after the aborted batch."""
        log.warning("fenced on task %d: another member took it over", task)
        self.processor.aborted(task)
        await self._retire(task, producer)
        await self._reposition(task, tps)

    async def _failed(
        self,
        task: int,
        producer: AIOKafkaProducer,
        tps: list[TopicPartition],
        key: tuple[str, str, int, int],
        exc: Exception,
    ) -> None:
        """A transaction that did not commit: the task's producer is replaced (it may be
        unusable, see compat.retire_producer) and the batch read again from the committed
        offset; past the bound of attempts the batch goes record by record (and a record
        that keeps failing is dead-lettered)."""
        count = self.attempts.failed(key)
        log.warning(
            "transaction on task %d failed (%d time(s) at %s): %s: %s",
            task,
            count,
            key,
            type(exc).__name__,
            exc,
        )
        self.processor.aborted(task)
        await self._retire(task, producer)
        await self._reposition(task, tps)

    async def _retire(self, task: int, producer: AIOKafkaProducer) -> None:
        if self._producers.get(task) is producer:
            del self._producers[task]
        await retire_producer(producer)

    async def _reposition(self, task: int, tps: list[TopicPartition]) -> None:
        """The task reads on from its committed offset (those of its partitions still
        assigned); whatever was fetched from the old position is void."""
        assigned = [tp for tp in tps if tp in self.consumer.assignment()]
        self.consumer.pause(*assigned)
        self._pending.pop(task, None)
        try:
            await self._seek_to_committed(assigned)
        finally:
            self._pending.pop(task, None)  # queued while the committed offsets were read
            self.consumer.resume(*[tp for tp in assigned if tp in self.consumer.assignment()])

    def _process(
        self, task: int, records: list[ConsumerRecord], isolate: bool = True
    ) -> list[Outgoing]:
        """The processor's outputs, with every record it cannot handle, and every output a
        topic would refuse, turned into a dead letter of the record at fault. ``isolate``
        False: a failure raises _Reread (see _process_off_loop)."""
        try:
            outgoing = self.processor.process(task, records)
        except Exception as exc:
            if not isolate:
                raise _Reread from exc
            if len(records) == 1:
                return self._dead_letter(records[0], self.boundary.failure(exc))
            self.processor.aborted(task)
            # Find the record at fault: each alone (the good ones are processed normally).
            outgoing = []
            for record in records:
                outgoing.extend(self._process(task, [record]))
            return outgoing
        return self._fitted(outgoing)

    def _fitted(self, outgoing: list[Outgoing]) -> list[Outgoing]:
        """The outputs a topic takes; for the record behind those it would refuse, one dead
        letter (however many of its outputs are too large). Its other outputs stay: a
        processor's state (a changelog) must match what it keeps in memory."""
        limits = self.topic_limits
        too_large: dict[int, tuple[ConsumerRecord, Failure]] = {}
        refused: set[int] = set()  # positions in ``outgoing``
        for i, out in enumerate(outgoing):
            limit = limits.get(out.topic)
            if limit is None or out.source is None:
                continue
            size = len(out.value or b"") + len(out.key or b"") + FRAMING_BYTES
            if size <= limit:
                continue
            refused.add(i)
            too_large.setdefault(
                id(out.source),
                (
                    out.source,
                    Failure(
                        "output-too-large",
                        f"its {out.topic} record would have {size} bytes; the topic takes {limit}",
                    ),
                ),
            )
        if not too_large:
            return outgoing
        kept = [out for i, out in enumerate(outgoing) if i not in refused]
        for record, failure in too_large.values():
            kept.extend(self._dead_letter(record, failure))
        return kept

    def _dead_letter(self, record: ConsumerRecord, failure: Failure) -> list[Outgoing]:
        """The record's dead letter, and what the processor sends with it."""
        self.boundary.reject(record.topic, record.partition, record.offset, failure)
        DEAD_LETTERS.labels(self.service, "").inc()
        return [
            dead_letter(
                self.deadletter_topic, self.service, record, record.key, record.value, failure
            ),
            *self.processor.dead_lettered(record, failure),
        ]

    async def _at_least_once(
        self, task: int, parts: dict[TopicPartition, list[ConsumerRecord]]
    ) -> None:
        """Outputs sent at once; their offsets acknowledged, in order, once the outputs are
        (the lane goes on meanwhile, up to ALO_BATCHES_IN_FLIGHT batches ahead)."""
        assert self._shared is not None
        assignment = self.consumer.assignment()
        if any(tp not in assignment for tp in parts):
            return
        records = [record for recs in parts.values() for record in recs]
        outgoing = await self._process_off_loop(task, records)
        stamps = _stamps(records)
        self._reached("processed", stamps)
        sent = await self._send(self._shared, outgoing)
        waiting = self._unacknowledged.setdefault(task, deque())
        waiting.append(
            _Unacknowledged(
                asyncio.gather(*(s.future for s in sent)),
                {tp: recs[-1].offset + 1 for tp, recs in parts.items()},
                sent,
                len(records),
                len(outgoing),
                stamps,
            )
        )
        while waiting and (len(waiting) > ALO_BATCHES_IN_FLIGHT or waiting[0].acks.done()):
            await self._acknowledge_oldest(task)

    async def _acknowledge_oldest(self, task: int) -> None:
        """The task's oldest unacknowledged batch, once acknowledged: its offsets go to the
        next commit. A batch the broker refused takes the pipeline down (at least once: it
        is read again after the restart)."""
        batch = self._unacknowledged[task][0]
        await batch.acks
        self._unacknowledged[task].popleft()
        self._reached("sent", batch.stamps)
        self._reached("committed", batch.stamps)
        # Committed by the fetch loop with the other lanes' (one request, not one per lane).
        self._acknowledged.update(
            {tp: offset for tp, offset in batch.offsets.items() if tp in self.consumer.assignment()}
        )
        self.processor.committed(task, _written(batch.sent))
        self.records_in += batch.records
        self.records_out += batch.outputs

    async def _punctuate(self) -> None:
        """Outputs no input asked for, one transaction per task that has any."""
        for task in sorted(self.assigned_tasks()):
            lane = self._lanes.get(task)
            if lane is not None and not lane.done():
                continue  # busy: punctuated on a later round
            outgoing = self.processor.punctuate(task)
            if not outgoing:
                continue
            if not self.exactly_once:
                assert self._shared is not None
                sent = await self._send(self._shared, outgoing)
                await asyncio.gather(*(s.future for s in sent))
                self.processor.committed(task, _written(sent))
                continue
            producer = await self._producer_for(task)
            try:
                async with producer.transaction():
                    sent = await self._send(producer, outgoing)
            except ProducerFenced:
                await self._fenced(task, producer, [])
                continue
            except KafkaError as exc:
                log.warning("punctuation of task %d failed: %s: %s", task, type(exc).__name__, exc)
                self.processor.aborted(task)
                await self._retire(task, producer)
                continue
            self.processor.committed(task, _written(sent))

    async def _send(self, producer: AIOKafkaProducer, outgoing: list[Outgoing]) -> list[_Sent]:
        grouped: dict[tuple[str, int], list[Outgoing]] = defaultdict(list)
        for out in outgoing:
            partition = out.partition
            if partition is None:
                partition = key_partition(out.key, await self._count(producer, out.topic))
            grouped[(out.topic, partition)].append(out)
        sent = []
        for (topic, partition), items in grouped.items():
            builder = producer.create_batch()
            for out in items:
                headers = list(out.headers) if out.headers else []
                if builder.append(key=out.key, value=out.value, timestamp=None, headers=headers):
                    continue
                sent.append(await _send_batch(producer, builder, topic, partition))  # full
                builder = producer.create_batch()
                builder.append(key=out.key, value=out.value, timestamp=None, headers=headers)
            if builder.record_count():
                sent.append(await _send_batch(producer, builder, topic, partition))
        return sent

    async def _count(self, producer: AIOKafkaProducer, topic: str) -> int:
        count = self._partition_counts.get(topic)
        if count is None:
            count = len(await producer.partitions_for(topic))
            self._partition_counts[topic] = count
        return count

    async def lag(self) -> dict[TopicPartition, int]:
        """Records behind the end of each assigned partition (from the last fetch)."""
        return await consumer_lag(self.consumer)


class _Reread(Exception):
    """A batch of an open transaction failed in the processor (see _process_off_loop)."""


class _OpenTransaction:
    """A task's transaction between its first batch and its commit."""

    def __init__(self, producer: AIOKafkaProducer, key: tuple[str, str, int, int]) -> None:
        self.producer = producer
        self.key = key  # the first batch's: the transaction's failures are counted on it
        self.began = time.monotonic()
        self.first: dict[TopicPartition, int] = {}  # offsets of its first records
        self.offsets: dict[TopicPartition, int] = {}  # offsets to commit (next to read)
        self.sent: list[_Sent] = []
        self.stamps: list[np.ndarray] = []  # each batch's record timestamps, seconds
        self.batches = 0
        self.records = 0
        self.outputs = 0

    def added(self, parts: dict[TopicPartition, list[ConsumerRecord]], outputs: int) -> None:
        for tp, recs in parts.items():
            self.offsets[tp] = recs[-1].offset + 1
            self.records += len(recs)
        self.batches += 1
        self.outputs += outputs

    def partitions(self) -> list[TopicPartition]:
        return list(self.first)


@dataclass(frozen=True, slots=True)
class _Unacknowledged:
    """An at-least-once batch sent, its offsets waiting for the outputs' acknowledgement."""

    acks: asyncio.Future[list[Any]]
    offsets: dict[TopicPartition, int]
    sent: list[_Sent]
    records: int
    outputs: int
    stamps: np.ndarray  # the records' timestamps, seconds


@dataclass(frozen=True, slots=True)
class _Sent:
    future: Any  # resolves to the RecordMetadata of the batch's first record
    topic: str
    partition: int
    count: int


async def _send_batch(
    producer: AIOKafkaProducer, builder: Any, topic: str, partition: int
) -> _Sent:
    count = builder.record_count()
    return _Sent(
        await producer.send_batch(builder, topic, partition=partition), topic, partition, count
    )


def _stamps(records: Sequence[ConsumerRecord]) -> np.ndarray:
    """The records' timestamps in seconds (their producers' clocks)."""
    return np.fromiter((r.timestamp for r in records), np.float64, len(records)) / 1000.0


def _written(sent: list[_Sent]) -> dict[tuple[str, int], int]:
    """Where the records of committed (so resolved) batches landed."""
    written: dict[tuple[str, int], int] = {}
    for batch in sent:
        last = batch.future.result().offset + batch.count - 1
        key = (batch.topic, batch.partition)
        written[key] = max(written.get(key, -1), last)
    return written
