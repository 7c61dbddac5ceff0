"""Many languages: the L x L matrix of each metric per site, in alignment.json and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

import xlalign
from xlalign.data.corpus import ParallelCorpus
from xlalign.metrics import linear_cka, matched_vs_scrambled_z, retrieval_scores
from xlalign.report import ReportInputs, build_report
from xlalign.studies.layers import SweepConfig, language_matrices, layer_sweep, write_alignment

LANGS = ["zh", "en", "xx", "yy"]


@pytest.fixture(scope="module")
def run4(tiny_models, problems, tmp_path_factory):
    """A run of the tiny Qwen2 on 40 problems in four 'languages' (two are variants)."""
    rows = 40
    zh, en = problems.texts["zh"][:rows], problems.texts["en"][:rows]
    corpus = ParallelCorpus(
        problems.ids[:rows],
        {"zh": zh, "en": en, "xx": tuple(t.upper() for t in en), "yy": tuple(f"{t} !" for t in zh)},
        {k: v[:rows] for k, v in problems.meta.items()},
    )
    return xlalign.extract(
        str(tiny_models["qwen2"]), corpus, sites="embed,L1,L3", pools="last,mean",
        batch_size=8, output=tmp_path_factory.mktemp("runs") / "four", progress=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def sweep4(run4):
    cfg = SweepConfig(metrics=("z", "p1", "cka", "xsim"), n_boot=0)
    return layer_sweep(run4, cfg, progress=False)


def test_every_pair_fills_an_l_by_l_matrix(sweep4, run4):
    mats = sweep4["matrices"]
    assert sweep4["languages"] == LANGS
    assert set(mats) == {"z", "p1", "cka", "xsim_error"}
    for by_pool in mats.values():
        assert set(by_pool) == {"last", "mean"}
        for site, m in by_pool["mean"].items():
            assert site in run4.sites and np.shape(m) == (4, 4)
            assert all(m[i][i] is None for i in range(4))
    z = np.array(mats["z"]["mean"]["L1"], dtype=float)
    off = ~np.eye(4, dtype=bool)
    assert np.array_equal(z[off], z.T[off])  # z and CKA do not care which language is x
    x, y = run4.array("en", "L1", "mean"), run4.array("yy", "L1", "mean")
    assert z[1, 3] == pytest.approx(matched_vs_scrambled_z(x, y, products="float64").z, rel=1e-12)
    cka = mats["cka"]["mean"]["L1"]
    assert cka[3][1] == pytest.approx(linear_cka(x, y).cka, rel=1e-12)
    r = retrieval_scores(x, y)
    p1 = mats["p1"]["mean"]["L1"]
    assert (p1[1][3], p1[3][1]) == (r.p1_xy, r.p1_yx)  # directed: row retrieves column
    xsim = mats["xsim_error"]["mean"]["L1"]
    assert xsim[1][3] is not None and xsim[3][1] is None  # computed one way only


def test_pivot_fills_only_its_row_and_column(run4):
    res = layer_sweep(run4, SweepConfig(metrics=("z",), n_boot=0, pivot="en"), progress=False)
    m = np.array(res["matrices"]["z"]["mean"]["L3"], dtype=object)
    assert res["pivot"] == "en" and len(res["pairs"]) == 3
    for i in range(4):
        for j in range(4):
            filled = m[i, j] is not None
            assert filled == (i != j and 1 in (i, j)), (i, j)


def test_matrices_are_rebuilt_from_records_alone():
    recs = [
        {"x": "a", "y": "b", "pool": "last", "site": "L0", "metric": "p1_xy", "value": 0.5},
        {"x": "a", "y": "b", "pool": "last", "site": "L0", "metric": "p1_yx", "value": 0.25},
        {"x": "a", "y": "c", "pool": "last", "site": "L0", "metric": "cka", "value": 0.9},
    ]
    m = language_matrices(recs, ["a", "b", "c"], ["last"], ["L0"])
    assert m["p1"]["last"]["L0"] == [[None, 0.5, None], [0.25, None, None], [None] * 3]
    assert m["cka"]["last"]["L0"][2][0] == 0.9


def test_alignment_json_and_report_show_the_matrices(sweep4, tmp_path):
    paths = write_alignment(sweep4, tmp_path / "align")
    doc = json.loads(paths["json"].read_text())
    assert doc["matrices"]["z"]["last"]["L3"][0][1] is not None
    out = build_report(tmp_path / "report", ReportInputs(title="four", alignment=doc))
    figs = sorted(k for k in out if k.startswith("languages_"))
    assert figs == ["languages_cka", "languages_p1", "languages_xsim_error", "languages_z"]
    page = out["html"].read_text(encoding="utf-8")
    assert 'id="languages"' in page and "4 languages" in page
    assert "embed, L1, L3" in page  # first, middle, last site
    one = build_report(
        tmp_path / "one", ReportInputs(title="four", alignment=doc, matrix_sites=["L1"])
    )
    assert "z at L1." in one["html"].read_text(encoding="utf-8")


def test_two_languages_get_no_matrix_section(tmp_path, qwen_study_run):
    res = layer_sweep(qwen_study_run, SweepConfig(metrics=("z",), n_boot=0), progress=False)
    assert np.shape(res["matrices"]["z"]["last"]["L0"]) == (2, 2)
    out = build_report(tmp_path, ReportInputs(title="two", alignment=res))
    assert not any(k.startswith("languages_") for k in out)
    assert 'id="languages"' not in out["html"].read_text(encoding="utf-8")
