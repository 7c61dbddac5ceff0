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

from references import cka as ref_cka
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
