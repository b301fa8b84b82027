"""The two side outputs every service writes: dead letters and audit events.

A dead letter is the original record, key and bytes unchanged, with headers saying why and
where it came from, so an operator can group failures by ``reason`` and replay a record from
its source coordinates.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol, cast

from aiokafka import AIOKafkaProducer

from modelstream.contracts.builders import audit_event
from modelstream.contracts.codec import AvroCodec, default_codec
from modelstream.contracts.records import AuditEvent

log = logging.getLogger(__name__)

Header = tuple[str, bytes]
MAX_ERROR_TEXT = 1000


class Position(Protocol):
    """Where a record was read: aiokafka's ConsumerRecord and faust's Message both are one."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


@dataclass(frozen=True, slots=True)
class SourcePosition:
    """A position named explicitly, for a dead letter whose source is not the record at hand
    (for example the feedback record behind an unusable join)."""

    topic: str
    partition: int
    offset: int


def dead_letter_headers(source: Position, reason: str, message: str, service: str) -> list[Header]:
    return [
        ("reason", reason.encode()),
        ("error", message[:MAX_ERROR_TEXT].encode("utf-8", "replace")),
        ("source.topic", source.topic.encode()),
        ("source.partition", str(source.partition).encode()),
        ("source.offset", str(source.offset).encode()),
        ("service", service.encode()),
        ("failed.at.ms", str(int(time.time() * 1000)).encode()),
    ]


class Sourced(Position, Protocol):
    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...


# The dead-letter topic takes records up to DEAD_LETTER_MAX_BYTES (topology), more than any
# input topic, so an input record always fits with its headers. A larger value (from a topic
# that takes large artifacts) is cut to this size; its length and SHA-256 stay in the headers.
DEAD_LETTER_MAX_BYTES = 4 * 1024 * 1024
DEAD_LETTER_MAX_VALUE = DEAD_LETTER_MAX_BYTES - 64 * 1024


def fitted_value(value: bytes | None) -> tuple[bytes | None, list[Header]]:
    """The value a dead letter can carry, and the headers that say what was cut."""
    if value is None or len(value) <= DEAD_LETTER_MAX_VALUE:
        return value, []
    return value[:DEAD_LETTER_MAX_VALUE], [
        ("value.truncated.from", str(len(value)).encode()),
        ("value.sha256", hashlib.sha256(value).hexdigest().encode()),
    ]


class DeadLetterWriter:
    """Sends an undecodable or invalid record, unchanged, to the dead-letter topic."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, service: str) -> None:
        self._producer = producer
        self._topic = topic
        self._service = service

    async def send(self, record: Sourced, reason: str, message: str) -> asyncio.Future[Any]:
        """Queue the record; returns its delivery future (await it before committing).

        Logged at DEBUG only: every caller has rejected the record through its boundary,
        which logs it (quietly under a flood) and counts it."""
        log.debug(
            "dead-letter %s[%d]@%d: %s: %s",
            record.topic,
            record.partition,
            record.offset,
            reason,
            message,
        )
        value, cut = fitted_value(record.value)
        key = record.key[: DEAD_LETTER_MAX_VALUE // 16] if record.key else record.key
        headers = dead_letter_headers(record, reason, message, self._service) + cut
        if key is None and value is None:
            # `send` refuses a record with neither key nor value, which any other client
            # writes: it goes as a batch of its own, to the source's partition number.
            batch = self._producer.create_batch()
            batch.append(key=None, value=None, timestamp=None, headers=headers)
            partitions = await self._producer.partitions_for(self._topic)
            return cast(
                "asyncio.Future[Any]",
                await self._producer.send_batch(
                    batch, self._topic, partition=record.partition % len(partitions)
                ),
            )
        future: asyncio.Future[Any] = await self._producer.send(
            self._topic, key=key, value=value, headers=headers
        )
        return future


class AuditWriter:
    """Sends audit events about models to the audit topic, keyed by model name, in the
    configured output format."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        service: str,
        output_format: str,
        codec: AvroCodec | None = None,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._service = service
        self._format = output_format
        self._codec = codec or default_codec()

    def event(self, model: str, event: str, **fields: Any) -> AuditEvent:
        """An event about ``model`` from this service (fields as for ``audit_event``)."""
        return audit_event(model, event, service=self._service, **fields)

    async def send(self, model: str, event: str, **fields: Any) -> asyncio.Future[Any]:
        """Queue one event (see :meth:`event` for the fields); returns its delivery future."""
        return await self.send_event(self.event(model, event, **fields))

    async def send_event(self, event: AuditEvent) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = await self._producer.send(
            self._topic,
            key=event["model"].encode(),
            value=self._codec.encode_as(AuditEvent, event, self._format),
        )
        return future
