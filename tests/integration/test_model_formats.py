"""The formats models arrive in, through `models import` on the real broker: Keras files
(read as data) and scikit-learn pickles (opened on the user's word, converted) are gated,
signed, published and served with the original framework's own answers; hostile files are
refused in one line and nothing reaches `candidates`.

Keras's answers were recorded by Keras itself (tests/data/keras/make.py); the pickle is
alt-profanity-check's two files composed into one pipeline by the README's snippet, run in
the libraries' own environment (tests/support/reference.py), and its answers are the
library's own `predict_prob`."""

from __future__ import annotations

import asyncio
import json
import pickle
import re
import subprocess
import time
import uuid
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelstream.contracts.client import RequestEncoder
from modelstream.kafka.topology import create_topics
from modelstream.registry.artifact import generate_keys, load_public_key
from modelstream.registry.follower import load_production
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
    produce,
    produce_records,
    read_all,
    run_cli,
    running,
    service_settings,
)

ROOT = Path(__file__).resolve().parents[2]
KERAS = ROOT / "tests" / "data" / "keras"
EXPECTED = json.loads((KERAS / "expected.json").read_text())
README = (ROOT / "README.md").read_text()
TEXTS = [
    "you are a wonderful person",
    "fuck you",
    "this is shit",
    "have a great day at the office",
    "go to hell you idiot",
    "Kafka keeps every record in order",
    "SHUT UP!!! stupid",
    "thank you very much",
    "fück you",
    "café crème brûlée",
    "ПРИВЕТ мир",
    "",
]


@dataclass
class Stack:
    base: Settings
    keys: Path
    tmp: Path

    async def cli(self, *args: str) -> Any:
        return await run_cli(
            self.base, *args, MODELSTREAM_PUBLIC_KEY_FILE=str(self.keys / "modelstream.pub")
        )


@pytest.fixture(scope="module")
async def stack(broker, tmp_path_factory) -> AsyncIterator[Stack]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("formats")
    base = load(
        bootstrap_servers=broker.bootstrap,
        topic_prefix=f"f{uuid.uuid4().hex[:10]}.",
        state_dir=tmp / "state",
        client_id=f"test-{uuid.uuid4().hex[:6]}",
    )
    await create_topics(base)
    generate_keys(tmp / "keys")
    keys = tmp / "keys"
    async with (
        running(ValidatorApp(service_settings(ValidatorSettings, base, keys))),
        running(PublisherApp(service_settings(PublisherSettings, base, keys))),
        running(PredictorApp(service_settings(PredictorSettings, base, keys))),
    ):
        yield Stack(base, keys, tmp)


async def publish(stack: Stack, name: str, path: Path, *flags: str) -> str:
    """`models import` the file; wait until it is the production version; the CLI's output."""
    imported = await stack.cli("models", "import", name, str(path), *flags)
    assert imported.returncode == 0, imported.stderr
    public = load_public_key(stack.keys / "modelstream.pub")
    deadline = time.monotonic() + 120
    while name not in await load_production(stack.base, public):
        assert time.monotonic() < deadline, f"{name} was not published"
        await asyncio.sleep(0.5)
    return str(imported.stdout)


async def predictions(
    stack: Stack, name: str, rows: list[Any], categories: list[dict[str, str]] | None = None
) -> list[dict[str, Any]]:
    encoder = RequestEncoder([] if categories else [f"f{i}" for i in range(len(rows[0]))])
    ids = [f"{name}-{i}" for i in range(len(rows))]
    await produce(
        stack.base,
        "requests",
        [
            (
                rid.encode(),
                encoder.encode(
                    rid, name, row, packed=True, categories=categories[i] if categories else None
                ),
            )
            for i, (rid, row) in enumerate(zip(ids, rows, strict=True))
        ],
    )
    wanted = set(ids)
    records = await consume_until(
        stack.base, "predictions", lambda r: wanted <= {x.key.decode() for x in r}, timeout_s=90
    )
    by_id = {p["request_id"]: p for p in decoded(records, "Prediction")}
    return [by_id[rid] for rid in ids]


async def test_keras_models_are_served_as_keras_answered(stack: Stack) -> None:
    cases = [  # (file, what it becomes)
        ("relu_softmax.keras", "mlp"),  # the native network family
        ("tanh_sigmoid.h5", "onnx"),  # tanh and sigmoid hidden layers: an ONNX graph
    ]
    for file, kind in cases:
        name = file.split(".")[0].replace("_", "-")
        rows = np.array(EXPECTED[file.split(".")[0]]["rows"])
        keras = np.array(EXPECTED[file.split(".")[0]]["predictions"])
        if keras.shape[1] == 1:
            keras = np.column_stack((1.0 - keras[:, 0], keras[:, 0]))
        classes = [str(i) for i in range(keras.shape[1])]
        await define(stack.base, name, "MULTICLASS" if len(classes) > 2 else "BINARY")
        await produce_records(  # the gate's labelled rows: Keras's own answers
            stack.base,
            "training",
            "TrainingExample",
            [
                {
                    "model": name,
                    "features": {f"f{j}": float(v) for j, v in enumerate(row)},
                    "label": classes[int(k)],
                }
                for row, k in zip(rows, keras.argmax(axis=1), strict=True)
            ],
            key=lambda r: r["model"],
        )
        output = await publish(stack, name, KERAS / file)
        assert f"converted from keras ({kind})" in output, output
        served = await predictions(stack, name, rows.tolist())
        ours = np.array([[p["scores"][c] for c in classes] for p in served])
        np.testing.assert_allclose(ours, keras, rtol=0, atol=1e-6)
        print(f"\n{file}: {kind}, max |p - keras p| = {np.abs(ours - keras).max():.2e}")


async def test_the_readmes_profanity_pipeline_is_served_as_the_library_answers(
    stack: Stack,
) -> None:
    (snippet,) = re.findall(r"```python alt-profanity-check\n(.*?)```", README, flags=re.S)
    python = str(await asyncio.to_thread(reference.python))
    await asyncio.to_thread(
        subprocess.run, [python, "-c", snippet], cwd=stack.tmp, check=True, timeout=300
    )
    command = re.search(r"# modelstream models import (\S+) (\S+) (.*)", snippet)
    assert command is not None
    name, file, flags = command.group(1), command.group(2), command.group(3).split()
    library = await asyncio.to_thread(
        reference.run, "profanity", {"texts": TEXTS, "out": str(stack.tmp / "unused.onnx")}
    )
    probabilities = np.array(library["probabilities"])
    classes = flags[flags.index("--classes") + 1].split(",")
    await define(stack.base, name, "BINARY", classes=tuple(classes))
    await produce_records(
        stack.base,
        "training",
        "TrainingExample",
        [
            {
                "model": name,
                "features": {},
                "categories": {"text": t},
                "label": classes[int(p >= 0.5)],
            }
            for t, p in zip(TEXTS * 5, np.tile(probabilities, 5), strict=True)
        ],
        key=lambda r: r["model"],
    )
    output = await publish(stack, name, stack.tmp / file, *flags)
    assert "converted from pickle (onnx)" in output, output
    served = await predictions(stack, name, [[]] * len(TEXTS), [{"text": t} for t in TEXTS])
    ours = np.array([p["scores"][classes[1]] for p in served])
    assert np.abs(ours - probabilities).max() < 1e-6
    assert [p["prediction"] for p in served] == [classes[int(p >= 0.5)] for p in probabilities]
    print(f"\nprofanity pickle: max |p - library p| = {np.abs(ours - probabilities).max():.2e}")


class Marker:
    """Unpickling this writes a file: the code a pickle carries."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


async def test_hostile_files_get_one_line_and_nothing_reaches_candidates(stack: Stack) -> None:
    tmp = stack.tmp / "hostile"
    tmp.mkdir()
    marker = tmp / "code-ran"
    (tmp / "runs-code.pkl").write_bytes(pickle.dumps(Marker(marker)))
    (tmp / "dict.pkl").write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    (tmp / "truncated.joblib").write_bytes(pickle.dumps(list(range(1000)))[:100])
    with zipfile.ZipFile(KERAS / "relu_softmax.keras") as source:
        members = {i.filename: source.read(i) for i in source.infolist()}
    with zipfile.ZipFile(tmp / "traversal.keras", "w") as out:
        for member, data in members.items():
            out.writestr(member, data)
        out.writestr("../../outside.h5", b"x")
    with zipfile.ZipFile(tmp / "huge.keras", "w") as out:
        for member, data in members.items():
            out.writestr(member, data)
        out.filelist[-1].file_size = 10 * 2**30  # the central directory declares 10 GB
    mismatched = tmp / "mismatched.keras"
    config = json.loads(members["config.json"])
    config["config"]["layers"][1]["config"]["units"] = 17  # the kernel has 16
    with zipfile.ZipFile(mismatched, "w") as out:
        for member, data in members.items():
            out.writestr(member, json.dumps(config) if member == "config.json" else data)
    cases = [
        ("runs-code.pkl", (), "unpickling runs whatever code it names"),
        ("dict.pkl", ("--trust-pickle",), "not a scikit-learn estimator"),
        ("truncated.joblib", ("--trust-pickle",), "does not unpickle"),
        (KERAS / "lambda.h5", (), "is a Lambda layer: it carries Python bytecode"),
        ("traversal.keras", (), "names a path outside the archive"),
        ("huge.keras", (), "declares 10737418240 bytes"),
        ("mismatched.keras", (), "the kernel is [6, 16], the configuration says [6, 17]"),
    ]
    names = [f"hostile-{i}" for i in range(len(cases))]
    results = await asyncio.gather(
        *(
            stack.cli("models", "import", name, str(tmp / file), *flags)
            for name, (file, flags, _) in zip(names, cases, strict=True)
        )
    )
    for (file, _, message), result in zip(cases, results, strict=True):
        assert result.returncode != 0, file
        assert message in result.stderr, (file, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not marker.exists()
    keys = {r.key.decode() for r in await read_all(stack.base, "candidates")}
    assert not keys & set(names)
