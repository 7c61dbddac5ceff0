"""Representation similarity of paired sets: CKA, mutual k-NN, CKNNA, SVCCA, semantic hub.

The CKA / k-NN / CKNNA / SVCCA definitions follow minyoungg/platonic-rep ``metrics.py`` (Huh et
al. 2024, "The Platonic Representation Hypothesis"); the semantic-hub score follows Wu et al.
2024. Differences from platonic-rep, all deliberate:

- ``prepare``: platonic-rep's ``measure_alignment.py`` clamps every feature at the 0.95
  quantile of ``|x|`` and L2-normalises rows before any metric. Here ``prepare=True`` does that
  (see :func:`prepare_features`) and is the default for the k-NN metrics (``mutual_knn``,
  ``cknna``); ``linear_cka`` and ``svcca`` default to the raw features, the textbook
  definitions, which are invariant to rotations and isotropic scaling (clamping is not).
- No ``+ 1e-6`` in the CKA / CKNNA denominators; a zero or negative denominator gives
  ``None`` with a reason instead.
- Exact SVD and canonical correlations instead of ``torch.svd_lowrank`` and sklearn's
  iterative ``CCA``.
- k-NN ties (equal similarities, within ``TIE_TOL``) go to the lower index; torch's ``topk``
  leaves them unspecified.

``compat="platonic"`` (on :func:`linear_cka`, :func:`mutual_knn`, :func:`cknna`, :func:`svcca`
and the three k-NN sequence metrics) reproduces platonic-rep's own numbers instead: rows
L2-normalised as its ``compute_score`` does, ``+ 1e-6`` in the CKA / CKNNA denominators, its
SVCCA scaling (``std + 1e-8``); :func:`platonic_clamp` is its joint outlier clamp over all layers
of a model. docs/metrics.md lists every difference between the two modes with its size.

Everything is float64. Kernels are never formed whole: sums of kernel products are computed in
feature space (``||A^T B||_F^2``) or in row blocks of the kernels, whichever costs less.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from xlalign.errors import XlalignError
from xlalign.metrics._checks import (
    CHUNK_ROWS,
    DENSE_MAX_ENTRIES,
    RESIDUE_TOL,
    TIE_TOL,
    Result,
    UnitRows,
    as_float_array,
    check_finite,
    check_k,
    check_nonzero,
    check_pair,
    safe_scale,
)

__all__ = [
    "COMPAT_MODES",
    "CkaResult",
    "CknnaResult",
    "HubResult",
    "KnnResult",
    "SiteMatrix",
    "SvccaResult",
    "cknna",
    "cycle_knn",
    "edit_distance_knn",
    "lcs_knn",
    "linear_cka",
    "linear_cka_matrix",
    "mutual_knn",
    "mutual_knn_matrix",
    "platonic_clamp",
    "platonic_threshold",
    "prepare_features",
    "semantic_hub_score",
    "svcca",
]

_BLOCK_ENTRIES = 2**24

#: ``compat`` values: ``exact`` (the textbook definitions) or ``platonic`` (platonic-rep's code).
COMPAT_MODES = ("exact", "platonic")
#: platonic-rep adds this to the CKA and CKNNA denominators (``metrics.py``).
PLATONIC_EPS = 1e-6
#: platonic-rep's SVCCA divides each centred feature by ``std + 1e-8``.
PLATONIC_STD_EPS = 1e-8


@dataclass(frozen=True)
class CkaResult(Result):
    """Linear CKA in [0, 1] (``None`` when a side has no variance, with the reason)."""

    cka: float | None
    unbiased: bool
    n: int
    undefined_reason: str | None = None


@dataclass(frozen=True)
class KnnResult(Result):
    """Mutual k-NN alignment: mean share of the ``k`` neighbours two spaces agree on."""

    score: float
    k: int
    n: int


@dataclass(frozen=True)
class CknnaResult(Result):
    """CKNNA: CKA restricted to mutual-k-NN pairs (``None`` when undefined, with the reason)."""

    score: float | None
    k: int
    n: int
    undefined_reason: str | None = None


@dataclass(frozen=True)
class SvccaResult(Result):
    """SVCCA: mean of the top ``dims`` canonical correlations between the top-``dims`` SVD
    subspaces (``None`` when a side has fewer than ``dims`` non-zero directions)."""

    score: float | None
    dims: int
    n: int
    undefined_reason: str | None = None


@dataclass(frozen=True)
class HubResult(Result):
    """Semantic-hub score: mean matched cosine minus mean mismatched cosine."""

    score: float
    diag_mean: float
    offdiag_mean: float
    n: int


# --------------------------------------------------------------------------- helpers


def prepare_features(x: Any, q: float = 0.95) -> np.ndarray:
    """``x`` clamped to ``[-t, t]`` then rows L2-normalised, float64 ``(n, d)``.

    platonic-rep's ``prepare_features`` + ``F.normalize``: ``t`` is the mean over rows of each
    row's ``q``-quantile of ``|x|`` (linear interpolation, as ``torch.quantile``; their default,
    non-``--precise`` path). ``q = 1`` skips clamping. Zero rows raise ``XlalignError``.
    """
    return _prepare(np.asarray(x), q, "features")


def _prepare(x: np.ndarray, q: float, name: str) -> np.ndarray:
    a = np.array(x, dtype=np.float64)
    if a.ndim != 2:
        raise XlalignError(f"{name} must be 2-D (n, d); got shape {a.shape}")
    if not 0 < q <= 1:
        raise XlalignError(f"q must be in (0, 1]; got {q}")
    a = safe_scale(a)  # no squares of 1e200 (the clamp and the norm are scale-free)
    if q < 1:
        t = float(np.quantile(np.abs(a), q, axis=1).mean())
        np.clip(a, -t, t, out=a)
    norms = np.sqrt(np.einsum("ij,ij->i", a, a))
    check_nonzero(norms, name)
    return a / norms[:, None]


def platonic_clamp(sites: Any, q: float = 0.95) -> list[np.ndarray]:
    """platonic-rep's joint outlier clamp of one model's layers, float64, one array per layer.

    ``sites``: a sequence of ``(n, d)`` arrays, the same ``n`` prompts at every layer (its
    features ``(n, L, d)``). Every layer is clamped to ``[-t, t]`` with
    ``t = platonic_threshold(sites, q)``. Clamping each layer alone (:func:`prepare_features`)
    gives a different ``t`` per layer.
    """
    t = platonic_threshold(sites, q)
    return [np.clip(np.asarray(a, dtype=np.float64), -t, t) for a in sites]


def platonic_threshold(sites: Any, q: float = 0.95) -> float:
    """The clamp ``t`` of :func:`platonic_clamp` (``inf`` for ``q = 1``).

    ``t`` is the mean over prompts of each prompt's ``q``-quantile of ``|x|`` over *all* its
    layers' values (platonic-rep's ``remove_outliers`` flattens from dim 1; linear interpolation
    as ``torch.quantile``). Reads the layers in row blocks, so memory-mapped sites stay on disk.
    """
    layers = [np.asarray(a) for a in sites]
    if not layers:
        raise XlalignError("platonic_clamp: give at least one layer")
    n = layers[0].shape[0]
    for i, a in enumerate(layers):
        if a.ndim != 2 or a.shape[0] != n:
            raise XlalignError(
                f"platonic_clamp: layer {i} has shape {a.shape}; every layer must be (n={n}, d)"
            )
    if not 0 < q <= 1:
        raise XlalignError(f"q must be in (0, 1]; got {q}")
    if q == 1:
        return float("inf")
    width = sum(a.shape[1] for a in layers)
    rows = max(1, _BLOCK_ENTRIES // max(width, 1))
    total = 0.0
    for start in range(0, n, rows):
        block = np.concatenate(
            [np.abs(np.asarray(a[start : start + rows], dtype=np.float64)) for a in layers], axis=1
        )
        total += float(np.quantile(block, q, axis=1).sum())
    return total / n


def _check_compat(compat: str, what: str) -> None:
    if compat not in COMPAT_MODES:
        raise XlalignError(
            f"{what}: compat must be one of {', '.join(COMPAT_MODES)}; got {compat!r}"
        )


def _features(
    x: Any, y: Any, min_pairs: int, prepare: bool, compat: str = "exact"
) -> tuple[np.ndarray, np.ndarray]:
    xa, ya = check_pair(x, y, min_pairs=min_pairs, same_dim=False)
    if prepare:
        return _prepare(xa, 0.95, "x"), _prepare(ya, 0.95, "y")
    if compat == "platonic":
        # compute_score L2-normalises every layer's rows before any metric
        return _prepare(xa, 1.0, "x"), _prepare(ya, 1.0, "y")
    return np.asarray(xa, dtype=np.float64), np.asarray(ya, dtype=np.float64)


def _row_blocks(n: int) -> Iterator[slice]:
    rows = max(1, _BLOCK_ENTRIES // n)
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


def _cross_sq(a: np.ndarray, b: np.ndarray, path: str = "auto") -> float:
    """``||a^T b||_F^2 = tr(a a^T b b^T)`` for ``a (n, da)``, ``b (n, db)``."""
    n, da = a.shape
    db = b.shape[1]
    if path == "auto":
        path = "feature" if da * db <= n * (da + db) else "gram"
    if path == "feature":
        c = a.T @ b
        return float(np.einsum("ij,ij->", c, c))
    total = 0.0
    for rows in _row_blocks(n):
        total += float(np.einsum("ij,ij->", a[rows] @ a.T, b[rows] @ b.T))
    return total


def _centred(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """Column-centred copy and whether any variance is left (not just rounding residue)."""
    c = a - a.mean(axis=0)
    flat = np.sqrt(np.einsum("ij,ij->", c, c)) <= RESIDUE_TOL * np.sqrt(np.einsum("ij,ij->", a, a))
    return c, not flat


def _hsic_unbiased_linear(a: np.ndarray, b: np.ndarray, path: str = "auto") -> float:
    """Song et al. (2012) unbiased HSIC of the linear kernels ``a a^T``, ``b b^T``.

    ``[tr(K~L~) + 1'K~1 1'L~1 / ((m-1)(m-2)) - 2/(m-2) 1'K~L~1] / (m(m-3))`` with ``K~`` the
    kernel with its diagonal zeroed, evaluated from feature sums without forming ``K``.
    """
    m = a.shape[0]
    kd = np.einsum("ij,ij->i", a, a)
    ld = np.einsum("ij,ij->i", b, b)
    k1 = a @ a.sum(axis=0) - kd
    l1 = b @ b.sum(axis=0) - ld
    tr = _cross_sq(a, b, path) - float(kd @ ld)
    return (
        tr + float(k1.sum()) * float(l1.sum()) / ((m - 1) * (m - 2)) - 2 * float(k1 @ l1) / (m - 2)
    ) / (m * (m - 3))


def cka_result(
    hxy: float,
    hxx: float,
    hyy: float,
    *,
    x_var: bool,
    y_var: bool,
    n: int,
    unbiased: bool,
    eps: float = 0.0,
) -> CkaResult:
    """The :class:`CkaResult` of three HSIC values, or the reason CKA is undefined.

    Every CKA path (in memory, streamed, the sweep's shared matrices, the torch backend) ends
    here, so they agree on when CKA is undefined and why. ``eps``: platonic-rep's ``1e-6``.
    """
    if not (x_var and y_var):
        side = "x" if not x_var else "y"
        reason = f"{side} has no variance: all its rows are identical, so CKA is 0/0"
        return CkaResult(cka=None, unbiased=unbiased, n=n, undefined_reason=reason)
    if hxx <= 0 or hyy <= 0:
        reason = "the unbiased HSIC of a side with itself is not positive (too few pairs?)"
        return CkaResult(cka=None, unbiased=unbiased, n=n, undefined_reason=reason)
    return CkaResult(cka=float(hxy / (np.sqrt(hxx * hyy) + eps)), unbiased=unbiased, n=n)


def cknna_from_neighbours(
    k_idx: tuple[np.ndarray, np.ndarray, np.ndarray],
    l_idx: tuple[np.ndarray, np.ndarray, np.ndarray],
    n: int,
    k: int,
    eps: float = 0.0,
) -> CknnaResult:
    """CKNNA from each side's k-NN entries ``(rows, cols, kernel values)``, row-major sorted.

    The shared step of :func:`cknna`, the sweep's shared matrices and the torch backend.
    """
    kr, kc, kv = k_idx
    lr, lc, lv = l_idx
    _, ik, il = np.intersect1d(kr * n + kc, lr * n + lc, assume_unique=True, return_indices=True)
    sim_kl = _sparse_hsic(kr[ik], kc[ik], kv[ik], lv[il], n)
    sim_kk = _sparse_hsic(kr, kc, kv, kv, n)
    sim_ll = _sparse_hsic(lr, lc, lv, lv, n)
    if sim_kk * sim_ll <= 0:
        reason = "the k-NN-restricted HSIC of a side with itself is not positive"
        return CknnaResult(score=None, k=int(k), n=n, undefined_reason=reason)
    return CknnaResult(score=float(sim_kl / (np.sqrt(sim_kk * sim_ll) + eps)), k=int(k), n=n)


def hub_result(diag_sum: float, total_sum: float, n: int) -> HubResult:
    """The semantic-hub score from the sum of matched cosines and the sum of all ``n x n``."""
    off = (total_sum - diag_sum) / (n * (n - 1))
    return HubResult(score=diag_sum / n - off, diag_mean=diag_sum / n, offdiag_mean=off, n=n)


# --------------------------------------------------------------------------- CKA


def linear_cka(
    x: Any, y: Any, unbiased: bool = False, prepare: bool = False, compat: str = "exact"
) -> CkaResult:
    """Linear CKA of ``x (n, d_x)`` and ``y (n, d_y)`` (rows paired; widths may differ).

    Biased (Kornblith et al. 2019): ``HSIC(K, L) = tr(K H L H)`` with ``K = x x^T``,
    ``H = I - 11^T/n``, and ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``, computed as
    ``||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``. ``unbiased=True`` uses Song et al.'s
    unbiased HSIC (needs ``n >= 4``; can be slightly negative). Memory: ``O(d_x d_y)`` or one
    row block of the kernels, never ``n x n``. Inputs bigger than ``DENSE_MAX_ENTRIES`` with
    ``n >= max(d_x, d_y) / 2`` (e.g. a memory-mapped ``(1_000_000, 1024)`` float32 site) are
    streamed in row chunks: no float64 copy of x or y is made, memory is ``O(n + d^2)`` and
    the value equals the in-memory computation to float64 rounding.

    Args:
        prepare: clamp this site at the 0.95 row quantile and L2-normalise first
            (:func:`prepare_features`).
        compat: ``"platonic"``: platonic-rep's ``cka`` / ``unbiased_cka`` as its pipeline calls
            them: rows L2-normalised, ``CKA = HSIC(K, L) / (sqrt(HSIC(K, K) HSIC(L, L)) + 1e-6)``.
    """
    _check_compat(compat, "linear_cka")
    if not prepare and compat == "exact":
        xa, ya = check_pair(x, y, min_pairs=4 if unbiased else 3, same_dim=False)
        if _stream_cka(xa, ya):
            return _linear_cka_streamed(xa, ya, unbiased)
    fx, fy = _features(x, y, 4 if unbiased else 3, prepare, compat)
    n = fx.shape[0]
    xc, x_var = _centred(fx)
    yc, y_var = _centred(fy)
    if not (x_var and y_var):
        return cka_result(0.0, 0.0, 0.0, x_var=x_var, y_var=y_var, n=n, unbiased=unbiased)
    if unbiased:
        # Unbiased HSIC is unchanged by centring the features; centring first avoids
        # cancellation when hidden states share a large mean vector.
        hxy = _hsic_unbiased_linear(xc, yc)
        hxx = _hsic_unbiased_linear(xc, xc)
        hyy = _hsic_unbiased_linear(yc, yc)
    else:
        hxy, hxx, hyy = _cross_sq(xc, yc), _cross_sq(xc, xc), _cross_sq(yc, yc)
    eps = PLATONIC_EPS if compat == "platonic" else 0.0
    return cka_result(hxy, hxx, hyy, x_var=True, y_var=True, n=n, unbiased=unbiased, eps=eps)


def _stream_cka(xa: np.ndarray, ya: np.ndarray) -> bool:
    """Whether :func:`linear_cka` should stream ``xa``, ``ya`` instead of copying them.

    Only large inputs stream (small ones keep the in-memory path bit for bit), and only when
    the scatter matrices are the cheaper route (``d <= 2 n``); with fewer rows than half the
    width the float64 copy is smaller than a ``d x d`` scatter matrix anyway.
    """
    n, dx = xa.shape
    dy = ya.shape[1]
    big = n * max(dx, dy) > DENSE_MAX_ENTRIES
    return big and dx * dy <= n * (dx + dy) and max(dx, dy) <= 2 * n


def _linear_cka_streamed(xa: np.ndarray, ya: np.ndarray, unbiased: bool) -> CkaResult:
    """Linear CKA of ``xa (n, d_x)`` and ``ya (n, d_y)`` from three scatter matrices.

    Two passes over row chunks of ``CHUNK_ROWS`` rows: the first gives the float64 column means
    (and the raw sums of squares for the no-variance check), the second accumulates
    ``Cxy = Xc^T Yc``, ``Cxx = Xc^T Xc`` and ``Cyy = Yc^T Yc`` with each chunk centred by the
    exact means, so, as in the in-memory path, no large shared mean is cancelled late.
    Biased: ``HSIC(x, y) = ||Cxy||_F^2``. Unbiased (Song et al. 2012): the ``n``-vectors of
    kernel diagonals and row sums are rebuilt from chunk sums (see ``_hsic_unbiased_stats``).
    """
    n, dx = xa.shape
    dy = ya.shape[1]
    sx, sy = np.zeros(dx), np.zeros(dy)
    sqx = sqy = 0.0
    for start in range(0, n, CHUNK_ROWS):
        xb = np.asarray(xa[start : start + CHUNK_ROWS], dtype=np.float64)
        yb = np.asarray(ya[start : start + CHUNK_ROWS], dtype=np.float64)
        sx += xb.sum(axis=0)
        sy += yb.sum(axis=0)
        sqx += float(np.einsum("ij,ij->", xb, xb))
        sqy += float(np.einsum("ij,ij->", yb, yb))
    xbar, ybar = sx / n, sy / n
    cxy = np.zeros((dx, dy))
    cxx = np.zeros((dx, dx))
    cyy = np.zeros((dy, dy))
    # Unbiased HSIC needs, besides the scatter matrices: centred column sums, row norms^2
    # (kernel diagonals) and norm-weighted column sums (see _hsic_unbiased_stats).
    ax, ay = np.zeros(dx), np.zeros(dy)
    kd, ld = np.empty(n), np.empty(n)
    w = {key: np.zeros(d) for key, d in (("xk", dx), ("xl", dx), ("yk", dy), ("yl", dy))}
    for start in range(0, n, CHUNK_ROWS):
        rows = slice(start, min(n, start + CHUNK_ROWS))
        xc = np.asarray(xa[rows], dtype=np.float64) - xbar
        yc = np.asarray(ya[rows], dtype=np.float64) - ybar
        cxy += xc.T @ yc
        cxx += xc.T @ xc
        cyy += yc.T @ yc
        if unbiased:
            kb, lb = np.einsum("ij,ij->i", xc, xc), np.einsum("ij,ij->i", yc, yc)
            kd[rows], ld[rows] = kb, lb
            ax += xc.sum(axis=0)
            ay += yc.sum(axis=0)
            w["xk"] += kb @ xc
            w["xl"] += lb @ xc
            w["yk"] += kb @ yc
            w["yl"] += lb @ yc
    x_var = np.sqrt(max(float(np.trace(cxx)), 0.0)) > RESIDUE_TOL * np.sqrt(sqx)
    y_var = np.sqrt(max(float(np.trace(cyy)), 0.0)) > RESIDUE_TOL * np.sqrt(sqy)
    if not (x_var and y_var):
        return cka_result(0.0, 0.0, 0.0, x_var=x_var, y_var=y_var, n=n, unbiased=unbiased)
    if unbiased:
        hxy = _hsic_unbiased_stats(n, cxy, ax, ay, kd, ld, w["xl"], w["yk"])
        hxx = _hsic_unbiased_stats(n, cxx, ax, ax, kd, kd, w["xk"], w["xk"])
        hyy = _hsic_unbiased_stats(n, cyy, ay, ay, ld, ld, w["yl"], w["yl"])
    else:
        hxy = float(np.einsum("ij,ij->", cxy, cxy))
        hxx = float(np.einsum("ij,ij->", cxx, cxx))
        hyy = float(np.einsum("ij,ij->", cyy, cyy))
    return cka_result(hxy, hxx, hyy, x_var=True, y_var=True, n=n, unbiased=unbiased)


def _hsic_unbiased_stats(
    m: int,
    cab: np.ndarray,
    sa: np.ndarray,
    sb: np.ndarray,
    kd: np.ndarray,
    ld: np.ndarray,
    wa: np.ndarray,
    wb: np.ndarray,
) -> float:
    """:func:`_hsic_unbiased_linear` of features ``a``, ``b`` from their sums, not their rows.

    ``cab = a^T b`` ``(d_a, d_b)``; ``sa``, ``sb``: column sums; ``kd``, ``ld``: ``(m,)`` row
    norms^2; ``wa = sum_i ld_i a_i``, ``wb = sum_i kd_i b_i``. With ``k1_i = a_i . sa - kd_i``
    and ``l1_i = b_i . sb - ld_i``: ``sum k1 = |sa|^2 - sum kd`` and
    ``k1 . l1 = sa^T cab sb - sa . wa - sb . wb + kd . ld``.
    """
    kl = float(kd @ ld)
    tr = float(np.einsum("ij,ij->", cab, cab)) - kl
    k1_sum = float(sa @ sa) - float(kd.sum())
    l1_sum = float(sb @ sb) - float(ld.sum())
    k1_l1 = float(sa @ cab @ sb) - float(sa @ wa) - float(sb @ wb) + kl
    return (tr + k1_sum * l1_sum / ((m - 1) * (m - 2)) - 2 * k1_l1 / (m - 2)) / (m * (m - 3))


# --------------------------------------------------------------------------- k-NN metrics


def _topk_mask(vals: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask with exactly ``k`` True per row: the largest values, ties to lower index."""
    kth = -np.partition(-vals, k - 1, axis=1)[:, k - 1 : k]
    above = vals > kth + TIE_TOL
    near = np.abs(vals - kth) <= TIE_TOL
    need = k - above.sum(axis=1, keepdims=True)
    return above | (near & (np.cumsum(near, axis=1) <= need))


def _knn_blocks(f: np.ndarray, k: int) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """Per row block: ``(rows, inner products (b, n), k-NN mask (b, n))``, self excluded."""
    n = f.shape[0]
    for rows in _row_blocks(n):
        g = f[rows] @ f.T
        local = np.arange(rows.stop - rows.start)
        g[local, local + rows.start] = -np.inf
        yield rows, g, _topk_mask(g, k)


def mutual_knn(
    x: Any, y: Any, k: int = 10, prepare: bool = True, compat: str = "exact"
) -> KnnResult:
    """Mean over i of ``|kNN_x(i) ∩ kNN_y(i)| / k``, neighbours by inner product, self excluded.

    platonic-rep ``mutual_knn`` (topk 10). With ``prepare`` (default) features are clamped and
    L2-normalised first, so the inner product is a cosine. Needs ``1 <= k <= n - 1``.
    ``compat="platonic"`` L2-normalises rows even without ``prepare`` (the formula is the same).
    """
    _check_compat(compat, "mutual_knn")
    fx, fy = _features(x, y, 3, prepare, compat)
    n = fx.shape[0]
    check_k(k, n, "mutual_knn")
    overlap = 0
    for (_, _, mx), (_, _, my) in zip(_knn_blocks(fx, k), _knn_blocks(fy, k), strict=True):
        overlap += int(np.count_nonzero(mx & my))
    return KnnResult(score=overlap / (n * k), k=int(k), n=n)


def _knn_lists(f: np.ndarray, k: int) -> np.ndarray:
    """``(n, k)`` indices of each row's ``k`` nearest rows by inner product, nearest first.

    Self excluded; equal similarities (within ``TIE_TOL``) keep the lower index first (a stable
    sort), where platonic-rep's ``argsort`` leaves their order unspecified.
    """
    out = np.empty((f.shape[0], k), dtype=np.int64)
    for rows, g, mask in _knn_blocks(f, k):
        # the k selected columns per row (ties already resolved to the lower index), then ordered
        # by similarity, ties by index: round to TIE_TOL so near-equal values sort by index
        cols = np.nonzero(mask)[1].reshape(-1, k)
        vals = np.take_along_axis(g, cols, axis=1)
        order = np.lexsort((cols, -np.round(vals / TIE_TOL)), axis=1)
        out[rows] = np.take_along_axis(cols, order, axis=1)
    return out


def _sequence_features(
    x: Any, y: Any, k: int, prepare: bool, compat: str, what: str
) -> tuple[np.ndarray, np.ndarray, int]:
    _check_compat(compat, what)
    fx, fy = _features(x, y, 3, prepare, compat)
    n = fx.shape[0]
    check_k(k, n, what)
    return _knn_lists(fx, k), _knn_lists(fy, k), n


def cycle_knn(
    x: Any, y: Any, k: int = 10, prepare: bool = True, compat: str = "exact"
) -> KnnResult:
    """Share of i that come back to themselves through a neighbour: platonic-rep ``cycle_knn``.

    ``mean_i 1[exists j in kNN_y(i): i in kNN_x(j)]`` (its ``knn_A[knn_B]`` with A = x, B = y):
    step to a y-space neighbour, then look among that item's x-space neighbours. Not symmetric
    in x and y. Neighbours as in :func:`mutual_knn`; needs ``1 <= k <= n - 1``.
    """
    kx, ky, n = _sequence_features(x, y, k, prepare, compat, "cycle_knn")
    back = kx[ky]  # (n, k, k): the x-neighbours of each y-neighbour of i
    hit = (back == np.arange(n)[:, None, None]).any(axis=(1, 2))
    return KnnResult(score=float(hit.mean()), k=int(k), n=n)


def lcs_knn(x: Any, y: Any, k: int = 10, prepare: bool = True, compat: str = "exact") -> KnnResult:
    """Mean length of the longest common subsequence of the two ordered k-NN lists of each i.

    platonic-rep ``lcs_knn``: neighbours ordered nearest first, score in ``[0, k]`` (not divided
    by ``k``, as there). Neighbours as in :func:`mutual_knn`; needs ``1 <= k <= n - 1``.
    """
    kx, ky, n = _sequence_features(x, y, k, prepare, compat, "lcs_knn")
    # dp[:, j] = LCS of the first i entries of kx and the first j entries of ky, all rows at once
    prev = np.zeros((n, k + 1), dtype=np.int64)
    for i in range(k):
        cur = np.zeros_like(prev)
        for j in range(k):
            same = kx[:, i] == ky[:, j]
            cur[:, j + 1] = np.where(same, prev[:, j] + 1, np.maximum(prev[:, j + 1], cur[:, j]))
        prev = cur
    return KnnResult(score=float(prev[:, k].mean()), k=int(k), n=n)


def edit_distance_knn(
    x: Any, y: Any, k: int = 10, prepare: bool = True, compat: str = "exact"
) -> KnnResult:
    """``1 - mean_i lev(kNN_x(i), kNN_y(i)) / k``: platonic-rep ``edit_distance_knn``.

    ``lev`` is the Levenshtein distance (insertions, deletions, substitutions, cost 1 each, as
    ``torchaudio.functional.edit_distance``) between the ordered k-NN lists; 1 when they agree
    in content and order. Neighbours as in :func:`mutual_knn`; needs ``1 <= k <= n - 1``.
    """
    kx, ky, n = _sequence_features(x, y, k, prepare, compat, "edit_distance_knn")
    prev = np.tile(np.arange(k + 1, dtype=np.int64), (n, 1))
    for i in range(k):
        cur = np.empty_like(prev)
        cur[:, 0] = i + 1
        for j in range(k):
            sub = prev[:, j] + (kx[:, i] != ky[:, j])
            cur[:, j + 1] = np.minimum(np.minimum(prev[:, j + 1] + 1, cur[:, j] + 1), sub)
        prev = cur
    return KnnResult(score=float(1 - prev[:, k].mean() / k), k=int(k), n=n)


def _sparse_hsic(rows: np.ndarray, cols: np.ndarray, a: np.ndarray, b: np.ndarray, m: int) -> float:
    """Unbiased HSIC of ``A``, ``B`` that are zero except ``A[rows, cols] = a``, same for b.

    ``(rows, cols)`` must be sorted row-major and off the diagonal.
    """
    keys = rows * m + cols
    rev = cols * m + rows
    pos = np.searchsorted(keys, rev)
    pos = np.minimum(pos, keys.size - 1)
    hit = keys[pos] == rev
    tr = float(a[hit] @ b[pos[hit]])  # sum_ij A_ij B_ji
    col_a = np.bincount(cols, weights=a, minlength=m)
    row_b = np.bincount(rows, weights=b, minlength=m)
    return (
        tr
        + float(a.sum()) * float(b.sum()) / ((m - 1) * (m - 2))
        - 2 * float(col_a @ row_b) / (m - 2)
    ) / (m * (m - 3))


def cknna(x: Any, y: Any, k: int = 10, prepare: bool = True, compat: str = "exact") -> CknnaResult:
    """CKNNA: CKA restricted to the pairs both spaces call neighbours (platonic-rep, unbiased).

    With ``K = x x^T``, ``L = y y^T`` and ``M_K[i, j] = 1`` iff j is among i's ``k`` nearest
    (self excluded, ties to the lower index): ``sim(K, L) = HSIC_u(M∘K, M∘L)`` with
    ``M = M_K ∘ M_L`` and ``score = sim(K, L) / sqrt(sim(K, K) sim(L, L))``. Stored sparsely
    (``n k`` entries). Needs ``n >= 4`` and ``2 <= k <= n - 1``. ``compat="platonic"``:
    rows L2-normalised and ``+ 1e-6`` in the denominator, as platonic-rep's ``cknna``.
    """
    _check_compat(compat, "cknna")
    fx, fy = _features(x, y, 4, prepare, compat)
    n = fx.shape[0]
    check_k(k, n, "cknna", low=2)
    parts: dict[str, list[np.ndarray]] = {
        "kr": [],
        "kc": [],
        "kv": [],
        "lr": [],
        "lc": [],
        "lv": [],
    }
    for (rows, gk, mk), (_, gl, ml) in zip(_knn_blocks(fx, k), _knn_blocks(fy, k), strict=True):
        for tag, g, mask in (("k", gk, mk), ("l", gl, ml)):
            r, c = np.nonzero(mask)
            parts[tag + "r"].append(r + rows.start)
            parts[tag + "c"].append(c)
            parts[tag + "v"].append(g[r, c])
    kr, kc, kv = (np.concatenate(parts["k" + s]) for s in "rcv")
    lr, lc, lv = (np.concatenate(parts["l" + s]) for s in "rcv")
    eps = PLATONIC_EPS if compat == "platonic" else 0.0
    return cknna_from_neighbours((kr, kc, kv), (lr, lc, lv), n, k, eps)


# --------------------------------------------------------------------------- SVCCA


def svcca(
    x: Any, y: Any, dims: int = 10, prepare: bool = False, compat: str = "exact"
) -> SvccaResult:
    """SVCCA: mean canonical correlation of the top-``dims`` SVD subspaces of x and y.

    Raghu et al. 2017 as platonic-rep's ``svcca`` computes it (``cca_dim = dims``): features
    scaled to unit variance, which google/svcca's ``cca_core`` does not do.

    Each side is centred and scaled to unit std per feature (``ddof=1``; constant features stay
    0), reduced to its top ``dims`` left singular vectors ``U`` (``(n, dims)``, orthonormal);
    the canonical correlations of two orthonormal bases are the singular values of
    ``U_x^T U_y``, and the score is their mean. Needs ``1 <= dims <= min(n - 1, d_x, d_y)``.

    ``compat="platonic"``: rows L2-normalised first and each feature divided by ``std + 1e-8``
    as platonic-rep does. Its ``torch.svd_lowrank`` (a randomized approximation of the same
    top-``dims`` subspace) and sklearn's iterative ``CCA`` are replaced by their exact
    counterparts: equal where the spectrum has a gap at ``dims``, see docs/metrics.md.
    """
    _check_compat(compat, "svcca")
    fx, fy = _features(x, y, 3, prepare, compat)
    n = fx.shape[0]
    limit = min(n - 1, fx.shape[1], fy.shape[1])
    if not isinstance(dims, (int, np.integer)) or not 1 <= dims <= limit:
        raise XlalignError(
            f"svcca: dims must be between 1 and min(n - 1, d_x, d_y) = {limit}; got {dims!r}"
        )
    bases = []
    for side, f in (("x", fx), ("y", fy)):
        c = f - f.mean(axis=0)
        sd = c.std(axis=0, ddof=1)
        if compat == "platonic":
            c /= sd + PLATONIC_STD_EPS
        else:
            c /= np.where(sd > 0, sd, 1.0)
        u, s, _ = np.linalg.svd(c, full_matrices=False)
        if s[0] == 0 or s[dims - 1] <= s[0] * max(c.shape) * np.finfo(np.float64).eps:
            reason = f"{side} has fewer than dims={dims} non-zero directions after centring"
            return SvccaResult(score=None, dims=int(dims), n=n, undefined_reason=reason)
        bases.append(u[:, :dims])
    rho = np.linalg.svd(bases[0].T @ bases[1], compute_uv=False)
    return SvccaResult(score=float(np.clip(rho, 0.0, 1.0).mean()), dims=int(dims), n=n)


# --------------------------------------------------------------------------- semantic hub


def semantic_hub_score(x: Any, y: Any) -> HubResult:
    """Mean ``cos(x_i, y_i)`` minus mean ``cos(x_i, y_j)`` over ``i != j`` (Wu et al. 2024).

    The off-diagonal mean is the exact null mean over derangements (the z's null, over all
    permutations, has mean ``sum S / n^2``, so this is ``n/(n-1)`` times matched minus it); it
    comes from sums of unit rows:
    ``sum_ij S_ij = (sum_i x_i) . (sum_j y_j)``; nothing ``n x n`` is formed. Needs ``n >= 2``.
    """
    xa, ya = check_pair(x, y, min_pairs=2)
    xu, yu = UnitRows(xa, "x"), UnitRows(ya, "y")
    n = xu.n
    sx = np.zeros(xu.d)
    sy = np.zeros(yu.d)
    diag = 0.0
    for start in range(0, n, CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        xb, yb = xu.take(rows), yu.take(rows)
        sx += xb.sum(axis=0)
        sy += yb.sum(axis=0)
        diag += float(np.einsum("ij,ij->", xb, yb))
    return hub_result(diag, float(sx @ sy), n)


# --------------------------------------------------------------------------- site x site matrices

#: Above this many rows the CKA matrix skips its permutation null (each permutation re-reads
#: one ``n x n`` Gram matrix per site of the second model).
CKA_NULL_MAX_N = 2000
#: The Gram route keeps every site's ``n x n`` centred Gram matrix; above this many float64
#: entries in all, or when the features are narrower than ``n``, CKA goes through features.
_GRAM_MAX_ENTRIES = 2**25


@dataclass(frozen=True)
class SiteMatrix(Result):
    """A metric between every site of one model (rows) and every site of another (columns).

    ``value`` ``(n_x, n_y)`` float64, NaN where undefined; ``reasons`` maps ``(i, j)`` to why.
    For CKA with a permutation null: ``null_mean``, ``null_std`` and ``p_value``
    (``(1 + #{null >= value}) / (n_perms + 1)``), the same ``n_perms`` row permutations for
    every cell; otherwise ``None`` and ``null_reason`` says why.
    """

    value: np.ndarray
    n: int
    reasons: dict[tuple[int, int], str]
    null_mean: np.ndarray | None = None
    null_std: np.ndarray | None = None
    p_value: np.ndarray | None = None
    n_perms: int = 0
    null_reason: str | None = None


def _site_list(arrays: Any, name: str) -> list[np.ndarray]:
    out = [as_float_array(a, f"{name}[{i}]") for i, a in enumerate(arrays)]
    if not out:
        raise XlalignError(f"{name}: give at least one site's array")
    for i, a in enumerate(out):
        check_finite(a, f"{name}[{i}]")
    return out


def _same_rows(xs: list[np.ndarray], ys: list[np.ndarray], min_pairs: int) -> int:
    rows = {a.shape[0] for a in [*xs, *ys]}
    if len(rows) != 1:
        raise XlalignError(
            f"every site of both models needs one row per prompt, the same prompts; got row "
            f"counts {sorted(rows)}"
        )
    n = rows.pop()
    if n < min_pairs:
        raise XlalignError(f"need at least {min_pairs} pairs (rows), got {n}")
    return n


def linear_cka_matrix(
    xs: Any, ys: Any, *, n_perms: int = 0, seed: int = 0, null_max_n: int = CKA_NULL_MAX_N
) -> SiteMatrix:
    """Linear CKA (biased, as :func:`linear_cka`) of every ``xs[i]`` with every ``ys[j]``.

    ``xs``: one ``(n, d_x)`` array per site of model A; ``ys``: one ``(n, d_y)`` per site of
    model B, rows paired (the same prompts); widths may differ. Each site's self-term is
    computed once, so the cost is ``O(sites)`` self-terms plus one cross term per cell: through
    centred Gram matrices (``<Kc_i, Lc_j>_F``, ``O(n^2)`` per cell) when that is below the
    feature route's ``O(n d_x d_y)`` and memory allows, else through ``||Xc^T Yc||_F^2``.

    ``n_perms > 0`` adds a permutation null where it is cheap (the Gram route and
    ``n <= null_max_n``): B's rows are shuffled by ``n_perms`` permutations drawn from
    ``seed``, the same ones for every cell.
    """
    xa, ya = _site_list(xs, "xs"), _site_list(ys, "ys")
    n = _same_rows(xa, ya, 3)
    if n_perms < 0:
        raise XlalignError(f"n_perms must be >= 0, got {n_perms}")
    xc = [_centred(a.astype(np.float64, copy=False)) for a in xa]
    yc = [_centred(a.astype(np.float64, copy=False)) for a in ya]
    reasons: dict[tuple[int, int], str] = {}
    for side, cs, other in (("x", xc, len(yc)), ("y", yc, len(xc))):
        for i, (_, has_var) in enumerate(cs):
            if not has_var:
                why = f"{side} site {i} has no variance: all its rows are identical, so CKA is 0/0"
                for j in range(other):
                    reasons[(i, j) if side == "x" else (j, i)] = why
    widths = [a.shape[1] for a in [*xa, *ya]]
    fits = (len(xa) + len(ya)) * n * n <= _GRAM_MAX_ENTRIES
    gram = fits and n <= float(np.median(widths)) ** 2
    null_reason: str | None
    if not gram and n_perms > 0:
        null_reason = (
            f"no permutation null: {n} rows make the Gram route too costly "
            f"(too many Gram entries to hold, or n above the feature widths' product)"
        )
    elif n > null_max_n and n_perms > 0:
        null_reason = f"no permutation null: {n} rows > {null_max_n}"
    else:
        null_reason = None if n_perms > 0 else "no permutation null asked for (n_perms = 0)"
    value = np.full((len(xa), len(ya)), np.nan)
    null_mean = null_std = p_value = None
    if gram:
        kx = np.stack([_unit_gram(c) if v else np.zeros(n * n) for c, v in xc])
        ky = [_unit_gram(c) if v else np.zeros(n * n) for c, v in yc]
        do_null = n_perms > 0 and n <= null_max_n
        if do_null:
            rng = np.random.default_rng(seed)
            perms = [rng.permutation(n) for _ in range(n_perms)]
            null_mean, null_std = np.zeros_like(value), np.zeros_like(value)
            p_value = np.zeros_like(value)
        for j, kyj in enumerate(ky):
            value[:, j] = kx @ kyj
            if do_null:
                sq = kyj.reshape(n, n)
                null = np.empty((len(xa), n_perms))
                step = max(1, _BLOCK_ENTRIES // (n * n))  # permuted Grams per matrix product
                for lo in range(0, n_perms, step):
                    batch = np.stack([sq[np.ix_(p, p)].ravel() for p in perms[lo : lo + step]])
                    null[:, lo : lo + step] = kx @ batch.T
                null_mean[:, j] = null.mean(axis=1)  # type: ignore[index]
                null_std[:, j] = null.std(axis=1)  # type: ignore[index]
                p_value[:, j] = (1 + (null >= value[:, j : j + 1] - 1e-12).sum(1)) / (n_perms + 1)  # type: ignore[index]
    else:
        nx = [np.sqrt(_cross_sq(c, c)) if v else 0.0 for c, v in xc]
        ny = [np.sqrt(_cross_sq(c, c)) if v else 0.0 for c, v in yc]
        for i, (ci, vi) in enumerate(xc):
            for j, (cj, vj) in enumerate(yc):
                if vi and vj:
                    value[i, j] = _cross_sq(ci, cj) / (nx[i] * ny[j])
    for i, j in reasons:
        value[i, j] = np.nan
        for arr in (null_mean, null_std, p_value):
            if arr is not None:
                arr[i, j] = np.nan
    return SiteMatrix(
        value=value, n=n, reasons=reasons, null_mean=null_mean, null_std=null_std,
        p_value=p_value, n_perms=n_perms if p_value is not None else 0, null_reason=null_reason,
    )  # fmt: skip


def _unit_gram(c: np.ndarray) -> np.ndarray:
    """The centred Gram matrix ``c c^T`` flattened and scaled to unit Frobenius norm."""
    k = c @ c.T
    return (k / np.sqrt(np.einsum("ij,ij->", k, k))).ravel()


def _knn_sets(f: np.ndarray, k: int) -> np.ndarray:
    """``(n, k)`` int: each row's ``k`` nearest rows (self excluded, ties to the lower index)."""
    out = np.empty((f.shape[0], k), dtype=np.int64)
    for rows, _, mask in _knn_blocks(f, k):
        out[rows] = np.nonzero(mask)[1].reshape(-1, k)
    return out


def mutual_knn_matrix(xs: Any, ys: Any, k: int = 10, prepare: bool = True) -> SiteMatrix:
    """:func:`mutual_knn` of every ``xs[i]`` with every ``ys[j]`` (rows paired; widths free).

    Each site's k-NN sets are found once (``O(sites)`` neighbour searches); a cell then costs
    ``O(n k^2)``. Equal to calling :func:`mutual_knn` on each pair, ties included.
    """
    xa, ya = _site_list(xs, "xs"), _site_list(ys, "ys")
    n = _same_rows(xa, ya, 3)
    check_k(k, n, "mutual_knn")
    prep = (lambda a, s: _prepare(a, 0.95, s)) if prepare else (lambda a, s: a.astype(np.float64))
    nx = [_knn_sets(prep(a, f"xs[{i}]"), k) for i, a in enumerate(xa)]
    ny = [_knn_sets(prep(a, f"ys[{j}]"), k) for j, a in enumerate(ya)]
    value = np.empty((len(xa), len(ya)))
    for i, a in enumerate(nx):
        for j, b in enumerate(ny):
            value[i, j] = (a[:, :, None] == b[:, None, :]).sum() / (n * k)
    return SiteMatrix(value=value, n=n, reasons={}, null_reason="mutual k-NN has no null here")
