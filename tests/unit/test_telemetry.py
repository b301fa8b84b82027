"""Metric conventions, and dashboards/alerts that only query metrics the services export."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import modelstream.telemetry  # noqa: F401 - registers every metric

ROOT = Path(__file__).resolve().parents[2]
# reason, stage (of the monitor) and topic (logical names) are fixed sets
# bounded label values only; the gateway's protocol is oip or tf, its status an HTTP code
ALLOWED_LABELS = {"service", "model", "version", "reason", "stage", "topic", "protocol", "status"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def families():  # type: ignore[no-untyped-def]
    return [m for m in REGISTRY.collect() if m.name.startswith("modelstream_")]


def exported_names() -> set[str]:
    return {m.name + suffix for m in families() for suffix in SUFFIXES[m.type]}


def test_metric_names_units_and_labels():
    assert len(families()) >= 15
    unit = re.compile(
        r"^modelstream_[a-z_]+_(total|seconds|records|version|examples|"
        r"bytes|ratio|labels|nats|units|ready)$"  # _ready: a 0/1 state
    )
    for family in families():
        for name in {family.name + s for s in SUFFIXES[family.type]} - {
            family.name + "_bucket",
            family.name + "_sum",
            family.name + "_count",
        }:
            assert unit.match(name), name
    collectors = [
        c
        for c in REGISTRY._collector_to_names  # type: ignore[attr-defined]
        if getattr(c, "_name", "").startswith("modelstream_")
    ]
    for collector in collectors:
        assert set(collector._labelnames) <= ALLOWED_LABELS, collector._name


def queried_metrics() -> dict[str, set[str]]:
    dashboard = json.loads((ROOT / "infra/grafana/dashboards/modelstream.json").read_text())
    alerts = yaml.safe_load((ROOT / "infra/prometheus/alerts.yml").read_text())
    sources = {
        "dashboard": [t["expr"] for p in dashboard["panels"] for t in p["targets"]],
        "alerts": [r["expr"] for g in alerts["groups"] for r in g["rules"]],
    }
    return {
        where: {m for e in exprs for m in re.findall(r"modelstream_[a-z_]+", e)}
        for where, exprs in sources.items()
    }


def test_dashboard_and_alerts_query_only_exported_metrics():
    exported = exported_names()
    for where, names in queried_metrics().items():
        assert names, where
        assert names <= exported, (where, sorted(names - exported))


def _promtool(*args: str):  # type: ignore[no-untyped-def]
    if shutil.which("promtool") is None:
        if os.environ.get("CI"):
            pytest.fail("promtool (Debian package prometheus) is required under CI")
        pytest.skip("promtool not installed")
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_accepts_config_and_rules():
    config = _promtool("check", "config", str(ROOT / "infra/prometheus/prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = _promtool("check", "rules", str(ROOT / "infra/prometheus/alerts.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS" in rules.stdout


def test_observe_many_equals_observe():
    import numpy as np
    from prometheus_client import CollectorRegistry, Histogram

    from modelstream.telemetry import observe_many

    values = [0.05, 0.1, 0.2, 0.5, 0.7, 1.0, 3.0]
    results = []
    for bulk in (True, False):
        registry = CollectorRegistry()
        histogram = Histogram("h_seconds", "x", buckets=(0.1, 0.5, 1.0), registry=registry)
        if bulk:
            observe_many(histogram, np.array(values))
        else:
            for v in values:
                histogram.observe(v)
        (family,) = registry.collect()
        results.append(
            {
                (s.name, s.labels.get("le")): s.value
                for s in family.samples
                if not s.name.endswith("_created")
            }
        )
    assert results[0] == results[1]
    assert results[0][("h_seconds_bucket", "0.5")] == 4.0  # cumulative: 0.05, 0.1, 0.2, 0.5


def test_readme_lists_every_metric():
    readme = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"^\| `(modelstream_[a-z_]+)` \|", readme, flags=re.M))
    documented = {m.name + ("_total" if m.type == "counter" else "") for m in families()}
    assert listed == documented


def test_history_dashboard_queries_only_what_the_monitor_writes_to_influxdb():
    from modelstream.services.monitor.windows import INFLUX_MEASUREMENTS

    dashboard = json.loads((ROOT / "infra/grafana/dashboards/modelstream-history.json").read_text())
    queries = [t["query"] for p in dashboard["panels"] for t in p["targets"]]
    assert queries
    for query in queries:
        (measurement,) = re.findall(r'FROM "([a-z_]+)"', query)
        fields = set(re.findall(r'(?:mean|sum|last|max)\("([a-z_]+)"\)', query))
        assert fields and fields <= set(INFLUX_MEASUREMENTS[measurement]), query
    datasource = yaml.safe_load(
        (ROOT / "infra/grafana/provisioning/datasources/influxdb.yml").read_text()
    )
    assert datasource["datasources"][0]["uid"] == "influxdb"
