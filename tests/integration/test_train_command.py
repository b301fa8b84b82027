"""A TRAIN command trains on every example written before it, however far behind the
trainer's reading is when the command arrives."""

from __future__ import annotations

import numpy as np
from aiokafka import AIOKafkaProducer

from modelstream.contracts.builders import command
from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import TrainingExample
from modelstream.kafka.control import send_command
from modelstream.registry.artifact import decode_artifact
from modelstream.services.trainer.app import TrainerApp
from modelstream.services.trainer.settings import TrainerSettings
from tests.support.helpers import (
    consume_until,
    define,
    produce,
    produce_records,
    running,
    service_settings,
)

ROWS, FEATURES = 2000, 400  # ~3 KB a row: many fetches to read them all


async def test_a_train_command_at_start_up_waits_for_the_examples_written_before_it(topics, keys):  # type: ignore[no-untyped-def]
    base = topics
    rng = np.random.default_rng(0)
    X = rng.normal(size=(ROWS, FEATURES)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    await define(base, "wide", "BINARY", cv_folds=2, l2_grid=(1e-2,), min_examples=20)
    await produce_records(
        base,
        "training",
        "TrainingExample",
        [
            {"model": "wide", "features": row.tolist(), "label": str(label)}
            for row, label in zip(X, y, strict=True)
        ],
        key=lambda r: r["model"],
    )
    # the command is already waiting when the trainer starts, its reading at offset zero
    await send_command(base, command("wide", "TRAIN"))
    async with running(TrainerApp(service_settings(TrainerSettings, base, keys))):
        (record,) = await consume_until(base, "candidates", lambda r: len(r) >= 1, timeout_s=120)
    candidate, _ = decode_artifact(record.value)
    ranges = candidate["body"]["lineage"]["ranges"]
    assert sum(r["end"] - r["start"] for r in ranges) == ROWS


async def test_a_train_command_behind_transactions_and_a_poison_record_trains_on_what_was_committed(
    topics, keys
):  # type: ignore[no-untyped-def]
    """The partition's end counts transaction markers, aborted examples and records that
    are dead-lettered: the trainer's position must pass all of them for the command to be
    released, and only the committed, valid examples are trained on."""
    base = topics
    codec = default_codec()
    rng = np.random.default_rng(1)

    def examples(n: int) -> list[tuple[bytes, bytes]]:
        X = rng.normal(size=(n, 4))
        return [
            (
                b"txn",
                codec.encode(
                    TrainingExample,
                    {"model": "txn", "features": row.tolist(), "label": str(int(row[0] > 0))},
                ),
            )
            for row in X
        ]

    await define(base, "txn", "BINARY", cv_folds=2, l2_grid=(1e-2,), min_examples=20)
    producer = AIOKafkaProducer(
        bootstrap_servers=base.bootstrap, transactional_id=f"{base.topic_prefix}writer"
    )
    await producer.start()
    try:
        async with producer.transaction():
            for key, value in examples(300):
                await producer.send(base.topic("training"), key=key, value=value)
        await producer.begin_transaction()
        for key, value in examples(200):
            await producer.send(base.topic("training"), key=key, value=value)
        await producer.abort_transaction()
    finally:
        await producer.stop()
    # the last record before the command: the bytes of a valid example, cut short
    await produce(base, "training", [(b"txn", examples(1)[0][1][:-3])])
    await send_command(base, command("txn", "TRAIN"))
    async with running(TrainerApp(service_settings(TrainerSettings, base, keys))):
        (record,) = await consume_until(base, "candidates", lambda r: len(r) >= 1, timeout_s=120)
        (dead,) = await consume_until(base, "deadletter", lambda r: len(r) >= 1)
    candidate, _ = decode_artifact(record.value)
    assert candidate["body"]["lineage"]["example_count"] == 300
    assert dead.key == b"txn" and dict(dead.headers)["reason"] == b"undecodable"
