"""`modelstream broker start|status|stop` on a broker of this test's own."""

import os
import subprocess
import sys

from tests.support.ports import free_port_pair


def run(state, *args):
    env = {**os.environ, "MODELSTREAM_STATE_DIR": str(state)}
    env.pop("MODELSTREAM_BOOTSTRAP_SERVERS", None)
    return subprocess.run(
        [sys.executable, "-m", "modelstream.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_start_status_stop_are_idempotent(tmp_path):
    port = str(free_port_pair())
    try:
        first = run(tmp_path, "broker", "start", "--port", port)
        assert first.returncode == 0, first.stderr
        assert f"broker started at 127.0.0.1:{port}" in first.stdout
        again = run(tmp_path, "broker", "start", "--port", port)
        assert "already running" in again.stdout
        status = run(tmp_path, "broker", "status", "--help")
        assert status.returncode == 0
        env_status = subprocess.run(
            [sys.executable, "-m", "modelstream.cli", "broker", "status"],
            env={
                **os.environ,
                "MODELSTREAM_STATE_DIR": str(tmp_path),
                "MODELSTREAM_BROKER_PORT": port,
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert env_status.returncode == 0, env_status.stdout + env_status.stderr
        assert "running (pid" in env_status.stdout
        assert "1 broker(s) registered" in env_status.stdout
        assert (tmp_path / "broker-0" / "data" / "meta.properties").exists()
        assert (tmp_path / "broker-0" / "logs" / "server.log").exists()
    finally:
        stop = run(tmp_path, "broker", "stop")
    assert stop.returncode == 0 and "broker stopped (1 node(s))" in stop.stdout
    assert "broker not running" in run(tmp_path, "broker", "stop").stdout
    assert run(tmp_path, "broker", "status").returncode == 3
