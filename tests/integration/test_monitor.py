"""The monitor on the real broker: concept drift, a bad release, a kill -9 restart (copies
coming and going: test_monitor_scaleout.py).

Every scenario runs the real predictor and monitor (and, where a step needs them, the
trainer, validator and publisher) against Kafka, with labels arriving on ``feedback``.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from river import datasets

from modelstream.cli.models import audit_trail
from modelstream.contracts.builders import command
from modelstream.contracts.client import RequestEncoder
from modelstream.contracts.codec import default_codec
from modelstream.contracts.definitions import in_online_holdout
from modelstream.contracts.records import MonitorLabelledBatch, TrainingExample
from modelstream.kafka.control import send_command
from modelstream.registry.artifact import to_tensor
from modelstream.registry.follower import load_history
from modelstream.services.monitor.app import MonitorApp
from modelstream.services.monitor.settings import MonitorSettings
from modelstream.services.predictor.app import PredictorApp
from modelstream.services.predictor.settings import PredictorSettings
from modelstream.services.publisher.app import PublisherApp
from modelstream.services.publisher.settings import PublisherSettings
from modelstream.services.trainer.app import TrainerApp
from modelstream.services.trainer.settings import TrainerSettings
from modelstream.services.validator.app import ValidatorApp
from modelstream.services.validator.settings import ValidatorSettings
from modelstream.settings import Settings
from tests.support.helpers import (
    consume_until,
    decoded,
    define,
    eventually,
    produce,
    read_all,
    running,
    service_settings,
)
from tests.support.models import (
    BC,
    dataset,
    feedback_records,
    publish,
    requests_for,
    trained_body,
)
from tests.support.processes import ServiceProcess
from tests.support.scored import scored_records

CODEC = default_codec()


def accuracy(predictions: list[dict[str, Any]], truth: dict[str, str]) -> float:
    return float(np.mean([p["prediction"] == truth[p["request_id"]] for p in predictions]))


# -- 1. concept drift ---------------------------------------------------------------------
SEA = "sea"
SEA_NAMES = ["x0", "x1", "x2"]


def sea(variant: int, seed: int, n: int) -> tuple[np.ndarray, list[str]]:
    rows = list(datasets.synth.SEA(variant=variant, seed=seed).take(n))
    X = np.array([[x[0], x[1], x[2]] for x, _ in rows])
    return X, [str(int(label)) for _, label in rows]


@pytest.mark.parametrize("family", ["linear", "mlp"])
async def test_concept_drift_is_detected_learned_online_and_recovered(topics, keys, family):  # type: ignore[no-untyped-def]
    base = topics
    # Training data and the first requests follow SEA concept 0; from request 2000 on the
    # stream follows concept 3 (river's synthetic SEA generator, threshold 8 -> 9.5).
    X_train, y_train = sea(0, 1, 2000)
    X_before, y_before = sea(0, 2, 2000)
    X_after, y_after = sea(3, 3, 8000)
    await define(
        base,
        SEA,
        "BINARY",
        feature_names=tuple(SEA_NAMES),
        classes=("0", "1"),
        min_examples=100,
        tolerance=0.01,
        family=family,
        hidden=(16,) if family == "mlp" else (),
    )
    await produce(
        base,
        "training",
        [
            (
                SEA.encode(),
                CODEC.encode(
                    TrainingExample,
                    {
                        "model": SEA,
                        "features": dict(zip(SEA_NAMES, row.tolist(), strict=True)),
                        "label": label,
                        "example_id": f"e{i}",
                        "timestamp_ms": None,
                    },
                ),
            )
            for i, (row, label) in enumerate(zip(X_train, y_train, strict=True))
        ],
    )
    validator_settings = service_settings(ValidatorSettings, base, keys, holdout_size=300)
    async with (
        running(TrainerApp(service_settings(TrainerSettings, base, keys))),
        running(ValidatorApp(validator_settings)),
        running(PublisherApp(service_settings(PublisherSettings, base, keys))),
    ):
        await send_command(base, command(SEA, "TRAIN"))
        await consume_until(base, "models", lambda r: len(r) >= 1, timeout_s=90)
    monitor = MonitorApp(
        service_settings(
            MonitorSettings,
            base,
            keys,
            export_every_labels=400,
            export_min_labels=200,
            export_min_gain=0.01,
            online_learning_rate=0.03,
            monitor_batch_max_records=500,
        )
    )
    encoder = RequestEncoder(SEA_NAMES)
    X = np.vstack([X_before, X_after])
    y = y_before + y_after
    truth = {f"s-{i}": label for i, label in enumerate(y)}
    change_ms = 0
    validator = ValidatorApp(validator_settings)
    async with (
        running(validator),
        running(PublisherApp(service_settings(PublisherSettings, base, keys))),
        running(PredictorApp(service_settings(PredictorSettings, base, keys))),
        running(monitor),
    ):
        chunk = 250
        for start in range(0, len(y), chunk):
            if start == len(y_before):
                change_ms = int(time.time() * 1000)
            ids = [f"s-{i}" for i in range(start, start + chunk)]
            await produce(
                base,
                "requests",
                [
                    (rid.encode(), encoder.encode(rid, SEA, X[i], packed=True))
                    for rid, i in zip(ids, range(start, start + chunk), strict=True)
                ],
            )
            await produce(
                base, "feedback", feedback_records(SEA, [(rid, truth[rid]) for rid in ids])
            )
            await eventually(
                lambda n=start + chunk: monitor.joined_total(SEA) >= n,
                60,
                f"monitor did not join {start + chunk} labels",
            )
        predictions = decoded(
            await consume_until(base, "predictions", lambda r: len(r) >= len(y)), "Prediction"
        )

    events = await audit_trail(base, SEA)
    drifts = [e for e in events if e["event"] == "drift_detected"]
    assert any(e["at_ms"] >= change_ms for e in drifts), drifts
    commands = decoded(await read_all(base, "control"), "Command")
    assert any(c["action"] == "TRAIN" and c["actor"] == "monitor" for c in commands)

    history = await load_history(base)
    online = [
        a["body"]
        for (name, _), a in sorted(history.items())
        if name == SEA and a["body"]["lineage"]["origin"] == "ONLINE"
    ]
    assert online, "no online-learned candidate was published"
    first_online = online[0]
    assert first_online["parent_version"] == 1
    assert first_online["lineage"]["ranges"][0]["topic"] == "feedback"
    assert first_online["lineage"]["example_count"] > 0
    # a network keeps learning as a network, from the production weights
    assert bool(first_online["layers"]) == (family == "mlp")

    by_id = {p["request_id"]: p for p in predictions}
    ordered = [by_id[f"s-{i}"] for i in range(len(y))]
    pre = accuracy(ordered[: len(y_before)], truth)
    just_after = accuracy(ordered[len(y_before) : len(y_before) + 500], truth)
    swapped = [p for p in ordered[len(y_before) :] if p["version"] >= first_online["version"]]
    assert len(swapped) >= 1000, f"only {len(swapped)} requests were served after the swap"
    recovered = accuracy(swapped[-1000:], truth)
    print(
        f"\nSEA drift ({family}): accuracy before the change {pre:.4f}, "
        f"first 500 after {just_after:.4f}, "
        f"last 1000 on online-learned v{swapped[-1]['version']} {recovered:.4f}; "
        f"{len(drifts)} drift events, {len(online)} online versions published"
    )
    assert just_after < pre - 0.05  # the change really hurts the batch model
    assert recovered >= pre - 0.03  # stated margin: within 3 accuracy points


# -- 2. a bad release -------------------------------------------------------------------
def degraded(body: dict[str, Any]) -> dict[str, Any]:
    """The same model with its weights negated: confidently wrong."""
    W = np.frombuffer(body["weights"]["data"], dtype="<f8").reshape(body["weights"]["shape"])
    return {**body, "weights": to_tensor(-W), "created_by": "test:degraded"}


async def test_a_degraded_release_is_rolled_back_to_its_parent(topics, keys):  # type: ignore[no-untyped-def]
    base = topics
    good = trained_body(BC)
    await publish(base, keys, good, 1)
    _, y, _, _ = dataset(BC)
    min_labels, chunk = 200, 100
    monitor = MonitorApp(
        service_settings(
            MonitorSettings, base, keys, rollback_min_labels=min_labels, rollback_margin=0.05
        )
    )
    sent = 0

    async def traffic(n: int) -> None:
        nonlocal sent
        await produce(base, "requests", requests_for(BC, n, start=sent))
        await produce(
            base,
            "feedback",
            feedback_records(BC, [(f"r-{i}", str(y[i % len(y)])) for i in range(sent, sent + n)]),
        )
        sent += n
        await eventually(
            lambda: monitor.joined_total(BC) >= sent,
            60,
            f"monitor did not join {sent} labels",
        )

    async with (
        running(PublisherApp(service_settings(PublisherSettings, base, keys))),
        running(PredictorApp(service_settings(PredictorSettings, base, keys))) as predictor,
        running(monitor),
    ):
        await traffic(600)
        await publish(base, keys, degraded(good), 2)
        await eventually(lambda: predictor.logic.production.get(BC) == 2, 30, "no swap to v2")
        while BC not in {
            c["model"]
            for c in decoded(await read_all(base, "control"), "Command")
            if c["action"] == "ROLLBACK"
        }:
            assert sent < 3000, "no rollback after 2,400 labels on the degraded version"
            await traffic(chunk)
        await eventually(
            lambda: predictor.logic.production[BC] == 1, 30, "predictor did not switch back to v1"
        )
        after = sent
        await traffic(200)
        predictions = decoded(
            await consume_until(base, "predictions", lambda r: len(r) >= sent), "Prediction"
        )

    events = await audit_trail(base, BC)
    requested = [e for e in events if e["event"] == "rollback_requested"]
    assert len(requested) == 1 and requested[0]["version"] == 2
    assert requested[0]["details"]["to_version"] == "1"
    assert int(requested[0]["details"]["labels"]) <= min_labels + chunk
    assert "worse than parent v1" in requested[0]["reason"]
    assert any(e["event"] == "rolled_back" for e in events), [e["event"] for e in events]
    late = [p for p in predictions if int(p["request_id"].split("-")[1]) >= after]
    assert len(late) == 200 and {p["version"] for p in late} == {1}


# -- 3. kill -9 and restart -----------------------------------------------------------------
async def monitor_restart_scenario(
    base: Settings,
    keys,
    log_dir,
    n: int = 6000,  # type: ignore[no-untyped-def]
    per_s: float = 1000,
    commit_interval_ms: str = "100",
) -> dict[str, float]:
    """Requests and predictions for ``n`` ids, then labels at a steady rate; the monitor
    process (its stages committing every ``commit_interval_ms``) is SIGKILLed mid-stream
    and restarted. Returns the counts it checked."""
    await publish(base, keys, trained_body(BC), 1)
    _, y, _, _ = dataset(BC)
    env = {
        "MODELSTREAM_STATE_DIR": str(log_dir / "monitor-state"),
        "MODELSTREAM_MONITOR_BATCH_MAX_RECORDS": "200",
        "MODELSTREAM_EXPORT_MIN_GAIN": "1.0",
        "MODELSTREAM_MONITOR_COMMIT_INTERVAL_MS": commit_interval_ms,
    }
    learned_expected = sum(not in_online_holdout(f"r-{i}") for i in range(n))
    async with running(PredictorApp(service_settings(PredictorSettings, base, keys))):
        await produce(base, "requests", requests_for(BC, n))
        await consume_until(base, "predictions", lambda r: len(r) >= n, timeout_s=300)
    first = ServiceProcess("monitor", base, keys, "a", log_dir, **env)
    second = None
    try:
        labels = feedback_records(BC, [(f"r-{i}", str(y[i % len(y)])) for i in range(n)])
        half = n // 2

        async def steady(items: list[tuple[bytes, bytes]], per_s: float) -> None:
            for start in range(0, len(items), 100):
                await produce(base, "feedback", items[start : start + 100])
                await asyncio.sleep(100 / per_s)

        sender = asyncio.create_task(steady(labels[:half], per_s=per_s))
        await eventually(
            lambda: first.metric("modelstream_online_learner_labels", model=BC) >= 500,
            90,
            "monitor never started learning:\n" + first.output(),
        )
        before_kill = first.metric("modelstream_online_learner_labels", model=BC)
        first.process.send_signal(signal.SIGKILL)
        assert first.process.wait(timeout=30) == -signal.SIGKILL
        first.stop()
        await sender  # labels keep arriving while no monitor runs
        await produce(base, "feedback", labels[half:])
        second = ServiceProcess("monitor", base, keys, "b", log_dir, **env)
        restarted = time.monotonic()

        def learner() -> float:
            return second.metric("modelstream_online_learner_labels", model=BC)

        try:
            await eventually(lambda: learner() >= learned_expected, 300, "")
        except TimeoutError:
            raise AssertionError(
                f"learner stopped at {learner()} of {learned_expected}:\n{second.output()}"
            ) from None
        caught_up_s = time.monotonic() - restarted
        await asyncio.sleep(2)  # anything more would be a label learned twice
        learned = second.metric("modelstream_online_learner_labels", model=BC)
        lag = second.metric("modelstream_learner_lag_seconds", model=BC)  # set on every commit
        log = second.log_path.read_text(errors="replace")
    finally:
        for process in (first, second):
            if process is not None:
                process.stop()
    written = [r for r in await read_all(base, "training") if r.key == BC.encode()]
    ids = [CODEC.decode(r.value, TrainingExample)["example_id"] for r in written]
    print(
        f"\nmonitor kill -9: learner at {before_kill:.0f} labels when killed; after restart "
        f"{learned:.0f} of {learned_expected} learnable labels; {len(set(ids))} of {n} "
        f"labels joined ({len(ids) - len(set(ids))} re-written after the crash); caught up "
        f"{caught_up_s:.1f} s after the restart; learner lag at the end {lag:.3f} s"
    )
    assert lag > 0
    # The second process learned on from the state the first committed, read back from its
    # changelog before its first batch.
    assert re.search(r"monitor-model-state\[\d\]: restored [1-9]\d* records", log), log[-3000:]
    assert learned == learned_expected  # continued from its state: none lost, none twice
    assert set(ids) == {f"feedback:r-{i}" for i in range(n)}  # no label lost from the join
    return {
        "labels": n,
        "learned": learned,
        "rewritten": len(ids) - len(set(ids)),
        "caught_up_s": caught_up_s,
    }


@pytest.mark.parametrize("commit_interval_ms", ["0", "100"])
async def test_monitor_survives_kill_9_without_losing_a_label(  # type: ignore[no-untyped-def]
    topics, keys, tmp_path, commit_interval_ms
):
    """A transaction per batch (0), and open transactions whose later batches build on the
    pending join and learner state of the earlier ones (100 ms, the default)."""
    await monitor_restart_scenario(topics, keys, tmp_path, commit_interval_ms=commit_interval_ms)


# -- 4. aborted predictions ---------------------------------------------------------------------
async def test_an_aborted_transactions_predictions_never_reach_the_join(topics, keys):  # type: ignore[no-untyped-def]
    """A zombie predictor's aborted transaction must not win the join (and credit the label
    to the wrong version): the join reads committed scored rows only."""
    base = topics
    await publish(base, keys, trained_body(BC), 1)
    X, _, names, _ = dataset(BC)

    def scored(rids: list[str], version: int) -> list[tuple[int, bytes]]:
        proba = np.tile([0.9, 0.1], (len(rids), 1))
        return scored_records(BC, version, rids, names, X[: len(rids)], proba, ["0", "1"], 2)

    zombie = AIOKafkaProducer(
        bootstrap_servers=base.bootstrap, transactional_id=f"{base.topic_prefix}zombie"
    )
    await zombie.start()
    try:
        await zombie.begin_transaction()
        for partition, value in scored(["t-0", "t-1"], 99):
            await zombie.send(base.topic("monitor-scored"), value, partition=partition)
        await zombie.flush()  # written to the log, then aborted
        await zombie.abort_transaction()
    finally:
        await zombie.stop()
    await produce_scored(base, scored(["t-0"], 1))  # the real one, t-0 only
    await produce(base, "feedback", feedback_records(BC, [("t-0", "0"), ("t-1", "0")]))
    monitor = MonitorApp(service_settings(MonitorSettings, base, keys, join_ttl_s=2.0))
    async with running(monitor):
        await eventually(lambda: monitor.joined_total(BC) >= 1, 60, "t-0 was not joined")
        dead = await consume_until(base, "deadletter", lambda r: len(r) >= 1, timeout_s=30)
    labelled = [
        CODEC.decode(r.value, MonitorLabelledBatch)
        for r in await read_all(base, "monitor-labelled")
    ]
    assert [rid for batch in labelled for rid in batch["request_ids"]] == ["t-0"]
    assert labelled[0]["versions"] == [1]
    assert set(monitor.watches[BC].metrics) == {1}  # nothing credited to the zombie's v99
    headers = dict(dead[0].headers)
    assert dead[0].key == b"t-1" and headers["reason"] == b"no-prediction"
    assert headers["source.topic"] == base.topic("feedback").encode()


async def produce_scored(settings: Settings, records: list[tuple[int, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap)
    await producer.start()
    try:
        for partition, value in records:
            await producer.send_and_wait(
                settings.topic("monitor-scored"), value, partition=partition
            )
    finally:
        await producer.stop()


# -- 5. one model floods the others -------------------------------------------------------------
async def test_a_flooding_model_does_not_hold_back_another_models_labels(topics, keys):  # type: ignore[no-untyped-def]
    """Two models in one learner task, one labelled fifty times as often: the quiet model's
    labels are learned while the flood is still being learned (they share batches, not a
    queue behind it), and each model's learner lag is exported."""
    from prometheus_client import REGISTRY

    from modelstream.services.monitor.join_stage import learn_partition

    base = topics
    flood = BC
    quiet = next(
        f"{BC}-{i}" for i in range(100) if learn_partition(f"{BC}-{i}") == learn_partition(BC)
    )
    body = trained_body(BC)
    await publish(base, keys, body, 1)
    await publish(base, keys, {**body, "name": quiet}, 1)
    X, y, _, _ = dataset(BC)
    batches, per_batch, quiet_per_batch = 24, 500, 10
    monitor = MonitorApp(
        service_settings(MonitorSettings, base, keys, export_min_gain=1.0, train_cooldown_s=3600)
    )
    seen: list[tuple[int, int]] = []

    async def watch_progress() -> None:
        while True:
            seen.append((monitor.joined_total(flood), monitor.joined_total(quiet)))
            await asyncio.sleep(0.05)

    producer = AIOKafkaProducer(bootstrap_servers=base.bootstrap, linger_ms=5)
    async with running(monitor):
        progress = asyncio.create_task(watch_progress())
        await producer.start()
        try:
            for b in range(batches):
                for model, n in ((flood, per_batch), (quiet, quiet_per_batch)):
                    ids = [f"{model}-{b}-{i}" for i in range(n)]
                    rows = X[np.arange(b * n, (b + 1) * n) % len(X)]
                    labels = [str(y[i % len(y)]) for i in range(n)]
                    await write_labelled(producer, base, model, ids, rows, labels)
            await producer.flush()
        finally:
            await producer.stop()
        total_flood, total_quiet = batches * per_batch, batches * quiet_per_batch
        await eventually(
            lambda: (
                monitor.joined_total(flood) >= total_flood
                and monitor.joined_total(quiet) >= total_quiet
            ),
            180,
            "not every label was learned",
        )
        progress.cancel()
    during_flood = [q for f, q in seen if 0 < f < total_flood]
    print(
        f"\nflood {total_flood} labels, quiet {total_quiet}: while the flood was being learned "
        f"the quiet model had {max(during_flood, default=0)} of its labels learned"
    )
    assert max(during_flood, default=0) >= total_quiet // 2
    for model in (flood, quiet):
        lag = REGISTRY.get_sample_value("modelstream_learner_lag_seconds", {"model": model})
        assert lag is not None and lag >= 0


async def write_labelled(
    producer: AIOKafkaProducer,
    settings: Settings,
    model: str,
    ids: list[str],
    rows: np.ndarray,
    labels: list[str],
) -> None:
    """Rows as a predictor batch scores them (monitor-scored), then their feedback."""
    proba = np.tile([0.3, 0.7], (len(ids), 1))
    names = trained_body(BC)["feature_names"]
    for partition, value in scored_records(model, 1, ids, names, rows, proba, ["0", "1"], 1):
        await producer.send(settings.topic("monitor-scored"), value, partition=partition)
    for key, value in feedback_records(model, list(zip(ids, labels, strict=True))):
        await producer.send(settings.topic("feedback"), value, key=key)
