"""The embedded Apache Kafka broker: fetched with Maven, run in KRaft mode on loopback.

Every node is a combined broker+controller. Node ``i`` listens on ``broker_port + i`` for
clients and on ``broker_port + 1000 + i`` for the controller quorum; its data, logs, config
and pid live under ``<state_dir>/broker-<i>/``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from aiokafka.client import AIOKafkaClient

from modelstream.errors import BrokerError
from modelstream.ops.security import BrokerSecurity
from modelstream.settings import Settings

CONTROLLER_PORT_OFFSET = 1000
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0


def _pom_text() -> str:
    return resources.files("modelstream.ops").joinpath("kafka/pom.xml").read_text("utf-8")


def _log4j_config() -> Path:
    return Path(str(resources.files("modelstream.ops").joinpath("kafka/log4j2.properties")))


def jar_dir(settings: Settings) -> Path:
    """Cache directory of the jars for the current pom (a new pom gets a new directory)."""
    digest = hashlib.sha256(_pom_text().encode()).hexdigest()[:12]
    return settings.kafka_cache_dir.expanduser() / digest


def ensure_jars(settings: Settings) -> Path:
    """Resolve Kafka and its runtime dependencies with Maven, once; returns the jar directory."""
    target = jar_dir(settings)
    marker = target / ".complete"
    if marker.exists():
        return target / "jars"
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (mvn) is not installed; it is needed once to fetch Kafka")
    target.mkdir(parents=True, exist_ok=True)
    (target / "pom.xml").write_text(_pom_text(), "utf-8")
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(target / "pom.xml"),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={target / 'jars'}",
        "-DincludeScope=runtime",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BrokerError(f"mvn could not resolve Kafka:\n{result.stdout}{result.stderr}")
    marker.write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    return target / "jars"


@dataclass(frozen=True)
class Node:
    """One combined broker+controller process of the embedded cluster."""

    node_id: int
    host: str
    port: int
    controller_port: int
    home: Path

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def config_file(self) -> Path:
        return self.home / "server.properties"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def pid(self) -> int | None:
        """The pid of this node's running JVM, or None (stale pid files are ignored)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            return None
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            return None
        # The java launcher may briefly show another argv while it re-executes itself.
        if cmdline and str(self.config_file).encode() not in cmdline:
            return None
        return pid

    def log_tail(self, lines: int = 60) -> str:
        chunks = []
        for name in ("server.log", "stdout.log"):
            path = self.log_dir / name
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                chunks.append(f"--- {path} ---\n" + "\n".join(text))
        return "\n".join(chunks)


class EmbeddedCluster:
    """Starts, stops and reports on the embedded KRaft cluster described by ``settings``."""

    def __init__(
        self,
        settings: Settings,
        node_count: int | None = None,
        security: BrokerSecurity | None = None,
    ) -> None:
        self.settings = settings
        self.security = security
        root = settings.state_dir.expanduser().resolve()
        self.root = root
        if node_count is None:
            node_count = self._recorded_node_count() or 1
        self.nodes = [
            Node(
                node_id=i,
                host=settings.broker_host,
                port=settings.broker_port + i,
                controller_port=settings.broker_port + CONTROLLER_PORT_OFFSET + i,
                home=root / f"broker-{i}",
            )
            for i in range(node_count)
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(n.address for n in self.nodes)

    def _recorded_node_count(self) -> int | None:
        path = self.root / "cluster.nodes"
        try:
            return int(path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _cluster_id(self) -> str:
        path = self.root / "cluster.id"
        if path.exists():
            return path.read_text().strip()
        cluster_id = "-"
        while cluster_id.startswith("-"):  # like Kafka's Uuid: a leading '-' reads as a flag
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        path.write_text(cluster_id)
        return cluster_id

    def _write_config(self, node: Node) -> None:
        n = len(self.nodes)
        voters = ",".join(f"{m.node_id}@{m.host}:{m.controller_port}" for m in self.nodes)
        replicas = min(3, n)
        min_isr = 2 if n >= 3 else 1
        client = "SASL_SSL" if self.security else "PLAINTEXT"
        lines = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"{client}://{node.host}:{node.port},"
            f"CONTROLLER://{node.host}:{node.controller_port}",
            "advertised.listeners": f"{client}://{node.host}:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": client,
            "listener.security.protocol.map": f"{client}:{client},CONTROLLER:PLAINTEXT",
            "log.dirs": str(node.data_dir),
            "num.partitions": "3",
            "default.replication.factor": str(replicas),
            "min.insync.replicas": str(min_isr),
            "offsets.topic.replication.factor": str(replicas),
            "offsets.topic.num.partitions": "12",
            "transaction.state.log.replication.factor": str(replicas),
            "transaction.state.log.min.isr": str(min_isr),
            "transaction.state.log.num.partitions": "12",
            "share.coordinator.state.topic.replication.factor": str(replicas),
            "share.coordinator.state.topic.min.isr": str(min_isr),
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            "num.io.threads": "4",
            # a produce request with one artifact of up to 128 MiB (topology.ARTIFACT_MAX_BYTES)
            "socket.request.max.bytes": str(256 * 1024 * 1024),
            "replica.fetch.response.max.bytes": str(160 * 1024 * 1024),
            # Socket buffers sized by the kernel (autotuned to megabytes), not Kafka's fixed
            # 64-100 KiB: every read of a record into its heap buffer allocates and zeroes a
            # temporary direct buffer as large as what is left of the record (the cache of
            # those is bounded below), so reading a 100 MiB record 128 KiB at a time cost
            # 800 such allocations, past the 30 s a follower's fetch may take: the follower
            # retried forever and never caught up (a CI run hung on it).
            "socket.receive.buffer.bytes": "-1",
            "socket.send.buffer.bytes": "-1",
            "replica.socket.receive.buffer.bytes": "-1",
            "num.network.threads": "2",
        }
        if self.security is not None:
            sec = self.security
            lines.update(
                {
                    "sasl.enabled.mechanisms": "SCRAM-SHA-512",
                    "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
                    "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                        "org.apache.kafka.common.security.scram.ScramLoginModule required "
                        f'username="{sec.admin}" password="{sec.admin_password}";'
                    ),
                    "ssl.keystore.type": "PEM",
                    "ssl.keystore.location": str(sec.tls.broker),
                    "ssl.truststore.type": "PEM",
                    "ssl.truststore.location": str(sec.tls.ca),
                    "authorizer.class.name": (
                        "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
                    ),
                    # The controller listener is loopback PLAINTEXT inside the cluster.
                    "super.users": f"User:{sec.admin};User:ANONYMOUS",
                    "allow.everyone.if.no.acl.found": "false",
                }
            )
        node.home.mkdir(parents=True, exist_ok=True)
        node.config_file.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        if java_home and (Path(java_home) / "bin" / "java").exists():
            return str(Path(java_home) / "bin" / "java")
        java = shutil.which("java")
        if java is None:
            raise BrokerError("Java 17+ is required to run the embedded broker (java not found)")
        return java

    def _format(self, node: Node, jars: Path, cluster_id: str) -> None:
        if (node.data_dir / "meta.properties").exists():
            return
        cmd = [
            self._java(),
            "-cp",
            f"{jars}/*",
            f"-Dlog4j2.configurationFile={_log4j_config()}",
            f"-Dkafka.logs.dir={node.log_dir}",
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={cluster_id}",
            "-c",
            str(node.config_file),
        ]
        for user, password in self.security.users.items() if self.security else ():
            cmd += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BrokerError(f"formatting {node.data_dir} failed:\n{result.stdout}{result.stderr}")

    def _launch(self, node: Node, jars: Path) -> int:
        node.log_dir.mkdir(parents=True, exist_ok=True)
        heap = f"{self.settings.broker_heap_mb}m"
        cmd = [
            self._java(),
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            # A socket read of a record into a heap buffer goes through a temporary direct
            # buffer, which Java keeps per thread at the largest size seen unless bounded:
            # after a few 100 MiB artifacts the network threads held the whole direct memory
            # (OutOfMemoryError: Cannot reserve ... bytes of direct buffer memory).
            "-Djdk.nio.maxCachedBufferSize=1048576",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={_log4j_config()}",
            f"-Dkafka.logs.dir={node.log_dir}",
            "-cp",
            f"{jars}/*",
            "kafka.Kafka",
            str(node.config_file),
        ]
        with open(node.log_dir / "stdout.log", "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        node.pid_file.write_text(str(proc.pid))
        return proc.pid

    def start(self) -> list[Node]:
        """Start every node that is not running; wait until the cluster answers metadata."""
        self.root.mkdir(parents=True, exist_ok=True)
        recorded = self._recorded_node_count()
        if recorded is not None and recorded != len(self.nodes) and self.running_nodes():
            raise BrokerError(f"a {recorded}-node cluster is running in {self.root}; stop it first")
        if recorded is not None and recorded != len(self.nodes):
            # A different cluster shape needs fresh storage: voters are baked into it.
            for i in range(max(recorded, len(self.nodes))):
                shutil.rmtree(self.root / f"broker-{i}", ignore_errors=True)
            (self.root / "cluster.id").unlink(missing_ok=True)
        (self.root / "cluster.nodes").write_text(str(len(self.nodes)))
        to_start = [n for n in self.nodes if n.pid() is None]
        if to_start:
            jars = ensure_jars(self.settings)
            cluster_id = self._cluster_id()
            for node in to_start:
                self._write_config(node)
                self._format(node, jars, cluster_id)
            for node in to_start:
                self._launch(node, jars)
        try:
            asyncio.run(self.wait_ready(START_TIMEOUT_S))
        except BrokerError:
            raise
        return to_start

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait until every node is registered and answers a metadata request."""
        deadline = time.monotonic() + timeout_s
        last_error = "no answer yet"
        # Connection refusals are expected while the JVM boots; don't log each one.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        while time.monotonic() < deadline:
            dead = [n for n in self.nodes if n.pid() is None]
            if dead:
                tails = "\n".join(n.log_tail() for n in dead)
                raise BrokerError(f"broker node(s) {[n.node_id for n in dead]} exited:\n{tails}")
            try:
                brokers = await fetch_broker_ids(
                    self.bootstrap, timeout_s=5.0, **self.admin_options()
                )
                if len(brokers) >= len(self.nodes):
                    return
                last_error = f"{len(brokers)} of {len(self.nodes)} brokers registered"
            except Exception as exc:  # connection refused while the JVM boots
                last_error = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.5)
        tails = "\n".join(n.log_tail() for n in self.nodes)
        raise BrokerError(f"broker not ready after {timeout_s:.0f}s ({last_error}):\n{tails}")

    def admin_options(self) -> dict[str, Any]:
        """Client security options of the admin principal (empty without security)."""
        if self.security is None:
            return {}
        from aiokafka.helpers import create_ssl_context

        return {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": self.security.admin,
            "sasl_plain_password": self.security.admin_password,
            "ssl_context": create_ssl_context(cafile=str(self.security.tls.ca)),
        }

    def running_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.pid() is not None]

    def stop(self) -> list[Node]:
        """Stop every running node (SIGTERM: controlled shutdown; SIGKILL after a timeout)."""
        running: list[tuple[Node, int]] = []
        for node in self.nodes:
            pid = node.pid()
            if pid is None:
                node.pid_file.unlink(missing_ok=True)
                continue
            running.append((node, pid))
        # All at once: stopped one after the other, the last controller of a 3-node quorum
        # has no majority left and its controlled shutdown waits out the timeout.
        for _, pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for node, pid in running:
            stop_node_process(node, pid)
        return [node for node, _ in running]

    def kill_node(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to one node (fault tests)."""
        node = self.nodes[node_id]
        pid = node.pid()
        if pid is not None:
            os.kill(pid, sig)


def stop_node_process(node: Node, pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and node.pid() is not None:
        _reap(pid)
        time.sleep(0.2)
    if node.pid() is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while node.pid() is not None:
            _reap(pid)
            time.sleep(0.1)
    node.pid_file.unlink(missing_ok=True)


def _reap(pid: int) -> None:
    # The JVM is our child when started from this process (tests); reap it so it leaves /proc.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


async def fetch_broker_ids(bootstrap: str, timeout_s: float = 5.0, **security: Any) -> list[int]:
    """Node ids of the brokers a real metadata request returns."""
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000), **security
    )
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
        metadata = await asyncio.wait_for(client.fetch_all_metadata(), timeout_s)
        return sorted(b.nodeId for b in metadata.brokers())
    finally:
        await client.close()
