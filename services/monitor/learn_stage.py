"""The monitor's learner on the streaming core: each complete label is learned exactly once.

One task per partition of ``monitor-labelled`` (keyed by model, so each model belongs to one
task). A batch of labels goes through the model's :class:`~.logic.ModelWatch` (live metrics,
drift, online learning, rollback rule), and everything that batch leads to - training rows,
commands, audit events, an online candidate, quality sums for the windows, dead letters of
unusable labels - commits in one transaction with the model's new state (the compacted
``monitor-model-state`` changelog, partition = task) and the input offsets. A transaction that
does not commit leaves the watch as the changelog has it: it is rebuilt from the last
committed state, and the batch is learned again.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from aiokafka import ConsumerRecord

from modelstream.contracts.builders import audit_event, command, now_ms
from modelstream.contracts.codec import AvroCodec
from modelstream.contracts.definitions import FEEDBACK_EXAMPLE_PREFIX, Definition, check_label
from modelstream.contracts.records import (
    Action,
    AuditEvent,
    Command,
    ModelArtifact,
    ModelBody,
    MonitorLabelledBatch,
    MonitorModelState,
    MonitorOutcomes,
    Origin,
    Task,
)
from modelstream.errors import ArtifactVerificationError, DecodeError, InvalidEventError
from modelstream.kafka.boundary import Boundary, Failure
from modelstream.kafka.changelog import Changelog, Restored
from modelstream.kafka.pipeline import Outgoing, Written, dead_letter
from modelstream.kafka.topology import (
    AUDIT,
    CANDIDATES,
    CONTROL,
    DEADLETTER,
    FEEDBACK,
    INTERNAL_MAX_BYTES,
    MONITOR_MODEL_STATE,
    MONITOR_OUTCOMES,
    TRAINING,
)
from modelstream.kafka.writers import SourcePosition
from modelstream.learn.linear import LinearModel
from modelstream.learn.mlp import MLPModel
from modelstream.ops.influx import InfluxWriter
from modelstream.registry.artifact import MAKER_OF_ORIGIN, decrypt_tensors, seal_candidate
from modelstream.registry.follower import ProductionFollower
from modelstream.registry.keys import maker_key
from modelstream.services.monitor.join_stage import learn_partition
from modelstream.services.monitor.logic import Decisions, Labelled, ModelWatch
from modelstream.services.monitor.logic.quality import summarize
from modelstream.services.monitor.records import TrainingWriter
from modelstream.services.monitor.settings import MonitorSettings
from modelstream.telemetry import (
    ARTIFACTS_REFUSED,
    DEAD_LETTERS,
    DRIFT_EVENTS,
    JOIN_MATCH_RATIO,
    LABELS_JOINED,
    LEARNER_LAG,
    MONITOR_RESTORE_SECONDS,
    ONLINE_CANDIDATES,
    ONLINE_GAIN,
    ONLINE_LEARNED,
    ONLINE_LEARNER_LABELS,
    PRODUCTION_VERSION,
    ROLLBACKS_REQUESTED,
)

log = logging.getLogger("modelstream.monitor.learn")
SERVICE = "monitor"


@dataclass
class _Observed:
    """One model's batch, until its transaction commits or aborts."""

    watch: ModelWatch
    decisions: Decisions
    state: MonitorModelState
    labels: int
    dead_letters: int
    written_ms: int  # the newest labelled batch's record timestamp (the join's write)


class LearnStage:
    """The learner's processor (see :class:`modelstream.kafka.pipeline.Processor`)."""

    def __init__(
        self,
        settings: MonitorSettings,
        codec: AvroCodec,
        changelog: Changelog,
        registry: ProductionFollower,
        influx: InfluxWriter | None = None,
    ) -> None:
        self.codec = codec
        self.changelog = changelog
        self.registry = registry
        self.influx = influx
        self.config = settings.watch_config()
        self.limits = settings.limits()
        self.write_training = settings.write_training
        self.output_format = settings.output_format.value
        data_key = settings.data_key()
        self.data_key = data_key[0] if data_key else None
        self.signing_key = maker_key(settings, MAKER_OF_ORIGIN[Origin.ONLINE])
        self.boundary = Boundary(SERVICE)
        self.training = TrainingWriter(codec)
        self.internal = dataclasses.replace(self.limits, max_bytes=INTERNAL_MAX_BYTES)
        self.topics = {
            name: settings.topic(name)
            for name in (
                AUDIT,
                CANDIDATES,
                CONTROL,
                DEADLETTER,
                FEEDBACK,
                MONITOR_MODEL_STATE,
                MONITOR_OUTCOMES,
                TRAINING,
            )
        }
        self.watches: dict[str, ModelWatch] = {}
        self.saved: dict[str, MonitorModelState] = {}  # committed state per model
        self.pending: dict[int, dict[str, _Observed]] = {}
        self.owned: set[int] = set()
        self.restores: list[Restored] = []
        self.expired: dict[str, int] = defaultdict(int)  # from the join, for the match ratio

    # -- models --------------------------------------------------------------------------
    def watch(self, model: str) -> ModelWatch | None:
        """The model's watch, built from its production version and committed state."""
        watch = self.watches.get(model)
        if watch is None:
            watch = self._build(model)
            if watch is not None:
                self.watches[model] = watch
        return watch

    def _build(self, model: str) -> ModelWatch | None:
        verified = self.registry.production.get(model)
        if verified is None:
            return None
        watch = ModelWatch(model, self.config)
        try:
            body = decrypt_tensors(verified.body, self.data_key)
            watch.install(body, _native_model(body))
        except (ArtifactVerificationError, ValueError) as exc:
            log.warning("cannot watch %s v%d: %s", model, verified.body["version"], exc)
            return None
        state = self.saved.get(model)
        if state is not None:
            watch.restore(state)
        return watch

    async def refresh(self) -> None:
        """New production versions: each watch's learner restarts from the new weights."""
        for name in sorted(await self.registry.poll()):
            body = self.registry.production[name].body
            PRODUCTION_VERSION.labels(SERVICE, name).set(body["version"])
            log.info("%s: production is v%d", name, body["version"])
            watch = self.watches.get(name)
            if watch is not None:
                try:
                    plain = decrypt_tensors(body, self.data_key)
                    watch.install(plain, _native_model(plain))
                except (ArtifactVerificationError, ValueError) as exc:
                    log.warning("cannot learn online from %s v%d: %s", name, body["version"], exc)
                    del self.watches[name]
        for model, _reason in self.registry.refused:
            ARTIFACTS_REFUSED.labels(SERVICE, model).inc()
        self.registry.refused.clear()

    # -- processing ----------------------------------------------------------------------
    def process(self, task: int, records: list[ConsumerRecord]) -> list[Outgoing]:
        out: list[Outgoing] = []
        by_model: dict[str, list[MonitorLabelledBatch]] = defaultdict(list)
        written: dict[str, int] = {}
        for record in records:
            try:
                batch = self.codec.decode(
                    record.value, MonitorLabelledBatch, self.internal, checked=False
                )
                _check_columns(batch)
            except (DecodeError, InvalidEventError) as exc:
                failure = Failure(exc.reason, str(exc))
                self.boundary.reject(record.topic, record.partition, record.offset, failure)
                out.append(
                    dead_letter(
                        self.topics[DEADLETTER], SERVICE, record, record.key, record.value, failure
                    )
                )
                continue
            model = batch["model"]
            by_model[model].append(batch)
            written[model] = max(written.get(model, 0), record.timestamp)
        now = now_ms()
        for model, batches in by_model.items():
            out.extend(self._observe(task, model, batches, now, written[model]))
        return out

    def _observe(
        self,
        task: int,
        model: str,
        batches: list[MonitorLabelledBatch],
        now: int,
        written_ms: int = 0,
    ) -> list[Outgoing]:
        watch = self.watch(model)
        out: list[Outgoing] = []
        labelled: list[Labelled] = []
        sources: dict[str, tuple[MonitorLabelledBatch, int]] = {}
        features: list[np.ndarray] = []
        count = 0
        for batch in batches:
            count += len(batch["request_ids"])
            if watch is None or watch.body is None:
                failure = f"no production version of {model!r}"
                out.extend(
                    self._unusable(batch, i, "unknown-model", failure)
                    for i in range(len(batch["request_ids"]))
                )
                continue
            rows, X = self._labelled(batch, watch, now)
            kept = []
            for i, item in rows:
                if isinstance(item, InvalidEventError):
                    out.append(self._unusable(batch, i, item.reason, str(item)))
                else:
                    labelled.append(item)
                    kept.append(i)
                    sources[item.request_id] = (batch, i)
            if X is not None:
                features.append(X[kept])
        dead_letters = len(out)
        if watch is None:
            return out  # every label was refused (unknown-model)
        decisions = watch.observe(labelled, now, np.vstack(features) if features else None)
        for label, reason, error in decisions.unusable:
            batch, i = sources[label.request_id]
            out.append(self._unusable(batch, i, reason, error))
        out.extend(self._act(watch, decisions))
        state = watch.state()
        out.append(
            Outgoing(
                self.topics[MONITOR_MODEL_STATE],
                model.encode(),
                self.codec.encode(MonitorModelState, state),
                task,
            )
        )
        observed = self.pending.setdefault(task, {})
        previous = observed.get(model)
        observed[model] = _Observed(
            watch,
            decisions,
            state,
            count + (previous.labels if previous else 0),
            dead_letters + len(decisions.unusable) + (previous.dead_letters if previous else 0),
            max(written_ms, previous.written_ms if previous else 0),
        )
        if previous is not None:  # the same model twice in one transaction (isolation rerun)
            _merge(previous.decisions, decisions)
        return out

    def _labelled(
        self, batch: MonitorLabelledBatch, watch: ModelWatch, now: int
    ) -> tuple[list[tuple[int, Labelled | InvalidEventError]], np.ndarray | None]:
        """The batch's rows, read from its columns (a row whose label the model cannot take
        is an InvalidEventError in its place), and its features as one array: None when the
        version that scored them has other features than production's (or the model takes
        tensors), whose rows then count in the metrics but are not learned from."""
        assert watch.body is not None
        body = watch.body
        n = len(batch["request_ids"])
        d = batch["feature_count"]
        X = np.frombuffer(batch["features"], dtype="<f8").reshape(n, d)
        learnable = watch.learns_features and batch["features_id"] == watch.features_id
        classes = batch["classes"]
        k = len(batch["scores"]) // (8 * n)
        S = np.frombuffer(batch["scores"], dtype="<f8").reshape(n, k)
        finite = np.isfinite(S).all(axis=1)
        scores = [dict(zip(classes, row, strict=True)) for row in S.tolist()] if classes else None
        definition = Definition(
            name=body["name"],
            task=body["task"],
            feature_names=tuple(body["feature_names"]),
            classes=tuple(body["classes"]),
        )
        out: list[tuple[int, Labelled | InvalidEventError]] = []
        labelled_at = batch["labelled_at_ms"]
        for i, (request_id, version, predicted_at, prediction, label) in enumerate(
            zip(
                batch["request_ids"],
                batch["versions"],
                batch["predicted_at_ms"],
                batch["predictions"],
                batch["labels"],
                strict=True,
            )
        ):
            try:
                if not finite[i]:
                    raise InvalidEventError("non-finite", "prediction scores are not finite")
                item = Labelled(
                    request_id=request_id,
                    features=X[i] if learnable else None,
                    version=version,
                    prediction=prediction,
                    scores=scores[i] if scores is not None else {},
                    predicted_at_ms=predicted_at,
                    label=check_label(label, definition),
                    labelled_at_ms=labelled_at[i] if labelled_at[i] >= 0 else now,
                    feedback_partition=batch["feedback_partitions"][i],
                    feedback_offset=batch["feedback_offsets"][i],
                )
            except InvalidEventError as exc:
                out.append((i, exc))
                continue
            out.append((i, item))
        return out, X if learnable else None

    def _unusable(self, batch: MonitorLabelledBatch, i: int, reason: str, error: str) -> Outgoing:
        """The label is what is unusable: the dead letter is its feedback record."""
        position = SourcePosition(
            self.topics[FEEDBACK], batch["feedback_partitions"][i], batch["feedback_offsets"][i]
        )
        failure = Failure(reason, error)
        self.boundary.reject(position.topic, position.partition, position.offset, failure)
        return dead_letter(
            self.topics[DEADLETTER],
            SERVICE,
            position,
            batch["request_ids"][i].encode(),
            batch["feedback"][i],
            failure,
        )

    def _act(self, watch: ModelWatch, d: Decisions) -> list[Outgoing]:
        model, key = watch.name, watch.name.encode()
        out: list[Outgoing] = []
        # a tensor model's rows are its tensors, which the monitor never sees (an embedding is
        # not a training row: the trainer does not train tensor models)
        if self.write_training and not watch.takes_tensors:
            for label in d.usable:
                if label.features is None:
                    continue  # scored over other features than the production version's
                value = self.training.encode(
                    key,
                    np.ascontiguousarray(label.features, "<f8").tobytes(),
                    label.label,
                    FEEDBACK_EXAMPLE_PREFIX + label.request_id,
                    label.labelled_at_ms,
                )
                out.append(Outgoing(self.topics[TRAINING], key, value))
        for event in d.drift:
            out.append(
                self._audit(
                    model,
                    "drift_detected",
                    version=event.version,
                    reason=event.detail,
                    details={"kind": event.kind},
                )
            )
        if d.train_reason is not None:
            out.append(self._command(model, Action.TRAIN, reason=f"drift: {d.train_reason}"))
        if d.rollback is not None:
            out.append(
                self._command(
                    model, Action.ROLLBACK, version=d.rollback.parent, reason=d.rollback.reason
                )
            )
            out.append(
                self._audit(
                    model,
                    "rollback_requested",
                    version=d.rollback.version,
                    reason=d.rollback.reason,
                    details={
                        "to_version": str(d.rollback.parent),
                        "labels": str(d.rollback.labels),
                    },
                )
            )
        if d.candidate is not None:
            artifact = seal_candidate(d.candidate, self.signing_key)
            lineage = d.candidate["lineage"]
            out.append(
                Outgoing(self.topics[CANDIDATES], key, self.codec.encode(ModelArtifact, artifact))
            )
            out.append(
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
            )
        out.extend(self._outcomes(watch, d))
        return out

    def _outcomes(self, watch: ModelWatch, d: Decisions) -> list[Outgoing]:
        """Quality sums per version for the windows (faust): one record per version."""
        if not d.outcomes or watch.body is None:
            return []
        task = Task(watch.body["task"])
        by_version: dict[int, list[object]] = defaultdict(list)
        for version, outcome in d.outcomes:
            by_version[version].append(outcome)
        at = now_ms()
        out = []
        for version, outcomes in by_version.items():
            record: MonitorOutcomes = {
                "model": watch.name,
                "version": version,
                "at_ms": at,
                "sums": summarize(task, outcomes),  # type: ignore[arg-type]
            }
            key = f"{watch.name}|{version}".encode()
            out.append(
                Outgoing(
                    self.topics[MONITOR_OUTCOMES], key, self.codec.encode(MonitorOutcomes, record)
                )
            )
        return out

    def _audit(self, model: str, event: str, **fields: object) -> Outgoing:
        record = audit_event(model, event, service=SERVICE, **fields)  # type: ignore[arg-type]
        return Outgoing(
            self.topics[AUDIT],
            model.encode(),
            self.codec.encode_as(AuditEvent, record, self.output_format),
        )

    def _command(self, model: str, action: Action, **fields: object) -> Outgoing:
        record = command(model, action, actor=SERVICE, **fields)  # type: ignore[arg-type]
        return Outgoing(self.topics[CONTROL], model.encode(), self.codec.encode(Command, record))

    def punctuate(self, task: int) -> list[Outgoing]:
        return []

    # -- transactions --------------------------------------------------------------------
    def committed(self, task: int, written: Written) -> None:
        self.changelog.wrote(task, written)
        at = now_ms()
        for model, observed in self.pending.pop(task, {}).items():
            self.saved[model] = observed.state
            self._report(observed.watch, observed.decisions, observed.dead_letters)
            if observed.written_ms:
                LEARNER_LAG.labels(model).set(max(0.0, (at - observed.written_ms) / 1000))

    def aborted(self, task: int) -> None:
        """Back to the committed state: the batch will be learned again."""
        for model in self.pending.pop(task, {}):
            self.watches.pop(model, None)  # rebuilt from `saved` when next needed

    def dead_lettered(self, record: ConsumerRecord, failure: Failure) -> list[Outgoing]:
        return []  # nobody waits on the monitor

    def _report(self, watch: ModelWatch, d: Decisions, dead_letters: int) -> None:
        model = watch.name
        LABELS_JOINED.labels(model).inc(len(d.usable) + len(d.unusable))
        if dead_letters:
            DEAD_LETTERS.labels(SERVICE, model).inc(dead_letters)
        if d.learned:
            ONLINE_LEARNED.labels(model).inc(d.learned)
        if watch.learner is not None:
            ONLINE_LEARNER_LABELS.labels(model).set(watch.learner.learned)
        ONLINE_GAIN.labels(model).set(watch.gain())
        joined, lost = watch.joined_total, self.expired.get(model, 0)
        if joined + lost:
            JOIN_MATCH_RATIO.labels(model).set(joined / (joined + lost))
        at = now_ms()
        for event in d.drift:
            DRIFT_EVENTS.labels(model, str(event.version)).inc()
            log.warning("%s: %s drift on v%d: %s", model, event.kind, event.version, event.detail)
            if self.influx is not None:
                self.influx.write(
                    "drift",
                    {"model": model, "version": str(event.version), "kind": event.kind},
                    {"events": 1, "detail": event.detail},
                    at,
                )
        if d.rollback is not None:
            ROLLBACKS_REQUESTED.labels(model).inc()
            log.warning("%s: rolling back: %s", model, d.rollback.reason)
        if d.candidate is not None:
            ONLINE_CANDIDATES.labels(model).inc()
            log.info(
                "%s: online candidate from v%s after %d labels",
                model,
                d.candidate["parent_version"],
                d.candidate["lineage"]["example_count"],
            )

    # -- rebalancing ---------------------------------------------------------------------
    async def assigned(self, tasks: set[int]) -> None:
        for task in self.changelog.stale():
            self._drop(task)
            self.changelog.forget(task)
        for task in sorted(tasks):
            changed: set[str] = set()

            def apply(record: ConsumerRecord, changed: set[str] = changed) -> None:
                model = (record.key or b"").decode(errors="replace")
                changed.add(model)
                if record.value is None:
                    self.saved.pop(model, None)
                else:
                    self.saved[model] = self.codec.decode(record.value, MonitorModelState)

            def reset(task: int = task) -> None:
                self._drop(task)

            restored = await self.changelog.restore(task, apply, reset)
            for model in changed:
                self.watches.pop(model, None)  # rebuilt from the restored state
            self.restores.append(restored)
            MONITOR_RESTORE_SECONDS.labels("learn").observe(restored.seconds)
        self.owned |= tasks

    def _drop(self, task: int) -> None:
        for model in [m for m in self.saved if learn_partition(m) == task]:
            del self.saved[model]
        for model in [m for m in self.watches if learn_partition(m) == task]:
            del self.watches[model]

    async def revoked(self, tasks: set[int]) -> None:
        for task in tasks:
            self.pending.pop(task, None)
            self.changelog.left(task)
        self.owned -= tasks


def _check_columns(batch: MonitorLabelledBatch) -> None:
    """Every column of a labelled batch has one entry per row (InvalidEventError if not)."""
    n = len(batch["request_ids"])
    d = batch["feature_count"]
    # classes: a column each; none: one column (regression) or none (an embedding model)
    widths = (len(batch["classes"]),) if batch["classes"] else (0, 1)
    lengths = [
        len(batch[column])
        for column in (
            "versions",
            "predicted_at_ms",
            "predictions",
            "labels",
            "labelled_at_ms",
            "feedback_partitions",
            "feedback_offsets",
            "feedback",
        )
    ]
    if (
        n == 0
        or any(length != n for length in lengths)
        or d < 0
        or len(batch["features"]) != 8 * d * n
        or all(len(batch["scores"]) != 8 * k * n for k in widths)
        or len(batch["categories"]) % n
    ):
        raise InvalidEventError("invalid-labelled", f"the columns of {n} labels disagree")


def _merge(into: Decisions, new: Decisions) -> None:
    """What one model's batches in one transaction decided, for the report after commit."""
    new.usable = into.usable + new.usable
    new.unusable = into.unusable + new.unusable
    new.learned += into.learned
    new.drift = into.drift + new.drift
    new.rollback = new.rollback or into.rollback
    new.candidate = new.candidate or into.candidate


def _native_model(body: ModelBody) -> LinearModel | MLPModel | None:
    """The production version's native model (linear or network) to keep learning from,
    or None for an ONNX graph: the watch then learns a native linear challenger from zero."""
    if body.get("onnx") is not None:
        return None
    if body.get("layers"):
        return MLPModel.from_body(body)
    return LinearModel.from_body(body)
