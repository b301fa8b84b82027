"""The learner reads labelled batches in columns: rows scored over the production version's
features are learned from and written to `training`; rows scored by a version over other
features count in the metrics only; a batch whose columns disagree is dead-lettered whole."""

from dataclasses import dataclass
from types import SimpleNamespace
from unittest import mock

import numpy as np

from modelstream.contracts.codec import default_codec
from modelstream.contracts.definitions import features_id, in_online_holdout
from modelstream.contracts.records import Feedback, MonitorLabelledBatch
from modelstream.services.monitor.learn_stage import LearnStage
from modelstream.services.monitor.settings import MonitorSettings
from modelstream.settings import load
from tests.support.models import BC, dataset, trained_body

CODEC = default_codec()


@dataclass
class Record:
    value: bytes
    key: bytes = BC.encode()
    topic: str = "t.monitor-labelled"
    partition: int = 0
    offset: int = 0
    timestamp: int = 0


def batch(ids: list[str], X: np.ndarray, names: list[str], labels: list[str]) -> bytes:
    n = len(ids)
    proba = np.tile([0.4, 0.6], (n, 1))
    record: MonitorLabelledBatch = {
        "model": BC,
        "request_ids": ids,
        "versions": [1] * n,
        "predicted_at_ms": [1_000] * n,
        "feature_count": X.shape[1],
        "features_id": features_id(names),
        "features": X.astype("<f8").tobytes(),
        "categories": [],
        "classes": ["0", "1"],
        "scores": proba.tobytes(),
        "predictions": ["1"] * n,
        "labels": labels,
        "labelled_at_ms": [2_000] * n,
        "feedback_partitions": [0] * n,
        "feedback_offsets": list(range(n)),
        "feedback": [
            CODEC.encode(Feedback, {"request_id": r, "model": BC, "label": y, "timestamp_ms": 2})
            for r, y in zip(ids, labels, strict=True)
        ],
    }
    return CODEC.encode(MonitorLabelledBatch, record)


def stage(tmp_path) -> LearnStage:  # type: ignore[no-untyped-def]
    settings = load(MonitorSettings, topic_prefix="t.", public_key_file=tmp_path / "none.pub")
    registry = mock.Mock()
    registry.production = {BC: SimpleNamespace(body={**trained_body(BC), "version": 1})}
    return LearnStage(settings, CODEC, mock.Mock(), registry)


def test_rows_over_other_features_count_in_the_metrics_but_are_not_learned(tmp_path):  # type: ignore[no-untyped-def]
    learn = stage(tmp_path)
    X, y, names, _ = dataset(BC)
    labels = [str(v) for v in y[:60]]
    ours = [f"a-{i}" for i in range(60)]
    theirs = [f"b-{i}" for i in range(40)]
    other_names = [f"f{i}" for i in range(5)]  # a version over five other features
    out = learn.process(
        0,
        [
            Record(batch(ours, X[:60], names, labels)),
            Record(batch(theirs, X[:40, :5], other_names, labels[:40]), offset=1),
        ],
    )
    watch = learn.watches[BC]
    assert watch.joined_total == 100 and watch.metrics[1].total == 100
    training = [o for o in out if o.topic == "t.training"]
    assert len(training) == 60  # only the rows over the production features
    learnable = sum(not in_online_holdout(r) for r in ours)
    assert watch.learner is not None and watch.learner.learned == learnable
    assert not [o for o in out if o.topic == "t.deadletter"]


def test_a_batch_whose_columns_disagree_is_dead_lettered_whole(tmp_path):  # type: ignore[no-untyped-def]
    learn = stage(tmp_path)
    X, _, names, _ = dataset(BC)
    good = CODEC.decode(batch(["r"], X[:1], names, ["1"]), MonitorLabelledBatch)
    no_scores = {**good, "scores": b""}  # classes, but no score column
    short = {**good, "labels": []}
    out = learn.process(
        0,
        [
            Record(CODEC.encode(MonitorLabelledBatch, no_scores)),
            Record(CODEC.encode(MonitorLabelledBatch, short), offset=1),
        ],
    )
    reasons = [dict(o.headers or [])["reason"] for o in out if o.topic == "t.deadletter"]
    assert reasons == [b"invalid-labelled", b"invalid-labelled"]
