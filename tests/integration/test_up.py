"""`modelstream up --demo breast-cancer` as a user runs it: its own embedded broker, every
service as a child process, the live view, and Ctrl-C (SIGINT) stopping all of it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.ports import free_base_below_ephemeral, free_port_pair

REQUESTS = 1000


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _last_frame(text: str) -> str:
    return (
        text[text.rindex("modelstream up - broker") :]
        if "modelstream up - broker" in text
        else text
    )


def test_up_demo_runs_the_whole_pipeline_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k != "MODELSTREAM_BOOTSTRAP_SERVERS"}
    env.update(MODELSTREAM_STATE_DIR=str(state), MODELSTREAM_BROKER_PORT=str(free_port_pair()))
    out_path = tmp_path / "up.out"
    with out_path.open("wb") as out:
        up = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelstream.cli",
                "up",
                "--demo",
                "breast-cancer",
                "--requests",
                str(REQUESTS),
                "--rate",
                "250",
                "--label-delay",
                "1",
                "--refresh",
                "1",
                "--metrics-base-port",
                str(free_base_below_ephemeral()),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 300
            while True:
                text = out_path.read_text(errors="replace")
                frame = _last_frame(text)
                joined = re.search(r"online\s+([\d,]+) labels joined", frame)
                if (
                    "demo: done" in text
                    and joined
                    and int(joined.group(1).replace(",", "")) >= REQUESTS
                ):
                    break
                assert up.poll() is None, text[-3000:]
                assert time.monotonic() < deadline, text[-3000:]
                time.sleep(1)
            up.send_signal(signal.SIGINT)  # what Ctrl-C sends
            assert up.wait(timeout=90) == 0
        finally:
            if up.poll() is None:
                up.kill()
    text = out_path.read_text(errors="replace")
    final = text[text.rindex("final state:") :]
    print(final)
    assert re.search(r"production\s+breast-cancer v\d+", final), final
    predictions = re.search(r"predictions\s+([\d,]+) total", final)
    assert predictions and int(predictions.group(1).replace(",", "")) >= REQUESTS
    accuracy = re.search(r"live acc\.\s+breast-cancer v\d+: (0\.\d+)", final)
    assert accuracy and float(accuracy.group(1)) > 0.9, final
    assert re.search(rf"online\s+{REQUESTS:,} labels joined", final), final
    assert re.search(
        r"lifecycle\s+\d+ trained, \d+ validated, \d+ rejected, [1-9]\d* published", final
    )
    assert (
        "services stopped (trainer=0, validator=0, publisher=0, monitor=0, predictor-0=0, "
        "predictor-1=0)" in text
    )
    assert "embedded broker stopped" in text
    # nothing left running: neither a service nor the broker
    pids = [int(line.split()[0]) for line in (state / "up.pids").read_text().splitlines()]
    assert len(pids) == 6 and not any(_alive(p) for p in pids)
    assert not list(state.glob("broker-*/broker.pid")) or not any(
        _alive(int(p.read_text())) for p in state.glob("broker-*/broker.pid")
    )
