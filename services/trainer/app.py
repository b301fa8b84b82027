"""The trainer's Kafka side: consume ``training`` and ``control``, emit ``candidates``."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import ConsumerRebalanceListener, ConsumerRecord, TopicPartition

from modelstream.contracts.builders import command
from modelstream.contracts.codec import default_codec
from modelstream.contracts.definitions import Definition
from modelstream.contracts.records import Action, Command, ModelArtifact, Origin, TrainingExample
from modelstream.errors import DecodeError, InvalidEventError
from modelstream.kafka.clients import (
    OffsetRange,
    make_consumer,
    make_producer,
    read_ranges,
    read_to_end,
)
from modelstream.kafka.control import ControlFollower
from modelstream.kafka.topology import AUDIT, CANDIDATES, CONTROL, DEADLETTER, TRAINING
from modelstream.kafka.writers import AuditWriter, DeadLetterWriter
from modelstream.learn.sgd import GDConfig
from modelstream.registry.follower import load_history, load_production
from modelstream.runner import Lifecycle
from modelstream.services.trainer.logic import TrainerLogic, TrainingError, sealed_candidate
from modelstream.services.trainer.settings import TrainerSettings
from modelstream.telemetry import (
    DEAD_LETTERS,
    EVENTS_CONSUMED,
    TRAINING_EXAMPLES,
    TRAINING_SECONDS,
    TRAININGS,
    WINDOW_EXAMPLES,
    serve_metrics,
)

log = logging.getLogger("modelstream.trainer")
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
        self.logic = TrainerLogic(
            GDConfig(
                learning_rate=settings.learning_rate,
                lr_decay=settings.lr_decay,
                batch_size=settings.batch_size,
                max_epochs=settings.max_epochs,
                patience=settings.patience,
                validation_fraction=settings.validation_fraction,
            )
        )
        self.training_topic = settings.topic(TRAINING)
        self.group = settings.group(SERVICE)
        self.producer = make_producer(settings, transactional_id=settings.transactional_id(SERVICE))
        self.consumer = make_consumer(
            settings, group_id=self.group, max_poll_records=settings.poll_max_records
        )
        self.control = ControlFollower(settings, self._apply_command)
        self.dead = DeadLetterWriter(self.producer, settings.topic(DEADLETTER), SERVICE)
        self.audit = AuditWriter(
            self.producer, settings.topic(AUDIT), SERVICE, settings.output_format.value
        )
        # Where each model's last candidate came from: {model: {partition: (start, end)}}
        self.lineage: dict[str, dict[int, tuple[int, int]]] = {}
        self.last_trained_ms: dict[str, int] = {}

    async def start(self) -> None:
        serve_metrics(self.settings.metrics_port, self.settings.metrics_host)
        await self.own(self.producer)
        await self._load_lineage()
        await self.own(self.control)
        await self._replay_control()
        self.consumer.subscribe([self.training_topic], listener=_Rebuild(self))
        await self.own(self.consumer)
        log.info("trainer started on %s", self.settings.bootstrap)

    # -- start-up state ------------------------------------------------------------------
    async def _load_lineage(self) -> None:
        """Newest batch lineage per model, from candidates and the published history."""
        artifacts: list[ModelArtifact] = list((await load_history(self.settings)).values())
        async for record in read_to_end(self.settings, self.settings.topic(CANDIDATES)):
            try:
                artifacts.append(self.codec.decode(record.value, ModelArtifact))
            except DecodeError:
                continue
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
                self.logic.request_training(model)

    def _apply_command(self, cmd: Command, replay: bool) -> None:
        if cmd["action"] == Action.DEFINE:
            self.logic.define(Definition.from_command(cmd))
        elif cmd["action"] == Action.TRAIN and not replay:
            self.logic.request_training(cmd["model"])

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
                    example = self.codec.decode_any(record.value, TrainingExample)
                    trained_until = self.lineage.get(example["model"], {}).get(tp.partition)
                    is_new = trained_until is None or record.offset >= trained_until[1]
                    self.logic.accept(example, tp.partition, record.offset, count_as_new=is_new)
                    replayed += 1
                except (DecodeError, InvalidEventError):
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
            await self.control.poll()
            if not batch and not self.logic.due_models():
                continue
            # Dead letters, candidates, definition updates, audit events and the consumed
            # offsets commit together: after a crash either all of a batch's effects are
            # visible or none are, and the rebuild retrains the same candidate exactly once.
            async with self.producer.transaction():
                for records in batch.values():
                    for record in records:
                        EVENTS_CONSUMED.labels(SERVICE).inc()
                        await self._handle_example(record)
                for name in self.logic.due_models():
                    await self._train(name)
                if batch:
                    await self.producer.send_offsets_to_transaction(
                        {tp: records[-1].offset + 1 for tp, records in batch.items()}, self.group
                    )

    async def _handle_example(self, record: ConsumerRecord) -> None:
        model = record.key.decode(errors="replace") if record.key else ""
        try:
            example = self.codec.decode_any(record.value, TrainingExample)
            model = example["model"]
            self.logic.accept(example, record.partition, record.offset)
        except (DecodeError, InvalidEventError) as exc:
            DEAD_LETTERS.labels(SERVICE, model if model in self.logic.windows else "").inc()
            await self.dead.send(record, exc.reason, str(exc))
            return
        TRAINING_EXAMPLES.labels(model).inc()

    async def _train(self, name: str) -> None:
        production = await load_production(self.settings, allow_unsigned=True)
        parent = production[name].body["version"] if name in production else None
        try:
            with TRAINING_SECONDS.labels(name).time():
                candidate = await asyncio.to_thread(
                    self.logic.build_candidate, name, self.training_topic, parent
                )
        except TrainingError as exc:
            log.warning("not training %s: %s", name, exc)
            self.logic.trained(name)
            await self.audit.send(name, "training_skipped", reason=str(exc))
            return
        if candidate.inferred is not None:
            self.logic.define(candidate.inferred)
            await self.producer.send(
                self.settings.topic(CONTROL),
                key=name.encode(),
                value=self.codec.encode(
                    Command,
                    command(
                        name,
                        Action.DEFINE,
                        definition=candidate.inferred,
                        actor=SERVICE,
                        reason="feature names and classes fixed at first training",
                    ),
                ),
            )
        artifact = sealed_candidate(candidate)
        await self.producer.send(
            self.settings.topic(CANDIDATES),
            key=name.encode(),
            value=self.codec.encode(ModelArtifact, artifact),
        )
        body = candidate.body
        self.lineage[name] = {
            r["partition"]: (r["start"], r["end"]) for r in body["lineage"]["ranges"]
        }
        self.logic.trained(name)
        TRAININGS.labels(SERVICE, name).inc()
        WINDOW_EXAMPLES.labels(name).set(body["lineage"]["example_count"])
        ranges = ",".join(
            f"{r['partition']}:{r['start']}-{r['end']}" for r in body["lineage"]["ranges"]
        )
        await self.audit.send(
            name,
            "trained",
            digest=artifact["digest"],
            details={
                "ranges": ranges,
                "examples": body["lineage"]["example_count"],
                "l2": body["training"]["l2"],
                "parent_version": parent,
                "cv_primary": body["metrics"].get("cv_primary"),
            },
        )
        log.info(
            "trained %s on %d examples (l2=%g): candidate %s",
            name,
            body["lineage"]["example_count"],
            body["training"]["l2"],
            artifact["digest"][:12],
        )
