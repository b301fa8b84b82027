"""Everything the monitor knows about one model: live metrics per version, drift, the online
learner, and the decisions they lead to (retrain, roll back, export a candidate).

Fed batches of labelled predictions in the order the join completed them, exactly once each
(the streaming core guarantees it); pure, so the app and the tests drive it the same way.
``state()``/``restore()`` carry the learner and the metric windows across restarts and
rebalances; drift detectors start afresh.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from modelstream.contracts.builders import (
    LinearTensors,
    candidate_body,
    lineage,
    training_config,
)
from modelstream.contracts.definitions import feature_vector, features_id, in_online_holdout
from modelstream.contracts.records import (
    DriftWindowState,
    Features,
    Label,
    ModelBody,
    MonitorModelState,
    OffsetRange,
    Origin,
    Task,
)
from modelstream.errors import InvalidEventError
from modelstream.learn.linear import LinearModel
from modelstream.learn.mlp import MLPModel
from modelstream.registry.artifact import to_tensor
from modelstream.registry.embedding_head import HeadInput, head_input_of, head_of, with_head
from modelstream.services.monitor.logic.array_learner import ArrayLearner
from modelstream.services.monitor.logic.learner import OnlineLearner
from modelstream.services.monitor.logic.mlp_learner import OnlineMLP
from modelstream.services.monitor.logic.quality import (
    DriftEvent,
    ErrorDrift,
    FeatureDrift,
    LiveMetrics,
    Outcome,
    ScoreDrift,
    outcome,
)
from modelstream.services.monitor.logic.rollback import RollbackDecision, should_roll_back

log = logging.getLogger(__name__)

FEEDBACK_TOPIC = "feedback"  # the logical topic named by online candidates' lineage


@dataclass(frozen=True, slots=True)
class Labelled:
    """A prediction with its true label: one complete join, decoded."""

    request_id: str
    # the row in model order (a labelled batch gives arrays); None when the version that
    # scored it has other features than the production version (not learned from)
    features: Features | np.ndarray | None
    version: int
    prediction: Label
    scores: dict[str, float]
    predicted_at_ms: int
    label: Label
    labelled_at_ms: int
    feedback_partition: int
    feedback_offset: int


@dataclass(frozen=True)
class WatchConfig:
    window: int = 1000
    drift_delta: float = 0.002
    feature_drift_window: int = 500
    feature_drift_threshold: float = 0.5
    score_drift_threshold: float = 0.25
    learning_rate: float = 0.01
    l2: float = 0.0
    learner: str = "arrays"  # or "river": the linear online learner
    export_every_labels: int = 2000
    export_every_ms: int = 60_000
    export_min_labels: int = 200
    export_min_gain: float = 0.01
    rollback_margin: float = 0.05
    rollback_min_labels: int = 200
    train_cooldown_ms: int = 60_000


@dataclass
class Decisions:
    """What one batch of labelled predictions asks the application to do."""

    usable: list[Labelled] = field(default_factory=list)  # go to `training`
    unusable: list[tuple[Labelled, str, str]] = field(default_factory=list)  # (label, reason, why)
    outcomes: list[tuple[int, Outcome]] = field(default_factory=list)  # (version, outcome)
    learned: int = 0
    drift: list[DriftEvent] = field(default_factory=list)
    train_reason: str | None = None
    rollback: RollbackDecision | None = None
    candidate: ModelBody | None = None


class ModelWatch:
    def __init__(self, name: str, config: WatchConfig) -> None:
        self.name = name
        self.config = config
        self.body: ModelBody | None = None  # the production artifact (plain tensors)
        self.model: LinearModel | MLPModel | None = None
        self.learner: ArrayLearner | OnlineLearner | OnlineMLP | None = None
        self.head: HeadInput | None = None  # a tensor model's embedding its head learns on
        self.metrics: dict[int, LiveMetrics] = {}
        self.error_drift: dict[int, ErrorDrift] = {}
        self.feature_drift: FeatureDrift | None = None
        self.score_drift: ScoreDrift | None = None
        self.feedback_ranges: dict[int, list[int]] = {}  # partition -> [first, last + 1]
        self.learned_since_export = 0
        self.last_export_ms = 0
        self.paired: deque[tuple[float, float]] = deque(maxlen=config.window)
        self.rolled_back: set[int] = set()
        self.last_train_ms = 0
        self.joined_total = 0

    @property
    def version(self) -> int | None:
        return self.body["version"] if self.body is not None else None

    # -- production changes ------------------------------------------------------------
    def install(self, body: ModelBody, model: LinearModel | MLPModel | None) -> None:
        """A new production version. A linear one or a network: the learner continues from
        its weights (river for the linear families, OnlineMLP's gradient steps for a
        network) and features are compared with its training statistics. An ONNX graph over
        features (``model`` None): a native linear learner starts from zero on the numeric
        features, a challenger the gate compares with the graph on the same rows; feature
        drift has no training statistics to compare with. A tensor model (images, text)
        that declares an embedding output: a linear head on the embedding, from the head the
        graph already serves (a candidate of an earlier round) or from zero, proposed as the
        graph with that head (``registry.embedding_head``). Another tensor model: no learner;
        its scores are compared with the validator's hold-out. Error drift and rollback work
        as for any kind."""
        self.body, self.model = body, model
        self.head = self._head_input(body) if self.takes_tensors else None
        self.score_drift = ScoreDrift.from_metrics(
            body.get("metrics") or {},
            self.config.feature_drift_window,
            self.config.score_drift_threshold,
        )
        self.learner, self.feature_drift = None, None
        served_head = head_of(body) if self.head is not None else None
        if not self.learns_features or body["task"] == Task.EMBEDDING:
            pass  # live metrics, score and error drift, rollback
        elif served_head is not None:  # continue from the head an earlier round proposed
            self.learner = self._linear_learner().from_model(
                served_head,
                body["lineage"]["example_count"],
                self.config.learning_rate,
                self.config.l2,
            )
        elif model is None:  # a graph's embedding or features: a linear challenger from zero
            self.learner = self._linear_learner()(
                Task(body["task"]),
                self.feature_names,
                body["classes"],
                self.config.learning_rate,
                self.config.l2,
            )
        else:
            if isinstance(model, MLPModel):
                # the trainer's loss and weight decay, small steps from the production weights
                self.learner = OnlineMLP(model, body["training"]["l2"], self.config.learning_rate)
            else:
                self.learner = self._linear_learner().from_model(
                    model,
                    body["lineage"]["example_count"],
                    self.config.learning_rate,
                    self.config.l2,
                )
            if recorded_statistics(model):
                self.feature_drift = FeatureDrift(
                    model.mean,
                    model.scale,
                    model.feature_names,
                    self.config.feature_drift_window,
                    self.config.feature_drift_threshold,
                )
        self._after_install()

    @staticmethod
    def _head_input(body: ModelBody) -> HeadInput | None:
        """The embedding a head can learn on, once a head of zeros has been composed into
        the graph (a graph that cannot take one gets no learner, rather than a learner
        whose candidates cannot be built)."""
        try:
            head = head_input_of(body)
            if head is None:
                return None
            task = Task(body["task"])
            k = len(body["classes"]) if task == Task.MULTICLASS else 1
            d = head.width
            names, classes = head.feature_names, body["classes"]
            zeros = np.zeros((d, k)), np.zeros(k), np.zeros(d), np.ones(d)
            with_head(body, LinearModel(task, names, classes, *zeros))
        except Exception as exc:  # onnx's checker raises its own ValidationError
            log.warning(
                "%s v%d takes no head on its embedding: %s", body["name"], body["version"], exc
            )
            return None
        return head

    def _linear_learner(self) -> type[ArrayLearner] | type[OnlineLearner]:
        return OnlineLearner if self.config.learner == "river" else ArrayLearner

    @property
    def takes_tensors(self) -> bool:
        """Whether the model is a tensor model (images, text): its requests carry no
        features, its training rows are tensors the monitor never sees."""
        graph = self.body.get("onnx") if self.body is not None else None
        return graph is not None and bool(graph.get("spec"))

    @property
    def learns_features(self) -> bool:
        """Whether labelled rows carry a vector the learner reads: the features, or a
        tensor model's embedding (another tensor model's labels feed live metrics, drift and
        rollback, not a learner)."""
        return not self.takes_tensors or self.head is not None

    @property
    def feature_names(self) -> list[str]:
        """What the learner's columns are: the production version's features, or the
        embedding's components."""
        if self.head is not None:
            return self.head.feature_names
        return list(self.body["feature_names"]) if self.body is not None else []

    @property
    def features_id(self) -> bytes:
        """The identity of the learner's columns (rows scored over others, by a version
        with other features or another network's embedding, are not learned from)."""
        if self.head is not None:
            return self.head.features_id
        return features_id(self.feature_names)

    def _after_install(self) -> None:
        assert self.body is not None
        body = self.body
        self.feedback_ranges.clear()
        self.learned_since_export = 0
        self.paired.clear()
        for version in sorted(self.metrics)[:-3]:
            if version not in (body["version"], body["parent_version"]):
                del self.metrics[version]
                self.error_drift.pop(version, None)

    # -- one batch -----------------------------------------------------------------------
    def observe(
        self, labels: Sequence[Labelled], now_ms: int, X: np.ndarray | None = None
    ) -> Decisions:
        """``X``: the features of the labels that have some, as one [rows, features] array
        (a labelled batch's columns), read instead of each label's ``features``."""
        out = Decisions()
        self.joined_total += len(labels)
        if self.body is None or not labels or self.body["task"] == Task.EMBEDDING:
            out.usable = list(labels)
            return out
        if self.learns_features and self.learner is None:
            out.usable = list(labels)
            return out
        task, classes = self.body["task"], self.body["classes"]
        names = self.feature_names
        # X holds the rows of the labels that carry features, in order
        row_errors = self._row_errors(X, names) if X is not None and self.learns_features else None
        matrix = X if row_errors is not None else None
        learnable: list[Labelled] = []
        rows: list[int] = []  # of matrix
        given: list[np.ndarray] = []
        top_scores: list[float] = []
        j = -1
        for item in labels:
            version = item.version
            # a label without features (scored by a version over other features) counts in
            # the metrics, drift and rollback, not in learning
            has_row = self.learns_features and item.features is not None
            j += has_row
            try:
                result = outcome(
                    task,
                    classes,
                    item.scores,
                    item.prediction,
                    item.label,
                    max(0.0, float(item.labelled_at_ms - item.predicted_at_ms)),
                )
                row = None
                if has_row and row_errors is not None:
                    row_error = row_errors[j]
                    if row_error is not None:
                        raise row_error
                elif has_row:
                    assert item.features is not None
                    row = feature_vector(item.features, names)
            except (ValueError, InvalidEventError) as exc:
                out.unusable.append((item, getattr(exc, "reason", "invalid-label"), str(exc)))
                continue
            metrics = self.metrics.get(version)
            if metrics is None:
                metrics = self.metrics[version] = LiveMetrics(task, self.config.window)
            metrics.add(result)
            out.outcomes.append((version, result))
            detector = self.error_drift.get(version)
            if detector is None:
                detector = self.error_drift[version] = ErrorDrift(self.config.drift_delta)
            error = result.abs_error if task == Task.REGRESSION else 1.0 - result.correct
            if detector.update(error):
                out.drift.append(
                    DriftEvent(
                        "error",
                        version,
                        (
                            f"ADWIN: error rate of v{version} changed; window mean now "
                            f"{detector.detector.estimation:.4f}"
                        ),
                    )
                )
            if has_row:
                learnable.append(item)
                if row is not None:
                    given.append(row)
                else:
                    rows.append(j)
            if version == self.body["version"]:
                top_scores.append(
                    float(item.prediction)
                    if task == Task.REGRESSION
                    else max(item.scores.values(), default=0.0)
                )
            out.usable.append(item)
        self._drift_in_scores(np.asarray(top_scores), out)
        features = matrix[rows] if matrix is not None else np.vstack(given) if given else None
        if learnable and features is not None:
            self._drift_in_features(features, out)
            self._learn(features, learnable, out)
        retrainable = not self.takes_tensors  # the trainer does not train a tensor model
        if (
            out.drift
            and retrainable
            and now_ms - self.last_train_ms >= self.config.train_cooldown_ms
        ):
            self.last_train_ms = now_ms
            out.train_reason = "; ".join(sorted({d.detail for d in out.drift}))
        out.rollback = self._rollback()
        out.candidate = self._export(now_ms)
        return out

    @staticmethod
    def _row_errors(X: np.ndarray, names: Sequence[str]) -> list[InvalidEventError | None]:
        """Why each row of a batch's feature array cannot be used (None: it can)."""
        if X.ndim != 2 or X.shape[1] != len(names):
            width = X.shape[1] if X.ndim == 2 else 0
            error = InvalidEventError(
                "wrong-feature-count", f"{width} features, the model needs {len(names)}"
            )
            return [error] * len(X)
        finite = np.isfinite(X).all(axis=1)
        if finite.all():
            return [None] * len(X)
        error = InvalidEventError("non-finite", "features contain NaN or infinity")
        return [None if ok else error for ok in finite.tolist()]

    def _drift_in_scores(self, scores: np.ndarray, out: Decisions) -> None:
        """Production's scores against the distribution recorded on the validator's
        hold-out (models whose artifact carries it)."""
        if self.score_drift is None or self.body is None or not len(scores):
            return
        index = self.score_drift.update_many(scores)
        if index is not None:
            out.drift.append(
                DriftEvent(
                    "scores",
                    self.body["version"],
                    (
                        f"scores moved from the hold-out's: population stability index "
                        f"{index:.3f} over {self.score_drift.window} labels "
                        f"(threshold {self.score_drift.threshold})"
                    ),
                )
            )

    def _drift_in_features(self, X: np.ndarray, out: Decisions) -> None:
        assert self.body is not None
        if self.feature_drift is None:
            return
        shifted = self.feature_drift.update_many(X)
        if shifted:
            self.feature_drift.reset()  # one event per window, not one per batch
            out.drift.append(
                DriftEvent(
                    "features",
                    self.body["version"],
                    (
                        f"features moved > {self.feature_drift.threshold} training standard "
                        f"deviations: {', '.join(shifted[:5])}"
                    ),
                )
            )

    def _learn(self, X: np.ndarray, labels: Sequence[Labelled], out: Decisions) -> None:
        assert self.learner is not None and self.body is not None
        task = self.body["task"]
        # Progressive validation: the learner as it was at the start of the batch scores the
        # batch before learning from it, beside the production version's own predictions.
        online_scores = np.asarray(self.learner.as_model().proba(X)).reshape(len(labels), -1)
        truth = [item.label for item in labels]
        if task == Task.REGRESSION:
            y = np.asarray(truth, dtype=np.float64)
            ours = -np.abs(online_scores[:, 0] - y)
            theirs = -np.abs(np.asarray([float(item.prediction) for item in labels]) - y)
        else:
            said = np.asarray(self.learner.classes, dtype=object)[online_scores.argmax(axis=1)]
            expected = np.asarray([str(label) for label in truth], dtype=object)
            ours = (said == expected).astype(np.float64)
            given = np.asarray([str(item.prediction) for item in labels], dtype=object)
            theirs = (given == expected).astype(np.float64)
        self.paired.extend(zip(ours.tolist(), theirs.tolist(), strict=True))
        learn = [i for i, item in enumerate(labels) if not in_online_holdout(item.request_id)]
        if not learn:
            return
        partitions = np.fromiter(
            (labels[i].feedback_partition for i in learn), np.int64, len(learn)
        )
        offsets = np.fromiter((labels[i].feedback_offset for i in learn), np.int64, len(learn))
        for partition in np.unique(partitions).tolist():
            these = offsets[partitions == partition]
            low, high = int(these.min()), int(these.max()) + 1
            span = self.feedback_ranges.setdefault(partition, [low, high])
            span[0], span[1] = min(span[0], low), max(span[1], high)
        self.learned_since_export += len(learn)
        out.learned += len(learn)
        self.learner.learn_many(
            X[learn],
            [truth[i] if task != Task.REGRESSION else float(truth[i]) for i in learn],
        )

    def gain(self) -> float:
        """Online learner minus production on the same recent labels (accuracy or -MAE)."""
        if not self.paired:
            return 0.0
        pairs = np.asarray(self.paired)
        return float(pairs[:, 0].mean() - pairs[:, 1].mean())

    def _export(self, now_ms: int) -> ModelBody | None:
        c = self.config
        if self.learner is None or self.body is None:
            return None
        due = self.learned_since_export >= c.export_every_labels or (
            now_ms - self.last_export_ms >= c.export_every_ms
            and self.learned_since_export >= c.export_min_labels
        )
        if not due or len(self.paired) < c.export_min_labels or self.gain() < c.export_min_gain:
            return None
        candidate = self.candidate_body(now_ms)
        self.last_export_ms = now_ms
        self.learned_since_export = 0
        return candidate

    def candidate_body(self, now_ms: int) -> ModelBody:
        """The learner's weights as a candidate the validator gates like any other."""
        assert self.learner is not None and self.body is not None
        body = self.body
        ranges: list[OffsetRange] = [
            {"topic": FEEDBACK_TOPIC, "partition": p, "start": a, "end": b}
            for p, (a, b) in sorted(self.feedback_ranges.items())
        ]
        if self.head is not None:  # the production graph, its scores read from the head
            assert not isinstance(self.learner, OnlineMLP)
            empty = to_tensor(np.empty(0))
            tensors: LinearTensors = {
                "weights": empty,
                "intercepts": empty,
                "feature_mean": empty,
                "feature_scale": empty,
            }
            graph = with_head(body, self.learner.as_model())
        else:
            tensors, graph = self.learner.export(), None
        return candidate_body(
            name=self.name,
            task=body["task"],
            feature_names=body["feature_names"],
            classes=body["classes"],
            tensors=tensors,
            onnx=graph,
            layers=self.learner.layer_records(),
            training=training_config(
                "online-sgd" if isinstance(self.learner, OnlineMLP) else "river-online",
                hidden=self.learner.hidden if isinstance(self.learner, OnlineMLP) else (),
                l2=self.config.l2,
                learning_rate=self.config.learning_rate,
                batch_size=1,
                max_epochs=1,
                epochs_run=1,
            ),
            metrics={"online_gain": self.gain(), "online_labels": float(len(self.paired))},
            lineage=lineage(Origin.ONLINE, ranges, self.learner.learned),
            parent_version=body["version"],
            created_by="monitor",
            created_at_ms=now_ms,
        )

    def _rollback(self) -> RollbackDecision | None:
        if self.body is None or self.version in self.rolled_back:
            return None
        decision = should_roll_back(
            self.body["version"],
            self.body["parent_version"],
            self.metrics,
            margin=self.config.rollback_margin,
            min_labels=self.config.rollback_min_labels,
        )
        if decision is not None:
            self.rolled_back.add(decision.version)
        return decision

    # -- persistence -----------------------------------------------------------------------
    def state(self) -> MonitorModelState:
        return {
            "version": self.version,
            "learner": self.learner.state() if self.learner is not None else None,
            "metrics": {str(v): m.state() for v, m in self.metrics.items()},
            "feedback_ranges": {str(p): r for p, r in self.feedback_ranges.items()},
            "learned_since_export": self.learned_since_export,
            "last_export_ms": self.last_export_ms,
            "paired": [list(p) for p in self.paired],
            "rolled_back": sorted(self.rolled_back),
            "last_train_ms": self.last_train_ms,
            "joined_total": self.joined_total,
            "drift_windows": self._drift_windows(),
        }

    def _drift_windows(self) -> DriftWindowState | None:
        if self.score_drift is None and self.feature_drift is None:
            return None
        sums, seen = self.feature_drift.state() if self.feature_drift is not None else ([], 0)
        return {
            "window": self.config.feature_drift_window,
            "score_counts": self.score_drift.state() if self.score_drift is not None else [],
            "feature_sums": sums,
            "feature_seen": seen,
        }

    def restore(self, state: MonitorModelState) -> None:
        """Continue from ``state`` (after :meth:`install` of the current production); the
        learner only when it belongs to that version (else learning restarts from it)."""
        task = self.body["task"] if self.body is not None else Task.BINARY
        for version, metrics_state in state["metrics"].items():
            metrics = LiveMetrics(task, self.config.window)
            metrics.restore(metrics_state)
            self.metrics[int(version)] = metrics
        self.rolled_back = set(state["rolled_back"])
        self.last_train_ms = state["last_train_ms"]
        self.joined_total = state["joined_total"]
        self.last_export_ms = state["last_export_ms"]
        windows = state.get("drift_windows")
        if (
            windows is not None
            and state["version"] == self.version
            and windows["window"] == self.config.feature_drift_window
        ):  # the same windows: another size would misread the counts and sums
            if self.score_drift is not None:
                self.score_drift.restore(windows["score_counts"])
            if self.feature_drift is not None:
                self.feature_drift.restore(windows["feature_sums"], windows["feature_seen"])
        if (
            self.learner is not None
            and state["learner"] is not None
            and (state["version"] == self.version)
        ):
            self.learner.restore(state["learner"])
            self.feedback_ranges = {int(p): list(r) for p, r in state["feedback_ranges"].items()}
            self.learned_since_export = state["learned_since_export"]
            self.paired.extend((float(a), float(b)) for a, b in state["paired"])


def recorded_statistics(model: LinearModel | MLPModel) -> bool:
    """Whether the model carries statistics of the data it learned from. A network or a
    linear graph imported from elsewhere (Keras, ONNX) carries placeholders, mean 0 and
    scale 1, which describe no data: comparing live features with them would call any
    unstandardized stream drifted."""
    return not (np.all(model.mean == 0.0) and np.all(model.scale == 1.0))
