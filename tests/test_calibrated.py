"""Calibrated inference (issue 22): permutation nulls, p_best_site, jackknife and Wilson intervals.

References are independent: every null value is recomputed by brute force on ``y[perm]`` (the
float64 definitions of ``test_layers_values.reference``), every leave-one-out value by deleting
the row and recomputing, Wilson's interval by scanning ``p`` on a grid, and the calibration of
``calibrated_similarity.calibrate`` (Gröger, Wen and Brbić) is run on the same inputs.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from test_layers_values import reference
from xlalign.metrics import linear_cka, matched_vs_scrambled_z
from xlalign.metrics.jackknife import (
    jackknife_ci,
    loo_cka,
    loo_cka_unbiased,
    loo_hub,
    loo_z,
    wilson_ci,
)
from xlalign.metrics.nulls import NULL_METRICS, calibrated, null_distributions
from xlalign.metrics.pairwise import Side
from xlalign.metrics.permutation import draw_permutations
from xlalign.store.files import array_path
from xlalign.store.run import load_run
from xlalign.store.synthetic import write_synthetic_run
from xlalign.studies.findings import build_findings, verdict
from xlalign.studies.layers import SweepConfig, layer_sweep


def _pair(x: np.ndarray, y: np.ndarray):  # type: ignore[no-untyped-def]
    return Side(x, "x").pair_with(Side(y, "y"))


def _data(n: int, d: int, signal: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) + 2.0  # an offset, as hidden states have
    y = signal * x + rng.standard_normal((n, d)) - 1.0
    return x, y


# --------------------------------------------------------------------------- the nulls


@pytest.mark.parametrize("seed", [0, 1])
def test_every_null_value_is_the_metric_on_permuted_pairs(seed: int) -> None:
    x, y = _data(24, 12, 0.6, seed)
    perms = draw_permutations(24, 7, seed)
    pair = _pair(x, y)
    nulls = null_distributions(pair, perms, set(NULL_METRICS), z=pair.z())
    assert set(nulls) == set(NULL_METRICS)
    for j, p in enumerate(perms):
        for metric, values in nulls.items():
            expected = reference(metric, x, y[p])
            assert values[j] == pytest.approx(expected, rel=1e-9, abs=1e-12), (metric, j)


def test_centred_and_stratified_z_nulls_use_the_sweeps_null() -> None:
    x, y = _data(30, 8, 0.4, 3)
    labels = np.arange(30) % 3
    perms = draw_permutations(30, 5, 9, labels)
    for p in perms:  # within strata
        assert (labels[p] == labels).all()
    pair = _pair(x, y)
    codes = labels.astype(np.int64)
    z = pair.z(codes, center=True)
    null = null_distributions(pair, perms, {"z"}, z=z, center=True)["z"]
    for j, p in enumerate(perms):
        expected = matched_vs_scrambled_z(x, y[p], strata=labels, center=True).z
        assert null[j] == pytest.approx(expected, rel=1e-9)


def test_ties_are_misses_in_the_retrieval_null() -> None:
    rng = np.random.default_rng(4)
    base = rng.standard_normal((10, 6))
    x = np.vstack([base, base[:2]])  # rows 10, 11 repeat rows 0, 1: tied candidates
    y = x + 0.01 * rng.standard_normal(x.shape)
    y[10], y[11] = y[0], y[1]
    perms = draw_permutations(12, 20, 0)
    nulls = null_distributions(_pair(x, y), perms, {"p1_xy", "p1_yx", "mexa"})
    for j, p in enumerate(perms):
        for metric in ("p1_xy", "p1_yx", "mexa"):
            assert nulls[metric][j] == reference(metric, x, y[p])


def test_calibrated_p_value_and_quantile_from_their_definition() -> None:
    x, y = _data(40, 10, 0.15, 5)
    res = calibrated(x, y, "cka_unbiased", n_perms=300, seed=2)
    perms = draw_permutations(40, 300, 2)
    null = np.array([reference("cka_unbiased", x, y[p]) for p in perms])
    observed = reference("cka_unbiased", x, y)
    assert res.value == pytest.approx(observed, rel=1e-9)
    assert res.p_value == pytest.approx((1 + np.sum(null >= observed)) / 301)
    assert res.null_q95 == pytest.approx(np.quantile(null, 0.95), rel=1e-9)
    combined = np.sort(np.append(null, observed))
    tau = combined[math.ceil(0.95 * 301) - 1]
    assert res.threshold == pytest.approx(tau, rel=1e-9)
    assert res.calibrated == pytest.approx(max(0.0, min(1.0, (observed - tau) / (1 - tau))))


@pytest.mark.parametrize(("metric", "signal"), [("cka", 0.12), ("mutual_knn", 0.25)])
def test_calibrated_agrees_with_calibrated_similarity(metric: str, signal: float) -> None:
    torch = pytest.importorskip("torch")
    cs = pytest.importorskip("calibrated_similarity")
    x, y = _data(60, 16, signal, 11)
    k = 2000

    def sim(a, b):  # type: ignore[no-untyped-def]
        return float(reference(metric, a.double().numpy(), b.double().numpy()))

    gen = torch.Generator().manual_seed(0)
    score, p, tau = cs.calibrate(
        torch.from_numpy(x), torch.from_numpy(y), sim, K=k, alpha=0.05, generator=gen
    )
    ours = calibrated(x, y, metric, n_perms=k, seed=1)
    p, tau = float(p), float(tau)
    assert 0.01 < p < 0.99  # a case where the p-value says something
    # two independent Monte Carlo estimates of one p-value: within 4 standard errors
    se = math.sqrt(p * (1 - p) / k)
    assert abs(ours.p_value - p) < 4 * math.sqrt(2) * se + 2 / k
    # the 95% thresholds: within the quantile's Monte Carlo spread (a share of 0.95 +- 0.015)
    null = np.array([reference(metric, x, y[q]) for q in draw_permutations(60, k, 7)])
    lo, hi = np.quantile(null, [0.935, 0.965])
    assert lo <= ours.threshold <= hi and lo <= tau <= hi
    assert ours.calibrated == pytest.approx(float(score), abs=0.05)


def test_calibrated_errors_name_the_argument() -> None:
    x, y = _data(10, 4, 0.5, 0)
    with pytest.raises(Exception, match="metric must be one of"):
        calibrated(x, y, "svcca")
    with pytest.raises(Exception, match="n_perms"):
        calibrated(x, y, "cka", n_perms=0)


# --------------------------------------------------------------------------- intervals


def _brute_loo(fn, x: np.ndarray, y: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    n = len(x)
    return np.array([fn(np.delete(x, i, 0), np.delete(y, i, 0)) for i in range(n)])


def test_leave_one_out_values_equal_deleting_the_row() -> None:
    x, y = _data(15, 7, 0.5, 6)
    xc, yc = x - x.mean(0), y - y.mean(0)
    k, ell = xc @ xc.T, yc @ yc.T
    np.testing.assert_allclose(
        loo_cka(k, ell), _brute_loo(lambda a, b: reference("cka", a, b), x, y), rtol=1e-9
    )
    np.testing.assert_allclose(
        loo_cka_unbiased(k, ell),
        _brute_loo(lambda a, b: reference("cka_unbiased", a, b), x, y),
        rtol=1e-9,
    )
    s = _pair(x, y).cosines()
    np.testing.assert_allclose(
        loo_hub(s), _brute_loo(lambda a, b: reference("semantic_hub", a, b), x, y), rtol=1e-9
    )
    c = s - s.mean(1, keepdims=True) - s.mean(0, keepdims=True) + s.mean()
    np.testing.assert_allclose(
        loo_z(c), _brute_loo(lambda a, b: reference("z", a, b), x, y), rtol=1e-9
    )


def test_jackknife_interval_from_its_definition() -> None:
    loo = np.array([0.31, 0.29, 0.35, 0.30, np.nan, 0.28])
    ci = jackknife_ci(loo, 0.3, level=0.9)
    kept = loo[~np.isnan(loo)]
    m = kept.size
    se = math.sqrt((m - 1) / m * np.sum((kept - kept.mean()) ** 2))
    q = NormalDist().inv_cdf(0.95)
    assert (ci.low, ci.high) == pytest.approx((0.3 - q * se, 0.3 + q * se))
    assert ci.n_skipped == 1 and ci.point == 0.3


@pytest.mark.parametrize(("k", "n"), [(0, 20), (20, 20), (7, 20), (1, 3), (150, 200)])
def test_wilson_interval_is_the_set_of_shares_the_score_test_keeps(k: int, n: int) -> None:
    hits = np.zeros(n, dtype=bool)
    hits[:k] = True
    ci = wilson_ci(hits, 0.95)
    q = NormalDist().inv_cdf(0.975)
    grid = np.linspace(0, 1, 200_001)
    phat = k / n
    kept = grid[np.abs(phat - grid) <= q * np.sqrt(grid * (1 - grid) / n)]
    assert ci.low == pytest.approx(kept.min(), abs=2e-5)
    assert ci.high == pytest.approx(kept.max(), abs=2e-5)
    assert ci.low <= phat <= ci.high


# --------------------------------------------------------------------------- the sweep


def _run_with(tmp_path, name: str, arrays: dict[str, list[np.ndarray]], pools=("last",)):  # type: ignore[no-untyped-def]
    n, d = arrays["zh"][0].shape
    path = write_synthetic_run(tmp_path / name, n, d, n_sites=len(arrays["zh"]), pools=pools)
    run = load_run(path)
    for lang, per_site in arrays.items():
        for site, a in zip(run.sites, per_site, strict=True):
            for pool in pools:
                np.save(array_path(path, lang, site, pool), a.astype(np.float32))
    return load_run(path)


def test_p_best_site_is_the_share_of_permutations_whose_best_site_reaches_it(tmp_path) -> None:
    rng = np.random.default_rng(8)
    n, d = 14, 6
    zh = [rng.standard_normal((n, d)) for _ in range(3)]
    en = [a * s + rng.standard_normal((n, d)) for a, s in zip(zh, (0.0, 0.3, 0.8), strict=True)]
    run = _run_with(tmp_path, "r", {"zh": zh, "en": en})
    k = 60
    metrics = ("z", "p1", "mexa", "cka", "cka_unbiased", "knn", "hub", "cknna")
    res = layer_sweep(
        run,
        SweepConfig(metrics=metrics, null_perms=k, seed=3, lexical=False, n_boot=0),
        progress=False,
    )
    perms = draw_permutations(n, k, 3)
    names = [m for m in NULL_METRICS if m != "z"] + ["z"]
    x = [np.asarray(run.array("zh", s, "last"), np.float64) for s in run.sites]
    y = [np.asarray(run.array("en", s, "last"), np.float64) for s in run.sites]
    for metric in names:
        recs = [r for r in res["records"] if r["metric"] == metric and r["site"] != "lexical"]
        assert len(recs) == 3
        null = np.array([[reference(metric, x[s], y[s][p]) for p in perms] for s in range(3)])
        top = null.max(axis=0)
        for s, rec in enumerate(recs):
            v = rec["value"]
            assert v == pytest.approx(reference(metric, x[s], y[s]), rel=1e-6, abs=1e-9)
            # float32 arrays: the sweep's values and the reference agree to 1e-6, so a null
            # value within that of v may count either way
            close = np.isclose(null[s], v, rtol=1e-6, atol=1e-9)
            lo_p = (1 + np.sum((null[s] >= v) & ~close)) / (k + 1)
            hi_p = (1 + np.sum((null[s] >= v) | close)) / (k + 1)
            assert lo_p <= rec["p_value"] <= hi_p, (metric, s)
            near = np.isclose(top, v, rtol=1e-6, atol=1e-9)
            lo_b = (1 + np.sum((top >= v) & ~near)) / (k + 1)
            hi_b = (1 + np.sum((top >= v) | near)) / (k + 1)
            assert lo_b <= rec["p_best_site"] <= hi_b, (metric, s)
            assert rec["p_best_site"] >= rec["p_value"]
            assert rec["null_q95"] == pytest.approx(np.quantile(null[s], 0.95), rel=1e-5, abs=1e-7)
    assert res["null_perms"] == k


def test_cka_records_give_n_and_d_and_the_default_cka_is_debiased(tmp_path) -> None:
    rng = np.random.default_rng(0)
    zh = [rng.standard_normal((30, 25))]
    en = [rng.standard_normal((30, 25))]
    run = _run_with(tmp_path, "r", {"zh": zh, "en": en})
    res = layer_sweep(
        run, SweepConfig(metrics=("cka", "cka_unbiased"), lexical=False), progress=False
    )
    assert "cka_unbiased" in SweepConfig().metrics and "cka" not in SweepConfig().metrics
    by = {r["metric"]: r for r in res["records"]}
    for metric in ("cka", "cka_unbiased"):
        assert by[metric]["detail"]["n"] == 30 and by[metric]["detail"]["d"] == 25
    # independent random data at n/d = 30/25: the biased CKA is far from 0, the debiased not
    assert by["cka"]["value"] > 0.3
    assert abs(by["cka_unbiased"]["value"]) < 0.1
    assert by["cka"]["value"] == pytest.approx(linear_cka(zh[0], en[0]).cka, rel=1e-5)


def _findings(tmp_path, model: dict, control: dict, metrics=None) -> dict:  # type: ignore[no-untyped-def]
    cfg = SweepConfig(null_perms=1000, lexical=False, **({"metrics": metrics} if metrics else {}))
    run, ctl = _run_with(tmp_path, "model", model), _run_with(tmp_path, "control", control)
    return build_findings(
        layer_sweep(run, cfg, progress=False), layer_sweep(ctl, cfg, progress=False)
    )


def test_unrelated_vectors_give_no_beyond_control_and_calibrated_p_values(tmp_path) -> None:
    rng = np.random.default_rng(21)

    def draw() -> dict[str, list[np.ndarray]]:
        return {lang: [rng.standard_normal((200, 896)) for _ in range(3)] for lang in ("zh", "en")}

    doc = _findings(tmp_path, draw(), draw())
    verdicts = [f["verdict"] for f in doc["findings"]]
    assert verdicts and "beyond-control" not in verdicts
    (cka,) = [f for f in doc["findings"] if f["metric"] == "cka_unbiased"]
    m = cka["model"]
    # the biased CKA of the same vectors at n/d = 200/896 is far from 0; the debiased is near 0
    biased = [r for r in doc["findings"] if r["metric"] == "cka"]
    assert not biased  # not a default metric
    assert abs(m["value"]) < 0.05
    assert m["p_best_site"] > 0.05  # the best of the sites, corrected for picking it


def test_a_noisy_rotation_is_beyond_control_for_cka_with_p_best_site_at_most_001(tmp_path) -> None:
    rng = np.random.default_rng(22)
    q = np.linalg.qr(rng.standard_normal((896, 896)))[0]
    zh = [rng.standard_normal((200, 896)) for _ in range(3)]
    en = [a @ q + 1.0 * rng.standard_normal((200, 896)) for a in zh]
    random = {lang: [rng.standard_normal((200, 896)) for _ in range(3)] for lang in ("zh", "en")}
    doc = _findings(tmp_path, {"zh": zh, "en": en}, random)
    by = {f["metric"]: f for f in doc["findings"]}
    cka = by["cka_unbiased"]
    assert cka["verdict"] == "beyond-control"
    assert cka["p_best_site"] <= 0.01
    # a rotation hides the pairs from cosines: z and P@1 see nothing, and say so
    for metric in ("z", "p1_xy", "p1_yx"):
        assert by[metric]["verdict"] != "beyond-control"


def test_a_best_site_within_the_null_cannot_be_beyond_control() -> None:
    high = {"value": 0.9, "ci_low": 0.85, "ci_high": 0.95}
    low = {"value": 0.1, "ci_low": 0.05, "ci_high": 0.15}
    assert verdict({**high, "p_best_site": 0.001}, low, low) == "beyond-control"
    assert verdict({**high, "p_best_site": 0.2}, low, low) == "matched-by-null"
    assert verdict({**high, "p_best_site": 0.05}, low, low) == "beyond-control"


def test_gram_nulls_are_skipped_and_said_above_their_size_limit(tmp_path) -> None:
    from xlalign.studies.layers import GRAM_NULL_MAX_N

    n = GRAM_NULL_MAX_N + 20
    rng = np.random.default_rng(3)
    zh = [rng.standard_normal((n, 8))]
    en = [zh[0] + rng.standard_normal((n, 8))]
    run = _run_with(tmp_path, "big", {"zh": zh, "en": en})
    cfg = SweepConfig(metrics=("p1", "cka_unbiased", "knn"), null_perms=20, lexical=False, n_boot=0)
    res = layer_sweep(run, cfg, progress=False)
    by = {r["metric"]: r for r in res["records"]}
    assert by["cka_unbiased"]["p_value"] is None and by["cka_unbiased"]["p_best_site"] is None
    assert by["p1_xy"]["p_value"] is not None and by["mutual_knn"]["p_value"] is not None
    assert "CKA and CKNNA permutation nulls skipped" in res["null_skipped"]
    doc = build_findings(res)
    assert any("not corrected for having been picked" in w for w in doc["warnings"])


def test_null_perms_flag_reaches_the_sweep_and_a_bad_value_is_one_line(tmp_path, capsys) -> None:
    import json

    from xlalign.cli import main

    rng = np.random.default_rng(5)
    zh = [rng.standard_normal((20, 6)) for _ in range(2)]
    en = [a + rng.standard_normal((20, 6)) for a in zh]
    run = _run_with(tmp_path, "r", {"zh": zh, "en": en})
    assert main(["align", str(run.path), "--null-perms", "-1", "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "--null-perms must be 0 (none) or more, got -1" in err and "Traceback" not in err
    args = ["align", str(run.path), "--null-perms", "30", "--no-progress", "--metrics", "z,cka"]
    assert main(args) == 0
    doc = json.loads((run.path / "alignment.json").read_text())
    assert doc["null_perms"] == 30
    rec = next(r for r in doc["records"] if r["metric"] == "cka" and r["site"] != "lexical")
    assert rec["p_value"] >= 1 / 31 and rec["p_best_site"] >= rec["p_value"]
