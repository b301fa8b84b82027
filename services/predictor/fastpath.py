"""Hand-specialized Avro for the predictor's hot path; pure, no Kafka.

A generic Avro library interprets the schema for every message. On the hot path the
schemas are known: a PredictionRequest written with the current schema is parsed directly
(other writers fall back to fastavro), and the Predictions of one (model, version, route)
group share every constant part, so only the request id, the scores and the request time
are written per event - the score maps of a whole group come from one numpy structured
array. Both produce exactly the bytes fastavro would (unit-tested byte for byte).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from modelstream.contracts.codec import MAGIC
from modelstream.contracts.limits import INT_RANGE, LONG_RANGE
from modelstream.contracts.records import NamedTensor, TensorDatatype
from modelstream.contracts.wire import read_long, read_string, string, zigzag
from modelstream.errors import DecodeError, InvalidEventError

MAX_CATEGORIES = 10_000  # categorical features of one request
MAX_TENSORS = 1_000  # named tensors of one request
DATATYPE_SYMBOLS = list(TensorDatatype)  # the Avro enum's symbols, in order


class MapTemplate:
    """The exact bytes of a one-block Avro map<double> holding a model's features in its
    feature order, with the 8-byte value slots left open."""

    def __init__(self, feature_names: Sequence[str]) -> None:
        template = bytearray(zigzag(len(feature_names)))
        value_slots: list[int] = []
        for name in feature_names:
            template += string(name.encode())
            value_slots.extend(range(len(template), len(template) + 8))
            template += bytes(8)
        template += b"\x00"
        self.length = len(template)
        self.value_index = np.asarray(value_slots, dtype=np.intp)
        key_mask = np.ones(self.length, dtype=bool)
        key_mask[self.value_index] = False
        self.key_index = np.flatnonzero(key_mask)
        self.key_bytes = np.frombuffer(bytes(template), dtype=np.uint8)[self.key_index]

    def matrix(self, sections: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Features of many map sections at once, and which rows really match the keys."""
        raw = np.frombuffer(b"".join(sections), dtype=np.uint8).reshape(len(sections), -1)
        matches = (raw[:, self.key_index] == self.key_bytes).all(axis=1)
        values = np.ascontiguousarray(raw[:, self.value_index]).view("<f8")
        return values, matches


class MapSection:
    """Map features whose bytes have the template's length; checked batch-wise later."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw


class CategoryColumns:
    """The categorical values of one batch's requests, read straight into one flat column.

    A request whose categories map holds exactly its model's categorical features, in the
    model's order, in one block (what the clients write) adds its values here and keeps only
    where they start; the batch's values become one object array and each group's [rows,
    features] matrix one fancy index into it, with no dict per request. ``orders`` is the
    reader's expectation when the batch began (the reader replaces it whole on a change, so
    a batch scored in a worker thread sees one consistent expectation)."""

    __slots__ = ("_array", "orders", "values")

    def __init__(self, orders: Mapping[bytes, CategoryOrder]) -> None:
        self.orders = orders
        self.values: list[str] = []
        self._array: np.ndarray | None = None

    def matrix(self, starts: Sequence[int], width: int) -> np.ndarray:
        """[rows, width] object array of the values that begin at ``starts``."""
        if self._array is None or len(self._array) != len(self.values):
            self._array = np.empty(len(self.values), dtype=object)
            self._array[:] = self.values
        first = np.fromiter(starts, dtype=np.intp, count=len(starts))
        return self._array[first[:, None] + np.arange(width)]

    def row(self, model: str, start: int) -> dict[str, str]:
        """One request's values as a map (rows scored by another version than the one
        whose order they were read in)."""
        names = self.orders[model.encode()].names
        return dict(zip(names, self.values[start : start + len(names)], strict=True))


class CategoryOrder:
    """A model's categorical features in order, with each name's Avro string encoding."""

    __slots__ = ("keys", "names")

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.keys = tuple(string(name.encode()) for name in names)


# A request's features as the hot path holds them: packed bytes, a map section still to be
# checked against the model's template, or decoded map/list values.
RequestFeatures = bytes | MapSection | dict[str, float] | list[float]
# A request's categories: a map (any order, decoded), where its values start in the batch's
# CategoryColumns (int), or None when it has none.
RequestCategories = dict[str, str] | int | None
# id, model, features, version, sent_at_ms, categories, tensors (None when there are none)
Request = tuple[
    bytes,
    str,
    RequestFeatures,
    int | None,
    int | None,
    RequestCategories,
    list[NamedTensor] | None,
]


def _optional_long(data: bytes, pos: int, field: str) -> tuple[int | None, int]:
    """A ["null", "long"] union."""
    branch, pos = read_long(data, pos)
    if branch == 0:
        return None, pos
    if branch == 1:
        return read_long(data, pos)
    raise DecodeError(f"bad union branch {branch} for {field}")


def _string_map(data: bytes, pos: int) -> tuple[dict[str, str] | None, int]:
    """An Avro map<string> (the request's categories); None when it is empty."""
    count, pos = read_long(data, pos)
    if count == 0:
        return None, pos
    out: dict[str, str] = {}
    while count != 0:
        if count < 0:  # a block written with its byte size first
            count = -count
            _, pos = read_long(data, pos)
        if len(out) + count > MAX_CATEGORIES:
            raise InvalidEventError("too-many-items", f"more than {MAX_CATEGORIES} categories")
        for _ in range(count):
            key, pos = read_string(data, pos)
            value, pos = read_string(data, pos)
            try:
                out[key.decode()] = value.decode()
            except UnicodeDecodeError:
                raise DecodeError("PredictionRequest categories are not UTF-8") from None
        count, pos = read_long(data, pos)
    return out, pos


def _ordered_values(
    data: bytes, pos: int, order: CategoryOrder, values: list[str]
) -> tuple[int, int] | None:
    """A categories map written as one block of exactly ``order``'s keys in that order:
    its values appended to ``values``; (where they start, the position after the map), or
    None when the map is in any other form (the caller then decodes it as a map)."""
    count, pos = read_long(data, pos)
    if count != len(order.keys):
        return None
    start = len(values)
    for key in order.keys:
        end = pos + len(key)
        if data[pos:end] != key:
            del values[start:]
            return None
        value, pos = read_string(data, end)
        try:
            values.append(value.decode())
        except UnicodeDecodeError:
            del values[start:]
            raise DecodeError("PredictionRequest categories are not UTF-8") from None
    end_of_map, pos = read_long(data, pos)
    if end_of_map != 0:
        del values[start:]
        return None
    return start, pos


def _long_array(data: bytes, pos: int, limit: int) -> tuple[list[int], int]:
    """An Avro array<long> (a tensor's shape)."""
    out: list[int] = []
    count, pos = read_long(data, pos)
    while count != 0:
        if count < 0:
            count = -count
            _, pos = read_long(data, pos)
        if len(out) + count > limit:
            raise InvalidEventError("invalid-tensor", f"a shape of more than {limit} dimensions")
        for _ in range(count):
            value, pos = read_long(data, pos)
            out.append(value)
        count, pos = read_long(data, pos)
    return out, pos


def _tensors(data: bytes, pos: int) -> tuple[list[NamedTensor] | None, int]:
    """An Avro array<NamedTensor>; None when it is empty. Only the encoding is checked here
    (shapes against bytes are the model's to check)."""
    count, pos = read_long(data, pos)
    if count == 0:
        return None, pos
    out: list[NamedTensor] = []
    while count != 0:
        if count < 0:
            count = -count
            _, pos = read_long(data, pos)
        if len(out) + count > MAX_TENSORS:
            raise InvalidEventError("too-many-items", f"more than {MAX_TENSORS} tensors")
        for _ in range(count):
            name, pos = read_string(data, pos)
            datatype, pos = read_long(data, pos)
            if not 0 <= datatype < len(DATATYPE_SYMBOLS):
                raise DecodeError(f"bad tensor datatype index {datatype}")
            shape, pos = _long_array(data, pos, 64)
            raw, pos = read_string(data, pos)
            try:
                text = name.decode()
            except UnicodeDecodeError:
                raise DecodeError("a tensor name is not UTF-8") from None
            out.append(
                {"name": text, "datatype": DATATYPE_SYMBOLS[datatype], "shape": shape, "data": raw}
            )
        count, pos = read_long(data, pos)
    return out, pos


class RequestReader:
    """Parses PredictionRequests written with the current schema whose features are packed;
    returns None for any other form (map or list features) so the caller uses fastavro."""

    def __init__(self, fingerprint: bytes) -> None:
        self.header = MAGIC + fingerprint
        self._models: dict[bytes, str] = {}
        self.templates: dict[bytes, MapTemplate] = {}
        self.category_orders: Mapping[bytes, CategoryOrder] = {}

    def expect_maps(self, model: str, feature_names: Sequence[str]) -> None:
        """Map features of ``model`` written in this order take the fast path."""
        self.templates[model.encode()] = MapTemplate(feature_names)

    def expect_categories(self, model: str, names: Sequence[str]) -> None:
        """Categories of ``model`` written in this order are read into the batch's columns."""
        self.category_orders = {**self.category_orders, model.encode(): CategoryOrder(names)}

    def columns(self) -> CategoryColumns:
        """Where one batch's categorical values go (pass it to every :meth:`read`)."""
        return CategoryColumns(self.category_orders)

    def model_of(self, data: bytes) -> str | None:
        """The model a request names, read without decoding the rest (None: not a request
        of the current schema, or unreadable)."""
        if data[:10] != self.header:
            return None
        try:
            _, pos = read_string(data, 10)
            model, _ = read_string(data, pos)
            return self._models.get(model) or model.decode()
        except (IndexError, DecodeError, UnicodeDecodeError):
            return None

    def read(self, data: bytes, columns: CategoryColumns | None = None) -> Request | None:
        """The request, or None for a form this reader leaves to the generic decoder;
        categories in the model's order go to ``columns`` when given."""
        if data[:10] != self.header:
            return None
        kind = -1  # features union branch: 0 bytes, 1 map, 2 array
        try:
            request_id, pos = read_string(data, 10)
            model_bytes, pos = read_string(data, pos)
            kind, pos = read_long(data, pos)
            features: RequestFeatures
            if kind == 0:
                features, pos = read_string(data, pos)
            elif kind == 1 and model_bytes in self.templates:
                end = pos + self.templates[model_bytes].length
                if end > len(data):
                    return None
                features = MapSection(data[pos:end])
                pos = end
            else:  # arrays, and maps of models without a template: generic decoding
                return None
            version, pos = _optional_long(data, pos, "version")
            sent_at, pos = _optional_long(data, pos, "sent_at_ms")
            categories: RequestCategories = None
            order = columns.orders.get(model_bytes) if columns is not None else None
            read = None
            if order is not None and columns is not None:
                read = _ordered_values(data, pos, order, columns.values)
            if read is not None:
                categories, pos = read
            else:
                categories, pos = _string_map(data, pos)
            tensors, pos = _tensors(data, pos)
            if version is not None and not INT_RANGE[0] <= version <= INT_RANGE[1]:
                raise InvalidEventError("out-of-range", f"version {version} is not an Avro int")
            if sent_at is not None and not LONG_RANGE[0] <= sent_at <= LONG_RANGE[1]:
                raise InvalidEventError("out-of-range", f"sent_at_ms {sent_at} is not a long")
        except IndexError:
            if kind == 1:
                return None  # a map of another shape: let the generic decoder judge it
            raise DecodeError("corrupt PredictionRequest body: truncated") from None
        except DecodeError:
            if kind == 1:
                return None
            raise
        if pos != len(data):
            if kind == 1:
                return None
            raise DecodeError(f"{len(data) - pos} trailing bytes after PredictionRequest")
        try:
            request_id.decode()  # written back verbatim as an Avro string: must be UTF-8
            model = self._models.get(model_bytes) or model_bytes.decode()
        except UnicodeDecodeError:
            raise DecodeError("PredictionRequest strings are not UTF-8") from None
        if model_bytes not in self._models and len(self._models) < 10_000:
            self._models[model_bytes] = model
        return request_id, model, features, version, sent_at, categories, tensors


class PredictionWriter:
    """Encodes the Predictions of one (model, version, route) group."""

    def __init__(
        self,
        fingerprint: bytes,
        model: str,
        version: int,
        digest_prefix: str,
        classes: Sequence[str],
        route: str,
    ) -> None:
        self.header = MAGIC + fingerprint
        self.middle = string(model.encode()) + zigzag(version) + string(digest_prefix.encode())
        self.classes = list(classes)
        self.route = string(route.encode())
        if self.classes:
            keys = [string(c.encode()) for c in self.classes]
            # Prediction union branch 0 (string) for each class label
            self.labels = [zigzag(0) + string(c.encode()) for c in self.classes]
            fields = []
            for j, key in enumerate(keys):
                fields += [(f"k{j}", f"S{len(key)}"), (f"v{j}", "<f8")]
            self.score_dtype = np.dtype(
                [("count", f"S{len(zigzag(len(keys)))}"), *fields, ("end", "S1")]
            )
            self.score_keys = keys

    def score_sections(self, output: np.ndarray) -> list[bytes]:
        """Each row's scores map over every class, from one numpy structured array."""
        n = len(output)
        scores = np.empty(n, dtype=self.score_dtype)
        scores["count"] = zigzag(len(self.classes))
        for j, key in enumerate(self.score_keys):
            scores[f"k{j}"] = key
            scores[f"v{j}"] = output[:, j]
        scores["end"] = b"\x00"
        blob = scores.tobytes()
        size = self.score_dtype.itemsize
        return [blob[i * size : (i + 1) * size] for i in range(n)]

    def top_sections(self, output: np.ndarray, k: int) -> list[bytes]:
        """Each row's scores map over its k highest classes, highest first."""
        top = np.argsort(-output, axis=1, kind="stable")[:, :k]
        values = np.take_along_axis(output, top, axis=1).astype("<f8")
        head, keys = zigzag(k), self.score_keys
        return [
            head
            + b"".join(keys[j] + values[i, c].tobytes() for c, j in enumerate(row.tolist()))
            + b"\x00"
            for i, row in enumerate(top)
        ]

    @staticmethod
    def label_sections(labels: Sequence[str | float]) -> list[bytes]:
        """The Prediction's ``prediction`` union: a class label (string) or a value."""
        return [
            zigzag(0) + string(label.encode())
            if isinstance(label, str)
            else b"\x02" + np.float64(label).astype("<f8").tobytes()
            for label in labels
        ]

    def encode(
        self,
        request_ids: Sequence[bytes],
        output: np.ndarray,
        requested_ms: Sequence[int],
        predicted_ms: int,
    ) -> list[bytes]:
        n = len(request_ids)
        if self.classes:
            labels = [self.labels[i] for i in output.argmax(axis=1).tolist()]
            score_bytes = self.score_sections(output)
        else:  # regression: union branch 1 (double), empty scores map
            values = np.ascontiguousarray(output, dtype="<f8").tobytes()
            labels = [b"\x02" + values[i * 8 : (i + 1) * 8] for i in range(n)]
            score_bytes = [b"\x00"] * n
        return self.encode_rows(request_ids, labels, score_bytes, None, requested_ms, predicted_ms)

    def encode_rows(
        self,
        request_ids: Sequence[bytes],
        labels: Sequence[bytes],
        scores: Sequence[bytes],
        outputs: Sequence[bytes] | None,
        requested_ms: Sequence[int],
        predicted_ms: int,
    ) -> list[bytes]:
        """Predictions from their encoded parts: ``labels`` (:meth:`label_sections`),
        ``scores`` (:meth:`score_sections` or :meth:`top_sections`) and ``outputs``
        (:func:`encode_outputs`; None: no output tensors)."""
        stamps: dict[int, bytes] = {}
        tail = zigzag(predicted_ms)
        no_outputs = b"\x00"
        out = []
        header, middle, route = self.header, self.middle, self.route
        for i, rid in enumerate(request_ids):
            requested = requested_ms[i]
            stamp = stamps.get(requested)
            if stamp is None:
                stamp = stamps[requested] = zigzag(requested)
            out.append(
                b"".join(
                    (
                        header,
                        zigzag(len(rid)),
                        rid,
                        middle,
                        labels[i],
                        scores[i],
                        route,
                        stamp,
                        tail,
                        outputs[i] if outputs is not None else no_outputs,
                    )
                )
            )
        return out


def encode_outputs(tensors: Sequence[NamedTensor]) -> bytes:
    """An Avro array<NamedTensor> (a Prediction's outputs)."""
    if not tensors:
        return b"\x00"
    parts = [zigzag(len(tensors))]
    for tensor in tensors:
        parts.append(string(tensor["name"].encode()))
        parts.append(zigzag(DATATYPE_SYMBOLS.index(TensorDatatype(tensor["datatype"]))))
        shape = tensor["shape"]
        parts.append(
            (zigzag(len(shape)) + b"".join(zigzag(d) for d in shape) + b"\x00")
            if shape
            else b"\x00"
        )
        parts.append(string(tensor["data"]))
    parts.append(b"\x00")
    return b"".join(parts)
