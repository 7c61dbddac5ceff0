"""Permutation nulls of the similarity metrics, and calibrated scores.

What a similarity reaches when the pairing is scrambled is not 0: biased CKA of independent
data at ``n = 30, d = 25`` is about 0.5, P@1 of unrelated vectors is about ``1/n``, and the
maximum over 26 sites of any of them is larger still. A value means something only beside its
null. Here the null of each metric is its value on the same two sets of vectors with the rows
of ``y`` permuted (``y[perm]``: pair ``i`` becomes ``(x_i, y_perm[i])``), for ``K`` permutations
(:func:`~xlalign.metrics.permutation.draw_permutations`, seeded; within strata when the sweep is
stratified). Nothing is recomputed from the vectors: every null value is a gather from the
matrices the point estimate built (:class:`~xlalign.metrics.pairwise.Pair`):

- **CKA** (biased and debiased): ``<Kc, Lc[perm][:, perm]>`` with the centred Gram matrices
  (centring commutes with permuting rows); the debiased one also needs the diagonals and row
  sums of the diagonal-free kernels, which permute as vectors. One gather serves both.
- **mutual k-NN**: each side's neighbour sets are fixed; ``y``'s are relabelled by the
  permutation and intersected with ``x``'s (``K x n x k`` lookups).
- **CKNNA**: the k-NN-restricted HSIC recomputed from the permuted neighbour lists.
- **P@1 and MEXA**: each row's and column's nearest candidate (and whether it is nearest by
  more than the tie tolerance) is fixed; a permuted pair is a hit when its partner is that
  candidate.
- **semantic-hub gap and z**: the matched mean ``mean_i S[i, perm[i]]``; the z's exact null
  mean and standard deviation do not depend on the permutation.

From a null: ``p_value = (1 + #{null >= observed}) / (K + 1)`` (add-one: never 0),
``null_q95`` the null's 95% quantile, and, as in Gröger, Wen and Brbić's
``calibrated_similarity.calibrate`` (which this agrees with on the same inputs: tests compare
the two), the threshold ``tau`` (the ``ceil(0.95 (K + 1))``-th smallest of the observed value
and the null together) and the calibrated score ``clip((value - tau) / (smax - tau), 0, 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from xlalign.errors import XlalignError
from xlalign.metrics._checks import TIE_TOL, Result, check_pair
from xlalign.metrics.pairwise import Pair, Side, unbiased_hsic_centred
from xlalign.metrics.permutation import ZResult, draw_permutations
from xlalign.metrics.similarity import cknna_from_neighbours

__all__ = [
    "NULL_METRICS",
    "CalibratedResult",
    "calibrated",
    "null_distributions",
    "null_summary",
]

#: Metrics (record names) with a permutation null, and the largest value each can take.
NULL_METRICS: dict[str, float | None] = {
    "z": None,
    "p1_xy": 1.0,
    "p1_yx": 1.0,
    "mexa": 1.0,
    "semantic_hub": 2.0,
    "cka": 1.0,
    "cka_unbiased": 1.0,
    "mutual_knn": 1.0,
    "cknna": 1.0,
}
#: Permutations per batched gather (bounds the ``(chunk, n)`` index arrays).
_CHUNK = 64


@dataclass(frozen=True)
class CalibratedResult(Result):
    """A similarity with its permutation null (see the module docstring for each field)."""

    metric: str
    value: float | None
    p_value: float | None
    null_q95: float | None
    threshold: float | None
    calibrated: float | None
    n_perms: int
    n: int
    alpha: float
    undefined_reason: str | None = None


def null_summary(observed: float | None, null: np.ndarray) -> dict[str, float | None]:
    """``{"p_value", "null_q95"}`` of ``observed`` against ``null`` ``(K,)`` (NaN entries, from
    permutations where the metric is undefined, are left out)."""
    kept = np.asarray(null, dtype=np.float64)
    kept = kept[np.isfinite(kept)]
    if observed is None or not math.isfinite(observed) or kept.size == 0:
        return {"p_value": None, "null_q95": None}
    return {
        "p_value": float((1 + np.count_nonzero(kept >= observed)) / (kept.size + 1)),
        "null_q95": float(np.quantile(kept, 0.95)),
    }


def _chunks(perms: np.ndarray) -> Iterator[np.ndarray]:
    for k0 in range(0, perms.shape[0], _CHUNK):
        yield perms[k0 : k0 + _CHUNK]


def _nearest(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest column and whether it is nearest by more than ``TIE_TOL``."""
    n = s.shape[1]
    if n < 2:
        return np.argmax(s, axis=1), np.ones(s.shape[0], dtype=bool)
    top2 = -np.partition(-s, 1, axis=1)[:, :2]
    return np.argmax(s, axis=1), (top2[:, 0] - top2[:, 1]) > TIE_TOL


def _retrieval_nulls(pair: Pair, perms: np.ndarray, names: Collection[str]) -> dict[str, Any]:
    s = pair.cosines()
    row_best, row_clear = _nearest(s)
    col_best, col_clear = _nearest(s.T)
    idx = np.arange(pair.n)
    # pair i is (x_i, y_perm[i]): x_i retrieves it when its nearest y is perm[i]; y_perm[i]
    # retrieves x_i when its nearest x is i
    row = (row_best[None, :] == perms) & row_clear[None, :]
    col = (col_best[perms] == idx[None, :]) & col_clear[perms]
    out: dict[str, Any] = {}
    if "p1_xy" in names:
        out["p1_xy"] = row.mean(axis=1)
    if "p1_yx" in names:
        out["p1_yx"] = col.mean(axis=1)
    if "mexa" in names:
        out["mexa"] = (row & col).mean(axis=1)
    return out


def _matched_means(s: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """``mean_i s[i, perm[i]]`` for every permutation ``(K,)``."""
    return np.take_along_axis(s, perms.T, axis=1).mean(axis=0)  # type: ignore[no-any-return]


def _cka_nulls(pair: Pair, perms: np.ndarray, names: Collection[str]) -> dict[str, Any]:
    kx, hxx, x_var = pair.x.gram()
    ky, hyy, y_var = pair.y.gram()
    n = pair.n
    k = perms.shape[0]
    out: dict[str, Any] = {}
    if not (x_var and y_var):
        return {m: np.full(k, np.nan) for m in ("cka", "cka_unbiased") if m in names}
    cross = np.empty(k)
    for c0, chunk in zip(range(0, k, _CHUNK), _chunks(perms), strict=True):
        for j, p in enumerate(chunk):
            cross[c0 + j] = float(np.einsum("ij,ij->", kx, np.take(ky[p], p, axis=1)))
    if "cka" in names:
        out["cka"] = cross / math.sqrt(hxx * hyy)
    if "cka_unbiased" in names and n >= 4:
        dx, dy = np.diag(kx), np.diag(ky)
        tx, ty = float(dx.sum()), float(dy.sum())
        h_xy = unbiased_hsic_centred(cross, (dx[None, :] * dy[perms]).sum(axis=1), tx, ty, n)
        h_xx = unbiased_hsic_centred(hxx, float(dx @ dx), tx, tx, n)
        h_yy = unbiased_hsic_centred(hyy, float(dy @ dy), ty, ty, n)
        out["cka_unbiased"] = (
            h_xy / math.sqrt(h_xx * h_yy) if h_xx > 0 and h_yy > 0 else np.full(k, np.nan)
        )
    return out


def _knn_lists(mask: np.ndarray, k: int) -> np.ndarray:
    return np.nonzero(mask)[1].reshape(mask.shape[0], k)


def _knn_nulls(pair: Pair, perms: np.ndarray, names: Collection[str], k: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    n = pair.n
    (gx, mx), (gy, my) = pair.x.knn(k), pair.y.knn(k)
    ny = _knn_lists(my, k)
    rows = np.arange(n)
    if "mutual_knn" in names:
        vals = np.empty(perms.shape[0])
        for c0, chunk in zip(range(0, len(perms), _CHUNK), _chunks(perms), strict=True):
            inv = np.empty_like(chunk)
            np.put_along_axis(inv, chunk, np.broadcast_to(rows, chunk.shape), axis=1)
            # y_perm[i]'s neighbours, in the permuted row labels
            nb = np.take_along_axis(inv[:, None, :], ny[chunk].reshape(len(chunk), 1, -1), 2)
            nb = nb.reshape(len(chunk), n, k)
            vals[c0 : c0 + len(chunk)] = mx[rows[None, :, None], nb].sum(axis=(1, 2)) / (n * k)
        out["mutual_knn"] = vals
    if "cknna" in names:
        kr, kc = np.nonzero(mx)
        kv = gx[kr, kc]
        vals = np.empty(perms.shape[0])
        for j, p in enumerate(perms):
            g = np.take(gy[p], p, axis=1)
            msk = np.take(my[p], p, axis=1)
            lr, lc = np.nonzero(msk)
            res = cknna_from_neighbours((kr, kc, kv), (lr, lc, g[lr, lc]), n, k)
            vals[j] = np.nan if res.score is None else res.score
        out["cknna"] = vals
    return out


def null_distributions(
    pair: Pair,
    perms: np.ndarray,
    names: Collection[str],
    *,
    z: ZResult | None = None,
    center: bool = False,
    k: int = 10,
) -> dict[str, np.ndarray]:
    """Each metric of ``names`` (:data:`NULL_METRICS`) on ``(x, y[perm])`` for every row of
    ``perms`` ``(K, n)``: ``{name: (K,) float64}`` (NaN where undefined).

    ``z``: the pair's exact z (its null mean and std; from the cosines of centred rows with
    ``center``), needed for ``"z"``. ``k``: the k-NN metrics' neighbours (the sweep's 10).
    """
    perms = np.asarray(perms)
    if perms.ndim != 2 or perms.shape[1] != pair.n:
        raise XlalignError(f"perms must be (K, n) with n = {pair.n}; got {perms.shape}")
    unknown = set(names) - set(NULL_METRICS)
    if unknown:
        raise XlalignError(f"no permutation null for {', '.join(sorted(unknown))}")
    out: dict[str, np.ndarray] = {}
    if set(names) & {"p1_xy", "p1_yx", "mexa"}:
        out |= _retrieval_nulls(pair, perms, names)
    if "semantic_hub" in names:
        s = pair.cosines()
        n = pair.n
        total = float(s.sum())
        matched = _matched_means(s, perms)
        out["semantic_hub"] = matched - (total - n * matched) / (n * (n - 1))
    if "z" in names and z is not None and z.z is not None and z.null_std > 0:
        out["z"] = (_matched_means(pair.cosines(center), perms) - z.null_mean) / z.null_std
    if set(names) & {"cka", "cka_unbiased"}:
        out |= _cka_nulls(pair, perms, names)
    if set(names) & {"mutual_knn", "cknna"}:
        out |= _knn_nulls(pair, perms, names, k)
    return out


def _observed(pair: Pair, metric: str) -> tuple[float | None, str | None, ZResult | None]:
    if metric == "z":
        res = pair.z()
        return res.z, res.undefined_reason, res
    if metric in ("p1_xy", "p1_yx", "mexa"):
        return float(getattr(pair.retrieval(), metric)), None, None
    fn = {
        "semantic_hub": lambda: pair.hub().score,
        "cka": lambda: pair.cka().cka,
        "cka_unbiased": lambda: pair.cka_unbiased().cka,
        "mutual_knn": lambda: pair.mutual_knn().score,
        "cknna": lambda: pair.cknna().score,
    }[metric]
    value = fn()
    return (None, "undefined on these vectors", None) if value is None else (value, None, None)


def calibrated(
    x: Any,
    y: Any,
    metric: str,
    n_perms: int = 1000,
    seed: int = 0,
    *,
    alpha: float = 0.05,
    smax: float | None = None,
) -> CalibratedResult:
    """A similarity of paired ``x``, ``y`` (row i pairs with row i) beside its permutation null.

    ``metric``: one of :data:`NULL_METRICS`. Returns the value, the add-one ``p_value``, the
    null's 95% quantile ``null_q95``, and ``calibrated_similarity.calibrate``'s threshold and
    calibrated score at ``alpha`` (``smax``: the metric's largest value by default, 1 for CKA,
    k-NN and P@1; the hub gap's is 2; z has none, so its score is ``max(0, value - tau)``).
    The permutations are :func:`~xlalign.metrics.permutation.draw_permutations`'s
    (``np.random.RandomState(seed)``), not the package's torch generator: the two agree within
    Monte Carlo error, not draw for draw.
    """
    if metric not in NULL_METRICS:
        raise XlalignError(f"metric must be one of {', '.join(NULL_METRICS)}; got {metric!r}")
    if n_perms < 1:
        raise XlalignError(f"n_perms must be at least 1, got {n_perms}")
    if not 0 < alpha < 1:
        raise XlalignError(f"alpha must be in (0, 1), got {alpha}")
    xa, ya = check_pair(x, y, min_pairs=5 if metric == "cka_unbiased" else 3, same_dim=False)
    pair = Side(xa, "x").pair_with(Side(ya, "y"))
    value, why, z = _observed(pair, metric)
    n = pair.n
    if value is None:
        return CalibratedResult(metric, None, None, None, None, None, n_perms, n, alpha, why)
    perms = draw_permutations(n, n_perms, seed)
    null = null_distributions(pair, perms, {metric}, z=z)[metric]
    summary = null_summary(value, null)
    kept = np.sort(np.append(null[np.isfinite(null)], value))
    tau = float(kept[min(max(math.ceil((1 - alpha) * kept.size) - 1, 0), kept.size - 1)])
    top = NULL_METRICS[metric] if smax is None else smax
    if top is None:
        score = max(0.0, value - tau)
    else:
        score = float(np.clip((value - tau) / max(top - tau, 1e-12), 0.0, 1.0))
    return CalibratedResult(
        metric, value, summary["p_value"], summary["null_q95"], tau, score, n_perms, n, alpha
    )
