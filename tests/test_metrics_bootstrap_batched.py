"""The batched bootstrap equals resample-then-recompute, written here from the definition."""

from __future__ import annotations

import numpy as np
import pytest

from xlalign.metrics import cka_ci, p1_ci, retrieval_hits, z_ci
from xlalign.metrics.bootstrap import (
    bootstrap_counts,
    cka_ci_grams,
    mean_ci,
    z_ci_cosines,
)


def paired(n: int, d: int, signal: float, seed: int, offset: float = 0.0):
    rs = np.random.RandomState(seed)
    shared = rs.randn(n, d)
    mu = offset * rs.randn(d)
    return signal * shared + rs.randn(n, d) + mu, signal * shared + rs.randn(n, d) + mu


def unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def ref_interval(values: list[float | None], level: float) -> tuple[float, float, int]:
    kept = [v for v in values if v is not None and np.isfinite(v)]
    low, high = np.quantile(np.asarray(kept), [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high), len(values) - len(kept)


def ref_z(s: np.ndarray, codes: np.ndarray | None) -> float | None:
    """z of a square cosine block from the definition: per stratum, mean and variance of
    T over within-stratum permutations (REFERENCE.md's moment formulas), no shortcuts."""
    n = s.shape[0]
    labels = np.zeros(n, dtype=int) if codes is None else codes
    mean = var = 0.0
    for lab in np.unique(labels):
        g = np.flatnonzero(labels == lab)
        b = s[np.ix_(g, g)]
        ns = g.size
        mean += ns / n * b.mean()
        if ns > 1:
            r = b.mean(axis=1, keepdims=True)
            c = b.mean(axis=0, keepdims=True)
            var += (ns / n) ** 2 * ((b - r - c + b.mean()) ** 2).sum() / (ns * ns * (ns - 1))
    if np.sqrt(max(var, 0.0)) <= 1e-9:
        return None
    return (np.trace(s) / n - mean) / np.sqrt(var)


def ref_z_ci(x, y, n_boot, seed, level, codes=None):
    s = unit(x) @ unit(y).T
    n = s.shape[0]
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    vals = [ref_z(s[np.ix_(i, i)], None if codes is None else codes[i]) for i in draws]
    return ref_interval(vals, level)


def ref_cka_ci(x, y, n_boot, seed, level):
    fx, fy = np.asarray(x, float), np.asarray(y, float)
    kx, ky = fx @ fx.T, fy @ fy.T  # uncentred: the reference centres each resample itself
    n = kx.shape[0]
    h = np.eye(n) - 1.0 / n
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    vals = []
    for i in draws:
        a, b = h @ kx[np.ix_(i, i)] @ h, h @ ky[np.ix_(i, i)] @ h
        vals.append((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
    return ref_interval(vals, level)


def close(ci, ref) -> None:
    low, high, skipped = ref
    assert ci.low == pytest.approx(low, rel=1e-9, abs=1e-12)
    assert ci.high == pytest.approx(high, rel=1e-9, abs=1e-12)
    assert ci.n_skipped == skipped


def test_counts_are_the_draws_of_one_big_draw_chunked_any_way() -> None:
    draws = np.random.default_rng(5).integers(0, 37, size=(23, 37))
    want = np.stack([np.bincount(r, minlength=37) for r in draws])
    for chunk in (1, 4, 7, 23, 100):
        got = np.concatenate(list(bootstrap_counts(37, 23, 5, chunk=chunk)))
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("offset", [0.0, 30.0])
@pytest.mark.parametrize("seed", [0, 7])
def test_z_ci_equals_resample_then_recompute(offset: float, seed: int) -> None:
    x, y = paired(40, 16, 0.7, seed, offset)  # offset: a large shared mean, as hidden states
    ci = z_ci(x, y, n_boot=150, seed=seed, level=0.9)
    close(ci, ref_z_ci(x, y, 150, seed, 0.9))
    assert ci.point == pytest.approx(ref_z(unit(x) @ unit(y).T, None), rel=1e-12)


def test_stratified_z_ci_equals_resample_then_recompute() -> None:
    x, y = paired(45, 12, 0.5, 3)
    strata = np.repeat(["a", "b", "c", "d", "e"], 9)
    codes = np.repeat(np.arange(5), 9)
    ci = z_ci(x, y, n_boot=120, seed=11, strata=strata)
    close(ci, ref_z_ci(x, y, 120, 11, 0.95, codes))


def test_z_ci_skips_degenerate_resamples_like_the_reference() -> None:
    # Small strata: many resamples draw each stratum once, so their null is a point.
    x, y = paired(12, 6, 0.5, 4)
    codes = np.repeat(np.arange(6), 2)
    ci = z_ci(x, y, n_boot=200, seed=2, strata=codes)
    ref = ref_z_ci(x, y, 200, 2, 0.95, codes)
    assert ref[2] > 0  # the case under test happens
    close(ci, ref)


def test_z_ci_cosines_chunking_does_not_change_the_interval(monkeypatch) -> None:
    x, y = paired(30, 10, 0.6, 1)
    s = unit(x) @ unit(y).T
    whole = z_ci_cosines(s, n_boot=64, seed=3)
    monkeypatch.setattr("xlalign.metrics.bootstrap.BOOT_CHUNK_ENTRIES", 30 * 5)
    chunked = z_ci_cosines(s, n_boot=64, seed=3)
    assert chunked.low == pytest.approx(whole.low, rel=1e-12)
    assert chunked.high == pytest.approx(whole.high, rel=1e-12)


@pytest.mark.parametrize("offset", [0.0, 30.0])
def test_cka_ci_equals_resample_then_recompute(offset: float) -> None:
    x, y = paired(35, 20, 0.6, 9, offset)
    y = y[:, :13]  # widths may differ
    ci = cka_ci(x, y, n_boot=120, seed=4, level=0.8)
    close(ci, ref_cka_ci(x, y, 120, 4, 0.8))


def test_cka_ci_grams_skips_resamples_without_variance() -> None:
    # Two distinct rows in x: resamples that draw only one of them have no x variance.
    x = np.repeat(np.array([[1.0, 0.0], [0.0, 1.0]]), [1, 3], axis=0)
    y = np.random.RandomState(0).randn(4, 3)
    xc, yc = x - x.mean(0), y - y.mean(0)
    ci = cka_ci_grams(xc @ xc.T, yc @ yc.T, n_boot=200, seed=1)
    draws = np.random.default_rng(1).integers(0, 4, size=(200, 4))
    # rows 1..3 are identical: x is flat when only they, or only row 0, are drawn
    n_flat = sum(1 for i in draws if np.all(i > 0) or np.all(i == 0))
    assert ci.n_skipped == n_flat > 0


def test_p1_and_mean_ci_equal_resampled_means() -> None:
    x, y = paired(60, 8, 0.4, 2)
    hit_xy, hit_yx, rank = retrieval_hits(x, y)
    draws = np.random.default_rng(6).integers(0, 60, size=(100, 60))
    for direction, h in (("xy", hit_xy), ("yx", hit_yx), ("mexa", hit_xy & hit_yx)):
        ci = p1_ci(x, y, n_boot=100, seed=6, direction=direction)
        close(ci, ref_interval([float(h[i].mean()) for i in draws], 0.95))
    mrr = mean_ci(1.0 / rank, n_boot=100, seed=6)
    close(mrr, ref_interval([float((1.0 / rank)[i].mean()) for i in draws], 0.95))
