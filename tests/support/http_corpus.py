"""Hostile HTTP calls for the gateway: bodies of both protocols mutated byte by byte and node
by node, and paths and headers a careless or hostile client sends. Used by the unit fuzz
tests (tests/unit/services/gateway/test_http_boundary.py) and against the live gateway of
`modelstream up` (tests/integration/test_hostile_corpus.py)."""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np

SPLICED = (b"1e999", b"-0", b"[[[[", b'"\\ud800"', b"99999999999999999999")
HOSTILE_VALUES: list[Any] = [
    None, True, -1, 0, 2**63, 2**70, -(2**64), 1e308, -0.0, "", "x" * 300, "\u00e9",
    [], [[[[[[]]]]]], {}, {"b64": "!!"}, {"b64": 7}, [1] * 50, [-1, 2**40], ["a", None],
]  # fmt: skip


def mutate_bytes(seed: bytes, rng: random.Random) -> bytes:
    """One to four flips, overwrites, insertions, deletions, truncations or splices."""
    data = bytearray(seed)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(max(1, len(data)))
        kind = rng.randrange(6)
        if kind == 0 and data:
            data[at] ^= 1 << rng.randrange(8)
        elif kind == 1 and data:
            data[at] = rng.choice(b'\x00\x7f\x80\xff{}[]",:-019eE')
        elif kind == 2:
            data[at:at] = rng.randbytes(rng.randint(1, 8))
        elif kind == 3:
            del data[at : at + rng.randint(1, 8)]
        elif kind == 4:
            del data[at:]
        else:
            data[at:at] = rng.choice(SPLICED)
    return bytes(data)


def mutate_structure(value: Any, rng: random.Random) -> Any:
    """The JSON value with one to three nodes replaced by hostile values or removed: what a
    client's code, not its transport, gets wrong."""
    nodes: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in list(items):
            nodes.append((node, key))
            if isinstance(child, dict | list):
                walk(child)

    walk(value)
    for _ in range(rng.randint(1, 3)):
        if not nodes:
            break
        parent, key = rng.choice(nodes)
        if isinstance(parent, dict) and rng.random() < 0.2:
            parent.pop(key, None)
        elif isinstance(parent, dict) or key < len(parent):
            parent[key] = rng.choice(HOSTILE_VALUES)
    return value


def fuzzed_body(seed: bytes, rng: random.Random) -> bytes:
    """A JSON body mutated as bytes or as a structure, half and half."""
    if rng.random() < 0.5:
        return mutate_bytes(seed, rng)
    return json.dumps(mutate_structure(json.loads(seed), rng)).encode()


def binary_body(rows: np.ndarray) -> tuple[bytes, int]:
    """An OIP call in the binary tensor extension (as tritonclient sends it): JSON header,
    then the tensor's bytes; and the header's length."""
    values = np.ascontiguousarray(rows, dtype="<f4").tobytes()
    header = {
        "inputs": [
            {
                "name": "input-0",
                "shape": list(rows.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(values)},
            }
        ]
    }
    text = json.dumps(header).encode()
    return text + values, len(text)


def bytes_elements(*elements: bytes) -> bytes:
    """BYTES elements as the binary extension lays them out: 4-byte length, then bytes."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def hostile_calls(
    model: str, rows: np.ndarray, rng: random.Random, count: int
) -> Iterator[tuple[str, str, dict[str, str], bytes]]:
    """``count`` calls (method, path, headers, body) against a model taking ``rows``'
    width of features: mutated bodies of both protocols, and hostile paths and headers."""
    row = rows[:1]
    oip = json.dumps(
        {"id": "1", "inputs": [{"name": "input-0", "shape": [1, row.shape[1]],
                                "datatype": "FP64", "data": row.ravel().tolist()}]}
    ).encode()  # fmt: skip
    tf = json.dumps({"instances": rows[:2].tolist()}).encode()
    binary, length = binary_body(rows[:2])
    infer = f"/v2/models/{model}/infer"
    fixed: list[tuple[str, str, dict[str, str], bytes]] = [
        ("POST", f"/v2/models/{model}/versions/{2**70}/infer", {}, oip),
        ("POST", f"/v2/models/{model}/versions/-1/infer", {}, oip),
        ("POST", f"/v1/models/{model}/versions/99999999999:predict", {}, tf),
        ("GET", f"/v2/models/{model}/versions/{2**70}/ready", {}, b""),
        ("POST", "/v2/models/" + "n" * 5000 + "/infer", {}, oip),
        ("POST", infer, {}, b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000),
        ("POST", infer, {"Inference-Header-Content-Length": "9" * 40}, binary),
        ("POST", infer, {"Modelstream-Timeout-Ms": "nan"}, oip),
        ("POST", infer, {"Content-Type": "application/x-www"}, b"\x00" * 64),
        ("PUT", infer, {}, oip),
        ("GET", "/v2/../../etc/passwd", {}, b""),
    ]  # fmt: skip
    yield from fixed
    for _ in range(count - len(fixed)):
        kind = rng.randrange(3)
        if kind == 0:
            yield "POST", infer, {}, fuzzed_body(oip, rng)
        elif kind == 1:
            yield "POST", f"/v1/models/{model}:predict", {}, fuzzed_body(tf, rng)
        else:
            declared = rng.choice([str(length)] * 3 + [str(length + rng.randint(-9, 9)), "x"])
            body = mutate_bytes(binary, rng)
            yield (
                "POST",
                f"/v2/models/{model}/infer",
                {"Inference-Header-Content-Length": declared},
                body,
            )
