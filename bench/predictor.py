"""Predictor throughput, latency, memory and hot swap, against the real broker.

Every throughput candidate runs as its own worker process on a preloaded ``requests``
topic (fresh topic prefix each) and reports events/s (first batch to last) and peak RSS:

1. ``passthrough`` - the BatchPipeline forwarding bytes to the partition of their task;
   ``relay_fanout`` - the same pipeline forwarding each request to the partition of the
   CRC-32 of its key, exactly like the predictor (six partitions per transaction), at the
   same commit interval: the yardstick the predictor's ratio is taken against;
   ``identity`` - the pipeline decoding and re-encoding each request (codec limit);
2. the modelstream predictor (PredictorApp, exactly-once) on breast-cancer (30 features)
   with packed requests at commit intervals 0 (a transaction per batch), 20 (the default)
   and 100 ms, with map-encoded requests, and on digits (64 features: linear and MLP);
3. ``naive`` - what a user might write with faust-streaming and river: one agent, one
   ``predict_proba_one`` and one ``send`` per event.

Then latency at an offered rate (open loop: request ``i`` is due at ``start + i/rate`` and
its latency counts from that due time, so a generator running late adds its lateness
instead of hiding it): a single-hop relay (at-least-once, consume -> produce), and the
predictor exactly-once at commit intervals 20, 50 and 100 ms and at-least-once. Each
latency is split into stages: due -> sent by the client, -> scored (the predictor's clock),
-> readable by a read_uncommitted consumer (sent), -> readable by a read_committed one
(committed). A hot swap runs in the middle of the default run: time from publishing v2 to
the first v2 prediction, and request ids lost or duplicated.

Every figure is the median of ``--repeat`` runs (3), with ``<key>_min`` and ``<key>_max``.

    python bench/predictor.py [--events 200000] [--repeat 3]   # last line: one JSON object
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
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
    summarize,
    worker_command,
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
        self.batches = 0

    def process(self, task: int, records: list[Any]) -> list[Outgoing]:
        if self.first is None:
            self.first = time.perf_counter()
        out: list[Outgoing] = self.inner.process(task, records)
        self.count += len(records)
        self.batches += 1
        return out

    async def refresh(self) -> None:
        if self.count >= self.target and not self.done.is_set():
            self.last = time.perf_counter()
            self.done.set()
        await self.inner.refresh()


class Passthrough(Stateless):
    """Each record forwarded as it is, to the partition of its task (``fanout`` False) or
    of the CRC-32 of its key, the predictor's routing (``fanout`` True)."""

    def __init__(self, out_topic: str, fanout: bool = False) -> None:
        self.out_topic = out_topic
        self.fanout = fanout

    def process(self, task: int, records: list[Any]) -> list[Outgoing]:
        if self.fanout:
            return [Outgoing(self.out_topic, r.key, r.value) for r in records]
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


def relay(
    settings: Settings, kind: str, processor: Any, commit_interval_ms: float, exactly_once: bool
) -> BatchPipeline:
    return BatchPipeline(
        settings,
        f"bench-{kind}",
        settings.topic("requests"),
        processor,
        deadletter_topic=settings.topic("deadletter"),
        exactly_once=exactly_once,
        commit_interval_s=commit_interval_ms / 1000,
    )


async def run_worker(
    kind: str, settings: Settings, events: int, commit_interval_ms: float
) -> dict[str, float]:
    done = asyncio.Event()
    if kind in ("passthrough", "relay_fanout", "identity"):
        out = settings.topic("predictions")
        processor: Any = (
            Identity(out) if kind == "identity" else Passthrough(out, kind == "relay_fanout")
        )
        timed = Timed(processor, events, done)
        service: Any = relay(settings, kind, timed, commit_interval_ms, exactly_once=True)
        pipeline = service
    else:
        from modelstream.services.predictor.app import PredictorApp
        from modelstream.services.predictor.settings import PredictorSettings

        service = PredictorApp(
            load(
                PredictorSettings,
                **_same(settings),
                predictor_commit_interval_ms=commit_interval_ms,
            )
        )
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
        "batch_mean": timed.count / max(1, timed.batches),  # rows per process() call
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


async def serve_hop(settings: Settings) -> None:
    """A single-hop relay (at-least-once, forwarding to the key's partition) until killed:
    the latency floor of one Python consume -> produce hop on this machine."""
    pipeline = relay(
        settings, "hop", Passthrough(settings.topic("predictions"), True), 0.0, exactly_once=False
    )
    await pipeline.start()
    await pipeline.run()


def worker_main(args: argparse.Namespace) -> None:
    settings = load(
        bootstrap_servers=args.bootstrap,
        topic_prefix=args.prefix,
        public_key_file=Path(args.public_key) if args.public_key else None,
    )
    if args.worker == "naive":
        naive_worker(settings, args.events)
        return
    if args.worker == "hop":
        asyncio.run(serve_hop(settings))
        return
    commit_interval_ms = float(os.environ.get("BENCH_COMMIT_INTERVAL_MS", "20"))
    result = asyncio.run(run_worker(args.worker, settings, args.events, commit_interval_ms))
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
    body: dict[str, Any],
    commit_interval_ms: float,
) -> dict[str, float]:
    settings = await fresh(base)
    await publish(settings, keys, body, 1)
    await preload(settings, request_bytes(model, events, packed=packed))
    os.environ["BENCH_COMMIT_INTERVAL_MS"] = str(commit_interval_ms)
    return await asyncio.to_thread(
        spawn_worker, HERE, kind, settings, events, keys / "modelstream.pub"
    )


STAGES = ("sent", "scored", "uncommitted", "committed")


def percentiles(name: str, values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    return {
        f"{name}_p50_ms": float(np.percentile(values, 50)),
        f"{name}_p99_ms": float(np.percentile(values, 99)),
        f"{name}_p999_ms": float(np.percentile(values, 99.9)),
    }


async def open_loop(
    base: Settings,
    keys: Path,
    rate: int,
    seconds: float,
    body: dict[str, Any],
    *,
    hop: bool = False,
    swap: bool = False,
    **env: str,
) -> dict[str, float]:
    """Offer ``rate`` requests/s (open loop) to one predictor process (or the single-hop
    relay); latency of each stage from each request's due time; a hot swap halfway."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    settings = await fresh(base)
    await publish(settings, keys, body, 1)
    metrics_port = free_port()
    if hop:
        process = subprocess.Popen(
            worker_command(HERE, "hop", settings, 0, keys / "modelstream.pub"),
            stdout=subprocess.DEVNULL,
        )
    else:
        process = predictor_process(
            settings, keys, MODELSTREAM_PREDICTOR_METRICS_PORT=str(metrics_port), **env
        )
    committed = predictions_consumer(settings)
    uncommitted = AIOKafkaConsumer(
        settings.topic("predictions"),
        bootstrap_servers=settings.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_uncommitted",
        fetch_max_wait_ms=5,
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, linger_ms=1)
    for client in (committed, uncommitted, producer):
        await client.start()
    codec = default_codec()
    seen: dict[str, dict[bytes, float]] = {"committed": {}, "uncommitted": {}}
    scored_at: dict[bytes, float] = {}
    versions: dict[bytes, int] = {}
    duplicates = 0
    total = int(rate * seconds)
    stop = asyncio.Event()

    async def collect(consumer: Any, stage: str) -> None:
        nonlocal duplicates
        times = seen[stage]
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=50)
            now = time.time()
            for records in batch.values():
                for r in records:
                    if r.key in times:
                        duplicates += stage == "committed"
                        continue
                    times[r.key] = now
                    # a sample of the scoring times: decoding every prediction would make
                    # this process (sharing 2 cores with the broker and the predictor) late
                    if stage == "committed" and not hop and zlib.crc32(r.key) % 8 == 0:
                        prediction = codec.decode(r.value, Prediction)
                        scored_at[r.key] = prediction["predicted_at_ms"] / 1000
                        versions[r.key] = prediction["version"]

    # Without transactions (the relay, at-least-once) records are readable when written:
    # one consumer sees both stages.
    transactional = not hop and env.get("MODELSTREAM_DELIVERY") != "at-least-once"
    collectors = [asyncio.create_task(collect(committed, "committed"))]
    if transactional:
        collectors.append(asyncio.create_task(collect(uncommitted, "uncommitted")))
    else:
        seen["uncommitted"] = seen["committed"]
    X, _, names = dataset("breast-cancer")
    encoder = RequestEncoder(names)
    due_at: dict[bytes, float] = {}
    sent_at: dict[bytes, float] = {}
    swap_published = float("nan")
    try:
        [(probe, value)] = request_bytes("breast-cancer", 1, packed=True, prefix="probe")
        await producer.send_and_wait(settings.topic("requests"), key=probe, value=value)
        deadline = time.time() + 120
        while probe not in seen["committed"]:  # up and serving
            if time.time() > deadline or process.poll() is not None:
                raise RuntimeError(f"no answer to the probe (process exit: {process.poll()})")
            await asyncio.sleep(0.05)
        start_wall = time.time()
        start = time.perf_counter()
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            rid = f"l{i}"
            key = rid.encode()
            due_at[key] = start_wall + i / rate
            await producer.send(
                settings.topic("requests"),
                key=key,
                value=encoder.encode(rid, "breast-cancer", X[i % len(X)], packed=True),
            )
            sent_at[key] = time.time()
            if swap and i == total // 2:
                swap_published = await publish(settings, keys, body_for("breast-cancer", 7), 2)
        await producer.flush()
        deadline = time.time() + 60
        while len(seen["committed"]) < total + 1 and time.time() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        inside = {} if hop else await stage_histograms(metrics_port)
    finally:
        stop.set()
        await asyncio.gather(*collectors)
        for client in (committed, uncommitted, producer):
            await client.stop()
        process.terminate()
        process.wait(timeout=30)
    answered = [k for k in due_at if k in seen["committed"]]
    due_times = np.array([due_at[k] for k in answered])
    result: dict[str, float] = {"offered_rate": rate, "lost": total - len(answered), **inside}
    result["duplicated"] = duplicates
    result.update(
        percentiles("sent", (np.array([sent_at[k] for k in answered]) - due_times) * 1000)
    )
    if scored_at:
        result.update(
            percentiles(
                "scored",
                np.array([scored_at[k] - due_at[k] for k in scored_at if k in due_at]) * 1000,
            )
        )
    early = [k for k in answered if k in seen["uncommitted"]]
    result.update(
        percentiles(
            "uncommitted",
            (np.array([seen["uncommitted"][k] - due_at[k] for k in early])) * 1000,
        )
    )
    result.update(
        percentiles(
            "committed", (np.array([seen["committed"][k] for k in answered]) - due_times) * 1000
        )
    )
    if swap:
        first_v2 = min(
            (seen["committed"][k] for k, v in versions.items() if v == 2), default=float("nan")
        )
        result["swap_s"] = first_v2 - swap_published
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def stage_histograms(port: int) -> dict[str, float]:
    """The predictor's own per-stage latency histograms (modelstream_record_stage_seconds,
    from each request's timestamp): the bucket bound under which half and 99 % of the
    requests reached each stage, in ms."""
    import aiohttp

    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as answer,
    ):
        text = await answer.text()
    buckets: dict[str, list[tuple[float, float]]] = {}
    pattern = re.compile(
        r'^modelstream_record_stage_seconds_bucket\{le="([^"]+)",service="predictor",'
        r'stage="(\w+)"\} ([\d.e+]+)$',
        re.M,
    )
    for bound, stage, count in pattern.findall(text):
        buckets.setdefault(stage, []).append((float(bound), float(count)))
    out: dict[str, float] = {}
    for stage, cumulative in buckets.items():
        cumulative.sort()
        total = cumulative[-1][1]
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            bound = next((b for b, c in cumulative if total and c >= q * total), float("inf"))
            out[f"inside_{stage}_{name}_le_ms"] = bound * 1000
    return out


async def transaction_gaps(base: Settings, transactions: int = 300) -> dict[str, float]:
    """Back-to-back one-record transactions of one producer: the gap from EndTxn's answer
    to the next transaction's successful AddPartitionsToTxn (compat's shortened backoff),
    and transactions per second."""
    from aiokafka.producer import sender

    from modelstream.kafka.clients import make_producer

    ends: list[float] = []
    adds: list[float] = []
    originals = (
        sender.EndTxnHandler.handle_response,
        sender.AddPartitionsToTxnHandler.handle_response,
    )

    def noting(original: Any, times: list[float]) -> Any:
        def handle_response(self: Any, response: Any) -> Any:
            backoff = original(self, response)
            if backoff is None:
                times.append(time.perf_counter())
            return backoff

        return handle_response

    sender.EndTxnHandler.handle_response = noting(originals[0], ends)
    sender.AddPartitionsToTxnHandler.handle_response = noting(originals[1], adds)
    settings = await fresh(base)
    producer = make_producer(
        settings, transactional_id=f"bench-gap-{uuid.uuid4().hex[:6]}", linger_ms=0
    )
    await producer.start()
    try:
        started = time.perf_counter()
        for _ in range(transactions):
            async with producer.transaction():
                await (await producer.send(settings.topic("predictions"), b"x", partition=0))
        elapsed = time.perf_counter() - started
    finally:
        await producer.stop()
        sender.EndTxnHandler.handle_response, sender.AddPartitionsToTxnHandler.handle_response = (
            originals
        )
    gaps = np.array([(min(a for a in adds if a > e) - e) * 1000 for e in ends if adds[-1] > e])
    return {
        "txn_gap_p50_ms": float(np.percentile(gaps, 50)),
        "txn_gap_p99_ms": float(np.percentile(gaps, 99)),
        "transactions_per_s": transactions / elapsed,
    }


THROUGHPUT = [
    # key, worker, data set, packed, body, commit interval (ms)
    ("passthrough_eps", "passthrough", "breast-cancer", True, "breast-cancer", 20),
    ("relay_fanout_eps", "relay_fanout", "breast-cancer", True, "breast-cancer", 20),
    ("identity_eps", "identity", "breast-cancer", False, "breast-cancer", 20),
    ("predictor_packed_eps", "predictor", "breast-cancer", True, "breast-cancer", 20),
    ("predictor_packed_eps_eos_0", "predictor", "breast-cancer", True, "breast-cancer", 0),
    ("relay_fanout_eps_eos_0", "relay_fanout", "breast-cancer", True, "breast-cancer", 0),
    ("predictor_packed_eps_eos_100", "predictor", "breast-cancer", True, "breast-cancer", 100),
    ("relay_fanout_eps_eos_100", "relay_fanout", "breast-cancer", True, "breast-cancer", 100),
    ("predictor_eps", "predictor", "breast-cancer", False, "breast-cancer", 20),
    ("predictor_digits_eps", "predictor", "digits", True, "digits", 20),
    ("predictor_mlp_eps", "predictor", "digits", True, "digits-mlp", 20),
    ("naive_eps", "naive", "breast-cancer", False, "breast-cancer", 0),
]

LATENCY = [
    # suffix, single-hop relay, predictor environment
    ("hop", True, {}),
    ("eos_0", False, {"MODELSTREAM_PREDICTOR_COMMIT_INTERVAL_MS": "0"}),
    ("eos_20", False, {"MODELSTREAM_PREDICTOR_COMMIT_INTERVAL_MS": "20"}),
    ("eos_50", False, {"MODELSTREAM_PREDICTOR_COMMIT_INTERVAL_MS": "50"}),
    ("eos_100", False, {"MODELSTREAM_PREDICTOR_COMMIT_INTERVAL_MS": "100"}),
    ("alo", False, {"MODELSTREAM_DELIVERY": "at-least-once"}),
]


def one_round(
    base: Settings, keys: Path, args: argparse.Namespace, bodies: dict[str, dict[str, Any]]
) -> dict[str, float]:
    wanted = set(args.only.split(","))
    results: dict[str, float] = {}
    for key, kind, model, packed, body, interval in THROUGHPUT:
        if kind not in wanted and key not in wanted:
            continue
        events = args.naive_events if kind == "naive" else args.events
        result = asyncio.run(
            throughput(base, keys, kind, model, packed, events, bodies[body], interval)
        )
        results[key] = round(result["eps"])
        if key == "predictor_packed_eps":
            results["rss_mib"] = round(result["rss_mib"], 1)
        print(
            f"  {key:30} {result['eps']:>10,.0f} events/s   peak RSS {result['rss_mib']:6.1f}"
            f" MiB   ({kind}, {model}, {'packed' if packed else 'map'}, commit {interval} ms)"
        )
    if "latency" in wanted:
        for suffix, hop, env in LATENCY:
            measured = asyncio.run(
                open_loop(
                    base,
                    keys,
                    args.rate,
                    args.seconds,
                    bodies["breast-cancer"],
                    hop=hop,
                    swap=suffix == "eos_20",
                    **env,
                )
            )
            stage = "uncommitted" if hop else "committed"
            results[f"p50_ms_{suffix}"] = measured[f"{stage}_p50_ms"]
            results[f"p99_ms_{suffix}"] = measured[f"{stage}_p99_ms"]
            results[f"p999_ms_{suffix}"] = measured[f"{stage}_p999_ms"]
            results[f"lost_{suffix}"] = measured["lost"]
            results[f"duplicated_{suffix}"] = measured["duplicated"]
            for name in STAGES:
                for q in ("p50", "p99"):
                    if f"{name}_{q}_ms" in measured:
                        results[f"{suffix}_{name}_{q}_ms"] = measured[f"{name}_{q}_ms"]
            for key, value in measured.items():
                if key.startswith("inside_"):
                    results[f"{suffix}_{key}"] = value
            if "swap_s" in measured:
                results["swap_s"] = measured["swap_s"]
            print(
                f"  {suffix:8} at {args.rate}/s: p50 {measured[f'{stage}_p50_ms']:.1f} p99 "
                f"{measured[f'{stage}_p99_ms']:.1f} p99.9 {measured[f'{stage}_p999_ms']:.1f} "
                f"ms; stages p99: "
                + ", ".join(
                    f"{name} {measured[f'{name}_p99_ms']:.1f}"
                    for name in STAGES
                    if f"{name}_p99_ms" in measured
                )
                + f"; lost {measured['lost']}, duplicated {measured['duplicated']}"
            )
            if not hop:
                print(
                    "           inside the predictor (from each request's timestamp), p50/p99 "
                    "at most: "
                    + ", ".join(
                        f"{stage} {measured.get(f'inside_{stage}_p50_le_ms', 0):g}/"
                        f"{measured.get(f'inside_{stage}_p99_le_ms', 0):g} ms"
                        for stage in ("fetched", "processed", "sent", "committed")
                    )
                )
        results["hop_p50_ms"] = results.pop("p50_ms_hop")
        results["hop_p99_ms"] = results.pop("p99_ms_hop")
    if "gap" in wanted:
        results.update(asyncio.run(transaction_gaps(base)))
    return results


def ratios(results: dict[str, float]) -> dict[str, float]:
    pairs = {
        "packed / fan-out relay (20 ms)": ("predictor_packed_eps", "relay_fanout_eps"),
        "packed / passthrough": ("predictor_packed_eps", "passthrough_eps"),
        "map / identity": ("predictor_eps", "identity_eps"),
        "map / naive": ("predictor_eps", "naive_eps"),
        "eos 100 ms / eos 0": ("predictor_packed_eps_eos_100", "predictor_packed_eps_eos_0"),
        "digits mlp / digits linear": ("predictor_mlp_eps", "predictor_digits_eps"),
        "p99 alo / hop p99": ("p99_ms_alo", "hop_p99_ms"),
    }
    return {
        name: results[a] / results[b]
        for name, (a, b) in pairs.items()
        if a in results and b in results and results[b]
    }


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker")
    parser.add_argument("--bootstrap")
    parser.add_argument("--prefix")
    parser.add_argument("--public-key")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--naive-events", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--only",
        default="passthrough,relay_fanout,identity,predictor,naive,latency,gap",
        help="comma-separated workers or keys, and latency, gap",
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
    runs = []
    with broker() as base:
        print(f"broker {base.bootstrap}; {args.events} events per run, each in its own process")
        for round_number in range(args.repeat):
            print(f"round {round_number + 1} of {args.repeat}")
            runs.append(one_round(base, keys, args, bodies))
            print("  ratios: " + ", ".join(f"{k} = {v:.2f}x" for k, v in ratios(runs[-1]).items()))
    results = summarize(runs)
    for name in ratios(results):
        values = [ratios(run)[name] for run in runs if name in ratios(run)]
        print(f"  {name}: median {np.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
