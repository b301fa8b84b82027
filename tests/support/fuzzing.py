"""Hostile input for every input topic: hypothesis strategies, and a seeded generator of the
same families for runs through the real broker.

Families: random bytes, truncated Avro, Avro with a wrong schema fingerprint, JSON with
wrong types, huge feature vectors, NaN/inf, unknown models, oversized messages, and valid
messages (so that the handlers' good path runs too).
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import numpy as np
from hypothesis import strategies as st

from modelstream.contracts.codec import default_codec
from modelstream.contracts.records import RECORD_TYPES

CODEC = default_codec()
INPUT_TYPES = {
    "requests": "PredictionRequest",
    "training": "TrainingExample",
    "feedback": "Feedback",
    "control": "Command",
}

numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**6), 10**6))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=10,
)


def valid_record(type_name: str, model: str, features: Any, label: Any = "1") -> dict[str, Any]:
    if type_name == "PredictionRequest":
        return {
            "request_id": "x",
            "model": model,
            "features": features,
            "version": None,
            "sent_at_ms": None,
        }
    if type_name == "TrainingExample":
        return {
            "model": model,
            "features": features,
            "label": label,
            "example_id": None,
            "timestamp_ms": None,
        }
    if type_name == "Feedback":
        return {"request_id": "x", "model": model, "label": label, "timestamp_ms": None}
    return {
        "model": model,
        "action": "TRAIN",
        "definition": None,
        "version": None,
        "traffic": None,
        "actor": "fuzz",
        "reason": "",
        "issued_at_ms": 0,
    }


def features_strategy(names: list[str], *, packed: bool = True) -> st.SearchStrategy[Any]:
    d = len(names)
    floats = st.floats(allow_nan=True, allow_infinity=True)
    forms = [
        st.fixed_dictionaries({n: floats for n in names}),
        st.dictionaries(st.sampled_from([*names, "bogus", ""]), floats, max_size=d + 2),
        st.lists(floats, min_size=0, max_size=d + 3),
        st.integers(10_000, 30_000).map(lambda n: [1.0] * n),  # huge vector
    ]
    if packed:
        forms += [
            st.lists(floats, min_size=d, max_size=d).map(
                lambda v: np.asarray(v, dtype="<f8").tobytes()
            ),
            st.integers(0, 8 * d + 9).map(
                lambda n: bytes(range(256)) * (n // 256) + bytes(n % 256)
            ),
        ]
    return st.one_of(*forms)


def message_strategy(
    type_name: str, models: list[str], names: list[str]
) -> st.SearchStrategy[bytes]:
    model = st.one_of(st.sampled_from(models), st.text(max_size=12))
    label = st.one_of(st.sampled_from(["0", "1"]), st.text(max_size=3), numbers)
    record_type = RECORD_TYPES[type_name]
    valid = st.builds(
        lambda m, f, y: CODEC.encode(record_type, valid_record(type_name, m, f, y)),
        model,
        features_strategy(names),
        st.one_of(st.sampled_from(["0", "1"]), st.text(max_size=3), st.floats(allow_nan=True)),
    )
    fields = {
        "request_id": st.one_of(st.text(max_size=8), numbers),
        "model": model,
        "features": st.one_of(json_values, features_strategy(names, packed=False)),
        "label": st.one_of(label, json_values),
        "version": json_values,
        "action": st.one_of(st.sampled_from(["train", "define", "rollback", "x"]), json_values),
    }
    as_json = st.dictionaries(st.sampled_from(sorted(fields)), json_values, max_size=6).flatmap(
        lambda d: st.fixed_dictionaries({k: fields[k] for k in d})
    )
    return st.one_of(
        valid,
        st.binary(max_size=200),
        valid.flatmap(lambda v: st.integers(0, max(0, len(v) - 1)).map(lambda n: v[:n])),
        valid.map(lambda v: v[:2] + bytes([v[2] ^ 0xFF]) + v[3:]),
        as_json.map(lambda d: json.dumps(d, allow_nan=True).encode()),
        st.just(b"{" + b'"x": 1,' * 60_000 + b'"y": 2}'),  # oversized (~420 KB)
    )


class SeededFuzzer:
    """The same families, drawn from ``random.Random(seed)``: reproducible bulk input."""

    def __init__(self, seed: int, models: list[str], names: list[str]) -> None:
        self.rng = random.Random(seed)
        self.models, self.names = models, names

    def _float(self) -> float:
        return self.rng.choice([self.rng.gauss(0, 100), math.nan, math.inf, -math.inf, 0.0])

    def _features(self) -> Any:
        d = len(self.names)
        kind = self.rng.randrange(6)
        if kind == 0:
            return {n: self.rng.gauss(10, 5) for n in self.names}
        if kind == 1:
            return {n: self._float() for n in self.names}
        if kind == 2:
            return [self.rng.gauss(0, 1) for _ in range(self.rng.choice([d, d - 1, d + 1]))]
        if kind == 3:
            return bytes(self.rng.randrange(256) for _ in range(8 * d + self.rng.choice([0, 3])))
        if kind == 4:
            return [1.0] * self.rng.randrange(10_000, 20_000)
        return {self.rng.choice([*self.names, "bogus"]): 1.0 for _ in range(d)}

    def message(self, type_name: str) -> bytes:
        kind = self.rng.randrange(7)
        model = self.rng.choice([*self.models, "no-such-model"])
        label = self.rng.choice(["0", "1", "7", 1.0, 0.5, math.nan])
        record = valid_record(type_name, model, self._features(), label)
        if type_name == "Command":
            record["action"] = self.rng.choice(["TRAIN", "ROLLBACK", "SET_TRAFFIC"])
            record["version"] = self.rng.choice([None, 1, 99])
        if kind <= 2:
            return CODEC.encode(RECORD_TYPES[type_name], record)
        if kind == 3:
            data = CODEC.encode(RECORD_TYPES[type_name], record)
            return data[: self.rng.randrange(len(data))]
        if kind == 4:
            data = CODEC.encode(RECORD_TYPES[type_name], record)
            return data[:5] + bytes([data[5] ^ 0x5A]) + data[6:]
        if kind == 5:
            plain = dict(record)
            plain[self.rng.choice(list(plain))] = self.rng.choice(
                [[1, "a"], {"z": None}, True, "text", 3]
            )
            return json.dumps(plain, default=lambda b: "bytes", allow_nan=True).encode()
        return bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 100)))
