"""Token classes come from decoded text, so byte-level BPE pieces of Chinese are recognised."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from xlalign.data.tokens import TOKEN_CLASSES, TokenClassifier, classify_text


@pytest.mark.parametrize(
    ("text", "cls"),
    [
        ("计算", "cjk"),
        ("的值", "cjk"),
        (" 除以", "cjk"),
        ("7", "digit"),
        (" ", "space"),
        ("\n", "space"),
        ("Calculate", "latin"),
        (" the", "latin"),
        ("é", "latin"),
        ("。", "punct"),
        ("?", "punct"),
        (" +", "punct"),
        ("×", "punct"),
        ("),", "punct"),
        ("\ufffd", "partial"),
        ("Привет", "other"),
        ("C(", "other"),
    ],
)
def test_classify_text(text, cls):
    assert classify_text(text) == cls


def test_special_wins():
    assert classify_text("<|endoftext|>", special=True) == "special"


def test_byte_level_bpe_chinese_is_found(tiny_models, problems):
    tok = AutoTokenizer.from_pretrained(tiny_models["qwen2"])
    clf = TokenClassifier(tok)
    ids = tok("计算 123 + 45 的值。")["input_ids"]
    # the raw BPE strings are mojibake: the seed's test ord(c) > 0x4E00 finds nothing
    raw = tok.convert_ids_to_tokens(ids)
    assert not any(ord(c) > 0x4E00 for t in raw for c in t)
    classes = clf.classes(ids)
    assert "cjk" in classes and classes.count("digit") == 5
    assert classes[-1] == "punct"  # '。'
    rows = [np.array(tok(t)["input_ids"]) for t in problems.text("zh")[:20]]
    counts = clf.counts(rows)
    assert list(counts) == list(TOKEN_CLASSES)
    assert sum(counts.values()) == sum(len(r) for r in rows)
    assert counts["cjk"] > 0 and counts["special"] == 0


def test_partial_bytes_are_partial(bpe_tokenizer):
    clf = TokenClassifier(bpe_tokenizer)
    # a CJK character the BPE never merged decodes byte by byte: each piece is part of it
    ids = bpe_tokenizer("鑫")["input_ids"]
    assert len(ids) > 1
    assert set(clf.classes(ids)) == {"partial"}


def test_wordpiece_special_tokens(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["bert"])
    clf = TokenClassifier(tok)
    ids = tok("Find the value of C(5, 1).")["input_ids"]
    classes = clf.classes(ids)
    assert classes[0] == "special" and classes[-1] == "special"
    assert "latin" in classes and "digit" in classes
