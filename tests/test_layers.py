"""The layer sweep: every metric at every site, one null for all sites, long-format output."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from xlalign.cli import main
from xlalign.data.corpus import ParallelCorpus
from xlalign.errors import XlalignError
from xlalign.metrics import linear_cka, matched_vs_scrambled_z, retrieval_scores
from xlalign.studies.layers import (
    METRICS,
    SweepConfig,
    format_table,
    language_pairs,
    layer_sweep,
    write_alignment,
)


@pytest.fixture(scope="module")
def sweep(qwen_study_run):
    return layer_sweep(qwen_study_run, SweepConfig(n_boot=50), progress=False)


def records(result, **match):
    return [r for r in result["records"] if all(r[k] == v for k, v in match.items())]


def test_one_record_per_site_pool_pair_metric(sweep, qwen_study_run):
    run = qwen_study_run
    names = [n for sel in sweep["metrics"] for n in METRICS[sel]]
    assert sweep["pools"] == ["last", "mean"]  # 'tokens' is per token, not swept
    model = [r for r in sweep["records"] if r["site"] != "lexical"]
    assert len(model) == len(run.sites) * 2 * len(names)
    lexical = [r for r in sweep["records"] if r["site"] == "lexical"]
    assert len(lexical) == 2 * len(names)  # the model-free baseline, repeated per pool
    assert {r["depth"] for r in lexical} == {None}
    assert sweep["sites"] == list(run.sites)
    assert {r["depth"] for r in model} == set(range(len(run.sites)))


def same_prompts_as_one(run, lang, site, pool):
    """The run's vectors with every repeated prompt (equal token ids) read as its first copy's
    vector, as the sweep reads them; written again here."""
    a = np.array(run.array(lang, site, pool))
    first = {}
    for i, ids in enumerate(run.token_ids(lang)):
        k = first.setdefault(np.asarray(ids).tobytes(), i)
        a[i] = a[k]
    return a


def test_values_equal_direct_metric_calls(sweep, qwen_study_run):
    run = qwen_study_run
    for site in ("embed", "L2", "final"):
        x, y = (same_prompts_as_one(run, lang, site, "mean") for lang in ("zh", "en"))
        (z,) = records(sweep, site=site, pool="mean", metric="z")
        assert z["value"] == pytest.approx(
            matched_vs_scrambled_z(x, y, products="float64").z, rel=1e-12
        )
        assert z["ci_low"] < z["value"] < z["ci_high"]
        r = retrieval_scores(x, y)
        (p1,) = records(sweep, site=site, pool="mean", metric="p1_xy")
        assert p1["value"] == r.p1_xy
        (cka,) = records(sweep, site=site, pool="mean", metric="cka_unbiased")
        assert cka["value"] == pytest.approx(linear_cka(x, y, unbiased=True).cka, rel=1e-9)
        assert cka["ci_low"] <= cka["value"] <= cka["ci_high"]


def test_monte_carlo_uses_one_null_for_every_site(qwen_study_run):
    run = qwen_study_run
    res = layer_sweep(
        run, SweepConfig(metrics=("z",), null="monte-carlo", n_perms=200, n_boot=0), progress=False
    )
    for site in run.sites:
        x, y = run.array("zh", site, "last"), run.array("en", site, "last")
        direct = matched_vs_scrambled_z(x, y, method="monte-carlo", n_perms=200, seed=42)
        (rec,) = records(res, site=site, pool="last", metric="z")
        assert rec["detail"]["null_mean"] == pytest.approx(direct.null_mean, rel=1e-12)
        assert rec["detail"]["p_value"] == direct.p_value


def test_stratified_and_centered_sweep(qwen_study_run):
    run = qwen_study_run
    res = layer_sweep(
        run,
        SweepConfig(metrics=("z",), stratify="category", center=True, n_boot=0, sites=("L1",)),
        progress=False,
    )
    (rec,) = records(res, site="L1", pool="mean")
    direct = matched_vs_scrambled_z(
        same_prompts_as_one(run, "zh", "L1", "mean"), same_prompts_as_one(run, "en", "L1", "mean"),
        strata=run.meta["category"], center=True,
    )  # fmt: skip
    assert rec["value"] == pytest.approx(direct.z, rel=1e-12)
    assert rec["detail"]["stratified"] and rec["detail"]["centered"]


def test_undefined_values_carry_a_reason(qwen_study_run):
    # at the embedding site, within a category, every zh prompt ends in the same token
    res = layer_sweep(
        qwen_study_run,
        SweepConfig(
            metrics=("z",), stratify="category", n_boot=0, sites=("embed",), pools=("last",)
        ),
        progress=False,
    )
    (rec,) = records(res, site="embed")
    assert rec["value"] is None and "zero spread" in rec["undefined_reason"]


def test_language_pairs_all_or_pivot():
    assert language_pairs(["a", "b", "c"], None) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert language_pairs(["a", "b", "c"], "b") == [("b", "a"), ("b", "c")]
    with pytest.raises(XlalignError, match="--pivot 'x' is not a language of the run: a, b"):
        language_pairs(["a", "b"], "x")


def test_three_languages_with_pivot(tiny_models, problems, tmp_path):
    from xlalign.capture.engine import extract

    n = 30
    corpus = ParallelCorpus(
        problems.ids[:n],
        {
            "zh": problems.text("zh")[:n],
            "en": problems.text("en")[:n],
            "de": tuple(t.upper() for t in problems.text("en")[:n]),
        },
    )
    run = extract(
        str(tiny_models["llama"]), corpus, None, sites="embed,L0", pools=("last",),
        output=tmp_path / "three", progress=False,
    )  # fmt: skip
    res = layer_sweep(run, SweepConfig(metrics=("z", "p1"), pivot="en", n_boot=0), progress=False)
    assert res["pairs"] == [["en", "zh"], ["en", "de"]]
    assert {(r["x"], r["y"]) for r in res["records"]} == {("en", "zh"), ("en", "de")}


def test_write_alignment_files_and_table(sweep, tmp_path):
    paths = write_alignment(sweep, tmp_path)
    doc = json.loads(paths["json"].read_text())
    assert doc["records"] == sweep["records"]
    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(sweep["records"])
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    table = format_table(sweep)
    assert table.splitlines()[0] == "zh vs en, pool last (null exact)"
    assert "embed" in table and "p1_xy" in table


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metrics": ("z", "bleu")}, r"--metrics: unknown metric\(s\) bleu"),
        ({"null": "bootstrap"}, "--null must be 'exact' or 'monte-carlo'"),
        ({"n_boot": -1}, "--n-boot must be >= 0"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(XlalignError, match=message):
        SweepConfig(**kwargs)


def test_bad_selection_names_what_exists(qwen_study_run):
    with pytest.raises(XlalignError, match=r"site\(s\) L40 not in run .*: it has embed, L0"):
        layer_sweep(qwen_study_run, SweepConfig(sites=("L40",)), progress=False)
    with pytest.raises(XlalignError, match="--stratify column 'topic' not in run: it has category"):
        layer_sweep(qwen_study_run, SweepConfig(stratify="topic"), progress=False)


def test_align_cli(qwen_study_run, tmp_path, capsys):
    out = tmp_path / "align"
    code = main(
        ["align", str(qwen_study_run.path), "--metrics", "z,mexa", "--n-boot", "0",
         "--sites", "embed,L0", "-o", str(out), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "mexa" in printed and (out / "alignment.json").exists()
    assert main(["align", str(qwen_study_run.path), "--metrics", "nope", "-o", str(out)]) == 2
    assert "unknown metric(s) nope" in capsys.readouterr().err
    recs = json.loads((out / "alignment.json").read_text())["records"]
    assert {r["metric"] for r in recs} == {"z", "mexa"}
    assert np.isfinite([r["value"] for r in recs]).all()


def test_a_zero_norm_vector_makes_z_undefined_not_the_sweep_fail(tiny_models, problems, tmp_path):
    from xlalign.capture.engine import extract

    n = 12
    zh = ("<|endoftext|>", *problems.text("zh")[1:n])  # a prompt of special tokens only
    en = problems.text("en")[:n]
    corpus = ParallelCorpus(
        problems.ids[:n], {"zh": zh, "en": en, "de": tuple(t.upper() for t in en)}
    )
    with pytest.warns(UserWarning, match="norm 0"):
        run = extract(
            str(tiny_models["qwen2"]), corpus, None, sites="embed,L0", pools=("mean",),
            output=tmp_path / "zero", progress=False,
        )  # fmt: skip
    res = layer_sweep(run, SweepConfig(metrics=("z", "p1"), n_boot=0), progress=False)
    with_zh = [r for r in res["records"] if "zh" in (r["x"], r["y"]) and r["site"] != "lexical"]
    assert len(with_zh) == 2 * 2 * 3  # two pairs with zh, two sites, three records
    assert all(r["value"] is None for r in with_zh)
    assert all("zero-norm rows at indices [0]" in r["undefined_reason"] for r in with_zh)
    others = [r for r in records(res, x="en", y="de") if r["site"] != "lexical"]
    assert len(others) == 6 and all(isinstance(r["value"], float) for r in others)


def test_table_keeps_metric_names_whole_and_says_why_a_value_is_undefined():
    rec = {"x": "zh", "y": "en", "pool": "last", "site": "embed"}
    result = {
        "metrics": ["z", "hub"], "pairs": [["zh", "en"]], "pools": ["last"],
        "sites": ["embed", "L0"], "null": "exact",
        "records": [
            {**rec, "metric": "z", "value": None, "undefined_reason": "the null has zero spread"},
            {**rec, "metric": "semantic_hub", "value": 0.25, "undefined_reason": None},
            {**rec, "site": "L0", "metric": "z", "value": 3.5, "undefined_reason": None},
            {**rec, "site": "L0", "metric": "semantic_hub", "value": None,
             "undefined_reason": "zero-norm rows at indices [0]"},
        ],
    }  # fmt: skip
    lines = format_table(result).splitlines()
    assert lines[1].split() == ["site", "z", "semantic_hub"]
    assert lines[2].split() == ["embed", "undef", "[1]", "0.250"]
    assert lines[3].split() == ["L0", "3.500", "undef", "[2]"]
    assert lines[-2:] == ["  [1] the null has zero spread", "  [2] zero-norm rows at indices [0]"]
