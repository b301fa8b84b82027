"""The processes behind `modelstream up`: the embedded broker (unless
``MODELSTREAM_BOOTSTRAP_SERVERS`` names another), the topics, the keys, and one child process
per service with its log under ``<state dir>/logs/`` - supervised: a child that exits while
the stack runs is restarted with backoff, and so is the embedded broker."""

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
from modelstream.telemetry import SERVICE_RESTARTS

# A child that keeps failing is restarted after 1, 2, 4 ... up to 30 seconds; one that ran
# this long before it exited starts the count again.
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0


@dataclass
class Child:
    name: str
    service: str
    metrics_port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    failures_in_a_row: int = 0
    restart_at: float | None = None  # when an exited child is due to start again
    last_exit: int | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Stack:
    """The broker (when embedded) and one supervised process per service."""

    settings: Settings
    predictors: int = 2
    metrics_base_port: int = 9101
    gateway_port: int = 8080
    children: list[Child] = field(default_factory=list)
    started_broker: bool = False
    broker_restarts: int = 0

    @property
    def log_dir(self) -> Path:
        return self.settings.state_dir / "logs"

    @property
    def keys_dir(self) -> Path:
        return self.settings.state_dir / "keys"

    def start(self, say: Callable[[str], None]) -> None:
        from modelstream.kafka.clients import reach
        from modelstream.kafka.topology import create_topics
        from modelstream.ops.broker import EmbeddedCluster
        from modelstream.registry.artifact import generate_keys

        if self.settings.embedded:
            say(f"starting the embedded Kafka broker on {self.settings.bootstrap} ...")
            self.started_broker = bool(EmbeddedCluster(self.settings).start())
        asyncio.run(reach(self.settings, self.settings.connect_timeout_s))
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
            ("gateway", base + 5, {"MODELSTREAM_GATEWAY_PORT": str(self.gateway_port)}),
        ]
        plan += [
            (
                "predictor",
                base + 3 if i == 0 else base + 10 + i,
                {"MODELSTREAM_INSTANCE_ID": str(i)},
            )
            for i in range(self.predictors)
        ]
        ports = [port for _, port, _ in plan] + [base + 9]  # base + 9: `up`'s own /metrics
        busy = [port for port in ports if not port_free(port)]
        if busy:
            raise ConfigurationError(
                f"/metrics port(s) {busy} are in use; choose others with --metrics-base-port"
            )
        if self.gateway_port and not port_free(self.gateway_port):
            raise ConfigurationError(
                f"the gateway's port {self.gateway_port} is in use; choose another with "
                "--gateway-port (0: any free port)"
            )
        for service, port, extra in plan:
            instance = extra.get("MODELSTREAM_INSTANCE_ID")
            name = service if instance is None else f"{service}-{instance}"
            env = {
                # a maker's own key file set for `models import` must not become every
                # maker's: each service finds its own key in the keys directory below
                **{k: v for k, v in os.environ.items() if k != "MODELSTREAM_CANDIDATE_KEY_FILE"},
                "MODELSTREAM_KEYS_DIR": str(self.keys_dir),
                "MODELSTREAM_BOOTSTRAP_SERVERS": self.settings.bootstrap,
                "MODELSTREAM_TOPIC_PREFIX": self.settings.topic_prefix,
                "MODELSTREAM_STATE_DIR": str(self.settings.state_dir),
                "MODELSTREAM_PUBLIC_KEY_FILE": str(self.keys_dir / "modelstream.pub"),
                f"MODELSTREAM_{service.upper()}_METRICS_PORT": str(port),
                **extra,
            }
            child = Child(name, service, port, env, self.log_dir / f"{name}.log")
            self.children.append(child)
            self._spawn(child)
        self._write_pids()
        say(f"started {len(self.children)} service processes; logs in {self.log_dir}")

    def _spawn(self, child: Child) -> None:
        with child.log_path.open("ab") as log:
            child.process = subprocess.Popen(
                [sys.executable, "-m", "modelstream.cli", "run", child.service],
                env=child.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches `up`, which stops them in order
            )
        child.started_at = time.monotonic()
        child.restart_at = None

    def _write_pids(self) -> None:
        (self.settings.state_dir / "up.pids").write_text(
            "".join(f"{c.process.pid} {c.name}\n" for c in self.children if c.process)
        )

    def supervise(self, say: Callable[[str], None]) -> None:
        """Restart, with backoff, every child that exited, and the embedded broker if it
        died; called every refresh while the stack runs."""
        now = time.monotonic()
        restarted = False
        if self.started_broker:
            restarted |= self._supervise_broker(say)
        for child in self.children:
            if child.running or child.process is None:
                continue
            if child.restart_at is None:
                child.last_exit = child.process.returncode
                if now - child.started_at >= STABLE_AFTER_S:
                    child.failures_in_a_row = 0
                child.failures_in_a_row += 1
                delay = min(BACKOFF_MAX_S, 2.0 ** (child.failures_in_a_row - 1))
                child.restart_at = now + delay
                with child.log_path.open("a") as log:
                    log.write(
                        f"\n--- modelstream up: {child.name} exited with code "
                        f"{child.last_exit}; restarting in {delay:.0f} s ---\n"
                    )
                say(f"{child.name} exited ({child.last_exit}); restarting in {delay:.0f} s")
            elif now >= child.restart_at:
                self._spawn(child)
                child.restarts += 1
                SERVICE_RESTARTS.labels(child.name).inc()
                restarted = True
        if restarted:
            self._write_pids()

    def _supervise_broker(self, say: Callable[[str], None]) -> bool:
        from modelstream.ops.broker import EmbeddedCluster

        cluster = EmbeddedCluster(self.settings)
        if cluster.running_nodes():
            return False
        say("the embedded broker died; starting it again")
        cluster.start()
        self.broker_restarts += 1
        return True

    def stop(self, say: Callable[[str], None], timeout_s: float = 30.0) -> None:
        from modelstream.ops.broker import EmbeddedCluster

        running = [c for c in self.children if c.running]
        for child in running:
            assert child.process is not None
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"{child.name} did not stop in {timeout_s:.0f} s; killing it")
                child.process.kill()
                child.process.wait()
        codes = ", ".join(
            f"{c.name}={c.process.returncode if c.process else '-'}" for c in self.children
        )
        say(f"services stopped ({codes})")
        if self.started_broker:
            EmbeddedCluster(self.settings).stop()
            say("embedded broker stopped")


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a /metrics server could listen on ``port``. Like that server, the probe
    reuses addresses, so the TIME_WAIT sockets of a stack stopped a moment ago (its
    scrapes) do not count as busy."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
