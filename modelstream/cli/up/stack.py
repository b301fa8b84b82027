"""The processes behind `modelstream up`: the embedded broker (unless
``MODELSTREAM_BOOTSTRAP_SERVERS`` names another), the topics, the keys, and one child process
per service with its log under ``<state dir>/logs/``."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modelstream.errors import ConfigurationError
from modelstream.settings import Settings


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int


@dataclass
class Stack:
    """The broker (when embedded) and one process per service."""

    settings: Settings
    predictors: int = 2
    metrics_base_port: int = 9101
    children: list[Child] = field(default_factory=list)
    started_broker: bool = False

    @property
    def log_dir(self) -> Path:
        return self.settings.state_dir / "logs"

    @property
    def keys_dir(self) -> Path:
        return self.settings.state_dir / "keys"

    def start(self, say: Callable[[str], None]) -> None:
        from modelstream.kafka.topology import create_topics
        from modelstream.ops.broker import EmbeddedCluster
        from modelstream.registry.artifact import generate_keys

        if self.settings.embedded:
            say(f"starting the embedded Kafka broker on {self.settings.bootstrap} ...")
            self.started_broker = bool(EmbeddedCluster(self.settings).start())
        report = asyncio.run(create_topics(self.settings))
        say(
            f"broker {self.settings.bootstrap}: {len(report.created)} topics created, "
            f"{len(report.existing)} already there"
        )
        generate_keys(self.keys_dir, keep_existing=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        base = self.metrics_base_port
        plan = [
            ("trainer", base, {}),
            ("validator", base + 1, {}),
            (
                "publisher",
                base + 2,
                {"MODELSTREAM_PRIVATE_KEY_FILE": str(self.keys_dir / "modelstream.key")},
            ),
            ("monitor", base + 4, {}),
        ]
        plan += [
            (
                "predictor",
                base + 3 if i == 0 else base + 10 + i,
                {"MODELSTREAM_INSTANCE_ID": str(i)},
            )
            for i in range(self.predictors)
        ]
        busy = [port for _, port, _ in plan if not _port_free(port)]
        if busy:
            raise ConfigurationError(
                f"/metrics port(s) {busy} are in use; choose others with --metrics-base-port"
            )
        for service, port, extra in plan:
            self._spawn(service, port, extra)
        (self.settings.state_dir / "up.pids").write_text(
            "".join(f"{c.process.pid} {c.name}\n" for c in self.children)
        )
        say(f"started {len(self.children)} service processes; logs in {self.log_dir}")

    def _spawn(self, service: str, port: int, extra: dict[str, str]) -> None:
        instance = extra.get("MODELSTREAM_INSTANCE_ID")
        name = service if instance is None else f"{service}-{instance}"
        env = {
            **os.environ,
            "MODELSTREAM_BOOTSTRAP_SERVERS": self.settings.bootstrap,
            "MODELSTREAM_TOPIC_PREFIX": self.settings.topic_prefix,
            "MODELSTREAM_STATE_DIR": str(self.settings.state_dir),
            "MODELSTREAM_PUBLIC_KEY_FILE": str(self.keys_dir / "modelstream.pub"),
            f"MODELSTREAM_{service.upper()}_METRICS_PORT": str(port),
            **extra,
        }
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "modelstream.cli", "run", service],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # Ctrl-C reaches `up`, which stops them in order
        self.children.append(Child(name, process, log_path, port))

    def stop(self, say: Callable[[str], None], timeout_s: float = 30.0) -> None:
        from modelstream.ops.broker import EmbeddedCluster

        for child in self.children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in self.children:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"{child.name} did not stop in {timeout_s:.0f} s; killing it")
                child.process.kill()
                child.process.wait()
        codes = ", ".join(f"{c.name}={c.process.returncode}" for c in self.children)
        say(f"services stopped ({codes})")
        if self.started_broker:
            EmbeddedCluster(self.settings).stop()
            say("embedded broker stopped")


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
