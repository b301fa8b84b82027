"""Monitor throughput: labelled events joined and learned per second, against the real broker.

``requests``, ``predictions`` and ``feedback`` are preloaded for N request ids (breast-cancer,
packed features; predictions scored by the production model and written, as the predictor
writes them, to the partition of the CRC-32 of their request id; requests and feedback
partitioned by murmur2, as a Java or aiokafka producer writes them, so the monitor's join
forwards 5 in 6 of them to their join partition). Then each candidate runs in its own
process and reports labelled events/s, from its first input to its N-th learned label:

1. ``monitor`` - `modelstream run monitor`'s MonitorApp: repartition-free join where records
   already sit in their join partition, exactly-once join and learner stages with
   changelog-backed state, live metrics, drift checks, online learning, quality windows;
2. ``monitor_x3`` - three monitor processes in one consumer group splitting the partitions
   (one model: the join splits six ways, the model's learner lives in one copy); rate from
   the first input of any copy to the N-th learned label;
3. ``naive`` - a faust agent as a user might write it: one table lookup/update and, once a
   request id is complete, one river ``learn_one`` per event, no batching;
4. ``learner_inmemory`` - the monitor's own learner (river's updates over arrays,
   ``MODELSTREAM_ONLINE_LEARNER=arrays``) in batches of 500 over pre-decoded arrays, each batch
   scored before it is learned: the limit of the chosen learner, no Kafka, no Avro;
5. ``river_inmemory`` - river's own progressive validation (``evaluate.progressive_val_score``)
   over the same labelled events held in memory: the limit, no Kafka at all.

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

HERE = Path(__file__).resolve()
MODEL = "breast-cancer"


def labelled_stream(n: int) -> tuple[np.ndarray, list[str], list[str]]:
    X, y, _ = dataset(MODEL)
    rows = np.array([X[i % len(X)] for i in range(n)])
    return rows, [str(y[i % len(y)]) for i in range(n)], [f"r{i}" for i in range(n)]


def predictions_and_feedback(
    body: dict[str, Any], n: int
) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    codec = default_codec()
    X, labels, ids = labelled_stream(n)
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
                        "model": MODEL,
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
                    {"request_id": rid, "model": MODEL, "label": label, "timestamp_ms": now + 1000},
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
    try:
        while app.joined_total(MODEL) < events:
            if copy:
                print(
                    json.dumps(
                        {
                            "copy": copy,
                            "t": time.time(),
                            "first": first[0] if first else None,
                            "learned": app.joined_total(MODEL),
                            "joined": app.join.joined,
                            "forwarded": app.join.forwarded,
                        }
                    ),
                    flush=True,
                )
            await asyncio.sleep(0.5 if copy else 0.005)
        last = time.time()
        watch = app.watches[MODEL]
        learned = watch.learner.learned if watch.learner else 0
        started = first[0] if first else last  # a copy may hold the learner but no join task
        return {
            # a copy holding the learner but no join task has no first input of its own
            "eps": events / (last - started) if last > started else 0.0,
            "first": started,
            "last": last,
            "rss_mib": peak_rss_mib(),
            "events": events,
            "learned": learned,
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


# -- orchestration ------------------------------------------------------------------------------
async def prepared(base: Settings, keys: Path, body: dict[str, Any], events: int) -> Settings:
    settings = load(
        bootstrap_servers=base.bootstrap,
        topic_prefix=f"bench{uuid.uuid4().hex[:8]}.",
        public_key_file=keys / "modelstream.pub",
    )
    await create_topics(settings)
    await publish(settings, keys, body, 1)
    predictions, feedback = predictions_and_feedback(body, events)
    requests = request_bytes(MODEL, events, packed=True, prefix="r")
    await preload(settings, requests, "requests", by_murmur2)
    await preload(settings, predictions, "predictions", by_crc32)
    await preload(settings, feedback, "feedback", by_murmur2)
    return settings


def worker_command(kind: str, settings: Settings, events: int) -> list[str]:
    return common_worker_command(HERE, kind, settings, events, Path(str(settings.public_key_file)))


def copies(settings: Settings, events: int, count: int = 3) -> dict[str, float]:
    """``count`` monitor processes in one group: labelled events/s from the first input any
    of them read to the N-th label learned."""
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
    firsts: dict[int, float] = {}
    joined: dict[int, int] = {}
    deadline = time.monotonic() + 900
    try:
        while True:
            i, line = lines.get(timeout=max(1.0, deadline - time.monotonic()))
            if "{" not in line:
                continue
            report = json.loads(line[line.index("{") :])
            if report.get("first"):
                firsts[i] = min(firsts.get(i, report["first"]), report["first"])
            if "eps" in report:  # the copy holding the model's learner is through
                return {
                    "eps": events / (report["last"] - min(firsts.values(), default=report["last"])),
                    "joined_by_copy": sorted({**joined, i: report["joined"]}.values()),
                    "restore_s": report["restore_s"],
                }
            joined[i] = report["joined"]
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
        "--only", default="monitor,copies,naive,learner,river", help="comma-separated"
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
        print(f"broker {base.bootstrap}; labelled events = request + prediction + feedback")
        if "monitor" in wanted:
            settings = asyncio.run(prepared(base, keys, body, args.events))
            one = spawn_worker(HERE, "monitor", settings, args.events, settings.public_key_file)
            results["monitor_eps"] = round(one["eps"])
            results["monitor_rss_mib"] = round(one["rss_mib"], 1)
            print(
                f"  {'monitor_eps':20} {one['eps']:>9,.0f} labelled events/s   peak RSS "
                f"{one['rss_mib']:6.1f} MiB   ({args.events} events, {one['forwarded']:.0f} "
                f"records forwarded to their join partition)"
            )
        if "copies" in wanted:
            settings = asyncio.run(prepared(base, keys, body, args.events))
            three = copies(settings, args.events)
            results["monitor_x3_eps"] = round(three["eps"])
            print(
                f"  {'monitor_x3_eps':20} {three['eps']:>9,.0f} labelled events/s   "
                f"(3 processes; labels joined per copy {three['joined_by_copy']})"
            )
        if "naive" in wanted:
            settings = asyncio.run(prepared(base, keys, body, args.naive_events))
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
