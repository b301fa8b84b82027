"""A TRAIN command trains on every example written before it, however far behind the
trainer's reading is when the command arrives."""

from __future__ import annotations

import numpy as np

from modelstream.contracts.builders import command
from modelstream.kafka.control import send_command
from modelstream.registry.artifact import decode_artifact
from modelstream.services.trainer.app import TrainerApp
from modelstream.services.trainer.settings import TrainerSettings
from tests.support.helpers import consume_until, define, produce_records, running, service_settings

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
