"""The monitor's Kafka side: a faust-streaming application with two agents.

``join`` reads ``requests``, ``predictions`` and ``feedback`` (co-partitioned by request id)
and folds them into the changelog-backed ``join`` table; every complete join goes to the
internal ``monitor-labelled`` topic keyed by model name. ``learn`` reads that topic, so each
model is handled by exactly one worker: live metrics, drift detection, online learning and
rollback decisions, with the model's state in the changelog-backed ``models`` table.

Both tables are written explicitly to the changelog partition of the input that owns the key,
once per batch of ``take_events``; faust flushes the producer before it commits offsets, so
after a crash the tables are never behind the committed input. The learner de-duplicates
re-delivered joins on their completing input position, so no label is learned twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import faust
from faust.serializers import codecs
from faust.types import EventT

from modelstream.contracts.builders import audit_event, command, now_ms
from modelstream.contracts.codec import default_codec
from modelstream.contracts.definitions import (
    FEEDBACK_EXAMPLE_PREFIX,
    Definition,
    check_label,
    check_request_id,
)
from modelstream.contracts.records import (
    Action,
    AuditEvent,
    Command,
    Feedback,
    ModelArtifact,
    MonitorJoin,
    MonitorJoinBatch,
    MonitorModelState,
    Prediction,
    PredictionRequest,
    TrainingExample,
)
from modelstream.errors import ArtifactVerificationError, DecodeError, InvalidEventError
from modelstream.kafka.clients import security_options
from modelstream.kafka.topology import (
    AUDIT,
    CANDIDATES,
    CONTROL,
    DEADLETTER,
    MONITOR_JOIN_CHANGELOG,
    MONITOR_LABELLED,
    MONITOR_TOPICS,
    TOPICS_BY_NAME,
    TRAINING,
    create_topics,
)
from modelstream.kafka.topology import FEEDBACK as FEEDBACK_TOPIC
from modelstream.kafka.topology import PREDICTIONS as PREDICTIONS_TOPIC
from modelstream.kafka.topology import REQUESTS as REQUESTS_TOPIC
from modelstream.kafka.writers import SourcePosition, dead_letter_headers
from modelstream.ops.influx import InfluxWriter
from modelstream.registry.artifact import TENSOR_FIELDS, decrypt_tensors, from_tensor, seal
from modelstream.registry.follower import ProductionFollower, public_key
from modelstream.runner import Lifecycle
from modelstream.services.monitor.logic import (
    FEEDBACK,
    PREDICTIONS,
    REQUESTS,
    Decisions,
    ModelWatch,
    expired,
    is_complete,
    merge,
    missing_parts,
)
from modelstream.services.monitor.settings import MonitorSettings
from modelstream.telemetry import (
    ARTIFACTS_REFUSED,
    BATCH_SECONDS,
    BATCH_SIZE,
    DEAD_LETTERS,
    DRIFT_EVENTS,
    EVENTS_CONSUMED,
    FEEDBACK_ACCEPTED,
    JOIN_DUPLICATES,
    JOIN_EXPIRED,
    JOIN_MATCH_RATIO,
    JOIN_PENDING,
    LABEL_DELAY,
    LABELS_JOINED,
    LIVE_ACCURACY,
    LIVE_CALIBRATION_ERROR,
    LIVE_LOG_LOSS,
    LIVE_MAE,
    LIVE_RMSE,
    LIVE_WINDOW_LABELS,
    ONLINE_CANDIDATES,
    ONLINE_GAIN,
    ONLINE_LEARNED,
    ONLINE_LEARNER_LABELS,
    PRODUCTION_VERSION,
    ROLLBACKS_REQUESTED,
)

log = logging.getLogger("modelstream.monitor")
SERVICE = "monitor"
LABELLED_PARTITIONS = TOPICS_BY_NAME[MONITOR_LABELLED].partitions
# What the monitor writes to InfluxDB: measurement -> fields (tags: model, version; drift: kind).
INFLUX_MEASUREMENTS = {
    "model_quality": (
        "accuracy",
        "log_loss",
        "calibration_error",
        "mae",
        "rmse",
        "label_delay_s",
        "labels_window",
        "labelled_total",
        "joined_total",
        "online_gain",
    ),
    "drift": ("events", "detail"),
}
MAX_LABELLED_BYTES = 256 * 1024  # well under Kafka's default 1 MiB message limit
JOIN_CODEC = "modelstream-join"
STATE_CODEC = "modelstream-model-state"


class _AvroCodec(codecs.Codec):
    """Table values as Avro single-object records of one contract (never pickle)."""

    def __init__(self, record_type: type) -> None:
        super().__init__()
        self.record_type = record_type

    def _dumps(self, obj: Any) -> bytes:
        return default_codec().encode(self.record_type, obj)

    def _loads(self, s: bytes) -> Any:
        return None if s is None else default_codec().decode(s, self.record_type)


codecs.register(JOIN_CODEC, _AvroCodec(MonitorJoin))
codecs.register(STATE_CODEC, _AvroCodec(MonitorModelState))


def _credentials(settings: MonitorSettings) -> Any:
    """faust's spelling of the same SASL/TLS settings every other service uses."""
    options = security_options(settings)
    if not options:
        return None
    if settings.security_protocol == "SSL":
        return faust.SSLCredentials(options["ssl_context"])
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=settings.sasl_password.get_secret_value() if settings.sasl_password else None,
        mechanism=settings.sasl_mechanism,
        ssl_context=options.get("ssl_context"),
    )


def _serialize(table: Any, value_serializer: str) -> None:
    """faust derives a table's serializers from model types and builds its changelog topic
    when the table is registered; ours are raw keys and Avro values, so both the table
    and a rebuilt changelog topic (which recovery decodes with) get them here."""
    table.key_serializer, table.value_serializer = "raw", value_serializer
    table.changelog_topic = table._new_changelog_topic()


class MonitorApp(Lifecycle):
    """Wires the topics, tables and agents; ``start``/``run``/``stop`` like every service."""

    def __init__(self, settings: MonitorSettings) -> None:
        super().__init__()
        self.settings = settings
        self.codec = default_codec()
        self.data_key = settings.data_key()
        self.config = settings.watch_config()
        self.ttl_ms = int(settings.join_ttl_s * 1000)
        self.registry = ProductionFollower(settings, public_key(settings), SERVICE)
        self.watches: dict[str, ModelWatch] = {}
        self.restored: set[str] = set()
        self.influx = (
            InfluxWriter(
                settings.influxdb_url,
                settings.influxdb_database,
                username=settings.influxdb_username,
                password=(
                    settings.influxdb_password.get_secret_value()
                    if settings.influxdb_password
                    else None
                ),
            )
            if settings.influxdb_url
            else None
        )
        self._history_written: dict[str, float] = {}
        self._history_joined: dict[str, int] = {}
        self._registry_looked = 0.0
        self.expired: dict[str, int] = defaultdict(int)
        self.ready = asyncio.Event()
        self._kinds = {
            settings.topic(REQUESTS_TOPIC): REQUESTS,
            settings.topic(PREDICTIONS_TOPIC): PREDICTIONS,
            settings.topic(FEEDBACK_TOPIC): FEEDBACK,
        }
        self.app = faust.App(
            settings.group(SERVICE),
            broker=[f"kafka://{server}" for server in settings.bootstrap.split(",")],
            broker_credentials=_credentials(settings),
            store="memory://",
            datadir=str(settings.state_dir / "monitor"),
            autodiscover=False,
            web_enabled=False,
            processing_guarantee="at_least_once",
            producer_acks=-1,
            # Many small records per batch (changelog, joins, training rows): let them share
            # produce requests instead of paying one acks=all round trip each.
            producer_linger=0.005,
            producer_max_batch_size=512 * 1024,
            topic_replication_factor=settings.replication_factor,
            topic_partitions=LABELLED_PARTITIONS,
            table_standby_replicas=0,
            consumer_auto_offset_reset="earliest",
            broker_commit_every=10_000,
            broker_session_timeout=settings.monitor_session_timeout_s,
            broker_heartbeat_interval=settings.monitor_session_timeout_s / 5,
            broker_commit_interval=1.0,
            stream_buffer_maxsize=4 * settings.monitor_batch_max_records,
        )
        raw: dict[str, Any] = {
            "key_type": bytes,
            "value_type": bytes,
            "key_serializer": "raw",
            "value_serializer": "raw",
        }
        self.inputs = self.app.topic(*self._kinds, **raw)
        self.labelled = self.app.topic(
            settings.topic(MONITOR_LABELLED), partitions=LABELLED_PARTITIONS, internal=True, **raw
        )
        self.out = {
            name: self.app.topic(settings.topic(name), **raw)
            for name in (AUDIT, CANDIDATES, CONTROL, DEADLETTER, TRAINING)
        }
        # A table's partitions are those of the inputs that own its keys.
        self.joins = self.app.Table(
            "join", key_type=bytes, partitions=TOPICS_BY_NAME[MONITOR_JOIN_CHANGELOG].partitions
        )
        self.states = self.app.Table("models", partitions=LABELLED_PARTITIONS, key_type=bytes)
        _serialize(self.joins, JOIN_CODEC)
        _serialize(self.states, STATE_CODEC)
        self.app.agent(self.inputs, name="join")(self._join_agent)
        self.app.agent(self.labelled, name="learn")(self._learn_agent)
        self.app.timer(1.0)(self._housekeeping)
        revoked: Any = self._on_revoked  # faust's signal types do not cover coroutine receivers
        assigned: Any = self._on_assigned
        self.app.on_partitions_revoked.connect(revoked)
        self.app.on_partitions_assigned.connect(assigned)

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        (self.settings.state_dir / "monitor").mkdir(parents=True, exist_ok=True)
        await create_topics(self.settings, only=MONITOR_TOPICS, reconcile=False)
        if self.influx is not None:
            await self.influx.start()
        await self.own(self.registry)
        await self.registry.load()
        self._refresh_registry(set(self.registry.production))
        self.ready.set()
        # Sends of one batch are queued together; faust warns above 100 by default.
        self.app.producer.buffer.max_messages = 10 * self.settings.monitor_batch_max_records
        await self.app.start()

    async def run(self) -> None:
        await self.stopping.wait()

    async def stop(self) -> None:
        await self.app.stop()
        await super().stop()
        if self.influx is not None:
            for watch in self.watches.values():
                self._history(watch, force=True)
            await self.influx.stop()

    async def _on_revoked(self, app: Any, revoked: set[Any], **_: Any) -> None:
        """A returning model is re-read from the state table: the copy that had it
        meanwhile may have moved it on."""
        self.restored.clear()

    async def _on_assigned(self, app: Any, assigned: set[Any], **_: Any) -> None:
        """Join entries of input partitions another copy now owns are left to it (it
        recovers them from the changelog); those this copy kept stay as they are."""
        owned = {tp.partition for tp in assigned if tp.topic in self._kinds}
        store = self.joins.data
        for key in [k for k in store.keys() if store[k]["partition"] not in owned]:
            del store[key]

    # -- registry ----------------------------------------------------------------------
    def _refresh_registry(self, changed: set[str]) -> None:
        for name in sorted(changed):
            body = self.registry.production[name].body
            try:
                plain = decrypt_tensors(body, self.data_key[0] if self.data_key else None)
            except ArtifactVerificationError as exc:
                log.warning("cannot learn online from %s v%d: %s", name, body["version"], exc)
                continue
            arrays = {**plain, **{f: from_tensor(plain[f]) for f in TENSOR_FIELDS}}
            self.watches.setdefault(name, ModelWatch(name, self.config)).install(arrays)
            PRODUCTION_VERSION.labels(SERVICE, name).set(body["version"])
            log.info("%s: production is v%d", name, body["version"])
        for model, _reason in self.registry.refused:
            ARTIFACTS_REFUSED.labels(SERVICE, model).inc()
        self.registry.refused.clear()

    def _definition(self, model: str) -> Definition | None:
        verified = self.registry.production.get(model)
        if verified is None:
            return None
        body = verified.body
        return Definition(
            name=model,
            task=body["task"],
            feature_names=tuple(body["feature_names"]),
            classes=tuple(body["classes"]),
        )

    # -- agent 1: the join ---------------------------------------------------------------
    async def _join_agent(self, stream: Any) -> None:
        await self.ready.wait()
        async for events in stream.take_events(
            self.settings.monitor_batch_max_records, within=self.settings.batch_within_s
        ):
            started = time.perf_counter()
            await self._join(events)
            BATCH_SIZE.labels(SERVICE).observe(len(events))
            BATCH_SECONDS.labels(SERVICE).observe(time.perf_counter() - started)

    async def _join(self, events: Sequence[EventT[Any]]) -> None:
        store = self.joins.data
        now = now_ms()
        changed: dict[bytes, MonitorJoin] = {}
        complete: dict[str, list[MonitorJoin]] = defaultdict(list)
        for event in events:
            message = event.message
            kind = self._kinds[message.topic]
            value = await self._decode(kind, message)
            if value is None:
                continue
            if kind == FEEDBACK:
                FEEDBACK_ACCEPTED.labels(value["model"]).inc()
            key = value["request_id"].encode()
            entry = changed.get(key) or store.get(key)
            was_complete = entry is not None and is_complete(entry)
            entry = merge(entry, kind, value, message.partition, message.offset, now)
            changed[key] = entry
            # Emit when this input completes the join, and again when the completing input
            # itself is re-delivered after a restart (the learner drops what it has seen).
            if is_complete(entry) and (
                not was_complete
                or (kind == entry["completed_by"] and message.offset == entry["completed_offset"])
            ):
                complete[entry["model"]].append(entry)
        EVENTS_CONSUMED.labels(SERVICE).inc(len(events))
        send = self.app.producer.send
        changelog = self.joins.changelog_topic.get_topic_name()
        for key, entry in changed.items():
            store[key] = entry
            await send(
                changelog,
                key,
                self.codec.encode(MonitorJoin, entry),
                entry["partition"],
                None,
                None,
            )
        labelled = self.labelled.get_topic_name()
        for model, joins in complete.items():
            for value in self._labelled_records(joins):
                await send(labelled, model.encode(), value, None, None, None)

    def _labelled_records(self, joins: list[dict[str, Any]]) -> list[bytes]:
        """``MonitorJoinBatch`` records of at most MAX_LABELLED_BYTES each (a batch of joins
        with large feature vectors would otherwise exceed Kafka's message size)."""
        value = self.codec.encode(MonitorJoinBatch, {"joins": joins})
        if len(value) <= MAX_LABELLED_BYTES or len(joins) == 1:
            return [value]
        half = len(joins) // 2
        return self._labelled_records(joins[:half]) + self._labelled_records(joins[half:])

    async def _decode(self, kind: str, message: Any) -> dict[str, Any] | None:
        """The decoded input, or None: bad feedback is dead-lettered here; bad requests
        are the predictor's to dead-letter (it reads them first), so they are skipped."""
        record_type: type = {
            REQUESTS: PredictionRequest,
            PREDICTIONS: Prediction,
            FEEDBACK: Feedback,
        }[kind]
        try:
            value: dict[str, Any] = self.codec.decode_any(message.value, record_type)
            if kind == FEEDBACK:
                check_request_id(value["request_id"], message.key)
                definition = self._definition(value["model"])
                if definition is None and time.monotonic() - self._registry_looked > 1.0:
                    # Published since the last registry poll? Look (at most once a second)
                    # before refusing.
                    self._registry_looked = time.monotonic()
                    self._refresh_registry(await self.registry.poll(timeout_ms=500))
                    definition = self._definition(value["model"])
                if definition is None:
                    raise InvalidEventError(
                        "unknown-model", f"no production version of {value['model']!r}"
                    )
                value["label"] = check_label(value["label"], definition)
            return value
        except (DecodeError, InvalidEventError) as exc:
            if kind == FEEDBACK:
                self._dead_letter(message, exc.reason, str(exc))
            else:
                log.debug("skipping undecodable %s record: %s", kind, exc)
            return None

    def _dead_letter(self, message: Any, reason: str, error: str) -> None:
        log.warning(
            "dead-letter %s[%d]@%d: %s: %s",
            message.topic,
            message.partition,
            message.offset,
            reason,
            error,
        )
        DEAD_LETTERS.labels(SERVICE, "").inc()
        self.out[DEADLETTER].send_soon(
            key=message.key,
            value=message.value,
            headers=dead_letter_headers(message, reason, error, SERVICE),
        )

    # -- agent 2: metrics, drift, learning, rollback -------------------------------------
    async def _learn_agent(self, stream: Any) -> None:
        await self.ready.wait()
        async for events in stream.take_events(
            self.settings.monitor_batch_max_records, within=self.settings.batch_within_s
        ):
            by_model: dict[str, list[MonitorJoin]] = defaultdict(list)
            partitions: dict[str, int] = {}
            for event in events:
                batch = self.codec.decode(event.message.value, MonitorJoinBatch)["joins"]
                if batch:
                    model = batch[0]["model"]
                    by_model[model].extend(batch)
                    partitions[model] = event.message.partition
            for model, joins in by_model.items():
                await self._learn(model, joins, partitions[model])

    async def _learn(self, model: str, joins: list[MonitorJoin], partition: int) -> None:
        watch = self.watches.setdefault(model, ModelWatch(model, self.config))
        if model not in self.restored:
            # The first batch after a (re)start or rebalance: the tables are recovered by
            # now, and the state table, not this process's memory, says where the model is.
            self.restored.add(model)
            state = self.states.data.get(model.encode())
            if state is not None and self._definition(model) is not None:
                watch = self.watches[model] = ModelWatch(model, self.config)
                self._refresh_registry({model})
                watch.restore(state, self.registry.production[model].body["task"])
                log.info(
                    "%s: continuing from saved state (%d labels joined, learner at %d labels)",
                    model,
                    watch.joined_total,
                    watch.learner.learned if watch.learner else 0,
                )
        now = now_ms()
        decisions = await asyncio.to_thread(watch.observe, joins, now)
        await self._act(watch, decisions)
        # The state says these joins are learned, so what learning them produced (training
        # rows, candidates, commands, audit) must be durable first: after a crash either
        # both are there or the joins are learned - and their effects written - again.
        await self.app.producer.flush()
        state = watch.state()
        self.states.data[model.encode()] = state
        self.states.send_changelog(partition, model.encode(), state)
        self._export_metrics(watch, decisions)

    async def _act(self, watch: ModelWatch, d: Decisions) -> None:
        model = watch.name
        for join, reason, error in d.unusable:
            DEAD_LETTERS.labels(SERVICE, model).inc()
            log.warning("unusable join of %s: %s: %s", join["request_id"], reason, error)
            # The label is what is unusable: the dead letter points at its feedback record.
            source = SourcePosition(
                self.settings.topic(FEEDBACK_TOPIC), join["partition"], join["feedback_offset"] or 0
            )
            self.out[DEADLETTER].send_soon(
                key=join["request_id"].encode(),
                value=self.codec.encode(MonitorJoin, join),
                headers=dead_letter_headers(source, reason, error, SERVICE),
            )
        if self.settings.write_training:
            training, key = self.settings.topic(TRAINING), model.encode()
            for join in d.fresh:
                example: TrainingExample = {
                    "model": model,
                    "features": join["features"],
                    "label": join["label"],
                    "example_id": FEEDBACK_EXAMPLE_PREFIX + join["request_id"],
                    "timestamp_ms": join["labelled_at_ms"],
                }
                await self.app.producer.send(
                    training, key, self.codec.encode(TrainingExample, example), None, None, None
                )
        for event in d.drift:
            DRIFT_EVENTS.labels(model, str(event.version)).inc()
            log.warning("%s: %s drift on v%d: %s", model, event.kind, event.version, event.detail)
            self._audit(
                model,
                "drift_detected",
                version=event.version,
                reason=event.detail,
                details={"kind": event.kind},
            )
            if self.influx is not None:
                self.influx.write(
                    "drift",
                    {"model": model, "version": str(event.version), "kind": event.kind},
                    {"events": 1, "detail": event.detail},
                    now_ms(),
                )
        if d.train_reason is not None:
            self._command(model, Action.TRAIN, reason=f"drift: {d.train_reason}")
        if d.rollback is not None:
            ROLLBACKS_REQUESTED.labels(model).inc()
            log.warning("%s: rolling back: %s", model, d.rollback.reason)
            self._command(
                model, Action.ROLLBACK, version=d.rollback.parent, reason=d.rollback.reason
            )
            self._audit(
                model,
                "rollback_requested",
                version=d.rollback.version,
                reason=d.rollback.reason,
                details={"to_version": str(d.rollback.parent), "labels": str(d.rollback.labels)},
            )
        if d.candidate is not None:
            artifact = seal(d.candidate)
            ONLINE_CANDIDATES.labels(model).inc()
            lineage = d.candidate["lineage"]
            log.info(
                "%s: online candidate %s from v%s after %d labels",
                model,
                artifact["digest"][:12],
                d.candidate["parent_version"],
                lineage["example_count"],
            )
            self.out[CANDIDATES].send_soon(
                key=model.encode(), value=self.codec.encode(ModelArtifact, artifact)
            )
            self._audit(
                model,
                "online_candidate",
                digest=artifact["digest"],
                version=d.candidate["parent_version"],
                details={
                    "examples": str(lineage["example_count"]),
                    "ranges": ",".join(
                        f"{r['partition']}:{r['start']}-{r['end']}" for r in lineage["ranges"]
                    ),
                    "gain": f"{d.candidate['metrics']['online_gain']:.4f}",
                },
            )

    def _audit(self, model: str, event: str, **kwargs: Any) -> None:
        record = audit_event(model, event, service=SERVICE, **kwargs)
        self.out[AUDIT].send_soon(
            key=model.encode(),
            value=self.codec.encode_as(AuditEvent, record, self.settings.output_format.value),
        )

    def _command(self, model: str, action: Action, **kwargs: Any) -> None:
        self.out[CONTROL].send_soon(
            key=model.encode(),
            value=self.codec.encode(Command, command(model, action, actor=SERVICE, **kwargs)),
        )

    def _export_metrics(self, watch: ModelWatch, d: Decisions) -> None:
        model = watch.name
        LABELS_JOINED.labels(model).inc(d.joined)
        if d.duplicates:
            JOIN_DUPLICATES.labels(model).inc(d.duplicates)
        if d.learned:
            ONLINE_LEARNED.labels(model).inc(d.learned)
        if watch.learner is not None:
            ONLINE_LEARNER_LABELS.labels(model).set(watch.learner.learned)
        ONLINE_GAIN.labels(model).set(watch.gain())
        joined, lost = watch.joined_total, self.expired.get(model, 0)
        if joined + lost:
            JOIN_MATCH_RATIO.labels(model).set(joined / (joined + lost))
        self._history(watch)
        for version, metrics in watch.metrics.items():
            snap = metrics.snapshot()
            labels = (model, str(version))
            LIVE_WINDOW_LABELS.labels(*labels).set(snap["labels"])
            if snap["labels"] == 0:
                continue
            LABEL_DELAY.labels(*labels).set(snap["label_delay_ms"] / 1000.0)
            if metrics.task == "REGRESSION":
                LIVE_MAE.labels(*labels).set(snap["mae"])
                LIVE_RMSE.labels(*labels).set(snap["rmse"])
            else:
                LIVE_ACCURACY.labels(*labels).set(snap["accuracy"])
                LIVE_LOG_LOSS.labels(*labels).set(snap["log_loss"])
                LIVE_CALIBRATION_ERROR.labels(*labels).set(snap["calibration_error"])

    def _history(self, watch: ModelWatch, *, force: bool = False) -> None:
        """Live metrics as InfluxDB points, at most once per history interval per model
        (the housekeeping timer and the stop write what the last batch changed)."""
        now = time.monotonic()
        if self.influx is None or (
            not force
            and now - self._history_written.get(watch.name, -1e9) < self.settings.history_interval_s
        ):
            return
        if self._history_joined.get(watch.name) == watch.joined_total and not force:
            return  # nothing new since the last point
        self._history_written[watch.name] = now
        self._history_joined[watch.name] = watch.joined_total
        at = now_ms()
        for version, metrics in watch.metrics.items():
            snap = metrics.snapshot()
            if snap["labels"] == 0:
                continue
            fields: dict[str, float | int] = {
                "labels_window": int(snap["labels"]),
                "labelled_total": metrics.total,
                "label_delay_s": snap["label_delay_ms"] / 1000.0,
            }
            for key in ("accuracy", "log_loss", "calibration_error", "mae", "rmse"):
                if key in snap:
                    fields[key] = snap[key]
            tags = {"model": watch.name, "version": str(version)}
            if version == watch.version:
                fields["joined_total"] = watch.joined_total
                fields["online_gain"] = watch.gain()
            self.influx.write("model_quality", tags, fields, at)

    # -- every second: registry, expiry ------------------------------------------------
    async def _housekeeping(self) -> None:
        self._refresh_registry(await self.registry.poll())
        store = self.joins.data
        now = now_ms()
        owned = {
            tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic in self._kinds
        }
        gone: list[bytes] = []
        # Entries are inserted in first-seen order, so the oldest come first.
        for key in store.keys():
            entry = store[key]
            if not expired(entry, now, self.ttl_ms):
                break
            if entry["partition"] in owned:
                gone.append(key)
        for key in gone:
            entry = store.pop(key)
            self.joins.send_changelog(entry["partition"], key, None, value_serializer="raw")
            if not is_complete(entry):
                self.expired[entry["model"]] += 1
                JOIN_EXPIRED.labels(entry["model"]).inc()
                log.info(
                    "join of %s expired without %s",
                    entry["request_id"],
                    " and ".join(missing_parts(entry)),
                )
        JOIN_PENDING.labels(SERVICE).set(len(store))
        for watch in self.watches.values():
            self._history(watch)
