"""Synchronous calls: modelstream's gateway over the real broker beside MLServer's REST
server, same model, same load generator, one run.

(a) modelstream: a logistic model of breast-cancer published on fresh topics, one predictor
process and one gateway process (`modelstream run ...`), calls to the gateway's Open
Inference Protocol endpoint; the predictor in exactly-once mode (the default) and again
in at-least-once mode, and in exactly-once mode with the gateway reading replies
read_committed (``MODELSTREAM_GATEWAY_READ_COMMITTED``: the answer is the committed
prediction; the difference is that setting's latency cost).
(b) MLServer 1.7 with mlserver-sklearn, installed by this script in a virtualenv of its own
(as a user would: ``pip install mlserver mlserver-sklearn``), serving a scikit-learn
StandardScaler + LogisticRegression pipeline of the same data, default settings.

Both get the same calls (one row of 30 features as an FP64 tensor, JSON) from one async
generator: closed loop at fixed concurrency (calls/s), then a fixed offered rate (p50/p99).

    python bench/gateway.py [--concurrency 32] [--rate 500] [--seconds 10] [--no-mlserver]
    # last line: one JSON object
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import body_for, broker, dataset, publish, summarize

from modelstream.kafka.topology import create_topics
from modelstream.registry.artifact import generate_keys
from modelstream.settings import Settings, load

# uvloop 0.22 (2025-10) broke `mlserver start` (SeldonIO/MLServer#2286, fix unreleased in
# 1.7.1): its inference workers die at start. A user pins the one before, as here.
MLSERVER = ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "scikit-learn", "uvloop<0.22"]
VENV = Path.home() / ".cache" / "modelstream" / "bench" / "mlserver-venv"
MODEL = "breast-cancer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- load ----------------------------------------------------------------------------------------
def call_body(row: np.ndarray) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [1, len(row)],
                    "datatype": "FP64",
                    "data": row.tolist(),
                }
            ]
        }
    ).encode()


async def closed_loop(
    url: str, bodies: list[bytes], concurrency: int, seconds: float
) -> dict[str, float]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:

        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                async with http.post(url, data=bodies[i % len(bodies)], headers=JSON) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - started)
                i += concurrency

        began = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - began
    return _summary(latencies, elapsed, errors)


async def open_loop(url: str, bodies: list[bytes], rate: int, seconds: float) -> dict[str, float]:
    """Calls started on schedule whatever the answers do (no coordinated omission)."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    total = int(rate * seconds)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one(i: int, due: float) -> None:
            nonlocal errors
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            async with http.post(url, data=bodies[i % len(bodies)], headers=JSON) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
            # from the call's due time: a generator running late adds its lateness
            latencies.append(time.perf_counter() - due)

        began = time.perf_counter()
        await asyncio.gather(*(one(i, began + i / rate) for i in range(total)))
        elapsed = time.perf_counter() - began
    return _summary(latencies, elapsed, errors)


JSON = {"Content-Type": "application/json"}


def _summary(latencies: list[float], elapsed: float, errors: int) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "p999_ms": float(np.percentile(ms, 99.9)),
        "errors": errors,
        "calls": len(latencies),
    }


async def wait_ready(url: str, timeout_s: float = 120.0) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} never became ready")
            await asyncio.sleep(0.3)


# -- the two servers ------------------------------------------------------------------------------
def install_mlserver() -> Path:
    python = VENV / "bin" / "python"
    if not (VENV / "bin" / "mlserver").exists() or not _pinned(python):
        print(f"installing {' '.join(MLSERVER)} into {VENV} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *MLSERVER], check=True, timeout=1800
        )
    return VENV / "bin" / "mlserver"


def _pinned(python: Path) -> bool:
    """The virtualenv holds what MLSERVER asks for (an older run may predate a pin)."""
    check = subprocess.run(
        [str(python), "-c", "import uvloop, sys; sys.exit(uvloop.__version__ >= '0.22')"],
        check=False,
    )
    return check.returncode == 0


def mlserver_model_dir() -> Path:
    """A scikit-learn pipeline of the same data, where mlserver-sklearn loads it from."""
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y, _ = dataset(MODEL)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)
    root = Path(tempfile.mkdtemp(prefix="bench-mlserver-"))
    folder = root / MODEL
    folder.mkdir()
    joblib.dump(model, folder / "model.joblib")  # mlserver-sklearn's own format
    (folder / "model-settings.json").write_text(
        json.dumps(
            {
                "name": MODEL,
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib", "version": "v1"},
            }
        )
    )
    return root


async def mlserver_run(args: argparse.Namespace, bodies: list[bytes]) -> dict[str, Any]:
    executable = install_mlserver()
    root = mlserver_model_dir()
    port = free_port()
    (root / "settings.json").write_text(
        json.dumps({"http_port": port, "grpc_port": free_port(), "metrics_port": free_port()})
    )
    process = subprocess.Popen(
        [str(executable), "start", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PATH": f"{VENV / 'bin'}:{os.environ.get('PATH', '')}"},
    )
    try:
        await wait_ready(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready")
        url = f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer"
        await closed_loop(url, bodies, args.concurrency, 2.0)  # warm-up
        closed = await closed_loop(url, bodies, args.concurrency, args.seconds)
        opened = await open_loop(url, bodies, args.rate, args.seconds)
    finally:
        process.terminate()
        process.wait(timeout=60)
    return {"closed": closed, "open": opened}


async def gateway_run(
    base: Settings,
    keys: Path,
    args: argparse.Namespace,
    bodies: list[bytes],
    delivery: str,
    read_committed: bool = False,
) -> dict[str, Any]:
    settings = load(bootstrap_servers=base.bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:8]}.")
    await create_topics(settings)
    await publish(settings, keys, body_for(MODEL), 1)
    port = free_port()
    env = {
        **os.environ,
        "MODELSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap,
        "MODELSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "MODELSTREAM_PUBLIC_KEY_FILE": str(keys / "modelstream.pub"),
        "MODELSTREAM_LOG_LEVEL": "WARNING",
        "MODELSTREAM_DELIVERY": delivery,
        "MODELSTREAM_GATEWAY_PORT": str(port),
        "MODELSTREAM_GATEWAY_READ_COMMITTED": str(read_committed).lower(),
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "modelstream.cli", "run", service],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for service in ("predictor", "gateway")
    ]
    try:
        await wait_ready(f"http://127.0.0.1:{port}/v2/health/ready")
        url = f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer"
        await closed_loop(url, bodies, args.concurrency, 2.0)  # warm-up: the group settles
        closed = await closed_loop(url, bodies, args.concurrency, args.seconds)
        opened = await open_loop(url, bodies, args.rate, args.seconds)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
    return {"closed": closed, "open": opened}


def one_round(
    base: Settings, keys: Path, args: argparse.Namespace, bodies: list[bytes]
) -> dict[str, float]:
    runs: dict[str, dict[str, Any]] = {}
    for delivery in ("exactly-once", "at-least-once"):
        runs[f"gateway ({delivery})"] = asyncio.run(gateway_run(base, keys, args, bodies, delivery))
    runs["gateway (exactly-once, read_committed)"] = asyncio.run(
        gateway_run(base, keys, args, bodies, "exactly-once", read_committed=True)
    )
    if not args.no_mlserver:
        runs["mlserver"] = asyncio.run(mlserver_run(args, bodies))
    for name, run in runs.items():
        closed, opened = run["closed"], run["open"]
        print(
            f"  {name:26} {closed['rps']:7,.0f} calls/s at {args.concurrency} concurrent "
            f"(p50 {closed['p50_ms']:.1f} ms, p99 {closed['p99_ms']:.1f} ms, errors "
            f"{closed['errors']}); at {args.rate}/s offered: p50 {opened['p50_ms']:.1f} ms, "
            f"p99 {opened['p99_ms']:.1f} ms, p99.9 {opened['p999_ms']:.1f} ms, errors "
            f"{opened['errors']}"
        )
    keys_of = {
        "gateway": "gateway (exactly-once)",
        "gateway_alo": "gateway (at-least-once)",
        "gateway_committed": "gateway (exactly-once, read_committed)",
        "mlserver": "mlserver",
    }
    out: dict[str, float] = {"offered_rps": args.rate}
    for prefix, name in keys_of.items():
        if name not in runs:
            continue
        run = runs[name]
        out[f"{prefix}_rps"] = round(run["closed"]["rps"])
        for q in ("p50", "p99", "p999"):
            out[f"{prefix}_{q}_ms"] = round(run["open"][f"{q}_ms"], 2)
        out[f"{prefix}_errors"] = run["closed"]["errors"] + run["open"]["errors"]
    return out


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-mlserver", action="store_true", help="ours only (no ratios)")
    args = parser.parse_args()
    X, _, _ = dataset(MODEL)
    bodies = [call_body(row) for row in X]
    keys = Path(tempfile.mkdtemp(prefix="bench-keys-"))
    generate_keys(keys)
    rounds = []
    with broker() as base:
        print(f"broker {base.bootstrap}; {args.concurrency} concurrent, then {args.rate} calls/s")
        for number in range(args.repeat):
            print(f"round {number + 1} of {args.repeat}")
            rounds.append(one_round(base, keys, args, bodies))
            if "mlserver_rps" in rounds[-1]:
                print(
                    "  gateway / MLServer calls/s: "
                    f"{rounds[-1]['gateway_rps'] / rounds[-1]['mlserver_rps']:.2f}x (exactly-once)"
                    f", {rounds[-1]['gateway_alo_rps'] / rounds[-1]['mlserver_rps']:.2f}x "
                    "(at-least-once)"
                )
    print(json.dumps(summarize(rounds)))


if __name__ == "__main__":
    main()
