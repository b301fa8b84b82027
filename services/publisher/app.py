"""The publisher's Kafka side: sign and version validated models; carry out rollbacks; keep
``control`` and ``models`` honest.

It consumes ``validations``, ``control`` and ``models`` in its consumer group, one record
per Kafka transaction (history record, registry record, audit event and the consumer
offset commit together), so each passed candidate becomes exactly one version and each
rollback command is carried out exactly once, across crashes. Run a single publisher per
registry: its fixed transactional id fences any older instance.

As the one reader of ``control`` and ``models`` in a consumer group, it is also the one that
dead-letters, exactly once, every command that is not applied (undecodable, invalid, for a
model never defined, for a version not in the history, a rollback whose history record does
not verify) and every record on ``models`` that does not verify: the other services skip
those and count them.
"""

from __future__ import annotations

import logging

from aiokafka import ConsumerRecord

from modelstream.contracts.codec import default_codec
from modelstream.contracts.definitions import check_command, check_model_name
from modelstream.contracts.limits import INTERNAL
from modelstream.contracts.records import (
    Action,
    Command,
    ModelArtifact,
    ValidationReport,
)
from modelstream.errors import ConfigurationError, InvalidEventError
from modelstream.kafka.boundary import (
    AfterCommit,
    Boundary,
    Emit,
    Failure,
    OneRecordTransactions,
    record_failure,
)
from modelstream.kafka.clients import LagReporter, make_consumer, make_producer, read_to_end
from modelstream.kafka.topology import (
    AUDIT,
    CONTROL,
    DEADLETTER,
    MODEL_HISTORY,
    MODELS,
    VALIDATIONS,
    ensure_fits,
)
from modelstream.kafka.writers import AuditWriter, DeadLetterWriter
from modelstream.registry.artifact import (
    key_id,
    load_private_key,
    verify_bytes,
    verify_candidate_record,
    verify_record,
)
from modelstream.registry.follower import (
    latest_versions,
    load_history,
    load_production,
    model_of_key,
)
from modelstream.registry.keys import maker_keyring
from modelstream.runner import Lifecycle
from modelstream.services.publisher.logic import history_key, publishable
from modelstream.services.publisher.settings import PublisherSettings
from modelstream.telemetry import EVENTS_CONSUMED, PRODUCTION_VERSION, PUBLISHED, ROLLBACKS

log = logging.getLogger("modelstream.publisher")
SERVICE = "publisher"


class PublisherApp(Lifecycle):
    def __init__(self, settings: PublisherSettings) -> None:
        super().__init__()
        self.settings = settings
        self.codec = default_codec()
        self.limits = settings.limits()
        if settings.private_key_file is None and not settings.allow_unsigned:
            raise ConfigurationError(
                "the publisher needs MODELSTREAM_PRIVATE_KEY_FILE (modelstream keys generate)"
            )
        self.private_key = (
            load_private_key(settings.private_key_file) if settings.private_key_file else None
        )
        self.public_key = self.private_key.public_key() if self.private_key else None
        self.keyring = maker_keyring(settings)
        self.data_key = settings.data_key()
        self.group = settings.group(SERVICE)
        self.topics = {
            settings.topic(VALIDATIONS): self._prepare_publication,
            settings.topic(CONTROL): self._prepare_command,
            settings.topic(MODELS): self._prepare_registry_check,
        }
        self.consumer = make_consumer(settings, *self.topics, group_id=self.group)
        self.lag = LagReporter(SERVICE, self.consumer)
        self.producer = make_producer(settings, transactional_id=settings.transactional_id(SERVICE))
        self.dead = DeadLetterWriter(self.producer, settings.topic(DEADLETTER), SERVICE)
        self.audit = AuditWriter(
            self.producer, settings.topic(AUDIT), SERVICE, settings.output_format.value
        )
        self.records = OneRecordTransactions(
            self.producer,
            self.group,
            self.dead,
            Boundary(SERVICE),
            self._model_label,
            on_reject=self._audit_refusal,
        )
        self.history: dict[tuple[str, int], ModelArtifact] = {}
        self.latest: dict[str, int] = {}
        self.production: dict[str, int] = {}
        self.defined: set[str] = set()

    async def start(self) -> None:
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
        # Which models are defined, to judge commands about them; bad records were
        # dead-lettered when they were first consumed.
        async for record in read_to_end(self.settings, self.settings.topic(CONTROL)):
            try:
                cmd = self.codec.decode_any(record.value, Command, self.limits)
                check_command(cmd)
            except Exception as exc:
                if record_failure(exc) is None:
                    raise
                continue
            if cmd["action"] == Action.DEFINE:
                self.defined.add(cmd["model"])

    async def run(self) -> None:
        while not self.stopping.is_set():
            batch = await self.consumer.getmany(timeout_ms=200)
            await self.lag.report()
            for tp, records in batch.items():
                prepare = self.topics[tp.topic]
                for record in records:
                    EVENTS_CONSUMED.labels(SERVICE).inc()
                    await self.records.handle(record, prepare)

    def _model_label(self, record: ConsumerRecord) -> str:
        name = model_of_key(record.key)
        return name if name in self.defined or name in self.latest else ""

    def _known(self, name: str) -> bool:
        return name in self.defined or name in self.latest

    # -- validations --------------------------------------------------------------------
    async def _prepare_publication(self, record: ConsumerRecord) -> Emit:
        report = self.codec.decode(record.value, ValidationReport, INTERNAL)
        candidate = report["artifact"]
        if report["passed"] and candidate is None:
            raise InvalidEventError("invalid-report", "passed report without an artifact")
        if not report["passed"] or candidate is None:
            return _nothing
        # The validator checked who made it; checked again here, since a report is only as
        # trustworthy as whoever may write `validations`.
        verify_candidate_record(
            candidate, self.keyring, allow_unsigned=self.settings.allow_unsigned
        )
        name = candidate["body"]["name"]
        check_model_name(name)
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
        ensure_fits(MODELS, value, name.encode())
        ensure_fits(MODEL_HISTORY, value, history_key(name, version))
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

        async def emit() -> AfterCommit:
            await self.producer.send(
                self.settings.topic(MODEL_HISTORY), key=history_key(name, version), value=value
            )
            await self.producer.send(self.settings.topic(MODELS), key=name.encode(), value=value)
            await self.audit.send_event(audit)
            return published

        def published() -> None:
            self.history[(name, version)] = artifact
            self.latest[name] = version
            self.production[name] = version
            PUBLISHED.labels(name).inc()
            PRODUCTION_VERSION.labels(SERVICE, name).set(version)
            log.info("published %s v%d (%s)", name, version, artifact["digest"][:12])

        return emit

    # -- control --------------------------------------------------------------------------
    async def _prepare_command(self, record: ConsumerRecord) -> Emit:
        cmd = self.codec.decode_any(record.value, Command, self.limits)
        check_command(cmd)
        name, action = cmd["model"], cmd["action"]
        if action == Action.DEFINE:

            async def define() -> AfterCommit:
                return lambda: self.defined.add(name)

            return define
        if not self._known(name):
            raise InvalidEventError("unknown-model", f"no model named {name!r} is defined")
        if action == Action.SET_TRAFFIC and cmd["traffic"] is not None:
            challenger = cmd["traffic"]["challenger_version"]
            if challenger is not None and not await self._in_history(name, challenger):
                raise InvalidEventError(
                    "unknown-version", f"{name!r} has no version {challenger} to route to"
                )
        if action != Action.ROLLBACK:
            return _nothing
        return await self._prepare_rollback(cmd)

    async def _in_history(self, name: str, version: int) -> bool:
        if (name, version) not in self.history:
            self.history = await load_history(self.settings)  # another publisher's writes
        return (name, version) in self.history

    async def _prepare_rollback(self, cmd: Command) -> Emit:
        name, version = cmd["model"], cmd["version"]
        assert version is not None  # check_command
        if not await self._in_history(name, version):
            raise InvalidEventError(
                "unknown-version", f"version {version} of {name!r} is not in the history"
            )
        artifact = self.history[(name, version)]
        try:
            verify_record(artifact, self.public_key, allow_unsigned=self.private_key is None)
        except Exception as exc:
            failure = record_failure(exc)
            if failure is None:
                raise
            raise InvalidEventError(
                "rollback-refused", f"history record of v{version} does not verify: {failure.error}"
            ) from None
        value = self.codec.encode(ModelArtifact, artifact)

        async def emit() -> AfterCommit:
            await self.producer.send(self.settings.topic(MODELS), key=name.encode(), value=value)
            await self.audit.send(
                name,
                "rolled_back",
                actor=cmd["actor"] or None,
                version=version,
                digest=artifact["digest"],
                reason=cmd["reason"] or "rollback command",
                details={"from_version": self.production.get(name)},
            )
            return rolled_back

        def rolled_back() -> None:
            self.production[name] = version
            ROLLBACKS.labels(name).inc()
            PRODUCTION_VERSION.labels(SERVICE, name).set(version)
            log.info("rolled %s back to v%d", name, version)

        return emit

    async def _audit_refusal(self, record: ConsumerRecord, failure: Failure) -> None:
        """A well-formed command about a known model that is not carried out is on the
        model's audit trail too (the dead letter says why)."""
        if record.topic != self.settings.topic(CONTROL):
            return
        try:
            cmd = self.codec.decode_any(record.value, Command, self.limits)
            check_model_name(cmd["model"])
        except Exception as exc:
            if record_failure(exc) is None:
                raise
            return
        if self._known(cmd["model"]):
            await self.audit.send(
                cmd["model"],
                f"{cmd['action'].lower()}_refused",
                actor=cmd["actor"] or None,
                version=cmd["version"],
                reason=f"{failure.reason}: {failure.error}",
                details={"requested": cmd["reason"]},
            )

    # -- models ----------------------------------------------------------------------------
    async def _prepare_registry_check(self, record: ConsumerRecord) -> Emit:
        """Every record on ``models`` must be a verified artifact of the model it is keyed
        by; the publisher's own writes are, anything else is dead-lettered."""
        verified = verify_bytes(
            record.value, self.public_key, allow_unsigned=self.private_key is None
        )
        if record.key != verified.body["name"].encode():
            raise InvalidEventError(
                "wrong-key", "a registry record must be keyed by its model's name"
            )
        return _nothing


async def _nothing() -> AfterCommit:
    """Nothing to send: the record's offset alone commits."""
    return None
