"""One model's watch: learning, restoring, exporting a candidate, asking for a rollback."""

import dataclasses
from typing import Any

import numpy as np
import pytest

from modelstream.contracts.codec import default_codec
from modelstream.contracts.definitions import in_online_holdout
from modelstream.contracts.records import MonitorModelState, Task
from modelstream.learn.linear import LinearModel
from modelstream.services.monitor.logic import Labelled, ModelWatch, WatchConfig


def production(version: int = 1, parent: int | None = None) -> tuple[Any, LinearModel]:
    """v1 learned x0 + x1 > 0."""
    model = LinearModel(
        Task.BINARY,
        ["x0", "x1"],
        ["0", "1"],
        np.array([[1.0], [1.0]]),
        np.array([0.0]),
        np.zeros(2),
        np.ones(2),
    )
    body = {
        "name": "m",
        "version": version,
        "parent_version": parent,
        "task": Task.BINARY,
        "feature_names": ["x0", "x1"],
        "classes": ["0", "1"],
        "lineage": {"example_count": 100},
    }
    return body, model


def labelled(X, labels, predictions, version=1, start=0) -> list[Labelled]:  # type: ignore[no-untyped-def]
    out = []
    for i, (row, label, predicted) in enumerate(zip(X, labels, predictions, strict=True)):
        p = 0.9 if predicted == "1" else 0.1
        out.append(
            Labelled(
                request_id=f"r{start + i}",
                features=np.asarray(row, "<f8").tobytes(),
                version=version,
                prediction=predicted,
                scores={"0": 1 - p, "1": p},
                predicted_at_ms=0,
                label=label,
                labelled_at_ms=40,
                feedback_partition=0,
                feedback_offset=start + i,
            )
        )
    return out


def shifted_concept(n: int, seed: int) -> tuple[np.ndarray, list[str], list[str]]:
    """Labels follow x0 - x1 > 0, not what v1 learned."""
    X = np.random.default_rng(seed).normal(size=(n, 2))
    labels = ["1" if x0 - x1 > 0 else "0" for x0, x1 in X]
    predictions = ["1" if x0 + x1 > 0 else "0" for x0, x1 in X]
    return X, labels, predictions


def image_model(holdout_tops: np.ndarray) -> Any:
    """A published image model (v1) whose artifact records the deciles of its hold-out's top
    scores ``holdout_tops``."""
    from modelstream.registry.tensor_model import describe, parse_spec, tensor_candidate
    from tests.support.tensor_models import image_graph, spec

    body = tensor_candidate("img", describe(image_graph()[0], parse_spec(spec())), created_by="t")
    body["version"] = 1
    edges = np.percentile(holdout_tops, range(10, 100, 10))
    body["metrics"] = {
        f"validation_score_q{q}": float(v) for q, v in zip(range(10, 100, 10), edges, strict=True)
    }
    return body


def top_score_labels(tops: np.ndarray, start: int, wrong_every: int = 0) -> list[Labelled]:
    """Labels of the image model's predictions of "a" with top scores ``tops``; every
    ``wrong_every``-th (from the first) labelled "b"."""
    return [
        Labelled(
            request_id=f"r{start + i}",
            features=b"",
            version=1,
            prediction="a",
            scores={"a": float(t), "b": float(1 - t) / 2, "c": float(1 - t) / 2},
            predicted_at_ms=0,
            label="b" if wrong_every and i % wrong_every == 0 else "a",
            labelled_at_ms=10,
            feedback_partition=0,
            feedback_offset=start + i,
        )
        for i, t in enumerate(tops)
    ]


def test_a_restored_watch_carries_on_exactly_like_the_saved_one():
    X, labels, predictions = shifted_concept(600, 1)
    items = labelled(X, labels, predictions)
    config = WatchConfig(export_every_labels=10**9, export_min_gain=1.0)
    watch = ModelWatch("m", config)
    watch.install(*production())
    first = watch.observe(items[:300], now_ms=1)
    assert first.learned == sum(not in_online_holdout(i.request_id) for i in items[:300])
    assert len(first.usable) == 300 and [v for v, _ in first.outcomes] == [1] * 300

    codec = default_codec()  # the state travels as Avro on the changelog
    saved = codec.decode(codec.encode(MonitorModelState, watch.state()), MonitorModelState)
    resumed = ModelWatch("m", config)
    resumed.install(*production())
    resumed.restore(saved)
    assert resumed.learner is not None and watch.learner is not None
    assert resumed.learner.learned == watch.learner.learned
    assert resumed.metrics[1].snapshot() == watch.metrics[1].snapshot()
    assert resumed.joined_total == watch.joined_total == 300
    rest_a, rest_b = watch.observe(items[300:], 3), resumed.observe(items[300:], 3)
    assert rest_a.learned == rest_b.learned
    probe = {"x0": 0.3, "x1": -0.2}
    assert resumed.learner.proba_one(probe) == watch.learner.proba_one(probe)
    assert watch.gain() > 0.1  # the learner moved towards the new concept


def test_a_new_production_version_restarts_learning_from_its_weights():
    X, labels, predictions = shifted_concept(300, 4)
    watch = ModelWatch("m", WatchConfig(export_min_gain=1.0))
    watch.install(*production())
    watch.observe(labelled(X, labels, predictions), 1)
    saved = watch.state()
    watch.install(*production(2, 1))
    assert watch.learner is not None and watch.learner.learned == 0
    watch.restore(saved)  # a state of v1 does not carry into v2's learner
    assert watch.learner.learned == 0 and 1 in watch.metrics


def test_labels_with_unusable_features_are_reported_not_learned():
    X, labels, predictions = shifted_concept(10, 5)
    items = labelled(X, labels, predictions)
    items[0] = dataclasses.replace(items[0], features=b"\x00" * 3)  # not 2 doubles
    watch = ModelWatch("m", WatchConfig())
    watch.install(*production())
    decisions = watch.observe(items, 1)
    assert [(label.request_id, reason) for label, reason, _ in decisions.unusable] == [
        ("r0", "wrong-feature-count")
    ]
    assert len(decisions.usable) == 9


def test_a_batch_read_as_one_feature_array_is_watched_as_its_rows_are():
    """The learner hands the watch a labelled batch's features as one array: the same
    decisions and learner as from each label's own features, and rows that cannot be used
    (not finite, or a batch of another width) reported as such."""
    X, labels, predictions = shifted_concept(400, 8)
    X[7, 1] = np.nan
    items = labelled(X, labels, predictions)
    by_rows, by_array = ModelWatch("m", WatchConfig()), ModelWatch("m", WatchConfig())
    by_rows.install(*production())
    by_array.install(*production())
    rows, array = by_rows.observe(items, 1), by_array.observe(items, 1, X)
    assert [(label.request_id, reason) for label, reason, _ in array.unusable] == [
        ("r7", "non-finite")
    ]
    assert [u[:2] for u in rows.unusable] == [u[:2] for u in array.unusable]
    assert rows.usable == array.usable and rows.learned == array.learned
    assert by_rows.state() == by_array.state()
    wide = ModelWatch("m", WatchConfig())
    wide.install(*production())
    refused = wide.observe(items[:3], 1, np.zeros((3, 5)))
    assert {reason for _, reason, _ in refused.unusable} == {"wrong-feature-count"}
    assert not refused.usable


def test_watch_exports_an_online_candidate_with_lineage_and_parent():
    X, labels, predictions = shifted_concept(1200, 2)
    watch = ModelWatch(
        "m",
        WatchConfig(
            export_every_labels=400, export_min_labels=100, export_min_gain=0.05, learning_rate=0.05
        ),
    )
    watch.install(*production())
    items = labelled(X, labels, predictions)
    candidates = [
        watch.observe(items[i : i + 100], now_ms=i).candidate for i in range(0, 1200, 100)
    ]
    exported = [c for c in candidates if c is not None]
    assert exported, "a learner that beats production by far must export"
    body = exported[0]
    assert body["lineage"]["origin"] == "ONLINE" and body["parent_version"] == 1
    assert body["lineage"]["ranges"][0]["topic"] == "feedback"
    assert body["training"]["algorithm"] == "river-online"
    model = LinearModel.from_tensors(Task.BINARY, ["x0", "x1"], ["0", "1"], body)
    agree = (model.proba(X[-300:]).argmax(axis=1) == [int(v) for v in labels[-300:]]).mean()
    assert agree > 0.85


def test_watch_asks_for_one_rollback_of_a_worse_version():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(600, 2))
    labels = ["1" if x0 + x1 > 0 else "0" for x0, x1 in X]
    wrong = ["0" if v == "1" else "1" for v in labels]
    watch = ModelWatch("m", WatchConfig(rollback_min_labels=200, rollback_margin=0.05))
    watch.install(*production())
    assert watch.observe(labelled(X[:300], labels[:300], labels[:300]), 1).rollback is None
    watch.install(*production(2, 1))
    decisions = [
        watch.observe(
            labelled(X[i : i + 100], labels[i : i + 100], wrong[i : i + 100], version=2, start=i),
            2,
        ).rollback
        for i in range(300, 600, 100)
    ]
    asked = [d for d in decisions if d is not None]
    assert len(asked) == 1 and asked[0].version == 2 and asked[0].parent == 1
    assert asked[0].labels >= 200


def test_score_drift_compares_live_top_scores_with_the_holdout_deciles():
    from modelstream.services.monitor.logic.quality import ScoreDrift

    rng = np.random.default_rng(4)
    holdout = rng.beta(8, 2, 2000)  # confident most of the time
    edges = np.percentile(holdout, range(10, 100, 10))
    drift = ScoreDrift(edges, window=500, threshold=0.25)
    assert drift.update_many(rng.beta(8, 2, 2000)) is None  # the same distribution
    assert drift.last_index < 0.1
    shifted = drift.update_many(rng.beta(2, 2, 500))  # unsure: the inputs changed
    assert shifted is not None and shifted > 0.25
    assert ScoreDrift.from_metrics({"accuracy": 1.0}, 500, 0.25) is None
    deciles = zip(range(10, 100, 10), edges, strict=True)
    recorded = {f"validation_score_q{q}": float(v) for q, v in deciles}
    assert ScoreDrift.from_metrics(recorded, 500, 0.25).edges.tolist() == edges.tolist()


def test_a_tensor_model_is_watched_without_a_learner():
    rng = np.random.default_rng(0)
    body = image_model(rng.beta(8, 2, 5000))
    watch = ModelWatch("img", WatchConfig(feature_drift_window=500))
    watch.install(body, None)
    assert watch.learner is None and watch.feature_drift is None and not watch.learns_features

    calm = watch.observe(top_score_labels(rng.beta(8, 2, 1000), 0, wrong_every=4), 20)
    assert not calm.drift and calm.learned == 0 and len(calm.outcomes) == 1000
    assert watch.metrics[1].snapshot()["accuracy"] == 0.75
    moved = watch.observe(top_score_labels(rng.beta(2, 3, 500), 1000, wrong_every=4), 30)
    assert [d.kind for d in moved.drift] == ["scores"]
    assert "population stability index" in moved.drift[0].detail


def test_tied_scores_are_no_drift():
    """A confident classifier's top scores tie at 1.0: deciles collapse onto one edge, and
    the shares the hold-out had in each bin (not a tenth each) are the reference."""
    from modelstream.contracts.records import Task as T
    from modelstream.services.monitor.logic.quality import ScoreDrift
    from modelstream.services.validator.logic import score_reference

    rng = np.random.default_rng(9)

    def scores(n: int) -> np.ndarray:
        top = np.where(rng.random(n) < 0.6, 1.0, rng.uniform(0.5, 1.0, n))
        return np.column_stack([top, 1 - top])

    reference = {f"validation_{k}": v for k, v in score_reference(T.BINARY, scores(2000)).items()}
    drift = ScoreDrift.from_metrics(reference, 500, 0.25)
    assert drift is not None and drift.update_many(scores(2000).max(axis=1)) is None
    assert drift.last_index < 0.05
    assert drift.update_many(rng.uniform(0.5, 0.7, 500)) is not None


def test_drift_windows_carry_across_a_restore():
    """A restart (or an aborted transaction, which rebuilds the watch from the committed
    state) in the middle of a window continues it: the scores and features seen before
    count towards the window that completes after."""
    rng = np.random.default_rng(3)
    body = image_model(rng.beta(8, 2, 5000))
    config = WatchConfig(feature_drift_window=200)
    codec = default_codec()

    def restarted(watch: ModelWatch) -> ModelWatch:
        saved = codec.decode(codec.encode(MonitorModelState, watch.state()), MonitorModelState)
        resumed = ModelWatch("img", config)
        resumed.install(body, None)
        resumed.restore(saved)
        return resumed

    shifted = rng.beta(2, 3, 200)
    watch = ModelWatch("img", config)
    watch.install(body, None)
    assert not watch.observe(top_score_labels(shifted[:150], 0), 1).drift
    moved = restarted(watch).observe(top_score_labels(shifted[150:], 150), 2)
    assert [d.kind for d in moved.drift] == ["scores"]
    forgetful = ModelWatch("img", config)  # what a restart did before the window was saved
    forgetful.install(body, None)
    assert not forgetful.observe(top_score_labels(shifted[150:], 150), 2).drift

    # feature drift: the window's sums survive, the ring slots hold the window's mean row
    def trained(version: int = 1, parent: int | None = None) -> tuple[Any, LinearModel]:
        plain, model = production(version, parent)  # with the statistics of its data
        return plain, dataclasses.replace(model, mean=np.full(2, 0.1), scale=np.full(2, 1.1))

    features = ModelWatch("m", config)
    features.install(*trained())
    X = np.random.default_rng(4).normal(size=(150, 2)) + np.array([3.0, 0.0])  # x0 moved 3 stds
    y = ["1" if a + b > 0 else "0" for a, b in X]
    assert not features.observe(labelled(X, y, y), 1).drift
    resumed = ModelWatch("m", config)
    resumed.install(*trained())
    resumed.restore(
        codec.decode(codec.encode(MonitorModelState, features.state()), MonitorModelState)
    )
    assert resumed.feature_drift is not None and features.feature_drift is not None
    assert resumed.feature_drift.seen == 150
    np.testing.assert_allclose(resumed.feature_drift.total, features.feature_drift.total)
    X2 = np.random.default_rng(5).normal(size=(50, 2)) + np.array([3.0, 0.0])
    y2 = ["1" if a + b > 0 else "0" for a, b in X2]
    moved = resumed.observe(labelled(X2, y2, y2, start=150), 2)
    assert "features" in [d.kind for d in moved.drift]
    # a state of another version (or none saved yet) starts the windows over
    other = ModelWatch("m", config)
    other.install(*trained(2, 1))
    other.restore(
        codec.decode(codec.encode(MonitorModelState, features.state()), MonitorModelState)
    )
    assert other.feature_drift is not None and other.feature_drift.seen == 0
    resized = ModelWatch("m", WatchConfig(feature_drift_window=100))  # the operator changed it
    resized.install(*trained())
    resized.restore(
        codec.decode(codec.encode(MonitorModelState, features.state()), MonitorModelState)
    )
    assert resized.feature_drift is not None and resized.feature_drift.seen == 0


def test_the_array_learner_and_river_watch_alike():
    """The default learner (river's updates over arrays) and river's own pipeline, fed the
    same labels in the same batches, learn the same weights and make the same decisions."""
    X, labels, predictions = shifted_concept(900, 7)
    items = labelled(X, labels, predictions)
    config = {"export_every_labels": 300, "export_min_labels": 50, "export_min_gain": 0.0}
    watches = {}
    for kind in ("arrays", "river"):
        watch = ModelWatch("m", WatchConfig(learner=kind, **config))
        watch.install(*production())
        decisions = [watch.observe(items[s : s + 150], now_ms=s) for s in range(0, 900, 150)]
        watches[kind] = (watch, decisions)
    (ours, ours_d), (theirs, theirs_d) = watches["arrays"], watches["river"]
    assert type(ours.learner).__name__ == "ArrayLearner"
    assert type(theirs.learner).__name__ == "OnlineLearner"
    assert [d.learned for d in ours_d] == [d.learned for d in theirs_d]
    assert [d.candidate is not None for d in ours_d] == [d.candidate is not None for d in theirs_d]
    assert any(d.candidate is not None for d in ours_d)
    a, b = ours.state()["learner"], theirs.state()["learner"]
    assert a is not None and b is not None
    np.testing.assert_allclose(a["weights"], b["weights"], rtol=1e-9, atol=1e-12)
    assert ours.gain() == pytest.approx(theirs.gain(), abs=0.01) and ours.gain() > 0.1


def test_the_network_learns_a_batch_as_it_learns_its_rows_one_by_one():
    from modelstream.learn.mlp import MLPModel
    from modelstream.services.monitor.logic.mlp_learner import OnlineMLP

    rng = np.random.default_rng(2)
    layers = [(rng.normal(size=(2, 4)), rng.normal(size=4)), (rng.normal(size=(4, 1)), np.zeros(1))]
    model = MLPModel(Task.BINARY, ["x0", "x1"], ["0", "1"], layers, np.zeros(2), np.ones(2))
    X, labels, _ = shifted_concept(200, 3)
    batch, rows = OnlineMLP(model, 1e-3, 0.05), OnlineMLP(model, 1e-3, 0.05)
    batch.learn_many(X, labels)
    for row, label in zip(X, labels, strict=True):
        rows.learn_one({"x0": row[0], "x1": row[1]}, label)
    assert batch.learned == rows.learned == 200
    for a, b in zip(batch.Ws + batch.bs, rows.Ws + rows.bs, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(batch.Ws[0][0], layers[0][0])  # it moved


def test_a_tensor_model_with_an_embedding_learns_a_head_and_proposes_its_graph_with_it():
    """Production's scores come from its own layer (random here); the labels follow another
    linear rule on the embedding. The watch learns a head on the embeddings the predictor
    sends, and proposes the graph with the head, which scores what the learner scores."""
    from modelstream.contracts import tensors
    from modelstream.registry.embedding_head import HEAD_SCORES, head_input_of
    from modelstream.registry.tensor_model import (
        TensorScorer,
        describe,
        parse_spec,
        tensor_candidate,
    )
    from tests.support.tensor_models import embedding_graph, embedding_spec

    classes = ["a", "b", "c"]
    graph, P = embedding_graph()
    body = tensor_candidate(
        "img", describe(graph, parse_spec(embedding_spec(classes))), created_by="t"
    )
    body["version"] = 1
    watch = ModelWatch(
        "img",
        WatchConfig(export_every_labels=1000, export_min_labels=200, learning_rate=0.05),
    )
    watch.install(body, None)
    assert watch.learns_features and watch.takes_tensors and watch.learner is not None
    wanted = head_input_of(body)
    assert wanted is not None and watch.features_id == wanted.features_id
    assert watch.feature_names == [f"embedding[{i}]" for i in range(4)]
    rng = np.random.default_rng(8)
    x = rng.normal(size=(3000, 6)).astype(np.float32)
    E = np.maximum(x @ P, 0).astype(np.float64)
    truth = np.asarray(classes)[(E @ rng.normal(size=(4, 3))).argmax(axis=1)]
    served = TensorScorer(body)
    rows = [[tensors.from_array("x", r)] for r in x]
    said = np.asarray(served.labels(served.score(np.empty((3000, 0)), tensor_rows=rows)))
    items = [
        Labelled(f"r{i}", E[i], 1, str(said[i]), {}, 0, str(truth[i]), 5, 0, i) for i in range(3000)
    ]
    exported = []
    for at in range(0, 3000, 250):
        decisions = watch.observe(items[at : at + 250], at, E[at : at + 250])
        assert not decisions.unusable
        if decisions.candidate is not None:
            exported.append((decisions.candidate, watch.learner.as_model()))
    assert exported, "a head far better than production's layer must be proposed"
    candidate, learned = exported[-1]
    assert candidate["lineage"]["origin"] == "ONLINE" and candidate["parent_version"] == 1
    assert candidate["onnx"]["scores_output"] == HEAD_SCORES and candidate["feature_names"] == []
    theirs = TensorScorer(candidate).score(np.empty((500, 0)), tensor_rows=rows[-500:])
    np.testing.assert_allclose(theirs, learned.proba(E[-500:]), atol=1e-5)
    ours = (np.asarray(classes)[theirs.argmax(axis=1)] == truth[-500:]).mean()
    assert ours > (said[-500:] == truth[-500:]).mean() + 0.2
    # a restart: the head's learner comes back from the saved state
    state = default_codec().decode(
        default_codec().encode(MonitorModelState, watch.state()), MonitorModelState
    )
    restored = ModelWatch("img", watch.config)
    restored.install(body, None)
    restored.restore(state)
    assert restored.learner is not None and watch.learner is not None
    np.testing.assert_allclose(restored.learner.as_model().W, watch.learner.as_model().W)
    # published as v2, the learner continues from its head, not from zero, on the rows of
    # the same backbone
    candidate["version"], candidate["parent_version"] = 2, 1
    watch.install(candidate, None)
    assert watch.learner is not None and watch.features_id == wanted.features_id
    np.testing.assert_allclose(watch.learner.as_model().W, learned.W, rtol=1e-5, atol=1e-6)
