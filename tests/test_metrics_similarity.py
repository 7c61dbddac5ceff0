"""Platonic-representation metrics and the semantic-hub score against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from references import cka, hsic_unbiased
from xlalign.errors import XlalignError
from xlalign.metrics import (
    cknna,
    linear_cka,
    mutual_knn,
    prepare_features,
    semantic_hub_score,
    similarity,
    svcca,
)


def paired(n: int, dx: int, dy: int, signal: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rs = np.random.RandomState(seed)
    z = rs.randn(n, 4)
    x = signal * z @ rs.randn(4, dx) + rs.randn(n, dx) + rs.randn(dx)
    y = signal * z @ rs.randn(4, dy) + rs.randn(n, dy) + 3 * rs.randn(dy)
    return x, y


# --------------------------------------------------------------------------- references


def prepare_ref(x: np.ndarray, q: float = 0.95) -> np.ndarray:
    """platonic-rep remove_outliers(exact=False) then F.normalize."""
    t = np.mean([np.quantile(np.abs(row), q) for row in x])
    c = np.clip(x, -t, t)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def knn_ref(f: np.ndarray, k: int) -> list[set[int]]:
    """k nearest by inner product, self excluded, ties to the lower index (stable sort)."""
    g = (f[:, None, :] * f[None, :, :]).sum(-1)
    np.fill_diagonal(g, -np.inf)
    order = np.argsort(-g, axis=1, kind="stable")[:, :k]
    return [set(r.tolist()) for r in order]


def mutual_knn_ref(fx: np.ndarray, fy: np.ndarray, k: int) -> float:
    a, b = knn_ref(fx, k), knn_ref(fy, k)
    return float(np.mean([len(p & q) / k for p, q in zip(a, b, strict=True)]))


def cknna_ref(fx: np.ndarray, fy: np.ndarray, k: int) -> float:
    """platonic-rep cknna(unbiased=True) with dense masks, without the +1e-6."""
    n = fx.shape[0]
    kk, ll = fx @ fx.T, fy @ fy.T

    def mask(f: np.ndarray) -> np.ndarray:
        m = np.zeros((n, n))
        for i, nb in enumerate(knn_ref(f, k)):
            m[i, list(nb)] = 1.0
        return m

    mk, ml = mask(fx), mask(fy)

    def sim(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> float:
        return hsic_unbiased(m * a, m * b)

    return sim(kk, ll, mk * ml) / np.sqrt(sim(kk, kk, mk) * sim(ll, ll, ml))


def svcca_ref(x: np.ndarray, y: np.ndarray, dims: int) -> float:
    """SVD-reduce each side, then CCA by whitening covariances (a different route)."""

    def reduce(a: np.ndarray) -> np.ndarray:
        c = a - a.mean(0)
        c = c / c.std(0, ddof=1)
        _, _, vt = np.linalg.svd(c, full_matrices=False)
        return c @ vt[:dims].T

    r1, r2 = reduce(x), reduce(y)

    def inv_sqrt(m: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh(m)
        return v @ np.diag(w**-0.5) @ v.T

    m = inv_sqrt(r1.T @ r1) @ (r1.T @ r2) @ inv_sqrt(r2.T @ r2)
    return float(np.linalg.svd(m, compute_uv=False).mean())


# --------------------------------------------------------------------------- CKA


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("unbiased", [False, True])
def test_linear_cka_equals_explicit_hsic(seed: int, unbiased: bool) -> None:
    x, y = paired(25, 7, 5, 1.0, seed)
    res = linear_cka(x, y, unbiased=unbiased)
    assert res.cka == pytest.approx(cka(x, y, unbiased), rel=1e-10)
    assert (res.unbiased, res.n, res.undefined_reason) == (unbiased, 25, None)


def test_cka_kernel_and_feature_routes_agree() -> None:
    x, y = paired(30, 40, 6, 1.0, 3)
    xc, yc = x - x.mean(0), y - y.mean(0)
    for a, b in ((xc, yc), (xc, xc), (yc, yc)):
        g = similarity._cross_sq(a, b, "gram")
        f = similarity._cross_sq(a, b, "feature")
        assert g == pytest.approx(f, rel=1e-12)
        assert g == pytest.approx(np.sum((a @ a.T) * (b @ b.T)), rel=1e-12)
    for path in ("gram", "feature"):
        assert similarity._hsic_unbiased_linear(x, y, path) == pytest.approx(
            hsic_unbiased(x @ x.T, y @ y.T), rel=1e-10
        )


def test_cka_invariances_and_identity() -> None:
    x, y = paired(40, 8, 8, 0.8, 5)
    q, _ = np.linalg.qr(np.random.RandomState(1).randn(8, 8))
    for unbiased in (False, True):
        base = linear_cka(x, y, unbiased=unbiased).cka
        assert base is not None
        assert linear_cka(x @ q, y, unbiased=unbiased).cka == pytest.approx(base, rel=1e-10)
        assert linear_cka(7.5 * x, 0.01 * y, unbiased=unbiased).cka == pytest.approx(
            base, rel=1e-10
        )
        assert linear_cka(x, x @ q * 3, unbiased=unbiased).cka == pytest.approx(1.0, rel=1e-12)
    assert linear_cka(x, y).cka < 1.0  # type: ignore[operator]


def test_cka_small_n_edge_cases() -> None:
    x, y = paired(3, 4, 4, 1.0, 0)
    assert linear_cka(x, y).cka == pytest.approx(cka(x, y), rel=1e-10)
    with pytest.raises(XlalignError, match=r"at least 4 pairs \(rows\), got 3"):
        linear_cka(x, y, unbiased=True)
    with pytest.raises(XlalignError, match=r"at least 3 pairs \(rows\), got 2"):
        linear_cka(x[:2], y[:2])
    x4, y4 = paired(4, 4, 4, 1.0, 0)
    assert linear_cka(x4, y4, unbiased=True).cka == pytest.approx(cka(x4, y4, True), rel=1e-9)


def test_cka_undefined_without_variance() -> None:
    x = np.tile([1.0, 2.0, 3.0], (6, 1))
    y = np.random.RandomState(0).randn(6, 2)
    res = linear_cka(x, y)
    assert res.cka is None and "x has no variance" in (res.undefined_reason or "")


def test_cka_prepare_matches_platonic_preprocessing() -> None:
    x, y = paired(30, 12, 9, 1.0, 4)
    x[3, 2] = 40.0  # an outlier the clamp must cut
    np.testing.assert_allclose(prepare_features(x), prepare_ref(x), rtol=1e-12)
    res = linear_cka(x, y, prepare=True)
    assert res.cka == pytest.approx(cka(prepare_ref(x), prepare_ref(y)), rel=1e-10)


# --------------------------------------------------------------------------- k-NN


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3, 10])
def test_mutual_knn_equals_brute_force(seed: int, k: int) -> None:
    x, y = paired(30, 6, 5, 1.5, seed)
    res = mutual_knn(x, y, k=k)
    assert res.score == pytest.approx(mutual_knn_ref(prepare_ref(x), prepare_ref(y), k))
    raw = mutual_knn(x, y, k=k, prepare=False)
    assert raw.score == pytest.approx(mutual_knn_ref(x, y, k))
    assert (res.k, res.n) == (k, 30)


def test_mutual_knn_ties_go_to_lower_index() -> None:
    rs = np.random.RandomState(0)
    x = rs.randn(8, 3)
    x[5] = x[2]
    x[6] = x[2]  # rows 2, 5, 6 identical: equal similarities to everyone
    y = rs.randn(8, 3)
    y[4] = y[1]
    for k in (1, 2, 3):
        assert mutual_knn(x, y, k=k, prepare=False).score == pytest.approx(mutual_knn_ref(x, y, k))
        assert mutual_knn(x, y, k=k).score == pytest.approx(
            mutual_knn_ref(prepare_ref(x), prepare_ref(y), k)
        )
    assert mutual_knn(x, x, k=3).score == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [2, 5])
def test_cknna_equals_dense_platonic_formula(seed: int, k: int) -> None:
    x, y = paired(24, 6, 5, 1.5, seed)
    res = cknna(x, y, k=k)
    assert res.score == pytest.approx(cknna_ref(prepare_ref(x), prepare_ref(y), k), rel=1e-9)
    raw = cknna(x, y, k=k, prepare=False)
    assert raw.score == pytest.approx(cknna_ref(x, y, k), rel=1e-9)
    assert cknna(x, x, k=k).score == pytest.approx(1.0, rel=1e-12)


def test_knn_metrics_blockwise_equal_single_block(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = paired(40, 6, 5, 1.0, 7)
    one = (mutual_knn(x, y, k=4), cknna(x, y, k=4))
    monkeypatch.setattr(similarity, "_BLOCK_ENTRIES", 3 * 40)
    assert mutual_knn(x, y, k=4) == one[0]
    assert cknna(x, y, k=4).score == pytest.approx(one[1].score, rel=1e-12)


def test_knn_edge_cases() -> None:
    x, y = paired(4, 3, 3, 1.0, 0)
    assert mutual_knn(x, y, k=3).score == 1.0  # every other point is a neighbour
    with pytest.raises(XlalignError, match=r"k must be between 1 and n - 1 = 3; got k=4"):
        mutual_knn(x, y, k=4)
    with pytest.raises(XlalignError, match=r"cknna: k must be between 2"):
        cknna(x, y, k=1)
    with pytest.raises(XlalignError, match=r"at least 4 pairs"):
        cknna(x[:3], y[:3], k=2)
    with pytest.raises(XlalignError, match=r"at least 3 pairs"):
        mutual_knn(x[:2], y[:2], k=1)


# --------------------------------------------------------------------------- SVCCA


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dims", [1, 3, 5])
def test_svcca_equals_whitened_cca(seed: int, dims: int) -> None:
    x, y = paired(50, 8, 6, 1.0, seed)
    res = svcca(x, y, dims=dims)
    assert res.score == pytest.approx(svcca_ref(x, y, dims), rel=1e-9)
    assert svcca(x, x @ np.diag(np.arange(1, 9.0)), dims=dims).score == pytest.approx(1.0)


def test_svcca_edge_cases() -> None:
    x, y = paired(4, 8, 6, 1.0, 0)
    assert svcca(x, y, dims=3).score is not None
    with pytest.raises(
        XlalignError, match=r"dims must be between 1 and min\(n - 1, d_x, d_y\) = 3"
    ):
        svcca(x, y, dims=4)
    flat = np.tile(np.arange(5.0), (10, 1))
    flat[:, 0] = np.arange(10.0)  # rank 1 after centring
    res = svcca(flat, paired(10, 5, 5, 1.0, 0)[1], dims=2)
    assert res.score is None and "fewer than dims=2" in (res.undefined_reason or "")


# --------------------------------------------------------------------------- semantic hub


def test_semantic_hub_equals_diag_minus_offdiag() -> None:
    x, y = paired(15, 6, 6, 1.0, 2)
    xu = x / np.linalg.norm(x, axis=1, keepdims=True)
    yu = y / np.linalg.norm(y, axis=1, keepdims=True)
    s = xu @ yu.T
    off = s[~np.eye(15, dtype=bool)].mean()
    res = semantic_hub_score(x, y)
    assert res.diag_mean == pytest.approx(np.diag(s).mean(), rel=1e-12)
    assert res.offdiag_mean == pytest.approx(off, rel=1e-12)
    assert res.score == pytest.approx(np.diag(s).mean() - off, rel=1e-12)
    two = semantic_hub_score(x[:2], y[:2])
    assert two.offdiag_mean == pytest.approx((s[0, 1] + s[1, 0]) / 2)
    with pytest.raises(XlalignError, match=r"x.shape=\(15, 6\), y.shape=\(15, 5\)"):
        semantic_hub_score(x, y[:, :5])
    x[4] = 0
    with pytest.raises(XlalignError, match=r"zero-norm rows at indices \[4\]"):
        semantic_hub_score(x, y)
