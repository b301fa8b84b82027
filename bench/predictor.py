"""Predictor throughput, latency, memory and hot swap, against the real broker.

Every candidate runs as its own worker process on a preloaded ``requests`` topic (fresh
topic prefix each) and reports events/s (first batch to last) and its peak RSS:

1. ``passthrough`` - the BatchPipeline forwarding bytes untouched (the transport limit),
   ``identity`` - the same pipeline decoding and re-encoding each request (codec limit);
2. the modelstream predictor (PredictorApp, exactly-once) on breast-cancer (30 features)
   with map-encoded and with packed requests, and on digits (64 features, 10 classes);
3. ``naive`` - what a user might write with faust-streaming and river: one agent, one
   ``predict_proba_one`` and one ``send`` per event.

Then one predictor serves a fixed offered rate: end-to-end latency (client send to
prediction readable by a read_committed consumer), and a hot swap in the middle: time
from publishing v2 to the first v2 prediction, and request ids lost or duplicated.

    python bench/predictor.py [--events 200000]      # last line: one JSON object
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
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    body_for,
    broker,
    dataset,
    peak_rss_mib,
    predictions_consumer,
    predictor_process,
    preload,
    publish,
    request_bytes,
    spawn_worker,
)

from modelstream.contracts.client import RequestEncoder
from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import Prediction, PredictionRequest
from modelstream.kafka.pipeline import BatchPipeline, Outgoing, Stateless
from modelstream.kafka.topology import create_topics
from modelstream.registry.artifact import generate_keys
from modelstream.settings import Settings, load

HERE = Path(__file__).resolve()


# -- workers (run in their own process) -------------------------------------------------------
class Timed(Stateless):
    """Wraps a processor; remembers when the first and the last batch were handled."""

    def __init__(self, inner: Any, target: int, done: asyncio.Event) -> None:
        self.inner, self.target, self.done = inner, target, done
        self.first: float | None = None
        self.last = 0.0
        self.count = 0

    def process(self, task: int, records: list[Any]) -> list[Outgoing]:
        if self.first is None:
            self.first = time.perf_counter()
        out: list[Outgoing] = self.inner.process(task, records)
        self.count += len(records)
        return out

    async def refresh(self) -> None:
        if self.count >= self.target and not self.done.is_set():
            self.last = time.perf_counter()
            self.done.set()
        await self.inner.refresh()


class Passthrough(Stateless):
    def __init__(self, out_topic: str) -> None:
        self.out_topic = out_topic

    def process(self, task: int, records: list[Any]) -> list[Outgoing]:
        return [Outgoing(self.out_topic, r.key, r.value, task) for r in records]

    async def refresh(self) -> None:
        return None


class Identity(Passthrough):
    def __init__(self, out_topic: str) -> None:
        super().__init__(out_topic)
        self.codec = default_codec()

    def process(self, task: int, records: list[Any]) -> list[Outgoing]:
        codec = self.codec
        return [
            Outgoing(
                self.out_topic,
                r.key,
                codec.encode(PredictionRequest, codec.decode(r.value, PredictionRequest)),
                task,
            )
            for r in records
        ]


async def run_worker(kind: str, settings: Settings, events: int) -> dict[str, float]:
    done = asyncio.Event()
    if kind in ("passthrough", "identity"):
        processor = (Passthrough if kind == "passthrough" else Identity)(
            settings.topic("predictions")
        )
        timed = Timed(processor, events, done)
        service: Any = BatchPipeline(
            settings,
            f"bench-{kind}",
            settings.topic("requests"),
            timed,
            deadletter_topic=settings.topic("deadletter"),
        )
        pipeline = service
    else:
        from modelstream.services.predictor.app import PredictorApp
        from modelstream.services.predictor.settings import PredictorSettings

        service = PredictorApp(load(PredictorSettings, **_same(settings)))
        pipeline = service.pipeline
        timed = Timed(pipeline.processor, events, done)
        pipeline.processor = timed
    await service.start()
    task = asyncio.create_task(service.run())
    await done.wait()
    service.request_stop()
    await task
    await service.stop()
    assert timed.first is not None
    rss_mib = peak_rss_mib()
    return {
        "eps": timed.count / (timed.last - timed.first),
        "rss_mib": rss_mib,
        "events": timed.count,
    }


def naive_worker(settings: Settings, events: int) -> dict[str, float]:
    """One faust agent, one river predict_proba_one and one send per event."""
    import faust
    from river import compose, linear_model, preprocessing

    X, y, names = dataset("breast-cancer")
    model = compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())
    for row, label in zip(X, y, strict=True):
        model.learn_one(dict(zip(names, row.tolist(), strict=True)), bool(label))
    codec = default_codec()
    app = faust.App(
        f"bench-naive-{uuid.uuid4().hex[:6]}",
        broker=f"kafka://{settings.bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,
        topic_disable_leader=True,
    )
    requests = app.topic(settings.topic("requests"), value_serializer="raw")
    predictions = app.topic(settings.topic("predictions"), value_serializer="raw")
    state: dict[str, Any] = {"count": 0, "first": None}

    @app.agent(requests)
    async def predict(stream):  # type: ignore[no-untyped-def]
        async for key, value in stream.items():
            if state["first"] is None:
                state["first"] = time.perf_counter()
            request = codec.decode(value, PredictionRequest)
            proba = model.predict_proba_one(request["features"])
            await predictions.send(
                key=key,
                value=codec.encode(
                    Prediction,
                    {
                        "request_id": request["request_id"],
                        "model": request["model"],
                        "version": 1,
                        "digest_prefix": "",
                        "prediction": "1" if proba[True] >= 0.5 else "0",
                        "scores": {"0": proba[False], "1": proba[True]},
                        "route": "production",
                        "requested_at_ms": 0,
                        "predicted_at_ms": int(time.time() * 1000),
                    },
                ),
            )
            state["count"] += 1
            if state["count"] >= events:
                elapsed = time.perf_counter() - state["first"]
                rss = peak_rss_mib()
                print(
                    json.dumps({"eps": events / elapsed, "rss_mib": rss, "events": events}),
                    flush=True,
                )
                os._exit(0)

    worker = faust.Worker(
        app, loglevel=os.environ.get("BENCH_FAUST_LOG", "ERROR"), quiet=True, redirect_stdouts=False
    )
    worker.execute_from_commandline()
    return {}


def _same(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap_servers": settings.bootstrap,
        "topic_prefix": settings.topic_prefix,
        "public_key_file": settings.public_key_file,
        "log_level": "WARNING",
    }


def worker_main(args: argparse.Namespace) -> None:
    settings = load(
        bootstrap_servers=args.bootstrap,
        topic_prefix=args.prefix,
        public_key_file=Path(args.public_key) if args.public_key else None,
    )
    if args.worker == "naive":
        naive_worker(settings, args.events)
        return
    result = asyncio.run(run_worker(args.worker, settings, args.events))
    print(json.dumps(result), flush=True)


# -- orchestration ---------------------------------------------------------------------------
async def fresh(base: Settings) -> Settings:
    settings = load(bootstrap_servers=base.bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:8]}.")
    await create_topics(settings)
    return settings


async def throughput(
    base: Settings,
    keys: Path,
    kind: str,
    model: str,
    packed: bool,
    events: int,
    bodies: dict[str, dict[str, Any]],
    body_key: str | None = None,
) -> dict[str, float]:
    settings = await fresh(base)
    await publish(settings, keys, bodies[body_key or model], 1)
    await preload(settings, request_bytes(model, events, packed=packed))
    return await asyncio.to_thread(
        spawn_worker, HERE, kind, settings, events, keys / "modelstream.pub"
    )


async def latency_and_swap(
    base: Settings,
    keys: Path,
    rate: int,
    seconds: float,
    bodies: dict[str, dict[str, Any]],
    delivery: str = "exactly-once",
) -> dict[str, float]:
    """Offer ``rate`` requests/s to one predictor process; swap to v2 halfway."""
    from aiokafka import AIOKafkaProducer

    settings = await fresh(base)
    await publish(settings, keys, bodies["breast-cancer"], 1)
    process = predictor_process(settings, keys, MODELSTREAM_DELIVERY=delivery)
    consumer = predictions_consumer(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, linger_ms=1)
    await consumer.start()
    await producer.start()
    codec = default_codec()
    received: list[tuple[float, dict[str, Any]]] = []
    total = int(rate * seconds)
    stop = asyncio.Event()

    async def collect() -> None:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=50)
            now = time.time()
            for records in batch.values():
                received.extend((now, codec.decode(r.value, Prediction)) for r in records)

    collector = asyncio.create_task(collect())
    try:
        # wait for the predictor to be up and serving
        await producer.send_and_wait(
            settings.topic("requests"),
            key=b"probe",
            value=request_bytes("breast-cancer", 1, packed=True, prefix="probe", sent_at=True)[0][
                1
            ],
        )
        while not received:
            await asyncio.sleep(0.05)
        X, _, names = dataset("breast-cancer")
        encoder = RequestEncoder(names)
        start = time.perf_counter()
        swap_published = 0.0
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            rid = f"l{i}"
            await producer.send(
                settings.topic("requests"),
                key=rid.encode(),
                value=encoder.encode(
                    rid,
                    "breast-cancer",
                    X[i % len(X)],
                    packed=True,
                    sent_at_ms=int(time.time() * 1000),
                ),
            )
            if i == total // 2:
                swap_published = await publish(settings, keys, body_for("breast-cancer", 7), 2)
        await producer.flush()
        deadline = time.time() + 60
        while len({p["request_id"] for _, p in received}) < total + 1 and time.time() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await collector
        await consumer.stop()
        await producer.stop()
        process.terminate()
        process.wait(timeout=30)
    answers = [(t, p) for t, p in received if p["request_id"].startswith("l")]
    counts = Counter(p["request_id"] for _, p in answers)
    latencies = np.array([t * 1000 - p["requested_at_ms"] for t, p in answers])
    # where it goes: request sent -> scored (predictor clock), scored -> readable
    scoring = np.array([p["predicted_at_ms"] - p["requested_at_ms"] for _, p in answers])
    print(
        f"    {delivery}: sent -> scored p50 {np.percentile(scoring, 50):.1f} ms p99 "
        f"{np.percentile(scoring, 99):.1f} ms; scored -> readable p50 "
        f"{np.percentile(latencies - scoring, 50):.1f} ms p99 "
        f"{np.percentile(latencies - scoring, 99):.1f} ms"
    )
    first_v2 = min((t for t, p in answers if p["version"] == 2), default=float("nan"))
    return {
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "swap_s": first_v2 - swap_published,
        "swap_lost": total - len(counts),
        "swap_duplicated": sum(c - 1 for c in counts.values()),
        "offered_rate": rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker")
    parser.add_argument("--bootstrap")
    parser.add_argument("--prefix")
    parser.add_argument("--public-key")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--naive-events", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--only", default="passthrough,identity,predictor,naive,latency", help="comma-separated"
    )
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return
    keys = Path(tempfile.mkdtemp(prefix="bench-keys-"))
    generate_keys(keys)
    bodies = {
        "breast-cancer": body_for("breast-cancer"),
        "digits": body_for("digits"),
        "digits-mlp": body_for("digits", hidden=(64,)),  # served as model "digits"
    }
    n = args.events
    wanted = set(args.only.split(","))
    results: dict[str, float] = {}
    with broker() as base:
        print(f"broker {base.bootstrap}; {n} events per run, each in its own process")
        runs = [
            ("passthrough_eps", "passthrough", "breast-cancer", True, n),
            ("identity_eps", "identity", "breast-cancer", False, n),
            ("predictor_packed_eps", "predictor", "breast-cancer", True, n),
            ("predictor_eps", "predictor", "breast-cancer", False, n),
            ("predictor_digits_eps", "predictor", "digits", True, n),
            ("predictor_mlp_eps", "predictor", "digits", True, n),
            ("naive_eps", "naive", "breast-cancer", False, args.naive_events),
        ]
        for key, kind, model, packed, events in runs:
            if kind not in wanted:
                continue
            body_key = "digits-mlp" if key == "predictor_mlp_eps" else model
            result = asyncio.run(
                throughput(base, keys, kind, model, packed, events, bodies, body_key)
            )
            results[key] = round(result["eps"])
            if key == "predictor_packed_eps":
                results["rss_mib"] = round(result["rss_mib"], 1)
            print(
                f"  {key:22} {result['eps']:>10,.0f} events/s   peak RSS "
                f"{result['rss_mib']:6.1f} MiB   ({kind}, {model}, "
                f"{'packed' if packed else 'map'}, {int(result['events'])} events)"
            )
        for delivery, suffix in (("exactly-once", "eos"), ("at-least-once", "alo")):
            if "latency" not in wanted:
                break
            swap = asyncio.run(
                latency_and_swap(base, keys, args.rate, args.seconds, bodies, delivery)
            )
            if suffix == "eos":  # the keys of earlier runs: exactly-once, the default
                results.update(
                    {k: round(v, 3) if isinstance(v, float) else v for k, v in swap.items()}
                )
            results[f"p50_ms_{suffix}"] = round(swap["p50_ms"], 3)
            results[f"p99_ms_{suffix}"] = round(swap["p99_ms"], 3)
            print(
                f"  {delivery:13} at {args.rate}/s offered: p50 {swap['p50_ms']:.1f} ms, p99 "
                f"{swap['p99_ms']:.1f} ms; hot swap {swap['swap_s']:.3f} s, lost "
                f"{swap['swap_lost']}, duplicated {swap['swap_duplicated']}"
            )
    if not wanted >= {"passthrough", "identity", "predictor", "naive"}:
        print(json.dumps(results))
        return
    ratios = {
        "packed / passthrough": results["predictor_packed_eps"] / results["passthrough_eps"],
        "map / identity": results["predictor_eps"] / results["identity_eps"],
        "map / naive": results["predictor_eps"] / results["naive_eps"],
        "digits mlp / digits linear": results["predictor_mlp_eps"]
        / results["predictor_digits_eps"],
    }
    print("  ratios: " + ", ".join(f"{k} = {v:.2f}x" for k, v in ratios.items()))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
