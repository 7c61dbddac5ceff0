"""Corpus files found by adversarial testing, and a property test over every loader."""

from __future__ import annotations

import csv
import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xlalign
from xlalign.data.corpus import load_corpus
from xlalign.errors import CorpusError, RunError


def test_csv_quoted_newline_is_one_row(tmp_path):
    rows = [("1", "a", "你好\n世界", "hello"), ("2", "b", "再见", 'bye, "now"')]
    path = tmp_path / "quoted_nl.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "category", "zh", "en"])
        w.writerows(rows)
    c = load_corpus(path)
    assert c.ids == ("1", "2")
    assert c.texts["zh"] == ("你好\n世界", "再见") and c.texts["en"] == ("hello", 'bye, "now"')


def test_skip_bad_names_the_row_it_cuts(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("id,zh,en\n7,a,b\n8,only-two\n9,c,d\n", encoding="utf-8")
    c = load_corpus(path, skip_bad=True)
    assert c.ids == ("7", "9")
    assert [(s.id, s.location) for s in c.skipped] == [("8", f"{path}:3")]


def test_unterminated_quote_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('id,zh,en\n1,a,b\n2,"never closed,c\n3,d,e\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=rf"{re.escape(str(path))}:3: malformed row"):
        load_corpus(path)


def test_cr_only_line_endings_in_txt_files(tmp_path):
    zh = [f"第{i}行" for i in range(20)]
    en = [f"line {i}" for i in range(20)]
    (tmp_path / "zh.txt").write_bytes("\r".join(zh).encode() + b"\r")
    (tmp_path / "en.txt").write_bytes("\r".join(en).encode() + b"\r")
    c = load_corpus(tmp_path)
    assert len(c) == 20 and c.texts["zh"] == tuple(zh) and c.texts["en"] == tuple(en)


def test_lone_surrogate_is_an_error_naming_the_row(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"id": 1, "zh": "ok", "en": "x"}\n{"id": 2, "zh": "\\ud800", "en": "y"}\n')
    with pytest.raises(CorpusError, match=rf"{re.escape(str(path))}:2: .*lone surrogate"):
        load_corpus(path)
    assert load_corpus(path, skip_bad=True).skipped[0].id == "2"


def test_nan_metadata_is_an_error_not_invalid_json(tmp_path):
    path = tmp_path / "n.jsonl"
    path.write_text('{"id": 1, "category": NaN, "zh": "a", "en": "b"}\n')
    with pytest.raises(CorpusError, match=rf"{re.escape(str(path))}:1: field 'category' is nan"):
        load_corpus(path)


def test_nested_metadata_in_stratify_is_an_error_naming_the_row(tiny_models, tmp_path):
    from xlalign.studies.layers import SweepConfig, layer_sweep

    path = tmp_path / "nested.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(6):
            tag = {"nested": i} if i == 4 else "flat"
            f.write(json.dumps({"id": i, "tag": tag, "zh": f"你好 {i}", "en": f"hi {i}"}) + "\n")
    run = xlalign.extract(str(tiny_models["qwen2"]), path, "zh,en", sites="embed",
                          batch_size=6, output=tmp_path / "run", progress=False)  # fmt: skip
    cfg = SweepConfig(metrics=("z",), stratify="tag", n_boot=0)
    with pytest.raises(RunError, match=r"--stratify column 'tag' holds a dict at row 4 \(id 4\)"):
        layer_sweep(run, cfg, progress=False)


# --------------------------------------------------------------------------- property test

TEXT = st.text(min_size=0, max_size=12)  # every code point, lone surrogates, CR, LF, quotes
IDS = st.lists(st.integers(0, 10**6), min_size=1, max_size=5, unique=True)


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[str], list[tuple[str, str]]]:
    ids = [str(i) for i in draw(IDS)]
    return ids, [(draw(TEXT), draw(TEXT)) for _ in ids]


LOCATED = re.compile(r"^(?P<file>.+?):(?P<line>\d+): ")


def _check(path: Path, ids: list[str], pairs: list[tuple[str, str]], fmt: str) -> None:
    try:
        c = load_corpus(path, ["zh", "en"])
    except CorpusError as e:
        m = LOCATED.match(str(e))
        assert m is not None, f"error names no file and line: {e}"
        assert Path(m["file"]) in (path, path.parent / "zh.txt", path.parent / "en.txt"), str(e)
        return
    assert c.ids == tuple(ids) if fmt != "txt" else len(c) == len(ids)
    assert list(zip(c.texts["zh"], c.texts["en"], strict=True)) == pairs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables(), st.sampled_from(["jsonl", "csv", "tsv", "txt"]))
def test_loaders_round_trip_or_name_file_and_line(table, fmt):
    ids, pairs = table
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if fmt == "jsonl":
            path = folder / "c.jsonl"
            lines = [
                json.dumps({"id": i, "zh": z, "en": e})
                for i, (z, e) in zip(ids, pairs, strict=True)
            ]
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        elif fmt in ("csv", "tsv"):
            path = folder / f"c.{fmt}"
            try:
                with path.open("w", newline="", encoding="utf-8") as f:
                    w = csv.writer(f, delimiter="," if fmt == "csv" else "\t")
                    w.writerow(["id", "zh", "en"])
                    w.writerows([(i, z, e) for i, (z, e) in zip(ids, pairs, strict=True)])
            except UnicodeEncodeError:
                return  # a lone surrogate cannot even be written as UTF-8
        else:
            path = folder / "zh.txt"
            texts = {"zh": [z for z, _ in pairs], "en": [e for _, e in pairs]}
            if any("\n" in t or "\r" in t for v in texts.values() for t in v):
                return  # a line break inside a line is not representable in <lang>.txt
            try:
                for lang, v in texts.items():
                    (folder / f"{lang}.txt").write_text("\n".join(v) + "\n", encoding="utf-8")
            except UnicodeEncodeError:
                return
            path = folder / "zh.txt"
            _check_txt(folder, pairs)
            return
        _check(path, ids, pairs, fmt)


def _check_txt(folder: Path, pairs: list[tuple[str, str]]) -> None:
    try:
        c = load_corpus(folder, ["zh", "en"])
    except CorpusError as e:
        m = LOCATED.match(str(e))
        assert m is not None and Path(m["file"]).parent == folder, str(e)
        return
    assert list(zip(c.texts["zh"], c.texts["en"], strict=True)) == pairs


def test_nan_category_of_an_in_memory_corpus_writes_valid_json(tiny_models, problems, tmp_path):
    from xlalign.data.corpus import ParallelCorpus

    small = problems.head(4)
    cats = (0, float("nan"), 2, float("inf"))
    corpus = ParallelCorpus(small.ids, small.texts, {"category": cats})
    run = xlalign.extract(str(tiny_models["qwen2"]), corpus, "zh,en", sites="embed",
                          batch_size=4, output=tmp_path / "run", progress=False)  # fmt: skip

    def refuse(name: str) -> None:
        raise AssertionError(f"meta.json holds bare {name}")

    meta = json.loads((run.path / "meta.json").read_text(), parse_constant=refuse)
    assert meta["columns"]["category"] == [0, None, 2, None]
