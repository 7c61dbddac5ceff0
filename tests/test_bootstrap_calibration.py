"""Bootstrap intervals tested for what they claim: coverage, width, strata, reproducibility.

Calibration: on synthetic data whose population value is known, the 95% percentile interval
must cover it in about 95% of independent repetitions. With R repetitions the observed coverage
has standard error sqrt(0.95 * 0.05 / R) (R = 400: 0.011); the accepted band [0.91, 0.98] is
about 3.5 standard errors below and 3 above (the percentile bootstrap of a mean under-covers
slightly at small n, by about 1 point at n = 80), so a correct interval fails it with
probability well under 1e-3, while an interval that does not resample (width 0), that
resamples the wrong thing or uses the wrong quantiles falls far outside.
"""

from __future__ import annotations

import numpy as np
import pytest

from references import z_from_cosines
from xlalign.metrics import bootstrap_ci, cka_ci, p1_ci, z_ci

REPS = 400
N_BOOT = 400
BAND = (0.91, 0.98)


def hit_pairs(hits: np.ndarray, d: int, rs: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """x, y whose P@1 (x -> y) outcome is ``hits`` exactly: y_i ~ x_i on a hit, -x_i on a miss."""
    n = hits.size
    x = rs.randn(n, d)
    y = np.where(hits[:, None], x + 0.01 * rs.randn(n, d), -x)
    return x, y


def test_mean_interval_covers_the_population_mean_95_percent_of_the_time() -> None:
    rs = np.random.RandomState(0)
    n, mu = 80, 1.5
    covered = 0
    for r in range(REPS):
        v = mu + rs.standard_exponential(n) - 1.0  # skewed, population mean mu
        ci = bootstrap_ci(lambda idx, v=v: float(v[idx].mean()), n, n_boot=N_BOOT, seed=r)
        covered += ci.low <= mu <= ci.high  # type: ignore[operator]
    assert BAND[0] <= covered / REPS <= BAND[1], covered / REPS


def test_p1_interval_covers_the_population_p1_95_percent_of_the_time() -> None:
    rs = np.random.RandomState(1)
    n, p = 100, 0.6
    covered = 0
    for r in range(REPS):
        hits = rs.rand(n) < p
        x, y = hit_pairs(hits, 24, rs)
        ci = p1_ci(x, y, n_boot=N_BOOT, seed=r)
        assert ci.point == pytest.approx(hits.mean())  # the construction is what it claims
        covered += ci.low <= p <= ci.high  # type: ignore[operator]
    assert BAND[0] <= covered / REPS <= BAND[1], covered / REPS


def test_width_shrinks_as_one_over_sqrt_n() -> None:
    rs = np.random.RandomState(2)
    widths, p1_widths = [], []
    for n in (100, 400, 1600):
        v = rs.randn(n)
        ci = bootstrap_ci(lambda idx, v=v: float(v[idx].mean()), n, n_boot=1000, seed=1)
        widths.append(ci.high - ci.low)  # type: ignore[operator]
        x, y = hit_pairs(rs.rand(n) < 0.5, 16, rs)
        c = p1_ci(x, y, n_boot=1000, seed=1)
        p1_widths.append(c.high - c.low)  # type: ignore[operator]
    for w in (widths, p1_widths):
        # quadrupling n halves the width (sqrt(4) = 2), up to Monte Carlo noise
        assert 1.6 < w[0] / w[1] < 2.5 and 1.6 < w[1] / w[2] < 2.5, w
    # and the width is the normal theory one: 2 * 1.96 * sd / sqrt(n), sd = 1 here
    assert widths[1] == pytest.approx(2 * 1.96 / np.sqrt(400), rel=0.15)


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_resampled_pairs_keep_their_strata() -> None:
    # a strong category structure: the stratified z differs a lot from the pooled one, so an
    # interval whose resamples lose the labels (or keep them in the old order) is far off
    rs = np.random.RandomState(3)
    n, d = 45, 10
    labels = np.arange(n) % 3
    centers = 3 * rs.randn(3, d)
    shared = 0.5 * rs.randn(n, d)
    x = centers[labels] + shared + rs.randn(n, d)
    y = centers[labels] + shared + rs.randn(n, d)
    s = _unit(x) @ _unit(y).T
    ci = z_ci(x, y, n_boot=200, seed=5, strata=labels)
    draws = np.random.default_rng(5).integers(0, n, size=(200, n))
    vals = [v for v in (z_from_cosines(s[np.ix_(i, i)], labels[i]) for i in draws) if v is not None]
    low, high = np.quantile(vals, [0.025, 0.975])
    assert ci.low == pytest.approx(low, rel=1e-9) and ci.high == pytest.approx(high, rel=1e-9)
    assert ci.n_skipped == 200 - len(vals)
    # the labels matter: without them (or unpermuted with the pairs) the interval moves
    pooled = z_ci(x, y, n_boot=200, seed=5)
    assert ci.high < pooled.low  # type: ignore[operator]
    wrong = [z_from_cosines(s[np.ix_(i, i)], labels) for i in draws]
    w_low, w_high = np.quantile([v for v in wrong if v is not None], [0.025, 0.975])
    assert abs(w_low - low) + abs(w_high - high) > 0.05 * (high - low)


def test_cka_interval_is_cka_of_resampled_rows() -> None:
    rs = np.random.RandomState(4)
    n = 40
    x = rs.randn(n, 6)
    y = x @ rs.randn(6, 5) + 2 * rs.randn(n, 5)

    def cka(a: np.ndarray, b: np.ndarray) -> float:
        h = np.eye(len(a)) - 1.0 / len(a)
        k, l_ = h @ a @ a.T @ h, h @ b @ b.T @ h
        return float((k * l_).sum() / np.sqrt((k * k).sum() * (l_ * l_).sum()))

    ci = cka_ci(x, y, n_boot=150, seed=9, level=0.9)
    draws = np.random.default_rng(9).integers(0, n, size=(150, n))
    low, high = np.quantile([cka(x[i], y[i]) for i in draws], [0.05, 0.95])
    assert ci.low == pytest.approx(low, rel=1e-9) and ci.high == pytest.approx(high, rel=1e-9)
    assert ci.point == pytest.approx(cka(x, y), rel=1e-9)


def test_a_fixed_seed_gives_the_same_interval_and_another_seed_another() -> None:
    rs = np.random.RandomState(5)
    hits = rs.rand(60) < 0.5
    x, y = hit_pairs(hits, 12, rs)
    for fn in (z_ci, p1_ci, cka_ci):
        a, b = fn(x, y, n_boot=100, seed=11), fn(x, y, n_boot=100, seed=11)
        assert a == b, fn.__name__
        c = fn(x, y, n_boot=100, seed=12)
        assert (c.low, c.high) != (a.low, a.high), fn.__name__


def _cka64(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    h = np.eye(len(a)) - 1.0 / len(a)
    k, l_ = h @ a @ a.T @ h, h @ b @ b.T @ h
    return float((k * l_).sum() / np.sqrt((k * k).sum() * (l_ * l_).sum()))


def test_defaults_are_1000_resamples_seed_0_and_95_percent() -> None:
    rs = np.random.RandomState(6)
    x, y = hit_pairs(rs.rand(60) < 0.5, 6, rs)
    v = rs.randn(20)
    for fn, args in ((z_ci, (x, y)), (p1_ci, (x, y)), (cka_ci, (x, y))):
        default = fn(*args)
        assert (default.n_boot, default.level) == (1000, 0.95), fn.__name__
        assert default == fn(*args, n_boot=1000, seed=0, level=0.95), fn.__name__
        assert default != fn(*args, seed=1), fn.__name__  # the seed shows in the interval
    default = bootstrap_ci(lambda idx: float(v[idx].mean()), 20)
    draws = np.random.default_rng(0).integers(0, 20, size=(1000, 20))
    low, high = np.quantile(v[draws].mean(axis=1), [0.025, 0.975])
    assert (default.low, default.high) == (pytest.approx(low), pytest.approx(high))


def test_cka_interval_in_float64_whatever_the_input_and_its_smallest_sample() -> None:
    from xlalign.errors import XlalignError

    rs = np.random.RandomState(7)
    # float32 input with a large shared offset: float32 arithmetic would lose digits
    x = (rs.randn(30, 5) + 300).astype(np.float32)
    y = (x[:, :4] + rs.randn(30, 4) + 500).astype(np.float32)
    ci = cka_ci(x, y, n_boot=30, seed=1)
    assert ci.point == pytest.approx(_cka64(x, y), rel=1e-10)
    draws = np.random.default_rng(1).integers(0, 30, size=(30, 30))
    low, high = np.quantile([_cka64(x[i], y[i]) for i in draws], [0.025, 0.975])
    assert (ci.low, ci.high) == (pytest.approx(low, rel=1e-10), pytest.approx(high, rel=1e-10))
    assert cka_ci(x[:3], y[:3], n_boot=5).point == pytest.approx(_cka64(x[:3], y[:3]), rel=1e-9)
    with pytest.raises(XlalignError, match="3"):
        cka_ci(x[:2], y[:2], n_boot=5)
    zero = np.array(x, dtype=np.float64)
    zero[2] = 0.0
    with pytest.raises(XlalignError, match=r"\bx\b"):
        cka_ci(zero, y, n_boot=5, prepare=True)
    with pytest.raises(XlalignError, match=r"\by\b"):
        cka_ci(y, zero[:, :4], n_boot=5, prepare=True)


def test_small_strata_in_a_resample_contribute_their_mean_and_their_variance() -> None:
    # strata of 3: resamples often hold a stratum once (a fixed point: mean only) or twice
    rs = np.random.RandomState(8)
    n, d = 30, 6
    labels = np.arange(n) // 3
    shared = rs.randn(n, d)
    x, y = shared + 0.7 * rs.randn(n, d), shared + 0.7 * rs.randn(n, d)
    s = _unit(x) @ _unit(y).T
    ci = z_ci(x, y, n_boot=150, seed=4, strata=labels)
    draws = np.random.default_rng(4).integers(0, n, size=(150, n))
    sizes = [np.bincount(labels[i]) for i in draws]
    # the cases are exercised: most resamples hold some stratum once, and some twice
    assert sum((c == 1).any() for c in sizes) > 100 and sum((c == 2).any() for c in sizes) > 100
    vals = [v for v in (z_from_cosines(s[np.ix_(i, i)], labels[i]) for i in draws) if v is not None]
    assert ci.n_skipped == 150 - len(vals) == 0
    low, high = np.quantile(vals, [0.025, 0.975])
    assert ci.low == pytest.approx(low, rel=1e-9) and ci.high == pytest.approx(high, rel=1e-9)


def test_levels_smallest_inputs_and_error_names() -> None:
    from xlalign.errors import XlalignError

    rs = np.random.RandomState(9)
    hits = rs.rand(25) < 0.5
    x, y = hit_pairs(hits, 8, rs)
    draws = np.random.default_rng(2).integers(0, 25, size=(60, 25))
    # the level reaches the quantiles
    p1 = p1_ci(x, y, n_boot=60, seed=2, level=0.8)
    low, high = np.quantile(hits[draws].mean(axis=1), [0.1, 0.9])
    assert (p1.low, p1.high, p1.level) == (pytest.approx(low), pytest.approx(high), 0.8)
    s = _unit(x) @ _unit(y).T
    zero = np.zeros(25, dtype=int)
    z = z_ci(x, y, n_boot=60, seed=2, level=0.8)
    vals = [z_from_cosines(s[np.ix_(i, i)], zero[i]) for i in draws]
    low, high = np.quantile([v for v in vals if v is not None], [0.1, 0.9])
    assert (z.low, z.high, z.level) == (pytest.approx(low), pytest.approx(high), 0.8)
    # the smallest inputs
    one = bootstrap_ci(lambda idx: float(idx.sum()), 1, n_boot=1)
    assert (one.low, one.high, one.point, one.n_boot) == (0.0, 0.0, 0.0, 1)
    for level in (0.0, 1.0):
        with pytest.raises(XlalignError, match="level"):
            bootstrap_ci(lambda idx: 0.0, 5, level=level)
    with pytest.raises(XlalignError, match="n=0"):
        bootstrap_ci(lambda idx: 0.0, 0)
    with pytest.raises(XlalignError, match="3"):
        z_ci(x[:2], y[:2], n_boot=5)
    # every resample undefined: no interval, but the level and the full-sample value stay
    only_full = bootstrap_ci(
        lambda idx: 1.5 if np.array_equal(idx, np.arange(6)) else None, 6, n_boot=20, level=0.9
    )
    assert (only_full.low, only_full.high) == (None, None)
    assert (only_full.level, only_full.point, only_full.n_skipped) == (0.9, 1.5, 20)
    assert only_full.n_boot == 20
    # a zero vector has no direction: the error names its side
    bad = x.copy()
    bad[3] = 0.0
    with pytest.raises(XlalignError, match=r"^x\b|\bx\b.*\[3\]"):
        z_ci(bad, y, n_boot=5)
    with pytest.raises(XlalignError, match=r"^y\b|\by\b.*\[3\]"):
        z_ci(y, bad, n_boot=5)


def test_cka_interval_is_scale_invariant_down_to_tiny_variances() -> None:
    # CKA does not change when one side is scaled; a side with a tiny (but real) variance must
    # not be mistaken for a constant one
    rs = np.random.RandomState(10)
    x = rs.randn(25, 4)
    y = x @ rs.randn(4, 3) + rs.randn(25, 3)
    ref = cka_ci(x, y, n_boot=40, seed=3)
    for scale in (1e-4, 1e3):
        got = cka_ci(x, scale * y, n_boot=40, seed=3)
        assert got.n_skipped == 0
        assert (got.low, got.high) == (
            pytest.approx(ref.low, rel=1e-8),
            pytest.approx(ref.high, rel=1e-8),
        )
