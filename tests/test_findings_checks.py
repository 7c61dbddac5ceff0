"""Headlines that do not contradict their records (issue 26): the origin study's verdicts on the
sweep's intervals, a control added after the sweep, a lexical baseline with no shared token,
a headline at a dominated site, grouped warnings, negative z beside high P@1, and findings
that rest on a few pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xlalign.metrics import matched_vs_scrambled_z
from xlalign.pipeline.config import StudyConfig
from xlalign.pipeline.study import run_study
from xlalign.store.run import load_run
from xlalign.studies.findings import (
    build_findings,
    findings_for_origin,
    merge_findings,
    site_ranges,
    verdict,
)


@pytest.fixture(scope="module")
def study(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("checks") / "gpt2"
    cfg = StudyConfig(
        model=str(tiny_models["gpt2"]), problems=30, langs=("zh", "en"), output=str(out),
        n_boot=20, sites="embed,L0,L3", report=False, lens=False, neurons=False,
    )  # fmt: skip
    run_study(cfg, command=["test"], progress=False, say=lambda _m: None)
    return out


def test_origin_findings_carry_the_sweeps_interval_and_rule(study):
    """The origin study's z equals the sweep's at its site, so it gets the sweep's interval
    (the jackknife, recomputed here by deleting rows) for the model and the control alike."""
    origin = json.loads((study / "origin.json").read_text())
    run, control = load_run(study), load_run(study / "control-random-init")
    sweep = json.loads((study / "alignment.json").read_text())
    doc = findings_for_origin(origin, run=run, control=control, alignment=sweep, n_boot=20)
    for f in doc["findings"]:
        for role, r in (("model", run), ("control", control)):
            x = np.asarray(r.array("zh", f["site"], f["pool"]), np.float64)
            y = np.asarray(r.array("en", f["site"], f["pool"]), np.float64)
            assert f[role]["value"] == pytest.approx(matched_vs_scrambled_z(x, y).z, rel=1e-6)
            # the sweep's interval: the delete-one jackknife of z, rows deleted and recomputed
            z = matched_vs_scrambled_z(x, y).z
            loo = np.array([
                matched_vs_scrambled_z(np.delete(x, i, 0), np.delete(y, i, 0)).z
                for i in range(len(x))
            ])  # fmt: skip
            se = np.sqrt((len(loo) - 1) / len(loo) * np.sum((loo - loo.mean()) ** 2))
            q = 1.959963984540054
            expect = (z - q * se, z + q * se)
            assert (f[role]["ci_low"], f[role]["ci_high"]) == pytest.approx(expect, rel=1e-6)
        (lex,) = [
            r for r in sweep["records"]
            if r["site"] == "lexical" and r["pool"] == f["pool"] and r["metric"] == "z"
        ]  # fmt: skip
        assert f["lexical"]["ci_low"] == lex["ci_low"]
    assert not any("no interval" in w for w in doc["warnings"])
    # without the runs the values stay points, and a warning says which
    bare = findings_for_origin(origin)
    assert any(w.startswith("no interval for the origin study's z") for w in bare["warnings"])


def test_a_control_added_by_origin_leads_the_headline_of_a_sweep_without_one(study):
    sweep_part = {
        "headline": "zh/en: no control was run. ...",
        "findings": [],
        "warnings": ["no random-weights control: no finding can be beyond-control"],
        "study": {"control": None},
    }
    origin_part = {
        "headline": "zh/en: 1 of 2 pool(s) beyond-control. ...",
        "findings": [{"source": "origin", "pair": ["zh", "en"], "pool": "mean"}],
        "warnings": [],
        "study": {"control": "random-init"},
    }
    merged = merge_findings(merge_findings(None, sweep_part), origin_part)
    assert merged["headline"] == origin_part["headline"]
    assert not any(w.startswith("no random-weights control") for w in merged["warnings"])
    assert any("run xlalign align on this folder again" in w for w in merged["warnings"])


def _rec(metric, site, value, lo=None, hi=None, pool="mean", n=200, **detail):
    return {"x": "zh", "y": "en", "pool": pool, "site": site, "metric": metric, "value": value,
            "ci_low": lo, "ci_high": hi, "n": n, "detail": detail}  # fmt: skip


def test_no_shared_tokens_is_no_alignment_not_an_undefined_control():
    records = [
        _rec("z", "L0", 12.0, 11.0, 13.0),
        _rec("p1_xy", "L0", 0.5, 0.4, 0.6),
        _rec("z", "lexical", None, shared_tokens=0),
        _rec("p1_xy", "lexical", 0.0, 0.0, 0.0, shared_tokens=0),
    ]
    control = {"records": [_rec("z", "L0", 1.0, 0.0, 2.0), _rec("p1_xy", "L0", 0.01, 0.0, 0.02)]}
    doc = build_findings(
        {"pairs": [["zh", "en"]], "pools": ["mean"], "sites": ["L0"], "records": records,
         "n_boot": 200}, control,
    )  # fmt: skip
    z, p1 = doc["findings"]
    assert z["verdict"] == "beyond-control" and z["lexical"]["no_shared_tokens"] is True
    assert "lexical: no shared tokens" in doc["headline"]
    assert "the lexical baseline gives no alignment" in doc["headline"]
    assert "lexical undefined" not in doc["headline"]
    assert p1["lexical"]["value"] == 0.0  # defined: no alignment is P@1 = 0
    assert sum("share no token" in w for w in doc["warnings"]) == 1


def _dom(site, lang, share, dim=7, pool="mean"):
    return {"site": site, "pool": pool, "lang": lang, "share": share, "top_dims": [dim],
            "flagged": share > 0.5, "identical": False}  # fmt: skip


def test_a_headline_at_a_dominated_site_says_so_and_warnings_are_grouped():
    sites = ["embed", "L0", "L1", "L2", "L3", "L4"]
    records = [_rec("z", s, 10.0 + i, 9.0 + i, 11.0 + i) for i, s in enumerate(sites)]
    dominance = [_dom(s, lang, 0.6 + 0.05 * i) for i, s in enumerate(sites[1:5])
                 for lang in ("zh", "en")]  # fmt: skip
    alignment = {"pairs": [["zh", "en"]], "pools": ["mean"], "sites": sites,
                 "records": records, "dominance": dominance, "n_boot": 200}  # fmt: skip
    variant = {"records": [_rec("z", s, 3.0) for s in sites]}
    doc = build_findings(alignment, None, variant=variant)
    (f,) = doc["findings"]
    assert f["site"] == "L4" and f["dominated"] is None  # L4 is not flagged
    dominance.append(_dom("L4", "zh", 0.9, dim=3))
    doc = build_findings(alignment, None, variant=variant)
    (f,) = doc["findings"]
    assert f["dominated"] == {"languages": {"zh": {"dim": 3, "share": 0.9}}, "raw": 15.0,
                              "standardized": 3.0}  # fmt: skip
    assert (
        "one dimension dominates there: zh dim 3 holds 90%; standardized z 3.00"
        in (doc["headline"])
    )
    grouped = [w for w in doc["warnings"] if "one dimension holds over half" in w]
    assert len(grouped) == 1 and grouped[0].startswith("mean pool, L0-L4 (5 of 6 sites)")
    assert "zh dim 7 holds 60%-75% at 4 site(s)" in grouped[0]
    assert "zh dim 3 holds 90% at 1 site(s)" in grouped[0]


def test_site_ranges():
    order = ["embed", "L0", "L1", "L2", "L3", "final"]
    assert site_ranges(["L0", "L1", "L2", "final"], order) == "L0-L2, final"
    assert site_ranges(["L2", "embed"], order) == "embed, L2"
    assert site_ranges([], order) == ""


def test_negative_z_beside_retrieval_far_above_chance_is_explained():
    sites = ["L0", "L1", "L2"]
    records = [
        _rec("z", "L0", 5.0, 4.0, 6.0), _rec("p1_xy", "L0", 0.2),
        _rec("z", "L1", -2.0, -3.0, -1.0), _rec("p1_xy", "L1", 0.3),  # 60x chance
        _rec("z", "L2", -1.0, -2.0, 0.0), _rec("p1_xy", "L2", 0.02),  # 4x chance: not named
    ]  # fmt: skip
    doc = build_findings({"pairs": [["zh", "en"]], "pools": ["mean"], "sites": sites,
                          "records": records, "n_boot": 200})  # fmt: skip
    (note,) = [w for w in doc["warnings"] if "z is negative" in w]
    assert note.startswith("zh/en, mean pool, L1: z is negative while P@1 is 60x chance")


def _cka(x: np.ndarray, y: np.ndarray) -> float:
    """Biased linear CKA from its definition, float64."""
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def test_findings_name_the_few_pairs_a_verdict_rests_on(tmp_path):
    """Two synthetic runs on disk: the 'model' barely aligned, the control a little more,
    except that four pairs of the model hold one far-away vector in both languages (as a
    placeholder repeated in a corpus would). Its CKA then clears the control; the finding
    names those four pairs, and recomputing without them (numpy, float64) confirms the flip."""
    from xlalign.store.synthetic import write_synthetic_run
    from xlalign.studies.findings import findings_for_sweep
    from xlalign.studies.layers import SweepConfig, layer_sweep

    model_path = write_synthetic_run(tmp_path / "m", 200, 16, n_sites=2, noise=6.0, seed=1)
    ctl_path = write_synthetic_run(tmp_path / "c", 200, 16, n_sites=2, noise=3.0, seed=2)
    rng = np.random.default_rng(0)
    far = rng.normal(size=16) * 300
    for lang in ("zh", "en"):
        for site in ("embed", "L0"):
            f = model_path / "arrays" / lang / site / "last.npy"
            a = np.load(f)
            a[:4] = far + rng.normal(size=(4, 16))
            np.save(f, a)
    run, control = load_run(model_path), load_run(ctl_path)
    cfg = SweepConfig(metrics=("cka",), n_boot=0, lexical=False)
    doc = findings_for_sweep(
        run, layer_sweep(run, cfg, progress=False), layer_sweep(control, cfg, progress=False),
        cfg, control=control,
    )  # fmt: skip
    (f,) = doc["findings"]
    assert f["verdict"] == "beyond-control"
    inf = f["influential"]
    assert inf is not None and inf["direction"] == "below" and inf["of"] == 200
    assert sorted(inf["ids"]) == sorted(run.ids[:4]) and inf["k"] == 4
    keep = np.ones(200, dtype=bool)
    keep[:4] = False

    def arrays(r):
        return [np.asarray(r.array(lang, f["site"], "last"), np.float64) for lang in ("zh", "en")]

    mx, my = arrays(run)
    cx, cy = arrays(control)
    assert _cka(mx, my) > _cka(cx, cy)
    assert _cka(mx[keep], my[keep]) <= _cka(cx[keep], cy[keep])
    assert inf["model"]["after"] == pytest.approx(_cka(mx[keep], my[keep]), rel=1e-9)
    (line,) = [w for w in doc["warnings"] if "removing 4 of 200 pairs" in w]
    assert "and so the verdict 'beyond-control', rests on these pairs" in line
    assert "rests on 4 of 200 pairs" not in doc["headline"]  # a CKA finding: not in the z headline


def test_the_report_repeats_the_warnings_that_explain_the_curves_under_the_figure():
    from xlalign.report.render import _figure_notes

    doc = {"warnings": [
        "zh/en, last pool, L5-L19: z is negative while P@1 is 28-82x chance: ...",
        "de/fr, last pool, L1: z is negative while P@1 is 20x chance: ...",
        "mean pool, L2-L23 (22 of 26 sites): one dimension holds over half the mean squared norm",
        "corpus x: 3 row(s) whose en text is a placeholder",
    ]}  # fmt: skip
    assert _figure_notes(doc, ("zh", "en")) == [doc["warnings"][0], doc["warnings"][2]]
    assert _figure_notes(doc, ("de", "fr")) == [doc["warnings"][1], doc["warnings"][2]]
    assert _figure_notes(None, ("zh", "en")) == []


def test_like_with_like_the_controls_best_site_and_training_that_lowers_alignment():
    """The real Qwen's problems, last pool (issue 29): the model's best z (27.3 at L10) beats
    the control there (20.9) but not the control's own best (38.6 at L1): not beyond-control.
    A model below its control at every site is below-control: training lowers it."""
    sites = ["embed", "L0", "L1", "L10"]
    model = [_rec("z", "embed", 13.5, 13.2, 13.6), _rec("z", "L0", 14.1, 14.1, 14.2),
             _rec("z", "L1", 16.0, 15.0, 17.0), _rec("z", "L10", 27.3, 26.0, 27.9)]  # fmt: skip
    control = [_rec("z", "embed", 14.1, 14.1, 14.1), _rec("z", "L0", 37.5, 34.9, 38.5),
               _rec("z", "L1", 38.6, 37.0, 39.5), _rec("z", "L10", 20.9, 18.9, 22.9)]  # fmt: skip
    doc = build_findings(
        {"pairs": [["zh", "en"]], "pools": ["mean"], "sites": sites, "records": model,
         "n_boot": 200}, {"records": control},
    )  # fmt: skip
    (f,) = doc["findings"]
    assert (f["site"], f["verdict"]) == ("L10", "matched-by-control")
    assert f["control_best"] == {"site": "L1", "value": 38.6, "ci_low": 37.0, "ci_high": 39.5}
    assert f["sites_vs_control"] == {"above": 1, "below": 3, "compared": 4, "above_sites": "L10",
                                     "below_sites": "embed-L1"}  # fmt: skip
    assert (
        "control's best 38.6 at L1, model above it at 1 and below at 3 of 4 sites"
        in (doc["headline"])
    )
    assert "not above the random-weights control's best site" in doc["headline"]
    # below at every site
    low = [_rec("z", s, 5.0, 4.0, 6.0) for s in sites]
    doc = build_findings(
        {"pairs": [["zh", "en"]], "pools": ["mean"], "sites": sites, "records": low,
         "n_boot": 200}, {"records": control},
    )  # fmt: skip
    (f,) = doc["findings"]
    assert f["verdict"] == "below-control"
    assert "below the random-weights control at every site: training lowers it" in doc["headline"]
    # below at its best site but above elsewhere: matched, not below
    mixed = [*low[:3], _rec("z", "L10", 25.0, 24.0, 26.0)]
    mixed[1] = _rec("z", "L0", 45.0, 44.0, 46.0)
    doc = build_findings(
        {"pairs": [["zh", "en"]], "pools": ["mean"], "sites": sites, "records": mixed,
         "n_boot": 200}, {"records": control},
    )  # fmt: skip
    (f,) = doc["findings"]
    assert (f["site"], f["verdict"]) == ("L0", "beyond-control")  # 45 > 37.5 and > 38.6


def test_p1_does_not_depend_on_the_batch_size(tiny_models, problems, tmp_path):
    """The study's problems repeat 6 prompts. Batched differently, two copies of one prompt
    can come out a few 1e-6 apart, and whether a copy 'wins' retrieval would follow the batch
    size. The sweep gives repeated prompts one vector: P@1 is the same at batch 1, 7 and 32,
    and equals a brute-force P@1 (float64, ties are misses) on the batch-32 vectors with the
    copies made equal."""
    from xlalign.capture.engine import extract
    from xlalign.studies.layers import SweepConfig, layer_sweep

    cfg = SweepConfig(metrics=("p1",), n_boot=0, lexical=False)
    p1 = {}
    for batch in (1, 7, 32):
        run = extract(
            str(tiny_models["qwen2"]), problems, sites="embed,L0,L1", pools="last,mean",
            batch_size=batch, output=tmp_path / f"b{batch}", progress=False,
        )  # fmt: skip
        doc = layer_sweep(run, cfg, progress=False)
        p1[batch] = {(r["site"], r["pool"], r["metric"]): r["value"] for r in doc["records"]}
    assert p1[1] == p1[7] == p1[32]
    groups = doc["duplicate_prompts"]["zh"]
    assert sorted(g for g in groups) == sorted(
        [["0", "144"], ["49", "65"], ["84", "105"], ["107", "110"], ["116", "129"], ["94", "191"]]
    )
    # now plant the batch artifact: problem 49 and its copy 65 translate each other better than
    # anything else, and the copy's English vector sits 1e-4 nearer than the original's
    ids = list(run.ids)
    r49, r65 = ids.index("49"), ids.index("65")
    x_path = run.path / "arrays" / "zh" / "L0" / "mean.npy"
    y_path = run.path / "arrays" / "en" / "L0" / "mean.npy"
    x32, y32 = np.load(x_path), np.load(y_path)
    rng = np.random.default_rng(0)
    x32[r65] = x32[r49]
    y32[r49] = x32[r49] + 0.05 * np.linalg.norm(x32[r49]) * rng.normal(size=x32.shape[1]) / 10
    y32[r65] = y32[r49] + 1e-4 * (x32[r49] - y32[r49])
    np.save(x_path, x32)
    np.save(y_path, y32)
    x, y64 = x32.astype(np.float64), y32.astype(np.float64)

    def brute_p1(xa, ya):
        xn = xa / np.linalg.norm(xa, axis=1, keepdims=True)
        yn = ya / np.linalg.norm(ya, axis=1, keepdims=True)
        s = xn @ yn.T
        d = np.diag(s)[:, None]
        return float(np.mean(((s >= d - 1e-10).sum(1) - 1) == 0))

    raw = brute_p1(x, y64)
    snapped = y64.copy()
    for g in groups:
        rows = [ids.index(i) for i in g]
        snapped[rows] = snapped[rows[0]]
    xs = x.copy()
    for g in doc["duplicate_prompts"]["zh"]:
        rows = [ids.index(i) for i in g]
        xs[rows] = xs[rows[0]]
    tied = brute_p1(xs, snapped)
    assert raw != tied  # the copy's 1e-6 decides a hit when it is not treated as a tie
    again = layer_sweep(run, cfg, progress=False)
    (rec,) = [r for r in again["records"]
              if (r["site"], r["pool"], r["metric"]) == ("L0", "mean", "p1_xy")]  # fmt: skip
    assert rec["value"] == pytest.approx(tied, abs=1e-12)


def test_a_control_known_only_at_its_best_site_still_decides():
    """No control record at the model's site, but one at the control's best: never
    'no-control' (the headline would contradict the finding)."""
    model = {"value": 10.0, "ci_low": 9.0, "ci_high": 11.0}
    best = {"value": 20.0, "ci_low": 19.0, "ci_high": 21.0}
    assert verdict(model, None, None, control_best=best) == "matched-by-control"
    assert verdict(model, None, None, control_best=best, below_everywhere=True) == "below-control"
    low = {"value": 2.0, "ci_low": 1.0, "ci_high": 3.0}
    assert verdict(model, None, None, control_best=low) == "beyond-control"
    # below at every site by points, but the intervals overlap at the model's site: matched
    near = {"value": 10.2, "ci_low": 9.5, "ci_high": 10.9}
    assert verdict(model, near, None, below_everywhere=True) == "matched-by-control"


def test_float_rounding_is_not_outside_an_interval():
    from xlalign.studies.findings import _outside_interval

    f = {"pair": ["zh", "en"], "pool": "mean", "site": "L1", "metric": "cka",
         "model": {"value": 1.0 - 1e-13, "ci_low": 1.0, "ci_high": 1.0}}  # fmt: skip
    assert _outside_interval([f]) == []
    f["model"] = {"value": 0.999, "ci_low": 1.0, "ci_high": 1.0}
    assert len(_outside_interval([f])) == 1
