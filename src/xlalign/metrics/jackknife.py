"""Intervals that contain their estimate: exact leave-one-out jackknife, and Wilson for shares.

The pair bootstrap draws some pairs twice, and a pair drawn twice is not a new pair: in the
z's scrambled null a sentence can meet a copy of its own translation (the resampled z falls),
and in CKA a row drawn twice weighs twice in both Gram matrices (the resampled CKA rises). Near
perfect alignment the whole bootstrap interval can then lie on one side of the estimate.

The intervals here never duplicate a pair:

- **z, CKA (biased and debiased), the semantic-hub gap**: the delete-one jackknife. The value
  without pair ``i`` is computed for every ``i`` exactly from ``n x n`` matrices built once
  (tests compare each with a brute-force recomputation), the jackknife standard error is
  ``sqrt((n - 1) / n * sum_i (v_i - mean v)^2)``, and the interval is the estimate plus or minus
  the normal quantile times it: centred on the estimate, so it always contains it. For the
  debiased CKA (a ratio of U-statistics) the plain jackknife variance counts the pairwise
  interaction part twice (Efron and Stein 1981), about 1.8x too large at n = 50, d = 32; up to
  :data:`CORRECTION_MAX_N` pairs half the delete-2 jackknife's estimate of that surplus is
  subtracted (exactly, from ``n x n`` matrices; see :func:`jackknife_ci` for why half).
- **P@1 and MEXA** (shares of pairs retrieved): the Wilson score interval of a binomial share,
  which stays inside [0, 1], is never empty at 0 or 1, and contains the share.

``benchmarks/bench_coverage.py`` measures how often these intervals cover the population value
on simulated pairs (docs/metrics.md carries the table).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np

from xlalign.errors import XlalignError
from xlalign.metrics._checks import TIE_TOL
from xlalign.metrics.bootstrap import CI

__all__ = [
    "competitors",
    "hsic_loo",
    "jackknife_ci",
    "loo2_cka_unbiased",
    "loo_cka",
    "loo_cka_unbiased",
    "loo_hub",
    "loo_p1",
    "loo_z",
    "wilson_ci",
]


def _quantile(level: float) -> float:
    if not 0 < level < 1:
        raise XlalignError(f"level must be in (0, 1); got {level}")
    return NormalDist().inv_cdf((1 + level) / 2)


#: Up to this many pairs the debiased CKA's jackknife variance is corrected by the delete-2
#: jackknife (three ``n x n`` matrix products); above it the plain jackknife (conservative by
#: a factor ``1 + O(d/n)`` in variance) is used.
CORRECTION_MAX_N = 1024
#: Share of the delete-2 surplus subtracted (see :func:`jackknife_ci`).
SURPLUS_WEIGHT = 0.5


def jackknife_ci(
    loo: np.ndarray,
    point: float | None,
    level: float = 0.95,
    loo2: np.ndarray | None = None,
) -> CI:
    """The normal interval ``point +- q * se`` from leave-one-out values ``loo`` ``(n,)``.

    ``se`` is the jackknife standard error; NaN entries (undefined without that pair) are left
    out and counted in ``n_skipped``. ``n_boot`` of the result is 0 (no resamples).

    ``loo2`` ``(n, n)``: the value without pairs ``i`` and ``j``. The jackknife variance of a
    U-statistic counts its second-order (pair-interaction) part twice (Efron and Stein 1981);
    ``sum_{i<j} D_ij^2`` with ``D_ij = v - v_(i) - v_(j) + v_(ij)`` estimates that surplus and
    is subtracted, weighted by :data:`SURPLUS_WEIGHT` (the plain variance is kept if the
    difference is not positive). The weight is measured, not derived: the whole surplus
    corrects the variance's bias, but the estimate is noisy, and the interval it gives
    under-covers with few pairs (89-93% at N = 50, d = 32 for a 95% interval); half of it keeps
    the coverage of ``benchmarks/bench_coverage.py`` within 93-97% at N = 50, 200 and 2,000.
    """
    q = _quantile(level)
    loo = np.asarray(loo, dtype=np.float64)
    ok = np.isfinite(loo)
    kept = loo[ok]
    skipped = int(loo.size - kept.size)
    if point is None or not math.isfinite(point) or kept.size < 2:
        return CI(None, None, level, 0, None if point is None else float(point), skipped)
    m = kept.size
    var = (m - 1) / m * float(((kept - kept.mean()) ** 2).sum())
    if loo2 is not None and skipped == 0:
        d = point - loo[:, None] - loo[None, :] + np.asarray(loo2, dtype=np.float64)
        surplus = float(np.nansum(np.triu(d, 1) ** 2))
        if math.isfinite(surplus) and var - SURPLUS_WEIGHT * surplus > 0:
            var -= SURPLUS_WEIGHT * surplus
    se = math.sqrt(var)
    return CI(float(point) - q * se, float(point) + q * se, level, 0, float(point), skipped)


def wilson_ci(hits: np.ndarray, level: float = 0.95) -> CI:
    """The Wilson score interval of the share of True in ``hits`` ``(n,)``."""
    q = _quantile(level)
    hits = np.asarray(hits, dtype=bool)
    n = hits.size
    if n == 0:
        raise XlalignError("need at least one pair for an interval")
    p = float(hits.mean())
    denom = 1 + q * q / n
    centre = (p + q * q / (2 * n)) / denom
    half = q * math.sqrt(p * (1 - p) / n + q * q / (4 * n * n)) / denom
    # the interval holds p in exact arithmetic; rounding must not push p outside it (at 0, 1)
    return CI(min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)), level, 0, p, 0)


# --------------------------------------------------------------------------- leave-one-out


def competitors(s: np.ndarray) -> np.ndarray:
    """``a[i, j]``: candidate ``j`` is at least as near to row ``i`` as its partner (a miss)."""
    a = s >= np.diag(s)[:, None] - TIE_TOL
    np.fill_diagonal(a, False)
    return a


def loo_z(c: np.ndarray) -> np.ndarray:
    """Exact-null z of ``c[-i, -i]`` for every ``i`` (``c`` a cosine matrix, best doubly
    centred first: z does not change, float64 keeps its digits): ``(trace - total/m) /
    sqrt(sum d^2 / (m - 1))``, ``d`` the doubly centred matrix (Hoeffding's moments),
    ``m = n - 1``. NaN where the null has no variance."""
    n = c.shape[0]
    m = n - 1
    diag = np.diag(c)
    r, col = c.sum(1), c.sum(0)
    total = r.sum()
    sq = (c * c).sum()
    row_sq, col_sq = (c * c).sum(1), (c * c).sum(0)
    trace = diag.sum() - diag
    total_i = total - r - col + diag
    sq_i = sq - row_sq - col_sq + diag**2
    # sum over j != i of (r_j - c_ji)^2 and of (col_k - c_ik)^2
    rr = (r @ r) - 2 * (c.T @ r) + col_sq - (r - diag) ** 2
    cc = (col @ col) - 2 * (c @ col) + row_sq - (col - diag) ** 2
    dd = sq_i - rr / m - cc / m + total_i**2 / m**2
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (trace - total_i / m) / np.sqrt(dd / (m - 1))
    return np.where(dd > 0, z, np.nan)


def loo_p1(s: np.ndarray) -> np.ndarray:
    """P@1 (rows retrieve columns, ties are misses) without pair ``i``, for every ``i``."""
    n = s.shape[0]
    a = competitors(s)
    count = a.sum(1)
    hits = (count == 0).sum()
    # without pair i: row i is gone, and a row j whose only competitor was column i now hits
    rescued = ((count == 1)[:, None] & a).sum(0)
    return (hits - (count == 0) + rescued) / (n - 1)  # type: ignore[no-any-return]


def hsic_loo(k: np.ndarray, ell: np.ndarray) -> np.ndarray:
    """``tr(K' H L' H)`` of the kernels without row/column ``i``, for every ``i``."""
    n = k.shape[0]
    m = n - 1
    kd, ld = np.diag(k), np.diag(ell)
    r, s = k.sum(1), ell.sum(1)
    kl = k * ell
    kl_rows = kl.sum(1)
    s_kl = kl.sum() - 2 * kl_rows + kd * ld
    dot = (r @ s) - ell @ r - k @ s + kl_rows - (r - kd) * (s - ld)
    tot_k = r.sum() - 2 * r + kd
    tot_l = s.sum() - 2 * s + ld
    return s_kl - 2 * dot / m + tot_k * tot_l / m**2  # type: ignore[no-any-return]


def loo_cka(k: np.ndarray, ell: np.ndarray) -> np.ndarray:
    """Biased linear CKA without pair ``i``, for every ``i``, from the Gram matrices ``k``,
    ``ell`` (``(n, n)``; centred ones keep a large shared offset from swamping float64)."""
    return _ratio(hsic_loo(k, ell), hsic_loo(k, k), hsic_loo(ell, ell))


def _ratio(kl: np.ndarray, kk: np.ndarray, ll: np.ndarray) -> np.ndarray:
    """CKA from its three HSICs, elementwise; NaN where a side's HSIC is not positive."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = kl / np.sqrt(kk * ll)
    return np.where((kk > 0) & (ll > 0), out, np.nan)


def _song(t: Any, a: Any, b: Any, c: Any, m: int) -> Any:
    """``[tr(K~L~) + 1'K~1 1'L~1 / ((m-1)(m-2)) - 2/(m-2) 1'K~L~1] / (m(m-3))`` from its
    four sums (arrays broadcast), ``K~`` the kernel with its diagonal zeroed."""
    return (t + a * b / ((m - 1) * (m - 2)) - 2 * c / (m - 2)) / (m * (m - 3))


def _zero_diagonal(
    k: np.ndarray, ell: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(K~, L~, K~ 1, L~ 1, K~ o L~)``: what every unbiased-HSIC deletion formula reads."""
    kt, lt = k.copy(), ell.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    return kt, lt, kt.sum(1), lt.sum(1), kt * lt


def _hsic_u_loo(k: np.ndarray, ell: np.ndarray) -> np.ndarray:
    """Song et al.'s unbiased HSIC of ``k``, ``ell`` without pair ``i`` ``(n,)``."""
    n = k.shape[0]
    kt, lt, k1, l1, prod = _zero_diagonal(k, ell)
    t_all, sk, sl, kl = float(prod.sum()), float(k1.sum()), float(l1.sum()), float(k1 @ l1)
    t_i = t_all - 2 * prod.sum(1)
    kl_i = kl - kt @ l1 - lt @ k1 + prod.sum(1) - k1 * l1
    return np.asarray(_song(t_i, sk - 2 * k1, sl - 2 * l1, kl_i, n - 1))


def loo_cka_unbiased(k: np.ndarray, ell: np.ndarray) -> np.ndarray:
    """Debiased linear CKA (Song et al.'s unbiased HSIC) without pair ``i``, for every ``i``;
    NaN where a side's HSIC with itself is not positive. Needs ``n >= 5``."""
    if k.shape[0] < 5:
        return np.full(k.shape[0], np.nan)
    return _ratio(*(_hsic_u_loo(a, b) for a, b in ((k, ell), (k, k), (ell, ell))))


def _hsic_u_loo2(k: np.ndarray, ell: np.ndarray) -> np.ndarray:
    """Song et al.'s unbiased HSIC without pairs ``i`` and ``j`` ``(n, n)`` (diagonal: NaN)."""
    n = k.shape[0]
    kt, lt, k1, l1, prod = _zero_diagonal(k, ell)
    p = prod.sum(1)
    t_all, sk, sl, kl = float(prod.sum()), float(k1.sum()), float(l1.sum()), float(k1 @ l1)
    m = n - 2
    t = t_all - 2 * p[:, None] - 2 * p[None, :] + 2 * prod
    s_k = sk - 2 * k1[:, None] - 2 * k1[None, :] + 2 * kt
    s_l = sl - 2 * l1[:, None] - 2 * l1[None, :] + 2 * lt
    u, v = lt @ k1, kt @ l1
    cross = kt @ lt  # cross[i, j] = sum_a K~_ai L~_aj
    whole = kl - (u + v)[:, None] - (u + v)[None, :] + p[:, None] + p[None, :] + cross + cross.T
    at_i = (k1[:, None] - kt) * (l1[:, None] - lt)  # the a = i term, row i, column j
    c = whole - at_i - at_i.T
    out = _song(t, s_k, s_l, c, m)
    np.fill_diagonal(out, np.nan)
    return out  # type: ignore[no-any-return]


def loo2_cka_unbiased(k: np.ndarray, ell: np.ndarray) -> np.ndarray:
    """Debiased linear CKA without pairs ``i`` and ``j``, for every ``i != j`` ``(n, n)``
    (diagonal NaN; NaN where a side's HSIC with itself is not positive). Needs ``n >= 7``."""
    n = k.shape[0]
    if n < 7:
        return np.full((n, n), np.nan)
    return _ratio(_hsic_u_loo2(k, ell), _hsic_u_loo2(k, k), _hsic_u_loo2(ell, ell))


def loo_hub(s: np.ndarray) -> np.ndarray:
    """The semantic-hub gap (mean matched cosine minus mean mismatched) without pair ``i``."""
    n = s.shape[0]
    m = n - 1
    diag = np.diag(s)
    total = float(s.sum())
    d_i = diag.sum() - diag
    total_i = total - s.sum(1) - s.sum(0) + diag
    return d_i / m - (total_i - d_i) / (m * (m - 1))  # type: ignore[no-any-return]
