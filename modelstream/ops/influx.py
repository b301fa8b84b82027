"""Long-term history in InfluxDB 1.x: line-protocol points, batched and written in the
background so a slow or absent InfluxDB never holds up the caller.

>>> print(line("quality", {"model": "breast cancer", "version": "3"},
...            {"accuracy": 0.97, "labels": 1000, "why": 'say "hi"'}, 1_790_000_000_000))
quality,model=breast\\ cancer,version=3 accuracy=0.97,labels=1000i,why="say \\"hi\\"" 1790000000000
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Mapping

from modelstream.telemetry import INFLUX_POINTS, INFLUX_WRITE_FAILURES

log = logging.getLogger(__name__)

Field = float | int | str | bool


def _escape_key(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _field_value(value: Field) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def line(
    measurement: str, tags: Mapping[str, str], fields: Mapping[str, Field], timestamp_ms: int
) -> str:
    """One point in InfluxDB line protocol (millisecond precision); non-finite floats,
    which the protocol cannot carry, are left out."""
    usable = {
        k: v for k, v in fields.items() if not (isinstance(v, float) and not math.isfinite(v))
    }
    if not usable:
        raise ValueError(f"point {measurement} has no finite field")
    tag_text = "".join(f",{_escape_key(k)}={_escape_key(v)}" for k, v in sorted(tags.items()))
    field_text = ",".join(f"{_escape_key(k)}={_field_value(v)}" for k, v in usable.items())
    return f"{_escape_key(measurement)}{tag_text} {field_text} {timestamp_ms}"


class InfluxWriter:
    """Queues points and posts them to ``/write`` in batches from a background task, with
    retries; points that still fail are counted (``modelstream_influxdb_write_failures_total``)
    and logged, never raised. When the queue is full the oldest points are dropped (counted)."""

    def __init__(
        self,
        url: str,
        database: str,
        *,
        username: str | None = None,
        password: str | None = None,
        batch_size: int = 1000,
        flush_interval_s: float = 1.0,
        max_queued: int = 100_000,
        retries: int = 3,
        service: str = "monitor",
    ) -> None:
        self.url = url.rstrip("/")
        self.database = database
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.retries = retries
        self.service = service
        self.queue: deque[str] = deque(maxlen=max_queued)
        self._auth = (
            f"Basic {base64.b64encode(f'{username}:{password}'.encode()).decode()}"
            if username
            else None
        )
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def write(
        self,
        measurement: str,
        tags: Mapping[str, str],
        fields: Mapping[str, Field],
        timestamp_ms: int,
    ) -> None:
        if len(self.queue) == self.queue.maxlen:
            INFLUX_WRITE_FAILURES.labels(self.service).inc()  # the oldest point is dropped
        self.queue.append(line(measurement, tags, fields, timestamp_ms))
        if len(self.queue) >= self.batch_size:
            self._wake.set()

    async def start(self) -> None:
        try:
            await asyncio.to_thread(
                self._post, "/query", {"q": f'CREATE DATABASE "{self.database}"'}, b""
            )
        except OSError as exc:  # not fatal: writes retry, and are counted when they fail
            log.warning(
                "InfluxDB at %s: cannot create database %r: %s", self.url, self.database, exc
            )
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            while self.queue:
                batch = [self.queue.popleft() for _ in range(min(self.batch_size, len(self.queue)))]
                await self._send(batch)
            if self._stopping:
                return

    async def _send(self, batch: list[str]) -> None:
        body = ("\n".join(batch) + "\n").encode()
        params = {"db": self.database, "precision": "ms"}
        for attempt in range(self.retries + 1):
            try:
                await asyncio.to_thread(self._post, "/write", params, body)
                INFLUX_POINTS.labels(self.service).inc(len(batch))
                return
            except OSError as exc:
                if attempt == self.retries or self._stopping:
                    INFLUX_WRITE_FAILURES.labels(self.service).inc(len(batch))
                    log.warning(
                        "InfluxDB write of %d points to %s failed: %s", len(batch), self.url, exc
                    )
                    return
                await asyncio.sleep(0.2 * 2**attempt)

    def _post(self, path: str, params: Mapping[str, str], body: bytes) -> None:
        request = urllib.request.Request(
            f"{self.url}{path}?{urllib.parse.urlencode(params)}", data=body, method="POST"
        )
        if self._auth:
            request.add_header("Authorization", self._auth)
        with urllib.request.urlopen(request, timeout=5) as response:
            if response.status >= 300:
                raise OSError(f"HTTP {response.status}")
