"""Serving imported models: the predictor's rate per kind beside onnxruntime's own rate,
and the time a large artifact takes from publishing to its first prediction.

Each model is published (signed) on fresh topics preloaded with packed requests, and one
predictor process (exactly-once, one onnxruntime thread) scores them; its events/s (first
batch to last) and peak RSS are printed beside:

* ``inmemory`` - the same rows scored in this process by onnxruntime alone (one thread,
  inputs already in the graph's types), or by numpy for the native linear model, in
  batches of the size the predictor actually scored (its mean rows per batch in that run:
  ``<m>_inmemory_eps``) and of 5,000 rows (``<m>_inmemory_5000_eps``);
* ``relay`` - bench/predictor.py's fan-out relay on the same model's requests (same
  payload, same routing as the predictor's outputs, same commit interval): the
  transport's ceiling for that payload (``<m>_relay_eps``).

Each figure is the median of ``--repeat`` runs (3), with ``_min`` and ``_max`` keys.

Models: the native logistic model (breast-cancer, 30 features); XGBoost, 300 trees of
depth 6 on 30 features (onnxmltools; trained on 20,000 noisy synthetic rows so every tree
grows to full depth); a scikit-learn pipeline (imputer, scaler,
one-hot encoded categorical column, gradient boosting; skl2onnx); an MLP 64-128-10 as
torch.onnx.export writes it (onnx.helper). Then a 50 MiB graph is published to a predictor
serving under load: seconds from publishing to the first prediction by it.

    python bench/models.py [--events 100000]      # last line: one JSON object
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' model builders
from common import (
    body_for,
    broker,
    predictions_consumer,
    predictor_process,
    preload,
    publish,
    spawn_worker,
    summarize,
)

from modelstream.contracts.client import RequestEncoder
from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import Prediction
from modelstream.kafka.topology import create_topics
from modelstream.learn.linear import LinearModel
from modelstream.registry.artifact import generate_keys
from modelstream.registry.onnx_model import describe, onnx_candidate
from modelstream.settings import Settings, load
from tests.support import onnx_models

HERE = Path(__file__).resolve()
PREDICTOR = HERE.parent / "predictor.py"
BATCH = 5000  # the predictor's default batch size (MODELSTREAM_PREDICTOR_BATCH_MAX_RECORDS)


def models() -> dict[str, tuple[dict[str, Any], onnx_models.Bundle | None, Any]]:
    """name -> (artifact body, bundle, rows source)"""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    linear_names = [str(n) for n in data.feature_names]
    linear = body_for("breast-cancer")
    linear_bundle = onnx_models.Bundle(
        b"", data.data.astype(np.float64), [], linear_names, ["0", "1"]
    )
    xgb = onnx_models.xgboost_model(trees=300, depth=6, features=30, rows=20_000)
    pipeline = onnx_models.pipeline_model()
    mlp = onnx_models.mlp_graph((64, 128, 10))
    out: dict[str, tuple[dict[str, Any], onnx_models.Bundle | None, Any]] = {
        "linear": (dict(linear), linear_bundle, None)
    }
    for name, bundle, flags in (
        ("xgboost", xgb, {"features": xgb.feature_names}),
        ("pipeline", pipeline, {}),
        ("mlp", mlp, {"features": mlp.feature_names, "classes": mlp.classes}),
    ):
        signature = describe(bundle.graph, **flags)
        out[name] = (dict(onnx_candidate(name, signature)), bundle, signature)
    return out


def requests(name: str, body: dict[str, Any], bundle: onnx_models.Bundle, n: int) -> list[Any]:
    encoder = RequestEncoder(body["feature_names"])
    out = []
    for i in range(n):
        j = i % len(bundle.X)
        rid = f"r{i}"
        categories = bundle.categories[j] if bundle.categories else None
        value = encoder.encode(rid, body["name"], bundle.X[j], packed=True, categories=categories)
        out.append((rid.encode(), value))
    return out


def inmemory_eps(
    body: dict[str, Any], bundle: onnx_models.Bundle, signature: Any, n: int, batch: int = BATCH
) -> float:
    """Rows per second of the bare model in this process, in batches of ``batch``."""
    size = max(1, batch)
    rows = np.resize(bundle.X, (size, bundle.X.shape[1]))
    if signature is None:
        model = LinearModel.from_body(body)
        run = lambda: model.proba(rows)  # noqa: E731
    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(bundle.graph, options, providers=["CPUExecutionProvider"])
        feeds: dict[str, np.ndarray] = {}
        for spec in signature.onnx["inputs"]:
            if spec["element_type"] == "string":
                column = [bundle.categories[j % len(bundle.categories)] for j in range(size)]
                feeds[spec["name"]] = np.array(
                    [[row[f] for f in spec["features"]] for row in column], dtype=object
                )
            else:
                index = [body["feature_names"].index(f) for f in spec["features"]]
                feeds[spec["name"]] = np.ascontiguousarray(rows[:, index], dtype=np.float32)
        wanted = [signature.onnx["scores_output"]]
        run = lambda: session.run(wanted, feeds)  # noqa: E731
    run()
    batches = max(3, n // size)
    start = time.perf_counter()
    for _ in range(batches):
        run()
    return batches * size / (time.perf_counter() - start)


async def fresh(base: Settings) -> Settings:
    settings = load(bootstrap_servers=base.bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:8]}.")
    await create_topics(settings)
    return settings


async def served(
    base: Settings, keys: Path, kind: str, body: dict[str, Any], items: list[Any]
) -> dict[str, float]:
    settings = await fresh(base)
    await publish(settings, keys, body, 1)
    await preload(settings, items)
    return await asyncio.to_thread(
        spawn_worker, PREDICTOR, kind, settings, len(items), keys / "modelstream.pub"
    )


async def large_swap(base: Settings, keys: Path, megabytes: float, rate: int) -> dict[str, float]:
    """A predictor serves a small graph at ``rate`` requests/s; a ``megabytes`` graph is
    published as v2: seconds from the start of publishing to its first prediction."""
    from aiokafka import AIOKafkaProducer

    settings = await fresh(base)
    small, large = onnx_models.lookup_graph(0.001), onnx_models.lookup_graph(megabytes, seed=3)

    def body(bundle: onnx_models.Bundle) -> dict[str, Any]:
        return dict(onnx_candidate("lookup", describe(bundle.graph, features=bundle.feature_names)))

    await publish(settings, keys, body(small), 1)
    large_body = body(large)
    process = predictor_process(settings, keys)
    consumer = predictions_consumer(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, linger_ms=1)
    await consumer.start()
    await producer.start()
    codec = default_codec()
    encoder = RequestEncoder(small.feature_names)
    first_v2: float | None = None
    seen = 0
    try:
        start = time.perf_counter()
        published_at = 0.0
        publishing: asyncio.Task[float] | None = None
        i = 0
        deadline = time.time() + 120
        while first_v2 is None and time.time() < deadline:
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            rid = f"s{i}"
            row = [i % 4, 1.0, 1.0]
            await producer.send(
                settings.topic("requests"),
                key=rid.encode(),
                value=encoder.encode(rid, "lookup", row, packed=True),
            )
            i += 1
            if publishing is None and seen >= rate:  # serving v1 for a second
                published_at = time.time()
                publishing = asyncio.create_task(publish(settings, keys, large_body, 2))
            batch = await consumer.getmany(timeout_ms=0)
            now = time.time()
            for records in batch.values():
                for record in records:
                    seen += 1
                    if codec.decode(record.value, Prediction)["version"] == 2:
                        first_v2 = first_v2 or now
        if publishing is not None:
            await publishing
    finally:
        await consumer.stop()
        await producer.stop()
        process.terminate()
        process.wait(timeout=60)
    size = len(large.graph) / 2**20
    return {
        "large_swap_s": (first_v2 - published_at) if first_v2 else float("nan"),
        "large_artifact_mib": size,
    }


def one_round(
    base: Settings, keys: Path, args: argparse.Namespace, built: dict[str, Any]
) -> dict[str, float]:
    n = args.events
    results: dict[str, float] = {}
    for name, (body, bundle, signature) in built.items():
        assert bundle is not None
        items = requests(name, body, bundle, n)
        relay = asyncio.run(served(base, keys, "relay_fanout", body, items))
        result = asyncio.run(served(base, keys, "predictor", body, items))
        served_batch = round(result["batch_mean"])
        memory = inmemory_eps(body, bundle, signature, n, served_batch)
        memory_5000 = inmemory_eps(body, bundle, signature, n, BATCH)
        results[f"{name}_eps"] = round(result["eps"])
        results[f"{name}_relay_eps"] = round(relay["eps"])
        results[f"{name}_inmemory_eps"] = round(memory)
        results[f"{name}_inmemory_5000_eps"] = round(memory_5000)
        results[f"{name}_batch_mean"] = served_batch
        results[f"{name}_rss_mib"] = round(result["rss_mib"], 1)
        bound = min(memory, relay["eps"])
        print(
            f"  {name:10} {result['eps']:>9,.0f}/s  relay {relay['eps']:>9,.0f}/s  in memory "
            f"{memory:>10,.0f}/s at {served_batch} rows ({memory_5000:>10,.0f}/s at {BATCH})  "
            f"served / min(in memory, relay) = {result['eps'] / bound:.2f}x  peak RSS "
            f"{result['rss_mib']:6.1f} MiB  graph {len(bundle.graph) / 2**20:.2f} MiB"
        )
    if not args.no_swap:
        swap = asyncio.run(large_swap(base, keys, args.large_mib, args.rate))
        results.update({k: round(v, 3) for k, v in swap.items()})
        print(
            f"  {swap['large_artifact_mib']:.1f} MiB graph published under {args.rate}/s load: "
            f"first prediction by it after {swap['large_swap_s']:.2f} s"
        )
    return results


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--large-mib", type=float, default=50.0)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-swap", action="store_true", help="skip the large-graph swap")
    args = parser.parse_args()
    keys = Path(tempfile.mkdtemp(prefix="bench-keys-"))
    generate_keys(keys)
    built = models()
    rounds = []
    with broker() as base:
        print(f"broker {base.bootstrap}; {args.events} packed requests per model and run")
        for number in range(args.repeat):
            print(f"round {number + 1} of {args.repeat}")
            rounds.append(one_round(base, keys, args, built))
    print(json.dumps(summarize(rounds)))


if __name__ == "__main__":
    main()
