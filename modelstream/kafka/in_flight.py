"""Crash counts that follow the partition, not the process: kept in Kafka.

Before a member handles records of a partition it writes a marker (an ``InFlightMarker``,
Avro like every value) to the compacted topic ``<prefix><service>-in-flight``, keyed by the
input partition: the first and last offsets it
is about to handle, how (``mode``) and, for a record handled alone, how often handling it
has already taken a process down. Nothing is written afterwards: once the transaction
commits, the group's committed offset has moved past the marker, which makes it stale.
Whoever is assigned the partition next (the restarted copy, or another one) reads the
markers: a marker at exactly the committed offset names records that were in flight when
their owner died, and they are handled more carefully, in steps, each with nothing else in
flight in the process (``solo``, see :class:`Quarantine`), so that a crash names them:

1. ``SHARED`` (batches of several partitions side by side): the batch's range is handled
   again as one batch, alone;
2. ``BATCH`` (that batch, alone): its records are handled one by one, alone;
3. ``RECORD`` (one record, alone): that record has crashed once more; past the bound it is
   dead-lettered (``crashed-service``) unhandled, whichever copy meets it.

A poison record thus takes processes down bound + 2 times. Records in flight beside it are
handled again in steps 1 and 2 and never dead-lettered for it; a member fenced in the middle
of a batch (paused past its session, not dead) costs its successor step 1 for that batch:
one transaction handled alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer, TopicPartition

from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import InFlightMarker, InFlightMode
from modelstream.errors import DecodeError, InvalidEventError
from modelstream.kafka.clients import make_producer, read_to_end
from modelstream.kafka.compat import fresh_partition_count
from modelstream.settings import Settings

log = logging.getLogger(__name__)

SHARED, BATCH, RECORD = InFlightMode.SHARED, InFlightMode.BATCH, InFlightMode.RECORD
NEXT_STEP = {SHARED: BATCH, BATCH: RECORD, RECORD: RECORD}


@dataclass(frozen=True)
class Suspect:
    """Records of one partition that were in flight when a process died, and how to
    handle them now: ``batch`` (again as one batch, alone) or ``record`` (one by one)."""

    first: int
    last: int
    step: InFlightMode
    crashes: int = 0  # of ``first`` alone (step ``record``)


class KafkaCrashGuard:
    """The pipeline's crash guard, its state kept in ``topic`` (see the module's text)."""

    def __init__(self, settings: Settings, topic: str, bound: int = 2) -> None:
        self.settings = settings
        self.topic = topic
        self.bound = bound
        self._producer: AIOKafkaProducer | None = None
        self._suspects: dict[tuple[str, int], Suspect] = {}
        self._topic_missing = False
        self._codec = default_codec()

    async def start(self) -> None:
        self._producer = make_producer(self.settings, acks="all", linger_ms=0)
        await self._producer.start()
        if not await fresh_partition_count(self._producer, self.topic):
            # provisioned before this topic existed: serve, without crash counts
            log.warning(
                "no %s topic: native crashes are not counted "
                "(create it with `modelstream topics create`)",
                self.topic,
            )
            self._topic_missing = True
            await self.stop()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def assigned(self, committed: dict[TopicPartition, int]) -> None:
        """Before the first batch of newly assigned partitions: which records a previous
        owner was handling, and how, when it died."""
        if self._topic_missing:
            return
        markers: dict[str, InFlightMarker] = {}
        async for record in read_to_end(self.settings, self.topic):
            try:
                marker = self._codec.decode(record.value, InFlightMarker)
            except (DecodeError, InvalidEventError):
                continue  # not ours to judge: a marker we cannot read counts nothing
            if marker["first"] <= marker["last"]:
                markers[(record.key or b"").decode(errors="replace")] = marker
        for tp, offset in committed.items():
            self._suspects.pop((tp.topic, tp.partition), None)
            marked = markers.get(_key(tp.topic, tp.partition))
            if marked is None or marked["first"] != offset:
                continue
            first, last, mode = marked["first"], marked["last"], InFlightMode(marked["mode"])
            crashes = marked["crashes"]
            suspect = Suspect(first, last, NEXT_STEP[mode], crashes + 1 if mode == RECORD else 0)
            self._suspects[(tp.topic, tp.partition)] = suspect
            log.warning(
                "%s[%d]@%d..%d was in flight (%s) when its owner died: handling it %s",
                tp.topic,
                tp.partition,
                first,
                last,
                mode,
                "one record at a time, alone" if suspect.step == RECORD else "again, alone",
            )

    def suspect(self, topic: str, partition: int, offset: int) -> Suspect | None:
        """How records from ``offset`` on are to be handled, if a crash made them suspect."""
        found = self._suspects.get((topic, partition))
        return found if found is not None and found.first <= offset <= found.last else None

    def crashes(self, topic: str, partition: int, offset: int) -> int:
        """How often handling this record alone took a process down."""
        found = self._suspects.get((topic, partition))
        return found.crashes if found is not None and found.first == offset else 0

    async def begin(
        self, topic: str, partition: int, first: int, last: int, mode: InFlightMode
    ) -> None:
        """Mark these records as in flight, acknowledged by the broker, before any of them is
        handled; ``mode``: side by side with other batches, or alone as a batch or record."""
        if self._producer is None:  # no topic for the markers
            return
        marker: InFlightMarker = {
            "first": first,
            "last": last,
            "mode": mode,
            "crashes": self.crashes(topic, partition, first) if mode == RECORD else 0,
        }
        await self._producer.send_and_wait(
            self.topic,
            key=_key(topic, partition).encode(),
            value=self._codec.encode(InFlightMarker, marker),
        )

    def done(self, topic: str, partition: int, last: int) -> None:
        """Records up to ``last`` are committed: what was suspect of them is settled."""
        found = self._suspects.get((topic, partition))
        if found is None:
            return
        if last >= found.last:
            del self._suspects[(topic, partition)]
        elif last >= found.first:  # the rest of the range, still in the same step
            self._suspects[(topic, partition)] = Suspect(last + 1, found.last, found.step)


class Quarantine:
    """Batches side by side (``shared``), or one record with nothing else in flight
    (``solo``): a crash then names that record. A waiting ``solo`` holds new ``shared``
    entries back, so it is not starved under load."""

    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self._shared = 0
        self._solo = False
        self._solo_waiting = 0

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._solo and not self._solo_waiting)
            self._shared += 1
        try:
            yield
        finally:
            async with self._changed:
                self._shared -= 1
                self._changed.notify_all()

    @asynccontextmanager
    async def solo(self) -> AsyncIterator[None]:
        async with self._changed:
            self._solo_waiting += 1
            try:
                await self._changed.wait_for(lambda: not self._solo and not self._shared)
            finally:
                self._solo_waiting -= 1
            self._solo = True
        try:
            yield
        finally:
            async with self._changed:
                self._solo = False
                self._changed.notify_all()


def _key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"
