"""Poison records on the kept-forever `control` topic, already there when the services start
and still there when they restart: each is dead-lettered once (by the publisher, which owns
`control`'s dead letters), every service that follows `control` skips and counts it, nothing
crash-loops, and a command sent after the restart is handled too."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import pytest

from modelstream.contracts.builders import command
from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import Command
from modelstream.kafka.control import send_command
from modelstream.settings import Settings
from tests.support.helpers import eventually, produce, read_all
from tests.support.processes import ServiceProcess
from tests.support.samples import SAMPLES

pytestmark = pytest.mark.faults
CODEC = default_codec()
FOLLOWERS = ("trainer", "publisher")


def poison() -> list[tuple[bytes | None, bytes | None]]:
    rollback = dict(SAMPLES["Command"], action="ROLLBACK", definition=None)
    return [
        (b"breast-cancer", None),  # a tombstone
        (None, b""),
        (b"breast-cancer", b'{"model": "breast-cancer", "action": ' + b"[" * 5000 + b"]" * 5000),
        # a version past Avro's int: writing it anywhere would fail
        (
            b"breast-cancer",
            CODEC.encode_json(Command, dict(rollback, version=1)).replace(
                b'"version":1', b'"version":99999999999'
            ),
        ),
        (b"no-such-model", CODEC.encode(Command, dict(rollback, model="no-such-model", version=3))),
    ]


async def _dead(base: Settings) -> list[dict[str, str]]:
    return [
        {k: v.decode() for k, v in record.headers} for record in await read_all(base, "deadletter")
    ]


async def test_poison_on_control_before_a_restart_is_dead_lettered_once(
    topics: Settings, keys: Path, tmp_path: Path
) -> None:
    base = topics
    records = poison()
    await produce(base, "control", records)

    def start(run: int) -> list[ServiceProcess]:
        extra = {"MODELSTREAM_PRIVATE_KEY_FILE": str(keys / "modelstream.key")}
        return [ServiceProcess(s, base, keys, f"run{run}", tmp_path, **extra) for s in FOLLOWERS]

    async def dead_letters_of_control() -> Counter[str]:
        return Counter(
            h["source.offset"]
            for h in await _dead(base)
            if h["source.topic"] == base.topic("control")
        )

    for run in (1, 2):
        services = start(run)
        try:
            await eventually(
                lambda services=services: all(
                    s.metric("modelstream_service_ready", service=s.service) == 1 for s in services
                ),
                90,
                f"run {run}: every service ready",
            )
            if run == 2:  # the publisher reads on: a new command is handled
                await send_command(base, command("no-such-model", "TRAIN"))
            wanted = len(records) + (1 if run == 2 else 0)

            async def all_there(wanted: int = wanted) -> bool:
                return sum((await dead_letters_of_control()).values()) >= wanted

            deadline = asyncio.get_running_loop().time() + 90
            while not await all_there():
                assert asyncio.get_running_loop().time() < deadline, await _dead(base)
                await asyncio.sleep(0.5)
            await asyncio.sleep(3)  # a second dead letter of the same record would arrive now
            counts = await dead_letters_of_control()
            assert set(counts.values()) == {1}, counts  # each one exactly once, across runs
            assert len(counts) == wanted
            for service in services:
                assert service.process.poll() is None, service.output()
                skipped = service.metric(
                    "modelstream_records_rejected_total", service=service.service, topic="control"
                )
                # The trainer replays `control` from the start at every start: it skips the
                # four that do not decode again (and, in run 2, the TRAIN of an unknown
                # model; it ignores rollbacks). The publisher reads on from its committed
                # offset: after the restart it sees only the new command.
                if service.service == "publisher":
                    expected = len(records) if run == 1 else 1
                else:
                    expected = len(records) - 1 + (run - 1)
                assert skipped == expected, (service.service, skipped, service.output())
        finally:
            for service in services:
                service.process.send_signal(signal.SIGTERM)
            for service in services:
                assert await asyncio.to_thread(service.process.wait, 60) == 0, service.output()
                service.stop()

    reasons = Counter(h["reason"] for h in await _dead(base) if h["service"] == "publisher")
    print("control dead letters by reason:", dict(reasons))
    assert reasons["unknown-model"] >= 2  # the rollback and the TRAIN of a model nobody defined
