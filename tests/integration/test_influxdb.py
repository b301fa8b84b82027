"""The monitor's long-term history in a real InfluxDB 1.x (Debian's `influxdb`), queried back
through InfluxDB's HTTP API; and a dead InfluxDB costs counted points, never labels."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelstream.services.monitor.app import MonitorApp
from modelstream.services.monitor.settings import MonitorSettings
from modelstream.services.predictor.app import PredictorApp
from modelstream.services.predictor.settings import PredictorSettings
from modelstream.telemetry import INFLUX_WRITE_FAILURES
from tests.support.helpers import eventually, produce, running, service_settings
from tests.support.models import BC, dataset, feedback_records, publish, requests_for, trained_body
from tests.support.ports import free_port_pair

N = 600


@pytest.fixture
def influxdb(tmp_path: Path) -> Iterator[str]:
    """influxd on loopback with its own directories and ports; yields its base URL."""
    if shutil.which("influxd") is None:
        if os.environ.get("CI"):
            pytest.fail("influxd (Debian package influxdb) is required under CI")
        pytest.skip("influxd not installed")
    http_port, rpc_port = free_port_pair(), free_port_pair()
    home = tmp_path / "influxdb"
    config = home / "influxdb.conf"
    home.mkdir()
    config.write_text(f"""reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{home}/meta"
[data]
  dir = "{home}/data"
  wal-dir = "{home}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
""")
    log = (home / "influxd.log").open("wb")
    process = subprocess.Popen(
        ["influxd", "-config", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=1) as response:
                    if response.status == 204:
                        break
            except OSError:
                pass
            assert process.poll() is None, (home / "influxd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "influxd did not answer /ping in 30 s"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def query(url: str, database: str, q: str) -> list[dict]:  # type: ignore[type-arg]
    params = urllib.parse.urlencode({"db": database, "q": q})
    with urllib.request.urlopen(f"{url}/query?{params}", timeout=5) as response:
        result = json.loads(response.read())["results"][0]
    return result.get("series", [])  # type: ignore[no-any-return]


async def labelled_traffic(base, monitor: MonitorApp) -> None:  # type: ignore[no-untyped-def]
    _, y, _, _ = dataset(BC)
    await produce(base, "requests", requests_for(BC, N))
    await produce(
        base, "feedback", feedback_records(BC, [(f"r-{i}", str(y[i % len(y)])) for i in range(N)])
    )
    await eventually(
        lambda: monitor.joined_total(BC) >= N,
        60,
        "monitor did not join every label",
    )


async def test_monitor_writes_live_metrics_to_influxdb(topics, keys, influxdb):  # type: ignore[no-untyped-def]
    base = topics
    await publish(base, keys, trained_body(BC), 1)
    monitor = MonitorApp(
        service_settings(
            MonitorSettings,
            base,
            keys,
            influxdb_url=influxdb,
            influxdb_database="history",
            history_window_s=1.0,
        )
    )
    async with (
        running(PredictorApp(service_settings(PredictorSettings, base, keys))),
        running(monitor),
    ):
        await labelled_traffic(base, monitor)
        # the windows (faust) read the learner's outcomes after the join: stopping before
        # they have would leave labels out of every window (seen under CI load: 320 of 600)
        await eventually(lambda: monitor.windows.added >= N, 60, "windows missed outcomes")
    # One point per closed (or, at the stop, still open) one-second window: together they
    # hold every label once.
    series: list[dict] = []  # type: ignore[type-arg]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        series = await asyncio.to_thread(
            query,
            influxdb,
            "history",
            "SELECT sum(labels), mean(accuracy), count(accuracy), last(window_s) "
            f"FROM model_quality WHERE model = '{BC}' GROUP BY version",
        )
        if series and series[0]["values"][0][1] == N:
            break
        await asyncio.sleep(0.5)
    assert series, "no points in InfluxDB"
    _, labels, accuracy, points, window_s = series[0]["values"][0]
    print(
        f"\nInfluxDB: {points} one-second windows of {BC} v{series[0]['tags']['version']}, "
        f"mean accuracy {accuracy:.4f}, {labels} labels"
    )
    assert series[0]["tags"]["version"] == "1"
    assert labels == N and window_s == 1.0 and points >= 1
    assert 0.9 < accuracy <= 1.0


async def test_a_dead_influxdb_costs_counted_points_not_labels(topics, keys):  # type: ignore[no-untyped-def]
    base = topics
    await publish(base, keys, trained_body(BC), 1)
    before = INFLUX_WRITE_FAILURES.labels("monitor")._value.get()
    dead = f"http://127.0.0.1:{free_port_pair()}"  # nothing listens there
    monitor = MonitorApp(
        service_settings(MonitorSettings, base, keys, influxdb_url=dead, history_window_s=1.0)
    )
    async with (
        running(PredictorApp(service_settings(PredictorSettings, base, keys))),
        running(monitor),
    ):
        await labelled_traffic(base, monitor)
    assert monitor.joined_total(BC) == N  # the join never waited for InfluxDB
    assert INFLUX_WRITE_FAILURES.labels("monitor")._value.get() > before
