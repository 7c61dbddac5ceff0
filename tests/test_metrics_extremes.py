"""Every metric at extreme magnitudes: 1e-30 and 1e30 in float32, 1e200 and 1e-200 in float64.

Every metric is invariant to scaling x (or y) by a constant, so the value at an extreme scale
must equal the value on the same data near 1. Before the fix, Monte Carlo z gave NaN at 1e-30
(float32 squares underflow), None with a wrong reason at 1e30, and float64 data at 1e200 gave
P@1 = 0 and "rows identical" (squares overflow).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from xlalign import metrics as M

N, D = 24, 12
METRICS = {
    "z exact": lambda x, y: M.matched_vs_scrambled_z(x, y),
    "z monte-carlo": lambda x, y: M.matched_vs_scrambled_z(x, y, method="monte-carlo", n_perms=200),
    "z centred": lambda x, y: M.matched_vs_scrambled_z(x, y, center=True),
    "z strata": lambda x, y: M.matched_vs_scrambled_z(x, y, strata=np.arange(N) % 3),
    "retrieval": M.retrieval_scores,
    "xsim": M.xsim_error,
    "cka": M.linear_cka,
    "cka unbiased": lambda x, y: M.linear_cka(x, y, unbiased=True),
    "knn": lambda x, y: M.mutual_knn(x, y, k=4),
    "cknna": lambda x, y: M.cknna(x, y, k=4),
    "svcca": lambda x, y: M.svcca(x, y, dims=4),
    "hub": M.semantic_hub_score,
    "cohen": M.cohen_d_pc1,
    "pca z": lambda x, y: M.pca_subspace_z(x, y, k=3),
    "z ci": lambda x, y: M.z_ci(x, y, n_boot=20),
    "p1 ci": lambda x, y: M.p1_ci(x, y, n_boot=20),
    "cka ci": lambda x, y: M.cka_ci(x, y, n_boot=20),
}
SCALES = [(1e-30, np.float32), (1e30, np.float32), (1e200, np.float64), (1e-200, np.float64)]


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(N, D))
    y = x + 0.7 * rng.normal(size=(N, D)) + 0.5
    return x, y


def _floats(result: object) -> dict[str, float | None]:
    d = result.to_dict()  # type: ignore[attr-defined]
    return {k: v for k, v in d.items() if isinstance(v, float) or v is None}


@pytest.mark.parametrize("scale,dtype", SCALES, ids=[f"{s:g}-{d.__name__}" for s, d in SCALES])
@pytest.mark.parametrize("name", list(METRICS))
def test_metric_is_scale_free_at_extremes(name, scale, dtype):
    x0, y0 = _data()
    # the extreme inputs, and the very values they hold brought back near 1 in float64
    x, y = (x0 * scale).astype(dtype), (y0 * scale).astype(dtype)
    xr, yr = x.astype(np.float64) / scale, y.astype(np.float64) / scale
    if dtype is np.float32:  # keep the study's float32 arithmetic in the reference too
        xr, yr = xr.astype(np.float32), yr.astype(np.float32)
    got, want = _floats(METRICS[name](x, y)), _floats(METRICS[name](xr, yr))
    assert got.keys() == want.keys()
    for key, w in want.items():
        g = got[key]
        if w is None:
            assert g is None, (key, g)
            continue
        assert g is not None and math.isfinite(g), (key, g)
        assert g == pytest.approx(w, rel=1e-4, abs=1e-6), key


def _study_z(x: np.ndarray, y: np.ndarray, n_perms: int, seed: int) -> float:
    """The study's matched_vs_scrambled_z, brute force in float64."""
    xu = x / np.linalg.norm(x, axis=1, keepdims=True)
    yu = y / np.linalg.norm(y, axis=1, keepdims=True)
    matched = np.mean(np.sum(xu * yu, axis=1))
    rng = np.random.RandomState(seed)
    null = [np.mean(np.sum(xu * yu[rng.permutation(len(y))], axis=1)) for _ in range(n_perms)]
    return float((matched - np.mean(null)) / np.std(null))


@pytest.mark.parametrize("scale,dtype", SCALES, ids=[f"{s:g}-{d.__name__}" for s, d in SCALES])
def test_monte_carlo_z_matches_float64_brute_force(scale, dtype):
    x0, y0 = _data()
    x, y = (x0 * scale).astype(dtype), (y0 * scale).astype(dtype)
    r = M.matched_vs_scrambled_z(x, y, method="monte-carlo", n_perms=300, seed=42)
    assert r.undefined_reason is None and r.z is not None
    want = _study_z(x.astype(np.float64) / scale, y.astype(np.float64) / scale, 300, 42)
    assert r.z == pytest.approx(want, rel=1e-4)
    assert 0 < r.matched <= 1


def test_float32_study_arithmetic_is_kept_bit_for_bit():
    """In the representable range the rescaling changes no bit of the float32 statistic."""
    x0, y0 = _data()
    x, y = x0.astype(np.float32), y0.astype(np.float32)
    a = M.matched_vs_scrambled_z(x, y, method="monte-carlo", n_perms=100)
    b = M.matched_vs_scrambled_z(x * np.float32(2.0**-100), y * np.float32(2.0**-100),
                                 method="monte-carlo", n_perms=100)  # fmt: skip
    assert a.z == b.z and a.matched == b.matched and a.null_std == b.null_std


def test_rows_of_very_different_sizes_are_not_flushed_to_zero():
    """A float32 array holding 1e13 and 1e-35 rows needs rescaling (squares of 1e13 x 2**k
    approach float32's range); in float32 the tiny row would underflow to zero, so the scaled
    copy is float64 and every metric sees the same directions as in float64."""
    x0, y0 = _data()
    x0[3] *= 1e13
    x0[7] *= 1e-35
    x32, y32 = x0.astype(np.float32), y0.astype(np.float32)
    assert np.abs(x32[7]).max() > 0  # representable in float32 (subnormal-free: ~1e-35)
    x64, y64 = x32.astype(np.float64), y32.astype(np.float64)
    for method in ("exact", "monte-carlo"):
        got = M.matched_vs_scrambled_z(x32, y32, method=method, n_perms=200)
        want = M.matched_vs_scrambled_z(x64, y64, method=method, n_perms=200)
        assert got.z == pytest.approx(want.z, rel=1e-5), method
    assert M.linear_cka(x32, y32).cka == pytest.approx(M.linear_cka(x64, y64).cka, rel=1e-5)
    assert M.retrieval_scores(x32, y32) == M.retrieval_scores(x64, y64)


# ---------------------------------------------------------------------------------------------
# safe_scale's float64 fallback, row by row (mutation testing: docs/testing.md)


def _scaled_rows_lose_normal_values(a: np.ndarray, e: int) -> bool:
    """From the definition: some nonzero row of ``a * 2**-e`` (exact in float64) has no value
    of at least float32's smallest normal number."""
    s = np.abs(a.astype(np.float64) * 2.0**-e)
    nonzero = np.abs(a.astype(np.float64)).max(axis=1) > 0
    return bool(np.any(nonzero & (s.max(axis=1) < np.finfo(np.float32).tiny)))


@pytest.mark.parametrize("row", [0, 4, 8])
def test_a_row_scaled_to_subnormal_values_sends_the_copy_to_float64(monkeypatch, row):
    """Row ``row`` holds ~1e-30 beside a 2**50 row: scaled by 2**-51 in float32 it would keep
    only subnormal values (a few digits, not zero). Row blocks of 2 make every block count."""
    from xlalign.metrics import _checks

    monkeypatch.setattr(_checks, "CHUNK_ROWS", 2)
    rng = np.random.default_rng(8)
    a = rng.uniform(0.5, 1.0, size=(9, 3)).astype(np.float32)
    a[(row + 3) % 9] = 2.0**50
    a[row] = np.float32(1e-30) * a[row]
    assert _scaled_rows_lose_normal_values(a, 51)
    got = _checks.safe_scale(a)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, a.astype(np.float64) * 2.0**-51)


def test_zero_rows_and_rows_landing_on_the_smallest_normal_stay_float32():
    from xlalign.metrics._checks import safe_scale

    a = np.ones((4, 3), dtype=np.float32)
    a[0] = 2.0**50  # scaled by 2**-51
    a[1] = 0.0  # a zero row has nothing to lose
    a[2, 0] = 2.0 ** (-126 + 51)  # lands exactly on float32's smallest normal number
    a[2, 1:] = 0.0
    assert not _scaled_rows_lose_normal_values(a, 51)
    got = safe_scale(a)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, (a.astype(np.float64) * 2.0**-51).astype(np.float32))
    a[2, 0] = 2.0 ** (-127 + 51)  # one binade lower: subnormal once scaled
    assert _scaled_rows_lose_normal_values(a, 51)
    assert safe_scale(a).dtype == np.float64


def test_arrays_in_range_come_back_as_the_same_object():
    """No copy (a memory-mapped site stays mapped) unless the largest magnitude lies outside
    2**-40 .. 2**40; all-zero arrays too."""
    from xlalign.metrics._checks import safe_scale

    for a in (
        np.ones((3, 2), dtype=np.float32),
        np.full((3, 2), 2.0**39),
        np.full((3, 2), 2.0**-41, dtype=np.float32),
        np.zeros((3, 2)),
    ):
        assert safe_scale(a) is a
    big = np.full((3, 2), 2.0**40)
    assert safe_scale(big) is not big
    np.testing.assert_array_equal(safe_scale(big), big * 2.0**-41)
