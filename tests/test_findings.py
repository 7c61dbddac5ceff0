"""findings.json: verdicts against the control and the lexical baseline; dominance; --standardize.

Reference values are recomputed here independently: the verdict from its written rule, the
lexical baseline from the tokenizer's own output and the exact-null z formula of REFERENCE.md,
dominance shares with plain numpy.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from references import cka as ref_cka
from test_findings_values import _rule
from xlalign.cli import main
from xlalign.errors import XlalignError
from xlalign.pipeline.config import StudyConfig
from xlalign.pipeline.study import run_study
from xlalign.studies.findings import (
    FINDING_METRICS,
    VERDICTS,
    build_findings,
    findings_for_origin,
    merge_findings,
    summary_lines,
    verdict,
)
from xlalign.studies.layers import SweepConfig, layer_sweep


def v(value, lo=None, hi=None):
    return {"value": value, "ci_low": lo, "ci_high": hi}


# ---------------------------------------------------------------------------------------------
# the verdict rule on hand-built cases


@pytest.mark.parametrize(
    ("model", "control", "lexical", "expected"),
    [
        (v(10, 9, 11), v(5, 4, 6), v(3, 2, 4), "beyond-control"),
        (v(10, 9, 11), v(8, 7, 9), v(3, 2, 4), "matched-by-control"),  # touching bounds overlap
        (v(10, 9, 11), v(12, 10.5, 13), None, "matched-by-control"),  # control higher, overlaps
        (v(10, 9, 11), v(5, 4, 6), v(9.5, 8, 10), "matched-by-lexical"),
        (v(10, 9, 11), v(5, 4, 6), v(20, 19, 21), "matched-by-lexical"),  # lexical above
        (v(10, 9, 11), v(20, 19, 21), v(30, 29, 31), "below-control"),  # below wins over lexical
        (v(10, 9, 11), None, v(3, 2, 4), "no-control"),
        (v(10, 9, 11), None, v(10, 9, 11), "matched-by-lexical"),  # lexical checked first
        (v(10, 9, 11), v(None), None, "no-control"),  # an undefined control is no control
        (v(10), v(9.999), None, "beyond-control"),  # no intervals: points compared
        (v(10), v(10), None, "matched-by-control"),
        (v(10, None, 11), v(9, 8, 10), None, "matched-by-control"),  # missing low -> value
        (v(10, 9, 11), v(5, 4, 6), v(8, 7, 9), "matched-by-lexical"),  # touching the lexical
        (v(10, 9, 11), v(5, 4, 6), v(8, 7, 8.999), "beyond-control"),
    ],
)
def test_verdict_rule(model, control, lexical, expected):
    assert verdict(model, control, lexical) == expected


def test_every_verdict_is_listed_and_model_value_required():
    assert set(VERDICTS) == {
        "beyond-control", "matched-by-control", "matched-by-lexical", "below-control",
        "matched-by-null", "no-control",
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"^verdict needs the model's value; got None$"):
        verdict(v(None), v(1, 0, 2), None)


def reference_verdict(model, control, lexical, control_best=None, below_everywhere=None):
    """The rule of docs/report.md, written again: intervals closed, 'above' is strict."""

    def iv(d):
        if d is None or d["value"] is None:
            return None
        lo = d["value"] if d["ci_low"] is None else d["ci_low"]
        hi = d["value"] if d["ci_high"] is None else d["ci_high"]
        return lo, hi

    m, c, lx, cb = iv(model), iv(control), iv(lexical), iv(control_best)
    above_c = c is not None and m[0] > c[1] and (cb is None or m[0] > cb[1])
    above_l = lx is None or m[0] > lx[1]
    below = below_everywhere if below_everywhere is not None else (c is not None and m[1] < c[0])
    if c is not None and below:
        return "below-control"
    if (model.get("p_best_site") or 0) > 0.05:  # the best of all sites of scrambled pairs
        return "matched-by-null"
    if c is not None and not above_c:
        return "matched-by-control"
    if not above_l:
        return "matched-by-lexical"
    return "no-control" if c is None else "beyond-control"


# ---------------------------------------------------------------------------------------------
# a study on a tiny model: findings agree with the alignment.json records


@pytest.fixture(scope="module")
def study(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("findings") / "gpt2"
    cfg = StudyConfig(
        model=str(tiny_models["gpt2"]), problems=30, langs=("zh", "en"), output=str(out),
        n_boot=20, sites="embed,L0,L3",
    )  # fmt: skip
    result = run_study(cfg, command=["test"], progress=False, say=lambda _m: None)
    return out, result


def test_findings_agree_with_the_records(study):
    out, result = study
    doc = json.loads((out / "findings.json").read_text())
    model = json.loads((out / "alignment.json").read_text())
    control = json.loads((out / "control-random-init" / "alignment.json").read_text())
    assert set(doc) >= {"headline", "findings", "warnings"}
    sites = model["sites"]

    def recs(d, **kw):
        return [r for r in d["records"] if all(r[k] == val for k, val in kw.items())]

    identical = {(r["site"], r["pool"], r["lang"]) for r in model["dominance"] if r["identical"]}
    seen = set()
    for f in doc["findings"]:
        x, y = f["pair"]
        mine = [
            r for r in recs(model, x=x, y=y, pool=f["pool"], metric=f["metric"])
            if r["site"] in sites and r["value"] is not None
        ]  # fmt: skip
        # sites of identical vectors (shared tokens) are passed over unless every site is one
        clean = [r for r in mine if not {(r["site"], f["pool"], x), (r["site"], f["pool"], y)}
                 & identical] or mine  # fmt: skip
        best = max(r["value"] for r in clean)
        assert f["model"]["value"] == best
        (at,) = [r for r in mine if r["site"] == f["site"]]
        assert (at["value"], at["ci_low"], at["ci_high"]) == (
            f["model"]["value"], f["model"]["ci_low"], f["model"]["ci_high"]
        )  # fmt: skip
        (c,) = recs(control, x=x, y=y, pool=f["pool"], metric=f["metric"], site=f["site"])
        nulls = {k: c[k] for k in ("p_value", "null_q95") if c.get(k) is not None}
        assert f["control"] == {
            "value": c["value"], "ci_low": c["ci_low"], "ci_high": c["ci_high"], **nulls
        }  # fmt: skip
        assert f["model"]["p_best_site"] == at["p_best_site"] == f["p_best_site"]
        (lx,) = recs(model, x=x, y=y, pool=f["pool"], metric=f["metric"], site="lexical")
        assert lx["depth"] is None
        assert f["lexical"]["value"] == lx["value"]
        # like with like: the control's own best site, and the model against it site by site
        c_identical = {(r["site"], r["pool"], r["lang"]) for r in control["dominance"]
                       if r["identical"]}  # fmt: skip
        theirs = [r for r in recs(control, x=x, y=y, pool=f["pool"], metric=f["metric"])
                  if r["site"] in sites and r["value"] is not None]  # fmt: skip
        c_clean = [r for r in theirs if not {(r["site"], f["pool"], x), (r["site"], f["pool"], y)}
                   & c_identical] or theirs  # fmt: skip
        c_best = max(c_clean, key=lambda r: r["value"])
        c_nulls = {k: c_best[k] for k in ("p_value", "null_q95", "p_best_site")
                   if c_best.get(k) is not None}  # fmt: skip
        assert f["control_best"] == {"site": c_best["site"], "value": c_best["value"],
                                     "ci_low": c_best["ci_low"], "ci_high": c_best["ci_high"],
                                     **c_nulls}  # fmt: skip
        by_site = {r["site"]: r for r in theirs}
        lo = lambda r: r["value"] if r["ci_low"] is None else r["ci_low"]  # noqa: E731
        hi = lambda r: r["value"] if r["ci_high"] is None else r["ci_high"]  # noqa: E731
        pairs = [(r, by_site[r["site"]]) for r in mine if r["site"] in by_site]
        above = sum(lo(a) > hi(b) for a, b in pairs)
        below = sum(hi(a) < lo(b) for a, b in pairs)
        counts = f["sites_vs_control"]
        assert (counts["above"], counts["below"], counts["compared"]) == (above, below, len(pairs))
        assert f["verdict"] == reference_verdict(
            f["model"], f["control"], f["lexical"], f["control_best"], below == len(pairs)
        )
        seen.add((f["pool"], f["metric"]))
    swept = {r["metric"] for r in model["records"]}  # the biased cka only when asked for
    assert seen == {(p, m) for p in model["pools"] for m in FINDING_METRICS if m in swept}
    assert "cka_unbiased" in swept and "cka" not in swept
    # the summary is made from findings.json: every z line carries the control beside it
    assert result["summary"] == summary_lines(doc)
    assert doc["headline"] in result["summary"]
    for line in result["summary"]:
        if " z " in f" {line} " and "warning" not in line and "/" in line[:8]:
            assert "control" in line, line
    md = (out / "report.md").read_text()
    assert md.index("Findings and their controls") < md.index("Alignment against depth")
    assert doc["headline"].split(".")[0] in md


def test_lexical_baseline_equals_plain_numpy(study, tiny_models):
    from transformers import AutoTokenizer

    out, _ = study
    model = json.loads((out / "alignment.json").read_text())
    corpus = [json.loads(line) for line in (out / "corpus.jsonl").read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(tiny_models["gpt2"])
    bags = {}
    for lang in ("zh", "en"):
        rows = []
        for row in corpus:
            enc = tok(row[lang], add_special_tokens=True, return_special_tokens_mask=True)
            ids = [
                t
                for t, s in zip(enc["input_ids"], enc["special_tokens_mask"], strict=True)
                if not s
            ]
            rows.append(Counter(ids))
        bags[lang] = rows
    vocab = sorted({t for lang in bags for c in bags[lang] for t in c})
    col = {t: j for j, t in enumerate(vocab)}

    def dense(rows):
        m = np.zeros((len(rows), len(vocab)))
        for i, c in enumerate(rows):
            for t, k in c.items():
                m[i, col[t]] = k
        return m / np.linalg.norm(m, axis=1, keepdims=True)

    x, y = dense(bags["zh"]), dense(bags["en"])
    n = len(x)
    s = x @ y.T
    m = s.mean()
    r, c = s.mean(axis=1, keepdims=True), s.mean(axis=0, keepdims=True)
    var = ((s - r - c + m) ** 2).sum() / (n * n * (n - 1))
    z = (np.trace(s) / n - m) / np.sqrt(var)
    lex = [r for r in model["records"] if r["site"] == "lexical" and r["metric"] == "z"]
    assert len(lex) == len(model["pools"])  # one reference per pool, all equal
    for rec in lex:
        assert rec["value"] == pytest.approx(z, rel=1e-9)
    cka = [r for r in model["records"] if r["site"] == "lexical" and r["metric"] == "cka_unbiased"]
    assert cka[0]["value"] == pytest.approx(ref_cka(x, y, unbiased=True), rel=1e-9)


def test_dominance_shares_equal_numpy(study):
    from xlalign.store.run import load_run

    out, _ = study
    model = json.loads((out / "alignment.json").read_text())
    run = load_run(out)
    assert len(model["dominance"]) == len(model["sites"]) * len(model["pools"]) * 2
    for rec in model["dominance"]:
        a = np.asarray(run.array(rec["lang"], rec["site"], rec["pool"]), dtype=np.float64)
        per = (a**2).sum(axis=0) / (a**2).sum()
        top = list(np.argsort(per)[::-1][:3])
        assert rec["top_dims"] == top
        assert rec["share"] == pytest.approx(per[top[0]], rel=1e-12)
        assert rec["flagged"] == (per[top[0]] > 0.5)


def test_small_sample_is_named(tiny_models, tmp_path):
    out = tmp_path / "small"
    cfg = StudyConfig(
        model=str(tiny_models["gpt2"]), problems=20, langs=("zh", "en"), output=str(out),
        n_boot=0, sites="embed,L0", control="none",
    )  # fmt: skip
    result = run_study(cfg, command=["test"], progress=False, say=lambda _m: None)
    doc = json.loads((out / "findings.json").read_text())
    assert any("20 pairs" in w and "not reliable" in w for w in doc["warnings"])
    assert any("not reliable" in line for line in result["summary"])
    assert "not reliable" in (out / "report.md").read_text()
    assert {f["verdict"] for f in doc["findings"]} <= {
        "no-control", "matched-by-lexical", "matched-by-null"
    }  # fmt: skip


def test_problems_n7_says_why_it_wrote_5(tmp_path, capsys):
    assert main(["problems", "--n", "7", "-o", str(tmp_path / "p.jsonl")]) == 0
    said = capsys.readouterr().out
    assert "wrote 5 problems" in said
    assert "n // 5 = 1 per category" in said
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 5


# ---------------------------------------------------------------------------------------------
# one massive dimension: flagged, and standardizing removes its effect


@pytest.fixture(scope="module")
def massive_runs(tiny_models, problems, tmp_path_factory):
    """The tiny GPT-2 and a copy with one embedding dimension scaled by 200 (token+position)."""
    import shutil

    from transformers import AutoModelForCausalLM

    from xlalign.capture.engine import extract

    root = tmp_path_factory.mktemp("massive")
    src = tiny_models["gpt2"]
    big = root / "gpt2-massive"
    shutil.copytree(src, big)
    model = AutoModelForCausalLM.from_pretrained(src)
    with np.errstate(all="ignore"):
        import torch

        with torch.no_grad():
            model.transformer.wte.weight[:, 3] *= 200.0
            model.transformer.wpe.weight[:, 3] *= 200.0
    model.save_pretrained(big)
    data = problems.head(60)
    runs = {}
    for name, path in (("plain", src), ("massive", big)):
        runs[name] = extract(
            str(path), data, ["zh", "en"], sites="embed,L0", pools=("mean",),
            output=root / f"run-{name}", progress=False,
        )  # fmt: skip
    return runs


def test_one_massive_dimension_is_flagged_and_standardizing_removes_it(massive_runs):
    cfg = SweepConfig(metrics=("z", "cka"), n_boot=0, lexical=False)
    raw = {k: layer_sweep(r, cfg, progress=False) for k, r in massive_runs.items()}
    std = {
        k: layer_sweep(r, SweepConfig(metrics=("z", "cka"), n_boot=0, standardize=True),
                       progress=False)
        for k, r in massive_runs.items()
    }  # fmt: skip

    def val(doc, metric, site="embed"):
        (r,) = [r for r in doc["records"] if r["metric"] == metric and r["site"] == site]
        return r["value"]

    flagged = {(d["site"], d["lang"]) for d in raw["massive"]["dominance"] if d["flagged"]}
    assert ("embed", "zh") in flagged and ("embed", "en") in flagged
    assert all(d["top_dims"][0] == 3 for d in raw["massive"]["dominance"] if d["site"] == "embed")
    assert not any(d["flagged"] for d in raw["plain"]["dominance"])
    # the massive dimension moves the raw numbers ...
    assert abs(val(raw["massive"], "cka") - val(raw["plain"], "cka")) > 0.05
    assert abs(val(raw["massive"], "z") - val(raw["plain"], "z")) > 1.0
    # ... and standardizing removes its effect: the massive model's standardized values equal
    # the un-massive model's standardized values (the scaled column z-scores to the same)
    for metric in ("z", "cka"):
        assert val(std["massive"], metric) == pytest.approx(val(std["plain"], metric), rel=1e-4)
    # independent check of the standardized z: numpy z-scoring + the exact-null formula
    run = massive_runs["massive"]
    x = np.asarray(run.array("zh", "embed", "mean"), np.float64)
    y = np.asarray(run.array("en", "embed", "mean"), np.float64)
    both = np.concatenate([x, y])
    mu, sd = both.mean(0), both.std(0)
    xs, ys = (x - mu) / sd, (y - mu) / sd
    xs /= np.linalg.norm(xs, axis=1, keepdims=True)
    ys /= np.linalg.norm(ys, axis=1, keepdims=True)
    s, n = xs @ ys.T, len(xs)
    m = s.mean()
    var = ((s - s.mean(1, keepdims=True) - s.mean(0, keepdims=True) + m) ** 2).sum() / (
        n * n * (n - 1)
    )
    assert val(std["massive"], "z") == pytest.approx((np.trace(s) / n - m) / np.sqrt(var), rel=1e-6)
    # findings name the flagged site, with raw and standardized values side by side
    from xlalign.studies.findings import findings_for_sweep

    doc = findings_for_sweep(run, raw["massive"], None, cfg)
    warn = [w for w in doc["warnings"] if w.startswith("mean pool, embed")]
    assert warn and "one dimension" in warn[0] and "dim 3" in warn[0]
    # a finding at that site names the dimension and its standardized value
    at_embed = [f for f in doc["findings"] if f["site"] == "embed" and f["pool"] == "mean"]
    for f in at_embed:
        assert f["dominated"]["languages"]["zh"]["dim"] == 3
    (entry,) = [d for d in doc["dominance"] if d["site"] == "embed"]
    z_entry = next(e for e in entry["values"] if e["metric"] == "z")
    assert z_entry["raw"] == val(raw["massive"], "z")
    assert z_entry["standardized"] == pytest.approx(val(std["massive"], "z"), rel=1e-9)


# ---------------------------------------------------------------------------------------------
# origin findings and merging


def test_origin_findings_and_merge(study):
    out, _ = study
    origin = json.loads((out / "origin.json").read_text())
    doc = findings_for_origin(origin)
    by_pool = {f["pool"]: f for f in doc["findings"]}
    rows = origin["decomposition"]
    best = max(rows, key=lambda r: r["z_mean_full"])
    assert by_pool["mean"]["site"] == best["site"]
    assert by_pool["mean"]["model"]["value"] == best["z_mean_full"]
    (ctl,) = [r for r in origin["control"]["decomposition"] if r["site"] == best["site"]]
    assert by_pool["mean"]["control"]["value"] == ctl["z_mean_full"]
    assert by_pool["mean"]["lexical"]["value"] == origin["lexical"]["z"]
    for f in doc["findings"]:
        key = {"mean": "z_mean_full", "last": "z_last"}[f["pool"]]
        ctl_rows = {r["site"]: r[key] for r in origin["control"]["decomposition"]}
        below = all(r[key] < ctl_rows[r["site"]] for r in rows if r["site"] in ctl_rows)
        assert f["verdict"] == reference_verdict(
            f["model"], f["control"], f["lexical"], f["control_best"], below
        )
    sweep = json.loads((out / "findings.json").read_text())
    merged = merge_findings(sweep, doc)
    assert merged["headline"] == sweep["headline"]  # the sweep leads
    assert len(merged["findings"]) == len(sweep["findings"]) + len(doc["findings"])
    again = merge_findings(merged, doc)  # origin replaces only its own part
    assert len(again["findings"]) == len(merged["findings"])
    # findings written before the 'source' field are the sweep's: a new sweep replaces them
    legacy = {
        "findings": [{k: x for k, x in f.items() if k != "source"} for f in sweep["findings"]]
    }
    assert merge_findings(legacy, sweep)["findings"] == sweep["findings"]


def test_build_findings_without_control_says_so():
    recs = [
        {"x": "a", "y": "b", "pool": "mean", "site": s, "depth": i, "metric": "z", "value": val,
         "ci_low": val - 1, "ci_high": val + 1, "n": 50}
        for i, (s, val) in enumerate((("embed", 3.0), ("L0", 7.0)))
    ] + [
        {"x": "a", "y": "b", "pool": "mean", "site": "lexical", "depth": None, "metric": "z",
         "value": 2.0, "ci_low": 1.0, "ci_high": 3.0, "n": 50}
    ]  # fmt: skip
    doc = build_findings(
        {"pairs": [["a", "b"]], "pools": ["mean"], "sites": ["embed", "L0"], "records": recs,
         "n_boot": 10, "languages": ["a", "b"], "null": "exact"}
    )  # fmt: skip
    (f,) = doc["findings"]
    assert (f["site"], f["verdict"], f["control"]) == ("L0", "no-control", None)
    assert any("no random-weights control" in w for w in doc["warnings"])
    assert "no-control" in doc["headline"] and "no control run" in doc["headline"]


def test_dimension_dominance_and_standardize_against_numpy():
    from xlalign.errors import XlalignError
    from xlalign.metrics.dominance import dimension_dominance, standardize_pair

    rs = np.random.RandomState(3)
    x = rs.randn(5000, 9).astype(np.float32)  # more rows than one chunk
    x[:, 7] *= 6.0
    per = (x.astype(np.float64) ** 2).sum(axis=0)
    res = dimension_dominance(x)
    assert res.top_dims == list(np.argsort(-per)[:3])
    assert res.share == pytest.approx(per.max() / per.sum(), rel=1e-12)
    assert sum(res.top_shares) < 1.0
    assert dimension_dominance(np.zeros((4, 3))).share is None
    with pytest.raises(XlalignError, match="NaN or inf"):
        dimension_dominance(np.array([[1.0, np.nan]]))
    a, b = rs.randn(20, 4), rs.randn(30, 4)
    a[:, 2] = b[:, 2] = 5.0  # a constant dimension becomes 0
    sa, sb = standardize_pair(a, b)
    both = np.concatenate([a, b])
    keep = [0, 1, 3]
    ref = (both[:, keep] - both[:, keep].mean(0)) / both[:, keep].std(0)
    assert np.allclose(np.concatenate([sa, sb])[:, keep], ref, atol=1e-12)
    assert np.all(sa[:, 2] == 0) and np.all(sb[:, 2] == 0)


def test_align_sweeps_the_control_beside_the_run_and_writes_findings(study, tmp_path, capsys):
    import shutil

    out, _ = study
    run = tmp_path / "copy"
    shutil.copytree(out, run)
    (run / "findings.json").unlink()
    args = ["align", str(run), "--metrics", "z,p1,cka", "--n-boot", "0", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    doc = json.loads((run / "findings.json").read_text())
    assert doc["headline"] in printed
    control = json.loads((run / "control-random-init" / "alignment.json").read_text())
    assert control["n_boot"] == 0  # swept again with align's own settings
    for f in doc["findings"]:
        (c,) = [
            r for r in control["records"]
            if (r["x"], r["y"], r["pool"], r["site"], r["metric"])
            == (*f["pair"], f["pool"], f["site"], f["metric"])
        ]  # fmt: skip
        assert f["control"]["value"] == c["value"]
        counts = f["sites_vs_control"]
        assert f["verdict"] == reference_verdict(
            f["model"], f["control"], f["lexical"], f["control_best"],
            counts["below"] == counts["compared"],
        )  # fmt: skip
    assert any("verdicts compare point values" in w for w in doc["warnings"])


def test_a_z_interval_that_excludes_its_value_is_named() -> None:
    """Near perfect alignment the pair bootstrap puts z's whole interval below the value."""
    from xlalign.metrics import matched_vs_scrambled_z, z_ci

    rs = np.random.RandomState(0)
    latent, w = rs.randn(200, 16), rs.randn(16, 64)
    x, y = latent @ w + rs.randn(200, 64), latent @ w + rs.randn(200, 64)
    point = matched_vs_scrambled_z(x, y).z
    ci = z_ci(x, y, n_boot=200, seed=0)
    assert ci.high < point  # the bias this warning exists for, measured on real resamples
    rec = {"x": "zh", "y": "en", "pool": "mean", "site": "L0", "depth": 1, "n": 200}
    alignment = {
        "pairs": [["zh", "en"]],
        "pools": ["mean"],
        "sites": ["L0"],
        "n_boot": 200,
        "records": [{**rec, "metric": "z", "value": point, "ci_low": ci.low, "ci_high": ci.high}],
    }
    doc = build_findings(alignment)
    named = [w for w in doc["warnings"] if "lies below its value" in w]
    assert len(named) == 1 and "z at L0" in named[0] and "join the null" in named[0]
    # an interval that holds its value gets no such warning
    inside = {**alignment, "records": [{**alignment["records"][0], "ci_high": point + 1}]}
    assert not [w for w in build_findings(inside)["warnings"] if "lies below" in w]


def test_a_cka_interval_above_its_value_is_named_with_its_own_reason() -> None:
    rec = {"x": "zh", "y": "en", "pool": "mean", "site": "L1", "depth": 2, "n": 100}
    alignment = {
        "pairs": [["zh", "en"]],
        "pools": ["mean"],
        "sites": ["L1"],
        "n_boot": 100,
        # the values seen on the real Qwen2.5-0.5B (docs/metrics.md)
        "records": [{**rec, "metric": "cka", "value": 0.981, "ci_low": 0.986, "ci_high": 0.990}],
    }
    (named,) = [w for w in build_findings(alignment)["warnings"] if "lies above its value" in w]
    assert "CKA (biased) at L1" in named and "raise the resampled CKA" in named


def test_identical_vectors_are_counted_named_and_marked(study):
    """The problems end in a couple of tokens per language, so at the embedding the last-token
    vectors take a couple of values: counted against numpy, warned about, and any finding
    placed there carries the artifact."""
    from xlalign.store.run import load_run

    out, _ = study
    model = json.loads((out / "alignment.json").read_text())
    doc = json.loads((out / "findings.json").read_text())
    run = load_run(out)
    flagged = set()
    for rec in model["dominance"]:
        a = np.asarray(run.array(rec["lang"], rec["site"], rec["pool"]))
        rows, counts = np.unique(a, axis=0, return_counts=True)
        assert (rec["distinct"], rec["largest_group"]) == (len(rows), counts.max()), rec["site"]
        n = a.shape[0]
        assert rec["identical"] == (counts.max() >= 0.2 * n or len(rows) <= 0.5 * n)
        if rec["identical"]:
            flagged.add((rec["site"], rec["pool"]))
    assert ("embed", "last") in flagged  # the point of the test: the real artifact is present
    assert ("embed", "mean") not in flagged
    named = {(e["site"], e["pool"]) for e in doc["identical_vectors"]}
    assert named == flagged
    for site, pool in flagged:
        assert any(w.startswith(f"{pool} pool, ") and site in w.split(":")[0]
                   and "many prompts share one vector" in w
                   for w in doc["warnings"])  # fmt: skip
    sites = model["sites"]
    for f in doc["findings"]:
        if f.get("source", "alignment") != "alignment":
            continue
        clean = [s for s in sites if (s, f["pool"]) not in flagged]
        # a flagged site is chosen only when every site is flagged, and then named
        assert (f["site"], f["pool"]) not in flagged or not clean
        assert (f["artifact"] == "identical-vectors") == ((f["site"], f["pool"]) in flagged)
        gain = f["largest_gain"]
        assert gain is None or (gain["site"], f["pool"]) not in flagged or not clean


def test_identical_groups_against_numpy_unique():
    from xlalign.metrics import distinct_rows, identical_groups

    rs = np.random.default_rng(3)
    base = rs.standard_normal((7, 5)).astype(np.float32)
    a = base[rs.integers(0, 7, size=5000)]  # over one read chunk, with repeats
    rows, counts = np.unique(a, axis=0, return_counts=True)
    g = identical_groups(a)
    assert (g.n, g.distinct, g.largest_group) == (5000, len(rows), counts.max())
    # 7 vectors over 5,000 rows, the largest group 15%: flagged by the distinct count
    assert counts.max() < 0.2 * 5000
    assert g.identical and distinct_rows(a) == len(rows)
    # one shared vector in 19% of the rows, the rest all different: not flagged; at 20%, flagged
    for share, flagged in ((0.19, False), (0.2, True)):
        x = rs.standard_normal((100, 4))
        x[: int(share * 100)] = x[0]
        assert identical_groups(x).identical is flagged, share
    # 51 distinct of 100 rows in groups of two: not flagged; 50 distinct: flagged
    for distinct, flagged in ((51, False), (50, True)):
        x = rs.standard_normal((distinct, 4))
        x = np.concatenate([x, x])[:100]
        assert identical_groups(x).identical is flagged, distinct
    b = np.zeros((3, 2))
    b[1, 0] = -0.0  # the same value as 0.0 but other bits: counted apart, as documented
    assert distinct_rows(b) == 2
    with pytest.raises(
        XlalignError, match=r"expected a \(n_rows, d_model\) array, got shape \(4,\)"
    ):
        distinct_rows(np.zeros(4))


def test_identical_rule_over_every_group_structure_up_to_12_rows():
    """The flag's rule written out (more than one row, two rows equal at least, and the largest
    group of equal rows at least a fifth of them or at most half as many distinct rows as
    rows), checked on arrays
    built with every feasible (distinct, largest group) for up to 12 rows."""
    from xlalign.metrics import identical_groups

    rs = np.random.default_rng(5)
    for n in range(1, 13):
        for distinct in range(1, n + 1):
            for largest in range(1, n + 1):
                rest, others = n - largest, distinct - 1
                if not (others <= rest <= others * largest) or (others == 0) != (rest == 0):
                    continue
                sizes = [largest] + [rest // others + (i < rest % others) for i in range(others)]
                base = rs.standard_normal((distinct, 3))
                a = np.repeat(base, sizes, axis=0)
                g = identical_groups(a)
                assert (g.n, g.distinct, g.largest_group) == (n, distinct, largest)
                # issue 27: all rows distinct is never flagged, whatever n (n <= 5 was)
                want = n > 1 and largest >= 2 and (5 * largest >= n or 2 * distinct <= n)
                assert g.identical is want, (n, distinct, largest)


def test_distinct_rows_reads_every_chunk(monkeypatch):
    """Repeats that fall in different read chunks (and a last, partial chunk) count once."""
    from xlalign.metrics import duplicates

    monkeypatch.setattr(duplicates, "_CHUNK", 3)
    rs = np.random.default_rng(4)
    base = rs.standard_normal((4, 3))
    for rows in ([0, 1, 2, 3, 0, 1, 2], [0, 0, 0, 0, 0, 0, 1], [3, 2, 1, 0]):
        a = base[rows]
        assert duplicates.distinct_rows(a) == len(np.unique(a, axis=0)), rows
        assert duplicates.distinct_rows(np.asfortranarray(a)) == len(np.unique(a, axis=0))


def test_small_sample_warning_below_30_only():
    from xlalign.studies.findings import SMALL_SAMPLE, small_sample_warning

    assert SMALL_SAMPLE == 30
    assert small_sample_warning(None) is None
    assert small_sample_warning(30) is None
    assert small_sample_warning(31) is None
    w = small_sample_warning(29)
    assert w is not None and w.startswith("only 29 pairs (under 30): ")
    assert w.endswith("intervals are wide and a few pairs can move any value")
    assert small_sample_warning(5, "prompts").startswith("only 5 prompts (under 30)")  # type: ignore[union-attr]


def test_largest_gain_is_the_argmax_of_model_minus_control():
    """Against a brute-force argmax over the sites that have both values (first site on a tie);
    sites without a model or control value, or with a None value, are skipped."""
    from xlalign.studies.findings import _largest_gain

    rs = np.random.default_rng(9)
    sites = [f"L{i}" for i in range(8)]
    for trial in range(30):
        model, control = {}, {}
        for site in sites:
            for idx in (model, control):
                r = rs.random()
                if r < 0.15:
                    continue  # no record
                val = None if r < 0.25 else float(rs.integers(-3, 4))  # ties happen
                idx[("zh", "en", "mean", site, "z")] = {"value": val}
        other = {("en", "zh", "mean", s, "z"): {"value": 100.0} for s in sites}  # another pair
        got = _largest_gain({**model, **other}, control, "zh", "en", "mean", sites, "z")
        both = [
            (model[k]["value"] - control[k]["value"], i, k[3])
            for i, k in enumerate(("zh", "en", "mean", s, "z") for s in sites)
            if k in model
            and k in control
            and model[k]["value"] is not None
            and control[k]["value"] is not None
        ]
        if not both:
            assert got is None, trial
            continue
        gain, _, site = max(both, key=lambda t: (t[0], -t[1]))
        key = ("zh", "en", "mean", site, "z")
        assert got == {
            "site": site,
            "gain": gain,
            "model": model[key]["value"],
            "control": control[key]["value"],
        }, trial


def _finding(metric, value, lo, hi, site="L1", pool="mean", pair=("zh", "en")):
    return {"pair": list(pair), "pool": pool, "site": site, "metric": metric,
            "model": {"value": value, "ci_low": lo, "ci_high": hi}}  # fmt: skip


def test_outside_interval_warns_for_each_value_outside_its_closed_interval():
    """The rule written out: a value with both bounds, strictly outside [low, high], is named
    with the side and the metric's own reason (a generic one for other metrics)."""
    from xlalign.studies.findings import _outside_interval

    tail = "; it is not a band around the value, and the verdict compares intervals biased alike"
    quiet = [
        _finding("z", 2.0, 1.0, 3.0),
        _finding("z", 1.0, 1.0, 3.0),  # on the low bound: inside
        _finding("z", 3.0, 1.0, 3.0),  # on the high bound: inside
        _finding("z", None, 1.0, 3.0),
        _finding("z", 5.0, None, 3.0),
        _finding("z", 5.0, 1.0, None),
        _finding("z", 5.0, None, None),
    ]
    loud = [
        _finding("z", 5.0, 1.0, 3.0, site="L2"),
        _finding("cka", 0.5, 0.75, 0.875, site="L3", pool="last"),
        _finding("p1_xy", 0.25, 0.5, 0.75, site="embed", pair=("de", "fr")),
    ]
    assert _outside_interval(quiet) == []
    assert _outside_interval(quiet + loud) == [
        "zh/en, mean pool, z at L2: the model's bootstrap interval [1, 3] lies below its value "
        "5 (pairs drawn twice join the null and lower the resampled z)" + tail,
        "zh/en, last pool, CKA (biased) at L3: the model's bootstrap interval [0.75, 0.875] lies above "
        "its value 0.5 (rows drawn twice weigh twice in both Gram matrices and raise the "
        "resampled CKA)" + tail,
        # P@1's intervals never had a resampling bias: the value and interval disagree
        "de/fr, mean pool, P@1 x->y at embed: the model's interval [0.5, 0.75] lies above its "
        "value 0.25: the two come from different computations (a sweep of other settings or "
        "another version?); align again",
    ]
    # the control's and the lexical baseline's values are checked the same way; the lexical
    # baseline (the same under every pool) is named once
    inside = {"value": 2.0, "ci_low": 1.0, "ci_high": 3.0}
    ctl = {**_finding("cka", 0.5, 0.4, 0.6, site="L0"), "control": {"value": 0.318,
           "ci_low": 0.409, "ci_high": 0.481}, "lexical": inside}  # fmt: skip
    lex = [
        {**_finding("z", 2.0, 1.0, 3.0, pool=pool), "control": inside,
         "lexical": {"value": 19.86, "ci_low": 16.98, "ci_high": 19.59}}
        for pool in ("mean", "last")
    ]  # fmt: skip
    assert _outside_interval([ctl, *lex]) == [
        "zh/en, mean pool, CKA (biased) at L0: the control's bootstrap interval [0.409, 0.481] lies "
        "above its value 0.318 (rows drawn twice weigh twice in both Gram matrices and raise "
        "the resampled CKA)" + tail,
        "zh/en, z of the lexical baseline: the lexical baseline's bootstrap interval [16.98, "
        "19.59] lies below its value 19.86 (pairs drawn twice join the null and lower the "
        "resampled z)" + tail,
    ]


def test_identical_vectors_and_the_sites_findings_pass_over():
    """From hand-built records: the entries and warnings, and build_findings passing over a
    site flagged for either language of a pair (but not for another pair), unless every site
    is flagged, when the finding carries the artifact and does not count in the headline."""
    from xlalign.studies.findings import identical_vectors

    def dom(site, lang, distinct, largest, flag):
        return {"site": site, "pool": "last", "lang": lang, "distinct": distinct,
                "largest_group": largest, "identical": flag}  # fmt: skip

    recs = [dom("embed", "zh", 2, 160, True), dom("L0", "zh", 200, 1, False),
            dom("embed", "en", 3, 120, True), dom("L1", "de", 190, 3, None)]  # fmt: skip
    out = identical_vectors(recs)
    assert [(e["site"], e["pool"], e["distinct"], e["largest_group"]) for e in out] == [
        ("embed", "last", {"zh": 2, "en": 3}, {"zh": 160, "en": 120})
    ]
    assert out[0]["warning"].startswith(
        "embed, last pool: many prompts share one vector (zh: 2 distinct, 160 rows share one, "
        "en: 3 distinct, 120 rows share one)"
    )
    assert identical_vectors([]) == [] and identical_vectors(recs[1:2]) == []

    def rec(x, y, site, value, ci=0.5):
        return {"x": x, "y": y, "pool": "last", "site": site, "metric": "z", "value": value,
                "ci_low": value - ci, "ci_high": value + ci, "n": 200}  # fmt: skip

    sites = ["embed", "L0", "L1"]
    model = {"sites": sites, "pools": ["last"], "pairs": [["zh", "en"], ["de", "fr"]],
             "records": [rec("zh", "en", "embed", 30.0), rec("zh", "en", "L0", 12.0),
                         rec("zh", "en", "L1", 10.0), rec("de", "fr", "embed", 30.0),
                         rec("de", "fr", "L0", 12.0), rec("de", "fr", "L1", 10.0)],
             "dominance": recs}  # fmt: skip
    control = {"records": [rec(x, y, s, 1.0) for x, y in (("zh", "en"), ("de", "fr"))
                           for s in sites]}  # fmt: skip
    doc = build_findings(model, control)
    (zh,) = [f for f in doc["findings"] if f["pair"] == ["zh", "en"]]
    (de,) = [f for f in doc["findings"] if f["pair"] == ["de", "fr"]]
    assert (zh["site"], zh["artifact"], zh["largest_gain"]["site"]) == ("L0", None, "L0")
    assert (de["site"], de["artifact"], de["largest_gain"]["site"]) == ("embed", None, "embed")
    assert doc["identical_vectors"] == out
    # every site flagged for zh: the finding sits on the best one and says so
    flagged_all = [dom(s, "zh", 2, 150, True) for s in sites]
    doc = build_findings({**model, "pairs": [["zh", "en"]], "dominance": flagged_all}, control)
    (zh,) = doc["findings"]
    assert (zh["site"], zh["artifact"], zh["verdict"]) == ("embed", "identical-vectors",
                                                           "beyond-control")  # fmt: skip
    assert doc["headline"].startswith("zh/en: no z survives its controls")
    assert "(identical vectors: shared tokens)" in doc["headline"]
    # three flagged sites make one warning, the sites as a range
    grouped = [w for w in doc["warnings"] if "many prompts share one vector" in w]
    assert grouped == [
        "last pool, embed-L1: many prompts share one vector (zh: 2 distinct, up to 150 rows "
        "share one): they share the token pooled there, so the metrics at these sites mostly "
        "measure which prompts share it, not what the model computed; findings skip these "
        "sites for these languages"
    ]


# ---------------------------------------------------------------------------------------------
# merging the sweep's and the origin study's parts (issue 25)

_PART_KEYS = ("headline", "warnings", "study", "dominance", "identical_vectors", "inputs")
_NO_CONTROL = "no random-weights control: no finding can be beyond-control"


def _reference_merge(old, new):
    """merge_findings' rule written out: each study replaces its own part and findings; the
    sweep's part leads (else the first part); a control added by another study takes the
    headline and asks for the sweep again."""
    (src,) = {f["source"] for f in new["findings"]}
    parts = {k: dict(p) for k, p in ((old or {}).get("parts") or {}).items()}
    parts[src] = {k: new.get(k) for k in _PART_KEYS}
    kept = [f for f in (old or {}).get("findings") or [] if f.get("source", "alignment") != src]
    lead = parts["alignment"] if "alignment" in parts else next(iter(parts.values()))
    warnings = []
    for p in parts.values():
        for w in p.get("warnings") or []:
            if w not in warnings:
                warnings.append(w)
    head = lead["headline"]
    with_control = [k for k, p in parts.items() if p.get("study") and p["study"].get("control")]
    if with_control and not (lead.get("study") and lead["study"].get("control")):
        head = parts[with_control[0]]["headline"]
        warnings = [w for w in warnings if not w.startswith("no random-weights control")]
        warnings.append(
            "the sweep's findings (xlalign align) were made without the random-weights control "
            f"that the {', '.join(with_control)} study has since added: run xlalign align on "
            f"this folder again to compare the sweep with it; the headline is the "
            f"{with_control[0]} study's"
        )
    out = {k: val for k, val in new.items() if k not in ("findings", "warnings")}
    out.update(
        headline=head,
        findings=[*new["findings"], *kept],
        warnings=warnings,
        study=lead.get("study"),
        dominance=lead.get("dominance") or [],
        identical_vectors=lead.get("identical_vectors") or [],
        parts=parts,
    )
    return out


_WARNINGS = st.lists(st.sampled_from([_NO_CONTROL, "w1", "w2", "w3"]), max_size=3, unique=True)


@st.composite
def _merge_part(draw, src, tag):
    part = {
        "headline": f"{src} headline {tag}",
        "warnings": draw(_WARNINGS),
        "study": draw(st.sampled_from([None, {}, {"control": None},
                                       {"control": "random-init", "model": src}])),
        "dominance": draw(st.sampled_from([None, [], [{"site": f"{src}-dom"}]])),
        "identical_vectors": draw(st.sampled_from([None, [], [{"site": f"{src}-id"}]])),
    }  # fmt: skip
    if draw(st.booleans()):
        part["inputs"] = {"from": f"{src} {tag}"}
    return part


@st.composite
def _merge_cases(draw):
    sources = ("alignment", "origin", "extra")
    old = None
    if draw(st.integers(0, 4)):
        names = draw(st.permutations(sources))[: draw(st.integers(0, 3))]
        old = {"parts": {s: draw(_merge_part(s, "old")) for s in names}}
        finds = []
        for i in range(draw(st.integers(0, 5))):
            f = {"id": f"old{i}", "source": draw(st.sampled_from(sources))}
            if draw(st.integers(0, 3)) == 0:
                del f["source"]  # written before the field: the sweep's
            finds.append(f)
        old["findings"] = finds
        old["headline"] = "stale"
        old["warnings"] = ["stale warning"]
    src = draw(st.sampled_from(sources))
    new = {**draw(_merge_part(src, "new")), "corpus_quality": {"of": src}}
    new["findings"] = [{"id": f"new{i}", "source": src} for i in range(draw(st.integers(1, 3)))]
    return old, new


@settings(max_examples=150, deadline=None)
@given(_merge_cases())
def test_merge_findings_replaces_only_its_own_part_by_the_written_rule(case):
    old, new = case
    assert merge_findings(old, new) == _reference_merge(old, new)


def test_merge_findings_hand_cases_the_sweep_leads_and_a_later_control_takes_the_headline():
    sweep = {"headline": "H sweep", "warnings": [_NO_CONTROL, "a"], "study": {"control": None},
             "dominance": [{"site": "L0"}], "identical_vectors": [{"site": "embed"}],
             "findings": [{"source": "alignment", "id": 1}], "inputs": {"run": "r"}}  # fmt: skip
    origin = {"headline": "H origin", "warnings": ["a", "b"], "study": {"control": "random-init"},
              "dominance": [], "identical_vectors": [],
              "findings": [{"source": "origin", "id": 2}]}  # fmt: skip
    lens = {"headline": "H lens", "warnings": [], "study": {"control": "random-init"},
            "findings": [{"source": "lens", "id": 3}]}  # fmt: skip
    first = merge_findings(None, sweep)
    assert first["headline"] == "H sweep" and first["warnings"] == [_NO_CONTROL, "a"]
    assert first["parts"] == {"alignment": {k: sweep.get(k) for k in _PART_KEYS}}
    assert first["inputs"] == {"run": "r"} and first["findings"] == sweep["findings"]
    both = merge_findings(merge_findings(first, origin), lens)
    assert [f["id"] for f in both["findings"]] == [3, 2, 1]
    assert both["headline"] == "H origin"  # the first study with a control
    assert both["study"] == sweep["study"] and both["dominance"] == [{"site": "L0"}]
    assert both["identical_vectors"] == [{"site": "embed"}]
    assert both["warnings"] == [
        "a",
        "b",
        "the sweep's findings (xlalign align) were made without the random-weights control "
        "that the origin, lens study has since added: run xlalign align on this folder again "
        "to compare the sweep with it; the headline is the origin study's",
    ]
    # only the origin study so far: it leads, with its own study and no dominance
    alone = merge_findings(None, origin)
    assert (alone["headline"], alone["study"]) == ("H origin", origin["study"])
    assert alone["dominance"] == [] and alone["identical_vectors"] == []
    assert list(alone["parts"]) == ["origin"]


def test_merge_findings_a_document_without_findings_is_the_sweeps_part():
    """A sweep with no defined value writes no finding: its part is still the sweep's."""
    origin = {"headline": "H origin", "warnings": [], "study": {"control": None},
              "findings": [{"source": "origin", "id": 2}]}  # fmt: skip
    empty = {"headline": "H empty", "warnings": ["w"], "study": {"control": None}, "findings": []}
    merged = merge_findings(merge_findings(None, origin), empty)
    assert list(merged["parts"]) == ["origin", "alignment"]
    assert merged["parts"]["alignment"] == {k: empty.get(k) for k in _PART_KEYS}
    assert merged["headline"] == "H empty" and merged["warnings"] == ["w"]
    assert merged["findings"] == origin["findings"]


def test_write_findings_merges_with_a_readable_old_file_and_replaces_anything_else(tmp_path):
    from xlalign.studies.findings import write_findings

    sweep = {"headline": "H sweep", "warnings": ["s"], "study": {"control": "random-init"},
             "findings": [{"source": "alignment", "id": "é1"}]}  # fmt: skip
    origin = {"headline": "H origin", "warnings": ["o"], "study": {"control": "random-init"},
              "findings": [{"source": "origin", "id": "o1"}]}  # fmt: skip
    out = tmp_path / "a" / "b"  # missing parents are made
    path = write_findings(sweep, out)
    assert path == out / "findings.json"
    assert json.loads(path.read_text(encoding="utf-8")) == merge_findings(None, sweep)
    assert write_findings(origin, out) == path  # the folder exists already
    on_disk = json.loads(path.read_text(encoding="utf-8"))
    assert on_disk == merge_findings(merge_findings(None, sweep), origin)
    assert [f["id"] for f in on_disk["findings"]] == ["o1", "é1"]
    # not JSON, or JSON but not an object: replaced, not merged
    for junk in ("{not json", "[1, 2]", '"text"'):
        path.write_text(junk, encoding="utf-8")
        write_findings(origin, out)
        assert json.loads(path.read_text(encoding="utf-8")) == merge_findings(None, origin), junk


def test_same_is_equality_to_one_millionth_relative_or_absolute_below_one():
    from xlalign.studies.findings import _same

    assert not _same(None, 1.0) and not _same(1.0, None) and not _same(None, None)
    for b in (0.0, 0.5, 1.0, -3.0, 2.5e6, -4e7):
        tol = 1e-6 * max(1.0, abs(b))
        assert _same(b, b) and _same(str(b), b)
        assert _same(b + 0.5 * tol, b) and _same(b - 0.5 * tol, b)
        assert not _same(b + 2 * tol, b) and not _same(b - 2 * tol, b)
    # exactly on the tolerance (closed): equal
    assert _same(1e-6, 0.0) and _same(-1e-6, 0.0)
    assert _same(1.0 + 2.0**-20, 1.0) and not _same(1.0 + 2.0**-19, 1.0)
    # the tolerance is relative to the second value
    assert _same(1e7 + 9.0, 1e7) and not _same(1e7 + 11.0, 1e7)


def test_is_flagged_for_either_language_of_the_pair_at_that_site_and_pool():
    from xlalign.studies.findings import _is_flagged

    flagged = {("embed", "last", "zh"), ("L0", "mean", "en")}
    for site in ("embed", "L0", "L1"):
        for pool in ("last", "mean"):
            for x, y in (("zh", "en"), ("en", "zh"), ("zh", "de"), ("de", "fr")):
                want = (site, pool, x) in flagged or (site, pool, y) in flagged
                assert _is_flagged(flagged, site, pool, x, y) is want, (site, pool, x, y)
    assert _is_flagged(flagged, "embed", "last", "zh", "de")
    assert _is_flagged(flagged, "L0", "mean", "de", "en")
    assert not _is_flagged(flagged, "embed", "mean", "zh", "en")


# ---------------------------------------------------------------------------------------------
# the origin study's findings, written out again (issue 25)

O_SITES = ("embed", "L0", "L1", "L2")
O_KEYS = {"mean": "z_mean_full", "last": "z_last"}


def _first_max(items, value):
    """The item of highest value, the first on a tie."""
    best = None
    for it in items:
        if best is None or value(it) > value(best):
            best = it
    return best


def _point(value):
    return {"value": value, "ci_low": None, "ci_high": None}


def _reference_origin_findings(doc):
    """The origin findings of docs/report.md (no runs, no sweep: point values)."""
    from xlalign.studies.findings import site_ranges

    lx, ly = (str(v) for v in doc["languages"])
    ctl = doc.get("control") or None
    c_rows = {r["site"]: r for r in (ctl or {}).get("decomposition") or []}
    lex_z = (doc.get("lexical") or {}).get("z")
    identical = {s for groups in (doc.get("identical_last_token") or {}).values()
                 for s, g in groups.items() if g.get("identical")}  # fmt: skip
    order = [r["site"] for r in doc.get("decomposition") or []]
    out = []
    for pool, key in O_KEYS.items():
        rows = [r for r in doc.get("decomposition") or [] if r.get(key) is not None]
        if not rows:
            continue
        flagged = identical if pool == "last" else set()
        usable = [r for r in rows if r["site"] not in flagged] or rows
        best = _first_max(usable, lambda r, k=key: r[k])
        site = best["site"]
        c_val = (c_rows.get(site) or {}).get(key)
        control = None if c_val is None else _point(c_val)
        c_def = [r for r in c_rows.values() if r.get(key) is not None]
        c_best = _first_max([r for r in c_def if r["site"] not in flagged] or c_def,
                            lambda r, k=key: r[k])  # fmt: skip
        control_best = None if c_best is None else {"site": c_best["site"], **_point(c_best[key])}
        above, below = [], []
        compared = 0
        for r in doc.get("decomposition") or []:
            c = (c_rows.get(r["site"]) or {}).get(key)
            if r.get(key) is None or c is None:
                continue
            compared += 1
            if r[key] > c:
                above.append(r["site"])
            if r[key] < c:
                below.append(r["site"])
        counts = None
        if compared:
            counts = {"above": len(above), "below": len(below), "compared": compared,
                      "above_sites": site_ranges(above, order),
                      "below_sites": site_ranges(below, order)}  # fmt: skip
        both = [r for r in usable if (c_rows.get(r["site"]) or {}).get(key) is not None]
        g = _first_max(both, lambda r, k=key: r[k] - c_rows[r["site"]][k])
        gain = None
        if g is not None:
            gain = {"site": g["site"], "gain": g[key] - c_rows[g["site"]][key], "model": g[key],
                    "control": c_rows[g["site"]][key]}  # fmt: skip
        strat = best.get("z_stratified") if pool == "last" else None
        model = _point(best[key])
        lexical = None if lex_z is None else _point(lex_z)
        below_all = None if counts is None else len(below) == compared
        out.append({
            "pair": [lx, ly], "pool": pool, "metric": "z", "site": site, "model": model,
            "control": control, "lexical": lexical,
            "stratified": None if strat is None else _point(strat),
            "verdict": _rule(model, control, control_best, lexical, below_all),
            "control_best": control_best, "sites_vs_control": counts, "largest_gain": gain,
            "artifact": "identical-vectors" if site in flagged else None, "p_best_site": None,
            "n_sites": len(usable), "n": doc.get("n_pairs"), "source": "origin",
        })  # fmt: skip
    return out


@st.composite
def _origin_docs(draw):
    def value():
        return None if draw(st.integers(0, 5)) == 0 else draw(st.integers(-12, 12)) / 4

    def rows(keys):
        out = []
        for s in O_SITES:
            if draw(st.integers(0, 5)) == 0:
                continue  # the site is not in the decomposition
            r = {"site": s}
            for k in keys:
                if draw(st.integers(0, 6)):
                    r[k] = value()
            out.append(r)
        return out

    doc = {
        "languages": draw(st.sampled_from([["zh", "en"], ["de", "fr"]])),
        "decomposition": rows([*O_KEYS.values(), "z_stratified"]),
        "model": draw(st.sampled_from([None, "tiny/gpt2"])),
    }
    n = draw(st.sampled_from(["absent", 5, 29, 30, 200, 12.0, "40"]))
    if n != "absent":
        doc["n_pairs"] = n
    control = draw(st.sampled_from(["absent", "none", "empty", "rows", "rows", "rows"]))
    if control == "rows":
        doc["control"] = {"decomposition": rows(list(O_KEYS.values()))}
    elif control != "absent":
        doc["control"] = None if control == "none" else {}
    lexical = draw(st.sampled_from(["absent", "none", "value"]))
    if lexical != "absent":
        doc["lexical"] = {"z": None if lexical == "none" else draw(st.integers(-8, 8)) / 4}
    if draw(st.booleans()):
        doc["identical_last_token"] = {
            lang: {s: {"identical": draw(st.booleans())} for s in O_SITES[:3]}
            for lang in doc["languages"]
        }
    if draw(st.booleans()):
        doc["null"] = draw(st.sampled_from([None, {}, {"method": "exact"}]))
    return doc


@settings(max_examples=150, deadline=None)
@given(_origin_docs())
def test_origin_findings_every_field_by_definition(doc):
    """Every field of the origin study's findings, warnings and study (ties, sites missing or
    undefined in either study, no control, no lexical z, flagged last-token sites)."""
    from xlalign.studies.findings import headline

    out = findings_for_origin(doc)
    want = _reference_origin_findings(doc)
    assert out["findings"] == want
    has_control = bool(doc.get("control"))
    n = doc.get("n_pairs")
    warnings = []
    if type(n) is int and n < 30:
        warnings.append(
            f"only {n} pairs (under 30): these numbers are not reliable; intervals are wide "
            "and a few pairs can move any value"
        )
    if not has_control:
        warnings.append(_NO_CONTROL)
    points = [f"{f['pool']} pool {role}" for f in want for role in ("model", "control", "lexical")
              if f[role] is not None]  # fmt: skip
    if points:
        warnings.append(
            f"no interval for the origin study's z ({', '.join(points)}): those verdicts "
            "compare point values"
        )
    assert out["warnings"] == warnings
    assert out["study"] == {
        "model": doc.get("model"),
        "languages": [str(v) for v in doc["languages"]],
        "n_pairs": n,
        "null": (doc.get("null") or {}).get("method"),
        "standardize": False,
        "control": "random-init" if has_control else None,
    }
    assert out["headline"] == headline(want, has_control)
    assert out["dominance"] == [] and out["identical_vectors"] == []


class _ArrayRun:
    """What the origin findings read of a run: pools, sites, rows and arrays."""

    def __init__(self, arrays, n_rows=None):
        self.arrays = arrays
        self.pools = sorted({k[2] for k in arrays})
        self.sites = sorted({k[1] for k in arrays})
        self.n_rows = n_rows if n_rows is not None else len(next(iter(arrays.values())))

    def array(self, lang, site, pool):
        return self.arrays[(lang, site, pool)]


def _z64(x, y):
    from references import z_from_cosines

    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    return z_from_cosines(xn @ yn.T)


def _jackknife_z(x, y, level):
    """z and its exact delete-one jackknife interval at ``level`` (normal quantile)."""
    from statistics import NormalDist

    z = _z64(x, y)
    n = len(x)
    loo = np.array([_z64(np.delete(x, i, 0), np.delete(y, i, 0)) for i in range(n)])
    se = np.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2))
    q = NormalDist().inv_cdf(0.5 + level / 2)
    return z, (z - q * se, z + q * se)


def _random_run(seed, sites=("embed", "L0"), langs=("zh", "en"), n=9, d=5):
    rs = np.random.default_rng(seed)
    arrays = {}
    for site in sites:
        for pool in ("mean", "last"):
            base = rs.standard_normal((n, d))
            for lang in langs:
                arrays[(lang, site, pool)] = base + 0.8 * rs.standard_normal((n, d))
    return _ArrayRun(arrays)


@pytest.mark.parametrize("level", [0.95, 0.8])
def test_origin_findings_take_the_jackknife_interval_where_the_run_gives_their_z(level):
    """Model and control z at the best site equal the runs' z: each gets the jackknife
    interval of its own run (written out here); the last pool's values do not match its run,
    so they stay points and a warning names them. The lexical z and the best site's
    p_best_site come from the sweep where it holds the same value, else not."""
    run, control = _random_run(1), _random_run(2)
    sites = ("embed", "L0")

    def z_of(r, site, pool):
        return _z64(r.array("zh", site, pool), r.array("en", site, pool))

    dec = [{"site": s, "z_mean_full": z_of(run, s, "mean"), "z_last": z_of(run, s, "last") + 0.01}
           for s in sites]  # fmt: skip
    cdec = [{"site": s, "z_mean_full": z_of(control, s, "mean"),
             "z_last": z_of(control, s, "last") + 0.01} for s in sites]  # fmt: skip
    doc = {"languages": ["zh", "en"], "n_pairs": 9, "decomposition": dec,
           "control": {"decomposition": cdec}, "lexical": {"z": 2.5}}  # fmt: skip
    best = {p: max(dec, key=lambda r: r[k])["site"] for p, k in O_KEYS.items()}

    def rec(pool, site, value, **extra):
        return {"x": "zh", "y": "en", "pool": pool, "site": site, "metric": "z", "value": value,
                "ci_low": value - 1.0, "ci_high": value + 1.0, **extra}  # fmt: skip

    z_mean = max(r["z_mean_full"] for r in dec)
    z_last = max(r["z_last"] for r in dec)
    sweep = {"records": [
        rec("mean", "lexical", 2.5 + 1e-9, p_value=0.001, null_q95=1.5, p_best_site=0.5),
        rec("last", "lexical", 2.6),  # another value: not the origin study's lexical z
        rec("mean", best["mean"], z_mean + 1e-9, p_best_site=0.04),
        rec("last", best["last"], z_last + 0.5, p_best_site=0.01),  # another value
        rec("mean", "L9", 0.0, p_best_site=0.9),
    ]}  # fmt: skip
    kwargs = {} if level == 0.95 else {"level": level}
    out = findings_for_origin(doc, run=run, control=control, alignment=sweep, n_boot=1, **kwargs)
    by_pool = {f["pool"]: f for f in out["findings"]}
    mean, last = by_pool["mean"], by_pool["last"]
    for role, r in (("model", run), ("control", control)):
        site = mean["site"]
        z, (lo, hi) = _jackknife_z(r.array("zh", site, "mean"), r.array("en", site, "mean"), level)
        assert mean[role]["value"] == pytest.approx(z, rel=1e-12)
        assert (mean[role]["ci_low"], mean[role]["ci_high"]) == pytest.approx((lo, hi), rel=1e-6)
        assert (last[role]["ci_low"], last[role]["ci_high"]) == (None, None)
    assert mean["site"] == best["mean"] and last["site"] == best["last"]
    assert mean["lexical"] == {"value": 2.5 + 1e-9, "ci_low": 1.5 + 1e-9, "ci_high": 3.5 + 1e-9,
                               "p_value": 0.001, "null_q95": 1.5}  # fmt: skip
    assert last["lexical"] == _point(2.5)
    assert mean["model"]["p_best_site"] == 0.04 and mean["p_best_site"] == 0.04
    assert "p_best_site" not in last["model"] and last["p_best_site"] is None
    assert out["warnings"] == [
        "only 9 pairs (under 30): these numbers are not reliable; intervals are wide and a few "
        "pairs can move any value",
        "no interval for the origin study's z (last pool model, last pool control, last pool "
        "lexical): those verdicts compare point values",
    ]
    from test_findings_values import _interval64

    for f in out["findings"]:
        counts = f["sites_vs_control"]
        below = counts["below"] == counts["compared"]
        assert f["verdict"] == _rule(f["model"], f["control"], f["control_best"], f["lexical"],
                                     below)  # fmt: skip
        assert _interval64(f["model"]) is not None
    # no intervals asked for (n_boot 0), or runs without that pool: points
    for kw in ({"n_boot": 0}, {"run": _ArrayRun({k: a for k, a in run.arrays.items()
                                                  if k[2] == "last"})}):  # fmt: skip
        args = {"run": run, "control": control, **kw}
        bare = findings_for_origin(doc, **args)
        got = {f["pool"]: f for f in bare["findings"]}
        assert got["mean"]["model"]["ci_low"] is None
        assert (got["mean"]["control"]["ci_low"] is None) == ("n_boot" in kw)


def test_with_interval_only_where_the_run_has_the_pool_site_rows_and_value():
    from xlalign.studies.findings import _with_interval
    from xlalign.studies.layers import CI_MAX_N

    run = _random_run(3, sites=("L0",))
    x, y = run.array("zh", "L0", "mean"), run.array("en", "L0", "mean")
    z, (lo, hi) = _jackknife_z(x, y, 0.9)
    rec = {"value": z, "ci_low": None, "ci_high": None, "p_value": 0.01}
    args = (("zh", "en"), "mean", "L0")
    got = _with_interval(rec, run, *args, 1, 7, 0.9)
    assert got == {
        **rec,
        "ci_low": pytest.approx(lo, rel=1e-6),
        "ci_high": pytest.approx(hi, rel=1e-6),
    }
    assert rec["ci_low"] is None  # a new record, the old one untouched
    for n_rows, changed in ((CI_MAX_N, True), (CI_MAX_N + 1, False)):
        big = _ArrayRun(run.arrays, n_rows=n_rows)
        assert (_with_interval(rec, big, *args, 1, 7, 0.9) != rec) is changed, n_rows
    assert _with_interval(rec, run, *args, 0, 7, 0.9) == rec  # no intervals asked for
    assert _with_interval(rec, run, ("zh", "en"), "last", "L1", 1, 7, 0.9) == rec  # no site
    no_pool = _ArrayRun({k: a for k, a in run.arrays.items() if k[2] == "last"})
    assert _with_interval(rec, no_pool, *args, 1, 7, 0.9) == rec
    assert _with_interval({**rec, "value": z + 1e-3}, run, *args, 1, 7, 0.9)["ci_low"] is None
    # the other language's vectors on both sides give another z: no interval
    same = _ArrayRun({**run.arrays, ("zh", "L0", "mean"): y})
    assert _with_interval(rec, same, *args, 1, 7, 0.9) == rec
    # three pairs have a z but no jackknife interval (the library raises): left a point
    three = _ArrayRun({k: a[:3] for k, a in run.arrays.items()})
    z3 = _z64(x[:3], y[:3])
    assert _with_interval({**rec, "value": z3}, three, *args, 1, 7, 0.9) == {**rec, "value": z3}


# ---------------------------------------------------------------------------------------------
# dominant dimensions and identical vectors, entry by entry (issue 25)


def _dom_rec(site, pool, lang, share, dims, flagged=True):
    return {"site": site, "pool": pool, "lang": lang, "share": share, "top_dims": dims,
            "flagged": flagged}  # fmt: skip


def _z_rec(x, y, pool, site, metric, value):
    return {"x": x, "y": y, "pool": pool, "site": site, "metric": metric, "value": value}


@pytest.mark.parametrize("standardize", [False, True])
def test_dominance_entries_per_flagged_site_and_pool_with_raw_and_standardized_values(
    standardize,
):
    from xlalign.studies.findings import _dominance

    a = _dom_rec("L1", "mean", "zh", 0.64, [7, 2])
    b = _dom_rec("L1", "mean", "en", 0.55, [3, 1])
    c = _dom_rec("L1", "last", "zh", 0.9, [5, 0])
    d = _dom_rec("L2", "mean", "zh", 0.4, [1, 0], flagged=False)
    e = _dom_rec("L0", "mean", "de", 0.75, [4, 9])
    alignment = {
        "pairs": [["zh", "en"], ["de", "fr"]], "standardize": standardize,
        "dominance": [a, c, d, e, b],
        "records": [_z_rec("zh", "en", "mean", "L1", "z", 12.5),
                    _z_rec("zh", "en", "mean", "L1", "cka_unbiased", 0.5),
                    _z_rec("zh", "en", "mean", "L1", "p1_xy", 0.25),
                    _z_rec("en", "zh", "mean", "L1", "z", 9.0),
                    _z_rec("de", "fr", "mean", "L0", "cka", 0.25),
                    _z_rec("zh", "en", "mean", "L2", "z", 4.0)],
    }  # fmt: skip
    variant = {"records": [_z_rec("zh", "en", "mean", "L1", "z", 3.25),
                           _z_rec("zh", "en", "mean", "L1", "p1_xy", 0.5)]}  # fmt: skip
    out = _dominance(alignment, variant)

    def pair_of(x, y):  # (raw, standardized): the sweep's own value is the standardized one
        return (y, x) if standardize else (x, y)

    zr, zs = pair_of(12.5, 3.25)
    cr, cs = pair_of(0.5, None)
    br, bs = pair_of(0.25, None)
    tail = "; cosine, CKA and k-NN there mostly measure that dimension"

    def fmt(v):
        return {12.5: "12.5", 3.25: "3.25", 0.5: "0.500", 0.25: "0.250", None: "undefined"}[v]

    assert out == [
        {"site": "L1", "pool": "mean", "languages": [a, b],
         "values": [{"pair": ["zh", "en"], "metric": "z", "raw": zr, "standardized": zs},
                    {"pair": ["zh", "en"], "metric": "cka_unbiased", "raw": cr,
                     "standardized": cs}],
         "warning": "L1, mean pool: one dimension holds over half the mean squared norm (zh dim "
                    f"7 holds 64%, en dim 3 holds 55%){tail} (zh/en z raw {fmt(zr)}, "
                    f"standardized {fmt(zs)}; zh/en CKA raw {fmt(cr)}, standardized {fmt(cs)})"},
        {"site": "L1", "pool": "last", "languages": [c],
         "warning": "L1, last pool: one dimension holds over half the mean squared norm (zh dim "
                    f"5 holds 90%){tail}"},
        {"site": "L0", "pool": "mean", "languages": [e],
         "values": [{"pair": ["de", "fr"], "metric": "cka", "raw": br, "standardized": bs}],
         "warning": "L0, mean pool: one dimension holds over half the mean squared norm (de dim "
                    f"4 holds 75%){tail} (de/fr CKA (biased) raw {fmt(br)}, standardized "
                    f"{fmt(bs)})"},
    ]  # fmt: skip
    # no variant: the other preprocessing's values are undefined
    (first, *_) = _dominance(alignment, None)
    assert [(v["raw"], v["standardized"]) for v in first["values"]] == [
        pair_of(12.5, None),
        pair_of(0.5, None),
    ]
    assert _dominance({**alignment, "dominance": [d]}, variant) == []
    assert _dominance({"pairs": [["zh", "en"]]}, variant) == []


def test_mark_dominated_gives_each_finding_its_sites_languages_and_values():
    from xlalign.studies.findings import _mark_dominated

    a = _dom_rec("L1", "mean", "zh", 0.64, [7, 2])
    b = _dom_rec("L1", "mean", "en", 0.55, [3, 1])
    dominance = [
        {"site": "L1", "pool": "mean", "languages": [a, b],
         "values": [{"pair": ["de", "fr"], "metric": "z", "raw": 1.0, "standardized": 2.0},
                    {"pair": ["zh", "en"], "metric": "cka_unbiased", "raw": 0.5,
                     "standardized": 0.25},
                    {"pair": ["zh", "en"], "metric": "z", "raw": 12.5, "standardized": 3.25}]},
        {"site": "L0", "pool": "last", "languages": [_dom_rec("L0", "last", "fr", 0.7, [1, 4])]},
    ]  # fmt: skip

    def finding(pair, pool, site, metric):
        return {"pair": list(pair), "pool": pool, "site": site, "metric": metric}

    findings = [
        finding(("zh", "en"), "last", "L2", "z"),  # no flagged site there
        finding(("zh", "en"), "mean", "L1", "z"),
        finding(("zh", "en"), "mean", "L1", "p1_xy"),  # no values for that metric
        finding(("de", "fr"), "mean", "L1", "z"),  # flagged for other languages only
        finding(("zh", "de"), "mean", "L1", "z"),  # one language flagged, no values
        finding(("zh", "en"), "last", "L1", "z"),  # another pool
        finding(("de", "fr"), "last", "L0", "z"),  # no values at all
    ]
    _mark_dominated(findings, dominance)
    both = {"zh": {"dim": 7, "share": 0.64}, "en": {"dim": 3, "share": 0.55}}
    assert [f["dominated"] for f in findings] == [
        None,
        {"languages": both, "raw": 12.5, "standardized": 3.25},
        {"languages": both, "raw": None, "standardized": None},
        None,
        {"languages": {"zh": {"dim": 7, "share": 0.64}}, "raw": None, "standardized": None},
        None,
        {"languages": {"fr": {"dim": 1, "share": 0.7}}, "raw": None, "standardized": None},
    ]


def _reference_identical(records):
    groups = {}
    for r in records:
        if r.get("identical"):
            groups.setdefault((r["site"], r["pool"]), []).append(r)
    out = []
    for (site, pool), recs in groups.items():
        counts = ", ".join(f"{r['lang']}: {r['distinct']} distinct, {r['largest_group']} rows "
                           "share one" for r in recs)  # fmt: skip
        out.append({
            "site": site, "pool": pool,
            "distinct": {r["lang"]: r["distinct"] for r in recs},
            "largest_group": {r["lang"]: r["largest_group"] for r in recs},
            "warning": f"{site}, {pool} pool: many prompts share one vector ({counts}): they "
                       "share the token pooled there, so the metrics at this site mostly "
                       "measure which prompts share it, not what the model computed; findings "
                       "skip this site for these languages",
        })  # fmt: skip
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "site": st.sampled_from(["embed", "L0", "L1"]),
                "pool": st.sampled_from(["last", "mean"]),
                "lang": st.sampled_from(["zh", "en", "de"]),
                "distinct": st.integers(1, 300),
                "largest_group": st.integers(1, 300),
                "identical": st.sampled_from([True, False, None]),
            }
        ),
        max_size=8,
    )
)
def test_identical_vectors_entries_and_warnings_by_definition(records):
    from xlalign.studies.findings import identical_vectors

    assert identical_vectors(records) == _reference_identical(records)


def test_origin_findings_take_from_the_sweep_only_what_it_holds():
    """A sweep without the lexical z, or with the best site's z but no p_best_site, changes
    nothing; a lexical z the origin study lacks stays absent; a pool without any value makes
    no finding, the other pool still does."""
    dec = [{"site": "embed", "z_last": 1.5}, {"site": "L0", "z_last": 4.0, "z_mean_full": None}]
    doc = {"languages": ["zh", "en"], "n_pairs": 40, "decomposition": dec,
           "lexical": {"z": 2.0}}  # fmt: skip
    sweep = {"records": [{"x": "zh", "y": "en", "pool": "last", "site": "L0", "metric": "z",
                          "value": 4.0, "ci_low": 3.0, "ci_high": 5.0}]}  # fmt: skip
    (f,) = findings_for_origin(doc, alignment=sweep)["findings"]
    assert (f["pool"], f["site"]) == ("last", "L0")
    assert f["model"] == _point(4.0) and f["p_best_site"] is None
    assert f["lexical"] == _point(2.0)
    lexical_only = {
        "records": [
            {**sweep["records"][0], "site": "lexical", "value": 2.0, "ci_low": 1.0, "ci_high": 3.0}
        ]
    }
    (g,) = findings_for_origin({**doc, "lexical": {"z": None}}, alignment=lexical_only)["findings"]
    assert g["lexical"] is None and g["model"] == _point(4.0)
    (h,) = findings_for_origin(doc, alignment=lexical_only)["findings"]
    assert h["lexical"] == {"value": 2.0, "ci_low": 1.0, "ci_high": 3.0}
    assert findings_for_origin(doc)["findings"] == [f]


def test_origin_verdict_uses_the_control_at_a_flagged_best_site_and_first_gain_on_a_tie():
    """Every last-token site with a model z is flagged: the best is flagged too, and the
    control there (6 > 5) matches it although the control's best unflagged site (L1: 1) does
    not. Two sites gain alike (+1): the first is the largest gain."""
    flags = {"zh": {"embed": {"identical": True}, "L0": {"identical": True}}}
    doc = {"languages": ["zh", "en"], "n_pairs": 40, "identical_last_token": flags,
           "decomposition": [{"site": "embed", "z_last": 5.0, "z_mean_full": 3.0},
                             {"site": "L0", "z_last": 0.0, "z_mean_full": 2.0}],
           "control": {"decomposition": [{"site": "embed", "z_last": 6.0, "z_mean_full": 2.0},
                                         {"site": "L0", "z_last": -1.0, "z_mean_full": 1.0},
                                         {"site": "L1", "z_last": 1.0}]}}  # fmt: skip
    by_pool = {f["pool"]: f for f in findings_for_origin(doc)["findings"]}
    last = by_pool["last"]
    assert (last["site"], last["artifact"]) == ("embed", "identical-vectors")
    assert last["control_best"]["site"] == "L1" and last["control"] == _point(6.0)
    assert last["verdict"] == "matched-by-control"
    gain = by_pool["mean"]["largest_gain"]
    assert (gain["site"], gain["gain"]) == ("embed", 1.0)


def test_a_sweep_without_findings_replaces_the_old_sweeps_findings_too():
    """A sweep where no metric is defined writes no findings; the sweep's findings of an earlier
    run must go with its part, or the file shows them under the new headline (the origin
    study's findings stay)."""
    from xlalign.studies.findings import merge_findings

    old_sweep = {"metric": "z", "site": "L3", "source": "alignment"}
    legacy = {"metric": "cka", "site": "L1"}  # before the source field: the sweep's
    origin = {"metric": "z", "site": "L0", "source": "origin"}
    old = {
        "headline": "old sweep",
        "findings": [old_sweep, legacy, origin],
        "parts": {
            "alignment": {"headline": "old sweep", "warnings": ["old"], "study": {}},
            "origin": {"headline": "origin", "warnings": [], "study": {}},
        },
    }
    new = {"headline": "nothing defined", "findings": [], "warnings": ["new"], "study": {}}
    got = merge_findings(old, new)
    assert got["findings"] == [origin]
    assert got["headline"] == "nothing defined" and got["warnings"] == ["new"]
    assert got["parts"]["alignment"]["headline"] == "nothing defined"
