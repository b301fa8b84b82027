"""Following the ``control`` topic: replay every command from the beginning, then poll.

Services that only need the current definitions (trainer, validator, predictor) read
``control`` without a consumer group, so each copy sees every command. The publisher,
which must act on each rollback exactly once, consumes it through its group instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiokafka import ConsumerRecord, TopicPartition

from modelstream.contracts.codec import default_codec
from modelstream.contracts.definitions import check_command
from modelstream.contracts.records import Command
from modelstream.kafka.boundary import Boundary
from modelstream.kafka.clients import make_consumer, make_producer, partitions_of
from modelstream.kafka.topology import CONTROL
from modelstream.runner import Managed
from modelstream.settings import Settings

log = logging.getLogger(__name__)


class ControlFollower(Managed):
    """Hands every valid command to ``apply(command, replay)``; skips (counts and logs) the
    rest, whatever they are: one bad record on this kept-forever topic must never stop a
    service, at start-up replay or later. (The publisher, its one reader in a consumer group,
    dead-letters them.) Use with ``async with``, then :meth:`replay` once and :meth:`poll`
    between batches."""

    def __init__(
        self, settings: Settings, apply: Callable[[Command, bool], None], service: str
    ) -> None:
        self._settings = settings
        self._apply = apply
        self._consumer = make_consumer(settings, group_id=None)
        self._codec = default_codec()
        self._limits = settings.limits()
        self._boundary = Boundary(service)

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def replay(self) -> list[Command]:
        """Apply the whole log (``replay=True``); returns the commands replayed."""
        topic = self._settings.topic(CONTROL)
        tps = await partitions_of(self._consumer, topic)
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        ends = await self._consumer.end_offsets(tps)
        replayed: list[Command] = []
        while await self._behind(ends):
            batch = await self._consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    cmd = self._handle(record, replay=True)
                    if cmd is not None:
                        replayed.append(cmd)
        return replayed

    async def _behind(self, ends: dict[TopicPartition, int]) -> bool:
        for tp, end in ends.items():
            if await self._consumer.position(tp) < end:
                return True
        return False

    async def poll(self, timeout_ms: int = 0) -> int:
        """Apply newly arrived commands; returns how many were applied."""
        applied = 0
        batch = await self._consumer.getmany(timeout_ms=timeout_ms)
        for records in batch.values():
            for record in records:
                if self._handle(record, replay=False) is not None:
                    applied += 1
        return applied

    def _handle(self, record: ConsumerRecord, replay: bool) -> Command | None:
        self._boundary.read(record.topic)
        try:
            cmd = self._codec.decode_any(record.value, Command, self._limits)
            check_command(cmd)
            self._apply(cmd, replay)
            return cmd
        except Exception as exc:
            failure = self._boundary.failure(exc)
            self._boundary.reject(record.topic, record.partition, record.offset, failure)
            return None


async def send_command(settings: Settings, cmd: Command) -> None:
    """Append one command to ``control`` (Avro), keyed by model name."""
    async with make_producer(settings) as producer:
        await producer.send_and_wait(
            settings.topic(CONTROL),
            key=cmd["model"].encode(),
            value=default_codec().encode(Command, cmd),
        )
