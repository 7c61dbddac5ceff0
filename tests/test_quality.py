"""Corpus quality checks: every kind of untranslated or misaligned row is named with its ids,
at load (extract), in the manifest, in the sweep and in findings.json."""

from __future__ import annotations

import json

import pytest

from xlalign.cli import main
from xlalign.data.corpus import ParallelCorpus
from xlalign.data.quality import (
    QualityReport,
    check_corpus,
    expected_script,
    is_placeholder,
)


def _corpus(rows: list[tuple[str, str, str]], source: str = "hand") -> ParallelCorpus:
    return ParallelCorpus(
        ids=tuple(r[0] for r in rows),
        texts={"zh": tuple(r[1] for r in rows), "en": tuple(r[2] for r in rows)},
        source=source,
    )


#: Twelve clean pairs (a median length ratio needs ten), then one row of each problem.
CLEAN = [
    (f"c{i}", f"我们明天去公园散步{i}次。", f"We will walk in the park {i} times.")
    for i in range(12)
]
BAD = [
    ("p1", "他很高。", "placeholder"),
    ("p2", "她很忙。", "Placeholder-p5 "),
    ("p3", "这里有很多外国东西。", "PH"),
    ("e1", "我很好。", "   "),
    ("i1", "Not translated yet.", "not translated yet."),
    ("i2", "OK", "ok"),  # short: not 'identical' (a name, number or cognate); no Han in zh
    ("w1", "hello there", "Hello there, friend."),
    ("w2", "我爱你。", "我爱你"),
    ("d1", CLEAN[3][1], CLEAN[3][2]),
    ("l1", "好。", "This one sentence is far, far longer than its Chinese side could ever be."),
]


def _by_kind(report: QualityReport) -> dict[str, list[str]]:
    return {f"{issue.kind} {'/'.join(issue.langs)}": list(issue.ids) for issue in report.issues}


def test_every_kind_is_found_with_its_ids():
    report = check_corpus(_corpus(CLEAN + BAD))
    assert _by_kind(report) == {
        "placeholder en": ["p1", "p2", "p3"],
        "empty en": ["e1"],
        "identical zh/en": ["i1"],
        "wrong-script zh": ["i1", "i2", "w1"],
        "wrong-script en": ["w2"],
        "duplicate zh/en": ["d1=c3"],
        "length-ratio zh/en": ["l1"],
    }
    # a row with an untranslated side counts once in the list of untranslated ids
    assert report.flagged_ids == ("p1", "p2", "p3", "e1", "i1", "i2", "w1", "w2")
    lines = report.warnings()
    assert len(lines) == 7 and all(line.startswith("hand: ") for line in lines)
    assert (
        "3 row(s) whose en text is a placeholder ('PH', 'Placeholder-p5', 'placeholder')"
        in (lines[0])
    )
    assert "(ids p1, p2, p3)" in lines[0]
    doc = report.to_json()
    assert doc["n_rows"] == len(CLEAN + BAD) and doc["issues"][0]["count"] == 3
    json.dumps(doc)  # JSON-ready


def test_a_clean_corpus_has_no_issue_and_the_length_check_needs_ten_rows():
    assert check_corpus(_corpus(CLEAN)).issues == ()
    few = _corpus([*CLEAN[:5], BAD[-1]])
    assert "length-ratio zh/en" not in _by_kind(check_corpus(few))


def test_many_ids_are_shown_as_the_first_ten_and_a_count():
    rows = CLEAN + [(f"x{i}", f"你好{i}。", "placeholder") for i in range(25)]
    (line,) = check_corpus(_corpus(rows)).warnings()
    assert "(ids x0, x1, x2, x3, x4, x5, x6, x7, x8, x9 and 15 more)" in line


@pytest.mark.parametrize(
    "text, expected",
    [
        ("placeholder", True), ("PLACEHOLDER-P12", True), ("placeholder-q1", True),
        ("PH", True), (" TODO ", True), ("n/a", True), ("???", True), ("...", True),
        ("Phone died—charge it with the charger.", False), ("photo", False),
        ("None of them came.", False), ("", False),
        # words of some language: Spanish 'todo', Polish 'na', German 'null', 'ph' in lower case
        ("todo", False), ("na", False), ("null", False), ("none", False), ("ph", False),
        ("?", False), ("-", False),
    ],
)  # fmt: skip
def test_placeholders(text, expected):
    assert is_placeholder(text) is expected


@pytest.mark.parametrize(
    "lang, script",
    [
        ("zh", "HAN"), ("zh-CN", "HAN"), ("zho_Hant", "HAN"), ("ja", "JAPANESE"),
        ("en", "LATIN"), ("fra_Latn", "LATIN"), ("ru", "CYRILLIC"), ("sr-Cyrl", "CYRILLIC"),
        ("sr", None), ("xx", None), ("ko", "HANGUL"), ("hi-latn", "LATIN"), ("hi", "DEVANAGARI"),
    ],
)  # fmt: skip
def test_expected_script(lang, script):
    assert expected_script(lang) == script


def test_japanese_accepts_kana_and_an_unknown_language_is_not_checked():
    corpus = ParallelCorpus(
        ids=("a", "b", "c"),
        texts={"ja": ("ひらがなだけ", "hello", "ｶﾀｶﾅ"), "xx": ("hello", "你好", "x")},
    )
    assert _by_kind(check_corpus(corpus)) == {"wrong-script ja": ["b"]}  # half-width kana: ja
    assert check_corpus(corpus, []).issues == ()


def test_hsk_keeps_no_placeholder_and_the_raw_records_hold_82():
    pytest.importorskip("hsk_sentences_audio")
    from xlalign.data.corpora import hsk, hsk_records

    assert "placeholder en" not in _by_kind(check_corpus(hsk()))
    raw = [r for r in hsk_records() if r.get("chinese") and r["translation"].get("en")]
    corpus = ParallelCorpus(
        ids=tuple(r["id"] for r in raw),
        texts={"zh": tuple(r["chinese"] for r in raw),
               "en": tuple(r["translation"]["en"] for r in raw)},
    )  # fmt: skip
    found = _by_kind(check_corpus(corpus))["placeholder en"]
    expected = [
        r["id"]
        for r in raw
        if r["translation"]["en"].strip().lower() == "ph"
        or r["translation"]["en"].strip().lower().startswith("placeholder")
    ]
    assert found == expected and len(found) == 82


def test_extract_names_the_rows_and_findings_keep_them(tiny_models, problems, tmp_path, capsys):
    """A corpus file with untranslated rows: extract warns with the ids (one line, no source
    line), the manifest records them, and align's findings.json warns about them."""
    path = tmp_path / "c.jsonl"
    rows = list(problems.head(40).rows())
    for row in rows[5:8]:
        row["en"] = "placeholder"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    out = tmp_path / "run"
    argv = ["extract", "--model", str(tiny_models["qwen2"]), "--data", str(path), "-o", str(out),
            "--sites", "embed,L0", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    ids = ", ".join(r["id"] for r in rows[5:8])
    assert f"xlalign: warning: {path}: 3 row(s) whose en text is a placeholder" in err
    assert f"(ids {ids})" in err and "CorpusQualityWarning" not in err
    manifest = json.loads((out / "manifest.json").read_text())
    (issue,) = [i for i in manifest["corpus_quality"]["issues"] if i["kind"] == "placeholder"]
    assert issue["ids"] == [r["id"] for r in rows[5:8]]
    assert main(["align", str(out), "--no-progress", "--n-boot", "0"]) == 0
    findings = json.loads((out / "findings.json").read_text())
    assert any("placeholder" in w and ids in w for w in findings["warnings"])
    assert findings["corpus_quality"]["untranslated_ids"] == [r["id"] for r in rows[5:8]]


def test_a_column_named_like_a_code_is_said_or_kept_as_metadata(tmp_path):
    """Issue 27, item 8: a metadata column named like a language code became a third language
    silently. One holding numbers is metadata; one holding text is taken, and said."""
    from xlalign.data.corpus import load_corpus
    from xlalign.data.quality import CorpusQualityWarning

    path = tmp_path / "c.jsonl"
    rows = [{"id": str(i), "zh": f"句子{i}", "en": f"sentence {i}", "lvl": i % 3, "pos": "NOUN"}
            for i in range(4)]  # fmt: skip
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    with pytest.warns(
        CorpusQualityWarning, match=r"taking 3 columns as languages .*\(zh, en, pos\)"
    ):
        corpus = load_corpus(path)
    assert corpus.languages == ("zh", "en", "pos") and corpus.meta["lvl"] == (0, 1, 2, 0)
    assert load_corpus(path, ["zh", "en"]).languages == ("zh", "en")
