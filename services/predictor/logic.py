"""Batched, vectorized scoring with routing; pure numpy, no Kafka.

A batch of messages is decoded, grouped by (model version, route), turned into one matrix
per group and scored with one matrix product. The result keeps the good and the bad apart:
encoded predictions per group, and the messages that could not be scored with the reason
(the app dead-letters them) - the rest of their batch is scored. There is no per-event model
call. The logic knows nothing of Kafka: a message is anything with a key, a value and a
timestamp (aiokafka's ConsumerRecord is one).
"""

from __future__ import annotations

import logging
import re
import time
import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, cast

import numpy as np

from modelstream.contracts import tensors
from modelstream.contracts.codec import DEFAULTS, AvroCodec, is_json
from modelstream.contracts.definitions import check_request_id, features_id
from modelstream.contracts.limits import Limits
from modelstream.contracts.records import (
    Label,
    NamedTensor,
    Prediction,
    PredictionRequest,
    Task,
    TensorDatatype,
)
from modelstream.errors import DecodeError, InvalidEventError
from modelstream.registry.artifact import Verified, decrypt_tensors
from modelstream.registry.embedding_head import HeadInput, head_input_of
from modelstream.registry.onnx_model import Categories, OnnxScorer
from modelstream.registry.scoring import Scorer, scorer_for
from modelstream.registry.tensor_model import (
    Prepared,
    Stacked,
    TensorOutputs,
    TensorScorer,
    concatenate,
)
from modelstream.services.predictor.fastpath import (
    CategoryColumns,
    MapSection,
    MapTemplate,
    PredictionWriter,
    Request,
    RequestReader,
    encode_outputs,
)

log = logging.getLogger(__name__)
FRACTION_SCALE = 2**32
_JSON_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,255})"')


class Message(Protocol):
    """What the logic reads of one input record."""

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def timestamp(self) -> int: ...


M = TypeVar("M", bound=Message)
Item = tuple[M, Request]


@dataclass(frozen=True)
class ServingModel:
    name: str
    version: int
    digest: str
    model: Scorer  # a linear family or an ONNX graph's onnxruntime session
    template: MapTemplate  # byte layout of this version's numeric features as an Avro map
    # a tensor model's embedding output, handed to the monitor as the row's features
    head: HeadInput | None = None

    @property
    def digest_prefix(self) -> str:
        return self.digest[:12]

    @classmethod
    def from_verified(
        cls,
        verified: Verified,
        data_key: bytes | None,
        *,
        threads: int = 1,
        max_chars: int = 65_536,
    ) -> ServingModel:
        """Decrypt, build the scorer and warm it up (for a graph: its onnxruntime session,
        which takes a while for a large one, so callers build it off the event loop)."""
        body = decrypt_tensors(verified.body, data_key)
        model = scorer_for(body, threads=threads, max_chars=max_chars)
        warm_up = getattr(model, "warm_up", None)
        if warm_up is not None:
            warm_up()
        return cls(
            body["name"],
            body["version"],
            verified.digest,
            model,
            MapTemplate(model.feature_names),
            head_input_of(body) if isinstance(model, TensorScorer) else None,
        )


@dataclass(frozen=True)
class Traffic:
    challenger_version: int | None = None
    fraction: float = 0.0
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class Catalog:
    """What the predictor serves, replaced whole on every change (never changed in place):
    a batch scored in a worker thread while the registry installs a version sees all of the
    old catalog or all of the new one."""

    versions: Mapping[str, Mapping[int, ServingModel]] = field(default_factory=dict)
    production: Mapping[str, int] = field(default_factory=dict)
    traffic: Mapping[str, Traffic] = field(default_factory=dict)

    def runs_graphs(self) -> bool:
        """Whether any loaded version is scored by onnxruntime (which releases the GIL while
        it runs: worth a worker thread) rather than by a few small numpy products."""
        return any(
            isinstance(model.model, OnnxScorer | TensorScorer)
            for versions in self.versions.values()
            for model in versions.values()
        )


@dataclass(frozen=True, slots=True)
class ScoredRows:
    """What the monitor needs of a group's rows, in columns (it learns from these and never
    decodes a request or a prediction again)."""

    model: str
    version: int
    predicted_at_ms: int
    features_id: bytes  # of the scoring version's feature names (definitions.features_id)
    features: np.ndarray  # [rows, features] float64; [rows, 0] for a tensor model
    categories: list[str]  # [rows x categorical] row-major, model order; [] when none
    classes: list[str]  # the score columns' labels; [] for regression and embeddings
    scores: np.ndarray  # [rows, max(1, classes)]; [rows, 0] for an embedding model
    predictions: list[Label]


@dataclass(frozen=True, slots=True)
class ScoredGroup(Generic[M]):
    """Encoded predictions of one (model, version, route) group, with the messages they
    answer, in input order, and their rows in columns."""

    shadow: bool
    messages: list[M]
    values: list[bytes]
    request_ids: list[bytes]
    rows: ScoredRows | None = None


@dataclass(frozen=True, slots=True)
class Rejected(Generic[M]):
    """A message that could not be scored, with the dead-letter reason."""

    message: M
    model: str  # the model it names, when that model is known ("" otherwise)
    reason: str
    error: str


@dataclass
class Scored(Generic[M]):
    """What one batch became: predictions, rejects, and counts for the metrics."""

    groups: list[ScoredGroup[M]] = field(default_factory=list)
    rejected: list[Rejected[M]] = field(default_factory=list)
    predicted: dict[tuple[str, int, bool], int] = field(
        default_factory=lambda: defaultdict(int)
    )  # (model, version, shadow) -> count
    latencies_ms: list[tuple[str, np.ndarray]] = field(default_factory=list)

    def reject(self, message: M, model: str, exc: DecodeError | InvalidEventError) -> None:
        self.rejected.append(Rejected(message, model, exc.reason, str(exc)))


class PredictorLogic:
    def __init__(
        self,
        codec: AvroCodec,
        *,
        output_format: str,
        max_versions: int = 10,
        limits: Limits = DEFAULTS,
    ) -> None:
        self.codec = codec
        self.limits = limits
        self.output_format = output_format
        self.max_versions = max_versions
        self.catalog = Catalog()
        self.runs_graphs = False  # of the catalog, kept at each install
        self._reader = RequestReader(codec.schema(PredictionRequest).fingerprint)
        # production models with a maximum queue delay: name -> (delay ms, batch size)
        self._delays: dict[str, tuple[int, int]] = {}
        self._prediction_fp = codec.schema(Prediction).fingerprint
        self._writers: dict[tuple[str, int, str], PredictionWriter] = {}

    # -- registry --------------------------------------------------------------------------
    @property
    def versions(self) -> Mapping[str, Mapping[int, ServingModel]]:
        return self.catalog.versions

    @property
    def production(self) -> Mapping[str, int]:
        return self.catalog.production

    @property
    def traffic(self) -> Mapping[str, Traffic]:
        return self.catalog.traffic

    def install(self, model: ServingModel, *, production: bool) -> None:
        """Add a verified version; with ``production`` it serves unpinned requests from the
        next batch on (batches never see a half-installed model)."""
        catalog = self.catalog
        versions = {**catalog.versions.get(model.name, {}), model.version: model}
        serving = dict(catalog.production)
        if production:
            serving[model.name] = model.version
            if model.model.feature_names:  # a tensor model takes no feature map
                self._reader.expect_maps(model.name, model.model.feature_names)
            if model.model.categorical:
                self._reader.expect_categories(model.name, model.model.categorical)
            self._delays.pop(model.name, None)
            if isinstance(model.model, TensorScorer) and model.model.spec["max_queue_delay_ms"]:
                spec = model.model.spec
                self._delays[model.name] = (spec["max_queue_delay_ms"], spec["max_batch_size"])
        keep = {
            serving.get(model.name),
            catalog.traffic.get(model.name, Traffic()).challenger_version,
        }
        for old in sorted(versions)[: -self.max_versions]:
            if old not in keep:
                del versions[old]
        self.catalog = Catalog({**catalog.versions, model.name: versions}, serving, catalog.traffic)
        self.runs_graphs = self.catalog.runs_graphs()

    def set_traffic(self, model: str, traffic: Traffic) -> None:
        catalog = self.catalog
        self.catalog = Catalog(
            catalog.versions, catalog.production, {**catalog.traffic, model: traffic}
        )

    def hold_s(self, messages: Sequence[Message]) -> float:
        """How long these waiting requests may wait for more before they are scored: when
        every model they name has a maximum queue delay and none has a full batch yet, until
        the soonest of those delays runs out (from its oldest request's timestamp);
        otherwise 0. A model without a queue delay is never made to wait."""
        if not self._delays or not messages:
            return 0.0
        counts: dict[str, int] = defaultdict(int)
        oldest: dict[str, int] = {}
        for message in messages:
            value = message.value or b""
            name = self._reader.model_of(value)
            if name is None and is_json(value):
                named = _JSON_MODEL.search(value[:4096])
                name = named.group(1).decode(errors="replace") if named else None
            if name is None or name not in self._delays:
                return 0.0
            counts[name] += 1
            oldest[name] = min(oldest.get(name, message.timestamp), message.timestamp)
        now_ms = time.time() * 1000
        wait_ms = float("inf")
        for name, count in counts.items():
            delay_ms, batch = self._delays[name]
            if count >= batch:
                return 0.0
            # never longer than the delay: a producer's clock (the record time) may be ahead
            wait_ms = min(wait_ms, delay_ms, oldest[name] + delay_ms - now_ms)
        return max(0.0, wait_ms / 1000)

    # -- the hot path ------------------------------------------------------------------------
    def process(self, messages: Sequence[M]) -> Scored[M]:
        now_ms = int(time.time() * 1000)
        catalog = self.catalog  # the whole batch is scored by one catalog
        result: Scored[M] = Scored()
        groups: dict[tuple[str, int, str], list[Item[M]]] = defaultdict(list)
        columns = self._reader.columns()
        for message in messages:
            try:
                request = self._decode(message.value, columns)
                for version, route in self._routes(catalog, request):
                    groups[(request[1], version, route)].append((message, request))
            except (DecodeError, InvalidEventError) as exc:
                result.reject(message, self._model_hint(message), exc)
        for (name, version, route), items in groups.items():
            model = catalog.versions[name][version]
            if isinstance(model.model, TensorScorer):
                self._score_tensors(model, model.model, route, items, now_ms, result)
                continue
            items = self._without_tensors(model, route, items, result)
            X, good, bad = self._matrix(model, items)
            categories, X, good = self._categories(model, X, good, bad, columns)
            for (message, _), error in bad:
                if route != "shadow":  # the production route reports it once
                    result.reject(message, name, error)
            if not good:
                continue
            try:
                with np.errstate(over="ignore", invalid="ignore"):
                    output = model.model.score(X, categories)
            except Exception as exc:  # onnxruntime's own error types, or a wrong output shape
                # the model failed on this batch: its events are dead-lettered, the other
                # models' groups are scored as usual
                if route != "shadow":
                    failure = InvalidEventError(
                        "model-failed", f"{name} v{version} failed: {str(exc)[:500]}"
                    )
                    for message, _ in good:
                        result.reject(message, name, failure)
                continue
            finite = np.isfinite(output).reshape(len(good), -1)
            if not finite.all():
                # finite but extreme inputs can overflow standardization: never publish NaN
                keep = finite.all(axis=1)
                for i in np.flatnonzero(~keep):
                    if route != "shadow":
                        result.reject(
                            good[i][0],
                            name,
                            InvalidEventError(
                                "non-finite-score", "features overflow the model's arithmetic"
                            ),
                        )
                output = output[keep]
                good = [item for item, k in zip(good, keep.tolist(), strict=True) if k]
                if not good:
                    continue
                X, categories = X[keep], _kept(categories, keep)
            result.groups.append(
                self._encode(model, route, good, output, now_ms, result, X, categories)
            )
        return result

    def _without_tensors(
        self, model: ServingModel, route: str, items: list[Item[M]], result: Scored[M]
    ) -> list[Item[M]]:
        """A feature model's rows; requests that send it tensors are refused."""
        if all(item[1][6] is None for item in items):
            return items
        error = InvalidEventError(
            "unknown-tensors", f"{model.name} v{model.version} takes features, not tensors"
        )
        for message, request in items:
            if request[6] is not None and route != "shadow":
                result.reject(message, model.name, error)
        return [item for item in items if item[1][6] is None]

    def _score_tensors(
        self,
        model: ServingModel,
        scorer: TensorScorer,
        route: str,
        items: list[Item[M]],
        now_ms: int,
        result: Scored[M],
    ) -> None:
        """A tensor model's rows, a chunk at a time (what a fetch of large images holds at
        once is bounded by the chunk, not the fetch): rows already in the inputs' column
        form are read into one array per input; the others are prepared alone (a row that
        cannot be is rejected with its reason); then both are run in batches."""
        shadow = route == "shadow"
        for start in range(0, len(items), scorer.prepare_chunk):
            chunk: list[Item[M]] = []
            for item in items[start : start + scorer.prepare_chunk]:
                if item[1][2]:
                    if not shadow:
                        result.reject(
                            item[0],
                            model.name,
                            InvalidEventError(
                                "extra-features", f"{model.name} takes tensors, not features"
                            ),
                        )
                else:
                    chunk.append(item)
            stacked, rest = scorer.stack([item[1][6] or () for item in chunk])
            batches: list[tuple[list[Item[M]], list[Prepared] | Stacked]] = []
            if stacked is not None:
                taken = sorted(set(range(len(chunk))) - set(rest))
                batches.append(([chunk[i] for i in taken], stacked))
            prepared, good = self._prepare_rows(
                model, scorer, [chunk[i] for i in rest], None if shadow else result
            )
            if good:
                batches.append((good, prepared))
            answered = [
                answer
                for rows, batch in batches
                if (answer := self._answer_tensors(model, scorer, shadow, rows, batch, result))
            ]
            if not answered:
                continue
            good, outputs = answered[0]
            if len(answered) > 1:  # back in the order the requests came
                position = {id(item[0]): i for i, item in enumerate(chunk)}
                good = [item for rows, _ in answered for item in rows]
                order = sorted(range(len(good)), key=lambda i: position[id(good[i][0])])
                merged = concatenate([outputs for _, outputs in answered])
                good = [good[i] for i in order]
                outputs = TensorOutputs(
                    merged.scores[order] if merged.scores is not None else None,
                    {k: v[order] for k, v in merged.outputs.items()},
                )
            result.groups.append(
                self._encode_tensors(model, scorer, route, good, outputs, now_ms, result)
            )

    @staticmethod
    def _prepare_rows(
        model: ServingModel,
        scorer: TensorScorer,
        items: list[Item[M]],
        result: Scored[M] | None,
    ) -> tuple[list[Prepared], list[Item[M]]]:
        """Each row prepared alone; a row that cannot be is reported to ``result`` (None:
        the shadow route, whose rows the production route reports)."""
        prepared: list[Prepared] = []
        good: list[Item[M]] = []
        for item in items:
            message, request = item
            try:
                prepared.append(scorer.prepare(request[6] or ()))
                good.append(item)
            except InvalidEventError as exc:
                if result is not None:
                    result.reject(message, model.name, exc)
            except Exception as exc:  # a decoder's own error: this row, not the batch
                if result is not None:
                    failure = InvalidEventError(
                        "internal-error", f"{type(exc).__name__}: {str(exc)[:300]}"
                    )
                    result.reject(message, model.name, failure)
        return prepared, good

    def _answer_tensors(
        self,
        model: ServingModel,
        scorer: TensorScorer,
        shadow: bool,
        items: list[Item[M]],
        batch: list[Prepared] | Stacked,
        result: Scored[M],
    ) -> tuple[list[Item[M]], TensorOutputs] | None:
        """The rows answered with finite outputs (the others rejected with the reason)."""
        ran = self._run_tensors(model, scorer, shadow, items, batch, result)
        if ran is None:
            return None
        good, outputs = ran
        keep = _finite_rows(outputs, len(good))
        if not keep.all():
            for i in np.flatnonzero(~keep).tolist():
                if not shadow:
                    result.reject(
                        good[i][0],
                        model.name,
                        InvalidEventError("non-finite-score", "the model's outputs are not finite"),
                    )
            rows = np.flatnonzero(keep)
            good = [good[i] for i in rows.tolist()]
            outputs = TensorOutputs(
                outputs.scores[rows] if outputs.scores is not None else None,
                {k: v[rows] for k, v in outputs.outputs.items()},
            )
            if not good:
                return None
        return good, outputs

    def _run_tensors(
        self,
        model: ServingModel,
        scorer: TensorScorer,
        shadow: bool,
        items: list[Item[M]],
        batch: list[Prepared] | Stacked,
        result: Scored[M],
    ) -> tuple[list[Item[M]], TensorOutputs] | None:
        """The rows' answers. When the graph fails on the batch (onnxruntime raises), each
        row runs alone: the rows it fails on are dead-lettered (``model-failed``), the others
        answered, so one hostile row cannot fail its neighbours."""
        try:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                return items, scorer.infer(batch)
        except Exception as exc:  # onnxruntime's own error types, or a wrong output shape
            if len(items) == 1:
                if not shadow:
                    failure = InvalidEventError(
                        "model-failed", f"{model.name} v{model.version} failed: {str(exc)[:500]}"
                    )
                    result.reject(items[0][0], model.name, failure)
                return None
        kept: list[Item[M]] = []
        answers: list[TensorOutputs] = []
        for i, item in enumerate(items):
            row: list[Prepared] | Stacked = (
                batch.rows([i]) if isinstance(batch, Stacked) else [batch[i]]
            )
            alone = self._run_tensors(model, scorer, shadow, [item], row, result)
            if alone is not None:
                kept.append(item)
                answers.append(alone[1])
        return (kept, concatenate(answers)) if kept else None

    def _encode_tensors(
        self,
        model: ServingModel,
        scorer: TensorScorer,
        route: str,
        items: list[Item[M]],
        outputs: TensorOutputs,
        now_ms: int,
        result: Scored[M],
    ) -> ScoredGroup[M]:
        requested = _accounted(model, route, items, now_ms, result)
        shadow = route == "shadow"
        n = len(items)
        scores = outputs.scores
        labels: list[str | float]
        if scores is None:
            labels = [""] * n
        elif scorer.task == Task.REGRESSION:
            labels = scores.tolist()
        else:
            labels = list(scorer.labels(scores))
        tensor_rows = [
            [
                _output_tensor(name, value[i], scorer.output_datatypes[name])
                for name, value in outputs.outputs.items()
            ]
            for i in range(n)
        ]
        ids = [req[0] for _, req in items]
        if self.output_format == "json":
            values = self._tensor_json(
                model, scorer, route, items, labels, scores, tensor_rows, requested, now_ms
            )
        else:
            writer = self._writer(model, route)
            if scores is None or scorer.task == Task.REGRESSION:
                sections = [b"\x00"] * n
            elif scorer.top_k:
                sections = writer.top_sections(scores, scorer.top_k)
            else:
                sections = writer.score_sections(scores)
            values = writer.encode_rows(
                ids,
                writer.label_sections(labels),
                sections,
                [encode_outputs(row) for row in tensor_rows],
                requested,
                now_ms,
            )
        embedding = _embedding(model.head, outputs, n)
        rows = ScoredRows(
            model.name,
            model.version,
            now_ms,
            model.head.features_id if model.head and embedding.shape[1] else features_id([]),
            embedding,
            [],
            list(scorer.classes) if scores is not None and scorer.task != Task.REGRESSION else [],
            np.empty((n, 0)) if scores is None else np.asarray(scores, np.float64).reshape(n, -1),
            labels,
        )
        return ScoredGroup(shadow, [message for message, _ in items], values, ids, rows)

    def _tensor_json(
        self,
        model: ServingModel,
        scorer: TensorScorer,
        route: str,
        items: list[Item[M]],
        labels: Sequence[str | float],
        scores: np.ndarray | None,
        tensor_rows: list[list[NamedTensor]],
        requested: list[int],
        now_ms: int,
    ) -> list[bytes]:
        out = []
        classes = scorer.classes
        for i, (_, req) in enumerate(items):
            row_scores: dict[str, float] = {}
            if scores is not None and scorer.task != Task.REGRESSION:
                order = np.argsort(-scores[i], kind="stable")[: scorer.top_k or len(classes)]
                row_scores = {classes[j]: float(scores[i, j]) for j in order.tolist()}
            out.append(
                self.codec.encode_json(
                    Prediction,
                    {
                        "request_id": req[0].decode(),
                        "model": model.name,
                        "version": model.version,
                        "digest_prefix": model.digest_prefix,
                        "prediction": labels[i],
                        "scores": row_scores,
                        "route": route,
                        "requested_at_ms": requested[i],
                        "predicted_at_ms": now_ms,
                        "outputs": tensor_rows[i],
                    },
                )
            )
        return out

    def _writer(self, model: ServingModel, route: str) -> PredictionWriter:
        writer = self._writers.get((model.name, model.version, route))
        if writer is None:
            writer = self._writers[(model.name, model.version, route)] = PredictionWriter(
                self._prediction_fp,
                model.name,
                model.version,
                model.digest_prefix,
                model.model.classes
                if model.model.task not in (Task.REGRESSION, Task.EMBEDDING)
                else [],
                route,
            )
        return writer

    def _decode(self, data: bytes | None, columns: CategoryColumns | None = None) -> Request:
        fast = (
            self._reader.read(data, columns)
            if data and len(data) <= self.limits.max_bytes
            else None
        )
        if fast is not None:
            request = fast
        else:  # any other form, or not a request at all: the total decoder says which
            r = self.codec.decode_any(data, PredictionRequest, self.limits)
            request = (
                r["request_id"].encode(),
                r["model"],
                r["features"],
                r["version"],
                r["sent_at_ms"],
                r.get("categories") or None,
                r.get("tensors") or None,
            )
        check_request_id(request[0].decode(), None)
        return request

    @staticmethod
    def _routes(catalog: Catalog, request: Request) -> Iterable[tuple[int, str]]:
        name = request[1]
        versions = catalog.versions.get(name)
        if not versions or name not in catalog.production:
            raise InvalidEventError("unknown-model", f"no production version of {name!r}")
        pinned = request[3]
        if pinned is not None:
            if pinned not in versions:
                raise InvalidEventError(
                    "unknown-version", f"{name} v{pinned} is not loaded by this predictor"
                )
            return ((pinned, "pinned"),)
        traffic = catalog.traffic.get(name)
        production = catalog.production[name]
        challenger = traffic.challenger_version if traffic is not None else None
        if traffic is None or challenger is None or challenger not in versions:
            return ((production, "production"),)
        if traffic.shadow:
            return ((production, "production"), (challenger, "shadow"))
        if zlib.crc32(request[0]) < traffic.fraction * FRACTION_SCALE:
            return ((challenger, "challenger"),)
        return ((production, "production"),)

    def _matrix(
        self, model: ServingModel, items: list[Item[M]]
    ) -> tuple[np.ndarray, list[Item[M]], list[tuple[Item[M], InvalidEventError]]]:
        d = model.model.n_features
        width = 8 * d
        bad: list[tuple[Item[M], InvalidEventError]] = []
        payloads = [item[1][2] for item in items]
        template = model.template
        if all(type(p) is bytes and len(p) == width for p in payloads):
            # all packed: one copy into the batch matrix
            packed = cast(list[bytes], payloads)
            X = np.frombuffer(b"".join(packed), dtype="<f8").reshape(len(items), d)
        elif all(type(p) is MapSection and len(p.raw) == template.length for p in payloads):
            # maps in feature order: every key byte checked and every value read at once
            sections = cast(list[MapSection], payloads)
            X, matches = template.matrix([p.raw for p in sections])
            if not matches.all():
                X, items, bad = self._rows(model, items, X, matches)
        else:
            X, items, bad = self._rows(model, items, None, None)
        finite = np.isfinite(X).all(axis=1)
        if not finite.all():
            for i in np.flatnonzero(~finite):
                bad.append(
                    (items[i], InvalidEventError("non-finite", "features contain NaN or infinity"))
                )
            keep = np.flatnonzero(finite)
            X = X[keep]
            items = [items[i] for i in keep]
        return X, items, bad

    @staticmethod
    def _categories(
        model: ServingModel,
        X: np.ndarray,
        items: list[Item[M]],
        bad: list[tuple[Item[M], InvalidEventError]],
        columns: CategoryColumns,
    ) -> tuple[Categories | None, np.ndarray, list[Item[M]]]:
        """The categorical values of the rows, for a model that takes some: one [rows,
        categorical] matrix in the model's order when every row was read in that order (the
        clients' form), else a map per row; rows that lack one, or carry one the model does
        not know, join ``bad``."""
        wanted = model.model.categorical
        given = [item[1][5] for item in items]
        if not wanted and all(g is None for g in given):
            return None, X, items
        order = columns.orders.get(model.name.encode())
        if wanted and order is not None and order.names == tuple(wanted):
            if all(type(g) is int for g in given):
                return columns.matrix(cast(list[int], given), len(wanted)), X, items
        known = set(wanted)
        keep: list[int] = []
        rows: list[Mapping[str, str]] = []
        for i, (item, categories) in enumerate(zip(items, given, strict=True)):
            present: Mapping[str, str]
            if isinstance(categories, int):  # read in the order of another version
                present = columns.row(item[1][1], categories)
            else:
                present = categories or {}
            missing = [c for c in wanted if c not in present]
            extra = [c for c in present if c not in known]
            if missing:
                bad.append(
                    (
                        item,
                        InvalidEventError("missing-features", f"missing categories {missing[:5]}"),
                    )
                )
            elif extra:
                bad.append(
                    (item, InvalidEventError("extra-features", f"unknown categories {extra[:5]}"))
                )
            else:
                keep.append(i)
                rows.append(present)
        if len(keep) != len(items):
            X, items = X[keep], [items[i] for i in keep]
        return rows if wanted else None, X, items

    def _rows(
        self,
        model: ServingModel,
        items: list[Item[M]],
        fast: np.ndarray | None,
        fast_ok: np.ndarray | None,
    ) -> tuple[np.ndarray, list[Item[M]], list[tuple[Item[M], InvalidEventError]]]:
        """Row by row, for mixed forms; ``fast`` rows flagged ok are taken as they are."""
        d = model.model.n_features
        width = 8 * d
        names = model.model.feature_names
        X = np.empty((len(items), d))
        good_rows: list[int] = []
        bad: list[tuple[Item[M], InvalidEventError]] = []
        for i, (message, request) in enumerate(items):
            features = request[2]
            try:
                if fast is not None and fast_ok is not None and fast_ok[i]:
                    X[i] = fast[i]
                elif isinstance(features, MapSection):  # not in feature order: decode fully
                    decoded = self.codec.decode(message.value, PredictionRequest)["features"]
                    if not isinstance(decoded, dict):
                        raise InvalidEventError("invalid-request", "map features did not decode")
                    X[i] = self._named(decoded, names, d)
                elif isinstance(features, bytes):
                    if len(features) != width:
                        raise InvalidEventError(
                            "wrong-feature-count",
                            f"packed features have {len(features)} "
                            f"bytes, {model.name} v{model.version} needs {width}",
                        )
                    X[i] = np.frombuffer(features, dtype="<f8")
                elif isinstance(features, dict):
                    X[i] = self._named(features, names, d)
                else:
                    if len(features) != d:
                        raise InvalidEventError(
                            "wrong-feature-count",
                            f"{len(features)} features, {model.name} v{model.version} needs {d}",
                        )
                    X[i] = features
                good_rows.append(i)
            except InvalidEventError as exc:
                bad.append(((message, request), exc))
            except DecodeError as exc:
                bad.append(((message, request), InvalidEventError(exc.reason, str(exc))))
        if len(good_rows) != len(items):
            X = X[good_rows]
            items = [items[i] for i in good_rows]
        return X, items, bad

    @staticmethod
    def _named(features: Mapping[str, float], names: list[str], d: int) -> list[float]:
        if len(features) != d:
            raise _feature_error(features, names)
        try:
            return [features[n] for n in names]
        except KeyError:
            raise _feature_error(features, names) from None

    def _encode(
        self,
        model: ServingModel,
        route: str,
        items: list[Item[M]],
        output: np.ndarray,
        now_ms: int,
        result: Scored[M],
        X: np.ndarray,
        categories: Categories | None,
    ) -> ScoredGroup[M]:
        requested = _accounted(model, route, items, now_ms, result)
        shadow = route == "shadow"
        classes = list(model.model.classes) if model.model.task != Task.REGRESSION else []
        scores = np.asarray(output, dtype=np.float64).reshape(len(items), -1)
        predictions: list[Label] = (
            [classes[i] for i in scores.argmax(axis=1).tolist()]
            if classes
            else scores[:, 0].tolist()
        )
        if self.output_format == "json":
            values = self._encode_json(model, route, items, output, requested, now_ms)
        else:
            writer = self._writer(model, route)
            values = writer.encode([req[0] for _, req in items], output, requested, now_ms)
        rows = ScoredRows(
            model.name,
            model.version,
            now_ms,
            features_id(model.model.feature_names),
            X,
            _row_major(categories, model.model.categorical),
            classes,
            scores,
            predictions,
        )
        return ScoredGroup(
            shadow, [message for message, _ in items], values, [req[0] for _, req in items], rows
        )

    def _encode_json(
        self,
        model: ServingModel,
        route: str,
        items: list[Item[M]],
        output: np.ndarray,
        requested: list[int],
        now_ms: int,
    ) -> list[bytes]:
        classes = model.model.classes
        if model.model.task == Task.REGRESSION:
            predictions: list[Any] = output.tolist()
            scores: list[dict[str, float]] = [{}] * len(items)
        else:
            predictions = [classes[i] for i in output.argmax(axis=1).tolist()]
            scores = [dict(zip(classes, row, strict=True)) for row in output.tolist()]
        return [
            self.codec.encode_json(
                Prediction,
                {
                    "request_id": req[0].decode(),
                    "model": model.name,
                    "version": model.version,
                    "digest_prefix": model.digest_prefix,
                    "prediction": prediction,
                    "scores": score,
                    "route": route,
                    "requested_at_ms": requested_ms,
                    "predicted_at_ms": now_ms,
                },
            )
            for (_, req), prediction, score, requested_ms in zip(
                items, predictions, scores, requested, strict=True
            )
        ]

    def _model_hint(self, message: Message) -> str:
        """The model a bad message names, when that model is known (bounded metric labels).
        A bad message is not parsed again: a JSON one is only searched for a model field."""
        value = message.value or b""
        named = _JSON_MODEL.search(value[:4096]) if is_json(value) else None
        hint = named.group(1).decode(errors="replace") if named else ""
        return hint if hint in self.versions else ""


def _accounted(
    model: ServingModel, route: str, items: list[Item[M]], now_ms: int, result: Scored[M]
) -> list[int]:
    """When each request was made (its sent_at_ms, else its record's time), counted into the
    batch's predictions and latencies."""
    requested = [req[4] if req[4] is not None else msg.timestamp for msg, req in items]
    shadow = route == "shadow"
    if not shadow:
        result.latencies_ms.append((model.name, now_ms - np.asarray(requested, np.int64)))
    result.predicted[(model.name, model.version, shadow)] += len(items)
    return requested


def _kept(categories: Categories | None, keep: np.ndarray) -> Categories | None:
    """The categorical values of the rows ``keep`` flags (the rows that are answered)."""
    if categories is None or isinstance(categories, np.ndarray):
        return categories if categories is None else categories[keep]
    return [row for row, k in zip(categories, keep.tolist(), strict=True) if k]


def _embedding(head: HeadInput | None, outputs: TensorOutputs, n: int) -> np.ndarray:
    """The rows' embedding vectors [n, width] for the monitor's head ([n, 0] when the
    model has no head input or the graph gave another shape)."""
    value = outputs.outputs.get(head.name) if head is not None else None
    if head is None or value is None or value.dtype == object or value.shape != (n, head.width):
        return np.empty((n, 0))
    return np.asarray(value, np.float64)


def _row_major(categories: Categories | None, names: Sequence[str]) -> list[str]:
    """A group's categorical values, row after row in the model's order."""
    if categories is None or not names:
        return []
    if isinstance(categories, np.ndarray):
        return [str(v) for v in categories.ravel().tolist()]
    return [row[name] for row in categories if row is not None for name in names]


def _finite_rows(outputs: TensorOutputs, n: int) -> np.ndarray:
    """Which rows of a tensor model's answers are finite everywhere."""
    keep = np.ones(n, dtype=bool)
    if outputs.scores is not None:
        keep &= np.isfinite(outputs.scores).reshape(n, -1).all(axis=1)
    for value in outputs.outputs.values():
        if value.dtype == object:  # rows of different lengths
            keep &= np.fromiter((np.isfinite(v).all() for v in value), bool, count=n)
        elif value.dtype.kind in "fc":
            keep &= np.isfinite(value).reshape(n, -1).all(axis=1)
    return keep


def _output_tensor(name: str, value: np.ndarray, datatype: str) -> NamedTensor:
    return {
        "name": name,
        "datatype": TensorDatatype(datatype),
        "shape": list(np.shape(value)),
        "data": np.ascontiguousarray(value, dtype=tensors.NUMPY_TYPES[datatype]).tobytes(),
    }


def _feature_error(features: Mapping[str, Any], names: list[str]) -> InvalidEventError:
    known = set(names)
    missing = [n for n in names if n not in features]
    if missing:
        return InvalidEventError("missing-features", f"missing features {missing[:5]}")
    extra = [k for k in features if k not in known]
    return InvalidEventError("extra-features", f"unknown features {extra[:5]}")
