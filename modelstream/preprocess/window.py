"""A file's bytes as a fixed-size vector of byte values, the input of content-type models.

The vector is the first ``beg_size`` bytes, the middle ``mid_size`` and the last
``end_size``, each part padded with ``padding_token`` where the file is shorter: the
beginning is padded after its bytes, the end before its own, the middle on both sides.
Only a ``block_size`` window at each end is read, and (by default) ASCII whitespace is
stripped from the start of the first window and the end of the last, so leading or
trailing blank lines do not move what the model sees (magika's features).

>>> spec = {"beg_size": 4, "mid_size": 0, "end_size": 4, "block_size": 8,
...         "padding_token": 256, "strip_whitespace": True}
>>> features(b"  ab\\n", spec).tolist()  # the end keeps its leading blanks
[97, 98, 10, 256, 32, 32, 97, 98]
"""

from __future__ import annotations

import numpy as np

from modelstream.contracts.records import BytesSpec


def features(data: bytes, spec: BytesSpec) -> np.ndarray:
    """int32 [beg_size + mid_size + end_size]."""
    beg_size, mid_size, end_size = spec["beg_size"], spec["mid_size"], spec["end_size"]
    pad = spec["padding_token"]
    window = min(spec["block_size"], len(data))
    first = data[:window]
    last = data[len(data) - window :]
    if spec["strip_whitespace"]:
        first = first.lstrip()
        last = last.rstrip()
    beg = first[:beg_size]
    end = last[len(last) - end_size :] if end_size and len(last) > end_size else last
    if not end_size:
        end = b""
    out = np.full(beg_size + mid_size + end_size, pad, dtype=np.int32)
    out[: len(beg)] = np.frombuffer(beg, dtype=np.uint8)
    if mid_size:
        centre = len(data) // 2
        start = max(0, centre - mid_size // 2)
        mid = data[start : start + mid_size]
        offset = beg_size + (mid_size - len(mid)) // 2
        out[offset : offset + len(mid)] = np.frombuffer(mid, dtype=np.uint8)
    if end:
        out[len(out) - len(end) :] = np.frombuffer(end, dtype=np.uint8)
    return out
