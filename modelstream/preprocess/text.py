"""Text: UTF-8 checked, bounded, and (for graphs that take token ids) tokenized by a declared
WordPiece tokenizer.

The tokenizer is read from a Hugging Face ``tokenizer.json`` (the file BERT-family models
ship), as data: its BERT normalizer, BERT pre-tokenizer, WordPiece vocabulary and
``[CLS] $A [SEP]`` template are interpreted here, and any other component is refused by
name at import. The rules are those of the ``tokenizers`` library's BertNormalizer,
BertPreTokenizer and WordPiece model (a test compares the ids on a corpus with accents,
CJK, emoji, control characters and long words).

>>> special = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
>>> tokenizer = WordPiece({**special, "un": 4, "##aff": 5, "##able": 6, ",": 7})
>>> tokenizer.encode("Unaffable,  UNAFFABLE!", max_length=16)
[2, 4, 5, 6, 7, 4, 5, 6, 1, 3]
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from modelstream.errors import InvalidEventError

# CJK Unified Ideographs and their extensions: each is a token of its own (BERT's rule).
CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B920, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)
WORD_CACHE = 100_000  # words (of at most max_input_chars_per_word) remembered per tokenizer
# "Other" characters clean_text removes; unassigned code points (Cn) stay, as in tokenizers.
CONTROL = frozenset({"Cc", "Cf", "Cs", "Co"})
ASCII_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


class UnsupportedTokenizerError(ValueError):
    """The tokenizer.json has a component this module does not interpret."""


def decode_text(data: bytes, max_chars: int) -> str:
    """A text element: UTF-8 (``invalid-text`` otherwise), at most ``max_chars`` characters
    (``too-long`` otherwise)."""
    if len(data) > 4 * max_chars:  # more bytes than any text of max_chars characters has
        raise InvalidEventError(
            "too-long", f"text of {len(data)} bytes (limit {max_chars} characters)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEventError("invalid-text", f"text is not UTF-8: {exc}") from None
    if len(text) > max_chars:
        raise InvalidEventError("too-long", f"text of {len(text)} characters (limit {max_chars})")
    return text


@lru_cache(maxsize=65536)
def _is_cjk(code: int) -> bool:
    return any(low <= code <= high for low, high in CJK_RANGES)


def _is_punctuation(char: str) -> bool:
    return char in ASCII_PUNCTUATION or unicodedata.category(char).startswith("P")


class WordPiece:
    """BERT's tokenization: normalize, split on whitespace and punctuation, then greedy
    longest-match WordPiece, framed as ``[CLS] ... [SEP]`` and truncated."""

    def __init__(
        self,
        vocab: Mapping[str, int],
        *,
        unk_token: str = "[UNK]",
        prefix: str = "##",
        max_input_chars_per_word: int = 100,
        clean_text: bool = True,
        handle_chinese_chars: bool = True,
        strip_accents: bool | None = None,
        lowercase: bool = True,
        cls_token: str = "[CLS]",
        sep_token: str = "[SEP]",
    ) -> None:
        self.vocab = dict(vocab)
        missing = [t for t in (unk_token, cls_token, sep_token) if t not in self.vocab]
        if missing:
            raise UnsupportedTokenizerError(f"the vocabulary has no {missing}")
        self.unk = self.vocab[unk_token]
        self.cls = self.vocab[cls_token]
        self.sep = self.vocab[sep_token]
        self.prefix = prefix
        self.max_word = max_input_chars_per_word
        self.clean_text = clean_text
        self.chinese = handle_chinese_chars
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self.lowercase = lowercase
        self._words: dict[str, tuple[int, ...]] = {}
        # No piece is longer than the longest entry: the greedy search starts there, not at
        # the word's end (a word of 100 characters costs 100 x this, not 100 x 100 slices).
        self.longest = max((len(t) for t in self.vocab), default=1)
        self.pad = self.vocab.get("[PAD]", 0)

    @classmethod
    def from_json(cls, text: str) -> WordPiece:
        """From a Hugging Face tokenizer.json; :class:`UnsupportedTokenizerError` names the
        component it cannot interpret."""
        try:
            config = json.loads(text)
        except ValueError as exc:
            raise UnsupportedTokenizerError(f"tokenizer.json is not JSON: {exc}") from None
        if not isinstance(config, dict):
            raise UnsupportedTokenizerError("tokenizer.json is not a JSON object")
        model = config.get("model") or {}
        if model.get("type") != "WordPiece":
            raise UnsupportedTokenizerError(
                f"tokenizer model {model.get('type')!r} is not WordPiece"
            )
        vocab = model.get("vocab")
        if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
            raise UnsupportedTokenizerError("the WordPiece vocabulary is not a token -> id map")
        normalizer = config.get("normalizer") or {
            "type": "BertNormalizer",
            "clean_text": False,
            "handle_chinese_chars": False,
            "strip_accents": False,
            "lowercase": False,
        }
        if normalizer.get("type") != "BertNormalizer":
            raise UnsupportedTokenizerError(
                f"normalizer {normalizer.get('type')!r} is not BertNormalizer"
            )
        pre = config.get("pre_tokenizer") or {}
        if pre.get("type") != "BertPreTokenizer":
            raise UnsupportedTokenizerError(
                f"pre-tokenizer {pre.get('type')!r} is not BertPreTokenizer"
            )
        cls_token, sep_token = _template_tokens(config.get("post_processor"))
        return cls(
            vocab,
            unk_token=str(model.get("unk_token", "[UNK]")),
            prefix=str(model.get("continuing_subword_prefix", "##")),
            max_input_chars_per_word=int(model.get("max_input_chars_per_word", 100)),
            clean_text=bool(normalizer.get("clean_text", True)),
            handle_chinese_chars=bool(normalizer.get("handle_chinese_chars", True)),
            strip_accents=normalizer.get("strip_accents"),
            lowercase=bool(normalizer.get("lowercase", True)),
            cls_token=cls_token,
            sep_token=sep_token,
        )

    # -- the steps -------------------------------------------------------------------------
    def normalize(self, text: str) -> str:
        out: list[str] = []
        for char in text:
            if self.clean_text:
                if char in "\x00\ufffd" or (
                    char not in "\t\n\r" and unicodedata.category(char) in CONTROL
                ):
                    continue
                if char.isspace():
                    out.append(" ")
                    continue
            if self.chinese and _is_cjk(ord(char)):
                out.extend((" ", char, " "))
            else:
                out.append(char)
        normalized = "".join(out)
        if self.strip_accents:
            normalized = "".join(
                c
                for c in unicodedata.normalize("NFD", normalized)
                if unicodedata.category(c) != "Mn"
            )
        if self.lowercase:  # char by char, as the tokenizers library does (no final sigma)
            normalized = "".join(c.lower() for c in normalized)
        return normalized

    @staticmethod
    def pre_tokenize(text: str) -> list[str]:
        words: list[str] = []
        current: list[str] = []
        for char in text:
            if char.isspace():
                if current:
                    words.append("".join(current))
                    current = []
            elif _is_punctuation(char):
                if current:
                    words.append("".join(current))
                    current = []
                words.append(char)
            else:
                current.append(char)
        if current:
            words.append("".join(current))
        return words

    def word_ids(self, word: str) -> tuple[int, ...]:
        if len(word) > self.max_word:
            return (self.unk,)
        known = self._words.get(word)
        if known is not None:
            return known
        ids = self._word_ids(word)
        if len(self._words) < WORD_CACHE:
            self._words[word] = ids
        return ids

    def _word_ids(self, word: str) -> tuple[int, ...]:
        ids: list[int] = []
        start = 0
        while start < len(word):
            end = min(len(word), start + self.longest)
            found = None
            while start < end:
                piece = word[start:end] if start == 0 else self.prefix + word[start:end]
                found = self.vocab.get(piece)
                if found is not None:
                    break
                end -= 1
            if found is None:
                return (self.unk,)
            ids.append(found)
            start = end
        return tuple(ids)

    def encode(self, text: str, max_length: int) -> list[int]:
        """Token ids of one text, ``[CLS] ... [SEP]``, at most ``max_length`` of them."""
        budget = max(0, max_length - 2)
        ids: list[int] = []
        for word in self.pre_tokenize(self.normalize(text)):
            ids.extend(self.word_ids(word))
            if len(ids) >= budget:
                break
        return [self.cls, *ids[:budget], self.sep]


def _template_tokens(processor: Any) -> tuple[str, str]:
    """The [CLS] and [SEP] tokens of a single-sequence BERT template."""
    if not processor:
        return "[CLS]", "[SEP]"
    kind = processor.get("type")
    if kind == "BertProcessing":
        return str(processor["cls"][0]), str(processor["sep"][0])
    if kind == "TemplateProcessing":
        single = processor.get("single") or []
        pieces = [
            ("sequence" if "Sequence" in item else item.get("SpecialToken", {}).get("id"))
            for item in single
        ]
        if len(pieces) == 3 and pieces[1] == "sequence" and None not in pieces:
            return str(pieces[0]), str(pieces[2])
        raise UnsupportedTokenizerError(f"template {pieces} is not [CLS] $A [SEP]")
    raise UnsupportedTokenizerError(f"post-processor {kind!r} is not a BERT template")


def batch(token_ids: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token ids padded to the longest row, and the attention mask: int64 [N, S] each."""
    longest = max((len(t) for t in token_ids), default=0)
    ids = np.full((len(token_ids), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(token_ids), longest), dtype=np.int64)
    for i, row in enumerate(token_ids):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask
