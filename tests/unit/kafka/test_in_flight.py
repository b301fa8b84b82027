"""Crash counts kept in Kafka: what a new owner makes of the markers it reads, and the
quarantine that lets a crash name one record."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import InFlightMarker
from modelstream.kafka import in_flight
from modelstream.kafka.in_flight import BATCH, RECORD, KafkaCrashGuard, Quarantine
from modelstream.settings import load

TOPIC = "t.requests"
SIDEWAYS: InFlightMarker = {"first": 0, "last": 0, "mode": RECORD, "crashes": 0}


def marker(partition: int, value: Any) -> ConsumerRecord:
    raw = value if isinstance(value, bytes) else default_codec().encode(InFlightMarker, value)
    key = f"{TOPIC}:{partition}".encode()
    return ConsumerRecord("t.in-flight", 0, 0, 0, 0, key, raw, None, 0, len(raw), [])


async def guard_after(markers: list[ConsumerRecord], committed: dict[int, int], monkeypatch):  # type: ignore[no-untyped-def]
    async def read_to_end(settings: Any, topic: str) -> Any:
        for record in markers:
            yield record

    monkeypatch.setattr(in_flight, "read_to_end", read_to_end)
    guard = KafkaCrashGuard(load(bootstrap_servers="127.0.0.1:1"), "t.in-flight")
    await guard.assigned({TopicPartition(TOPIC, p): o for p, o in committed.items()})
    return guard


async def test_a_marker_at_the_committed_offset_makes_its_records_suspect_step_by_step(  # type: ignore[no-untyped-def]
    monkeypatch,
):
    markers = [
        marker(0, {"first": 10, "last": 19, "mode": "SHARED", "crashes": 0}),
        marker(1, {"first": 20, "last": 29, "mode": "BATCH", "crashes": 0}),
        marker(2, {"first": 30, "last": 30, "mode": "RECORD", "crashes": 1}),
        marker(3, {"first": 40, "last": 49, "mode": "SHARED", "crashes": 0}),  # committed since
        marker(4, b"\xc3\x01 not a marker"),
        marker(5, {"first": 1, "last": 0, "mode": "SHARED", "crashes": 0}),
        marker(6, default_codec().encode(InFlightMarker, SIDEWAYS)[:-1]),  # truncated
    ]
    committed = {0: 10, 1: 20, 2: 30, 3: 50, 4: 0, 5: 1, 6: 0}
    guard = await guard_after(markers, committed, monkeypatch)
    # died beside other batches: that batch again, alone; its crash counts nothing yet
    assert guard.suspect(TOPIC, 0, 10) == in_flight.Suspect(10, 19, BATCH, 0)
    assert guard.suspect(TOPIC, 0, 20) is None
    # died with that batch alone: its records one by one, alone
    assert guard.suspect(TOPIC, 1, 25) == in_flight.Suspect(20, 29, RECORD, 0)
    # died with one record alone, once before: twice now, the bound
    assert guard.crashes(TOPIC, 2, 30) == 2 and guard.suspect(TOPIC, 2, 30) is not None
    for partition in (3, 4, 5, 6):
        assert guard.suspect(TOPIC, partition, committed[partition]) is None
    # settled step by step: what is left of a range stays in its step
    guard.done(TOPIC, 1, 22)
    assert guard.suspect(TOPIC, 1, 23) == in_flight.Suspect(23, 29, RECORD, 0)
    guard.done(TOPIC, 1, 29)
    assert guard.suspect(TOPIC, 1, 29) is None


async def test_solo_waits_for_every_batch_in_flight_and_holds_new_ones_back():
    quarantine = Quarantine()
    events: list[str] = []
    release = asyncio.Event()

    async def batch(name: str, wait: bool) -> None:
        async with quarantine.shared():
            events.append(f"{name} in")
            if wait:
                await release.wait()
            events.append(f"{name} out")

    async def alone() -> None:
        async with quarantine.solo():
            events.append("solo in")
            await asyncio.sleep(0)
            events.append("solo out")

    first = asyncio.create_task(batch("a", wait=True))
    await asyncio.sleep(0.01)
    solo = asyncio.create_task(alone())
    await asyncio.sleep(0.01)
    late = asyncio.create_task(batch("b", wait=False))  # arrives while solo waits
    await asyncio.sleep(0.01)
    assert events == ["a in"]
    release.set()
    await asyncio.gather(first, solo, late)
    assert events == ["a in", "a out", "solo in", "solo out", "b in", "b out"]
