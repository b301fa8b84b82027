"""The predictor's Kafka side: follow the registry, score ``requests`` batch by batch."""

from __future__ import annotations

import logging
import time
from typing import Any

from aiokafka import ConsumerRecord

from modelstream.contracts.codec import default_codec
from modelstream.contracts.definitions import audit_event
from modelstream.errors import ArtifactVerificationError, DecodeError
from modelstream.kafka.clients import make_consumer, make_producer, partitions_of
from modelstream.kafka.control import ControlFollower
from modelstream.kafka.pipeline import BatchPipeline
from modelstream.kafka.topology import (
    AUDIT,
    DEADLETTER,
    MODEL_HISTORY,
    MODELS,
    REQUESTS,
)
from modelstream.kafka.topology import (
    PREDICTIONS as PREDICTIONS_TOPIC,
)
from modelstream.kafka.topology import (
    SHADOW_PREDICTIONS as SHADOW_TOPIC,
)
from modelstream.registry.artifact import verify_bytes
from modelstream.registry.follower import public_key
from modelstream.services.predictor.logic import PredictorLogic, ServingModel, Traffic
from modelstream.services.predictor.settings import Delivery, PredictorSettings
from modelstream.telemetry import (
    ARTIFACTS_REFUSED,
    BATCH_SECONDS,
    BATCH_SIZE,
    CONSUMER_LAG,
    DEAD_LETTERS,
    EVENTS_CONSUMED,
    PREDICTION_LATENCY,
    PREDICTIONS,
    PRODUCTION_VERSION,
    SHADOW_PREDICTIONS,
    observe_many,
    serve_metrics,
)

log = logging.getLogger("modelstream.predictor")
SERVICE = "predictor"


class _Processor:
    """Adapts the pure logic to the pipeline: registry refresh between batches, metrics."""

    def __init__(self, app: PredictorApp) -> None:
        self.app = app

    def process(self, tp, records):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        out = self.app.logic.process(tp, records)
        stats = self.app.logic.last_stats
        EVENTS_CONSUMED.labels(SERVICE).inc(len(records))
        BATCH_SIZE.labels(SERVICE).observe(len(records))
        for (name, version, shadow), count in stats.predicted.items():
            (SHADOW_PREDICTIONS if shadow else PREDICTIONS).labels(name, str(version)).inc(count)
        for (name, _reason), count in stats.dead.items():
            DEAD_LETTERS.labels(SERVICE, name).inc(count)
        for name, latencies in stats.latencies_ms:
            observe_many(PREDICTION_LATENCY.labels(name), latencies / 1000.0)
        BATCH_SECONDS.labels(SERVICE).observe(time.perf_counter() - started)
        return out

    async def refresh(self) -> None:
        await self.app.refresh()


class PredictorApp:
    def __init__(self, settings: PredictorSettings) -> None:
        self.settings = settings
        self.codec = default_codec()
        self.public_key = public_key(settings)
        data_key = settings.data_key()
        self.data_key = data_key[0] if data_key else None
        self.logic = PredictorLogic(
            self.codec, predictions_topic=settings.topic(PREDICTIONS_TOPIC),
            shadow_topic=settings.topic(SHADOW_TOPIC), deadletter_topic=settings.topic(DEADLETTER),
            output_format=settings.output_format.value, service=SERVICE,
            max_versions=settings.max_versions,
        )
        self.pipeline = BatchPipeline(
            settings, SERVICE, settings.topic(REQUESTS), _Processor(self),
            exactly_once=settings.delivery == Delivery.EXACTLY_ONCE,
            max_records=settings.batch_max_records,
            session_timeout_ms=settings.session_timeout_ms,
        )
        self.registry = make_consumer(settings, group_id=None, fetch_max_wait_ms=10)
        self.control = ControlFollower(settings, self._apply_command)
        self.audit_producer = make_producer(settings)
        self._audits: list[dict[str, Any]] = []
        self._last_lag = 0.0

    def request_stop(self) -> None:
        self.pipeline.request_stop()

    async def start(self) -> None:
        serve_metrics(self.settings.metrics_port, self.settings.metrics_host)
        await self.audit_producer.start()
        await self._load_registry()
        await self.control.start()
        await self.pipeline.start()
        log.info("predictor started on %s serving %s", self.settings.bootstrap,
                 {n: f"v{v}" for n, v in self.logic.production.items()})

    async def stop(self) -> None:
        await self.pipeline.stop()
        await self.control.stop()
        await self.registry.stop()
        await self.audit_producer.stop()
        log.info("predictor stopped after %d batches, %d requests",
                 self.pipeline.batches, self.pipeline.records_in)

    async def run(self) -> None:
        await self.pipeline.run()

    # -- registry ------------------------------------------------------------------------
    async def _load_registry(self) -> None:
        """Read history then the compacted registry to their ends; follow both afterwards."""
        await self.registry.start()
        tps = []
        for topic in (self.settings.topic(MODEL_HISTORY), self.settings.topic(MODELS)):
            tps.extend(await partitions_of(self.registry, topic))
        self.registry.assign(tps)
        await self.registry.seek_to_beginning(*tps)
        ends = await self.registry.end_offsets(tps)
        pending = {tp for tp, end in ends.items() if end > 0}
        while pending:
            batch = await self.registry.getmany(timeout_ms=500)
            self._apply_registry(batch)
            for tp in list(pending):
                if await self.registry.position(tp) >= ends[tp]:
                    pending.discard(tp)
        await self._flush_audits()

    def _apply_registry(self, batch: dict[Any, list[ConsumerRecord]]) -> None:
        models_topic = self.settings.topic(MODELS)
        # History first, then the registry, so production is decided by `models`.
        for tp in sorted(batch, key=lambda t: t.topic == models_topic):
            for record in batch[tp]:
                self._install(record, production=tp.topic == models_topic)

    def _install(self, record: ConsumerRecord, *, production: bool) -> None:
        name = record.key.decode(errors="replace").split(":")[0] if record.key else ""
        try:
            verified = verify_bytes(record.value, self.public_key,
                                    allow_unsigned=self.settings.allow_unsigned, codec=self.codec)
            model = ServingModel.from_verified(verified, self.data_key)
        except (ArtifactVerificationError, DecodeError) as exc:
            ARTIFACTS_REFUSED.labels(SERVICE, name if name in self.logic.versions else "").inc()
            log.warning("refused artifact %s[%d]@%d for %s: %s", record.topic, record.partition,
                        record.offset, name, exc)
            self._audits.append(audit_event(
                name, "signature_refused" if "sign" in str(exc) else "artifact_refused",
                service=SERVICE, reason=str(exc),
                details={"topic": record.topic, "partition": record.partition,
                         "offset": record.offset}))
            return
        previous = self.logic.production.get(model.name)
        self.logic.install(model, production=production)
        if production:
            PRODUCTION_VERSION.labels(SERVICE, model.name).set(model.version)
            if previous != model.version:
                log.info("serving %s v%d (%s) instead of %s", model.name, model.version,
                         model.digest_prefix, f"v{previous}" if previous else "nothing")

    async def _flush_audits(self) -> None:
        fmt = self.settings.output_format.value
        while self._audits:
            event = self._audits.pop(0)
            await self.audit_producer.send_and_wait(
                self.settings.topic(AUDIT), key=event["model"].encode(),
                value=self.codec.encode_as("AuditEvent", event, fmt))

    def _apply_command(self, cmd: dict[str, Any], replay: bool) -> None:
        if cmd["action"] != "SET_TRAFFIC":
            return
        split = cmd["traffic"] or {}
        self.logic.set_traffic(cmd["model"], Traffic(
            split.get("challenger_version"), float(split.get("fraction", 0.0)),
            bool(split.get("shadow", False))))
        log.info("traffic for %s: %s", cmd["model"], split)

    async def refresh(self) -> None:
        """Between batches: new registry records and commands take effect here, atomically."""
        batch = await self.registry.getmany(timeout_ms=0)
        if batch:
            self._apply_registry(batch)
            await self._flush_audits()
        await self.control.poll()
        now = time.monotonic()
        if now - self._last_lag > 1.0:
            self._last_lag = now
            CONSUMER_LAG.labels(SERVICE).set(sum((await self.pipeline.lag()).values()))
