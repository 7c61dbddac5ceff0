"""Matched-vs-scrambled z: exact moments vs enumeration, Monte Carlo vs the study's formula."""

from __future__ import annotations

import itertools
import json
import tracemalloc

import numpy as np
import pytest

from xlalign.errors import XlalignError
from xlalign.metrics import (
    ZResult,
    _checks,
    draw_permutations,
    matched_vs_scrambled_z,
    matched_vs_scrambled_z_sweep,
    null_samples,
    permutation,
)
from xlalign.metrics._checks import UnitRows


def unit64(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a / np.sqrt((a * a).sum(axis=1, keepdims=True))


def cosines(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Brute-force float64 cosine matrix, elementwise (no BLAS)."""
    return (unit64(x)[:, None, :] * unit64(y)[None, :, :]).sum(axis=-1)


def enumerate_null(s: np.ndarray, strata: list[int] | None = None) -> np.ndarray:
    """T(pi) for every permutation pi of range(N) (within strata if given)."""
    n = s.shape[0]
    perms = np.array(list(itertools.permutations(range(n))))
    if strata is not None:
        lab = np.asarray(strata)
        perms = perms[(lab[perms] == lab[None, :]).all(axis=1)]
    return s[np.arange(n)[None, :], perms].mean(axis=1)


def seed_formula(zh: np.ndarray, en: np.ndarray, n_perms: int = 1000):
    """The study's matched_vs_scrambled_z, re-typed from its published source."""
    zh_u = zh / np.linalg.norm(zh, axis=1, keepdims=True)
    en_u = en / np.linalg.norm(en, axis=1, keepdims=True)
    matched = np.mean(np.sum(zh_u * en_u, axis=1))
    rng = np.random.RandomState(42)
    scrambled = np.array(
        [np.mean(np.sum(zh_u * en_u[rng.permutation(len(en_u))], axis=1)) for _ in range(n_perms)]
    )
    z = (matched - scrambled.mean()) / scrambled.std()
    return float(z), float(matched), float(scrambled.mean()), float(scrambled.std())


def aligned(n: int, d: int, signal: float, seed: int, offset: float = 0.0, dtype=np.float32):
    rs = np.random.RandomState(seed)
    shared = rs.randn(n, d)
    common = offset * rs.randn(d)
    x = signal * shared + rs.randn(n, d) + common
    y = signal * shared + rs.randn(n, d) + common
    return x.astype(dtype), y.astype(dtype)


# --------------------------------------------------------------------------- exact moments


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_moments_equal_full_enumeration(n: int, seed: int) -> None:
    x, y = aligned(n, 4, 0.7, seed, offset=0.5, dtype=np.float64)
    null = enumerate_null(cosines(x, y))
    res = matched_vs_scrambled_z(x, y)
    assert res.null_mean == pytest.approx(null.mean(), rel=1e-12, abs=1e-14)
    assert res.null_std == pytest.approx(null.std(), rel=1e-10)
    assert res.matched == pytest.approx(np.trace(cosines(x, y)) / n, rel=1e-12)
    assert res.z == pytest.approx((res.matched - null.mean()) / null.std(), rel=1e-9)
    assert res.method == "exact" and res.p_value is None and res.n_perms is None


@pytest.mark.parametrize(
    "strata",
    [
        [0, 0, 1, 1, 1, 2, 2],
        ["a", "b", "a", "b", "a", "b", "c"],  # "c" is a single-member stratum
        [5, 5, 5, 5, 9, 9, 9],
        [0, 0, 0, 1, 1, 1],
    ],
)
@pytest.mark.parametrize("seed", [3, 4])
def test_stratified_exact_moments_equal_enumeration(strata: list, seed: int) -> None:
    n = len(strata)
    x, y = aligned(n, 5, 0.5, seed, dtype=np.float64)
    null = enumerate_null(cosines(x, y), strata)
    res = matched_vs_scrambled_z(x, y, strata=strata)
    assert res.stratified
    assert res.null_mean == pytest.approx(null.mean(), rel=1e-12, abs=1e-14)
    assert res.null_std == pytest.approx(null.std(), rel=1e-10)


def test_direct_gram_and_feature_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    # Small chunks and no dense cache force the streaming, multi-chunk loops of every path.
    monkeypatch.setattr(permutation, "CHUNK_ROWS", 7)
    monkeypatch.setattr(_checks, "CHUNK_ROWS", 7)
    monkeypatch.setattr(_checks, "DENSE_MAX_ENTRIES", 0)
    for n, d in [(30, 50), (60, 8)]:
        x, y = aligned(n, d, 0.3, n, offset=2.0)
        xu, yu = UnitRows(x, "x"), UnitRows(y, "y")
        s = cosines(x, y)
        c = s - s.mean(1, keepdims=True) - s.mean(0, keepdims=True) + s.mean()
        for codes in (None, np.arange(n) % 4, np.r_[np.zeros(n - 1), 1]):
            ref = permutation._exact_moments(xu, yu, codes, path="direct")
            for path in ("gram", "feature", "auto"):
                m = permutation._exact_moments(xu, yu, codes, path=path)
                assert m.var == pytest.approx(ref.var, rel=1e-11)
                assert m.mean == pytest.approx(ref.mean, rel=1e-12)
                assert m.matched == pytest.approx(ref.matched, rel=1e-12)
            if codes is None:  # and the unstratified result is the brute-force one
                assert ref.var == pytest.approx((c**2).sum() / (n * n * (n - 1)), rel=1e-10)
                assert ref.mean == pytest.approx(s.mean(), rel=1e-12)


def test_exact_z_matches_100k_draw_monte_carlo() -> None:
    n, k = 12, 100_000
    x, y = aligned(n, 6, 0.4, 11, dtype=np.float64)
    s = cosines(x, y)
    rng = np.random.default_rng(0)
    perms = rng.permuted(np.tile(np.arange(n), (k, 1)), axis=1)
    t = s[np.arange(n)[None, :], perms].mean(axis=1)
    res = matched_vs_scrambled_z(x, y)
    se_mean = t.std() / np.sqrt(k)
    kurt = ((t - t.mean()) ** 4).mean() / t.var() ** 2
    se_std = t.std() * np.sqrt((kurt - 1) / (4 * k))
    assert abs(res.null_mean - t.mean()) < 5 * se_mean
    assert abs(res.null_std - t.std()) < 5 * se_std
    z_mc = (np.trace(s) / n - t.mean()) / t.std()
    assert res.z is not None
    assert abs(res.z - z_mc) < 5 * (abs(z_mc) * se_std / t.std() + se_mean / t.std())


# --------------------------------------------------------------------------- Monte Carlo


@pytest.mark.parametrize(
    ("signal", "offset", "seed"),
    [(0.5, 0.0, 0), (0.05, 0.0, 1), (0.0, 0.0, 2), (1.0, 3.0, 3), (0.2, 10.0, 4)],
)
def test_monte_carlo_reproduces_seed_formula_float32(signal, offset, seed) -> None:
    x, y = aligned(200, 96, signal, seed, offset=offset)
    z, matched, mean, std = seed_formula(x, y)
    res = matched_vs_scrambled_z(x, y, method="monte-carlo")
    assert res.z == pytest.approx(z, rel=1e-6)
    assert res.matched == pytest.approx(matched, rel=1e-6)
    assert res.null_mean == pytest.approx(mean, rel=1e-6, abs=1e-12)
    assert res.null_std == pytest.approx(std, rel=1e-6)
    assert res.method == "monte-carlo" and res.n_perms == 1000


def test_monte_carlo_reproduces_seed_formula_at_the_study_shape() -> None:
    x, y = aligned(200, 2048, 0.1, 8, offset=3.0)
    res = matched_vs_scrambled_z(x, y, method="monte-carlo")
    assert res.z == pytest.approx(seed_formula(x, y)[0], rel=1e-6)


def test_exact_memory_is_linear_in_n() -> None:
    """N = 20,000: the cosine matrix would take 3.2 GB; the exact z must not form it."""
    x, y = aligned(20_000, 8, 0.3, 0)
    tracemalloc.start()
    try:
        res = matched_vs_scrambled_z(x, y, strata=np.arange(20_000) % 3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.z is not None and res.z > 10
    assert peak < 40 * 2**20


def test_float64_arithmetic_would_miss_the_seed_by_more_than_1e6() -> None:
    """Why the Monte Carlo path emulates float32: float64 differs from the study beyond 1e-6."""
    x, y = aligned(200, 96, 0.2, 4, offset=10.0)  # a large shared mean, as hidden states have
    z32 = seed_formula(x, y)[0]
    z64 = seed_formula(x.astype(np.float64), y.astype(np.float64))[0]
    res = matched_vs_scrambled_z(x, y, method="monte-carlo")
    assert abs(z64 - z32) > 1e-6 * abs(z32)
    assert res.z == pytest.approx(z32, rel=1e-6)


def test_monte_carlo_p_value_and_null_samples() -> None:
    x, y = aligned(40, 16, 0.2, 5)
    res = matched_vs_scrambled_z(x, y, method="monte-carlo", n_perms=300, seed=7)
    t = null_samples(x, y, draw_permutations(40, 300, 7))
    matched = np.mean(np.sum(unit32(x) * unit32(y), axis=1))
    assert res.p_value == pytest.approx((1 + np.count_nonzero(t >= matched)) / 301)
    assert res.null_std == pytest.approx(float(t.std()))
    strong = matched_vs_scrambled_z(*aligned(40, 16, 3.0, 5), method="monte-carlo", n_perms=300)
    assert strong.p_value == pytest.approx(1 / 301)


def unit32(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_large_n_monte_carlo_block_path_matches_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = aligned(50, 8, 0.3, 9, dtype=np.float64)
    dense = matched_vs_scrambled_z(x, y, method="monte-carlo", n_perms=200)
    monkeypatch.setattr(permutation, "MC_DENSE_MAX_N", 10)
    blocked = matched_vs_scrambled_z(x, y, method="monte-carlo", n_perms=200)
    assert blocked.z == pytest.approx(dense.z, rel=1e-9)
    assert blocked.null_mean == pytest.approx(dense.null_mean, rel=1e-9)
    assert blocked.p_value == dense.p_value


def test_monte_carlo_strata_permute_within_strata() -> None:
    strata = [0] * 10 + [1] * 10 + [2] * 10
    perms = draw_permutations(30, 500, 3, strata)
    lab = np.asarray(strata)
    assert (lab[perms] == lab[None, :]).all()
    assert (np.sort(perms, axis=1) == np.arange(30)).all()
    # Each member of a stratum lands on each of its positions about equally often.
    counts = np.array([[np.count_nonzero(perms[:, i] == j) for j in range(10)] for i in range(10)])
    assert counts.min() > 20 and counts.max() < 85
    x, y = aligned(30, 8, 0.5, 1, dtype=np.float64)
    mc = matched_vs_scrambled_z(x, y, method="monte-carlo", n_perms=4000, strata=strata)
    ex = matched_vs_scrambled_z(x, y, strata=strata)
    assert mc.null_mean == pytest.approx(ex.null_mean, abs=4 * ex.null_std / np.sqrt(4000))
    assert mc.null_std == pytest.approx(ex.null_std, rel=0.08)


def test_unstratified_permutations_are_the_randomstate_sequence() -> None:
    perms = draw_permutations(17, 5, 42)
    rng = np.random.RandomState(42)
    for k in range(5):
        np.testing.assert_array_equal(perms[k], rng.permutation(17))


# --------------------------------------------------------------------------- degenerate nulls


def test_identical_x_rows_give_undefined_z_both_methods() -> None:
    """The study's embedding-level last token: every zh prompt ends in the same token."""
    _, y = aligned(200, 64, 0.0, 0)
    x = np.tile(np.random.RandomState(1).randn(1, 64).astype(np.float32), (200, 1))
    seed_z = seed_formula(x, y)[0]
    assert np.isfinite(seed_z)  # the study's formula prints a number made of rounding noise
    for method in ("exact", "monte-carlo"):
        res = matched_vs_scrambled_z(x, y, method=method)
        assert res.z is None and res.p_value is None
        assert res.undefined_reason is not None and "zero spread" in res.undefined_reason
        assert res.null_std < 1e-6
        json.dumps(res.to_dict())


def test_identical_y_rows_give_undefined_z() -> None:
    x, _ = aligned(20, 8, 0.0, 0, dtype=np.float64)
    y = np.ones((20, 8)) * 3.0
    assert matched_vs_scrambled_z(x, y).z is None


def test_identical_within_strata_is_degenerate_only_when_stratified() -> None:
    rs = np.random.RandomState(0)
    x = np.repeat(rs.randn(3, 5), 4, axis=0)  # 3 strata of 4 identical x rows
    y = rs.randn(12, 5)
    strata = np.repeat([0, 1, 2], 4)
    assert matched_vs_scrambled_z(x, y).z is not None
    res = matched_vs_scrambled_z(x, y, strata=strata)
    assert res.z is None and "zero spread" in (res.undefined_reason or "")


def test_all_singleton_strata_are_allowed_and_degenerate() -> None:
    x, y = aligned(6, 4, 0.5, 0, dtype=np.float64)
    for method in ("exact", "monte-carlo"):
        res = matched_vs_scrambled_z(x, y, method=method, strata=list("abcdef"))
        assert res.z is None
        assert "single member" in (res.undefined_reason or "")
        assert res.null_mean == pytest.approx(res.matched, rel=1e-6)
        assert res.null_std < 1e-9


def test_singleton_stratum_adds_its_value_and_no_variance() -> None:
    x, y = aligned(7, 4, 0.5, 2, dtype=np.float64)
    s = cosines(x, y)
    res = matched_vs_scrambled_z(x, y, strata=[0, 0, 0, 1, 1, 1, 2])
    rest = matched_vs_scrambled_z(x[:6], y[:6], strata=[0, 0, 0, 1, 1, 1])
    assert res.null_mean == pytest.approx(6 / 7 * rest.null_mean + s[6, 6] / 7, rel=1e-12)
    assert res.null_std == pytest.approx(6 / 7 * rest.null_std, rel=1e-10)


# --------------------------------------------------------------------------- centring


def test_center_removes_a_shared_offset() -> None:
    x, y = aligned(50, 16, 0.3, 4, dtype=np.float64)
    shift = 50.0 * np.random.RandomState(9).randn(16)
    plain, shifted = matched_vs_scrambled_z(x, y), matched_vs_scrambled_z(x, y + shift)
    assert plain.z is not None and shifted.z is not None
    assert abs(plain.z - shifted.z) > 0.1
    c_plain = matched_vs_scrambled_z(x, y, center=True)
    c_shift = matched_vs_scrambled_z(x, y + shift, center=True)
    assert c_plain.centered and c_plain.z == pytest.approx(c_shift.z, rel=1e-9)
    # Centring means subtracting the column means before normalising (brute force).
    xc, yc = x - x.mean(0), y - y.mean(0)
    null = cosines(xc, yc)
    assert c_plain.matched == pytest.approx(np.trace(null) / 50, rel=1e-12)
    assert c_plain.null_mean == pytest.approx(null.mean(), abs=1e-14)


def test_center_monte_carlo_matches_exact_roughly() -> None:
    x, y = aligned(60, 16, 0.3, 4, offset=5.0)
    ex = matched_vs_scrambled_z(x, y, center=True)
    mc = matched_vs_scrambled_z(x, y, center=True, method="monte-carlo", n_perms=3000)
    assert mc.null_std == pytest.approx(ex.null_std, rel=0.08)
    assert mc.matched == pytest.approx(ex.matched, rel=1e-5)


def test_center_with_identical_rows_is_an_error() -> None:
    x = np.ones((5, 3))
    y = np.random.RandomState(0).randn(5, 3)
    with pytest.raises(XlalignError, match=r"rows equal to the mean of x.*\[0, 1, 2, 3, 4\]"):
        matched_vs_scrambled_z(x, y, center=True)


# --------------------------------------------------------------------------- sweep


def test_sweep_shares_one_null_across_sites() -> None:
    x, y = aligned(30, 8, 0.4, 0)
    x2, y2 = aligned(30, 8, 0.1, 1)
    sites = {"L0": (x, y), "L1": (x.copy(), y.copy()), "L2": (x2, y2)}
    out = matched_vs_scrambled_z_sweep(sites, method="monte-carlo", n_perms=200, seed=5)
    assert list(out) == ["L0", "L1", "L2"]
    assert out["L0"] == out["L1"]
    for name, (a, b) in sites.items():
        assert out[name] == matched_vs_scrambled_z(a, b, method="monte-carlo", n_perms=200, seed=5)
    perms = draw_permutations(30, 200, 5)
    np.testing.assert_array_equal(null_samples(x, y, perms), null_samples(x.copy(), y, perms))
    exact = matched_vs_scrambled_z_sweep(sites)
    assert exact["L2"] == matched_vs_scrambled_z(x2, y2)


def test_sweep_errors_name_the_site() -> None:
    x, y = aligned(30, 8, 0.4, 0)
    with pytest.raises(XlalignError, match=r"site 'L1' has 20 pairs but site 'L0' has 30"):
        matched_vs_scrambled_z_sweep({"L0": (x, y), "L1": (x[:20], y[:20])})
    bad = x.copy()
    bad[4, 2] = np.nan
    with pytest.raises(XlalignError, match=r"site 'L1': x has non-finite .* row 4"):
        matched_vs_scrambled_z_sweep({"L0": (x, y), "L1": (bad, y)})
    with pytest.raises(XlalignError, match="empty"):
        matched_vs_scrambled_z_sweep({})


def _reference_z(x: np.ndarray, y: np.ndarray, strata: list[int] | None = None) -> float:
    """The exact z from full enumeration (float64, brute-force cosines)."""
    s = cosines(x, y)
    null = enumerate_null(s, strata)
    return float((np.trace(s) / s.shape[0] - null.mean()) / null.std())


def test_sweep_defaults_are_the_seed_formula() -> None:
    """Monte Carlo with the defaults: 1000 draws of RandomState(42), the study's formula."""
    x, y = aligned(12, 16, 0.5, 6, dtype=np.float64)
    z, matched, mean, std = seed_formula(x, y)
    got = matched_vs_scrambled_z_sweep({"L0": (x, y)}, method="monte-carlo")["L0"]
    assert got.n_perms == 1000
    assert got.matched == pytest.approx(matched, rel=1e-12)
    assert got.z == pytest.approx(z, rel=1e-9)
    assert got.null_mean == pytest.approx(mean, rel=1e-9)
    assert got.null_std == pytest.approx(std, rel=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sweep_with_strata_equals_enumeration(dtype: type) -> None:
    """Stratified exact z in a sweep (float32 inputs with n <= d, where the unstratified z
    would take the float32 path) against full enumeration within strata."""
    strata = [0, 0, 0, 1, 1, 1, 1]
    sites = {f"L{k}": aligned(7, 9, 0.6, 10 + k, dtype=dtype) for k in range(2)}
    out = matched_vs_scrambled_z_sweep(sites, strata=strata)
    for name, (x, y) in sites.items():
        assert out[name].stratified
        assert out[name].z == pytest.approx(_reference_z(x, y, strata), rel=1e-9), name
    mc = matched_vs_scrambled_z_sweep(sites, method="monte-carlo", n_perms=300, strata=strata)
    for name, (x, y) in sites.items():
        perms = draw_permutations(7, 300, 42, strata)
        lab = np.asarray(strata)
        assert (lab[perms] == lab[None, :]).all()  # the draws keep the strata
        s = cosines(x, y)
        t = s[np.arange(7)[None, :], perms].mean(axis=1)
        assert mc[name].null_mean == pytest.approx(t.mean(), rel=1e-5), name
        assert mc[name].null_std == pytest.approx(t.std(), rel=1e-4), name


def test_sweep_at_extreme_scales_equals_enumeration() -> None:
    """Inputs whose squares under- or overflow their own dtype: the sweep rescales them on
    every path (exact float64, exact with strata, Monte Carlo). Scaling by a constant does not
    change z, so the reference is the unscaled data's enumeration."""
    strata = [0, 0, 0, 1, 1, 1, 1]
    x, y = aligned(7, 9, 0.6, 21, dtype=np.float64)
    cases = [(np.float64, 1e-200), (np.float64, 1e200), (np.float32, 1e-30), (np.float32, 1e30)]
    for dtype, scale in cases:
        xs, ys = (x * scale).astype(dtype), (y * scale).astype(dtype)
        x0, y0 = xs.astype(np.float64) / scale, ys.astype(np.float64) / scale
        for st in (None, strata):
            out = matched_vs_scrambled_z_sweep({"s": (xs, ys)}, strata=st)["s"]
            assert out.z == pytest.approx(_reference_z(x0, y0, st), rel=1e-6), (dtype, scale, st)
            for products in ("auto", "float64"):
                got = matched_vs_scrambled_z_sweep({"s": (xs, ys)}, strata=st, products=products)
                assert got["s"] == matched_vs_scrambled_z(xs, ys, strata=st, products=products)
        mc = matched_vs_scrambled_z_sweep({"s": (xs, ys)}, method="monte-carlo", n_perms=200)
        assert mc["s"].z is not None and np.isfinite(mc["s"].z), (dtype, scale)
        assert mc["s"] == matched_vs_scrambled_z(xs, ys, method="monte-carlo", n_perms=200)
        s = cosines(x0, y0)
        t = s[np.arange(7)[None, :], draw_permutations(7, 200, 42)].mean(axis=1)
        assert mc["s"].null_mean == pytest.approx(t.mean(), rel=1e-4), (dtype, scale)


def test_sweep_equals_single_calls_on_every_products_path() -> None:
    """Float32 rows of very different sizes (1e13 and 1e-35: rescaling them in float32 would
    flush the small row, so a rescaled copy is float64): each site's result is bit for bit the
    single call's, with the float32 path or without it."""
    x, y = aligned(6, 8, 0.5, 30, dtype=np.float64)
    x[2] *= 1e13
    x[4] *= 1e-35
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    for products in ("auto", "float64"):
        got = matched_vs_scrambled_z_sweep({"a": (x32, y32), "b": (y32, x32)}, products=products)
        assert got["a"] == matched_vs_scrambled_z(x32, y32, products=products), products
        assert got["b"] == matched_vs_scrambled_z(y32, x32, products=products), products
        assert got["a"].z == pytest.approx(_reference_z(x32, y32), rel=1e-5)
    # the float64 products differ from the float32 ones in the last digits: the choice is kept
    x, y = aligned(20, 24, 0.5, 31)
    auto = matched_vs_scrambled_z_sweep({"s": (x, y)})["s"]
    f64 = matched_vs_scrambled_z_sweep({"s": (x, y)}, products="float64")["s"]
    assert auto == matched_vs_scrambled_z(x, y)
    assert f64 == matched_vs_scrambled_z(x, y, products="float64")
    assert auto.null_std != f64.null_std


def test_sweep_takes_three_pairs_and_ignores_n_perms_for_exact() -> None:
    x, y = aligned(3, 4, 0.5, 32, dtype=np.float64)
    out = matched_vs_scrambled_z_sweep({"s": (x, y)}, n_perms=0)["s"]
    assert out.z == pytest.approx(_reference_z(x, y), rel=1e-9)
    with pytest.raises(XlalignError, match=r"site 's': need at least 3 pairs \(rows\), got 2"):
        matched_vs_scrambled_z_sweep({"s": (x[:2], y[:2])})


def test_sweep_names_the_site_of_a_zero_row() -> None:
    x, y = aligned(30, 8, 0.4, 0)
    bad = y.copy()
    bad[5] = 0.0
    for products in ("auto", "float64"):
        with pytest.raises(XlalignError, match=r"^site 'L1': y has zero-norm rows at indices"):
            matched_vs_scrambled_z_sweep({"L0": (x, y), "L1": (x, bad)}, products=products)
    wide = aligned(8, 30, 0.4, 0)  # n <= d: the float32 path
    zero = wide[0].copy()
    zero[2] = 0.0
    with pytest.raises(XlalignError, match=r"^site 'L1': x has zero-norm rows at indices \[2\]"):
        matched_vs_scrambled_z_sweep({"L0": wide, "L1": (zero, wide[1])})
    with pytest.raises(XlalignError, match=r"^no sites given: pairs is empty$"):
        matched_vs_scrambled_z_sweep({})


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors() -> None:
    x, y = aligned(10, 4, 0.4, 0, dtype=np.float64)
    with pytest.raises(XlalignError, match=r"x.shape=\(10, 4\), y.shape=\(9, 4\)"):
        matched_vs_scrambled_z(x, y[:9])
    with pytest.raises(XlalignError, match=r"x.shape=\(10, 4\), y.shape=\(10, 3\)"):
        matched_vs_scrambled_z(x, y[:, :3])
    with pytest.raises(XlalignError, match=r"at least 3 pairs \(rows\), got 2"):
        matched_vs_scrambled_z(x[:2], y[:2])
    bad = y.copy()
    bad[6, 1] = np.inf
    bad[8, 0] = np.nan
    with pytest.raises(XlalignError, match=r"y has non-finite values .*first in row 6"):
        matched_vs_scrambled_z(x, bad)
    zero = x.copy()
    zero[[2, 7]] = 0.0
    with pytest.raises(XlalignError, match=r"x has zero-norm rows at indices \[2, 7\]"):
        matched_vs_scrambled_z(zero, y)
    with pytest.raises(XlalignError, match="strata has 9 labels but there are 10 pairs"):
        matched_vs_scrambled_z(x, y, strata=[0] * 9)
    with pytest.raises(XlalignError, match="method must be one of"):
        matched_vs_scrambled_z(x, y, method="mc")
    with pytest.raises(XlalignError, match="2-D"):
        matched_vs_scrambled_z(x[0], y[0])
    with pytest.raises(XlalignError, match="n_perms"):
        matched_vs_scrambled_z(x, y, method="monte-carlo", n_perms=1)


def test_to_dict_is_json_safe() -> None:
    x, y = aligned(10, 4, 0.4, 0)
    d = matched_vs_scrambled_z(x, y, method="monte-carlo", n_perms=50).to_dict()
    assert set(d) == {f for f in ZResult.__dataclass_fields__}
    assert d["undefined_reason"] is None
    assert json.loads(json.dumps(d)) == d
    assert all(type(v) in (float, int, str, bool, type(None)) for v in d.values())
