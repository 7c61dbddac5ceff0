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


NO_SHARED = (
    "zh/en: the two languages share no token (special tokens aside): the lexical baseline gives "
    "no alignment (its z is undefined: every lexical cosine between them is 0)"
)


def _lexical_lines(doc):
    return [w for w in doc["warnings"] if "lexical baseline" in w]


def _two_pools(records):
    return {"pairs": [["zh", "en"]], "pools": ["mean", "last"], "sites": ["L0"],
            "records": records, "n_boot": 200, "null_perms": 0}  # fmt: skip


def test_no_shared_tokens_is_one_warning_word_for_word_and_marks_every_lexical_value():
    records = []
    for pool in ("mean", "last"):
        records += [
            _rec("z", "L0", 12.0, 11.0, 13.0, pool=pool),
            _rec("p1_xy", "L0", 0.5, 0.4, 0.6, pool=pool),
            _rec("z", "lexical", None, pool=pool, shared_tokens=0),
            _rec("p1_xy", "lexical", 0.0, 0.0, 0.0, pool=pool, shared_tokens=0),
        ]
    doc = build_findings(_two_pools(records), None)
    assert _lexical_lines(doc) == [NO_SHARED]  # two pools, two metrics: said once
    by = {(f["pool"], f["metric"]): f["lexical"] for f in doc["findings"]}
    for pool in ("mean", "last"):
        assert by[pool, "z"] == {"value": None, "ci_low": None, "ci_high": None,
                                 "no_shared_tokens": True}  # fmt: skip
        assert by[pool, "p1_xy"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0,
                                     "no_shared_tokens": True}  # fmt: skip


def test_an_undefined_lexical_value_is_named_once_with_its_reason_and_a_defined_one_is_not():
    records = []
    for pool in ("mean", "last"):
        records += [
            _rec("z", "L0", 12.0, 11.0, 13.0, pool=pool),
            _rec("p1_xy", "L0", 0.5, 0.4, 0.6, pool=pool),
            _rec("cka_unbiased", "L0", 0.4, 0.3, 0.5, pool=pool),
            {**_rec("z", "lexical", None, pool=pool, shared_tokens=3),
             "undefined_reason": "constant rows"},
            # defined, with a stray best-site p: the lexical baseline is never a picked site
            {**_rec("p1_xy", "lexical", 0.25, 0.2, 0.3, pool=pool, shared_tokens=3),
             "p_best_site": 0.01, "p_value": 0.002},
            _rec("cka_unbiased", "lexical", None, pool=pool, shared_tokens=3),  # no reason
        ]  # fmt: skip
    doc = build_findings(_two_pools(records), None)
    assert _lexical_lines(doc) == [
        "zh/en: the lexical baseline's z is undefined (constant rows)",
        "zh/en: the lexical baseline's CKA is undefined (undefined)",
    ]
    by = {(f["pool"], f["metric"]): f["lexical"] for f in doc["findings"]}
    for pool in ("mean", "last"):
        assert by[pool, "z"] is None and by[pool, "cka_unbiased"] is None
        assert by[pool, "p1_xy"] == {"value": 0.25, "ci_low": 0.2, "ci_high": 0.3, "p_value": 0.002}


def test_the_stratified_z_is_asked_for_each_z_finding_at_its_own_site():
    calls = []

    def stratified(pair, pool, site):
        calls.append((pair, pool, site))
        return {"z": float(len(calls)), "asked": [list(pair), pool, site]}

    records = []
    for x, y in (("zh", "en"), ("en", "zh")):
        for pool, best in (("mean", "L1"), ("last", "L0")):
            for site in ("L0", "L1"):
                v = 5.0 if site == best else 1.0
                for metric in ("z", "cka_unbiased"):
                    records.append({"x": x, "y": y, "pool": pool, "site": site, "metric": metric,
                                    "value": v if metric == "z" else v / 10, "n": 200})  # fmt: skip
    sweep = {"pairs": [["zh", "en"], ["en", "zh"]], "pools": ["mean", "last"],
             "sites": ["L0", "L1"], "records": records, "n_boot": 200}  # fmt: skip
    doc = build_findings(sweep, None, stratified=stratified)
    z = [f for f in doc["findings"] if f["metric"] == "z"]
    assert [(tuple(f["pair"]), f["pool"], f["site"]) for f in z] == calls == [
        (("zh", "en"), "mean", "L1"), (("zh", "en"), "last", "L0"),
        (("en", "zh"), "mean", "L1"), (("en", "zh"), "last", "L0"),
    ]  # fmt: skip
    for f in z:
        assert f["stratified"]["asked"] == [f["pair"], f["pool"], f["site"]]
    assert all(f["stratified"] is None for f in doc["findings"] if f["metric"] != "z")


def test_the_controls_own_best_site_passes_over_its_identical_vector_sites():
    """The control's best site skips sites where the control's vectors are identical, in that
    pool and for either language of the pair, as the model's does."""
    sites = ["embed", "L0", "L1"]
    model = [_rec("z", s, 10.0 + i, 9.5 + i, 10.5 + i, pool=p) for i, s in enumerate(sites)
             for p in ("mean", "last")]  # fmt: skip
    # the control peaks at embed (identical vectors for en in the mean pool), then L1
    ctl_values = {"embed": 9.0, "L0": 1.0, "L1": 2.0}
    control = [_rec("z", s, v, v - 0.5, v + 0.5, pool=p) for s, v in ctl_values.items()
               for p in ("mean", "last")]  # fmt: skip
    dominance = [
        {"site": "embed", "pool": "mean", "lang": "en", "identical": True, "distinct": 3,
         "largest_group": 150, "share": 0.1, "top_dims": [1], "flagged": False},
        {"site": "embed", "pool": "mean", "lang": "zh", "identical": False, "distinct": 200,
         "largest_group": 1, "share": 0.1, "top_dims": [1], "flagged": False},
    ]  # fmt: skip
    doc = build_findings(
        {"pairs": [["zh", "en"]], "pools": ["mean", "last"], "sites": sites, "records": model,
         "n_boot": 200},
        {"records": control, "dominance": dominance},
    )  # fmt: skip
    best = {f["pool"]: f["control_best"] for f in doc["findings"]}
    assert best["mean"] == {"site": "L1", "value": 2.0, "ci_low": 1.5, "ci_high": 2.5}
    # the other pool's embed is not flagged: the control's highest site stands there
    assert best["last"] == {"site": "embed", "value": 9.0, "ci_low": 8.5, "ci_high": 9.5}
    assert all(f["site"] == "L1" and f["artifact"] is None for f in doc["findings"])


def test_a_sweep_whose_records_carry_no_n_has_no_pair_count_and_no_small_sample_warning():
    records = [{k: v for k, v in _rec("z", s, 1.0 + i).items() if k != "n"}
               for i, s in enumerate(("L0", "L1"))]  # fmt: skip
    doc = build_findings(
        {"pairs": [["zh", "en"]], "pools": ["mean"], "sites": ["L0", "L1"], "records": records,
         "n_boot": 200}, None,
    )  # fmt: skip
    assert doc["study"]["n_pairs"] is None
    assert not any("under 30" in w or "not reliable" in w for w in doc["warnings"])
    (f,) = doc["findings"]
    assert f["site"] == "L1" and f["n"] is None


def test_a_wide_control_interval_at_the_models_site_matches_the_model_though_its_best_is_lower():
    """The control at the model's best site has a lower value than the control's own best but a
    wider interval reaching the model: matched-by-control (model_low <= control_high there),
    although the model lies above the control's best site."""
    model = [_rec("z", "L0", 4.0, 3.0, 4.5), _rec("z", "L1", 1.0, 0.5, 1.5)]
    control = [_rec("z", "L0", 1.0, 0.0, 5.0), _rec("z", "L1", 2.0, 1.9, 2.1)]
    doc = build_findings(
        {"pairs": [["zh", "en"]], "pools": ["mean"], "sites": ["L0", "L1"], "records": model,
         "n_boot": 200}, {"records": control},
    )  # fmt: skip
    (f,) = doc["findings"]
    assert (f["site"], f["control_best"]["site"]) == ("L0", "L1")
    assert f["model"]["ci_low"] > f["control_best"]["ci_high"]  # above the control's best
    assert f["control"] == {"value": 1.0, "ci_low": 0.0, "ci_high": 5.0}
    assert f["verdict"] == "matched-by-control"


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_the_largest_gain_passes_over_a_site_of_identical_vectors_in_either_language(lang):
    """The model gains most at L0, where ``lang``'s vectors (either side of the pair) are
    identical in the mean pool: the largest gain is taken among the other sites (L1 there);
    in the last pool nothing is flagged and L0 stands."""
    gains = {"embed": 1.0, "L0": 5.0, "L1": 2.0}
    model = [_rec("z", s, 10.0 + g, pool=p) for s, g in gains.items() for p in ("mean", "last")]
    control = [_rec("z", s, 10.0, pool=p) for s in gains for p in ("mean", "last")]
    dominance = [{"site": "L0", "pool": "mean", "lang": lang, "identical": True, "distinct": 2,
                  "largest_group": 190, "share": 0.1, "top_dims": [1], "flagged": False}]  # fmt: skip
    doc = build_findings(
        {"pairs": [["zh", "en"]], "pools": ["mean", "last"], "sites": list(gains),
         "records": model, "dominance": dominance, "n_boot": 200},
        {"records": control},
    )  # fmt: skip
    by = {f["pool"]: f for f in doc["findings"]}
    assert by["mean"]["site"] == "L1" and by["mean"]["largest_gain"] == {
        "site": "L1", "gain": 2.0, "model": 12.0, "control": 10.0
    }  # fmt: skip
    assert by["last"]["site"] == "L0" and by["last"]["largest_gain"]["site"] == "L0"


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_a_best_site_taken_among_identical_vector_sites_carries_the_artifact(lang):
    """Every site of the mean pool holds identical vectors for ``lang``: the best site is
    taken among them and marked ``identical-vectors``; the last pool's is not marked."""
    sites = ["embed", "L0"]
    model = [_rec("z", s, 3.0 + i, pool=p) for i, s in enumerate(sites) for p in ("mean", "last")]
    dominance = [{"site": s, "pool": "mean", "lang": lang, "identical": True, "distinct": 2,
                  "largest_group": 190, "share": 0.1, "top_dims": [1], "flagged": False}
                 for s in sites]  # fmt: skip
    doc = build_findings(
        {"pairs": [["zh", "en"]], "pools": ["mean", "last"], "sites": sites, "records": model,
         "dominance": dominance, "n_boot": 200}, None,
    )  # fmt: skip
    by = {f["pool"]: f for f in doc["findings"]}
    assert (by["mean"]["site"], by["mean"]["artifact"]) == ("L0", "identical-vectors")
    assert (by["last"]["site"], by["last"]["artifact"]) == ("L0", None)


def test_a_small_sample_is_the_first_warning_word_for_word():
    records = [_rec("z", s, 1.0 + i, n=12) for i, s in enumerate(("L0", "L1"))]
    # a warning made before the sample's is checked: the small sample still comes first
    records += [_rec("cka_unbiased", s, None, n=12) for s in ("L0", "L1")]
    doc = build_findings(
        {"pairs": [["zh", "en"]], "pools": ["mean"], "sites": ["L0", "L1"], "records": records},
        None,
    )
    assert doc["warnings"][0] == (
        "only 12 pairs (under 30): these numbers are not reliable; intervals are wide and a few "
        "pairs can move any value"
    )
    assert "zh/en, mean pool: CKA is undefined at every site" in doc["warnings"][1:]
    big = build_findings(
        {"pairs": [["zh", "en"]], "pools": ["mean"], "sites": ["L0"],
         "records": [_rec("z", "L0", 1.0, n=30)]}, None,
    )  # fmt: skip
    assert not any("not reliable" in w for w in big["warnings"])


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


# ---------------------------------------------------------------------------------------------
# the words users read (issue 25): each line's numbers, sites, verdicts and warnings, checked
# against strings written out by hand from the formats in docs/report.md


def test_numbers_are_shown_with_one_two_or_three_decimals_by_magnitude():
    from xlalign.studies.findings import _fmt, _fmt_p

    # |v| >= 10: one decimal; 1 <= |v| < 10: two; below 1: three; None is undefined
    cases = {10: "10.0", -10.0: "-10.0", 38.64: "38.6", 9.5: "9.50", 1: "1.00", -1.0: "-1.00",
             0.999: "0.999", -0.5: "-0.500", 0.0: "0.000", "2.5": "2.50", None: "undefined"}  # fmt: skip
    assert {v: _fmt(v) for v in cases} == cases
    # a permutation p-value: three decimals under 0.01, two from 0.01 on
    assert [_fmt_p(p) for p in (0.001, 0.0099, 0.01, 0.372)] == ["0.001", "0.010", "0.01", "0.37"]


def test_a_value_with_its_interval_and_best_site_p_reads_as_one_phrase():
    from xlalign.studies.findings import _fmt_ci

    assert _fmt_ci(None) == "none"
    assert _fmt_ci({"value": None, "no_shared_tokens": True}) == "no shared tokens"
    assert _fmt_ci({"value": 0.0, "no_shared_tokens": True}) == "0.000"  # defined: a value
    assert _fmt_ci({"value": None, "no_shared_tokens": False}) == "undefined"
    assert _fmt_ci({"value": 12.0, "ci_low": 11.0, "ci_high": 13.5}) == "12.0 [11.0, 13.5]"
    # half an interval is no interval
    assert _fmt_ci({"value": 2.0, "ci_low": 1.0, "ci_high": None}) == "2.00"
    assert _fmt_ci({"value": 2.0, "ci_low": None, "ci_high": 3.0}) == "2.00"
    assert _fmt_ci({"value": 2.0, "ci_high": 3.0}) == "2.00"
    assert _fmt_ci({"value": 0.5, "p_best_site": 0.004}) == "0.500 (p best site 0.004)"
    assert (
        _fmt_ci({"value": 0.5, "ci_low": 0.25, "ci_high": 0.75, "p_best_site": 0.0})
        == "0.500 [0.250, 0.750] (p best site 0.000)"
    )


def test_the_lexical_baseline_reads_as_its_value_or_as_no_shared_tokens():
    from xlalign.studies.findings import _lexical_text

    assert _lexical_text(None) == "lexical undefined"
    assert _lexical_text({"value": None}) == "lexical undefined"
    assert _lexical_text({"value": None, "no_shared_tokens": True}) == "lexical: no shared tokens"
    assert _lexical_text({"value": 0.0, "no_shared_tokens": True}) == "lexical 0.000"
    assert _lexical_text({"value": 2.5, "no_shared_tokens": False}) == "lexical 2.50"


_CB = {"site": "L1", "value": 38.6, "ci_low": 37.0, "ci_high": 39.5}
_COUNTS = {"above": 1, "below": 3, "compared": 4}


def test_the_controls_best_site_and_the_site_counts_are_stated_where_known():
    from xlalign.studies.findings import _control_brief, control_context

    both = {"site": "L10", "control_best": _CB, "sites_vs_control": _COUNTS}
    assert control_context(both) == (
        ", control's best 38.6 at L1, model above it at 1 and below at 3 of 4 sites"
    )
    assert _control_brief(both) == (
        " (best 38.6 [37.0, 39.5] at L1; model above at 1/4, below at 3/4 sites)"
    )
    # the control's best is the finding's own site, undefined, or absent: only the counts
    for cb in ({**_CB, "site": "L10"}, {**_CB, "value": None}, None, {}):
        f = {"site": "L10", "control_best": cb, "sites_vs_control": {**_COUNTS, "above": 2}}
        assert control_context(f) == ", model above it at 2 and below at 3 of 4 sites"
        assert _control_brief(f) == " (model above at 2/4, below at 3/4 sites)"
    only_best = {"site": "L10", "control_best": {"site": "L2", "value": 5.0}}
    assert control_context(only_best) == ", control's best 5.00 at L2"
    assert _control_brief(only_best) == " (best 5.00 at L2)"
    for nothing in ({"site": "L10"}, {"site": "L10", "control_best": None, "sites_vs_control": {}}):
        assert control_context(nothing) == ""
        assert _control_brief(nothing) == ""


def test_a_findings_artifact_marks_are_listed_in_brackets():
    from xlalign.studies.findings import _flags

    assert _flags({"dominated": None, "influential": None}) == ""
    f = {
        "dominated": {"standardized": 3.0},
        "influential": {"k": 4, "of": 200},
        "artifact": "identical-vectors",
    }
    assert _flags(f) == (
        " [one dimension dominates, standardized 3; rests on 4 of 200 pairs; identical-vectors]"
    )
    assert _flags({"influential": {"k": 2, "of": 30}}) == " [rests on 2 of 30 pairs]"


def _finding(verdict, **kw):
    f = {"pair": ["zh", "en"], "pool": "mean", "metric": "z", "site": "L10", "verdict": verdict,
         "model": {"value": 27.3, "ci_low": 26.0, "ci_high": 27.9},
         "control": {"value": 20.9}, "lexical": {"value": 2.5}}  # fmt: skip
    f.update(kw)
    return f


def test_each_verdict_is_phrased_to_match_its_control_and_lexical_baseline():
    from xlalign.studies.findings import phrase

    below = "below the random-weights control: training lowers it"
    assert phrase(_finding("below-control")) == below
    assert phrase(_finding("below-control", sites_vs_control={})) == below
    assert phrase(_finding("below-control", sites_vs_control=_COUNTS)) == (
        "below the random-weights control at every site: training lowers it"
    )
    not_above = (
        "not above the random-weights control's best site: random weights reach as much "
        "without training"
    )
    matched = "matched by the random-weights control: alignment that needs no training"
    m = _finding("matched-by-control", control_best=_CB)
    assert phrase(m) == not_above  # 26.0 <= 39.5
    # the model's low end against the control's high end, bounds included
    assert phrase({**m, "model": {"value": 40.0, "ci_low": 39.5}}) == not_above
    assert phrase({**m, "model": {"value": 40.0, "ci_low": 39.6}}) == matched
    # no low end: the value; no high end: the control's value
    assert phrase({**m, "model": {"value": 39.5}}) == not_above
    assert phrase({**m, "model": {"value": 39.6, "ci_low": None}}) == matched
    assert phrase({**m, "model": {"value": 39.5, "ci_low": None}}) == not_above
    assert phrase({**m, "control_best": {**_CB, "ci_high": None}, "model": {"value": 38.6}}) == (
        not_above
    )
    assert phrase({**m, "control_best": {**_CB, "ci_high": None}, "model": {"value": 38.7}}) == (
        matched
    )
    # the control's best at the finding's own site, or undefined there: the plain phrase
    assert phrase({**m, "control_best": {**_CB, "site": "L10"}}) == matched
    assert phrase({**m, "control_best": {"site": "L1", "value": None, "ci_high": 39.5}}) == matched
    assert phrase(_finding("matched-by-control")) == matched
    assert phrase({**m, "verdict": "below-control"}) == below
    # beyond-control with the lexical baseline undefined, absent, or sharing no token
    beyond = "above the random-weights control and the lexical baseline"
    assert phrase(_finding("beyond-control")) == beyond
    assert phrase(_finding("beyond-control", control_best=_CB)) == beyond
    assert phrase(_finding("beyond-control", lexical={"value": 0.0, "no_shared_tokens": True})) == (
        beyond
    )
    no_lex = "above the random-weights control (no lexical baseline to compare with)"
    assert phrase(_finding("beyond-control", lexical=None)) == no_lex
    assert phrase(_finding("beyond-control", lexical={"value": None})) == no_lex
    none_shared = {"value": None, "no_shared_tokens": True}
    assert phrase(_finding("beyond-control", lexical=none_shared)) == (
        "above the random-weights control; the lexical baseline gives no alignment "
        "(the languages share no token)"
    )
    assert phrase(_finding("no-control", lexical=none_shared)) == (
        "no random-weights control to compare with; the lexical baseline gives no alignment"
    )
    assert phrase(_finding("no-control", lexical={"value": None})) == (
        "no random-weights control to compare with"
    )
    assert phrase(_finding("matched-by-lexical", lexical=none_shared)) == (
        "matched by the lexical baseline: the bag of token ids alone gives as much"
    )
    assert phrase(_finding("matched-by-null", lexical=None)) == (
        "no higher than the best site reaches with the pairing scrambled: picking the best of "
        "all sites explains it"
    )


def test_a_dominated_finding_names_each_dimension_and_the_standardized_value():
    from xlalign.studies.findings import _dominated_text

    assert _dominated_text(_finding("beyond-control")) == ""
    assert _dominated_text(_finding("beyond-control", dominated=None)) == ""
    dom = {"languages": {"zh": {"dim": 3, "share": 0.9}, "en": {"dim": 5, "share": 0.612}},
           "raw": 15.0, "standardized": 3.0}  # fmt: skip
    assert _dominated_text(_finding("beyond-control", dominated=dom)) == (
        " [one dimension dominates there: zh dim 3 holds 90%, en dim 5 holds 61%;"
        " standardized z 3.00]"
    )
    cka = _finding("beyond-control", metric="cka_unbiased", dominated={**dom, "standardized": None})
    assert _dominated_text(cka).endswith("; standardized CKA undefined]")
    other = _finding("beyond-control", metric="rsa", dominated={**dom, "standardized": 0.5})
    assert _dominated_text(other).endswith("en dim 5 holds 61%; standardized rsa 0.500]")


def test_the_headline_states_each_pools_peak_z_of_the_first_pair_with_its_controls():
    from xlalign.studies.findings import headline

    dom = {"languages": {"zh": {"dim": 3, "share": 0.9}}, "raw": 27.3, "standardized": 3.0}
    peak = _finding(
        "beyond-control", model={"value": 27.3, "ci_low": 26.0, "ci_high": 27.9,
                                 "p_best_site": 0.004},
        n_sites=26, control_best=_CB, sites_vs_control=_COUNTS, dominated=dom,
        influential={"k": 4, "of": 200},
    )  # fmt: skip
    shared = _finding("beyond-control", pool="last", site="L3", model={"value": 5.0},
                      control=None, lexical=None, artifact="identical-vectors")  # fmt: skip
    best_of_unknown = _finding("matched-by-lexical", pool="max", site="L2", n_sites=0,
                               model={"value": 0.5, "p_best_site": 0.372}, influential={})  # fmt: skip
    other_pair = _finding("beyond-control", pair=["de", "fr"])
    findings = [
        {**other_pair, "metric": "p1_xy"}, peak, other_pair, shared,
        {**peak, "metric": "p1_xy"}, best_of_unknown,
    ]  # fmt: skip
    parts = [
        "mean-pool z 27.3 at L10 (best of 26 sites, p 0.004) is beyond-control (control 20.9 "
        "at L10, control's best 38.6 at L1, model above it at 1 and below at 3 of 4 sites, "
        "lexical 2.50): above the random-weights control and the lexical baseline [one "
        "dimension dominates there: zh dim 3 holds 90%; standardized z 3.00] [the verdict rests "
        "on 4 of 200 pairs: see warnings]",
        "last-pool z 5.00 at L3 (identical vectors: shared tokens) is beyond-control (control "
        "undefined at L3, lexical undefined): above the random-weights control (no lexical "
        "baseline to compare with)",
        "max-pool z 0.500 at L2 (best of ? sites, p 0.37) is matched-by-lexical (control 20.9 "
        "at L2, lexical 2.50): matched by the lexical baseline: the bag of token ids alone "
        "gives as much",
    ]
    # the pool at a site of identical vectors is not counted beyond-control
    assert headline(findings) == "zh/en: 1 of 3 pool(s) beyond-control. " + "; ".join(parts)
    assert headline(findings, has_control=False).startswith(
        "zh/en: 1 of 3 pool(s) beyond-control. mean-pool z 27.3 at L10 (best of 26 sites, "
        "p 0.004) is beyond-control (no control run, lexical 2.50): "
    )
    plain = _finding("matched-by-control", model={"value": 12.0})
    assert headline([plain, shared]) == (
        "zh/en: no z survives its controls. mean-pool z 12.0 at L10 is matched-by-control "
        "(control 20.9 at L10, lexical 2.50): matched by the random-weights control: alignment "
        "that needs no training; " + parts[1]
    )
    assert headline([{**plain, "verdict": "no-control", "control": None}], has_control=False) == (
        "zh/en: no control was run. mean-pool z 12.0 at L10 is no-control (no control run, "
        "lexical 2.50): no random-weights control to compare with"
    )
    assert (
        headline([{**peak, "metric": "cka"}])
        == headline([])
        == ("no z value was defined at any site: no finding (see alignment.json for reasons)")
    )


def test_the_summary_has_the_study_the_headline_a_line_per_finding_and_the_warnings():
    from xlalign.studies.findings import summary_lines

    study = {"model": "gpt2", "random_init_seed": 3, "languages": ["zh", "en"], "n_pairs": 200,
             "null": "permutation", "standardize": True}  # fmt: skip
    origin = _finding(
        "matched-by-control", control={"value": 20.9, "ci_low": 18.9, "ci_high": 22.9},
        control_best=_CB, sites_vs_control=_COUNTS, source="origin",
        influential={"k": 4, "of": 200},
    )  # fmt: skip
    p1 = _finding("no-control", pool="last", metric="p1_xy", site="L3", model={"value": 0.5},
                  control=None, lexical=None)  # fmt: skip
    rsa = _finding("beyond-control", pair=["de", "fr"], metric="rsa", model={"value": 1.5})
    third = _finding("beyond-control", pair=["ar", "ru"])
    doc = {"study": study, "headline": "the headline", "findings": [origin, rsa, p1, third],
           "warnings": ["first warning", "second warning"]}  # fmt: skip
    zh_lines = [
        "  zh/en " + "mean".ljust(6) + " " + "z".ljust(9) + " 27.3 [26.0, 27.9] at L10; control "
        "20.9 [18.9, 22.9] (best 38.6 [37.0, 39.5] at L1; model above at 1/4, below at 3/4 "
        "sites); lexical 2.50 -> matched-by-control (origin study) [rests on 4 of 200 pairs]",
        "  zh/en " + "last".ljust(6) + " " + "P@1 x->y".ljust(9) + " 0.500 at L3; control none; "
        "lexical none -> no-control",
    ]
    de_line = (
        "  de/fr " + "mean".ljust(6) + " " + "rsa".ljust(9) + " 1.50 at L10; control 20.9; "
        "lexical 2.50 -> beyond-control"
    )
    head = [
        "model gpt2 (random weights, seed 3), zh/en, 200 pairs, null permutation, "
        "standardized dimensions",
        "the headline",
    ]
    warnings = ["warning: first warning", "warning: second warning"]
    assert summary_lines(doc, max_pairs=2) == [
        *head,
        *zh_lines,
        de_line,
        "  ... and 1 more pairs in findings.json",
        *warnings,
    ]
    ar_line = (
        "  ar/ru " + "mean".ljust(6) + " " + "z".ljust(9) + " 27.3 [26.0, 27.9] at L10; control "
        "20.9; lexical 2.50 -> beyond-control"
    )
    assert summary_lines(doc, max_pairs=3) == [*head, *zh_lines, de_line, ar_line, *warnings]
    assert len(summary_lines(doc)) == 2 + 4 + 2  # six pairs at most by default
    assert summary_lines(doc, max_pairs=2, per_finding=False) == [*head, *warnings]
    trained = {**study, "random_init_seed": None, "standardize": False}
    assert summary_lines({"study": trained, "headline": "h"}) == [
        "model gpt2, zh/en, 200 pairs, null permutation",
        "h",
    ]
    assert summary_lines({}) == [""]
    assert summary_lines({"headline": "h", "findings": [], "warnings": None}) == ["h"]


def test_site_ranges_join_consecutive_sites_and_keep_unknown_ones_last():
    order = ["embed", "L0", "L1", "L2", "L3", "final"]
    assert site_ranges(["embed"], order) == "embed"
    assert site_ranges(["L3", "L2", "L2"], order) == "L2-L3"
    assert site_ranges(["embed", "L0", "L2", "L3", "final"], order) == "embed-L0, L2-final"
    assert site_ranges(["lexical", "L0"], order) == "L0, lexical"
    assert site_ranges(["lexical"], order) == "lexical"
    assert site_ranges(["embed", "L1", "final"], order) == "embed, L1, final"


@pytest.mark.parametrize("seed", range(20))
def test_site_ranges_expand_back_to_the_chosen_sites_in_maximal_runs(seed):
    """Random subsets of 12 sites: expanding the text's ranges gives the chosen positions in
    order, each range ascends, and two runs are never adjacent (a run would have been joined)."""
    import itertools

    rng = np.random.default_rng(seed)
    order = [f"S{i}" for i in range(12)]
    chosen = [order[i] for i in rng.permutation(12)[: rng.integers(1, 13)]]
    runs = []
    for token in site_ranges(chosen, order).split(", "):
        a, _, b = token.partition("-")
        lo, hi = order.index(a), order.index(b or a)
        assert lo < hi or not b
        runs.append((lo, hi))
    expanded = [p for lo, hi in runs for p in range(lo, hi + 1)]
    assert expanded == sorted({order.index(s) for s in chosen})
    assert all(nxt[0] > prev[1] + 1 for prev, nxt in itertools.pairwise(runs))


def test_a_span_of_shares_or_counts_is_one_value_when_they_print_alike():
    from xlalign.studies.findings import _span

    assert _span([0.75, 0.6]) == "60%-75%"
    assert _span([0.601, 0.604, 0.6]) == "60%"
    assert _span([0.9]) == "90%"
    assert _span([5, 3, 4], pct=False) == "3-5"
    assert _span([4, 4], pct=False) == "4"
    assert _span([2.5], pct=False) == "2.5"


def test_dominance_and_identical_vectors_are_warned_once_per_pool_with_sites_as_ranges():
    from xlalign.studies.findings import _grouped_dominance, _grouped_identical

    order = ["embed", "L0", "L1", "L2", "L3"]

    def lang(code, dim, share):
        return {"lang": code, "top_dims": [dim, 0], "share": share}

    dominance = [
        {"site": "L0", "pool": "mean", "languages": [lang("zh", 7, 0.6), lang("en", 2, 0.55)]},
        {"site": "L1", "pool": "mean", "languages": [lang("zh", 7, 0.75)]},
        {"site": "L1", "pool": "last", "languages": [lang("en", 2, 0.8)]},
        {"site": "L3", "pool": "mean", "languages": [lang("zh", 3, 0.9)]},
    ]
    tail = (
        "; cosine, CKA and k-NN there mostly measure that dimension (raw and standardized z and "
        "CKA of each site: findings.json 'dominance' and the report)"
    )
    assert _grouped_dominance(dominance, order) == [
        "mean pool, L0-L1, L3 (3 of 5 sites): one dimension holds over half the mean squared "
        "norm (zh dim 7 holds 60%-75% at 2 site(s), en dim 2 holds 55% at 1 site(s), zh dim 3 "
        "holds 90% at 1 site(s))" + tail,
        "last pool, L1 (1 of 5 sites): one dimension holds over half the mean squared norm "
        "(en dim 2 holds 80% at 1 site(s))" + tail,
    ]
    assert _grouped_dominance([], order) == []
    identical = [
        {"site": "L0", "pool": "last", "distinct": {"zh": 4, "en": 5},
         "largest_group": {"zh": 12, "en": 9}},
        {"site": "L1", "pool": "last", "distinct": {"zh": 3}, "largest_group": {"zh": 20}},
        {"site": "L3", "pool": "mean", "distinct": {"en": 2}, "largest_group": {"en": 30}},
    ]  # fmt: skip
    tail = (
        ": they share the token pooled there, so the metrics at these sites mostly measure "
        "which prompts share it, not what the model computed; findings skip these sites for "
        "these languages"
    )
    assert _grouped_identical(identical, order) == [
        "last pool, L0-L1: many prompts share one vector (zh: 3-4 distinct, up to 20 rows share "
        "one, en: 5 distinct, up to 9 rows share one)" + tail,
        "mean pool, L3: many prompts share one vector (en: 2 distinct, up to 30 rows share one)"
        + tail,
    ]
    assert _grouped_identical([], order) == []


def test_negative_z_is_explained_at_the_sites_where_p1_is_ten_times_chance_or_more():
    from xlalign.studies.findings import _negative_z_with_retrieval

    def rec(pair, pool, site, metric, value, n=200):
        return {"x": pair[0], "y": pair[1], "pool": pool, "site": site, "metric": metric,
                "value": value, "n": n}  # fmt: skip

    zh, de = ("zh", "en"), ("de", "fr")
    records = [
        rec(zh, "mean", "L0", "z", 5.0), rec(zh, "mean", "L0", "p1_xy", 0.5),  # z > 0
        rec(zh, "mean", "L1", "z", -2.0), rec(zh, "mean", "L1", "p1_xy", 0.3),  # 60x
        rec(zh, "mean", "L1", "p1_yx", 0.5),  # the first direction over 10x decides
        rec(zh, "mean", "L2", "z", 0.0), rec(zh, "mean", "L2", "p1_xy", 0.5),  # z = 0
        rec(zh, "mean", "L3", "z", -1.0), rec(zh, "mean", "L3", "p1_xy", 0.25, n=40),  # 10x
        rec(zh, "mean", "L4", "z", -1.0), rec(zh, "mean", "L4", "p1_xy", 0.02),  # 4x
        rec(zh, "mean", "L4", "p1_yx", 0.06),  # 12x
        rec(zh, "last", "L0", "z", -3.0), rec(zh, "last", "L0", "p1_xy", None),
        rec(zh, "last", "L0", "p1_yx", 0.5, n=None),
        rec(zh, "last", "L1", "z", -3.0), rec(zh, "last", "L1", "p1_xy", 0.5, n=0),
        rec(zh, "last", "L2", "z", None), rec(zh, "last", "L2", "p1_xy", 0.5),
        rec(zh, "last", "L3", "z", -3.0), rec(zh, "last", "L3", "p1_xy", 0.045),  # 9x
        rec(de, "mean", "L0", "z", -1.0), rec(de, "mean", "L0", "p1_xy", 0.2, n=100),  # 20x
        rec(de, "mean", "L2", "z", -1.0), rec(de, "mean", "L2", "p1_yx", 0.204, n=100),  # 20.4x
    ]  # fmt: skip
    alignment = {"pairs": [list(zh), list(de)], "pools": ["mean", "last"], "records": records}
    tail = (
        "x chance: partners still rank first among the candidates, but the matched cosines lie "
        "below the mean of all cosines. That happens when the cosine's level varies from "
        "sentence to sentence in opposite ways in the two languages: z then measures that "
        "level, not the pairing (see P@1, and z with --center or --standardize)"
    )
    order = ["L0", "L1", "L2", "L3", "L4"]
    assert _negative_z_with_retrieval(alignment, order) == [
        "zh/en, mean pool, L1, L3-L4: z is negative while P@1 is 10-60" + tail,
        "de/fr, mean pool, L0, L2: z is negative while P@1 is 20" + tail,
    ]
    assert _negative_z_with_retrieval({"pairs": None, "pools": ["mean"]}, order) == []
    assert _negative_z_with_retrieval({"pairs": [list(zh)], "records": records}, order) == []


def test_a_corpus_quality_issue_names_its_source_count_and_first_ten_ids():
    from xlalign.studies.findings import _quality_warning

    ids = [f"p{i}" for i in range(12)]
    issue = {"ids": ids, "count": 12, "detail": "whose en text is a placeholder"}
    assert _quality_warning(issue, {"source": "problems.jsonl"}) == (
        "corpus problems.jsonl: 12 row(s) whose en text is a placeholder (ids "
        + ", ".join(ids[:10]) + " and 2 more); every number includes them"
    )  # fmt: skip
    assert _quality_warning({"ids": ids[:11], "detail": "d"}, {"source": "c"}) == (
        "corpus c: 11 row(s) d (ids " + ", ".join(ids[:10]) + " and 1 more); every number "
        "includes them"
    )  # fmt: skip
    assert _quality_warning({"ids": ids[:10], "detail": "d"}, {"source": None}) == (
        "corpus : 10 row(s) d (ids " + ", ".join(ids[:10]) + "); every number includes them"
    )
    assert _quality_warning({"ids": None, "count": 3, "detail": "d"}, {}) == (
        "corpus : 3 row(s) d (ids ); every number includes them"
    )


def test_the_summary_lists_six_pairs_by_default_and_counts_the_rest():
    from xlalign.studies.findings import summary_lines

    langs = ["zh", "en", "de", "fr", "ar", "ru", "ja"]
    pairs = [[langs[0], other] for other in langs[1:]] + [["de", "fr"]]  # 7 pairs
    doc = {"headline": "h", "findings": [_finding("no-control", pair=p) for p in pairs]}
    lines = summary_lines(doc)
    assert [line.split()[0] for line in lines[1:7]] == [f"{x}/{y}" for x, y in pairs[:6]]
    assert len(lines) == 1 + 6 + 1 and lines[-1] == "  ... and 1 more pairs in findings.json"
