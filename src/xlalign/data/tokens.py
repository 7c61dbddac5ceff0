"""Tokens classified by what they are, from their decoded text and Unicode properties.

``convert_ids_to_tokens`` returns byte-level BPE strings ('计算' comes back as 'è®¡ç®Ĺ'), so a
test on those strings never finds a Chinese token. Here every id is *decoded* and classed by the
Unicode properties of the text it stands for.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

#: Classes, in the order they are tested (the first that applies wins).
TOKEN_CLASSES = ("special", "partial", "space", "cjk", "digit", "latin", "punct", "other")

_CJK_RANGES = (
    (0x2E80, 0x2FDF),  # CJK radicals, Kangxi radicals
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3100, 0x312F),  # Bopomofo
    (0x3400, 0x4DBF),  # CJK Extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xAC00, 0xD7AF),  # Hangul syllables
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
    (0x20000, 0x2FA1F),  # CJK Extensions B.. and Compatibility Supplement
)


def is_cjk(char: str) -> bool:
    """True for CJK ideographs, kana, bopomofo and hangul syllables."""
    cp = ord(char)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def classify_text(text: str, *, special: bool = False) -> str:
    """The class of one token's decoded text (one of :data:`TOKEN_CLASSES`).

    - ``special``: a special token of the tokenizer (BOS, EOS, [CLS], [SEP], pad; not [UNK]);
    - ``partial``: a byte-level piece that decodes to part of a character (U+FFFD appears);
    - ``space``: whitespace only; ``cjk``: contains a CJK character;
    - ``digit``: decimal digits only (ignoring surrounding spaces);
    - ``latin``: letters of the Latin script only; ``punct``: punctuation and symbols only
      (``+``, ``×``, ``。``, ``?`` ...); ``other``: anything else (other scripts, mixtures).
    """
    if special:
        return "special"
    if "\ufffd" in text:
        return "partial"
    core = text.strip()
    if not core:
        return "space"
    if any(is_cjk(c) for c in core):
        return "cjk"
    if all(unicodedata.category(c) == "Nd" for c in core):
        return "digit"
    if all(c.isalpha() and "LATIN" in unicodedata.name(c, "") for c in core):
        return "latin"
    if all(unicodedata.category(c)[0] in "PS" for c in core):
        return "punct"
    return "other"


def special_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special tokens, [UNK] left out unless it doubles as BOS/EOS/pad.

    [UNK] stands for real text the vocabulary lacks: it is counted by what it decodes to
    ("other"), and its rate is reported on its own, not hidden among BOS/EOS/CLS/SEP. Some
    tokenizers (Qwen2's, reloaded) name ``<|endoftext|>`` as unk too; it stays special then.
    """
    ids = {int(i) for i in tokenizer.all_special_ids}
    unk = getattr(tokenizer, "unk_token_id", None)
    others = {
        getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad", "cls", "sep")
    }
    return ids if unk in others else ids - {unk}


def decode_token(tokenizer: Any, token_id: int) -> str:
    """The text one token id stands for (WordPiece ``##`` continuation marks removed)."""
    text = tokenizer.decode([int(token_id)], clean_up_tokenization_spaces=False)
    return text[2:] if text.startswith("##") and len(text) > 2 else text


class TokenClassifier:
    """Decodes and classifies token ids of one tokenizer, each distinct id once."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.special_ids = special_ids(tokenizer)
        self._cache: dict[int, tuple[str, str]] = {}

    def __call__(self, token_id: int) -> tuple[str, str]:
        """``(decoded_text, class)`` of ``token_id``."""
        token_id = int(token_id)
        hit = self._cache.get(token_id)
        if hit is None:
            text = decode_token(self.tokenizer, token_id)
            hit = (text, classify_text(text, special=token_id in self.special_ids))
            self._cache[token_id] = hit
        return hit

    def classes(self, ids: Iterable[int]) -> list[str]:
        """The class of every id, in order."""
        return [self(i)[1] for i in ids]

    def counts(self, rows: Sequence[np.ndarray]) -> dict[str, int]:
        """Count of tokens per class over all rows (every class present, zeros included)."""
        out = dict.fromkeys(TOKEN_CLASSES, 0)
        for row in rows:
            for cls in self.classes(row.tolist()):
                out[cls] += 1
        return out


def vocabulary_classes(tokenizer: Any, size: int) -> np.ndarray:
    """``(size,)`` int8: index into :data:`TOKEN_CLASSES` of every id ``0 .. size-1``.

    Ids the tokenizer does not have (an unembedding padded past the vocabulary, as Qwen2.5's
    151,936 rows for 151,665 tokens) stand for no text and are classed ``other``. Decoding is
    batched (``batch_decode``, one id per entry) and classed as :class:`TokenClassifier` does.
    """
    n_tok = len(tokenizer)
    special = special_ids(tokenizer)
    known = min(size, n_tok)
    texts = tokenizer.batch_decode([[i] for i in range(known)], clean_up_tokenization_spaces=False)
    index = {c: k for k, c in enumerate(TOKEN_CLASSES)}
    out = np.full(size, index["other"], dtype=np.int8)
    for i, text in enumerate(texts):
        text = text[2:] if text.startswith("##") and len(text) > 2 else text
        out[i] = index[classify_text(text, special=i in special)]
    return out
