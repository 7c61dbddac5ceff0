"""Findings' numbers against definitions where a plausible bug would show (issue 25).

- The origin findings (:func:`findings_for_origin`) on hand-built ``origin.json`` documents
  (hypothesis): the site, the largest gain over the control (model minus control, on cases
  where its sign decides the site) and the identical-vectors rule, which concerns the last
  token only (the mean pool's vectors are not the last token's).
- The findings' stratified z (``--stratify``) under every combination of ``--standardize`` and
  ``--center``, against numpy z-scoring, centring and the exact within-stratum null written
  out (``references.z_from_cosines``).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from references import z_from_cosines
from xlalign.capture.engine import extract
from xlalign.studies.findings import findings_for_origin, findings_for_sweep
from xlalign.studies.layers import SweepConfig, layer_sweep

SITES = ("embed", "L0", "L1", "L2")
KEYS = {"mean": "z_mean_full", "last": "z_last"}


@st.composite
def _origins(draw):
    def zs():
        return draw(st.lists(st.integers(-30, 30), min_size=4, max_size=4, unique=True))

    model = {k: zs() for k in KEYS.values()}
    control = {k: zs() for k in KEYS.values()}
    flags = {
        lang: {s: {"identical": draw(st.booleans())} for s in ("embed", "L0")}
        for lang in ("zh", "en")
    }
    doc = {
        "languages": ["zh", "en"],
        "n_pairs": 50,
        "decomposition": [
            {"site": s, **{k: v[i] / 4 for k, v in model.items()}} for i, s in enumerate(SITES)
        ],
        "control": {
            "decomposition": [
                {"site": s, **{k: v[i] / 4 for k, v in control.items()}}
                for i, s in enumerate(SITES)
            ]
        },
        "identical_last_token": flags,
    }
    return doc, model, control, flags


@settings(max_examples=300, deadline=None)
@given(_origins())
def test_origin_findings_site_gain_and_artifact_by_definition(case):
    doc, model, control, flags = case
    flagged = {s for lang in flags.values() for s, g in lang.items() if g["identical"]}
    out = findings_for_origin(doc)
    by_pool = {f["pool"]: f for f in out["findings"]}
    assert set(by_pool) == {"mean", "last"}
    for pool, key in KEYS.items():
        f = by_pool[pool]
        # the identical-vectors rule is about the last token: the mean pool passes over nothing
        skip = flagged if pool == "last" else set()
        usable = [i for i, s in enumerate(SITES) if s not in skip] or list(range(len(SITES)))
        best = max(usable, key=lambda i: model[key][i])
        assert f["site"] == SITES[best]
        assert f["model"]["value"] == model[key][best] / 4
        assert f["control"]["value"] == control[key][best] / 4
        assert f["artifact"] == ("identical-vectors" if SITES[best] in skip else None)
        gains = {i: (model[key][i] - control[key][i]) / 4 for i in usable}
        top = max(gains.values())
        g = f["largest_gain"]
        assert g["gain"] == top  # model minus control, not the other way round
        assert gains[SITES.index(g["site"])] == top
        assert g["model"] - g["control"] == pytest.approx(top)


def test_origin_gain_sign_and_pool_decide_the_site():
    """A case written out: the model gains most at L1 (+3) and loses most at L2 (-4); L0 is
    flagged (identical last-token vectors) and holds the best last-token z, not the best mean."""
    dec = [
        {"site": "embed", "z_mean_full": 1.0, "z_last": 1.0},
        {"site": "L0", "z_mean_full": 2.0, "z_last": 9.0},
        {"site": "L1", "z_mean_full": 5.0, "z_last": 5.0},
        {"site": "L2", "z_mean_full": 6.0, "z_last": 6.0},
    ]
    ctl = [
        {"site": "embed", "z_mean_full": 1.0, "z_last": 1.0},
        {"site": "L0", "z_mean_full": 2.0, "z_last": 9.0},
        {"site": "L1", "z_mean_full": 2.0, "z_last": 2.0},
        {"site": "L2", "z_mean_full": 10.0, "z_last": 10.0},
    ]
    doc = {
        "languages": ["zh", "en"], "n_pairs": 50, "decomposition": dec,
        "control": {"decomposition": ctl},
        "identical_last_token": {"zh": {"embed": {"identical": False}, "L0": {"identical": True}},
                                 "en": {"embed": {"identical": False}, "L0": {"identical": False}}},
    }  # fmt: skip
    by_pool = {f["pool"]: f for f in findings_for_origin(doc)["findings"]}
    for pool in ("mean", "last"):
        g = by_pool[pool]["largest_gain"]
        assert (g["site"], g["gain"]) == ("L1", 3.0), pool
    assert by_pool["last"]["site"] == "L2" and by_pool["last"]["artifact"] is None
    assert by_pool["mean"]["site"] == "L2"
    # every site with a last-token z flagged: the best one is taken, and marked
    doc["identical_last_token"]["en"]["embed"] = {"identical": True}
    doc["decomposition"] = [dict(r) if r["site"] == "L0" else dict(r, z_last=None) for r in dec]
    only = {f["pool"]: f for f in findings_for_origin(doc)["findings"]}
    assert only["last"]["site"] == "L0" and only["last"]["artifact"] == "identical-vectors"
    assert only["mean"]["artifact"] is None


# --------------------------------------------------------------------------- stratified z


@pytest.fixture(scope="module")
def strat_run(tiny_models, problems, tmp_path_factory):
    return extract(
        str(tiny_models["qwen2"]), problems.head(30), ["zh", "en"], sites="embed,L1",
        pools=("mean",), output=tmp_path_factory.mktemp("strat") / "run", progress=False,
    )  # fmt: skip


def _strat_reference(run, site, standardize, center):
    x = np.asarray(run.array("zh", site, "mean"), np.float64)
    y = np.asarray(run.array("en", site, "mean"), np.float64)
    if standardize:  # each dimension z-scored over both languages' rows (population std)
        both = np.concatenate([x, y])
        mu, sd = both.mean(0), both.std(0)
        x, y = (x - mu) / sd, (y - mu) / sd
    if center:  # each side's own mean
        x, y = x - x.mean(0), y - y.mean(0)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    labels = np.asarray(run.meta["category"])
    return z_from_cosines(x @ y.T, labels)


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("center", [False, True])
def test_stratified_z_follows_standardize_and_center(strat_run, standardize, center):
    cfg = SweepConfig(
        metrics=("z",), n_boot=0, lexical=False, standardize=standardize, center=center
    )
    alignment = layer_sweep(strat_run, cfg, progress=False)
    doc = findings_for_sweep(strat_run, alignment, None, cfg, stratify="category")
    (f,) = [f for f in doc["findings"] if f["metric"] == "z"]
    want = _strat_reference(strat_run, f["site"], standardize, center)
    assert f["stratified"]["value"] == pytest.approx(want, rel=1e-6)
    # every other setting gives another number here: a setting left out would show
    others = [
        _strat_reference(strat_run, f["site"], s, c)
        for s in (False, True)
        for c in (False, True)
        if (s, c) != (standardize, center)
    ]
    assert all(abs(o - want) > 1e-3 * abs(want) for o in others)


# --------------------------------------------------------------------------- build_findings

B_SITES = ("embed", "L0", "L1", "L2")
B_METRICS = ("z", "p1_xy", "cka_unbiased")


def _interval64(rec):
    """A record's closed interval, a missing bound being the value (docs/report.md)."""
    if rec is None or rec.get("value") is None:
        return None
    v = rec["value"]
    return (v if rec.get("ci_low") is None else rec["ci_low"],
            v if rec.get("ci_high") is None else rec["ci_high"])  # fmt: skip


def _rule(model, control, control_best, lexical, below_all):
    """The verdict rule of docs/report.md, written out again."""
    m = _interval64(model)
    c, cb, lx = _interval64(control), _interval64(control_best), _interval64(lexical)
    below_here = c is not None and m[1] < c[0]
    if below_all is None:
        if below_here:
            return "below-control"
    elif below_all and (c is None or below_here):
        return "below-control"
    if model.get("p_best_site") is not None and model["p_best_site"] > 0.05:
        return "matched-by-null"
    if any(o is not None and not m[0] > o[1] for o in (c, cb)):
        return "matched-by-control"
    if lx is not None and not m[0] > lx[1]:
        return "matched-by-lexical"
    return "no-control" if c is None and cb is None else "beyond-control"


@st.composite
def _record(draw, x, y, pool, site, metric, best_p):
    kind = draw(st.sampled_from(["value", "value", "value", "none", "absent"]))
    if kind == "absent":
        return None
    rec = {"x": x, "y": y, "pool": pool, "site": site, "metric": metric, "n": 40}
    if kind == "none":
        return {**rec, "value": None, "undefined_reason": "test"}
    v = draw(st.integers(-6, 6)) / 2
    lo = None if draw(st.integers(0, 4)) == 0 else v - draw(st.integers(0, 3)) / 2
    hi = None if draw(st.integers(0, 4)) == 0 else v + draw(st.integers(0, 3)) / 2
    rec.update(value=v, ci_low=lo, ci_high=hi)
    if draw(st.booleans()):
        rec.update(p_value=draw(st.integers(1, 1001)) / 1001, null_q95=v / 3)
    if best_p and draw(st.booleans()):
        rec["p_best_site"] = draw(st.sampled_from([0.001, 0.05, 0.051, 0.4]))
    return rec


@st.composite
def _sweeps(draw):
    pairs, pools = [("zh", "en"), ("en", "zh")], ("mean", "last")

    def doc(lexical):
        recs = []
        for x, y in pairs:
            for pool in pools:
                for metric in B_METRICS:
                    sites = (*B_SITES, "lexical") if lexical else B_SITES
                    for s in sites:
                        r = draw(_record(x, y, pool, s, metric, s != "lexical"))
                        if r is not None:
                            recs.append(r)
        return {"sites": list(B_SITES), "pairs": [list(p) for p in pairs], "pools": list(pools),
                "records": recs, "n_boot": 200, "null_perms": 1000}  # fmt: skip

    model = doc(lexical=True)
    control = doc(lexical=False) if draw(st.booleans()) else None
    return model, control


def _find(recs, x, y, pool, site, metric):
    got = [r for r in recs if (r["x"], r["y"], r["pool"], r["site"], r["metric"]) == (x, y, pool, site, metric)]  # fmt: skip
    return got[0] if got else None


def _public(rec, best):
    if rec is None or rec.get("value") is None:
        return None
    keys = ["value", "ci_low", "ci_high", "p_value", "null_q95"] + (["p_best_site"] if best else [])
    return {k: rec[k] for k in keys if k in ("value", "ci_low", "ci_high") or rec.get(k) is not None}  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(_sweeps())
def test_build_findings_site_control_counts_and_verdict_by_definition(sweeps):
    """Every finding of random sweeps (ties, missing bounds, undefined and absent sites, with
    and without a control) recomputed from the rules of docs/report.md."""
    from xlalign.studies.findings import build_findings

    model, control = sweeps
    doc = build_findings(model, control)
    crecs = (control or {}).get("records") or []
    expected = []
    for x, y in (("zh", "en"), ("en", "zh")):
        for pool in ("mean", "last"):
            for metric in B_METRICS:
                recs = [_find(model["records"], x, y, pool, s, metric) for s in B_SITES]
                defined = [r for r in recs if r is not None and r["value"] is not None]
                if not defined:
                    continue
                best = defined[0]
                for r in defined[1:]:
                    best = r if r["value"] > best["value"] else best  # first wins ties
                site = best["site"]
                mod = _public(best, True)
                ctl = _public(_find(crecs, x, y, pool, site, metric), False)
                cdef = [r for s in B_SITES if (r := _find(crecs, x, y, pool, s, metric)) is not None and r["value"] is not None]  # fmt: skip
                cbest = None
                if cdef:
                    cb = cdef[0]
                    for r in cdef[1:]:
                        cb = r if r["value"] > cb["value"] else cb
                    cbest = {"site": cb["site"], **_public(cb, True)}
                above = below = compared = 0
                gain = None
                for s in B_SITES:
                    mi = _interval64(_find(model["records"], x, y, pool, s, metric))
                    ci = _interval64(_find(crecs, x, y, pool, s, metric))
                    if mi is None or ci is None:
                        continue
                    compared += 1
                    above += mi[0] > ci[1]
                    below += mi[1] < ci[0]
                    g = _find(model["records"], x, y, pool, s, metric)["value"] - _find(crecs, x, y, pool, s, metric)["value"]  # fmt: skip
                    if gain is None or g > gain[1]:
                        gain = (s, g)
                below_all = None if compared == 0 else below == compared
                lex = _public(_find(model["records"], x, y, pool, "lexical", metric), False)
                expected.append(
                    {
                        "pair": [x, y],
                        "pool": pool,
                        "metric": metric,
                        "site": site,
                        "model": mod,
                        "control": ctl,
                        "control_best": cbest,
                        "lexical": lex,
                        "verdict": _rule(mod, ctl, cbest, lex, below_all),
                        "counts": None if compared == 0 else (above, below, compared),
                        "gain": gain,
                        "n_sites": len(defined),
                        "p_best_site": best.get("p_best_site"),
                    }
                )
    assert len(doc["findings"]) == len(expected)
    for f, e in zip(doc["findings"], expected, strict=True):
        assert (f["pair"], f["pool"], f["metric"], f["site"]) == (e["pair"], e["pool"], e["metric"], e["site"])  # fmt: skip
        assert f["model"] == e["model"]
        assert f["control"] == e["control"]
        assert f["control_best"] == e["control_best"]
        assert f["lexical"] == e["lexical"]
        assert f["verdict"] == e["verdict"], (f, e)
        counts = f["sites_vs_control"]
        got = None if counts is None else (counts["above"], counts["below"], counts["compared"])
        assert got == e["counts"]
        lg = f["largest_gain"]
        assert (None if lg is None else (lg["site"], lg["gain"])) == e["gain"]
        assert f["n_sites"] == e["n_sites"] and f["n"] == 40
        assert f["p_best_site"] == e["p_best_site"]
        assert f["artifact"] is None and f["source"] == "alignment"
    assert doc["study"]["control"] == (None if control is None else "random-init")
    assert doc["study"]["n_pairs"] == 40
    no_control = "no random-weights control: no finding can be beyond-control"
    assert (no_control in doc["warnings"]) == (control is None)
    if control is None:
        assert all(f["verdict"] in ("no-control", "matched-by-lexical", "matched-by-null") for f in doc["findings"])  # fmt: skip


def _small_sweep(**settings):
    """One pair, one pool, two sites: z with its best-site correction, CKA without one, and a
    P@1 that is undefined at every site."""
    recs = []
    for site, v in (("L0", 1.0), ("L1", 2.0)):
        base = {"x": "zh", "y": "en", "pool": "mean", "site": site, "n": 40}
        recs.append({**base, "metric": "z", "value": v, "p_best_site": 0.001})
        recs.append({**base, "metric": "cka_unbiased", "value": v / 4})
        recs.append({**base, "metric": "p1_xy", "value": None, "undefined_reason": "test"})
    doc = {"sites": ["L0", "L1"], "pairs": [["zh", "en"]], "pools": ["mean"], "records": recs}
    return {**doc, "n_boot": 200, "null_perms": 1000, "null": "exact", **settings}


UNCORRECTED = "those best sites are not corrected for having been picked among all sites"


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, f"no permutation null for CKA (mean) (no null made): {UNCORRECTED}"),
        ({"null": "monte-carlo"}, f"no permutation null for CKA (mean) (--null monte-carlo): {UNCORRECTED}"),
        ({"compat": "platonic"}, f"no permutation null for CKA (mean) (--compat platonic): {UNCORRECTED}"),
        ({"null_perms": 0}, "no permutation null (--null-perms 0, or a sweep made before it): the best sites are not corrected for having been picked among all sites"),
        ({"null_skipped": "CKA: above 1,024 pairs"}, "CKA: above 1,024 pairs: a best site without p_best_site is not corrected for having been picked among all sites"),
    ],
)  # fmt: skip
def test_each_best_site_without_a_null_is_named_with_the_reason(settings, expected):
    from xlalign.studies.findings import build_findings

    doc = build_findings(_small_sweep(**settings), _small_sweep(**settings))
    null_lines = [w for w in doc["warnings"] if "not corrected for having been picked" in w]
    assert null_lines == [expected]
    assert "zh/en, mean pool: P@1 x->y is undefined at every site" in doc["warnings"]
    assert [f["metric"] for f in doc["findings"]] == ["z", "cka_unbiased"]
    assert all(f["n_sites"] == 2 and f["site"] == "L1" for f in doc["findings"])


def test_a_sweep_without_intervals_says_verdicts_compare_points():
    from xlalign.studies.findings import build_findings

    def lines(**settings):
        warnings = build_findings(_small_sweep(**settings), _small_sweep())["warnings"]
        return [w for w in warnings if "point values" in w]

    assert lines() == []
    assert lines(n_boot=0) == [
        "no confidence intervals (--n-boot 0): verdicts compare point values"
    ]
    assert lines(ci_skipped="intervals skipped above 4,096 pairs") == [
        "intervals skipped above 4,096 pairs; verdicts compare point values"
    ]
