"""Dead letters carry their reason and source coordinates; audit events are encoded once."""

import asyncio

from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import AuditEvent
from modelstream.kafka.writers import (
    MAX_ERROR_TEXT,
    AuditWriter,
    DeadLetterWriter,
    SourcePosition,
    dead_letter_headers,
)


class Recorder:
    """Stands in for the producer: remembers what would be sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    async def send(self, topic: str, **kwargs: object) -> asyncio.Future[None]:
        self.sent.append((topic, kwargs))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def test_dead_letter_headers_name_reason_error_and_source():
    headers = dict(
        dead_letter_headers(SourcePosition("t", 4, 17), "bad-request-id", "x" * 5000, "monitor")
    )
    assert headers["reason"] == b"bad-request-id"
    assert headers["source.topic"] == b"t" and headers["source.partition"] == b"4"
    assert headers["source.offset"] == b"17" and headers["service"] == b"monitor"
    assert len(headers["error"]) == MAX_ERROR_TEXT and int(headers["failed.at.ms"]) > 0


async def test_dead_letter_writer_sends_the_record_unchanged():
    class Record:
        topic, partition, offset, key, value = "requests", 2, 9, b"k", b"\xff\x00 raw"

    producer = Recorder()
    await DeadLetterWriter(producer, "dl", "predictor").send(Record(), "undecodable", "why")
    [(topic, sent)] = producer.sent
    assert topic == "dl" and sent["key"] == b"k" and sent["value"] == b"\xff\x00 raw"
    assert dict(sent["headers"])["source.offset"] == b"9"


async def test_a_record_with_neither_key_nor_value_is_dead_lettered_as_a_batch():
    """aiokafka's `send` refuses such a record (an assertion), which any other client writes;
    it killed every service that dead-lettered one."""
    from aiokafka import AIOKafkaProducer

    class Record:
        topic, partition, offset, key, value = "control", 4, 3, None, None

    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")  # never started: no network
    sent: list[tuple[object, str, int]] = []

    async def partitions_for(topic: str) -> set[int]:
        return {0, 1, 2}

    async def send_batch(batch: object, topic: str, *, partition: int) -> asyncio.Future[None]:
        sent.append((batch, topic, partition))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        return future

    producer.partitions_for = partitions_for  # type: ignore[method-assign]
    producer.send_batch = send_batch  # type: ignore[method-assign]
    await DeadLetterWriter(producer, "dl", "publisher").send(Record(), "null-value", "tombstone")
    [(batch, topic, partition)] = sent
    assert topic == "dl" and partition == 4 % 3
    assert batch.record_count() == 1  # type: ignore[attr-defined]


async def test_audit_writer_encodes_in_the_configured_format():
    avro, json_ = Recorder(), Recorder()
    await AuditWriter(avro, "audit", "publisher", "avro").send("m", "published", version=3)
    await AuditWriter(json_, "audit", "publisher", "json").send("m", "published", version=3)
    codec = default_codec()
    for producer in (avro, json_):
        [(_, sent)] = producer.sent
        event = codec.decode_any(sent["value"], AuditEvent)
        assert sent["key"] == b"m" and event["event"] == "published" and event["version"] == 3
        assert event["service"] == event["actor"] == "publisher"
    assert json_.sent[0][1]["value"].startswith(b"{")
