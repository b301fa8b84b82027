"""Shared benchmark plumbing: a real broker (the configured one, else an embedded one)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from modelstream.kafka.topology import create_topics
from modelstream.ops.broker import EmbeddedCluster, fetch_broker_ids
from modelstream.settings import Settings, load


def _free_port_pair() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 1000 > 65535:
            continue
        with socket.socket() as s2, contextlib.suppress(OSError):
            s2.bind(("127.0.0.1", port + 1000))
            return port


@contextlib.contextmanager
def broker() -> Iterator[Settings]:
    """Settings pointing at a live broker with a fresh topic prefix (topics created)."""
    settings = load()
    owned: EmbeddedCluster | None = None
    try:
        asyncio.run(fetch_broker_ids(settings.bootstrap, timeout_s=5.0))
        bootstrap = settings.bootstrap
    except Exception:
        state = Path(tempfile.mkdtemp(prefix="modelstream-bench-"))
        owned = EmbeddedCluster(load(state_dir=state, broker_port=_free_port_pair()))
        owned.start()
        bootstrap = owned.bootstrap
    bench = load(bootstrap_servers=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:8]}.",
                 metrics_port=0)
    asyncio.run(create_topics(bench))
    try:
        yield bench
    finally:
        if owned is not None:
            owned.stop()


def spawn_worker(script: Path, kind: str, settings: Settings, events: int,
                 public_key: Path) -> dict[str, float]:
    """Run ``script --worker KIND`` in its own process against ``settings``' broker and topic
    prefix; its result is the JSON object on the last line it prints."""
    cmd = [sys.executable, str(script), "--worker", kind, "--bootstrap", settings.bootstrap,
           "--prefix", settings.topic_prefix, "--events", str(events),
           "--public-key", str(public_key)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    # faust may put terminal control codes in front of the line
    lines = [line[line.index("{"):] for line in result.stdout.splitlines() if "{" in line]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"worker {kind} failed:\n{result.stdout[-2000:]}\n"
                           f"{result.stderr[-4000:]}")
    return json.loads(lines[-1])  # type: ignore[no-any-return]
