"""The predictor's Kafka side: follow the registry, score ``requests`` batch by batch."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from modelstream.contracts.codec import AvroCodec, default_codec
from modelstream.contracts.records import Action, AuditEvent, Command, MonitorScored
from modelstream.kafka.boundary import Boundary, Failure
from modelstream.kafka.clients import make_consumer, make_producer, partitions_of
from modelstream.kafka.compat import fresh_partition_count
from modelstream.kafka.control import ControlFollower
from modelstream.kafka.pipeline import (
    FRAMING_BYTES,
    BatchPipeline,
    Outgoing,
    Stateless,
    key_partition,
)
from modelstream.kafka.topology import (
    AUDIT,
    DEADLETTER,
    JOIN_PARTITIONS,
    MODEL_HISTORY,
    MODELS,
    MONITOR_SCORED,
    PREDICTOR_IN_FLIGHT,
    REPLIES,
    REPLY_PARTITION_HEADER,
    REQUESTS,
    create_topics,
    max_message_bytes,
)
from modelstream.kafka.topology import (
    PREDICTIONS as PREDICTIONS_TOPIC,
)
from modelstream.kafka.topology import (
    SHADOW_PREDICTIONS as SHADOW_TOPIC,
)
from modelstream.kafka.writers import AuditWriter, dead_letter_headers
from modelstream.registry.artifact import verify_bytes
from modelstream.registry.follower import model_of_key, public_key
from modelstream.runner import Lifecycle
from modelstream.services.predictor.logic import (
    PredictorLogic,
    ScoredGroup,
    ServingModel,
    Traffic,
)
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
)

log = logging.getLogger("modelstream.predictor")
SERVICE = "predictor"
REPLIES_REFRESH_S = 10.0  # partitions added to `replies` are answered on within this
SCORED_RECORD_BYTES = 1024 * 1024  # rows of one `monitor-scored` record, at most about this


class _Processor(Stateless):
    """Adapts the pure logic to the pipeline: records in, predictions to the partition of
    their request, rejects to the dead-letter topic; registry refresh between batches."""

    def __init__(self, app: PredictorApp) -> None:
        self.app = app
        settings = app.settings
        self.topics = {False: settings.topic(PREDICTIONS_TOPIC), True: settings.topic(SHADOW_TOPIC)}
        self.deadletter = settings.topic(DEADLETTER)
        self.replies = settings.topic(REPLIES)
        self.reply_partitions = 0  # of `replies`; 0 until known (or when it does not exist)
        # a prediction larger than its topic takes is dead-lettered with its request by the
        # pipeline: its row must not reach the monitor either
        self.prediction_limit = max_message_bytes(PREDICTIONS_TOPIC)
        self.scored = (
            ScoredWriter(app.codec, settings.topic(MONITOR_SCORED))
            if settings.predictor_monitor_scored
            else None
        )

    def _reply_partition(self, message: ConsumerRecord) -> int | None:
        """Where a gateway waits for this request's answer, if it asked for one; the header
        is untrusted input: anything but a partition of `replies` is ignored."""
        if not message.headers or not self.reply_partitions:
            return None
        for name, value in message.headers:
            if name == REPLY_PARTITION_HEADER:
                try:
                    partition = int(value)
                except (TypeError, ValueError):
                    return None
                return partition if 0 <= partition < self.reply_partitions else None
        return None

    def process(self, task: int, records: list[ConsumerRecord]) -> list[Outgoing]:
        started = time.perf_counter()
        poison = self.app.settings.predictor_test_abort_on
        if poison is not None and any(r.key == poison.encode() for r in records):
            os.abort()  # the crash tests' native crash, where scoring would crash
        scored = self.app.logic.process(records)
        # Keyed by request id, in the partition of its CRC-32 (where librdkafka's default
        # partitioner puts it); the monitor reads the rows on `monitor-scored` instead.
        out = [
            Outgoing(self.topics[group.shadow], request_id, value, None, None, message)
            for group in scored.groups
            for message, value, request_id in zip(
                group.messages, group.values, group.request_ids, strict=True
            )
        ]
        for group in scored.groups:
            if group.shadow:
                continue
            for message, value, request_id in zip(
                group.messages, group.values, group.request_ids, strict=True
            ):
                partition = self._reply_partition(message)
                if partition is not None:
                    out.append(Outgoing(self.replies, request_id, value, partition, None, message))
            if self.scored is not None:
                published = [
                    len(value) + len(request_id) + FRAMING_BYTES <= self.prediction_limit
                    for value, request_id in zip(group.values, group.request_ids, strict=True)
                ]
                out.extend(self.scored.records(group, published))
        for rejected in scored.rejected:
            record = rejected.message
            headers = dead_letter_headers(record, rejected.reason, rejected.error, SERVICE)
            out.append(Outgoing(self.deadletter, record.key, record.value, None, headers))
            partition = self._reply_partition(record)
            if partition is not None:  # the caller gets the reason now, not a timeout
                out.append(Outgoing(self.replies, record.key, None, partition, headers))
            DEAD_LETTERS.labels(SERVICE, rejected.model).inc()
            self.app.boundary.reject(
                record.topic,
                record.partition,
                record.offset,
                Failure(rejected.reason, rejected.error),
            )
        EVENTS_CONSUMED.labels(SERVICE).inc(len(records))
        BATCH_SIZE.labels(SERVICE).observe(len(records))
        for (name, version, shadow), count in scored.predicted.items():
            (SHADOW_PREDICTIONS if shadow else PREDICTIONS).labels(name, str(version)).inc(count)
        for name, latencies in scored.latencies_ms:
            observe_many(PREDICTION_LATENCY.labels(name), latencies / 1000.0)
        BATCH_SECONDS.labels(SERVICE).observe(time.perf_counter() - started)
        return out

    def dead_lettered(self, record: ConsumerRecord, failure: Failure) -> list[Outgoing]:
        """A waiting caller hears why its row was dead-lettered (internal error, crash,
        output too large), not a timeout."""
        partition = self._reply_partition(record)
        if partition is None:
            return []
        headers = dead_letter_headers(record, failure.reason, failure.error, SERVICE)
        return [Outgoing(self.replies, record.key, None, partition, headers)]

    async def refresh(self) -> None:
        await self.app.refresh()


class ScoredWriter:
    """A group's rows for the monitor: one `monitor-scored` record per join partition (and
    size chunk), so that the join reads them where it joins them."""

    def __init__(self, codec: AvroCodec, topic: str) -> None:
        self.codec = codec
        self.topic = topic

    def records(
        self, group: ScoredGroup[ConsumerRecord], published: list[bool] | None = None
    ) -> list[Outgoing]:
        """The group's rows (those ``published`` flags, if given) for the monitor."""
        rows = group.rows
        if rows is None or not group.request_ids:
            return []
        ids = group.request_ids
        partitions = np.fromiter(
            (key_partition(i, JOIN_PARTITIONS) for i in ids), np.int64, len(ids)
        )
        if published is not None:
            partitions[~np.asarray(published, dtype=bool)] = -1
        out: list[Outgoing] = []
        for partition in np.unique(partitions).tolist():
            if partition >= 0:
                where = np.flatnonzero(partitions == partition).tolist()
                self._chunks(group, where, partition, out)
        return out

    def _chunks(
        self,
        group: ScoredGroup[ConsumerRecord],
        index: list[int],
        partition: int,
        out: list[Outgoing],
    ) -> None:
        """The rows ``index`` in records of at most SCORED_RECORD_BYTES, halving until they
        fit; a single row larger than that goes with its request as source, so that the
        pipeline dead-letters the request if the topic cannot take it."""
        value = self._encode(group, index)
        if len(value) > SCORED_RECORD_BYTES and len(index) > 1:
            half = len(index) // 2
            self._chunks(group, index[:half], partition, out)
            self._chunks(group, index[half:], partition, out)
            return
        source = group.messages[index[0]] if len(index) == 1 else None
        assert group.rows is not None
        out.append(Outgoing(self.topic, group.rows.model.encode(), value, partition, None, source))

    def _encode(self, group: ScoredGroup[ConsumerRecord], index: list[int]) -> bytes:
        rows = group.rows
        assert rows is not None
        categorical = len(rows.categories) // len(group.request_ids)
        record: MonitorScored = {
            "model": rows.model,
            "version": rows.version,
            "predicted_at_ms": rows.predicted_at_ms,
            "request_ids": [group.request_ids[i].decode() for i in index],
            "feature_count": rows.features.shape[1],
            "features_id": rows.features_id,
            "features": np.ascontiguousarray(rows.features[index], "<f8").tobytes(),
            "categories": [
                rows.categories[i * categorical + j] for i in index for j in range(categorical)
            ],
            "classes": rows.classes,
            "scores": np.ascontiguousarray(rows.scores[index], "<f8").tobytes(),
            "predictions": [rows.predictions[i] for i in index],
        }
        return self.codec.encode(MonitorScored, record)


class PredictorApp(Lifecycle):
    def __init__(self, settings: PredictorSettings) -> None:
        super().__init__()
        self.settings = settings
        self.codec = default_codec()
        self.public_key = public_key(settings)
        data_key = settings.data_key()
        self.data_key = data_key[0] if data_key else None
        self.logic: PredictorLogic = PredictorLogic(
            self.codec,
            output_format=settings.output_format.value,
            max_versions=settings.max_versions,
        )
        self.processor = _Processor(self)
        self.scoring = (
            ThreadPoolExecutor(
                settings.predictor_scoring_threads, thread_name_prefix="predictor-scoring"
            )
            if settings.predictor_scoring_threads
            else None
        )
        self.pipeline = BatchPipeline(
            settings,
            SERVICE,
            settings.topic(REQUESTS),
            self.processor,
            deadletter_topic=settings.topic(DEADLETTER),
            topic_limits={
                settings.topic(name): max_message_bytes(name)
                for name in (PREDICTIONS_TOPIC, SHADOW_TOPIC, REPLIES, MONITOR_SCORED)
            },
            crash_topic=settings.topic(PREDICTOR_IN_FLIGHT),
            exactly_once=settings.delivery == Delivery.EXACTLY_ONCE,
            max_records=settings.predictor_batch_max_records,
            session_timeout_s=settings.predictor_session_timeout_s,
            commit_interval_s=settings.predictor_commit_interval_ms / 1000,
            commit_max_records=settings.predictor_commit_max_records,
            hold=self.logic.hold_s,
            executor=self._scoring_executor,
        )
        self.registry = make_consumer(settings, group_id=None, fetch_max_wait_ms=10)
        self.control = ControlFollower(settings, self._apply_command, SERVICE)
        self.audit_producer = make_producer(settings)
        self.audit = AuditWriter(
            self.audit_producer, settings.topic(AUDIT), SERVICE, settings.output_format.value
        )
        self._audits: list[AuditEvent] = []
        # registry records being verified and built in worker threads, in registry order
        self._preparing: deque[tuple[ConsumerRecord, bool, asyncio.Future[ServingModel]]] = deque()
        self.boundary = Boundary(SERVICE)
        self._last_lag = 0.0
        self._last_replies = time.monotonic()

    def request_stop(self) -> None:
        super().request_stop()
        self.pipeline.request_stop()

    def _scoring_executor(self) -> ThreadPoolExecutor | None:
        """Where the next batch is scored: in the worker thread when a graph model is
        loaded (onnxruntime runs without the GIL, the event loop fetches and sends
        meanwhile); on the event loop for native linear and MLP models, whose small numpy
        products cost less than handing a batch to a thread (measured: README)."""
        return self.scoring if self.logic.runs_graphs else None

    async def start(self) -> None:
        if self.settings.predictor_monitor_scored:
            await create_topics(self.settings, only=(MONITOR_SCORED,), reconcile=False)
        await self.own(self.audit_producer)
        await self.own(self.registry)
        await self._load_registry()
        await self._count_reply_partitions()
        if not self.processor.reply_partitions:  # provisioned before the gateway existed
            log.warning("no %s topic: synchronous calls are not answered", REPLIES)
        await self.own(self.control)
        await self.control.replay()
        await self.own(self.pipeline)
        log.info(
            "predictor started on %s serving %s",
            self.settings.bootstrap,
            {n: f"v{v}" for n, v in self.logic.production.items()},
        )

    async def stop(self) -> None:
        await super().stop()
        if self.scoring is not None:
            self.scoring.shutdown(wait=False)
        log.info(
            "predictor stopped after %d batches, %d requests",
            self.pipeline.batches,
            self.pipeline.records_in,
        )

    async def run(self) -> None:
        await self.pipeline.run()

    # -- registry ------------------------------------------------------------------------
    async def _load_registry(self) -> None:
        """Read history then the compacted registry to their ends; follow both afterwards."""
        tps = []
        for topic in (self.settings.topic(MODEL_HISTORY), self.settings.topic(MODELS)):
            tps.extend(await partitions_of(self.registry, topic))
        self.registry.assign(tps)
        await self.registry.seek_to_beginning(*tps)
        ends = await self.registry.end_offsets(tps)
        pending = {tp for tp, end in ends.items() if end > 0}
        while pending:
            batch = await self.registry.getmany(timeout_ms=500)
            await self._apply_registry(batch, wait=True)
            for tp in list(pending):
                if await self.registry.position(tp) >= ends[tp]:
                    pending.discard(tp)
        await self._flush_audits()

    async def _apply_registry(
        self, batch: dict[TopicPartition, list[ConsumerRecord]], *, wait: bool = False
    ) -> None:
        """Start preparing each new artifact in a worker thread (verification, decryption,
        an onnxruntime session for a graph), then install those that are ready, in registry
        order: until a new version is ready, the one before it keeps serving. ``wait``
        (start-up), or a model's first version, installs all of them before returning."""
        models_topic = self.settings.topic(MODELS)
        # History first, then the registry, so production is decided by `models`.
        for tp in sorted(batch, key=lambda t: t.topic == models_topic):
            for record in batch[tp]:
                self.boundary.read(record.topic)
                preparing = asyncio.ensure_future(asyncio.to_thread(self._prepare, record))
                self._preparing.append((record, tp.topic == models_topic, preparing))
        # A model's first version is waited for: until it is installed, its requests could
        # only be dead-lettered as unknown. Later versions swap in when ready.
        first = any(
            production and model_of_key(record.key) not in self.logic.production
            for record, production, _ in self._preparing
        )
        if wait or first:
            await asyncio.gather(*(p for _, _, p in self._preparing), return_exceptions=True)
        while self._preparing and self._preparing[0][2].done():
            record, production, prepared = self._preparing.popleft()
            exc = prepared.exception()
            if exc is None:
                self._install(prepared.result(), production=production)
            else:
                self._refuse(record, exc)

    def _prepare(self, record: ConsumerRecord) -> ServingModel:
        """In a worker thread: verify the artifact and build its scorer."""
        verified = verify_bytes(
            record.value,
            self.public_key,
            allow_unsigned=self.settings.allow_unsigned,
            codec=self.codec,
        )
        return ServingModel.from_verified(
            verified,
            self.data_key,
            threads=self.settings.predictor_onnx_threads,
            max_chars=self.settings.max_string_chars,
        )

    def _refuse(self, record: ConsumerRecord, exc: BaseException) -> None:
        name = model_of_key(record.key)
        failure = self.boundary.failure(exc)  # infrastructure errors propagate
        self.boundary.reject(record.topic, record.partition, record.offset, failure)
        ARTIFACTS_REFUSED.labels(SERVICE, name if name in self.logic.versions else "").inc()
        self._audits.append(
            self.audit.event(
                name,
                "signature_refused" if "sign" in failure.error else "artifact_refused",
                reason=failure.error,
                details={
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                },
            )
        )

    def _install(self, model: ServingModel, *, production: bool) -> None:
        previous = self.logic.production.get(model.name)
        self.logic.install(model, production=production)
        if production:
            PRODUCTION_VERSION.labels(SERVICE, model.name).set(model.version)
            if previous != model.version:
                log.info(
                    "serving %s v%d (%s) instead of %s",
                    model.name,
                    model.version,
                    model.digest_prefix,
                    f"v{previous}" if previous else "nothing",
                )

    async def _flush_audits(self) -> None:
        while self._audits:
            await (await self.audit.send_event(self._audits.pop(0)))

    def _apply_command(self, cmd: Command, replay: bool) -> None:
        if cmd["action"] != Action.SET_TRAFFIC:
            return
        split = cmd["traffic"]
        traffic = (
            Traffic(split["challenger_version"], split["fraction"], split["shadow"])
            if split is not None
            else Traffic()
        )
        self.logic.set_traffic(cmd["model"], traffic)
        log.info("traffic for %s: %s", cmd["model"], traffic)

    async def refresh(self) -> None:
        """Between batches: new registry records and commands take effect here, atomically."""
        batch = await self.registry.getmany(timeout_ms=0)
        if batch or self._preparing:
            await self._apply_registry(batch)
            await self._flush_audits()
        await self.control.poll()
        now = time.monotonic()
        if now - self._last_lag > 1.0:
            self._last_lag = now
            CONSUMER_LAG.labels(SERVICE).set(sum((await self.pipeline.lag()).values()))
        if now - self._last_replies > REPLIES_REFRESH_S:
            self._last_replies = now
            await self._count_reply_partitions()

    async def _count_reply_partitions(self) -> None:
        """Partitions added to `replies` get answers too (gateways are assigned them)."""
        topic = self.settings.topic(REPLIES)
        try:
            count = await fresh_partition_count(self.registry, topic)
            if count:  # only partitions every producer of ours can write to yet
                known = await self.pipeline.known_partitions(topic)
                count = count if known is None else min(count, known)
        except KafkaError as exc:
            log.debug("cannot count the partitions of %s: %s", REPLIES, exc)
            return
        if count != self.processor.reply_partitions:
            log.info("%s has %d partitions", REPLIES, count)
            self.processor.reply_partitions = count
