"""The gateway's HTTP and Kafka sides: a call becomes request events, its answers come back
on this copy's partitions of `replies`.

aiohttp serves HTTP: the asyncio server and client modelstream already installs (faust
depends on it), mature, with no separate ASGI server to run, in the same event loop as the
Kafka clients, so a call waits on a future and costs no thread.

Each copy joins the `gateway` consumer group on `replies` and stamps every request it
produces with one of its own partitions (``modelstream.reply-partition``); the predictor
writes the answer there too, in the same transaction as the prediction. A copy therefore
reads only its own answers, and copies scale out like any consumer group. When partitions
move (a copy joins or leaves), calls waiting on a moved partition time out (504 with their
request ids); their predictions are still on `predictions`, exactly once. Replies are read
without waiting for the predictor's transaction to commit (read_uncommitted): the answer
a caller gets is the prediction the predictor computed, and `predictions` stays the
committed record of it.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable

import numpy as np
from aiohttp import web
from aiokafka import ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelstream.contracts.codec import default_codec
from modelstream.contracts.definitions import check_request_id
from modelstream.contracts.records import Prediction, PredictionRequest
from modelstream.errors import DecodeError, InvalidEventError
from modelstream.kafka.clients import make_consumer, make_producer
from modelstream.kafka.topology import REPLIES, REPLY_PARTITION_HEADER, REQUESTS
from modelstream.registry.follower import ProductionFollower, public_key
from modelstream.runner import Lifecycle
from modelstream.services.gateway.logic import (
    CallError,
    ModelInfo,
    Rows,
    oip_body,
    oip_metadata,
    oip_response,
    oip_rows,
    tf_response,
    tf_rows,
    tf_status,
)
from modelstream.services.gateway.settings import GatewaySettings
from modelstream.telemetry import GATEWAY_CALL_SECONDS, GATEWAY_CALLS, GATEWAY_TIMEOUTS

log = logging.getLogger("modelstream.gateway")
SERVICE = "gateway"
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/v2"})
# the predictor's reasons that mean "no such model or version" rather than a bad row
NOT_FOUND_REASONS = frozenset({"unknown-model", "unknown-version"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Ownership(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, app: GatewayApp) -> None:
        self.app = app

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.app.owned = []

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.app.take(assigned)


class GatewayApp(Lifecycle):
    def __init__(self, settings: GatewaySettings) -> None:
        super().__init__()
        self.settings = settings
        self.codec = default_codec()
        self.requests_topic = settings.topic(REQUESTS)
        self.replies_topic = settings.topic(REPLIES)
        self.producer = make_producer(settings, linger_ms=1)
        self.replies = make_consumer(
            settings,
            group_id=settings.group(SERVICE),
            isolation_level="read_uncommitted",
            auto_offset_reset="latest",
            fetch_max_wait_ms=5,
        )
        self.registry = ProductionFollower(settings, public_key(settings), SERVICE)
        self.models: dict[str, ModelInfo] = {}
        self.versions: dict[str, set[int]] = {}
        self.pending: dict[str, asyncio.Future[ConsumerRecord]] = {}
        self.owned: list[int] = []
        self.unclaimed_replies = 0
        self._next = itertools.count()
        self._runner: web.AppRunner | None = None
        self.port = settings.gateway_port

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        await self.own(self.producer)
        await self.own(self.registry)
        await self.registry.load()
        self._refresh_models(set(self.registry.production))
        await self.own(self.replies)
        self.replies.subscribe([self.replies_topic], listener=_Ownership(self))
        app = web.Application(middlewares=[self._authenticate], client_max_size=64 << 20)
        app.add_routes(
            [
                web.get("/v2/health/live", self._live),
                web.get("/v2/health/ready", self._ready),
                web.get("/v2/models/{name}", self._oip_metadata),
                web.get("/v2/models/{name}/versions/{version}", self._oip_metadata),
                web.post("/v2/models/{name}/infer", self._oip_infer),
                web.post("/v2/models/{name}/versions/{version}/infer", self._oip_infer),
                web.get("/v1/models/{name}", self._tf_status),
                web.get("/v1/models/{name}/versions/{version}", self._tf_status),
                web.post("/v1/models/{name:[^/:]+}:predict", self._tf_predict),
                web.post("/v1/models/{name}/versions/{version:[^/:]+}:predict", self._tf_predict),
                web.get("/metrics", self._metrics),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.settings.gateway_host,
            self.settings.gateway_port,
            ssl_context=self._tls(),
        )
        await site.start()
        addresses = self._runner.addresses  # the bound port when 0 asked for any
        if addresses:
            self.port = int(addresses[0][1])
        log.info(
            "gateway on %s:%d serving %s",
            self.settings.gateway_host,
            self.port,
            sorted(self.models),
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        for future in self.pending.values():
            future.cancel()
        await super().stop()

    def _tls(self) -> ssl.SSLContext | None:
        s = self.settings
        if s.gateway_tls_cert_file is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(s.gateway_tls_cert_file, s.gateway_tls_key_file)
        if s.gateway_tls_client_ca_file is not None:
            context.load_verify_locations(s.gateway_tls_client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    async def take(self, assigned: list[TopicPartition]) -> None:
        """Own these reply partitions from their current end: every answer to a call made
        from now on lies after it."""
        if not assigned:
            self.owned = []
            return
        ends = await self.replies.end_offsets(assigned)
        for tp in assigned:
            self.replies.seek(tp, ends[tp])
        self.owned = sorted(tp.partition for tp in assigned)
        log.info("gateway owns reply partitions %s", self.owned)

    async def run(self) -> None:
        last_registry = 0.0
        while not self.stopping.is_set():
            batch = await self.replies.getmany(timeout_ms=50)
            for records in batch.values():
                for record in records:
                    future = self.pending.pop((record.key or b"").decode(errors="replace"), None)
                    if future is None:
                        # not a call of this copy (or one that already timed out)
                        self.unclaimed_replies += 1
                    elif not future.done():
                        future.set_result(record)
            if time.monotonic() - last_registry > 0.5:
                last_registry = time.monotonic()
                self._refresh_models(await self.registry.poll())

    def _refresh_models(self, changed: set[str]) -> None:
        for name in changed:
            body = self.registry.production[name].body
            self.models[name] = ModelInfo.from_body(body)
            self.versions.setdefault(name, set()).add(body["version"])

    # -- HTTP ------------------------------------------------------------------------------
    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        token = self.settings.gateway_token
        if token is not None and request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "")
            expected = f"Bearer {token.get_secret_value()}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return _error(401, "missing or wrong bearer token")
        return await handler(request)

    async def _live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def _ready(self, request: web.Request) -> web.Response:
        ready = bool(self.owned)
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _model(self, request: web.Request) -> tuple[ModelInfo, int | None]:
        name = request.match_info["name"]
        model = self.models.get(name)
        if model is None:
            raise CallError(404, f"no production version of model {name!r}")
        raw = request.match_info.get("version")
        if raw is None:
            return model, None
        try:
            version = int(raw)
        except ValueError:
            raise CallError(400, f"version {raw!r} is not an integer") from None
        return model, version

    async def _oip_metadata(self, request: web.Request) -> web.Response:
        try:
            model, version = self._model(request)
            versions = sorted(self.versions.get(model.name, {model.version}))
            if version is not None and version not in versions:
                raise CallError(404, f"{model.name} has no version {version} here")
        except CallError as exc:
            return _error(exc.status, exc.message)
        return web.json_response(oip_metadata(model, versions))

    async def _tf_status(self, request: web.Request) -> web.Response:
        try:
            model, version = self._model(request)
        except CallError as exc:
            return _error(exc.status, exc.message)
        versions = sorted(self.versions.get(model.name, {model.version}))
        return web.json_response(tf_status(model, [version] if version else versions))

    async def _oip_infer(self, request: web.Request) -> web.Response:
        return await self._infer(request, "oip")

    async def _tf_predict(self, request: web.Request) -> web.Response:
        return await self._infer(request, "tf")

    async def _infer(self, request: web.Request, protocol: str) -> web.Response:
        started = time.perf_counter()
        label = ""
        status = 200
        try:
            model, version = self._model(request)
            label = model.name
            raw = await request.read()
            body = (
                oip_body(raw, request.headers.get("Inference-Header-Content-Length"))
                if protocol == "oip"
                else oip_body(raw, None)
            )
            max_rows = self.settings.gateway_max_rows
            rows = (
                oip_rows(body, model, max_rows)
                if protocol == "oip"
                else tf_rows(body, model, max_rows)
            )
            call_id = (
                str(body.get("id") or uuid.uuid4().hex) if protocol == "oip" else (uuid.uuid4().hex)
            )
            ids, answers = await self._call(model, version, call_id, rows)
            payload = (
                oip_response(model, call_id, ids, answers)
                if protocol == "oip"
                else tf_response(model, answers)
            )
            return web.json_response(payload)
        except CallError as exc:
            status = exc.status
            return _error(exc.status, exc.message)
        finally:
            GATEWAY_CALLS.labels(label, protocol, str(status)).inc()
            GATEWAY_CALL_SECONDS.labels(label, protocol).observe(time.perf_counter() - started)

    async def _call(
        self, model: ModelInfo, version: int | None, call_id: str, rows: Rows
    ) -> tuple[list[str], list[Prediction]]:
        """Produce one request per row and wait for every answer."""
        if not self.owned:
            raise CallError(503, "the gateway owns no reply partition yet")
        ids = [f"{call_id}-{i}" for i in range(len(rows))]
        try:
            for request_id in ids[:1] + ids[-1:]:
                check_request_id(request_id, None)
        except InvalidEventError as exc:
            raise CallError(400, f"id: {exc}") from None
        if any(i in self.pending for i in ids):
            raise CallError(400, f"a call with id {call_id!r} is already in flight")
        partition = self.owned[next(self._next) % len(self.owned)]
        headers = [(REPLY_PARTITION_HEADER, str(partition).encode())]
        now_ms = int(time.time() * 1000)
        packed = np.ascontiguousarray(rows.X, dtype="<f8")
        values = [
            self.codec.encode(
                PredictionRequest,
                {
                    "request_id": request_id,
                    "model": model.name,
                    "features": packed[i].tobytes() if rows.tensors is None else b"",
                    "version": version,
                    "sent_at_ms": now_ms,
                    "categories": rows.categories[i] if rows.categories else {},
                    "tensors": rows.tensors[i] if rows.tensors is not None else [],
                },
            )
            for i, request_id in enumerate(ids)
        ]
        largest = max(len(v) for v in values)
        if largest > self.settings.max_message_bytes:
            raise CallError(
                413,
                f"a row is {largest} bytes as a request; a request takes at most "
                f"{self.settings.max_message_bytes} (MODELSTREAM_MAX_MESSAGE_BYTES)",
            )
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in ids]
        self.pending.update(zip(ids, futures, strict=True))
        try:
            deliveries = []
            for request_id, value in zip(ids, values, strict=True):
                deliveries.append(
                    await self.producer.send(
                        self.requests_topic,
                        key=request_id.encode(),
                        value=value,
                        headers=headers,
                    )
                )
            await asyncio.gather(*deliveries)
            _, waiting = await asyncio.wait(futures, timeout=self.settings.gateway_timeout_s)
        finally:
            for request_id in ids:
                self.pending.pop(request_id, None)
        if waiting:
            GATEWAY_TIMEOUTS.labels(model.name).inc()
            late = [i for i, f in zip(ids, futures, strict=True) if f in waiting]
            raise CallError(
                504,
                f"no prediction within {self.settings.gateway_timeout_s:g} s for request ids "
                f"{late[:10]}",
            )
        return ids, [
            self._answer(request_id, f.result()) for request_id, f in zip(ids, futures, strict=True)
        ]

    def _answer(self, request_id: str, record: ConsumerRecord) -> Prediction:
        if record.value is None:  # the predictor rejected the row: its reason, now
            headers = {k: v.decode(errors="replace") for k, v in record.headers or ()}
            reason = headers.get("reason", "rejected")
            status = 404 if reason in NOT_FOUND_REASONS else 400
            raise CallError(status, f"{request_id}: {reason}: {headers.get('error', '')}")
        try:
            return self.codec.decode_any(record.value, Prediction)
        except (DecodeError, InvalidEventError) as exc:
            raise CallError(502, f"{request_id}: unreadable prediction: {exc}") from None


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
