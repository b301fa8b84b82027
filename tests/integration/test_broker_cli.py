"""`modelstream broker start|status|stop` on a broker of this test's own."""

from tests.support.helpers import cli
from tests.support.ports import free_port_pair


def run(state, *args):
    return cli(
        *args,
        timeout_s=180,
        drop=("MODELSTREAM_BOOTSTRAP_SERVERS",),
        MODELSTREAM_STATE_DIR=str(state),
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
        env_status = cli(
            "broker", "status", MODELSTREAM_STATE_DIR=str(tmp_path), MODELSTREAM_BROKER_PORT=port
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
