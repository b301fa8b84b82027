"""`modelstream up --demo breast-cancer` as a user runs it: its own embedded broker, every
service as a supervised child process, the live view, and Ctrl-C (SIGINT) stopping all of
it. On the way: a predictor killed with SIGKILL under load is restarted while the rest keeps
running and every request is answered exactly once; the CLI, given only the state dir, sees
the signed production version; and `up` starts again right after it stopped."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

from sklearn.datasets import load_breast_cancer

from modelstream.kafka.clients import read_to_end
from modelstream.settings import load
from tests.support.helpers import cli
from tests.support.ports import free_base_below_ephemeral, free_port_pair
from tests.support.processes import stop_up

REQUESTS = 3000
RATE = 250


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _last_frame(text: str) -> str:
    marker = "modelstream up - broker"
    return text[text.rindex(marker) :] if marker in text else text


def _until(out_path: Path, up: subprocess.Popen[bytes], done, timeout_s: float) -> str:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        text = out_path.read_text(errors="replace")
        if done(text, _last_frame(text)):
            return text
        assert up.poll() is None, text[-3000:]
        assert time.monotonic() < deadline, text[-3000:]
        time.sleep(0.5)


def _up(args: list[str], env: dict[str, str], out_path: Path) -> subprocess.Popen[bytes]:
    with out_path.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "modelstream.cli", "up", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _answered(bootstrap: str) -> tuple[Counter[bytes], set[bytes]]:
    settings = load(bootstrap_servers=bootstrap)

    async def read() -> tuple[Counter[bytes], set[bytes]]:
        predictions = Counter(
            [r.key async for r in read_to_end(settings, "modelstream.predictions")]
        )
        requests = {r.key async for r in read_to_end(settings, "modelstream.requests")}
        return predictions, requests

    return asyncio.run(read())


def test_up_supervises_the_whole_pipeline_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    state = tmp_path / "state"
    port = free_port_pair()
    bootstrap = f"127.0.0.1:{port}"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MODELSTREAM_BOOTSTRAP_SERVERS", "MODELSTREAM_PUBLIC_KEY_FILE")
    }
    env.update(MODELSTREAM_STATE_DIR=str(state), MODELSTREAM_BROKER_PORT=str(port))
    metrics_base = str(free_base_below_ephemeral())
    gateway_port = free_port_pair()
    common = [
        "--refresh",
        "0.5",
        "--metrics-base-port",
        metrics_base,
        "--gateway-port",
        str(gateway_port),
    ]
    out_path = tmp_path / "up.out"
    up = _up(
        [
            "--demo",
            "breast-cancer",
            "--requests",
            str(REQUESTS),
            "--rate",
            str(RATE),
            "--label-delay",
            "1",
            *common,
        ],
        env,
        out_path,
    )
    try:
        # Requests are flowing: kill one predictor the hard way.
        _until(
            out_path,
            up,
            lambda text, frame: (
                re.search(r"requests \[[#.]+\] ([\d,]+)", text)
                and int(re.findall(r"requests \[[#.]+\] ([\d,]+)", text)[-1].replace(",", "")) > 500
            ),
            300,
        )
        pids = dict(
            reversed(line.split()) for line in (state / "up.pids").read_text().split("\n") if line
        )
        os.kill(int(pids["predictor-0"]), signal.SIGKILL)
        text = _until(
            out_path,
            up,
            lambda text, frame: (
                "demo: done" in text
                and "predictor-0 up (1 restarts)" in frame
                and (joined := re.search(r"online\s+([\d,]+) labels joined", frame)) is not None
                and int(joined.group(1).replace(",", "")) >= REQUESTS
            ),
            300,
        )
        assert "predictor-0 exited (-9); restarting" in text
        frame = _last_frame(text)
        for service in ("trainer", "validator", "publisher", "monitor", "predictor-1"):
            assert f"{service} up" in frame and f"{service} up (" not in frame, frame

        # Every request the demo sent has exactly one prediction, through the kill.
        deadline = time.monotonic() + 60
        while True:
            predictions, requests = _answered(bootstrap)
            if set(predictions) >= requests or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert len(requests) == REQUESTS
        assert set(predictions) == requests, f"{len(requests - set(predictions))} unanswered"
        assert max(predictions.values()) == 1, predictions.most_common(3)

        # The CLI finds the keys `up` made in the state dir: production is verified.
        cli_env = {"MODELSTREAM_BOOTSTRAP_SERVERS": bootstrap, "MODELSTREAM_STATE_DIR": str(state)}
        listed = cli("models", "list", drop=("MODELSTREAM_PUBLIC_KEY_FILE",), **cli_env)
        assert re.search(r"breast-cancer\s+v\d+", listed.stdout), listed.stdout + listed.stderr
        shown = cli(
            "models", "show", "breast-cancer", drop=("MODELSTREAM_PUBLIC_KEY_FILE",), **cli_env
        )
        assert '"signature": "verified"' in shown.stdout, shown.stdout + shown.stderr
        status = cli("status", drop=("MODELSTREAM_PUBLIC_KEY_FILE",), **cli_env)
        assert re.search(r"model breast-cancer: v\d+ \(\w+, signed\)", status.stdout), status

        # `up` also runs the gateway: one synchronous call, TensorFlow Serving style
        row = load_breast_cancer().data[0].tolist()
        call = urllib.request.Request(
            f"http://127.0.0.1:{gateway_port}/v1/models/breast-cancer:predict",
            data=json.dumps({"instances": [row]}).encode(),
            method="POST",
        )
        with urllib.request.urlopen(call, timeout=30) as answer:
            (prediction,) = json.loads(answer.read())["predictions"]
        assert prediction["predict"] in ("0", "1") and len(prediction["scores"]) == 2

        up.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert up.wait(timeout=90) == 0
    finally:
        stop_up(up, state)
    text = out_path.read_text(errors="replace")
    final = text[text.rindex("final state:") :]
    print(final)
    assert re.search(r"production\s+breast-cancer v\d+", final), final
    accuracy = re.search(r"live acc\.\s+breast-cancer v\d+: (0\.\d+)", final)
    assert accuracy and float(accuracy.group(1)) > 0.9, final
    assert re.search(
        r"lifecycle\s+\d+ trained, \d+ validated, \d+ rejected, [1-9]\d* published", final
    )
    assert (
        "services stopped (trainer=0, validator=0, publisher=0, monitor=0, gateway=0, "
        "predictor-0=0, "
        "predictor-1=0)" in text
    )
    assert "embedded broker stopped" in text
    # nothing left running: neither a service (gateway included) nor the broker
    pids_left = [int(line.split()[0]) for line in (state / "up.pids").read_text().splitlines()]
    assert len(pids_left) == 7 and not any(_alive(p) for p in pids_left)

    # `up` starts again at once on the same ports (its scrapes left TIME_WAIT sockets).
    again_path = tmp_path / "again.out"
    again = _up(common, env, again_path)
    try:
        _until(
            again_path,
            again,
            lambda text, frame: all(
                f"{s} up" in frame
                for s in (
                    "trainer",
                    "validator",
                    "publisher",
                    "monitor",
                    "predictor-0",
                    "predictor-1",
                )
            ),
            120,
        )
        again.send_signal(signal.SIGINT)
        assert again.wait(timeout=90) == 0
    finally:
        stop_up(again, state)
