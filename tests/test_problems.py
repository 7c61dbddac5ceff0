"""The study's problem set, checked against rows and fingerprints taken from the seed script.

The expected fingerprints were computed by running the seed's own ``generate_problems`` (in
/work/shared/seed/embedding_alignment.py, not shipped) and hashing
``"\\n".join(f"{category}\\t{zh}\\t{en}")`` over its rows; the hand-checked rows below were read
off the same output.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

import pytest

from xlalign.cli import main
from xlalign.data.corpus import load_corpus
from xlalign.data.problems import generate_problems

SEED_FINGERPRINTS = {
    (200, 42): "2d5d0e4697d3e2f62b2d7bd8bb6e6552d8d2ab255ff3a87ad48a665bc79e719d",
    (1000, 123): "ab4132c7442f85eba8ca99f8c7b106f07a269e4a0e24e3dbe7b1e18767ae1df4",
    (7, 0): "9a7334203b02348a23cabf2d20a7803491fc84f67576844e4ea40add6652786a",
    (201, "abc"): "0d0b35d3b635b495b5b4742ea19ea0d4b3a5a8ae313d36a11faaa5aa70c99518",
    (10, 42): "7eb64d189223dfd6240464f3b976cb1e97cfab02579e6856bd43effb6a0c0082",
}

# (index, category, zh, en) of generate_problems(200, 42), read off the seed's output.
HAND_CHECKED_200_42 = [
    (0, 1, "求组合数 C(5, 1) 的值。", "Find the value of C(5, 1)."),
    (1, 2, "6719 除以 15 的余数是多少?", "What is the remainder when 6719 is divided by 15?"),
    (
        2,
        4,
        "等差数列首项为 20,公差为 9,求前 8 项之和。",
        "An arithmetic sequence has first term 20 and common difference 9. "
        "Find the sum of the first 8 terms.",
    ),
    (199, 2, "4612 除以 34 的余数是多少?", "What is the remainder when 4612 is divided by 34?"),
]

HAND_CHECKED_10_42 = [
    (2, "9724 除以 30 的余数是多少?", "What is the remainder when 9724 is divided by 30?"),
    (0, "计算 769 + 291 的值。", "Calculate 769 + 291."),
    (4, "等差数列首项为 1,公差为 9,求前 11 项之和。",
     "An arithmetic sequence has first term 1 and common difference 9. Find the sum of the first 11 terms."),
    (0, "计算 664 + 124 的值。", "Calculate 664 + 124."),
    (1, "求组合数 C(12, 3) 的值。", "Find the value of C(12, 3)."),
    (2, "8985 除以 8 的余数是多少?", "What is the remainder when 8985 is divided by 8?"),
    (3, "一个长方形的长为 7,宽为 15,求其面积。", "A rectangle has length 7 and width 15. Find its area."),
    (1, "求组合数 C(8, 6) 的值。", "Find the value of C(8, 6)."),
    (3, "一个长方形的长为 4,宽为 3,求其面积。", "A rectangle has length 4 and width 3. Find its area."),
    (4, "等差数列首项为 8,公差为 9,求前 24 项之和。",
     "An arithmetic sequence has first term 8 and common difference 9. Find the sum of the first 24 terms."),
]  # fmt: skip


def fingerprint(corpus) -> str:
    lines = [
        f"{c}\t{zh}\t{en}"
        for c, zh, en in zip(
            corpus.meta["category"], corpus.text("zh"), corpus.text("en"), strict=True
        )
    ]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@pytest.mark.parametrize(("n", "seed"), list(SEED_FINGERPRINTS))
def test_matches_seed_fingerprint(n, seed):
    corpus = generate_problems(n, seed)
    assert len(corpus) == 5 * (n // 5)
    assert fingerprint(corpus) == SEED_FINGERPRINTS[(n, seed)]


def test_hand_checked_rows():
    c = generate_problems(200, 42)
    for i, cat, zh, en in HAND_CHECKED_200_42:
        assert (c.meta["category"][i], c.text("zh")[i], c.text("en")[i]) == (cat, zh, en)
    small = generate_problems(10, 42)
    got = list(zip(small.meta["category"], small.text("zh"), small.text("en"), strict=True))
    assert got == HAND_CHECKED_10_42


def test_structure_of_the_study_set():
    c = generate_problems()
    assert c.languages == ("zh", "en") and c.ids == tuple(str(i) for i in range(200))
    assert Counter(c.meta["category"]) == {k: 40 for k in range(5)}
    for cat, zh, en in zip(c.meta["category"], c.text("zh"), c.text("en"), strict=True):
        # numbers appear in the same order in both languages
        assert re.findall(r"\d+", zh) == re.findall(r"\d+", en)
        if cat == 2:
            assert zh.endswith("?") and en.endswith("?")  # the same ASCII '?' in both
        else:
            assert zh.endswith("。") and en.endswith(".")


def test_small_and_odd_n_follow_the_seed():
    assert len(generate_problems(4, 42)) == 0
    assert len(generate_problems(203, 1)) == 200


def test_cli_writes_the_study_jsonl(tmp_path, capsys):
    out = tmp_path / "problems.jsonl"
    assert main(["problems", "--n", "200", "--seed", "42", "-o", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 200 and list(rows[0]) == ["id", "category", "zh", "en"]
    assert (rows[1]["zh"], rows[1]["category"]) == ("6719 除以 15 的余数是多少?", 2)
    assert fingerprint(load_corpus(out, ["zh", "en"])) == SEED_FINGERPRINTS[(200, 42)]
    assert "wrote 200 problems" in capsys.readouterr().out


def test_cli_rejects_too_small_n(tmp_path, capsys):
    assert main(["problems", "--n", "3", "-o", str(tmp_path / "p.jsonl")]) == 2
    assert "--n must be at least 5" in capsys.readouterr().err
    assert not (tmp_path / "p.jsonl").exists()
