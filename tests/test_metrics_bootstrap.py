"""Bootstrap intervals: resampling, skipped resamples and the point values of the helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xlalign.errors import XlalignError
from xlalign.metrics import (
    bootstrap_ci,
    cka_ci,
    linear_cka,
    matched_vs_scrambled_z,
    p1_ci,
    retrieval_scores,
    z_ci,
)


def paired(n: int, d: int, signal: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rs = np.random.RandomState(seed)
    shared = rs.randn(n, d)
    return signal * shared + rs.randn(n, d), signal * shared + rs.randn(n, d)


def test_bootstrap_ci_is_the_percentile_interval_of_resampled_statistics() -> None:
    v = np.random.RandomState(0).randn(50)
    ci = bootstrap_ci(lambda idx: float(v[idx].mean()), 50, n_boot=400, seed=3, level=0.9)
    draws = np.random.default_rng(3).integers(0, 50, size=(400, 50))
    means = v[draws].mean(axis=1)
    assert ci.low == pytest.approx(np.quantile(means, 0.05))
    assert ci.high == pytest.approx(np.quantile(means, 0.95))
    assert ci.point == pytest.approx(v.mean())
    assert (ci.level, ci.n_boot, ci.n_skipped) == (0.9, 400, 0)
    json.dumps(ci.to_dict())


def test_bootstrap_ci_interval_shrinks_with_n_and_covers_the_mean() -> None:
    rs = np.random.RandomState(1)
    small, big = rs.randn(30) + 2.0, rs.randn(3000) + 2.0
    ci_s = bootstrap_ci(lambda i: float(small[i].mean()), 30, n_boot=300)
    ci_b = bootstrap_ci(lambda i: float(big[i].mean()), 3000, n_boot=300)
    assert ci_b.high - ci_b.low < (ci_s.high - ci_s.low) / 4  # type: ignore[operator]
    assert ci_b.low < 2.0 < ci_b.high  # type: ignore[operator]


def test_undefined_resamples_are_skipped_and_counted() -> None:
    # The statistic is undefined when a resample holds a single distinct pair.
    ci = bootstrap_ci(
        lambda idx: None if np.unique(idx).size == 1 else float(idx.mean()), 3, n_boot=500, seed=4
    )
    draws = np.random.default_rng(4).integers(0, 3, size=(500, 3))
    expected = int(np.sum([np.unique(r).size == 1 for r in draws]))
    assert expected > 0
    assert ci.n_skipped == expected
    none = bootstrap_ci(lambda idx: float("nan"), 5, n_boot=10)
    assert none.low is None and none.high is None and none.n_skipped == 10


def test_z_ci_point_is_the_exact_z_and_degenerate_resamples_are_skipped() -> None:
    x, y = paired(40, 8, 0.5, 0)
    strata = np.arange(40) % 4
    for kwargs in ({}, {"strata": strata}, {"center": True}):
        ci = z_ci(x, y, n_boot=100, **kwargs)
        ref = matched_vs_scrambled_z(x, y, **kwargs)
        assert ci.point == pytest.approx(ref.z, rel=1e-9)
        assert ci.low < ci.point < ci.high  # type: ignore[operator]
    # Three pairs: any resample drawing one pair three times has a one-point null.
    x3, y3 = paired(3, 4, 0.5, 1)
    ci3 = z_ci(x3, y3, n_boot=300, seed=2)
    draws = np.random.default_rng(2).integers(0, 3, size=(300, 3))
    assert ci3.n_skipped >= int(np.sum([np.unique(r).size == 1 for r in draws])) > 0


def test_p1_ci_resamples_queries_against_the_full_pool() -> None:
    x, y = paired(60, 8, 0.6, 2)
    res = retrieval_scores(x, y)
    ci = p1_ci(x, y, n_boot=300)
    assert ci.point == pytest.approx(res.p1_xy)
    assert 0.0 <= ci.low <= res.p1_xy <= ci.high <= 1.0  # type: ignore[operator]
    assert p1_ci(x, y, direction="yx", n_boot=50).point == pytest.approx(res.p1_yx)
    assert p1_ci(x, y, direction="mexa", n_boot=50).point == pytest.approx(res.mexa)
    perfect = p1_ci(x, x, n_boot=50)
    assert (perfect.low, perfect.high) == (1.0, 1.0)  # duplicates in a resample are no misses
    with pytest.raises(XlalignError, match="direction"):
        p1_ci(x, y, direction="both")


def test_cka_ci_point_is_linear_cka() -> None:
    x, y = paired(50, 6, 1.0, 3)
    ci = cka_ci(x, y, n_boot=200)
    assert ci.point == pytest.approx(linear_cka(x, y).cka, rel=1e-10)
    assert ci.low < ci.point < ci.high  # type: ignore[operator]
    prepared = cka_ci(x, y, n_boot=20, prepare=True)
    assert prepared.point == pytest.approx(linear_cka(x, y, prepare=True).cka, rel=1e-10)


def test_bootstrap_bad_arguments() -> None:
    with pytest.raises(XlalignError, match="level"):
        bootstrap_ci(lambda i: 0.0, 5, level=1.5)
    with pytest.raises(XlalignError, match="n_boot"):
        bootstrap_ci(lambda i: 0.0, 5, n_boot=0)
