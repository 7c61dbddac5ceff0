"""The exact z's float32-product path (``products="auto"`` on float32 inputs) against float64.

The reference is a plain float64 computation of the closed form written here from its
definition (cosine matrix of the float64 unit rows, its trace, mean and double-centred squared
sum); the float64 path itself is checked against full enumeration in
``test_metrics_permutation.py``. The promise under test: z within ``1e-6 * max(|z|, 1)``,
matched value and null mean as float64 computes them, and the same errors and degenerate
cases as the float64 path.
"""

from __future__ import annotations

import numpy as np
import pytest

from xlalign.errors import XlalignError
from xlalign.metrics import matched_vs_scrambled_z, matched_vs_scrambled_z_sweep, permutation


def reference(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """``(matched, null mean, null std)`` in float64 from the definition."""
    xu = x.astype(np.float64)
    xu /= np.linalg.norm(xu, axis=1, keepdims=True)
    yu = y.astype(np.float64)
    yu /= np.linalg.norm(yu, axis=1, keepdims=True)
    s = xu @ yu.T
    n = s.shape[0]
    c = s - s.mean(axis=1, keepdims=True) - s.mean(axis=0, keepdims=True) + s.mean()
    return (
        float(np.trace(s)) / n,
        float(s.mean()),
        float(np.sqrt((c * c).sum() / (n * n * (n - 1)))),
    )


def hidden_like(
    n: int, d: int, signal: float, mean_scale: float, dominant: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Float32 pairs with a shared latent, a large mean per side and one dominant dimension
    (as real hidden states have: on Qwen2.5-0.5B one dimension holds 90% of the norm)."""
    rs = np.random.default_rng(seed)
    latent = rs.standard_normal((n, d))
    mu = mean_scale * rs.standard_normal(d)
    x = mu + signal * latent + rs.standard_normal((n, d))
    y = 0.7 * mu + signal * latent + rs.standard_normal((n, d))
    x[:, 62 % d] += dominant
    y[:, 62 % d] += 1.1 * dominant
    return x.astype(np.float32), y.astype(np.float32)


def tight_around_a_shared_direction(
    rs: np.random.Generator, n: int, d: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(base, x, y)``: pairs that agree to ~1e-4 around one shared direction ``base``."""
    base = rs.standard_normal(d)
    latent = rs.standard_normal((n, d))
    x = base + 3e-4 * (latent + rs.standard_normal((n, d)))
    y = base + 3e-4 * (latent + rs.standard_normal((n, d)))
    return base, x, y


CASES = [
    # (n, d, signal, mean scale, dominant dimension)
    (200, 2048, 0.0, 0.0, 0.0),  # no alignment: z near 0, where an absolute error shows
    (200, 2048, 0.01, 30.0, 100.0),
    (200, 2048, 0.3, 10.0, 1000.0),
    (200, 896, 1.0, 3.0, 0.0),
    (64, 4096, 0.1, 30.0, 1000.0),
    (500, 512, 0.05, 10.0, 300.0),
]


@pytest.mark.parametrize(("n", "d", "signal", "mean_scale", "dominant"), CASES)
def test_float32_products_stay_within_1e6_of_float64(
    n: int, d: int, signal: float, mean_scale: float, dominant: float
) -> None:
    x, y = hidden_like(n, d, signal, mean_scale, dominant, seed=n + d)
    matched, mean, std = reference(x, y)
    want = (matched - mean) / std
    got = matched_vs_scrambled_z(x, y)
    assert got.z is not None
    assert abs(got.z - want) <= 1e-6 * max(abs(want), 1.0)
    assert got.matched == pytest.approx(matched, abs=1e-12)
    assert got.null_mean == pytest.approx(mean, abs=1e-12)
    assert got.null_std == pytest.approx(std, rel=1e-6)
    # and the float64 path agrees with the reference to rounding
    f64 = matched_vs_scrambled_z(x, y, products="float64")
    assert f64.z == pytest.approx(want, rel=1e-9, abs=1e-9)


def _spy_float32_path(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The shapes the float32-product path is called with, in order (it still computes)."""
    calls: list[tuple[int, int]] = []
    real = permutation._float32_moments

    def spy(x: np.ndarray, y: np.ndarray, scratch: object) -> object:
        calls.append(x.shape)
        return real(x, y, scratch)  # type: ignore[arg-type]

    monkeypatch.setattr(permutation, "_float32_moments", spy)
    return calls


def test_the_float32_path_is_taken_only_where_promised(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy_float32_path(monkeypatch)
    x, y = hidden_like(30, 32, 0.5, 3.0, 0.0, seed=1)
    matched_vs_scrambled_z(x, y)
    assert calls == [(30, 32)]
    for kwargs in (
        {"products": "float64"},
        {"strata": np.arange(30) % 3},
        {"center": True},
        {"method": "monte-carlo", "n_perms": 50},
    ):
        matched_vs_scrambled_z(x, y, **kwargs)  # type: ignore[arg-type]
    matched_vs_scrambled_z(x.astype(np.float64), y)  # mixed dtypes: float64
    # N > d: the float64 path sums d x d scatter matrices, cheaper than an N x N product
    wide_x, wide_y = hidden_like(40, 8, 0.5, 3.0, 0.0, seed=1)
    matched_vs_scrambled_z(wide_x, wide_y)
    assert calls == [(30, 32)]


def test_sweep_reuses_one_scratch_and_equals_single_calls() -> None:
    pairs = {
        "a": hidden_like(45, 48, 0.5, 10.0, 50.0, seed=2),
        "b": hidden_like(45, 48, 0.2, 3.0, 0.0, seed=3),
        "c": hidden_like(45, 80, 0.9, 1.0, 0.0, seed=4),  # another width: a new scratch
        "d": hidden_like(45, 48, 0.0, 0.0, 0.0, seed=5),
    }
    swept = matched_vs_scrambled_z_sweep(pairs)
    for name, (x, y) in pairs.items():
        assert swept[name] == matched_vs_scrambled_z(x, y), name


def test_block_boundaries_do_not_matter(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = hidden_like(53, 60, 0.4, 20.0, 200.0, seed=6)
    want = matched_vs_scrambled_z(x, y)
    for entries in (60, 7 * 60, 2**20):  # one row per block, ragged blocks, one block
        monkeypatch.setattr(permutation, "_BLOCK_ENTRIES", entries)
        got = matched_vs_scrambled_z(x, y)
        assert got.z == pytest.approx(want.z, rel=1e-9)
        assert got.matched == pytest.approx(want.matched, abs=1e-14)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rows_give_the_float64_paths_error(bad: float) -> None:
    x, y = hidden_like(30, 32, 0.5, 1.0, 0.0, seed=7)
    x[17, 3] = bad
    x[21, 0] = bad
    with pytest.raises(XlalignError) as f32:
        matched_vs_scrambled_z(x, y)
    with pytest.raises(XlalignError) as f64:
        matched_vs_scrambled_z(x.astype(np.float64), y.astype(np.float64))
    assert str(f32.value) == str(f64.value)
    assert "row 17" in str(f32.value)


def test_zero_rows_give_the_float64_paths_error() -> None:
    x, y = hidden_like(30, 32, 0.5, 1.0, 0.0, seed=8)
    y[4] = 0.0
    y[9] = 0.0
    with pytest.raises(XlalignError, match=r"y has zero-norm rows at indices \[4, 9\]"):
        matched_vs_scrambled_z(x, y)


def test_identical_rows_are_degenerate_on_the_float32_path() -> None:
    x, y = hidden_like(25, 32, 0.5, 1.0, 0.0, seed=9)
    x[:] = x[3]
    res = matched_vs_scrambled_z(x, y)
    assert res.z is None
    assert res.null_std <= permutation.DEGENERATE_STD
    assert res.undefined_reason == permutation._REASON_FLAT


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_extreme_scales_match_float64(scale: float) -> None:
    x, y = hidden_like(40, 48, 0.5, 5.0, 0.0, seed=10)
    xs, ys = (x * np.float32(scale)), (y * np.float32(scale))
    want = matched_vs_scrambled_z(x, y, products="float64").z
    assert want is not None
    assert matched_vs_scrambled_z(xs, ys).z == pytest.approx(want, rel=1e-6)


def test_unknown_products_value_is_refused() -> None:
    x, y = hidden_like(10, 8, 0.5, 1.0, 0.0, seed=11)
    with pytest.raises(XlalignError, match="products must be one of auto, float64"):
        matched_vs_scrambled_z(x, y, products="float16")
    with pytest.raises(XlalignError, match="products must be one of"):
        matched_vs_scrambled_z_sweep({"s": (x, y)}, products="bf16")


def test_sweep_names_the_site_of_a_non_finite_row_on_the_float32_path() -> None:
    good = hidden_like(30, 32, 0.5, 1.0, 0.0, seed=12)
    x, y = hidden_like(30, 32, 0.5, 1.0, 0.0, seed=13)
    y[8, 2] = np.nan
    with pytest.raises(XlalignError, match=r"site 'L3': y has non-finite values .* row 8"):
        matched_vs_scrambled_z_sweep({"L1": good, "L3": (x, y)})


def test_an_outlier_first_row_does_not_cost_digits() -> None:
    """Rows that agree to ~1e-4 around a shared direction, and one pair far from it: the rows
    are centred on their float64 mean before rounding, wherever the outlier sits (shifting by
    the first row instead put z 1.8e-5 off here, 18 times the tolerance)."""
    rs = np.random.default_rng(14)
    n, d = 20, 1024
    base, x, y = tight_around_a_shared_direction(rs, n, d)
    x[0] = rs.standard_normal(d)
    x[0] -= (x[0] @ base) / (base @ base) * base  # orthogonal to the shared direction
    for order in (np.arange(n), np.roll(np.arange(n), -1)):
        xs, ys = x[order].astype(np.float32), y[order].astype(np.float32)
        matched, mean, std = reference(xs, ys)
        want = (matched - mean) / std
        got = matched_vs_scrambled_z(xs, ys).z
        assert got is not None
        assert abs(got - want) <= 1e-6 * max(abs(want), 1.0)


def test_errors_come_in_the_float64_paths_order() -> None:
    x, y = hidden_like(30, 40, 0.5, 1.0, 0.0, seed=15)
    for fill in ("nan_both", "zero_x_inf_y", "zero_both"):
        xb, yb = x.copy(), y.copy()
        if fill == "nan_both":
            xb[25, 1], yb[10, 2] = np.nan, np.nan
        elif fill == "zero_x_inf_y":
            xb[5], yb[10, 0] = 0.0, np.inf
        else:
            xb[20], yb[3] = 0.0, 0.0
        with pytest.raises(XlalignError) as f32:
            matched_vs_scrambled_z(xb, yb)
        with pytest.raises(XlalignError) as f64:
            matched_vs_scrambled_z(xb, yb, products="float64")
        assert str(f32.value) == str(f64.value), fill


# --------------------------------------------------------------------------- mutation kills
# Each test below was written for a change that mutation testing showed the tests above let
# through (docs/testing.md, "Measured kill rate").


def test_the_scratch_is_one_float32_array_reused_per_shape() -> None:
    """The sweep's scratch holds the float32 rows (2, n, d), kept while the shape holds."""
    s = permutation._Scratch()
    a = s.array(5, 7)
    assert a.shape == (2, 5, 7) and a.dtype == np.float32
    assert s.array(5, 7) is a
    b = s.array(5, 9)
    assert b.shape == (2, 5, 9) and b is not a
    assert s.array(5, 9) is b


def test_a_sweep_allocates_one_scratch(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[object] = []

    class Counted(permutation._Scratch):
        def __init__(self) -> None:
            made.append(self)
            super().__init__()

    monkeypatch.setattr(permutation, "_Scratch", Counted)
    pairs = {f"L{i}": hidden_like(20, 24, 0.5, 3.0, 0.0, seed=20 + i) for i in range(3)}
    matched_vs_scrambled_z_sweep(pairs)
    assert len(made) == 1


def test_zero_rows_raise_without_a_divide_warning() -> None:
    """The approximate mean divides by the row norms before the zero rows are reported."""
    import warnings

    x, y = hidden_like(30, 32, 0.5, 1.0, 0.0, seed=8)
    x[6] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(XlalignError, match=r"x has zero-norm rows at indices \[6\]"):
            matched_vs_scrambled_z(x, y)


def test_small_rows_are_centred_before_rounding() -> None:
    """Rows of norm under 1 around a large shared direction: the float32 rounding must be
    relative to their spread, as for rows of any size (the approximate mean weighs every row,
    not only those of norm over 1). Scaling by a power of two is exact, so the reference is the
    unscaled data's float64 closed form."""
    rs = np.random.default_rng(16)
    n, d = 40, 256
    _base, x, y = tight_around_a_shared_direction(rs, n, d)
    xs, ys = x.astype(np.float32), y.astype(np.float32)
    matched, mean, std = reference(xs, ys)
    want = (matched - mean) / std
    for scale in (1.0, 2.0**-10):
        got = matched_vs_scrambled_z(xs * np.float32(scale), ys * np.float32(scale)).z
        assert got is not None
        assert abs(got - want) <= 1e-6 * max(abs(want), 1.0), scale


def test_the_float32_path_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    """``n <= d`` and ``n * d <= DENSE_MAX_ENTRIES`` are closed bounds; only the exact literal
    ``"float64"`` turns the path off."""
    calls = _spy_float32_path(monkeypatch)
    x, y = hidden_like(32, 32, 0.5, 3.0, 0.0, seed=17)  # n == d
    matched_vs_scrambled_z(x, y)
    assert calls == [(32, 32)]
    matched_vs_scrambled_z(x[:31, :31].copy(), y[:31, :31].copy())
    assert calls == [(32, 32), (31, 31)]
    matched_vs_scrambled_z(x[:, :31].copy(), y[:, :31].copy())  # n = d + 1
    assert len(calls) == 2
    matched_vs_scrambled_z(x, y, products="float64")
    assert len(calls) == 2
    monkeypatch.setattr(permutation, "DENSE_MAX_ENTRIES", 32 * 32)
    matched_vs_scrambled_z(x, y)
    assert len(calls) == 3
    monkeypatch.setattr(permutation, "DENSE_MAX_ENTRIES", 32 * 32 - 1)
    matched_vs_scrambled_z(x, y)
    assert len(calls) == 3
    # the float64 path computes in float64: its z is the reference to rounding
    matched, mean, std = reference(x, y)
    assert matched_vs_scrambled_z(x, y).z == pytest.approx((matched - mean) / std, rel=1e-9)
