"""Retrieval of a pair's partner among all candidates: P@1 both ways, MEXA, MRR, LASER xSIM.

All scores come from the cosine matrix ``S[i, j] = cos(x_i, y_j)`` in float64, computed in row
blocks so that at most ``block_size`` rows of the ``N x N`` matrix exist at a time (and at most
``2**25`` entries, 256 MiB, whatever ``block_size`` says).

Ties are misses: cosines within ``TIE_TOL = 1e-10`` of each other count as equal (float64
rounding of one cosine depends on where BLAS blocks it, so exact duplicates can come back
1e-16 apart) and a candidate tying the gold partner defeats it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from xlalign.errors import XlalignError
from xlalign.metrics._checks import TIE_TOL, Result, UnitRows, check_k, check_pair

__all__ = [
    "RetrievalResult",
    "XsimResult",
    "retrieval_hits",
    "retrieval_scores",
    "xsim_error",
]

#: Most entries of the cosine matrix held at once (float64: 256 MiB).
MAX_BLOCK_ENTRIES = 2**25


@dataclass(frozen=True)
class RetrievalResult(Result):
    """Partner-retrieval scores over ``n`` pairs (fractions in [0, 1]).

    ``p1_xy``: share of x_i whose most similar y is y_i (strictly: a tie is a miss).
    ``p1_yx``: the same from y to x. ``mexa``: share of i with S[i, i] strictly above every
    other entry of row i and of column i (MEXA, Kargaran et al. 2024). ``mrr``: mean of
    1 / rank of y_i among all y for x_i, rank = 1 + #{j != i: S[i, j] >= S[i, i]} (ties
    pessimistic).
    """

    p1_xy: float
    p1_yx: float
    mexa: float
    mrr: float
    n: int


@dataclass(frozen=True)
class XsimResult(Result):
    """LASER xSIM error: ``n_errors`` of ``n`` sources whose best margin-scored target is wrong."""

    error: float
    n_errors: int
    n: int
    k: int


def _row_blocks(n: int, block_size: int) -> Iterator[slice]:
    if block_size < 1:
        raise XlalignError(f"block_size must be >= 1; got {block_size}")
    rows = max(1, min(block_size, MAX_BLOCK_ENTRIES // n))
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


def retrieval_hits(
    x: Any, y: Any, block_size: int = 1024
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pair retrieval outcomes ``(hit_xy, hit_yx, rank_xy)``, each of shape ``(n_pairs,)``.

    ``hit_xy[i]``: y_i is strictly the most similar y to x_i; ``hit_yx[j]``: x_j is strictly
    the most similar x to y_j; ``rank_xy[i] = 1 + #{j != i: S[i, j] >= S[i, i]}``. The scores
    of :func:`retrieval_scores` are means of these (MEXA: of ``hit_xy & hit_yx``).
    """
    xa, ya = check_pair(x, y, min_pairs=2)
    xu, yu = UnitRows(xa, "x"), UnitRows(ya, "y")
    n = xu.n
    yall = yu.all()
    diag = np.empty(n)
    row_hit = np.empty(n, dtype=bool)
    rank = np.empty(n)
    col_max = np.full(n, -np.inf)
    for rows in _row_blocks(n, block_size):
        s = xu.take(rows) @ yall.T
        local = np.arange(rows.stop - rows.start)
        d = s[local, local + rows.start].copy()
        diag[rows] = d
        s[local, local + rows.start] = -np.inf
        row_hit[rows] = d > s.max(axis=1) + TIE_TOL
        rank[rows] = 1 + np.count_nonzero(s >= (d - TIE_TOL)[:, None], axis=1)
        np.maximum(col_max, s.max(axis=0), out=col_max)
        del s  # free this block before the next one is allocated
    return row_hit, diag > col_max + TIE_TOL, rank


def retrieval_scores(x: Any, y: Any, block_size: int = 1024) -> RetrievalResult:
    """P@1 (x->y, y->x), MEXA and MRR of partners ``(x_i, y_i)``, by cosine.

    Args:
        x, y: ``(n_pairs, d_model)``, row i of each is pair i; ``n_pairs >= 2``.
        block_size: most rows of the cosine matrix held at once.

    Raises:
        XlalignError: mismatched shapes, fewer than 2 pairs, NaN/inf or zero-norm rows.
    """
    row_hit, col_hit, rank = retrieval_hits(x, y, block_size)
    return RetrievalResult(
        p1_xy=float(row_hit.mean()),
        p1_yx=float(col_hit.mean()),
        mexa=float((row_hit & col_hit).mean()),
        mrr=float((1.0 / rank).mean()),
        n=int(row_hit.size),
    )


def xsim_error(x: Any, y: Any, k: int = 4, block_size: int = 1024) -> XsimResult:
    """LASER's xSIM error of sources ``x`` against targets ``y`` with the ratio margin.

    As in facebookresearch/LASER ``source/xsim.py`` (margin "ratio"): with ``S`` the cosine
    matrix, ``a_i`` the mean of x_i's ``k`` largest cosines to y and ``b_j`` the mean of y_j's
    ``k`` largest cosines to x,
    ``score(i, j) = S[i, j] / ((a_i + b_j) / 2)``. The candidates for x_i are its ``k`` nearest
    y by cosine (LASER searches those only); x_i counts as correct when y_i is a candidate and
    its score is strictly above every other candidate's. Where LASER's k-NN search would break a
    tie at the k-th cosine arbitrarily, every y tied there is a candidate; a score tie with
    the gold partner is an error.

    Args:
        x, y: ``(n_pairs, d_model)``; ``n_pairs >= 2``.
        k: neighbours, ``1 <= k <= n_pairs - 1``.
        block_size: most rows of the cosine matrix held at once (two passes over it).

    Raises:
        XlalignError: bad shapes or rows as for :func:`retrieval_scores`, bad ``k``, or a
            candidate whose margin denominator ``(a_i + b_j) / 2`` is not positive (the ratio
            then flips sign and "best" stops meaning most similar).
    """
    xa, ya = check_pair(x, y, min_pairs=2)
    n = xa.shape[0]
    check_k(k, n, "xsim_error")
    xu, yu = UnitRows(xa, "x"), UnitRows(ya, "y")
    yall = yu.all()
    # Pass 1: each row's k largest cosines (mean and k-th value) and each column's k largest.
    a = np.empty(n)
    kth = np.empty(n)
    col_top = np.full((k, n), -np.inf)
    for rows in _row_blocks(n, block_size):
        s = xu.take(rows) @ yall.T
        top = -np.partition(-s, k - 1, axis=1)[:, :k]
        a[rows] = top.mean(axis=1)
        kth[rows] = top.min(axis=1)
        both = np.concatenate([col_top, s], axis=0)
        col_top = np.partition(both, both.shape[0] - k, axis=0)[-k:]
        del s, both
    b = col_top.mean(axis=0)
    # Pass 2: margin scores over each row's candidates.
    n_errors = 0
    for rows in _row_blocks(n, block_size):
        s = xu.take(rows) @ yall.T
        local = np.arange(rows.stop - rows.start)
        gold_col = local + rows.start
        cand = s >= (kth[rows] - TIE_TOL)[:, None]
        denom = (a[rows][:, None] + b[None, :]) / 2
        bad = cand & (denom <= 0)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise XlalignError(
                f"xsim_error: margin denominator (a_i + b_j) / 2 = {denom[i, j]:.3g} <= 0 for "
                f"x row {rows.start + i} and y row {j}: the ratio margin needs positive mean "
                "k-NN cosines"
            )
        score = np.where(cand, s / np.where(cand, denom, 1.0), -np.inf)
        gold = score[local, gold_col].copy()
        gold_is_cand = cand[local, gold_col]
        score[local, gold_col] = -np.inf
        best_other = score.max(axis=1)
        tol = TIE_TOL * np.maximum(1.0, np.abs(gold))
        correct = gold_is_cand & (gold > best_other + tol)
        n_errors += int(np.count_nonzero(~correct))
        del s, score, cand, denom
    return XsimResult(error=n_errors / n, n_errors=n_errors, n=n, k=int(k))
