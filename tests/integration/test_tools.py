"""Outside tools against running services: Prometheus scrapes them, kcat talks JSON."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import Feedback
from tests.support.helpers import produce
from tests.support.models import BC, dataset, publish, requests_for, trained_body
from tests.support.ports import free_port_pair
from tests.support.processes import Predictor

ROOT = Path(__file__).resolve().parents[2]


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required under CI (infra/dev.sh installs it)")
        pytest.skip(f"{name} not installed")
    return path


def query(port: int, promql: str) -> list[dict]:  # type: ignore[type-arg]
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())["data"]["result"]  # type: ignore[no-any-return]


async def _until(check, timeout_s, what):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except (OSError, IndexError, KeyError, ValueError):
            pass  # not up yet, or no sample scraped yet
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.5)


async def test_prometheus_scrapes_the_prediction_counter(topics, keys, tmp_path):  # type: ignore[no-untyped-def]
    prometheus = tool("prometheus")
    base = topics
    await publish(base, keys, trained_body(BC), 1)
    predictor = Predictor(base, keys, "p", tmp_path)
    # The project's own config and alert rules, pointed at this test's predictor.
    config = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["rule_files"] = [str(ROOT / "infra/prometheus/alerts.yml")]
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [
            {
                "targets": (
                    [f"127.0.0.1:{predictor.metrics_port}"]
                    if job["job_name"] == "modelstream-predictor"
                    else []
                )
            }
        ]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port_pair()
    server = subprocess.Popen(  # noqa: ASYNC220 - a server for the whole test
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "prometheus.log", "wb"),  # noqa: ASYNC230 - once, at start
    )
    try:
        await _until(
            lambda: query(port, 'up{job="modelstream-predictor"}')[0]["value"][1] == "1",
            60,
            "Prometheus never scraped the predictor",
        )
        sent = 750
        await produce(base, "requests", requests_for(BC, sent, packed=True))
        promql = f'sum(modelstream_predictions_total{{model="{BC}",version="1"}})'
        await _until(
            lambda: float(query(port, promql)[0]["value"][1]) == sent,
            60,
            f"Prometheus never saw {sent} predictions",
        )
        rules = json.loads(
            urllib.request.urlopen(  # noqa: ASYNC210 - loopback
                f"http://127.0.0.1:{port}/api/v1/rules", timeout=5
            ).read()
        )
        names = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
        assert "ModelstreamArtifactRefused" in names
    except BaseException:
        print((tmp_path / "prometheus.log").read_text()[-3000:], predictor.output())
        raise
    finally:
        server.terminate()
        server.wait(timeout=30)
        predictor.stop()


async def test_kcat_speaks_json_with_the_services(topics, keys, tmp_path):  # type: ignore[no-untyped-def]
    kcat = tool("kcat")
    base = topics
    await publish(base, keys, trained_body(BC), 1)
    predictor = Predictor(base, keys, "k", tmp_path, MODELSTREAM_OUTPUT_FORMAT="json")
    X, _, names, _ = dataset(BC)
    n = 25
    requests = "".join(
        f"k-{i}\t"
        + json.dumps(
            {
                "request_id": f"k-{i}",
                "model": BC,
                "features": dict(zip(names, X[i].tolist(), strict=True)),
            }
        )
        + "\n"
        for i in range(n)
    )
    feedback = "".join(
        f"k-{i}\t" + json.dumps({"request_id": f"k-{i}", "model": BC, "label": "1"}) + "\n"
        for i in range(n)
    )
    broker = ["-b", base.bootstrap]
    try:
        for topic, lines in (("requests", requests), ("feedback", feedback)):
            produced = await asyncio.to_thread(
                subprocess.run,
                [kcat, *broker, "-t", base.topic(topic), "-P", "-K", "\t"],
                input=lines,
                text=True,
                capture_output=True,
                timeout=60,
                check=False,
            )
            assert produced.returncode == 0, produced.stderr

        async def consume(topic: str) -> list[str]:
            result = await asyncio.to_thread(
                subprocess.run,
                [
                    kcat,
                    *broker,
                    "-t",
                    base.topic(topic),
                    "-C",
                    "-o",
                    "beginning",
                    "-e",
                    "-q",
                    "-X",
                    "isolation.level=read_committed",
                    "-f",
                    "%s\n",
                ],
                text=True,
                capture_output=True,
                timeout=60,
                check=False,
            )
            return [line for line in result.stdout.splitlines() if line.strip()]

        lines: list[str] = []
        deadline = time.monotonic() + 60
        while len(lines) < n and time.monotonic() < deadline:
            lines = await consume("predictions")
            await asyncio.sleep(0.5)
        predictions = [json.loads(line) for line in lines]
        assert sorted(p["request_id"] for p in predictions) == sorted(f"k-{i}" for i in range(n))
        assert all(p["version"] == 1 and set(p["scores"]) == {"0", "1"} for p in predictions)
        labels = [
            default_codec().decode_any(line.encode(), Feedback)["label"]
            for line in await consume("feedback")
        ]
        assert labels == ["1"] * n
    except BaseException:
        print(predictor.output())
        raise
    finally:
        predictor.stop()
