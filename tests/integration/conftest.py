"""Fixtures for tests against the real Kafka broker.

The session uses the broker named by the settings (``MODELSTREAM_BOOTSTRAP_SERVERS``, else
the embedded one on ``127.0.0.1:9092`` that ``.ci/run`` starts). When none answers, a
developer's run starts an embedded broker of its own; under CI that is a failure, never
a skip. Every test gets its own topic prefix, so topics and groups never collide.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelstream.kafka.topology import create_topics
from modelstream.ops.broker import EmbeddedCluster, fetch_broker_ids
from modelstream.registry.artifact import generate_keys
from modelstream.settings import Settings, load
from tests.support.ports import free_port_pair

READY_TIMEOUT_S = 60.0


@dataclass
class Broker:
    bootstrap: str
    cluster: EmbeddedCluster | None

    def log_tail(self) -> str:
        if self.cluster is None:
            return "(external broker: no local logs)"
        return "\n".join(node.log_tail(80) for node in self.cluster.nodes)


def _answers(bootstrap: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return bool(asyncio.run(fetch_broker_ids(bootstrap, timeout_s=5.0)))
        except Exception:
            if time.monotonic() > deadline:
                return False
            time.sleep(1.0)


_BROKER: Broker | None = None


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    global _BROKER
    settings = load()
    cluster = None if settings.bootstrap_servers else EmbeddedCluster(settings)
    if _answers(settings.bootstrap, timeout_s=5.0 if not os.environ.get("CI") else READY_TIMEOUT_S):
        _BROKER = Broker(settings.bootstrap, cluster)
        yield _BROKER
        return
    if os.environ.get("CI") or settings.bootstrap_servers:
        tail = cluster and "\n".join(n.log_tail() for n in cluster.nodes)
        pytest.fail(f"no Kafka broker answers at {settings.bootstrap}\n{tail or ''}")
    state = tmp_path_factory.mktemp("broker")
    own = EmbeddedCluster(load(state_dir=state, broker_port=free_port_pair()))
    own.start()
    _BROKER = Broker(own.bootstrap, own)
    try:
        yield _BROKER
    finally:
        own.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:  # type: ignore[type-arg]
    report = yield
    if report.failed and _BROKER is not None and "broker" in getattr(item, "fixturenames", ()):
        report.sections.append(("broker log (tail)", _BROKER.log_tail()))
    return report


@pytest.fixture
def settings(broker: Broker, tmp_path: Path) -> Settings:
    """Settings with a topic prefix and state dir of this test's own."""
    return load(
        bootstrap_servers=broker.bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        state_dir=tmp_path / "state",
        client_id=f"test-{uuid.uuid4().hex[:6]}",
    )


@pytest.fixture
async def topics(settings: Settings) -> AsyncIterator[Settings]:
    """This test's topics, provisioned from the topology."""
    await create_topics(settings)
    yield settings


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """An Ed25519 pair for this test: the publisher's private key and everyone's public one."""
    generate_keys(tmp_path / "keys")
    return tmp_path / "keys"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
