"""A stateful stage's tables kept in a compacted topic: partition ``p`` holds task ``p``'s state.

The stage writes its state changes to the changelog in the same transaction as its outputs
and input offsets (see :mod:`modelstream.kafka.pipeline`), so the changelog up to the
committed offsets is exactly the state those offsets imply. When a task is assigned, its
state is read back before any of its records is processed:

* a task this process never held (or held too long ago) is read from the beginning;
* a task it still holds - kept across the rebalance, or back after a short absence - is only
  *caught up*: read from the first offset after the last record this process wrote, so a copy
  that keeps its partitions reads nothing, and one whose task moved away and back applies
  only what the other owner wrote meanwhile (every changelog record is an upsert or a
  tombstone of one key, so applying the later ones over the earlier state gives the
  newest).

Reading stops at the end offset taken after the previous owner was fenced (its last
transaction is then complete), read_committed, so aborted writes are never restored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import ConsumerRecord, TopicPartition

from modelstream.kafka.clients import drain, make_consumer
from modelstream.kafka.pipeline import Written
from modelstream.runner import Managed
from modelstream.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Restored:
    """How one task's state was brought up to date."""

    task: int
    records: int
    seconds: float
    incremental: bool  # caught up from what this process held, not read from the beginning


class Changelog(Managed):
    def __init__(self, settings: Settings, topic: str, *, keep_s: float = 300.0) -> None:
        self.topic = topic
        self.keep_s = keep_s  # how long the state of a task that moved away stays usable
        self._consumer = make_consumer(
            settings, group_id=None, fetch_max_wait_ms=20, max_partition_fetch_bytes=8 << 20
        )
        self._next: dict[int, int] = {}  # task -> first offset this process has not applied
        self._left_at: dict[int, float] = {}  # task -> when it was revoked

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    def wrote(self, task: int, written: Written) -> None:
        """A transaction of ``task`` committed (its state changes are applied)."""
        last = written.get((self.topic, task))
        if last is not None:
            self._next[task] = last + 1

    def left(self, task: int) -> None:
        self._left_at[task] = time.monotonic()

    def holds(self, task: int) -> bool:
        """Whether this process's state of ``task`` can be caught up rather than re-read."""
        if task not in self._next:
            return False
        left_at = self._left_at.get(task)
        return left_at is None or time.monotonic() - left_at < self.keep_s

    def stale(self) -> list[int]:
        """Tasks away for longer than ``keep_s``: their state is no longer worth keeping."""
        now = time.monotonic()
        return [task for task, at in self._left_at.items() if now - at >= self.keep_s]

    def forget(self, task: int) -> None:
        self._next.pop(task, None)
        self._left_at.pop(task, None)

    async def restore(
        self,
        task: int,
        apply: Callable[[ConsumerRecord], None],
        reset: Callable[[], None],
        *,
        timeout_s: float = 300.0,
    ) -> Restored:
        """Bring ``task``'s state up to the end of its partition: ``apply`` each record after
        what is held, or ``reset`` the state first and apply every record."""
        started = time.perf_counter()
        tp = TopicPartition(self.topic, task)
        self._consumer.assign([tp])
        first = (await self._consumer.beginning_offsets([tp]))[tp]
        start = self._next.get(task) if self.holds(task) else None
        incremental = start is not None and start >= first
        if start is None or not incremental:
            reset()
            start = first
        self._consumer.seek(tp, start)
        end = (await self._consumer.end_offsets([tp]))[tp]
        count = 0
        async for record in drain(self._consumer, {tp: end}, timeout_s):
            apply(record)
            count += 1
        self._next[task] = end
        self._left_at.pop(task, None)
        restored = Restored(task, count, time.perf_counter() - started, incremental)
        log.info(
            "%s[%d]: %s %d records in %.3f s",
            self.topic,
            task,
            "caught up" if incremental else "restored",
            count,
            restored.seconds,
        )
        return restored
