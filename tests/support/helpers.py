"""Small helpers for integration tests: run services in-process, produce, consume."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from modelstream.contracts.builders import command
from modelstream.contracts.codec import default_codec
from modelstream.contracts.definitions import Definition
from modelstream.contracts.records import RECORD_TYPES, Action, Task
from modelstream.kafka.clients import ARTIFACT_REQUEST_BYTES
from modelstream.kafka.control import send_command
from modelstream.runner import Service
from modelstream.settings import Settings, load


@asynccontextmanager
async def running(service: Service):  # type: ignore[no-untyped-def]
    """Start a service, run it as a task, and stop it cleanly on exit."""
    try:
        await service.start()
    except BaseException:
        await service.stop()
        raise
    task = asyncio.create_task(service.run())
    task.add_done_callback(_report_crash)
    try:
        yield service
    finally:
        service.request_stop()
        try:
            await asyncio.wait_for(task, 30)
        finally:
            await service.stop()


def _report_crash(task: asyncio.Task) -> None:  # type: ignore[type-arg]
    if not task.cancelled() and task.exception() is not None:
        logging.getLogger("tests").error("service crashed", exc_info=task.exception())


async def produce(
    settings: Settings, topic: str, items: Iterable[tuple[bytes | None, bytes]]
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap,
        linger_ms=5,
        max_request_size=ARTIFACT_REQUEST_BYTES,  # artifacts, as the publisher writes them
    )
    await producer.start()
    try:
        futures = [await producer.send(settings.topic(topic), value=v, key=k) for k, v in items]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def produce_records(
    settings: Settings,
    topic: str,
    type_name: str,
    records: Iterable[dict[str, Any]],
    key: Callable[[dict], str],
) -> None:
    codec = default_codec()
    await produce(
        settings,
        topic,
        ((key(r).encode(), codec.encode(RECORD_TYPES[type_name], r)) for r in records),
    )


async def consume_until(
    settings: Settings,
    topic: str,
    done: Callable[[list[ConsumerRecord]], bool],
    timeout_s: float = 60.0,
) -> list[ConsumerRecord]:
    """Read ``topic`` from the beginning (read_committed) until ``done(records)``."""
    consumer = AIOKafkaConsumer(
        settings.topic(topic),
        bootstrap_servers=settings.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not done(records):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{topic}: condition not met after {timeout_s}s ({len(records)} records)"
                )
            batch = await consumer.getmany(timeout_ms=500)
            for recs in batch.values():
                records.extend(recs)
    finally:
        await consumer.stop()
    return records


def decoded(records: Iterable[ConsumerRecord], type_name: str) -> list[dict[str, Any]]:
    """Records of one contract, named as in ``schemas/`` (Avro or JSON values)."""
    codec = default_codec()
    record_type = RECORD_TYPES[type_name]
    return [codec.decode_any(r.value, record_type) for r in records]


async def read_all(settings: Settings, topic: str) -> list[ConsumerRecord]:
    """Every committed record of ``topic`` up to its end now."""
    from modelstream.kafka.clients import read_to_end

    return [record async for record in read_to_end(settings, settings.topic(topic))]


def cli(
    *args: str, timeout_s: float = 120, drop: tuple[str, ...] = (), **env: str
) -> subprocess.CompletedProcess[str]:
    """`modelstream ARGS` in a subprocess, with ``env`` added to (and ``drop`` removed from)
    this process's environment."""
    full_env = {k: v for k, v in os.environ.items() if k not in drop}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "modelstream.cli", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def failure_line(result: subprocess.CompletedProcess[str]) -> str:
    """The line a failed command wrote to stderr, checked to be its only one, without a
    traceback (what every command does when it fails: modelstream/cli/failures.py)."""
    assert result.returncode != 0, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


async def run_cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`modelstream ARGS` in a subprocess against ``settings``' broker and topic prefix."""
    return await asyncio.to_thread(
        cli,
        *args,
        MODELSTREAM_BOOTSTRAP_SERVERS=settings.bootstrap,
        MODELSTREAM_TOPIC_PREFIX=settings.topic_prefix,
        **env,
    )


async def define(settings: Settings, name: str, task: str, **definition: Any) -> None:
    """Send a DEFINE command for ``name`` (the other fields as for ``Definition``)."""
    await send_command(
        settings,
        command(
            name, Action.DEFINE, definition=Definition(name=name, task=Task(task), **definition)
        ),
    )


def service_settings(cls, base: Settings, keys: Path, **extra: Any):  # type: ignore[no-untyped-def]
    """A service's settings on ``base``'s broker and topic prefix, with the test's key pair
    and no /metrics endpoint."""
    return load(
        cls,
        bootstrap_servers=base.bootstrap,
        topic_prefix=base.topic_prefix,
        public_key_file=keys / "modelstream.pub",
        private_key_file=keys / "modelstream.key",
        state_dir=base.state_dir,
        **extra,
    )


async def eventually(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``check`` until it holds; TimeoutError(what) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.2)
