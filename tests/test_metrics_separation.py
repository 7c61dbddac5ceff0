"""PCA language separation (Cohen's d on PC 1) and PCA-subspace z against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from xlalign.errors import XlalignError
from xlalign.metrics import cohen_d_pc1, matched_vs_scrambled_z, pca_subspace_z


def two_languages(n: int, d: int, gap: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rs = np.random.RandomState(seed)
    shared = rs.randn(n, d)
    lang = rs.randn(d)
    x = shared + rs.randn(n, d) * 0.5 + gap * lang
    y = shared + rs.randn(n, d) * 0.5 - gap * lang
    return x.astype(np.float32), y.astype(np.float32)


def pca_ref(pooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of the sample covariance; sign: largest |entry| positive."""
    w, v = np.linalg.eigh(np.cov(pooled.T))
    order = np.argsort(w)[::-1]
    w, v = w[order], v[:, order].T
    v *= np.sign(v[np.arange(v.shape[0]), np.abs(v).argmax(axis=1)])[:, None]
    return w / w.sum(), v


def unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


@pytest.mark.parametrize(("n", "d"), [(30, 80), (60, 12)])  # SVD route and eigh route
@pytest.mark.parametrize("seed", [0, 1])
def test_cohen_d_and_ratios_equal_brute_force(n: int, d: int, seed: int) -> None:
    x, y = two_languages(n, d, 0.4, seed)
    xu, yu = unit(x), unit(y)
    pooled = np.vstack([xu, yu])
    ratio, comps = pca_ref(pooled)
    px = (xu - pooled.mean(0)) @ comps[0]
    py = (yu - pooled.mean(0)) @ comps[0]
    d_ref = (px.mean() - py.mean()) / np.sqrt((px.std() ** 2 + py.std() ** 2) / 2)
    res = cohen_d_pc1(x, y)
    assert res.d == pytest.approx(d_ref, rel=1e-8)
    assert len(res.explained_variance_ratio) == 10
    np.testing.assert_allclose(res.explained_variance_ratio, ratio[:10], rtol=1e-8, atol=1e-14)
    assert res.n == n and res.undefined_reason is None


def test_sign_convention_largest_entry_positive() -> None:
    """The language direction is +e0 for x: PC 1 is +e0 (largest entry positive), so d > 0."""
    rs = np.random.RandomState(0)
    base = rs.randn(40, 6) * 0.1 + 1.0
    x, y = base.copy(), base.copy()
    x[:, 0] += 3.0
    y[:, 0] -= 3.0
    res = cohen_d_pc1(x, y)
    assert res.d is not None and res.d > 0
    swapped = cohen_d_pc1(y, x)
    assert swapped.d == pytest.approx(-res.d, rel=1e-9)
    assert res.explained_variance_ratio[0] > 0.9


def test_ratio_count_is_capped_by_rank() -> None:
    x, y = two_languages(3, 4, 0.3, 0)
    res = cohen_d_pc1(x, y)
    assert len(res.explained_variance_ratio) == 4  # min(10, 2n - 1 = 5, d = 4)
    assert sum(res.explained_variance_ratio) == pytest.approx(1.0)


def test_cohen_d_undefined_when_languages_are_constant() -> None:
    x = np.tile([1.0, 0.0, 0.0], (4, 1))
    y = np.tile([0.0, 1.0, 0.0], (4, 1))
    res = cohen_d_pc1(x, y)
    assert res.d is None and "zero pooled std" in (res.undefined_reason or "")
    same = cohen_d_pc1(x, x)
    assert same.d is None and "identical" in (same.undefined_reason or "")


@pytest.mark.parametrize("k", [1, 2, 5])
def test_pca_subspace_z_equals_z_of_brute_projections(k: int) -> None:
    x, y = two_languages(40, 20, 0.3, 3)
    xu, yu = unit(x), unit(y)
    pooled = np.vstack([xu, yu])
    _, comps = pca_ref(pooled)
    px = (xu - pooled.mean(0)) @ comps[:k].T
    py = (yu - pooled.mean(0)) @ comps[:k].T
    ref = matched_vs_scrambled_z(px, py)
    res = pca_subspace_z(x, y, k)
    assert res.z == pytest.approx(ref.z, rel=1e-8)
    mc = pca_subspace_z(x, y, k, method="monte-carlo", n_perms=200)
    assert mc.z == pytest.approx(
        matched_vs_scrambled_z(px, py, method="monte-carlo", n_perms=200).z, rel=1e-6
    )


def test_pca_subspace_z_bad_k() -> None:
    x, y = two_languages(5, 4, 0.3, 0)
    with pytest.raises(XlalignError, match=r"k must be between 1 and min\(2n - 1, d\) = 4; got 5"):
        pca_subspace_z(x, y, 5)
    with pytest.raises(XlalignError, match="got 0"):
        pca_subspace_z(x, y, 0)


def test_separation_bad_inputs() -> None:
    x, y = two_languages(5, 4, 0.3, 0)
    with pytest.raises(XlalignError, match=r"x.shape=\(5, 4\), y.shape=\(4, 4\)"):
        cohen_d_pc1(x, y[:4])
    x[1] = 0
    with pytest.raises(XlalignError, match=r"x has zero-norm rows at indices \[1\]"):
        cohen_d_pc1(x, y)
