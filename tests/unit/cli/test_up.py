"""`modelstream up`: its port check, and its supervision of children (no broker needed)."""

import socket
import subprocess
import sys
import time
from pathlib import Path

from modelstream.cli.up.stack import Child, Stack, port_free
from modelstream.settings import load


def _time_wait_on(port: int) -> None:
    """Leave a TIME_WAIT socket on ``port`` the way a scraped /metrics server does: the
    server side closes the connection first."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen()
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.close()  # the server closes first: its side goes to TIME_WAIT
    time.sleep(0.05)
    client.close()
    server.close()


def test_a_port_left_in_time_wait_counts_as_free():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _time_wait_on(port)
    with socket.socket() as plain:  # what the old check did: it fails here
        try:
            plain.bind(("127.0.0.1", port))
            plain_ok = True
        except OSError:
            plain_ok = False
    assert not plain_ok, "no TIME_WAIT socket was left; the test proves nothing"
    assert port_free(port)
    with socket.socket() as listening:  # a live server on the port: busy for real
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(("127.0.0.1", port))
        listening.listen()
        assert not port_free(port)


def test_an_exited_child_is_restarted_with_backoff(tmp_path: Path):
    stack = Stack(load(state_dir=tmp_path))
    child = Child("predictor-0", "predictor", 0, {}, tmp_path / "predictor-0.log")
    child.process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"])
    child.process.wait()
    child.started_at = time.monotonic()
    stack.children.append(child)
    spawned: list[str] = []
    stack._spawn = lambda c: (
        spawned.append(c.name),
        setattr(c, "restart_at", None),  # type: ignore[method-assign]
        setattr(c, "started_at", time.monotonic()),
    )
    said: list[str] = []
    stack.supervise(said.append)
    assert said == ["predictor-0 exited (7); restarting in 1 s"] and not spawned
    assert "exited with code 7" in child.log_path.read_text()
    child.restart_at = time.monotonic() - 0.01  # the backoff has passed
    stack.supervise(said.append)
    assert spawned == ["predictor-0"] and child.restarts == 1
    # failing again at once: the next delay doubles
    child.restart_at = None
    stack.supervise(said.append)
    assert said[-1] == "predictor-0 exited (7); restarting in 2 s"
