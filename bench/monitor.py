"""Monitor throughput: labelled events joined and learned per second, against the real broker.

``requests``, ``predictions`` and ``feedback`` are preloaded for N request ids (breast-cancer,
packed features; predictions scored by the production model), then each candidate runs in its
own process and reports labelled events/s, from its first input to its N-th learned join:

1. ``monitor`` - `modelstream run monitor`'s MonitorApp (faust-streaming, take_events batches,
   changelog-backed join and model tables, live metrics, drift checks, online learning);
2. ``naive`` - a faust agent as a user might write it: one table lookup/update and, once a
   request id is complete, one river ``learn_one`` per event, no batching;
3. ``river_inmemory`` - river's own progressive validation (``evaluate.progressive_val_score``)
   over the same labelled events held in memory: the limit, no Kafka at all.

    python bench/monitor.py [--events 30000] [--naive-events 10000]   # last line: JSON
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    body_for,
    broker,
    dataset,
    peak_rss_mib,
    preload,
    publish,
    request_bytes,
    spawn_worker,
)

from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import Feedback, Prediction
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
async def monitor_worker(settings: Settings, events: int) -> dict[str, float]:
    from modelstream.services.monitor.app import MonitorApp
    from modelstream.services.monitor.settings import MonitorSettings

    app = MonitorApp(
        load(
            MonitorSettings,
            bootstrap_servers=settings.bootstrap,
            topic_prefix=settings.topic_prefix,
            public_key_file=settings.public_key_file,
            log_level="WARNING",
            state_dir=Path(tempfile.mkdtemp(prefix="bench-monitor-")),
        )
    )
    first: list[float] = []
    join = app._join

    async def timed_join(batch: Any) -> None:
        if not first:
            first.append(time.perf_counter())
        await join(batch)

    app._join = timed_join  # type: ignore[method-assign]
    await app.start()
    while (watch := app.watches.get(MODEL)) is None or watch.joined_total < events:
        await asyncio.sleep(0.01)
    last = time.perf_counter()
    learned = watch.learner.learned if watch.learner else 0
    await app.stop()
    return {
        "eps": events / (last - first[0]),
        "rss_mib": peak_rss_mib(),
        "events": events,
        "learned": learned,
    }


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
            type_name = {
                "requests": "PredictionRequest",
                "predictions": "Prediction",
                "feedback": "Feedback",
            }[kind]
            value = codec.decode(event.value, type_name)
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
    await preload(settings, request_bytes(MODEL, events, packed=True, prefix="r"))
    await preload(settings, predictions, "predictions")
    await preload(settings, feedback, "feedback")
    return settings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker")
    parser.add_argument("--bootstrap")
    parser.add_argument("--prefix")
    parser.add_argument("--public-key")
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--naive-events", type=int, default=10_000)
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
            print(json.dumps(asyncio.run(monitor_worker(settings, args.events))), flush=True)
        return
    keys = Path(tempfile.mkdtemp(prefix="bench-keys-"))
    generate_keys(keys)
    body = body_for(MODEL)
    results: dict[str, float] = {}
    with broker() as base:
        print(f"broker {base.bootstrap}; labelled events = request + prediction + feedback")
        for key, kind, events in (
            ("monitor_eps", "monitor", args.events),
            ("naive_eps", "naive", args.naive_events),
        ):
            settings = asyncio.run(prepared(base, keys, body, events))
            result = spawn_worker(HERE, kind, settings, events, settings.public_key_file)
            results[key] = round(result["eps"])
            print(
                f"  {key:20} {result['eps']:>9,.0f} labelled events/s   peak RSS "
                f"{result['rss_mib']:6.1f} MiB   ({events} events)"
            )
            if kind == "monitor":
                results["monitor_rss_mib"] = round(result["rss_mib"], 1)
    river = river_inmemory(args.events)
    results["river_inmemory_eps"] = round(river["eps"])
    print(
        f"  {'river_inmemory_eps':20} {river['eps']:>9,.0f} labelled events/s   "
        f"(progressive validation in memory, accuracy {river['accuracy']:.4f})"
    )
    print(
        f"  ratios: monitor / river in memory = "
        f"{results['monitor_eps'] / results['river_inmemory_eps']:.2f}x, monitor / naive = "
        f"{results['monitor_eps'] / results['naive_eps']:.2f}x"
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
