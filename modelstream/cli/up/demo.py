"""`modelstream up --demo`: plays a real data set through the running system - training
examples, a first published version, then requests and their labels as delayed feedback."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from modelstream.contracts.records import Action, Feedback, Task, TrainingExample
from modelstream.settings import Settings

DEMOS = ("breast-cancer", "digits", "digits-images")
IMAGE_DEMO = "digits-images"


# -- the demo ---------------------------------------------------------------------------------
def demo_dataset(name: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    from sklearn.datasets import load_breast_cancer, load_digits

    data = load_breast_cancer() if name == "breast-cancer" else load_digits()  # digits*: 8x8
    names = (
        [str(n) for n in data.feature_names]
        if name == "breast-cancer"
        else [f"pixel_{i}" for i in range(data.data.shape[1])]
    )
    classes = [str(c) for c in sorted(set(data.target.tolist()))]
    return data.data.astype(np.float64), data.target, names, classes


def progress_bar(done: int, goal: int, width: int = 30) -> str:
    filled = int(width * done / goal) if goal else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {done:,}/{goal:,}"


async def drive_demo(
    settings: Settings,
    name: str,
    requests: int,
    rate: float,
    label_delay_s: float,
    stop: asyncio.Event,
    report: Callable[[str], None],
) -> None:
    """Define the model, stream 60 % of the data set as training examples, wait for the first
    published version, then send the rest as requests (cycled up to ``requests``) at
    ``rate``/s, each followed ``label_delay_s`` later by its true label on ``feedback``."""
    from modelstream.contracts.builders import command
    from modelstream.contracts.client import RequestEncoder
    from modelstream.contracts.codec import default_codec
    from modelstream.contracts.definitions import Definition
    from modelstream.kafka.clients import make_producer
    from modelstream.kafka.control import send_command
    from modelstream.registry.artifact import load_public_key
    from modelstream.registry.follower import load_production

    X, y, names, classes = demo_dataset(name)
    order = np.random.default_rng(0).permutation(len(y))
    cut = int(0.6 * len(y))
    train_rows, serve_rows = order[:cut], order[cut:]
    task = Task.BINARY if len(classes) == 2 else Task.MULTICLASS
    codec = default_codec()
    if name == IMAGE_DEMO:
        await drive_image_demo(
            settings,
            X,
            y,
            classes,
            (train_rows, serve_rows),
            requests,
            rate,
            label_delay_s,
            stop,
            report,
        )
        return
    await send_command(
        settings,
        command(
            name,
            Action.DEFINE,
            definition=Definition(
                name=name,
                task=task,
                feature_names=tuple(names),
                classes=tuple(classes),
                min_examples=50,
            ),
            reason="modelstream up --demo",
        ),
    )
    async with make_producer(settings) as producer:
        for i in train_rows:
            await producer.send(
                settings.topic("training"),
                key=name.encode(),
                value=codec.encode(
                    TrainingExample,
                    {
                        "model": name,
                        "features": X[i].astype("<f8").tobytes(),
                        "label": classes[int(y[i])],
                        "example_id": f"demo-{i}",
                        "timestamp_ms": None,
                    },
                ),
            )
        await producer.flush()
        report(f"demo: sent {len(train_rows)} {name} training examples; training ...")
        await send_command(settings, command(name, Action.TRAIN, reason="modelstream up --demo"))
        key = load_public_key(settings.state_dir / "keys" / "modelstream.pub")
        while not stop.is_set():
            if name in await load_production(settings, key):
                break
            report("demo: waiting for the first version (train -> validate -> publish) ...")
            await asyncio.sleep(1.0)
        encoder = RequestEncoder(names)

        def tabular(n: int, rid: str) -> tuple[bytes, str]:
            row = serve_rows[n % len(serve_rows)]
            value = encoder.encode(
                rid, name, X[row], packed=True, sent_at_ms=int(time.time() * 1000)
            )
            return value, classes[int(y[row])]

        await stream_requests(
            settings,
            producer,
            name,
            "requests",
            tabular,
            requests,
            rate,
            label_delay_s,
            stop,
            report,
        )


async def stream_requests(
    settings: Settings,
    producer: Any,
    name: str,
    what: str,
    make: Callable[[int, str], tuple[bytes, str]],
    requests: int,
    rate: float,
    label_delay_s: float,
    stop: asyncio.Event,
    report: Callable[[str], None],
) -> None:
    """``requests`` requests at ``rate``/s (``make(n, request_id)``: the encoded request and
    its true label), each label sent to ``feedback`` ``label_delay_s`` after its request."""
    from modelstream.contracts.codec import default_codec

    codec = default_codec()
    pending: deque[tuple[float, str, str]] = deque()
    run = f"{int(time.time()) % 100000:05d}"  # request ids stay unique across runs
    started = time.monotonic()
    sent = labelled = 0
    while not stop.is_set() and (sent < requests or pending):
        now = time.monotonic()
        due = min(requests, int((now - started) * rate) + 1)
        for n in range(sent, due):
            rid = f"demo-{run}-{n}"
            value, label = make(n, rid)
            await producer.send(settings.topic("requests"), key=rid.encode(), value=value)
            pending.append((now + label_delay_s, rid, label))
        sent = max(sent, due)
        while pending and pending[0][0] <= now:
            _, rid, label = pending.popleft()
            feedback: Feedback = {
                "request_id": rid,
                "model": name,
                "label": label,
                "timestamp_ms": int(time.time() * 1000),
            }
            await producer.send(
                settings.topic("feedback"),
                key=rid.encode(),
                value=codec.encode(Feedback, feedback),
            )
            labelled += 1
        report(f"demo: {what} {progress_bar(sent, requests)}   labels sent {labelled:,}")
        await asyncio.sleep(0.05)
    await producer.flush()
    if not stop.is_set():
        report(
            f"demo: done - {sent:,} {what} and {labelled:,} labels sent; "
            "the services keep running until Ctrl-C"
        )


# -- the image demo ---------------------------------------------------------------------------
DIGITS_SPEC = {
    "inputs": [
        {
            "name": "image",
            "kind": "image",
            "graph_input": "features",
            # 8x8 grey digits; the network was trained on pixel values 0..16
            "image": {"color": "l", "height": 8, "width": 8, "scale": 16 / 255, "layout": "flat"},
        }
    ],
    "scores": {"graph_output": "probabilities", "labels": [str(d) for d in range(10)], "top_k": 3},
}


def digit_png(pixels: np.ndarray) -> bytes:
    """An 8x8 digit (values 0..16) as a grey PNG, as a camera-side client would send it."""
    import io

    from PIL import Image

    grey = np.clip(np.rint(pixels.reshape(8, 8) * 255 / 16), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    return buffer.getvalue()


async def drive_image_demo(
    settings: Settings,
    X: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    rows: tuple[np.ndarray, np.ndarray],
    requests: int,
    rate: float,
    label_delay_s: float,
    stop: asyncio.Event,
    report: Callable[[str], None],
) -> None:
    """An image model end to end: a network trained here on 60 % of the digits (numpy, the
    trainer's mlp family) is written as an ONNX graph and imported with a serving spec (PNG
    decoded, grey, 8x8, scaled to the training range, flattened), gated by the validator on
    labelled PNGs, published; then PNG requests and their labels flow as in the other demos."""
    from modelstream.contracts import tensors
    from modelstream.contracts.builders import command
    from modelstream.contracts.codec import default_codec
    from modelstream.contracts.definitions import Definition
    from modelstream.contracts.records import ModelArtifact, PredictionRequest
    from modelstream.kafka.clients import make_producer
    from modelstream.kafka.control import send_command
    from modelstream.learn.mlp import MLPModel, mlp_config
    from modelstream.learn.procedure import train
    from modelstream.learn.sgd import GDConfig
    from modelstream.registry.artifact import load_public_key, seal_candidate
    from modelstream.registry.follower import load_production
    from modelstream.registry.keys import maker_key
    from modelstream.registry.onnx_interop import export_onnx
    from modelstream.registry.tensor_model import describe, parse_spec, tensor_candidate

    name, codec = IMAGE_DEMO, default_codec()
    train_rows, serve_rows = rows
    await send_command(
        settings,
        command(
            name,
            Action.DEFINE,
            definition=Definition(name=name, task=Task.MULTICLASS, classes=tuple(classes)),
            reason="modelstream up --demo",
        ),
    )
    report("demo: training a 64-32-10 network on 60 % of the digits ...")
    config = mlp_config(GDConfig(seed=0, max_epochs=60), (32,))
    trained = await asyncio.to_thread(
        train,
        X[train_rows],
        y[train_rows],
        Task.MULTICLASS,
        [f"pixel_{i}" for i in range(64)],
        classes,
        config,
        (1e-4,),
        2,
    )
    assert isinstance(trained.model, MLPModel)
    graph = export_onnx(trained.model, name=name, version=0, digest="")
    import json

    signature = describe(graph, parse_spec(json.dumps(DIGITS_SPEC)))
    # an imported graph: signed as the importer would sign it, with the key `up` made
    keys_dir = settings.state_dir / "keys"
    candidate = seal_candidate(
        tensor_candidate(name, signature, created_by="demo"),
        maker_key(
            settings.model_copy(update={"keys_dir": keys_dir, "candidate_key_file": None}),
            "importer",
        ),
    )
    async with make_producer(settings) as producer:
        for i in train_rows[:300]:  # labelled images: the validator judges the graph on them
            example = {
                "model": name,
                "label": classes[int(y[i])],
                "tensors": [tensors.from_elements("image", [digit_png(X[i])])],
            }
            await producer.send(
                settings.topic("training"),
                key=name.encode(),
                value=codec.encode(TrainingExample, example),
            )
        await producer.send_and_wait(
            settings.topic("candidates"),
            key=name.encode(),
            value=codec.encode(ModelArtifact, candidate),
        )
        report("demo: image model imported; waiting for the gate and the publisher ...")
        key = load_public_key(settings.state_dir / "keys" / "modelstream.pub")
        while not stop.is_set():
            if name in await load_production(settings, key):
                break
            await asyncio.sleep(1.0)
        images = {int(i): digit_png(X[i]) for i in serve_rows}

        def image(n: int, rid: str) -> tuple[bytes, str]:
            row = int(serve_rows[n % len(serve_rows)])
            request: PredictionRequest = {
                "request_id": rid,
                "model": name,
                "features": b"",
                "version": None,
                "sent_at_ms": int(time.time() * 1000),
                "tensors": [tensors.from_elements("image", [images[row]])],
            }
            return codec.encode(PredictionRequest, request), classes[int(y[row])]

        await stream_requests(
            settings, producer, name, "images", image, requests, rate, label_delay_s, stop, report
        )
