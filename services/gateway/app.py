"""The gateway's HTTP and Kafka sides: a call becomes request events, its answers come back
on this copy's partitions of `replies`.

aiohttp serves HTTP: the asyncio server and client modelstream already installs (faust
depends on it), mature, with no separate ASGI server to run, in the same event loop as the
Kafka clients, so a call waits on a future and costs no thread.

Each copy joins the `gateway` consumer group on `replies` and stamps every request it
produces with one of its own partitions (``modelstream.reply-partition``); the predictor
writes the answer there too, in the same transaction as the prediction. A copy therefore
reads only its own answers, and copies scale out like any consumer group. When partitions
move (a copy joins or leaves), a copy keeps reading the partitions it lost, outside the
group, until the calls that wait there are answered; the new owner drops those replies as
unclaimed. By default replies are read without waiting for the predictor's transaction to
commit (read_uncommitted): the answer a caller gets is the prediction the predictor
computed, and `predictions` stays the committed record of it;
``MODELSTREAM_GATEWAY_READ_COMMITTED`` makes the answer the committed prediction.

Request ids are the gateway's own: random, 128 bits, one per row, never the caller's. The
caller's ``id`` is only echoed, so callers may repeat it; a reply whose id this copy did
not issue is dropped and counted. Anyone who may read `requests` sees the ids; only the
predictor may write `replies` (``ops/security.py``).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import math
import secrets
import ssl
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import numpy as np
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiokafka import ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelstream import __version__
from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import Prediction, PredictionRequest
from modelstream.errors import DecodeError, InvalidEventError
from modelstream.kafka.clients import client_options, make_consumer, make_producer, partitions_of
from modelstream.kafka.compat import fix_describe_groups_decoding
from modelstream.kafka.quiet import quiet_log
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
from modelstream.telemetry import (
    GATEWAY_CALL_SECONDS,
    GATEWAY_CALLS,
    GATEWAY_REFUSED,
    GATEWAY_TIMEOUTS,
    GATEWAY_UNCLAIMED,
)

log = logging.getLogger("modelstream.gateway")
SERVICE = "gateway"
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/v2"})
# the predictor's reasons that mean "no such model or version" rather than a bad row
NOT_FOUND_REASONS = frozenset({"unknown-model", "unknown-version"})
# dead-letter reasons that are the pipeline's fault, not the row's
SERVER_FAULTS = frozenset({"internal-error", "failed-repeatedly", "crashed-service"})
REQUEST_IDS_HEADER = "Modelstream-Request-Ids"
TIMEOUT_HEADER = "Modelstream-Timeout-Ms"
MAX_VERSION = 2**31 - 1  # the registry's versions are Avro ints
PREDICTORS_CHECK_S = 2.0
MAX_IDS_HEADER = 4096  # about 110 rows; headers past 8 KiB break common clients
MAX_CALLER_ID = 256

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Ownership(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, app: GatewayApp) -> None:
        self.app = app

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.app.release(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.app.take(assigned)


@dataclass
class _Waiting:
    """A row's answer to come, and the reply partition it will arrive on."""

    future: asyncio.Future[ConsumerRecord]
    partition: int


class GatewayApp(Lifecycle):
    def __init__(self, settings: GatewaySettings) -> None:
        super().__init__()
        self.settings = settings
        self.codec = default_codec()
        self.requests_topic = settings.topic(REQUESTS)
        self.replies_topic = settings.topic(REPLIES)
        isolation = "read_committed" if settings.gateway_read_committed else "read_uncommitted"
        self.producer = make_producer(settings, linger_ms=1)
        self.replies = make_consumer(
            settings,
            group_id=settings.group(SERVICE),
            isolation_level=isolation,
            auto_offset_reset="latest",
            fetch_max_wait_ms=5,
            # partitions added to `replies` are seen (and assigned) within this
            metadata_max_age_ms=int(settings.gateway_metadata_refresh_s * 1000),
        )
        # reads partitions this copy lost while calls still wait on them; no group
        self.strays = make_consumer(
            settings,
            group_id=None,
            isolation_level=isolation,
            auto_offset_reset="latest",
            fetch_max_wait_ms=5,
        )
        self.admin = AIOKafkaAdminClient(**client_options(settings))
        self.registry = ProductionFollower(settings, public_key(settings), SERVICE)
        self.models: dict[str, ModelInfo] = {}
        self.versions: dict[str, set[int]] = {}
        self.pending: dict[str, _Waiting] = {}
        self.owned: list[int] = []
        self.stray_partitions: set[int] = set()
        self.partition_count = 0  # of `replies`, when this copy last looked
        self.usable_from: dict[int, float] = {}  # added partitions: when to use them
        self.predictors_live = False
        self.in_flight = 0
        self.unclaimed_replies = 0
        self._checking: asyncio.Task[None] | None = None
        self._check_failures = 0
        self._next = itertools.count()
        self._runner: web.AppRunner | None = None
        self.port = settings.gateway_port

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        fix_describe_groups_decoding()
        await self.own(self.producer)
        await self.own(self.registry)
        await self.registry.load()
        self._refresh_models(set(self.registry.production))
        await self.admin.start()
        await self._check_predictors()
        await self.own(self.strays)
        await self.own(self.replies)
        self.partition_count = len(await partitions_of(self.replies, self.replies_topic))
        self.replies.subscribe([self.replies_topic], listener=_Ownership(self))
        self._runner = http_runner(self.web_app())
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

    def web_app(self) -> web.Application:
        """The HTTP side: both protocols' routes behind the error and token middlewares."""
        app = web.Application(
            middlewares=[self._errors, self._authenticate],
            client_max_size=self.settings.gateway_max_body_bytes,
        )
        app.add_routes(
            [
                web.get("/v2", self._server_metadata),
                web.get("/v2/health/live", self._live),
                web.get("/v2/health/ready", self._ready),
                web.get("/v2/models/{name}", self._oip_metadata),
                web.get("/v2/models/{name}/versions/{version}", self._oip_metadata),
                web.get("/v2/models/{name}/ready", self._model_ready),
                web.get("/v2/models/{name}/versions/{version}/ready", self._model_ready),
                web.post("/v2/models/{name}/infer", self._oip_infer),
                web.post("/v2/models/{name}/versions/{version}/infer", self._oip_infer),
                web.get("/v1/models/{name}", self._tf_status),
                web.get("/v1/models/{name}/versions/{version}", self._tf_status),
                web.post("/v1/models/{name:[^/:]+}:predict", self._tf_predict),
                web.post("/v1/models/{name}/versions/{version:[^/:]+}:predict", self._tf_predict),
                web.get("/metrics", self._metrics),
            ]
        )
        return app

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        for waiting in self.pending.values():
            waiting.future.cancel()
        await self.admin.close()
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
        back = [tp for tp in assigned if tp.partition in self.stray_partitions]
        for tp in assigned:
            self.replies.seek(tp, ends[tp])
        for tp in back:  # read on from where its stray reading got to: nothing skipped
            self.replies.seek(tp, await self.strays.position(tp))
        if back:
            await self._assign_strays(self.stray_partitions - {tp.partition for tp in back}, {})
        self.owned = sorted(tp.partition for tp in assigned)
        known = self.replies.partitions_for_topic(self.replies_topic) or set()
        grace = time.monotonic() + self.settings.gateway_new_partition_grace_s
        for partition in self.owned:
            if partition >= self.partition_count:  # added to the topic since we looked
                self.usable_from.setdefault(partition, grace)
        self.partition_count = max(self.partition_count, len(known))
        log.info("gateway owns reply partitions %s", self.owned)

    def _reply_partition(self) -> int:
        """The next owned partition, round robin; a partition added to `replies` only once
        predictors have seen it (they look every 10 s), so its calls are answered."""
        now = time.monotonic()
        usable = [p for p in self.owned if self.usable_from.get(p, 0.0) <= now] or self.owned
        return usable[next(self._next) % len(usable)]

    async def release(self, revoked: list[TopicPartition]) -> None:
        """Partitions that move to another copy: calls waiting on them are still answered
        there, so read them on outside the group, from where this copy stopped, until
        those calls are done."""
        self.owned = []
        waited = {w.partition for w in self.pending.values()}
        moved = [tp for tp in revoked if tp.partition in waited]
        if not moved:
            return
        positions = {tp: await self.replies.position(tp) for tp in moved}
        await self._assign_strays(self.stray_partitions | {tp.partition for tp in moved}, positions)
        log.info("still reading moved reply partitions %s", sorted(self.stray_partitions))

    async def _assign_strays(self, partitions: set[int], new: dict[TopicPartition, int]) -> None:
        """Read exactly these partitions outside the group: those read already from where
        they got to (``assign`` forgets positions), ``new`` ones from the given offsets."""
        kept = {
            tp: await self.strays.position(tp)
            for tp in self.strays.assignment()
            if tp.partition in partitions and tp not in new
        }
        self.stray_partitions = set(partitions)
        self.strays.assign([TopicPartition(self.replies_topic, p) for p in sorted(partitions)])
        for tp, offset in {**kept, **new}.items():
            self.strays.seek(tp, offset)

    async def run(self) -> None:
        last_registry = last_predictors = 0.0
        while not self.stopping.is_set():
            batch = await self.replies.getmany(timeout_ms=50)
            for records in batch.values():
                for record in records:
                    self._deliver(record, claimed_elsewhere=False)
            if self.stray_partitions:
                await self._read_strays()
            now = time.monotonic()
            if now - last_registry > 0.5:
                last_registry = now
                self._refresh_models(await self.registry.poll())
            if now - last_predictors > PREDICTORS_CHECK_S and (
                self._checking is None or self._checking.done()
            ):  # in a task of its own: a slow coordinator never holds up replies
                last_predictors = now
                self._checking = asyncio.create_task(self._check_predictors())

    def _deliver(self, record: ConsumerRecord, claimed_elsewhere: bool) -> None:
        waiting = self.pending.pop((record.key or b"").decode(errors="replace"), None)
        if waiting is None:
            if not claimed_elsewhere:  # a stray partition's other replies are not ours
                self.unclaimed_replies += 1
                GATEWAY_UNCLAIMED.inc()
        elif not waiting.future.done():
            waiting.future.set_result(record)

    async def _read_strays(self) -> None:
        batch = await self.strays.getmany(timeout_ms=0)
        for records in batch.values():
            for record in records:
                self._deliver(record, claimed_elsewhere=True)
        still = {w.partition for w in self.pending.values()} & self.stray_partitions
        if still != self.stray_partitions:
            await self._assign_strays(still, {})

    async def _check_predictors(self) -> None:
        """Whether any predictor is a member of its group (it consumes `requests`)."""
        try:
            described = await asyncio.wait_for(
                self.admin.describe_consumer_groups([self.settings.group("predictor")]),
                PREDICTORS_CHECK_S,
            )
        except (TimeoutError, KafkaError, OSError) as exc:
            log.debug("cannot describe the predictor group: %s", exc)
            self._check_failures += 1
            if self._check_failures >= 3:  # one failed look is no news
                self.predictors_live = False
            return
        self._check_failures = 0
        # (error_code, group_id, state, protocol_type, protocol, members, ...)
        self.predictors_live = any(
            group[0] == 0 and len(group[5]) > 0
            for response in described
            for group in response.groups
        )

    def _refresh_models(self, changed: set[str]) -> None:
        for name in changed:
            body = self.registry.production[name].body
            self.models[name] = ModelInfo.from_body(body)
            self.versions.setdefault(name, set()).add(body["version"])

    # -- HTTP ------------------------------------------------------------------------------
    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every answer that is not a success is JSON with a reason, aiohttp's own included
        (a body over the limit, an unknown path); an exception that escapes a handler is
        this gateway's fault (500), never the caller's input: the fuzz tests hold that."""
        try:
            return await handler(request)
        except CallError as exc:
            return _error(exc.status, exc.message, exc.request_ids)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _error(exc.status, exc.reason, headers=exc.headers)
        except Exception:
            log.exception("gateway fault on %s %s", request.method, request.path[:200])
            return _error(500, "internal error of the gateway")

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        token = self.settings.gateway_token
        if token is not None and request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "")
            expected = f"Bearer {token.get_secret_value()}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return _error(401, "missing or wrong bearer token")
        return await handler(request)

    async def _server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"name": "modelstream", "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    async def _live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    def _serving(self) -> str | None:
        """Why this copy cannot answer calls now, or None when it can."""
        if not self.owned:
            return "the gateway owns no reply partition yet"
        if not self.predictors_live:
            return "no predictor is consuming requests"
        return None

    async def _ready(self, request: web.Request) -> web.Response:
        why = self._serving()
        body: dict[str, object] = {"ready": why is None}
        if why is not None:
            body["reason"] = why
        return web.json_response(body, status=200 if why is None else 503)

    async def _model_ready(self, request: web.Request) -> web.Response:
        """Ready: a production version in the registry (the asked one, when one is asked)
        and a copy able to answer."""
        model, version = self._model(request)
        versions = self.versions.get(model.name, {model.version})
        why = self._serving()
        if version is not None and version not in versions:
            why = f"{model.name} has no version {version} here"
        body: dict[str, object] = {"name": model.name, "ready": why is None}
        if version is not None:
            body["version"] = str(version)
        if why is not None:
            body["reason"] = why
        return web.json_response(body, status=200 if why is None else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _model(self, request: web.Request) -> tuple[ModelInfo, int | None]:
        name = request.match_info["name"]
        model = self.models.get(name)
        if model is None:
            raise CallError(404, f"no production version of model {name[:100]!r}")
        raw = request.match_info.get("version")
        if raw is None:
            return model, None
        if not (raw.isascii() and raw.isdigit() and 1 <= len(raw) <= 10):
            raise CallError(400, f"version {raw[:40]!r} is not a version number")
        version = int(raw)
        if not 1 <= version <= MAX_VERSION:
            raise CallError(400, f"version {version} is outside 1..{MAX_VERSION}")
        return model, version

    async def _oip_metadata(self, request: web.Request) -> web.Response:
        model, version = self._model(request)
        versions = sorted(self.versions.get(model.name, {model.version}))
        if version is not None and version not in versions:
            raise CallError(404, f"{model.name} has no version {version} here")
        return web.json_response(oip_metadata(model, versions))

    async def _tf_status(self, request: web.Request) -> web.Response:
        model, version = self._model(request)
        versions = sorted(self.versions.get(model.name, {model.version}))
        return web.json_response(tf_status(model, [version] if version else versions))

    async def _oip_infer(self, request: web.Request) -> web.Response:
        return await self._infer(request, "oip")

    async def _tf_predict(self, request: web.Request) -> web.Response:
        return await self._infer(request, "tf")

    async def _infer(self, request: web.Request, protocol: str) -> web.Response:
        if self.in_flight >= self.settings.gateway_max_in_flight:
            GATEWAY_REFUSED.inc()
            GATEWAY_CALLS.labels("", protocol, "429").inc()
            return _error(
                429,
                f"{self.in_flight} calls in flight (MODELSTREAM_GATEWAY_MAX_IN_FLIGHT); retry",
                headers={"Retry-After": "1"},
            )
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
            timeout_s = self._deadline(request, body if protocol == "oip" else None)
            max_rows = self.settings.gateway_max_rows
            rows = (
                oip_rows(body, model, max_rows)
                if protocol == "oip"
                else tf_rows(body, model, max_rows)
            )
            self.in_flight += 1  # calls waiting on Kafka, not uploads being read
            try:
                ids, answers = await self._call(model, version, rows, timeout_s)
            finally:
                self.in_flight -= 1
            headers = _ids_header(ids)
            if protocol == "oip":
                return web.json_response(
                    oip_response(model, _caller_id(body), ids, answers), headers=headers
                )
            return web.json_response(tf_response(model, answers), headers=headers)
        except (CallError, web.HTTPException) as exc:
            status = exc.status
            raise
        except Exception:
            status = 500
            raise
        finally:
            GATEWAY_CALLS.labels(label, protocol, str(status)).inc()
            GATEWAY_CALL_SECONDS.labels(label, protocol).observe(time.perf_counter() - started)

    def _deadline(self, request: web.Request, body: object) -> float:
        """How long this call may wait: the gateway's timeout, or less when the caller
        asks (``Modelstream-Timeout-Ms``, or OIP ``parameters.timeout`` in microseconds as
        Triton's clients send it)."""
        limit = self.settings.gateway_timeout_s
        asked: float | None = None
        header = request.headers.get(TIMEOUT_HEADER)
        if header is not None:
            try:
                asked = float(header[:32]) / 1000
            except ValueError:
                raise CallError(400, f"{TIMEOUT_HEADER} is not a number") from None
        parameters = body.get("parameters") if isinstance(body, dict) else None
        if isinstance(parameters, dict) and "timeout" in parameters:
            micros = parameters["timeout"]
            if isinstance(micros, bool) or not isinstance(micros, int | float):
                raise CallError(400, "parameters.timeout must be a number of microseconds")
            if abs(micros) > 1e15:  # past float's range for an int, and past any deadline
                raise CallError(400, "parameters.timeout is out of range")
            asked = float(micros) / 1e6
        if asked is None:
            return limit
        if not (math.isfinite(asked) and asked > 0):
            raise CallError(400, "the call's timeout must be a positive finite number")
        return min(asked, limit)

    async def _call(
        self, model: ModelInfo, version: int | None, rows: Rows, timeout_s: float
    ) -> tuple[list[str], list[Prediction]]:
        """Produce one request per row and wait for every answer. A call is not refused
        when no predictor is seen (readiness says so): one may join within its deadline."""
        if not self.owned:
            raise CallError(503, "the gateway owns no reply partition yet")
        ids = new_request_ids(len(rows))
        partition = self._reply_partition()
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
        futures: list[asyncio.Future[ConsumerRecord]] = [loop.create_future() for _ in ids]
        self.pending.update(
            (request_id, _Waiting(future, partition))
            for request_id, future in zip(ids, futures, strict=True)
        )
        deadline = time.monotonic() + timeout_s
        try:
            try:
                async with asyncio.timeout(timeout_s):
                    deliveries = [
                        await self.producer.send(
                            self.requests_topic,
                            key=request_id.encode(),
                            value=value,
                            headers=headers,
                        )
                        for request_id, value in zip(ids, values, strict=True)
                    ]
                    await asyncio.gather(*deliveries)
            except (TimeoutError, KafkaError) as exc:
                raise CallError(
                    503, f"the call could not be written to Kafka: {type(exc).__name__}", ids
                ) from None
            remaining = max(0.0, deadline - time.monotonic())
            _, waiting = await asyncio.wait(futures, timeout=remaining)
        finally:
            for request_id in ids:
                self.pending.pop(request_id, None)
        if waiting:
            GATEWAY_TIMEOUTS.labels(model.name).inc()
            late = [i for i, f in zip(ids, futures, strict=True) if f in waiting]
            raise CallError(
                504,
                f"no prediction within {timeout_s:g} s for {len(late)} of {len(ids)} rows",
                ids,
            )
        answers = [f.result() for f in futures]
        failed = Counter(_fault(record) for record in answers if record.value is None)
        if failed:
            raise _rejected(ids, answers, failed)
        try:
            return ids, [self.codec.decode_any(record.value, Prediction) for record in answers]
        except (DecodeError, InvalidEventError) as exc:
            raise CallError(502, f"unreadable prediction: {exc}", ids) from None


def new_request_ids(rows: int) -> list[str]:
    """One id per row, each 128 random bits of its own (knowing one row's id tells nothing
    of another's), then the row's number."""
    return [f"{secrets.token_hex(16)}-{i}" for i in range(rows)]


def _headers_of(record: ConsumerRecord) -> dict[str, str]:
    return {k: v.decode(errors="replace") for k, v in record.headers or ()}


def _fault(record: ConsumerRecord) -> int:
    """The status a rejected row stands for: 404 unknown model or version, 5xx when the
    pipeline failed it (its fault, not the row's), 400 otherwise."""
    reason = _headers_of(record).get("reason", "rejected")
    if reason in NOT_FOUND_REASONS:
        return 404
    if reason in SERVER_FAULTS:
        return 500
    if reason == "output-too-large":
        return 500  # the row was fine; its answer cannot be written
    return 400


class QuietParseErrors(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The log of aiohttp's request handler, which logs every request it cannot parse (bytes
    that are not HTTP: a header line without a colon, TLS on the plain port) at ERROR with a
    traceback, before any middleware runs. Those are client faults: the first of each kind
    per interval is one WARNING line, the rest are counted into one summary line."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})
        self.quiet = quiet_log(logger, "gateway refused", "requests")

    def exception(
        self, msg: object, *args: object, exc_info: object = True, **kwargs: object
    ) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, HttpProcessingError):
            reason = " ".join(str(exc.message).split())  # aiohttp's text spans lines
            self.quiet.warn("http", type(exc).__name__, "unparseable request: %.200s", reason)
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)


def http_runner(app: web.Application) -> web.AppRunner:
    """The gateway's HTTP server: no access log, parse errors counted (QuietParseErrors)."""
    return web.AppRunner(
        app, access_log=None, logger=QuietParseErrors(logging.getLogger("aiohttp.server"))
    )


def _rejected(ids: list[str], answers: list[ConsumerRecord], faults: Counter[int]) -> CallError:
    """One error for the call: the worst status among its rows, with the first rows'
    reasons; a server fault outranks a bad row."""
    status = max(faults)
    reasons: list[str] = []
    for request_id, record in zip(ids, answers, strict=True):
        if record.value is None and len(reasons) < 3:
            headers = _headers_of(record)
            reasons.append(
                f"{request_id}: {headers.get('reason', 'rejected')}: {headers.get('error', '')}"
            )
    count = sum(faults.values())
    prefix = f"{count} of {len(ids)} rows rejected; " if len(ids) > 1 else ""
    return CallError(status, prefix + "; ".join(reasons), ids)


def _ids_header(ids: list[str]) -> dict[str, str]:
    """The request ids as a header, for calls small enough that any HTTP client reads it
    (the OIP body carries them always)."""
    joined = ",".join(ids)
    return {REQUEST_IDS_HEADER: joined} if ids and len(joined) <= MAX_IDS_HEADER else {}


def _caller_id(body: object) -> str | None:
    """The caller's ``id``, echoed as given (any string, repeated or not)."""
    given = body.get("id") if isinstance(body, dict) else None
    if given is None:
        return None
    text = given if isinstance(given, str) else json.dumps(given)
    if len(text) > MAX_CALLER_ID:
        raise CallError(400, f"id has {len(text)} characters; at most {MAX_CALLER_ID}")
    return text


def _error(
    status: int,
    message: str,
    request_ids: list[str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    out = {k: v for k, v in (headers or {}).items() if k in ("Retry-After", "Allow")}
    out.update(_ids_header(request_ids or []))
    body: dict[str, object] = {"error": message}
    if request_ids:
        body["request_ids"] = request_ids
    return web.json_response(body, status=status, headers=out)
