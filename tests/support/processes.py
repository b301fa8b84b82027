"""modelstream services as real OS processes (`modelstream run SERVICE`), for crash tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from modelstream.settings import Settings
from tests.support.ports import free_base_below_ephemeral


class ServiceProcess:
    def __init__(
        self,
        service: str,
        base: Settings,
        keys: Path,
        instance: str,
        log_dir: Path,
        **extra_env: str,
    ) -> None:
        self.service = service
        self.metrics_port = free_base_below_ephemeral(1)
        self.log_path = log_dir / f"{service}-{instance}.log"
        env = {
            **os.environ,
            "MODELSTREAM_BOOTSTRAP_SERVERS": base.bootstrap,
            "MODELSTREAM_TOPIC_PREFIX": base.topic_prefix,
            "MODELSTREAM_PUBLIC_KEY_FILE": str(keys / "modelstream.pub"),
            f"MODELSTREAM_{service.upper()}_METRICS_PORT": str(self.metrics_port),
            "MODELSTREAM_INSTANCE_ID": instance,
            **extra_env,
        }
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "modelstream.cli", "run", service],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` that carry ``labels`` (and maybe others) on the
        process's /metrics; 0 when absent or not yet serving."""
        try:
            text = (
                urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2)
                .read()
                .decode()
            )
        except OSError:
            return 0.0
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.kill()
        code = self.process.wait(timeout=30)
        self.log.close()
        return code


class Predictor(ServiceProcess):
    def __init__(
        self, base: Settings, keys: Path, instance: str, log_dir: Path, **extra_env: str
    ) -> None:
        super().__init__(
            "predictor",
            base,
            keys,
            instance,
            log_dir,
            MODELSTREAM_PREDICTOR_SESSION_TIMEOUT_S="6",
            **extra_env,
        )

    def consumed(self) -> float:
        return self.metric("modelstream_events_consumed_total", service="predictor")


def stop_up(up: subprocess.Popen[bytes], state_dir: Path) -> None:
    """Stop a `modelstream up` a test started, whatever state it is in: Ctrl-C first, then
    SIGKILL for it and for every child it recorded (its children run in sessions of their
    own, so killing `up` alone would leave them running)."""
    if up.poll() is None:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
    pids = state_dir / "up.pids"
    if pids.exists():
        for line in pids.read_text().splitlines():
            with contextlib.suppress(ProcessLookupError, ValueError, IndexError):
                os.kill(int(line.split()[0]), signal.SIGKILL)
