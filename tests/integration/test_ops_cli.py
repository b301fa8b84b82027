"""`modelstream send`, `tail` and `status` against the real broker."""

from __future__ import annotations

import csv
import json

from modelstream.services.predictor.app import PredictorApp
from tests.support.helpers import consume_until, decoded, run_cli, running
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
    assert "record 2" in refused.stderr and "request_id" in refused.stderr
