"""Parallel corpus loaders: every layout, every bad-input message, nothing dropped silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xlalign.data.corpus import ParallelCorpus, load_corpus
from xlalign.errors import CorpusError


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


ROWS = [
    {"id": "a", "category": 0, "zh": "你好", "en": "hello", "fra_Latn": "bonjour"},
    {"id": "b", "category": 1, "zh": "谢谢", "en": "thanks", "fra_Latn": "merci"},
    {"id": "c", "category": 1, "zh": "再见", "en": "bye", "fra_Latn": "au revoir"},
]


# ---------------------------------------------------------------------------------- happy paths


def test_jsonl_detects_language_columns_and_keeps_metadata(tmp_path):
    c = load_corpus(write(tmp_path / "d.jsonl", jsonl(ROWS)))
    assert c.languages == ("zh", "en", "fra_Latn")
    assert c.ids == ("a", "b", "c")
    assert c.meta == {"category": (0, 1, 1)}
    assert c.text("fra_Latn")[2] == "au revoir"
    assert len(c) == 3 and c.skipped == ()


def test_jsonl_explicit_langs_select_and_order(tmp_path):
    c = load_corpus(write(tmp_path / "d.jsonl", jsonl(ROWS)), ["en", "zh"])
    assert c.languages == ("en", "zh")
    assert "fra_Latn" in c.meta  # not a requested language: kept as metadata, not dropped


def test_ids_default_to_row_index(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "id"} for r in ROWS]
    c = load_corpus(write(tmp_path / "d.jsonl", "\n" + jsonl(rows)))  # blank line is not a row
    assert c.ids == ("0", "1", "2")


def test_csv_and_tsv(tmp_path):
    csv_text = 'id,category,zh,en\na,0,你好,"hello, world"\nb,1,谢谢,thanks\n'
    c = load_corpus(write(tmp_path / "d.csv", csv_text))
    assert c.languages == ("zh", "en") and c.text("en")[0] == "hello, world"
    assert c.meta["category"] == ("0", "1")
    t = load_corpus(write(tmp_path / "d.tsv", "zh\ten\n你好\thello\n谢谢\tthanks\r\n"))
    assert t.text("en") == ("hello", "thanks") and t.ids == ("0", "1")


def test_txt_folder_is_parallel_by_line(tmp_path):
    write(tmp_path / "flores" / "eng_Latn.txt", "one\ntwo\nthree\n")
    write(tmp_path / "flores" / "zho_Hans.txt", "一\n二\n三")  # no final newline: same 3 lines
    c = load_corpus(tmp_path / "flores")
    assert c.languages == ("eng_Latn", "zho_Hans")
    assert c.text("zho_Hans") == ("一", "二", "三") and c.ids == ("0", "1", "2")


def test_utf8_bom_is_ignored(tmp_path):
    c = load_corpus(write(tmp_path / "d.csv", "\ufeffzh,en\n你好,hello\n"))
    assert c.languages == ("zh", "en")


def test_jsonl_roundtrip_and_fingerprint(tmp_path):
    c = load_corpus(write(tmp_path / "d.jsonl", jsonl(ROWS)), ["zh", "en"])
    again = load_corpus(c.to_jsonl(tmp_path / "out.jsonl"), ["zh", "en"])
    assert again.fingerprint() == c.fingerprint()
    changed = ParallelCorpus(c.ids, {"zh": c.text("zh"), "en": ("x", "y", "z")}, c.meta)
    assert changed.fingerprint() != c.fingerprint()


def test_select_missing_language_names_what_exists(problems):
    with pytest.raises(CorpusError, match=r"language\(s\) fr not in corpus; it has zh, en"):
        problems.select(["zh", "fr"])


# ---------------------------------------------------------------------------------- bad input


def test_missing_language_column_names_file_and_columns(tmp_path):
    path = write(tmp_path / "d.jsonl", jsonl(ROWS))
    with pytest.raises(CorpusError, match=r"d\.jsonl: missing language column\(s\) 'de'.*zh, en"):
        load_corpus(path, ["zh", "de"])


def test_missing_field_in_one_row_names_line(tmp_path):
    rows = [dict(ROWS[0]), {"id": "b", "zh": "谢谢"}, dict(ROWS[2])]
    path = write(tmp_path / "d.jsonl", jsonl(rows))
    with pytest.raises(CorpusError, match=r"d\.jsonl:2: row has no 'en' field"):
        load_corpus(path, ["zh", "en"])


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_empty_text_names_line_and_column(tmp_path, blank):
    rows = [dict(ROWS[0]), dict(ROWS[1], en=blank), dict(ROWS[2])]
    path = write(tmp_path / "d.jsonl", jsonl(rows))
    with pytest.raises(
        CorpusError, match=r"d\.jsonl:2: empty or whitespace-only text in column 'en'"
    ):
        load_corpus(path, ["zh", "en"])


def test_empty_text_in_csv(tmp_path):
    path = write(tmp_path / "d.csv", "zh,en\n你好,hello\n谢谢, \n")
    with pytest.raises(
        CorpusError, match=r"d\.csv:3: empty or whitespace-only text in column 'en'"
    ):
        load_corpus(path)


def test_unequal_line_counts_lists_every_file(tmp_path):
    write(tmp_path / "f" / "en.txt", "one\ntwo\nthree\n")
    write(tmp_path / "f" / "zh.txt", "一\n二\n")
    with pytest.raises(
        CorpusError, match=r"unequal line counts.*en\.txt: 3 lines.*zh\.txt: 2 lines"
    ):
        load_corpus(tmp_path / "f")


def test_empty_line_in_txt_names_file_and_line(tmp_path):
    write(tmp_path / "f" / "en.txt", "one\n\nthree\n")
    write(tmp_path / "f" / "zh.txt", "一\n二\n三\n")
    with pytest.raises(CorpusError, match=r"en\.txt:2: empty or whitespace-only line"):
        load_corpus(tmp_path / "f")


def test_missing_language_file(tmp_path):
    write(tmp_path / "f" / "en.txt", "one\n")
    write(tmp_path / "f" / "zh.txt", "一\n")
    with pytest.raises(CorpusError, match=r"missing language file\(s\) de\.txt; the folder has en"):
        load_corpus(tmp_path / "f", ["en", "de"])


def test_duplicate_ids_name_both_lines(tmp_path):
    rows = [dict(ROWS[0]), dict(ROWS[1]), dict(ROWS[2], id="a")]
    path = write(tmp_path / "d.jsonl", jsonl(rows))
    with pytest.raises(CorpusError, match=r"d\.jsonl:3: duplicate id 'a' \(first on line 1\)"):
        load_corpus(path)


def test_invalid_utf8_names_line_and_byte(tmp_path):
    good = jsonl(ROWS[:1]).encode()
    bad = b'{"id": "x", "zh": "\xe4\xbd", "en": "hi"}\n'
    path = write(tmp_path / "d.jsonl", good + bad)
    with pytest.raises(CorpusError, match=r"d\.jsonl:2: invalid UTF-8 at byte offset 19 "):
        load_corpus(path)


def test_invalid_utf8_in_txt_folder(tmp_path):
    write(tmp_path / "f" / "en.txt", "one\ntwo\n")
    write(tmp_path / "f" / "zh.txt", b"\xe4\xb8\x80\n\xff\n")
    with pytest.raises(CorpusError, match=r"zh\.txt:2: invalid UTF-8"):
        load_corpus(tmp_path / "f")


def test_invalid_json_names_line(tmp_path):
    path = write(tmp_path / "d.jsonl", jsonl(ROWS[:1]) + "{not json}\n")
    with pytest.raises(CorpusError, match=r"d\.jsonl:2: invalid JSON"):
        load_corpus(path)


def test_unknown_file_type(tmp_path):
    path = write(tmp_path / "d.parquet", "x")
    with pytest.raises(CorpusError, match=r"d\.parquet: unknown file type '\.parquet'.*\.csv"):
        load_corpus(path)


def test_missing_path(tmp_path):
    with pytest.raises(CorpusError, match=r"nope\.jsonl: no such file or folder"):
        load_corpus(tmp_path / "nope.jsonl")


def test_too_few_language_columns_suggests_langs_flag(tmp_path):
    path = write(tmp_path / "d.csv", "source,target\nhello,你好\n")
    with pytest.raises(CorpusError, match=r"found 0 language column\(s\).*--langs"):
        load_corpus(path)


def test_wrong_field_count_in_csv(tmp_path):
    path = write(tmp_path / "d.csv", "zh,en\n你好,hello,extra\n")
    with pytest.raises(CorpusError, match=r"d\.csv:2: expected 2 fields \(header\), found 3"):
        load_corpus(path)


# ---------------------------------------------------------------------------------- skip flag


def test_skip_bad_reports_every_skipped_row(tmp_path):
    rows = [
        dict(ROWS[0]),
        dict(ROWS[1], en=" "),
        {"id": "m", "zh": "缺"},
        dict(ROWS[2]),
        dict(ROWS[2], zh="又"),
    ]
    raw = jsonl(rows).encode() + b'{"id": "u", "zh": "\xff", "en": "x"}\n'
    c = load_corpus(write(tmp_path / "d.jsonl", raw), ["zh", "en"], skip_bad=True)
    assert c.ids == ("a", "c")
    skipped = {(s.id, s.location.rsplit(":", 1)[1]) for s in c.skipped}
    assert skipped == {("b", "2"), ("m", "3"), ("c", "5"), ("5", "6")}
    reasons = " | ".join(s.reason for s in c.skipped)
    assert "empty" in reasons and "no 'en' field" in reasons and "duplicate id 'c'" in reasons
    assert "invalid UTF-8" in reasons


def test_skip_bad_in_txt_folder_skips_the_whole_row(tmp_path):
    write(tmp_path / "f" / "en.txt", "one\n \nthree\n")
    write(tmp_path / "f" / "zh.txt", "一\n二\n三\n")
    c = load_corpus(tmp_path / "f", skip_bad=True)
    assert c.ids == ("0", "2") and c.text("zh") == ("一", "三")
    assert [s.id for s in c.skipped] == ["1"]


def test_corpus_needs_two_languages():
    with pytest.raises(CorpusError, match="at least two languages"):
        ParallelCorpus(("0",), {"en": ("x",)})


def test_corpus_rejects_duplicate_ids():
    with pytest.raises(CorpusError, match="duplicate id '0'"):
        ParallelCorpus(("0", "0"), {"en": ("x", "y"), "zh": ("一", "二")})


def test_head_keeps_the_first_rows_of_every_column(problems):
    h = problems.head(3)
    assert h.ids == ("0", "1", "2") and h.text("en") == problems.text("en")[:3]
    assert h.meta["category"] == problems.meta["category"][:3]
    assert len(problems.head(10_000)) == len(problems)
