"""The trainer's Kafka side: consume ``training`` and ``control``, emit ``candidates``."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka import ConsumerRebalanceListener, ConsumerRecord, TopicPartition

from modelstream.contracts.builders import command
from modelstream.contracts.codec import default_codec
from modelstream.contracts.definitions import Definition
from modelstream.contracts.records import Action, Command, ModelArtifact, Origin, TrainingExample
from modelstream.errors import ArtifactVerificationError, DecodeError, InvalidEventError
from modelstream.kafka.boundary import Boundary, Failure, record_failure
from modelstream.kafka.clients import (
    LagReporter,
    OffsetRange,
    make_consumer,
    make_producer,
    read_ranges,
    read_to_end,
)
from modelstream.kafka.control import ControlFollower
from modelstream.kafka.quiet import quiet_log
from modelstream.kafka.topology import (
    AUDIT,
    CANDIDATES,
    CONTROL,
    DEADLETTER,
    TRAINING,
    ensure_fits,
)
from modelstream.kafka.writers import AuditWriter, DeadLetterWriter
from modelstream.registry.artifact import (
    MAKER_OF_ORIGIN,
    decode_artifact,
    verify_candidate_record,
)
from modelstream.registry.follower import (
    load_production,
    load_verified_history,
    model_of_key,
    public_key,
)
from modelstream.registry.keys import maker_key, maker_keyring
from modelstream.runner import Lifecycle
from modelstream.services.trainer.logic import Candidate, TrainerLogic, sealed_candidate
from modelstream.services.trainer.settings import TrainerSettings
from modelstream.telemetry import (
    DEAD_LETTERS,
    EVENTS_CONSUMED,
    TRAINING_EXAMPLES,
    TRAINING_SECONDS,
    TRAININGS,
    WINDOW_EXAMPLES,
)

log = logging.getLogger("modelstream.trainer")
_skipped = quiet_log(log, "trainer skipped", "trainings")  # by model and reason
SERVICE = "trainer"


class _Rebuild(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, app: TrainerApp) -> None:
        self.app = app

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.app.logic.forget_partitions(tp.partition for tp in revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.app.rebuild(assigned)


class TrainerApp(Lifecycle):
    """Keeps per-model windows of the ``training`` log and trains when a policy fires."""

    def __init__(self, settings: TrainerSettings) -> None:
        super().__init__()
        self.settings = settings
        self.codec = default_codec()
        self.logic = TrainerLogic(settings.descent())
        self.training_topic = settings.topic(TRAINING)
        self.group = settings.group(SERVICE)
        self.producer = make_producer(settings, transactional_id=settings.transactional_id(SERVICE))
        self.consumer = make_consumer(
            settings, group_id=self.group, max_poll_records=settings.poll_max_records
        )
        self.lag = LagReporter(SERVICE, self.consumer)
        self.control = ControlFollower(settings, self._apply_command, SERVICE)
        self.dead = DeadLetterWriter(self.producer, settings.topic(DEADLETTER), SERVICE)
        self.boundary = Boundary(SERVICE)
        self.limits = settings.limits()
        self.audit = AuditWriter(
            self.producer, settings.topic(AUDIT), SERVICE, settings.output_format.value
        )
        # Where each model's last candidate came from: {model: {partition: (start, end)}}
        self.lineage: dict[str, dict[int, tuple[int, int]]] = {}
        self.signing_key = maker_key(settings, MAKER_OF_ORIGIN[Origin.BATCH])
        self.keyring = maker_keyring(settings)
        self.registry_key = public_key(settings)
        self.last_trained_ms: dict[str, int] = {}
        # TRAIN commands waiting for this trainer to read its partitions of `training` up to
        # where they ended when the command came (None: those ends not asked for yet)
        self.train_after: dict[str, dict[TopicPartition, int] | None] = {}

    async def start(self) -> None:
        await self.own(self.producer)
        await self._load_lineage()
        await self.own(self.control)
        await self._replay_control()
        self.consumer.subscribe([self.training_topic], listener=_Rebuild(self))
        await self.own(self.consumer)
        log.info("trainer started on %s", self.settings.bootstrap)

    # -- start-up state ------------------------------------------------------------------
    async def _load_lineage(self) -> None:
        """Newest batch lineage per model, from verified records only: candidates a trainer
        signed, and versions the publisher signed. A forged record (which could claim that
        examples were trained on, so that they count as old) teaches nothing."""
        artifacts = await load_verified_history(
            self.settings, self.registry_key, allow_unsigned=self.settings.allow_unsigned
        )
        async for record in read_to_end(self.settings, self.settings.topic(CANDIDATES)):
            try:
                candidate, body_schema = decode_artifact(record.value, self.codec)
                if candidate["body"]["lineage"]["origin"] != Origin.BATCH:
                    continue  # no lineage to resume from
                verify_candidate_record(
                    candidate,
                    self.keyring,
                    allow_unsigned=self.settings.allow_unsigned,
                    body_schema=body_schema,
                )
            except (DecodeError, InvalidEventError, ArtifactVerificationError) as exc:
                # Not a candidate a trainer vouches for (the validator dead-letters it).
                self.boundary.reject(
                    record.topic, record.partition, record.offset, Failure(exc.reason, str(exc))
                )
                continue
            artifacts.append(candidate)
        for artifact in sorted(artifacts, key=lambda a: a["body"]["created_at_ms"]):
            body = artifact["body"]
            if body["lineage"]["origin"] != Origin.BATCH:
                continue
            self.lineage[body["name"]] = {
                r["partition"]: (r["start"], r["end"]) for r in body["lineage"]["ranges"]
            }
            self.last_trained_ms[body["name"]] = body["created_at_ms"]

    async def _replay_control(self) -> None:
        replayed = await self.control.replay()
        # A train command issued while no trainer ran is still owed.
        for cmd in replayed:
            model = cmd["model"]
            if (
                cmd["action"] == Action.TRAIN
                and model in self.logic.windows
                and cmd["issued_at_ms"] > self.last_trained_ms.get(model, 0)
            ):
                self.train_after[model] = None

    def _apply_command(self, cmd: Command, replay: bool) -> None:
        if cmd["action"] == Action.DEFINE:
            self.logic.define(Definition.from_command(cmd))
        elif cmd["action"] == Action.TRAIN and not replay:
            self.logic.require_model(cmd["model"])
            self.train_after[cmd["model"]] = None

    async def rebuild(self, assigned: list[TopicPartition]) -> None:
        """Refill the windows of newly assigned partitions from the log: from the oldest
        start of a known lineage (or the beginning) up to the committed offset."""
        for tp in assigned:
            committed = await self.consumer.committed(tp)
            if not committed:
                continue
            starts = [
                ranges[tp.partition][0]
                for ranges in self.lineage.values()
                if tp.partition in ranges
            ]
            no_lineage = any(m not in self.lineage for m in self.logic.windows)
            start = 0 if (no_lineage or not starts) else min(starts)
            replayed = 0
            async for record in read_ranges(
                self.settings, [OffsetRange(tp.topic, tp.partition, start, committed)]
            ):
                try:
                    example = self.codec.decode_any(record.value, TrainingExample, self.limits)
                    trained_until = self.lineage.get(example["model"], {}).get(tp.partition)
                    is_new = trained_until is None or record.offset >= trained_until[1]
                    self.logic.accept(example, tp.partition, record.offset, count_as_new=is_new)
                    replayed += 1
                except Exception as exc:
                    if record_failure(exc) is None:
                        raise
                    continue  # dead-lettered when it was first consumed
            log.info(
                "rebuilt %d examples of partition %d from offsets [%d, %d)",
                replayed,
                tp.partition,
                start,
                committed,
            )

    # -- main loop -----------------------------------------------------------------------
    async def run(self) -> None:
        while not self.stopping.is_set():
            batch = await self.consumer.getmany(timeout_ms=200)
            await self.lag.report()
            await self.control.poll()
            await self._release_train_requests()
            if not batch and not self.logic.due_models():
                continue
            # Everything is decided before the transaction opens (training may take long);
            # then dead letters, definition updates, candidates, audit events and the
            # consumed offsets commit together: after a crash either all of a batch's effects
            # are visible or none are, and the rebuild retrains the same candidate once.
            rejected: list[tuple[ConsumerRecord, Failure]] = []
            for records in batch.values():
                for record in records:
                    EVENTS_CONSUMED.labels(SERVICE).inc()
                    failure = self._accept(record)
                    if failure is not None:
                        rejected.append((record, failure))
            outcomes = [await self._train(name) for name in self.logic.due_models()]
            async with self.producer.transaction():
                for record, failure in rejected:
                    await self.dead.send(record, failure.reason, failure.error)
                for outcome in outcomes:
                    await outcome.emit()
                if batch:
                    await self.producer.send_offsets_to_transaction(
                        {tp: records[-1].offset + 1 for tp, records in batch.items()}, self.group
                    )
            for outcome in outcomes:
                outcome.committed()

    async def _release_train_requests(self) -> None:
        """A TRAIN command trains on every example written before it, not on the part this
        trainer happens to have read (on 2,100 wide rows, a command that came at start-up
        trained on the first fetch): a request waits until this trainer's position in each
        of its partitions reaches the end that partition had when the command was seen."""
        assigned = self.consumer.assignment()
        if not self.train_after or not assigned:
            return
        for model, ends in list(self.train_after.items()):
            if ends is None:
                ends = self.train_after[model] = await self.consumer.end_offsets(list(assigned))
            for tp, end in ends.items():
                if tp in assigned and await self.consumer.position(tp) < end:
                    break
            else:
                del self.train_after[model]
                self.logic.request_training(model)

    def _accept(self, record: ConsumerRecord) -> Failure | None:
        """Take one example into its model's window, or say why it cannot be."""
        self.boundary.read(record.topic)
        try:
            example = self.codec.decode_any(record.value, TrainingExample, self.limits)
            if not self.logic.accept(example, record.partition, record.offset):
                return None  # a tensor model's example: the validator's, not ours
        except Exception as exc:
            failure = self.boundary.failure(exc)  # infrastructure errors propagate
            self.boundary.reject(record.topic, record.partition, record.offset, failure)
            name = model_of_key(record.key)
            DEAD_LETTERS.labels(SERVICE, name if name in self.logic.windows else "").inc()
            return failure
        TRAINING_EXAMPLES.labels(example["model"]).inc()
        return None

    async def _train(self, name: str) -> Training:
        """Train ``name`` on its window and prepare what to send; a model that cannot be
        trained (too few classes, a candidate the topic would not take, a failure of the
        learner) is audited as such and waits for its next trigger."""
        production = await load_production(self.settings, self.registry_key)
        parent = production[name].body["version"] if name in production else None
        try:
            with TRAINING_SECONDS.labels(name).time():
                candidate = await asyncio.to_thread(
                    self.logic.build_candidate, name, self.training_topic, parent
                )
            artifact = sealed_candidate(candidate, self.signing_key)
            value = self.codec.encode(ModelArtifact, artifact)
            ensure_fits(CANDIDATES, value, name.encode())
            definition = None
            if candidate.inferred is not None:
                definition = self.codec.encode(
                    Command,
                    command(
                        name,
                        Action.DEFINE,
                        definition=candidate.inferred,
                        actor=SERVICE,
                        reason="feature names and classes fixed at first training",
                    ),
                )
                ensure_fits(CONTROL, definition, name.encode())
        except Exception as exc:
            failure = self.boundary.failure(exc)
            _skipped.warn(
                name, failure.reason, "not training %s: %s: %s", name, failure.reason, failure.error
            )
            self.logic.trained(name)
            return Training(self, name, skipped=failure)
        return Training(
            self,
            name,
            candidate=candidate,
            artifact=artifact,
            value=value,
            definition=definition,
            parent=parent,
        )


@dataclass
class Training:
    """One model's training in a batch: what to send in the batch's transaction, and what to
    remember once it has committed."""

    app: TrainerApp
    name: str
    skipped: Failure | None = None
    candidate: Candidate | None = None
    artifact: ModelArtifact | None = None
    value: bytes = b""
    definition: bytes | None = None
    parent: int | None = None

    async def emit(self) -> None:
        app, name = self.app, self.name
        if self.skipped is not None:
            await app.audit.send(
                name, "training_skipped", reason=f"{self.skipped.reason}: {self.skipped.error}"
            )
            return
        assert self.candidate is not None and self.artifact is not None
        if self.definition is not None:
            await app.producer.send(
                app.settings.topic(CONTROL), key=name.encode(), value=self.definition
            )
        await app.producer.send(app.settings.topic(CANDIDATES), key=name.encode(), value=self.value)
        body = self.candidate.body
        ranges = ",".join(
            f"{r['partition']}:{r['start']}-{r['end']}" for r in body["lineage"]["ranges"]
        )
        await app.audit.send(
            name,
            "trained",
            digest=self.artifact["digest"],
            details={
                "ranges": ranges,
                "examples": body["lineage"]["example_count"],
                "l2": body["training"]["l2"],
                "parent_version": self.parent,
                "cv_primary": body["metrics"].get("cv_primary"),
            },
        )

    def committed(self) -> None:
        if self.candidate is None or self.artifact is None:
            return
        app, name, body = self.app, self.name, self.candidate.body
        if self.candidate.inferred is not None:
            app.logic.define(self.candidate.inferred)
        app.lineage[name] = {
            r["partition"]: (r["start"], r["end"]) for r in body["lineage"]["ranges"]
        }
        app.logic.trained(name)
        TRAININGS.labels(SERVICE, name).inc()
        WINDOW_EXAMPLES.labels(name).set(body["lineage"]["example_count"])
        log.info(
            "trained %s on %d examples (l2=%g): candidate %s",
            name,
            body["lineage"]["example_count"],
            body["training"]["l2"],
            self.artifact["digest"][:12],
        )
