"""The two user records the monitor handles once per label, read and written by hand: the
feedback it joins and the training example it writes back. The reader gives the codec's
record, or defers to the codec (which then decodes or refuses it in its own words) for
anything but a well-formed body of the current schema; unit-tested against the codec for
generated records and for every single-byte mutation and truncation."""

from __future__ import annotations

import struct

from modelstream.contracts.codec import HEADER_SIZE, MAGIC, AvroCodec, is_json
from modelstream.contracts.limits import LONG_RANGE, Limits
from modelstream.contracts.records import Feedback, Label, TrainingExample
from modelstream.contracts.wire import read_long, read_string, string, zigzag
from modelstream.errors import DecodeError

_DOUBLE = struct.Struct("<d")


class FeedbackReader:
    """Feedback, decoded unchecked (as ``codec.decode(checked=False)``): the label is checked
    against its model by the learner."""

    def __init__(self, codec: AvroCodec, limits: Limits) -> None:
        self.codec = codec
        self.limits = limits
        self.header = MAGIC + codec.schema(Feedback).fingerprint

    def read(self, value: bytes) -> Feedback:
        if not value.startswith(self.header) or len(value) > self.limits.max_bytes:
            if is_json(value):  # user topics also take JSON: decoded and checked whole
                return self.codec.decode_any(value, Feedback, self.limits)
            return self.codec.decode(value, Feedback, self.limits, checked=False)
        try:
            request_id, pos = read_string(value, HEADER_SIZE)
            model, pos = read_string(value, pos)
            branch, pos = read_long(value, pos)
            label: Label
            if branch == 0:
                text, pos = read_string(value, pos)
                label = text.decode()
            elif branch == 1:
                if pos + 8 > len(value):
                    raise IndexError
                label = _DOUBLE.unpack_from(value, pos)[0]
                pos += 8
            else:
                raise DecodeError("label union branch")
            branch, pos = read_long(value, pos)
            timestamp: int | None
            if branch == 0:
                timestamp = None
            elif branch == 1:
                timestamp, pos = read_long(value, pos)
                if not LONG_RANGE[0] <= timestamp <= LONG_RANGE[1]:
                    raise DecodeError("a varint beyond 64 bits")
            else:
                raise DecodeError("timestamp union branch")
            if pos != len(value):
                raise DecodeError("trailing bytes")
            return {
                "request_id": request_id.decode(),
                "model": model.decode(),
                "label": label,
                "timestamp_ms": timestamp,
            }
        except (IndexError, ValueError, UnicodeDecodeError, DecodeError):
            # the codec says what is wrong, in its words, as for any corrupt record
            return self.codec.decode(value, Feedback, self.limits, checked=False)


class TrainingWriter:
    """TrainingExample with packed features and no categories or tensors: what the monitor
    writes back for each label it learned from."""

    def __init__(self, codec: AvroCodec) -> None:
        self.header = MAGIC + codec.schema(TrainingExample).fingerprint

    def encode(
        self, model: bytes, features: bytes, label: Label, example_id: str, timestamp_ms: int
    ) -> bytes:
        encoded_label = (
            b"\x00" + string(label.encode())
            if isinstance(label, str)
            else b"\x02" + _DOUBLE.pack(label)
        )
        return b"".join(
            (
                self.header,
                string(model),
                b"\x00",  # features: the bytes branch
                string(features),
                encoded_label,
                b"\x02",
                string(example_id.encode()),
                b"\x02",
                zigzag(timestamp_ms),
                b"\x00\x00",  # no categories, no tensors
            )
        )
