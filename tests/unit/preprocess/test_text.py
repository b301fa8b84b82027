"""Text: UTF-8 and size checked; WordPiece as BERT's tokenizer.json describes it. (The same
ids as the tokenizers library on a corpus of 620 texts are checked against the real MiniLM
tokenizer in tests/integration/test_tensor_models.py.)"""

import json

import pytest

from modelstream.errors import InvalidEventError
from modelstream.preprocess.text import UnsupportedTokenizerError, WordPiece, batch, decode_text

VOCAB = {
    "[PAD]": 0,
    "[UNK]": 100,
    "[CLS]": 101,
    "[SEP]": 102,
    "hello": 7,
    "world": 8,
    ",": 9,
    "!": 10,
    "un": 11,
    "##aff": 12,
    "##able": 13,
    "cafe": 14,
    "中": 15,
    "文": 16,
    "$": 17,
}


def tokenizer_json(**changes: object) -> str:
    config = {
        "normalizer": {
            "type": "BertNormalizer",
            "clean_text": True,
            "handle_chinese_chars": True,
            "strip_accents": None,
            "lowercase": True,
        },
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
            ],
        },
        "model": {
            "type": "WordPiece",
            "unk_token": "[UNK]",
            "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 10,
            "vocab": VOCAB,
        },
    }
    config.update(changes)
    return json.dumps(config)


TOKENIZER = WordPiece.from_json(tokenizer_json())


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("Hello, WORLD!", [101, 7, 9, 8, 10, 102]),
        ("unaffable", [101, 11, 12, 13, 102]),
        ("Café", [101, 14, 102]),  # accents stripped with lowercase
        ("中文", [101, 15, 16, 102]),  # each ideograph a word
        ("hello\x00\u200bworld", [101, 100, 102]),  # controls removed: "helloworld" is unknown
        ("hello\tworld\n", [101, 7, 8, 102]),
        ("$hello", [101, 17, 7, 102]),  # ASCII symbols split like punctuation
        ("unaffablex", [101, 100, 102]),  # no piece for the end: the whole word is unknown
        ("a" * 11, [101, 100, 102]),  # over max_input_chars_per_word
        ("", [101, 102]),
    ],
)
def test_wordpiece(text, ids):
    assert TOKENIZER.encode(text, 512) == ids


def test_truncation_keeps_the_special_tokens():
    assert TOKENIZER.encode("hello " * 100, 5) == [101, 7, 7, 7, 102]


def test_padded_batches_and_masks():
    ids, mask = batch([[101, 7, 102], [101, 102]])
    assert ids.tolist() == [[101, 7, 102], [101, 102, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": {"type": "BPE", "vocab": {}}}, "'BPE' is not WordPiece"),
        ({"normalizer": {"type": "NFKC"}}, "'NFKC' is not BertNormalizer"),
        ({"pre_tokenizer": {"type": "Metaspace"}}, "'Metaspace' is not BertPreTokenizer"),
        ({"post_processor": {"type": "RobertaProcessing"}}, "'RobertaProcessing'"),
        ({"model": {"type": "WordPiece", "vocab": {"a": 1}}}, "has no"),
    ],
)
def test_other_tokenizers_are_refused_by_name(changes, message):
    with pytest.raises(UnsupportedTokenizerError, match=message):
        WordPiece.from_json(tokenizer_json(**changes))


def test_text_must_be_utf8_and_within_the_limit():
    assert decode_text("héllo".encode(), 10) == "héllo"
    with pytest.raises(InvalidEventError) as caught:
        decode_text(b"caf\xe9", 10)
    assert caught.value.reason == "invalid-text"
    with pytest.raises(InvalidEventError) as caught:
        decode_text(b"x" * 11, 10)
    assert caught.value.reason == "too-long"
    with pytest.raises(InvalidEventError) as caught:
        decode_text(b"x" * 10_000, 10)  # refused before decoding
    assert caught.value.reason == "too-long"
