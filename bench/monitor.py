"""Monitor throughput: labelled events joined and learned per second, against the real broker.

Labelled events are preloaded for N request ids (breast-cancer): the rows the predictor
scored, as it writes them to ``monitor-scored`` (its own writer: features, version and scores
of each batch of 500 in columns, in the join partition of each request id), and the feedback
partitioned by murmur2, as a Java or aiokafka producer writes it, so the monitor's join
forwards 5 in 6 of them to their join partition. Then each candidate runs in its own process
and reports labelled events/s, from its first input to its N-th learned label:

1. ``monitor`` - `modelstream run monitor`'s MonitorApp: join of scored rows and feedback
   (feedback forwarded when it is not in its join partition), exactly-once join and learner
   stages with changelog-backed state, live metrics, drift checks, online learning, quality
   windows;
   three models (the breast-cancer model under three names whose learners sit in the
   three learner tasks), the N labels split evenly between them;
2. ``monitor_x3`` - three monitor processes in one consumer group, all started on the empty
   topics and waited for until each holds join and learner tasks, then the same load
   written: the join splits six ways, each model's learner lives in one copy; rate from the
   first input of any copy to the N-th label learned, and each copy's joined and learned
   counts (``monitor_x3_copy<k>_joined``, ``_learned``);
3. ``naive`` - a faust agent as a user might write it over ``requests``, ``predictions`` and
   ``feedback`` (preloaded for it: predictions in the partition of the CRC-32 of their id,
   requests and feedback by murmur2): one table lookup/update and, once a request id is
   complete, one river ``learn_one`` per event, no batching;
4. ``learner_inmemory`` - the monitor's own learner (river's updates over arrays,
   ``MODELSTREAM_ONLINE_LEARNER=arrays``) in batches of 500 over pre-decoded arrays, each batch
   scored before it is learned: the limit of the chosen learner, no Kafka, no Avro;
5. ``river_inmemory`` - river's own progressive validation (``evaluate.progressive_val_score``)
   over the same labelled events held in memory: the limit, no Kafka at all;
6. ``stages`` - the monitor's join and learner stages called directly on the same records,
   no Kafka: the CPU time per label of each (what one process spends before the client
   fetches or sends a record);
7. ``inplace`` - ``monitor`` again with the feedback partitioned by CRC-32 (librdkafka's
   default), so that the join forwards none of it.

    python bench/monitor.py [--events 30000] [--naive-events 10000]   # last line: JSON
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support.scored
from common import (
    body_for,
    broker,
    by_crc32,
    by_murmur2,
    dataset,
    peak_rss_mib,
    preload,
    publish,
    request_bytes,
    spawn_worker,
)
from common import worker_command as common_worker_command

from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import Feedback, Prediction, PredictionRequest
from modelstream.kafka.topology import create_topics
from modelstream.learn.linear import LinearModel
from modelstream.registry.artifact import generate_keys
from modelstream.settings import Settings, load
from tests.support.scored import scored_records

HERE = Path(__file__).resolve()
MODEL = "breast-cancer"


def spread_models(count: int) -> list[str]:
    """``count`` names of the breast-cancer model whose learners sit in different learner
    tasks (one per copy when three copies split them)."""
    from modelstream.services.monitor.join_stage import learn_partition

    names: list[str] = []
    for suffix in ["", *"abcdefghijklmnop"]:
        name = f"{MODEL}-{suffix}" if suffix else MODEL
        if learn_partition(name) not in {learn_partition(n) for n in names}:
            names.append(name)
        if len(names) == count:
            return names
    raise RuntimeError("no spread of model names found")


MODELS = spread_models(3)  # the monitor runs: three models, one per learner task


def labelled_stream(n: int) -> tuple[np.ndarray, list[str], list[str]]:
    X, y, _ = dataset(MODEL)
    rows = np.array([X[i % len(X)] for i in range(n)])
    return rows, [str(y[i % len(y)]) for i in range(n)], [f"r{i}" for i in range(n)]


def predictions_and_feedback(
    body: dict[str, Any], n: int, model: str = MODEL, prefix: str = "r"
) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    codec = default_codec()
    X, labels, _ = labelled_stream(n)
    ids = [f"{prefix}{i}" for i in range(n)]
    proba = LinearModel.from_body(body).proba(X)
    now = int(time.time() * 1000)
    predictions, feedback = [], []
    for rid, p, label in zip(ids, proba, labels, strict=True):
        predictions.append(
            (
                rid.encode(),
                codec.encode(
                    Prediction,
                    {
                        "request_id": rid,
                        "model": model,
                        "version": 1,
                        "digest_prefix": "",
                        "prediction": str(int(p.argmax())),
                        "scores": {"0": float(p[0]), "1": float(p[1])},
                        "route": "production",
                        "requested_at_ms": now,
                        "predicted_at_ms": now,
                    },
                ),
            )
        )
        feedback.append(
            (
                rid.encode(),
                codec.encode(
                    Feedback,
                    {"request_id": rid, "model": model, "label": label, "timestamp_ms": now + 1000},
                ),
            )
        )
    return predictions, feedback


# -- workers (each in its own process) ----------------------------------------------------------
async def monitor_worker(settings: Settings, events: int, *, copy: str = "") -> dict[str, float]:
    """One monitor process. Alone: until it has learned ``events`` labels, then its result.
    As one of several copies: prints its progress twice a second until it is stopped."""
    from modelstream.services.monitor.app import MonitorApp
    from modelstream.services.monitor.settings import MonitorSettings

    app = MonitorApp(
        load(
            MonitorSettings,
            bootstrap_servers=settings.bootstrap,
            topic_prefix=settings.topic_prefix,
            public_key_file=settings.public_key_file,
            log_level="WARNING",
            instance_id=copy or "0",
            state_dir=Path(tempfile.mkdtemp(prefix="bench-monitor-")),
        )
    )
    first: list[float] = []
    process = app.join.process

    def timed(task: int, records: list[Any]) -> Any:
        if not first:
            first.append(time.time())
        return process(task, records)

    app.join.process = timed  # type: ignore[method-assign]
    await app.start()
    running = asyncio.create_task(app.run())

    def labels() -> int:  # labels this copy's learners hold as joined, over every model
        return sum(app.joined_total(m) for m in MODELS)

    def learned() -> int:
        return sum(w.learner.learned for w in app.watches.values() if w.learner is not None)

    try:
        while copy or labels() < events:  # a copy runs until it is stopped
            if copy:
                print(
                    json.dumps(
                        {
                            "copy": copy,
                            "t": time.time(),
                            "first": first[0] if first else None,
                            "labels": labels(),
                            "learned": learned(),
                            "joined": app.join.joined,
                            "forwarded": app.join.forwarded,
                            "join_tasks": len(app.join_pipeline.assigned_tasks()),
                            "learn_tasks": len(app.learn_pipeline.assigned_tasks()),
                        }
                    ),
                    flush=True,
                )
            await asyncio.sleep(0.5 if copy else 0.005)
        last = time.time()
        started = first[0] if first else last
        return {
            # a copy holding the learner but no join task has no first input of its own
            "eps": events / (last - started) if last > started else 0.0,
            "first": started,
            "last": last,
            "rss_mib": peak_rss_mib(),
            "events": events,
            "learned": learned(),
            "forwarded": app.join.forwarded,
            "joined": app.join.joined,
            "restore_s": max(
                (r.seconds for r in app.join.restores + app.learn.restores), default=0
            ),
        }
    finally:
        app.request_stop()
        await running
        await app.stop()


def naive_worker(settings: Settings, events: int) -> None:
    """One faust agent over the three topics; per event one table lookup and update, and one
    river learn_one when a request id becomes complete."""
    import faust
    from river import compose, linear_model, preprocessing

    codec = default_codec()
    _, _, names = dataset(MODEL)
    model = compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())
    app = faust.App(
        f"bench-naive-{uuid.uuid4().hex[:6]}",
        broker=f"kafka://{settings.bootstrap}",
        store="memory://",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        topic_partitions=6,
        datadir=tempfile.mkdtemp(prefix="bench-naive-"),
    )
    kinds = {settings.topic(t): t for t in ("requests", "predictions", "feedback")}
    inputs = app.topic(
        *kinds, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    table = app.Table("join", partitions=6, default=dict)
    state: dict[str, Any] = {"count": 0, "first": None}

    @app.agent(inputs)
    async def join(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            if state["first"] is None:
                state["first"] = time.perf_counter()
            kind = kinds[event.message.topic]
            record_type = {
                "requests": PredictionRequest,
                "predictions": Prediction,
                "feedback": Feedback,
            }[kind]
            value: Any = codec.decode(event.value, record_type)
            rid = value["request_id"]
            entry = dict(table[rid])
            if kind == "requests":
                entry["x"] = np.frombuffer(value["features"], "<f8").tolist()
            elif kind == "predictions":
                entry["p"] = value["prediction"]
            else:
                entry["y"] = value["label"]
            table[rid] = entry
            if len(entry) == 3:
                model.learn_one(dict(zip(names, entry["x"], strict=True)), entry["y"] == "1")
                state["count"] += 1
                if state["count"] >= events:
                    elapsed = time.perf_counter() - state["first"]
                    print(
                        json.dumps(
                            {"eps": events / elapsed, "rss_mib": peak_rss_mib(), "events": events}
                        ),
                        flush=True,
                    )
                    os._exit(0)

    worker = faust.Worker(
        app, loglevel=os.environ.get("BENCH_FAUST_LOG", "ERROR"), quiet=True, redirect_stdouts=False
    )
    worker.execute_from_commandline()


def river_inmemory(events: int) -> dict[str, float]:
    """river's progressive validation over the same labelled events (features as dicts,
    decoded up front: only prediction and learning are timed)."""
    from river import compose, evaluate, linear_model, metrics, preprocessing

    _, _, names = dataset(MODEL)
    X, labels, _ = labelled_stream(events)
    stream = [
        (dict(zip(names, row.tolist(), strict=True)), label == "1")
        for row, label in zip(X, labels, strict=True)
    ]
    model = compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())
    started = time.perf_counter()
    score = evaluate.progressive_val_score(stream, model, metrics.Accuracy())
    elapsed = time.perf_counter() - started
    return {"eps": events / elapsed, "accuracy": score.get(), "events": events}


def learner_inmemory(events: int, batch: int = 500) -> dict[str, float]:
    """The monitor's own learner (river's updates over arrays, from a zero model as river's
    pipeline above starts) with the same progressive validation over pre-decoded arrays:
    each batch scored by the learner as it was, then learned."""
    from modelstream.contracts.records import Task
    from modelstream.services.monitor.logic.array_learner import ArrayLearner

    _, _, names = dataset(MODEL)
    X, labels, _ = labelled_stream(events)
    learner = ArrayLearner(Task.BINARY, names, ["0", "1"])
    correct = 0
    started = time.perf_counter()
    for start in range(0, events, batch):
        rows, truth = X[start : start + batch], labels[start : start + batch]
        predicted = learner.as_model().proba(rows).argmax(axis=1)
        correct += int((predicted == np.asarray(truth, dtype=int)).sum())
        learner.learn_many(rows, truth)
    elapsed = time.perf_counter() - started
    return {"eps": events / elapsed, "accuracy": correct / events, "events": events}


def stages_inmemory(body: dict[str, Any], events: int, batch: int = 3000) -> dict[str, float]:
    """The monitor's two stages alone, no Kafka: the join over scored rows and feedback in
    their join partitions (both parts of a label in one batch), then the learner over the
    labelled batches the join made; CPU time per label of each."""
    from types import SimpleNamespace
    from unittest import mock

    from modelstream.services.monitor.join_stage import JoinStage, join_partition
    from modelstream.services.monitor.learn_stage import LearnStage
    from modelstream.services.monitor.settings import MonitorSettings

    settings = load(MonitorSettings, topic_prefix="s.", log_level="WARNING")
    registry = mock.Mock()
    registry.production = {MODEL: SimpleNamespace(body={**body, "version": 1})}
    join = JoinStage(settings, default_codec(), mock.Mock(), ttl_ms=600_000)
    learn = LearnStage(settings, default_codec(), mock.Mock(), registry)
    _, _, names = dataset(MODEL)
    X, _, ids = labelled_stream(events)
    proba = LinearModel.from_body(body).proba(X)
    _, feedback = predictions_and_feedback(body, events)
    joined_s = learned_s = 0.0
    for start in range(0, events, batch):
        end = start + batch
        tasks: dict[int, list[Any]] = {}
        scored = scored_records(
            MODEL, 1, ids[start:end], names, X[start:end], proba[start:end], ["0", "1"], 1
        )
        for partition, value in scored:
            tasks.setdefault(partition, []).append(
                SimpleNamespace(
                    topic="s.monitor-scored", partition=partition, offset=0, key=b"", value=value
                )
            )
        for key, value in feedback[start:end]:
            partition = join_partition(key)
            tasks.setdefault(partition, []).append(
                SimpleNamespace(
                    topic="s.feedback",
                    partition=partition,
                    offset=start,
                    key=key,
                    value=value,
                    headers=(),
                )
            )
        labelled = []
        began = time.process_time()
        for task, records in tasks.items():
            labelled += [o for o in join.process(task, records) if o.topic == "s.monitor-labelled"]
            join.committed(task, {})
        joined_s += time.process_time() - began
        records = [
            SimpleNamespace(
                value=o.value, key=o.key, topic=o.topic, partition=0, offset=0, timestamp=0
            )
            for o in labelled
        ]
        began = time.process_time()
        learn.process(0, records)
        learn.committed(0, {})
        learned_s += time.process_time() - began
    return {"join_us": joined_s / events * 1e6, "learn_us": learned_s / events * 1e6}


# -- orchestration ------------------------------------------------------------------------------
async def prepared(
    base: Settings,
    keys: Path,
    body: dict[str, Any],
    events: int,
    models: list[str] | None = None,
    *,
    load_now: bool = True,
    raw: bool = False,
    in_place: bool = False,
) -> Settings:
    """Fresh topics with ``models`` (one model by default) published; ``events`` labelled
    events split evenly between them, written now or by :func:`load_events` later (``raw``:
    as requests, predictions and feedback, for the naive join)."""
    settings = load(
        bootstrap_servers=base.bootstrap,
        topic_prefix=f"bench{uuid.uuid4().hex[:8]}.",
        public_key_file=keys / "modelstream.pub",
    )
    await create_topics(settings)
    for model in models or [MODEL]:
        await publish(settings, keys, {**body, "name": model}, 1)
    if raw:
        await load_raw_events(settings, body, events)
    elif load_now:
        await load_events(settings, body, events, models or [MODEL], in_place=in_place)
    return settings


PREDICTOR_BATCH = 500  # rows per scored batch, as a predictor at a few thousand requests/s


async def load_events(
    settings: Settings,
    body: dict[str, Any],
    events: int,
    models: list[str],
    *,
    in_place: bool = False,
) -> None:
    """Scored rows (as the predictor writes them) and feedback of ``events`` labels, as evenly
    as can be over ``models`` (request ids distinct across models), a batch of each model in
    turn. Feedback partitioned by murmur2 (most of it forwarded by the join), or with
    ``in_place`` by CRC-32 (librdkafka's default: none forwarded)."""
    scored: list[tuple[bytes, bytes]] = []
    partitions: list[int] = []
    feedback = []
    per_model = []
    _, _, names = dataset(MODEL)
    for k, model in enumerate(models):
        n = events // len(models) + (1 if k < events % len(models) else 0)
        prefix = f"r{k}-" if len(models) > 1 else "r"
        X, _, _ = labelled_stream(n)
        proba = LinearModel.from_body(body).proba(X)
        _, labelled = predictions_and_feedback({**body, "name": model}, n, model, prefix)
        per_model.append((model, [f"{prefix}{i}" for i in range(n)], X, proba))
        feedback += labelled
    now = int(time.time() * 1000)
    for start in range(0, max(len(ids) for _, ids, _, _ in per_model), PREDICTOR_BATCH):
        for model, ids, X, proba in per_model:
            end = start + PREDICTOR_BATCH
            if start >= len(ids):
                continue
            for partition, value in scored_records(
                model, 1, ids[start:end], names, X[start:end], proba[start:end], ["0", "1"], now
            ):
                scored.append((model.encode(), value))
                partitions.append(partition)
    await preload(settings, scored, "monitor-scored", lambda _key, i, _n: partitions[i])
    await preload(settings, feedback, "feedback", by_crc32 if in_place else by_murmur2)


async def load_raw_events(settings: Settings, body: dict[str, Any], events: int) -> None:
    """Requests, predictions and feedback of ``events`` labels of one model, for the naive
    join (which reads the user topics)."""
    predictions, feedback = predictions_and_feedback(body, events)
    requests = request_bytes(MODEL, events, packed=True, prefix="r")
    await preload(settings, requests, "requests", by_murmur2)
    await preload(settings, predictions, "predictions", by_crc32)
    await preload(settings, feedback, "feedback", by_murmur2)


def worker_command(kind: str, settings: Settings, events: int) -> list[str]:
    return common_worker_command(HERE, kind, settings, events, Path(str(settings.public_key_file)))


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def copies(settings: Settings, body: dict[str, Any], events: int, count: int = 3) -> dict[str, Any]:
    """``count`` monitor processes in one group, all started on empty topics and given
    their tasks before the labels are written: labelled events/s from the first input any
    of them read to the last of ``events`` labels learned (summed over the copies, each
    model's learner in one of them); each copy's joined and learned counts."""
    lines: queue.Queue[tuple[int, str]] = queue.Queue()
    logs = Path(tempfile.mkdtemp(prefix="bench-monitor-copies-"))
    print(f"  (logs of the copies in {logs})")
    procs = []
    for i in range(count):
        proc = subprocess.Popen(
            [*worker_command("copy", settings, events), "--copy", str(i + 1)],
            stdout=subprocess.PIPE,
            stderr=open(logs / f"copy-{i + 1}.log", "w"),
            text=True,
        )
        procs.append(proc)
        threading.Thread(
            target=lambda i=i, proc=proc: [lines.put((i, line)) for line in proc.stdout or ()],
            daemon=True,
        ).start()
    latest: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + 900

    def read_until(done: Any) -> None:
        while not done():
            i, line = lines.get(timeout=max(1.0, deadline - time.monotonic()))
            if "{" in line:
                latest[i] = json.loads(line[line.index("{") :])

    try:
        # every copy has join and learner tasks (a rebalance settled) before any label exists
        read_until(
            lambda: (
                len(latest) == count
                and all(r["join_tasks"] > 0 and r["learn_tasks"] > 0 for r in latest.values())
            )
        )
        busy_before = cpu_times()
        asyncio.run(load_events(settings, body, events, MODELS))
        read_until(lambda: sum(r["labels"] for r in latest.values()) >= events)
        busy_after = cpu_times()
        last = max(r["t"] for r in latest.values())
        first = min((r["first"] for r in latest.values() if r["first"]), default=last)
        reports = [latest[i] for i in sorted(latest)]
        return {
            "eps": events / (last - first) if last > first else 0.0,
            "joined_by_copy": [r["joined"] for r in reports],
            "learned_by_copy": [r["learned"] for r in reports],
            "join_tasks_by_copy": [r["join_tasks"] for r in reports],
            "learn_tasks_by_copy": [r["learn_tasks"] for r in reports],
            # the machine's cores busy while the copies ran (copies, broker, the load)
            "cpu_busy": (busy_after[0] - busy_before[0]) / max(1, busy_after[1] - busy_before[1]),
        }
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker")
    parser.add_argument("--copy", default="")
    parser.add_argument("--bootstrap")
    parser.add_argument("--prefix")
    parser.add_argument("--public-key")
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--naive-events", type=int, default=10_000)
    parser.add_argument(
        "--only",
        default="monitor,inplace,copies,naive,learner,stages,river",
        help="comma-separated",
    )
    args = parser.parse_args()
    if args.worker:
        settings = load(
            bootstrap_servers=args.bootstrap,
            topic_prefix=args.prefix,
            public_key_file=Path(args.public_key),
        )
        if args.worker == "naive":
            naive_worker(settings, args.events)
        else:
            result = asyncio.run(monitor_worker(settings, args.events, copy=args.copy))
            print(json.dumps(result), flush=True)
        return
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    keys = Path(tempfile.mkdtemp(prefix="bench-keys-"))
    generate_keys(keys)
    body = body_for(MODEL)
    results: dict[str, float] = {}
    wanted = set(args.only.split(","))
    with broker() as base:
        print(f"broker {base.bootstrap}; a labelled event = a scored row + its feedback")
        if "monitor" in wanted:
            settings = asyncio.run(prepared(base, keys, body, args.events, MODELS))
            busy_before = cpu_times()
            one = spawn_worker(HERE, "monitor", settings, args.events, settings.public_key_file)
            busy_after = cpu_times()
            one_busy = (busy_after[0] - busy_before[0]) / max(1, busy_after[1] - busy_before[1])
            results["monitor_cpu_busy"] = round(one_busy, 3)
            results["monitor_eps"] = round(one["eps"])
            results["monitor_rss_mib"] = round(one["rss_mib"], 1)
            print(
                f"  {'monitor_eps':20} {one['eps']:>9,.0f} labelled events/s   peak RSS "
                f"{one['rss_mib']:6.1f} MiB   ({args.events} events, {one['forwarded']:.0f} "
                f"records forwarded to their join partition; cores busy {one_busy:.0%} of the "
                f"run, its start included)"
            )
        if "inplace" in wanted:
            settings = asyncio.run(prepared(base, keys, body, args.events, MODELS, in_place=True))
            inplace = spawn_worker(HERE, "monitor", settings, args.events, settings.public_key_file)
            results["monitor_inplace_eps"] = round(inplace["eps"])
            print(
                f"  {'monitor_inplace_eps':20} {inplace['eps']:>9,.0f} labelled events/s   "
                f"(the same, feedback partitioned by CRC-32 as librdkafka's default "
                f"partitioner does: {inplace['forwarded']:.0f} forwarded)"
            )
        if "copies" in wanted:
            settings = asyncio.run(prepared(base, keys, body, args.events, MODELS, load_now=False))
            three = copies(settings, body, args.events)
            results["monitor_x3_eps"] = round(three["eps"])
            for k, (joined, learned) in enumerate(
                zip(three["joined_by_copy"], three["learned_by_copy"], strict=True)
            ):
                results[f"monitor_x3_copy{k + 1}_joined"] = joined
                results[f"monitor_x3_copy{k + 1}_learned"] = learned
            print(
                f"  {'monitor_x3_eps':20} {three['eps']:>9,.0f} labelled events/s   "
                f"(3 processes, started before the load; per copy: labels joined "
                f"{three['joined_by_copy']}, learned {three['learned_by_copy']}, join tasks "
                f"{three['join_tasks_by_copy']}, learner tasks {three['learn_tasks_by_copy']}; "
                f"cores busy {three['cpu_busy']:.0%} of the time)"
            )
            results["monitor_x3_cpu_busy"] = round(three["cpu_busy"], 3)
        if "naive" in wanted:
            settings = asyncio.run(prepared(base, keys, body, args.naive_events, raw=True))
            naive = spawn_worker(
                HERE, "naive", settings, args.naive_events, settings.public_key_file
            )
            results["naive_eps"] = round(naive["eps"])
            print(f"  {'naive_eps':20} {naive['eps']:>9,.0f} labelled events/s")
    if "learner" in wanted:
        ours = learner_inmemory(args.events)
        results["learner_inmemory_eps"] = round(ours["eps"])
        print(
            f"  {'learner_inmemory_eps':20} {ours['eps']:>9,.0f} labelled events/s   "
            f"(the monitor's learner over arrays, batches of 500, progressive validation in "
            f"memory, accuracy {ours['accuracy']:.4f})"
        )
    if "stages" in wanted:
        stages = stages_inmemory(body, args.events)
        results["join_stage_us_per_label"] = round(stages["join_us"], 1)
        results["learn_stage_us_per_label"] = round(stages["learn_us"], 1)
        print(
            f"  {'stages in memory':20} join {stages['join_us']:.1f} us/label, learner "
            f"{stages['learn_us']:.1f} us/label   (CPU time, no Kafka: the ceiling of one "
            f"process is 1 / their sum = {1e6 / (stages['join_us'] + stages['learn_us']):,.0f} "
            f"labels/s before any record is fetched or sent)"
        )
    if "river" in wanted:
        river = river_inmemory(args.events)
        results["river_inmemory_eps"] = round(river["eps"])
        print(
            f"  {'river_inmemory_eps':20} {river['eps']:>9,.0f} labelled events/s   "
            f"(progressive validation in memory, accuracy {river['accuracy']:.4f})"
        )
    if wanted >= {"monitor", "copies", "naive", "river"}:
        print(
            f"  ratios: monitor / river in memory = "
            f"{results['monitor_eps'] / results['river_inmemory_eps']:.2f}x, monitor / its "
            f"learner in memory = "
            f"{results['monitor_eps'] / results.get('learner_inmemory_eps', float('nan')):.2f}x, "
            f"3 copies / 1 = "
            f"{results['monitor_x3_eps'] / results['monitor_eps']:.2f}x, monitor / naive = "
            f"{results['monitor_eps'] / results['naive_eps']:.2f}x"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
