"""Every service runs as `modelstream run <service>` and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from modelstream.registry.artifact import generate_keys
from tests.support.ports import free_port_pair


@pytest.mark.parametrize("service", ["trainer", "validator", "publisher", "predictor"])
def test_service_starts_and_exits_zero_on_sigterm(topics, tmp_path, service):  # type: ignore[no-untyped-def]
    generate_keys(tmp_path / "keys")
    env = {
        **os.environ,
        "MODELSTREAM_BOOTSTRAP_SERVERS": topics.bootstrap,
        "MODELSTREAM_TOPIC_PREFIX": topics.topic_prefix,
        f"MODELSTREAM_{service.upper()}_METRICS_PORT": str(free_port_pair()),
        "MODELSTREAM_PUBLIC_KEY_FILE": str(tmp_path / "keys" / "modelstream.pub"),
        "MODELSTREAM_PRIVATE_KEY_FILE": str(tmp_path / "keys" / "modelstream.key"),
    }
    log_path = tmp_path / f"{service}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelstream.cli", "run", service],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while f"{service} started" not in log_path.read_text(errors="replace"):
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, log_path.read_text()
        finally:
            if process.poll() is None:
                process.kill()
    assert "Traceback" not in log_path.read_text()
