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
