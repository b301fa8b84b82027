"""The publisher's Kafka side: sign and version validated models; carry out rollbacks.

It consumes ``validations`` and ``control`` in its consumer group and writes the history
record, the registry record, the audit event and its consumer offsets in one Kafka
transaction, so each passed candidate becomes exactly one version and each rollback
command is carried out exactly once, across crashes. Run a single publisher per registry:
its fixed transactional id fences any older instance.
"""

from __future__ import annotations

import logging

from aiokafka import ConsumerRecord, TopicPartition

from modelstream.contracts.codec import default_codec
from modelstream.contracts.definitions import Definition
from modelstream.contracts.records import Action, Command, ModelArtifact, ValidationReport
from modelstream.errors import (
    ArtifactVerificationError,
    ConfigurationError,
    DecodeError,
    InvalidEventError,
)
from modelstream.kafka.clients import make_consumer, make_producer
from modelstream.kafka.topology import (
    AUDIT,
    CONTROL,
    DEADLETTER,
    MODEL_HISTORY,
    MODELS,
    VALIDATIONS,
)
from modelstream.kafka.writers import AuditWriter, DeadLetterWriter
from modelstream.registry.artifact import key_id, load_private_key, verify_record
from modelstream.registry.follower import latest_versions, load_history, load_production
from modelstream.runner import Lifecycle
from modelstream.services.publisher.logic import history_key, publishable
from modelstream.services.publisher.settings import PublisherSettings
from modelstream.telemetry import (
    DEAD_LETTERS,
    EVENTS_CONSUMED,
    PRODUCTION_VERSION,
    PUBLISHED,
    ROLLBACKS,
    serve_metrics,
)

log = logging.getLogger("modelstream.publisher")
SERVICE = "publisher"


class PublisherApp(Lifecycle):
    def __init__(self, settings: PublisherSettings) -> None:
        super().__init__()
        self.settings = settings
        self.codec = default_codec()
        if settings.private_key_file is None and not settings.allow_unsigned:
            raise ConfigurationError(
                "the publisher needs MODELSTREAM_PRIVATE_KEY_FILE (modelstream keys generate)"
            )
        self.private_key = (
            load_private_key(settings.private_key_file) if settings.private_key_file else None
        )
        self.public_key = self.private_key.public_key() if self.private_key else None
        self.data_key = settings.data_key()
        self.group = settings.group(SERVICE)
        self.validations_topic = settings.topic(VALIDATIONS)
        self.control_topic = settings.topic(CONTROL)
        self.consumer = make_consumer(
            settings, self.validations_topic, self.control_topic, group_id=self.group
        )
        self.producer = make_producer(settings, transactional_id=settings.transactional_id(SERVICE))
        self.dead = DeadLetterWriter(self.producer, settings.topic(DEADLETTER), SERVICE)
        self.audit = AuditWriter(
            self.producer, settings.topic(AUDIT), SERVICE, settings.output_format.value
        )
        self.history: dict[tuple[str, int], ModelArtifact] = {}
        self.latest: dict[str, int] = {}
        self.production: dict[str, int] = {}

    async def start(self) -> None:
        serve_metrics(self.settings.metrics_port, self.settings.metrics_host)
        await self.own(self.producer)  # initializes the transaction: fences older instances
        await self._load_state()
        await self.own(self.consumer)
        log.info(
            "publisher started on %s (key id %s)",
            self.settings.bootstrap,
            key_id(self.public_key) if self.public_key else "unsigned",
        )

    async def _load_state(self) -> None:
        self.history = await load_history(self.settings)
        self.latest = latest_versions(self.history)
        production = await load_production(
            self.settings, self.public_key, allow_unsigned=self.private_key is None
        )
        self.production = {name: v.body["version"] for name, v in production.items()}
        for name, version in self.production.items():
            PRODUCTION_VERSION.labels(SERVICE, name).set(version)

    async def run(self) -> None:
        while not self.stopping.is_set():
            batch = await self.consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                for record in records:
                    EVENTS_CONSUMED.labels(SERVICE).inc()
                    if tp.topic == self.validations_topic:
                        await self._on_validation(tp, record)
                    else:
                        await self._on_command(tp, record)

    async def _commit(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        await self.producer.send_offsets_to_transaction({tp: record.offset + 1}, self.group)

    async def _dead_letter(
        self, tp: TopicPartition, record: ConsumerRecord, model: str, exc: Exception, reason: str
    ) -> None:
        DEAD_LETTERS.labels(SERVICE, model if model in self.latest else "").inc()
        async with self.producer.transaction():
            await self.dead.send(record, reason, str(exc))
            await self._commit(tp, record)

    async def _on_validation(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        try:
            report = self.codec.decode(record.value, ValidationReport)
            candidate = report["artifact"]
            if report["passed"] and candidate is None:
                raise InvalidEventError("invalid-report", "passed report without an artifact")
            if candidate is not None:
                verify_record(candidate, None, allow_unsigned=True)
        except (DecodeError, InvalidEventError, ArtifactVerificationError) as exc:
            model = record.key.decode(errors="replace") if record.key else ""
            await self._dead_letter(tp, record, model, exc, exc.reason)
            return
        if not report["passed"] or candidate is None:
            async with self.producer.transaction():
                await self._commit(tp, record)
            return
        name = candidate["body"]["name"]
        version = self.latest.get(name, 0) + 1
        artifact = publishable(
            candidate["body"],
            version,
            self.production.get(name),
            self.private_key,
            self.data_key,
            report["metrics"],
        )
        value = self.codec.encode(ModelArtifact, artifact)
        audit = self.audit.event(
            name,
            "published",
            version=version,
            digest=artifact["digest"],
            reason=f"passed {report['method']} by {report['validator']}",
            details={
                "candidate_digest": candidate["digest"],
                "parent_version": artifact["body"]["parent_version"],
                "key_id": artifact["key_id"],
                "encrypted": artifact["body"]["encryption"] is not None,
                **{k: f"{v:.6g}" for k, v in report["metrics"].items()},
            },
        )
        async with self.producer.transaction():
            await self.producer.send(
                self.settings.topic(MODEL_HISTORY), key=history_key(name, version), value=value
            )
            await self.producer.send(self.settings.topic(MODELS), key=name.encode(), value=value)
            await self.audit.send_event(audit)
            await self._commit(tp, record)
        self.history[(name, version)] = artifact
        self.latest[name] = version
        self.production[name] = version
        PUBLISHED.labels(name).inc()
        PRODUCTION_VERSION.labels(SERVICE, name).set(version)
        log.info("published %s v%d (%s)", name, version, artifact["digest"][:12])

    async def _on_command(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        try:
            cmd = self.codec.decode_any(record.value, Command)
            if cmd["action"] == Action.DEFINE:
                Definition.from_command(cmd)  # the same check every other reader applies
        except (DecodeError, InvalidEventError) as exc:
            # Every service skips a bad command; the publisher, the one reader of `control`
            # in a consumer group, dead-letters it exactly once.
            model = record.key.decode(errors="replace") if record.key else ""
            await self._dead_letter(tp, record, model, exc, exc.reason)
            return
        if cmd["action"] != Action.ROLLBACK:
            async with self.producer.transaction():
                await self._commit(tp, record)
            return
        name, version = cmd["model"], cmd["version"]
        artifact = self.history.get((name, version)) if version is not None else None
        if artifact is None and version is not None:
            self.history = await load_history(self.settings)  # another publisher's writes
            artifact = self.history.get((name, version))
        refusal = None
        if artifact is None:
            refusal = f"version {version} of {name!r} is not in the history"
        else:
            try:
                verify_record(artifact, self.public_key, allow_unsigned=self.private_key is None)
            except ArtifactVerificationError as exc:
                refusal = f"history record of v{version} does not verify: {exc}"
        async with self.producer.transaction():
            if refusal is not None or artifact is None:
                await self.audit.send(
                    name,
                    "rollback_refused",
                    actor=cmd["actor"] or None,
                    version=version,
                    reason=refusal or "",
                    details={"requested": cmd["reason"]},
                )
            else:
                await self.producer.send(
                    self.settings.topic(MODELS),
                    key=name.encode(),
                    value=self.codec.encode(ModelArtifact, artifact),
                )
                await self.audit.send(
                    name,
                    "rolled_back",
                    actor=cmd["actor"] or None,
                    version=version,
                    digest=artifact["digest"],
                    reason=cmd["reason"] or "rollback command",
                    details={"from_version": self.production.get(name)},
                )
            await self._commit(tp, record)
        if refusal is None and artifact is not None:
            restored = artifact["body"]["version"]
            self.production[name] = restored
            ROLLBACKS.labels(name).inc()
            PRODUCTION_VERSION.labels(SERVICE, name).set(restored)
            log.info("rolled %s back to v%d", name, restored)
        else:
            log.warning("rollback refused: %s", refusal)
