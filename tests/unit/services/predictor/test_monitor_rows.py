"""What the predictor writes for the monitor: one `monitor-scored` record per join
partition of a batch, in the transaction of its predictions, holding the rows of exactly
the answers that are published (an answer too large for `predictions` is dead-lettered by
the pipeline with its request; its row must not reach the monitor)."""

from dataclasses import dataclass, field

import numpy as np

from modelstream.contracts.client import RequestEncoder
from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import MonitorScored
from modelstream.registry.artifact import Verified, generate_keys, seal
from modelstream.services.monitor.join_stage import join_partition
from modelstream.services.predictor.app import PredictorApp
from modelstream.services.predictor.logic import ServingModel
from modelstream.services.predictor.settings import PredictorSettings
from modelstream.settings import load
from tests.support.models import BC, dataset, trained_body

CODEC = default_codec()


@dataclass
class Record:
    value: bytes
    key: bytes
    topic: str = "t.requests"
    partition: int = 0
    offset: int = 0
    timestamp: int = 1_790_000_000_000
    headers: list = field(default_factory=list)


async def test_rows_of_published_answers_go_to_their_join_partitions(tmp_path):  # type: ignore[no-untyped-def]
    generate_keys(tmp_path)
    app = PredictorApp(
        load(
            PredictorSettings,
            topic_prefix="t.",
            public_key_file=tmp_path / "modelstream.pub",
            state_dir=tmp_path,
        )
    )
    body = {**trained_body(BC), "version": 1}
    app.logic.install(
        ServingModel.from_verified(Verified(seal(body), False), None), production=True
    )
    X, _, names, _ = dataset(BC)
    encoder = RequestEncoder(names)
    n = 40
    records = [
        Record(encoder.encode(f"q{i}", BC, X[i], packed=True), f"q{i}".encode(), offset=i)
        for i in range(n)
    ]
    out = app.processor.process(0, records)
    scored = [o for o in out if o.topic == "t.monitor-scored"]
    rows: dict[str, tuple[int, np.ndarray]] = {}
    for o in scored:
        record = CODEC.decode(o.value, MonitorScored)
        features = np.frombuffer(record["features"], "<f8").reshape(-1, record["feature_count"])
        for rid, row in zip(record["request_ids"], features, strict=True):
            assert join_partition(rid.encode()) == o.partition  # where the join reads it
            rows[rid] = (record["version"], row)
    assert sorted(rows) == sorted(f"q{i}" for i in range(n))
    for i in range(n):
        version, row = rows[f"q{i}"]
        assert version == 1 and np.array_equal(row, X[i])

    app.processor.prediction_limit = 0  # no answer fits: none is published, no row is written
    out = app.processor.process(0, records)
    assert [o for o in out if o.topic == "t.predictions"]  # (the pipeline dead-letters them)
    assert not [o for o in out if o.topic == "t.monitor-scored"]
