"""The validator's Kafka side: judge each candidate, write a report, exactly once."""

from __future__ import annotations

import asyncio
import heapq
import logging
from typing import Any

import numpy as np
from aiokafka import ConsumerRecord

from modelstream.contracts.codec import default_codec
from modelstream.contracts.definitions import (
    Definition,
    check_label,
    feature_vector,
    labels_to_targets,
    unseen_by_online_learning,
)
from modelstream.contracts.records import (
    Action,
    Command,
    Label,
    ModelBody,
    NamedTensor,
    Origin,
    Task,
    TrainingExample,
    ValidationReport,
)
from modelstream.errors import ArtifactVerificationError, InvalidEventError
from modelstream.kafka.boundary import (
    AfterCommit,
    Boundary,
    Emit,
    OneRecordTransactions,
    record_failure,
)
from modelstream.kafka.clients import (
    LagReporter,
    OffsetRange,
    make_consumer,
    make_producer,
    partitions_of,
    read_ranges,
)
from modelstream.kafka.control import ControlFollower
from modelstream.kafka.topology import AUDIT, CANDIDATES, DEADLETTER, TRAINING, ensure_fits
from modelstream.kafka.topology import VALIDATIONS as REPORTS
from modelstream.kafka.writers import AuditWriter, DeadLetterWriter
from modelstream.registry.artifact import Verified, decrypt_tensors, verify_candidate
from modelstream.registry.follower import load_production, model_of_key, public_key
from modelstream.registry.keys import maker_keyring
from modelstream.registry.lineage import config_from_record, load_lineage, within_lineage
from modelstream.registry.onnx_model import UnmappableGraphError
from modelstream.registry.scoring import Scorer, scorer_for
from modelstream.registry.tensor_model import TensorScorer
from modelstream.runner import Lifecycle
from modelstream.services.validator.logic import (
    Champion,
    Holdout,
    Verdict,
    View,
    cross_validation_verdict,
    holdout_verdict,
    report,
)
from modelstream.services.validator.settings import ValidatorSettings
from modelstream.telemetry import (
    CROSS_VALIDATION_SECONDS,
    EVENTS_CONSUMED,
    VALIDATION_SECONDS,
    VALIDATIONS,
    VALIDATIONS_REJECTED,
)

log = logging.getLogger("modelstream.validator")


def _readable(rows: list[Any], readers: list[Scorer], which: list[int]) -> list[Any]:
    """The rows every tensor model among ``readers`` can prepare and run (each row tried
    alone only when a batch fails: a hostile row cannot reject a whole hold-out)."""
    good = []
    for row in rows:
        try:
            for i in which:
                reader = readers[i]
                assert isinstance(reader, TensorScorer)
                reader.prepare(row[3][i][2] or [])
            good.append(row)
        except InvalidEventError:
            continue
    for i in which:
        reader = readers[i]
        assert isinstance(reader, TensorScorer)

        def tensors_of(row: Any, i: int = i) -> list[NamedTensor]:
            named: list[NamedTensor] = row[3][i][2] or []
            return named

        good = reader.runnable(good, tensors_of)
    return good


_NO_FEATURES = np.empty(0)  # a tensor model's row of features
Position = tuple[str, int, int]
SERVICE = "validator"


class ValidatorApp(Lifecycle):
    def __init__(self, settings: ValidatorSettings) -> None:
        super().__init__()
        self.settings = settings
        self.codec = default_codec()
        self.definitions: dict[str, Definition] = {}
        self.limits = settings.limits()
        self.public_key = public_key(settings)
        self.keyring = maker_keyring(settings)
        data_key = settings.data_key()
        self.data_key = data_key[0] if data_key else None
        self.group = settings.group(SERVICE)
        self.consumer = make_consumer(
            settings, settings.topic(CANDIDATES), group_id=self.group, max_poll_records=1
        )
        self.lag = LagReporter(SERVICE, self.consumer)
        self.producer = make_producer(settings, transactional_id=settings.transactional_id(SERVICE))
        self.dead = DeadLetterWriter(self.producer, settings.topic(DEADLETTER), SERVICE)
        self.audit = AuditWriter(
            self.producer, settings.topic(AUDIT), SERVICE, settings.output_format.value
        )
        self.control = ControlFollower(settings, self._apply_command, SERVICE)
        self.records = OneRecordTransactions(
            self.producer, self.group, self.dead, Boundary(SERVICE), self._model_label
        )

    def _scorer(self, body: ModelBody) -> Scorer:
        """As the predictor builds it (a text model's default limit included)."""
        return scorer_for(body, max_chars=self.settings.max_string_chars)

    def _apply_command(self, cmd: Command, replay: bool) -> None:
        if cmd["action"] == Action.DEFINE:
            self.definitions[cmd["model"]] = Definition.from_command(cmd)

    async def start(self) -> None:
        await self.own(self.producer)
        await self.own(self.control)
        await self.control.replay()
        await self.own(self.consumer)
        log.info(
            "validator started on %s; candidates must be signed by %s",
            self.settings.bootstrap,
            self.keyring.makers() or "nobody (no makers' keys)",
        )

    async def run(self) -> None:
        while not self.stopping.is_set():
            batch = await self.consumer.getmany(timeout_ms=200)
            await self.lag.report()
            await self.control.poll()
            for records in batch.values():
                for record in records:
                    EVENTS_CONSUMED.labels(SERVICE).inc()
                    await self.records.handle(record, self._validate)

    def _model_label(self, record: ConsumerRecord) -> str:
        name = model_of_key(record.key)
        return name if name in self.definitions else ""

    async def _validate(self, record: ConsumerRecord) -> Emit:
        """Judge one candidate (no side effects); the returned step writes the report."""
        candidate = verify_candidate(
            record.value,
            self.keyring,
            allow_unsigned=self.settings.allow_unsigned,
            codec=self.codec,
        )
        name = candidate.body["name"]
        definition = self.definitions.get(name)
        if definition is None:
            raise InvalidEventError("unknown-model", f"no model named {name!r} is defined")
        if candidate.body["encryption"] is not None:
            raise InvalidEventError(
                "encrypted-candidate", "candidates must not be encrypted; the publisher encrypts"
            )
        model = await asyncio.to_thread(self._scorer, candidate.body)
        with VALIDATION_SECONDS.labels(name).time():
            champion, champion_body = await self._champion(name, model)
            verdict = await self._judge(candidate, model, definition, champion, champion_body)
        champion_version = champion_body["version"] if champion_body else None
        result = report(candidate.body, candidate.record, verdict, champion_version, SERVICE)
        value = self.codec.encode(ValidationReport, result)
        ensure_fits(REPORTS, value)
        event = "validated" if verdict.passed else "rejected"
        audit = self.audit.event(
            name,
            event,
            digest=candidate.digest,
            reason="; ".join(verdict.reasons) or "passed the gate",
            details={
                "method": verdict.method,
                "examples": verdict.examples,
                "champion_version": champion_version,
                "comparison": verdict.comparison,
                **{k: f"{v:.6g}" for k, v in verdict.metrics.items()},
            },
        )

        async def emit() -> AfterCommit:
            await self.producer.send(self.settings.topic(REPORTS), key=name.encode(), value=value)
            await self.audit.send_event(audit)
            return after

        def after() -> None:
            VALIDATIONS.labels(name).inc()
            if not verdict.passed:
                VALIDATIONS_REJECTED.labels(name).inc()
            log.info(
                "%s candidate %s of %s: %s",
                event,
                candidate.digest[:12],
                name,
                "; ".join(verdict.reasons) or verdict.metrics,
            )

        return emit

    async def _champion(
        self, name: str, candidate: Scorer
    ) -> tuple[Champion | None, ModelBody | None]:
        production = await load_production(self.settings, self.public_key)
        current: Verified | None = production.get(name)
        if current is None:
            return None, None
        version = current.body["version"]
        try:
            plain = decrypt_tensors(current.body, self.data_key)
            model = await asyncio.to_thread(self._scorer, plain)
        except (ArtifactVerificationError, UnmappableGraphError) as exc:
            log.warning("champion %s v%d unusable: %s", name, version, exc)
            return None, current.body
        if model.classes != candidate.classes:
            log.warning("champion %s v%d has other classes; no comparison", name, version)
            return None, current.body
        return Champion(model, version, dict(current.body["metrics"])), current.body

    async def _judge(
        self,
        candidate: Verified,
        model: Scorer,
        definition: Definition,
        champion: Champion | None,
        champion_body: ModelBody | None,
    ) -> Verdict:
        body = candidate.body
        if body["lineage"]["origin"] == Origin.BATCH:
            data = await load_lineage(self.settings, body)
            unseen = (
                ~within_lineage(data.positions, champion_body)
                if champion_body is not None
                else None
            )
            if champion is not None and (
                champion.model.categorical or champion.model.feature_names != model.feature_names
            ):
                # the lineage holds the candidate's features only: the champion is compared
                # through the estimate recorded when it was published
                unseen = np.zeros(len(data.y), bool)
            with CROSS_VALIDATION_SECONDS.labels(body["name"]).time():
                return await asyncio.to_thread(
                    cross_validation_verdict,
                    body,
                    data.X,
                    data.y,
                    definition,
                    config_from_record(body["training"]),
                    champion,
                    unseen,
                )
        holdout, positions = await self._holdout(body, model, champion.model if champion else None)
        log.debug("holdout of %s: %d examples", body["name"], len(holdout.y))
        unseen = (
            ~within_lineage(positions, champion_body)
            if champion_body is not None
            else np.ones(len(holdout.y), bool)
        )
        return await asyncio.to_thread(
            holdout_verdict, body, model, holdout, definition, champion, unseen
        )

    async def _holdout(
        self, body: ModelBody, candidate: Scorer, champion: Scorer | None
    ) -> tuple[Holdout, list[tuple[str, int, int]]]:
        """The newest labelled examples of the model on ``training``, read for the candidate
        and, on the same rows, for the champion (whose features may differ)."""
        topic = self.settings.topic(TRAINING)
        async with make_consumer(self.settings, group_id=None) as probe:
            tps = await partitions_of(probe, topic)
            ends = await probe.end_offsets(tps)
            begins = await probe.beginning_offsets(tps)
        ranges = [
            OffsetRange(
                topic,
                tp.partition,
                max(begins[tp], ends[tp] - self.settings.holdout_scan),
                ends[tp],
            )
            for tp in tps
        ]
        rules = Definition(
            name=body["name"],
            task=Task(body["task"]),
            feature_names=tuple(body["feature_names"]),
            classes=tuple(body["classes"]),
        )
        readers = [candidate] if champion is None else [candidate, champion]
        online = body["lineage"]["origin"] == Origin.ONLINE
        Row = tuple[np.ndarray, dict[str, str], list[NamedTensor] | None]
        # the newest holdout_size rows only (a min-heap by time): tensor rows are large
        newest: list[tuple[int, int, int, list[Row], Label, Position]] = []
        async for record in read_ranges(self.settings, ranges):
            try:
                example = self.codec.decode_any(record.value, TrainingExample, self.limits)
                if example["model"] != rules.name:
                    continue
                if online and not unseen_by_online_learning(example["example_id"]):
                    continue  # the monitor's learners learned this row
                categories = example.get("categories") or {}
                views: list[Row] = []
                for scorer in readers:
                    if isinstance(scorer, TensorScorer):
                        views.append((_NO_FEATURES, {}, example.get("tensors") or []))
                        continue
                    missing = [c for c in scorer.categorical if c not in categories]
                    if missing:
                        raise InvalidEventError("missing-features", f"missing {missing[:5]}")
                    views.append(
                        (
                            feature_vector(example["features"], scorer.feature_names),
                            categories,
                            None,
                        )
                    )
                row = (  # (time, partition, offset) order rows and are unique
                    record.timestamp,
                    record.partition,
                    record.offset,
                    views,
                    check_label(example["label"], rules),
                    (record.topic, record.partition, record.offset),
                )
                if len(newest) < self.settings.holdout_size:
                    heapq.heappush(newest, row)
                else:
                    heapq.heappushpop(newest, row)
            except Exception as exc:
                if record_failure(exc) is None:
                    raise
                continue
        kept = sorted(newest, key=lambda r: r[:3])
        tensor_readers = [i for i, r in enumerate(readers) if isinstance(r, TensorScorer)]
        if tensor_readers:  # rows a model cannot read (a corrupt image) judge nothing
            kept = await asyncio.to_thread(_readable, kept, readers, tensor_readers)
        rows = [(r[0], r[3], r[4], r[5]) for r in kept]
        y = (
            np.zeros(len(rows))
            if rules.task == Task.EMBEDDING
            else labels_to_targets([r[2] for r in rows], rules.task, rules.classes)
        )

        def view(i: int, scorer: Scorer) -> View:
            d = len(scorer.feature_names)
            X = np.vstack([r[1][i][0] for r in rows]) if rows else np.empty((0, d))
            tensors = [r[1][i][2] or [] for r in rows] if isinstance(scorer, TensorScorer) else None
            return X, [r[1][i][1] for r in rows], tensors

        data = Holdout(y, view(0, candidate), view(1, champion) if champion is not None else None)
        return data, [r[3] for r in rows]
