"""A file's bytes as a model's byte window."""

import numpy as np

from modelstream.preprocess.window import features

SPEC = {
    "beg_size": 8,
    "mid_size": 0,
    "end_size": 8,
    "block_size": 32,
    "padding_token": 256,
    "strip_whitespace": True,
}


def test_short_files_are_padded_after_the_beginning_and_before_the_end():
    out = features(b"\n\n  abc  \n", SPEC)
    assert out.dtype == np.int32 and len(out) == 16
    assert out[:8].tolist() == [97, 98, 99, 32, 32, 10, 256, 256]
    # the end keeps its leading blanks, loses its trailing ones
    assert out[8:].tolist() == [256, 10, 10, 32, 32, 97, 98, 99]


def test_long_files_read_only_a_block_at_each_end():
    data = b"A" * 100 + b"MIDDLE" + b"Z" * 100
    out = features(data, SPEC)
    assert out[:8].tolist() == [65] * 8 and out[8:].tolist() == [90] * 8
    with_mid = features(data, {**SPEC, "mid_size": 6})
    assert bytes(with_mid[8:14].astype(np.uint8)) == b"MIDDLE"


def test_whitespace_is_kept_when_asked():
    out = features(b"  x", {**SPEC, "strip_whitespace": False})
    assert out[:3].tolist() == [32, 32, 120]


def test_empty_input_is_all_padding():
    assert (features(b"", SPEC) == 256).all()
