"""Avro's binary primitives by hand, for hot paths that must not interpret a whole schema.

The predictor parses PredictionRequests and writes Predictions with these; the monitor reads
only the two leading fields (request id and model) of what it joins, which every joined
contract starts with, and keeps the rest as the bytes that arrived.

>>> read_long(zigzag(-3), 0)
(-3, 1)
>>> read_string(zigzag(2) + b"r1", 0)
(b'r1', 3)
"""

from __future__ import annotations

from modelstream.errors import DecodeError


def zigzag(value: int) -> bytes:
    """Avro long: zigzag, then base-128 varint."""
    if 0 <= value < 64:  # lengths, counts and union branches: one byte, made once
        return _SMALL[value]
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = tuple(bytes([2 * v]) for v in range(64))


def string(value: bytes) -> bytes:
    """Avro string or bytes: length, then the bytes."""
    return zigzag(len(value)) + value


def read_long(data: bytes, pos: int) -> tuple[int, int]:
    """The long at ``pos`` and the position after it; IndexError when ``data`` ends first."""
    byte = data[pos]
    if byte < 0x80:  # most longs of a hot path (lengths, branches) fit one byte
        return (byte >> 1) ^ -(byte & 1), pos + 1
    pos += 1
    n = byte & 0x7F
    shift = 7
    while byte & 0x80:
        if shift > 63:  # an Avro long takes at most 10 bytes; more is a corrupt (or hostile) body
            raise DecodeError("corrupt Avro body: varint longer than 10 bytes")
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
    return (n >> 1) ^ -(n & 1), pos


def read_string(data: bytes, pos: int) -> tuple[bytes, int]:
    """The string (or bytes) at ``pos``, undecoded, and the position after it."""
    n = data[pos]
    if n < 0x80:  # a length under 64: one byte, read here rather than by a call
        n = (n >> 1) ^ -(n & 1)
        pos += 1
    else:
        n, pos = read_long(data, pos)
    if n < 0 or pos + n > len(data):
        raise DecodeError("corrupt Avro body: bad length")
    return data[pos : pos + n], pos + n
