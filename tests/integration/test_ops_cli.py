"""`modelstream send`, `tail` and `status` against the real broker."""

from __future__ import annotations

import csv
import json

from sklearn.datasets import load_diabetes

from modelstream.contracts.definitions import Definition
from modelstream.contracts.records import Task
from modelstream.learn.sgd import GDConfig
from modelstream.services.predictor.app import PredictorApp
from modelstream.services.trainer.logic import TrainerLogic
from tests.support.helpers import consume_until, decoded, define, run_cli, running
from tests.support.models import BC, dataset, predictor_settings, publish, trained_body


async def cli(base, keys, *args):  # type: ignore[no-untyped-def]
    return await run_cli(base, *args, MODELSTREAM_PUBLIC_KEY_FILE=str(keys / "modelstream.pub"))


async def test_send_tail_and_status(topics, keys, tmp_path):  # type: ignore[no-untyped-def]
    base = topics
    X, y, names, _ = dataset(BC)
    requests = tmp_path / "requests.jsonl"
    requests.write_text(
        "".join(
            json.dumps({"request_id": f"q-{i}", "model": BC, "features": X[i].tolist()}) + "\n"
            for i in range(5)
        )
    )
    examples = tmp_path / "examples.csv"
    with examples.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*names, "label"])
        for i in range(20):
            writer.writerow([*X[i].tolist(), int(y[i])])

    await publish(base, keys, trained_body(BC), 1)
    await define(base, BC, "BINARY", feature_names=tuple(names), classes=("0", "1"))
    async with running(PredictorApp(predictor_settings(base, keys))):
        sent = await cli(base, keys, "send", str(requests), "--topic", "requests")
        assert sent.returncode == 0 and "sent 5 PredictionRequest" in sent.stdout, sent.stderr
        trained = await cli(base, keys, "send", str(examples), "--topic", "training", "--model", BC)
        assert "sent 20 TrainingExample" in trained.stdout, trained.stderr
        await consume_until(base, "predictions", lambda r: len(r) >= 5)
        status = await cli(base, keys, "status")
    assert status.returncode == 0, status.stderr
    assert "topics all present" in status.stdout
    assert any(line.split()[:2] == ["predictor", "up"] for line in status.stdout.splitlines())
    assert f"model {BC}: v1" in status.stdout and "signed" in status.stdout

    tailed = await cli(
        base, keys, "tail", "predictions", "--from-beginning", "--limit", "5", "--json"
    )
    predictions = [json.loads(line) for line in tailed.stdout.splitlines()]
    assert sorted(p["request_id"] for p in predictions) == [f"q-{i}" for i in range(5)]
    examples_on_topic = decoded(
        await consume_until(base, "training", lambda r: len(r) >= 20), "TrainingExample"
    )
    assert examples_on_topic[0]["features"] == dict(zip(names, X[0].tolist(), strict=True))
    assert examples_on_topic[0]["label"] == str(int(y[0]))

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"request_id": "ok", "model": "m", "features": [1]}\n'
        '{"request_id": 7, "model": "m", "features": [1]}\n'
    )
    refused = await cli(base, keys, "send", str(bad), "--topic", "requests")
    assert refused.returncode == 2
    assert "bad.jsonl:2" in refused.stderr and "request_id" in refused.stderr
    deep = tmp_path / "deep.jsonl"
    deep.write_text(
        '{"request_id": "d", "model": "m", "features": ' + "[" * 5000 + "]" * 5000 + "}\n"
    )
    refused = await cli(base, keys, "send", str(deep), "--topic", "requests")
    assert refused.returncode == 2 and "too-deep" in refused.stderr, refused.stderr


async def test_csv_labels_are_typed_by_the_models_task(topics, keys, tmp_path):  # type: ignore[no-untyped-def]
    """A regression model's CSV labels go out as numbers (the trainer refuses a string
    label for a regression model); a classifier's stay class names."""
    base = topics
    data = load_diabetes()
    names = [str(n) for n in data.feature_names]
    await define(base, "diabetes", "REGRESSION", feature_names=tuple(names))
    examples = tmp_path / "diabetes.csv"
    with examples.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*names, "label"])
        for i in range(30):
            writer.writerow([*data.data[i].tolist(), f"{data.target[i]:.1f}"])
    sent = await cli(
        base, keys, "send", str(examples), "--topic", "training", "--model", "diabetes"
    )
    assert sent.returncode == 0 and "sent 30 TrainingExample" in sent.stdout, sent.stderr
    on_topic = decoded(
        await consume_until(base, "training", lambda r: len(r) >= 30), "TrainingExample"
    )
    assert [e["label"] for e in on_topic] == [float(f"{v:.1f}") for v in data.target[:30]]
    logic = TrainerLogic(GDConfig())
    logic.define(Definition(name="diabetes", task=Task.REGRESSION, feature_names=tuple(names)))
    for offset, example in enumerate(on_topic):
        logic.accept(example, 0, offset)  # raises for a label the trainer would dead-letter
    assert len(logic.windows["diabetes"].examples) == 30

    undefined = await cli(
        base, keys, "send", str(examples), "--topic", "training", "--model", "nobody"
    )
    assert undefined.returncode == 2 and "'nobody' is not defined" in undefined.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text(",".join([*names, "label"]) + "\n" + ",".join(["1"] * len(names) + ["big"]))
    refused = await cli(base, keys, "send", str(bad), "--topic", "training", "--model", "diabetes")
    assert refused.returncode == 2 and "bad.csv:2" in refused.stderr
    assert "label 'big' is not a number" in refused.stderr
