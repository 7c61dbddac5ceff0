"""Retrieval of a pair's partner among all candidates: P@1 both ways, MEXA, MRR, LASER xSIM.

All scores come from the cosine matrix ``S[i, j] = cos(x_i, y_j)`` in float64, computed in row
blocks so that at most ``block_size`` rows of the ``N x N`` matrix exist at a time (and at most
``2**25`` entries, 256 MiB, whatever ``block_size`` says). The unit rows of y are held in
float64 while that copy stays under ``DENSE_Y_MAX_ENTRIES`` entries (512 MiB); bigger inputs
(a memory-mapped ``(1_000_000, 1024)`` site) are read in tiles of at most ``block_size`` x
``TILE_COLS`` cosines, converting each y tile as it is needed, so memory no longer grows with
``N x d``. Tiling changes how BLAS blocks a dot product, not the definitions; every decision
below compares cosines with a ``TIE_TOL`` margin far above that rounding.

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
    "retrieval_hits_cosines",
    "retrieval_scores",
    "xsim_error",
    "xsim_error_cosines",
]

#: Most entries of the cosine matrix held at once (float64: 256 MiB).
MAX_BLOCK_ENTRIES = 2**25

#: Largest ``n_pairs * d_model`` for which y's unit rows are kept whole in float64 (512 MiB);
#: bigger inputs are read tile by tile.
DENSE_Y_MAX_ENTRIES = 2**26

#: Columns (y rows) per tile when y is read tile by tile (with 1024 rows: 64 MiB per tile).
TILE_COLS = 8192


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
    if n * yu.d > DENSE_Y_MAX_ENTRIES:
        return _retrieval_hits_tiled(xu, yu, block_size)
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


def _tiles(
    xu: UnitRows, yu: UnitRows, block_size: int
) -> Iterator[tuple[slice, np.ndarray, Iterator[tuple[slice, np.ndarray]]]]:
    """Per row block of x: ``(rows, x_unit_rows, tiles)``, ``tiles`` yielding
    ``(cols, S[rows, cols])``.

    Each tile is a fresh float64 ``(len(rows), len(cols))`` block of cosines; y's unit rows
    are converted tile by tile, so nothing of size ``n x d`` in float64 is ever held.
    """
    n = xu.n
    cols_per_tile = max(1, min(TILE_COLS, MAX_BLOCK_ENTRIES // max(1, min(block_size, n))))

    def row_tiles(xb: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
        for c0 in range(0, n, cols_per_tile):
            cols = slice(c0, min(n, c0 + cols_per_tile))
            yield cols, xb @ yu.take(cols).T

    for rows in _row_blocks(n, block_size):
        xb = xu.take(rows)
        yield rows, xb, row_tiles(xb)


def _gold_in_tile(rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """``(local_rows, local_cols)`` of the gold pairs ``(i, i)`` that fall in a tile."""
    lo, hi = max(rows.start, cols.start), min(rows.stop, cols.stop)
    idx = np.arange(lo, hi) if lo < hi else np.arange(0)
    return idx - rows.start, idx - cols.start


def _retrieval_hits_tiled(
    xu: UnitRows, yu: UnitRows, block_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`retrieval_hits` for inputs too big to hold y in float64: tile by tile.

    The gold cosines of a row block come first from its own square block, so that every tile
    of the row can be compared with them as it streams past.
    """
    n = xu.n
    diag = np.empty(n)
    row_max = np.full(n, -np.inf)
    rank = np.ones(n)
    col_max = np.full(n, -np.inf)
    for rows, xb, tiles in _tiles(xu, yu, block_size):
        d = np.einsum("ij,ij->i", xb, yu.take(rows))
        diag[rows] = d
        for cols, s in tiles:
            gr, gc = _gold_in_tile(rows, cols)
            s[gr, gc] = -np.inf
            np.maximum(row_max[rows], s.max(axis=1), out=row_max[rows])
            rank[rows] += np.count_nonzero(s >= (d - TIE_TOL)[:, None], axis=1)
            np.maximum(col_max[cols], s.max(axis=0), out=col_max[cols])
            del s
    return diag > row_max + TIE_TOL, diag > col_max + TIE_TOL, rank


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
    if n * yu.d > DENSE_Y_MAX_ENTRIES:
        return _xsim_tiled(xu, yu, k, block_size)
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


def _margin_error(denom: np.ndarray, cand: np.ndarray, row0: int, col0: int) -> XlalignError:
    i, j = np.argwhere(cand & (denom <= 0))[0]
    return XlalignError(
        f"xsim_error: margin denominator (a_i + b_j) / 2 = {denom[i, j]:.3g} <= 0 for "
        f"x row {row0 + i} and y row {col0 + j}: the ratio margin needs positive mean "
        "k-NN cosines"
    )


def _xsim_tiled(xu: UnitRows, yu: UnitRows, k: int, block_size: int) -> XsimResult:
    """:func:`xsim_error` for inputs too big to hold y in float64: two passes, tile by tile."""
    n = xu.n
    # Pass 1: each row's k largest cosines, merged tile by tile, and each column's.
    a = np.empty(n)
    kth = np.empty(n)
    col_top = np.full((k, n), -np.inf)
    for rows, _, tiles in _tiles(xu, yu, block_size):
        top = np.full((rows.stop - rows.start, k), -np.inf)
        for cols, s in tiles:
            both = np.concatenate([top, s], axis=1)
            top = -np.partition(-both, k - 1, axis=1)[:, :k]
            both = np.concatenate([col_top[:, cols], s], axis=0)
            col_top[:, cols] = np.partition(both, both.shape[0] - k, axis=0)[-k:]
            del s, both
        a[rows] = top.mean(axis=1)
        kth[rows] = top.min(axis=1)
    b = col_top.mean(axis=0)
    # Pass 2: margin scores over each row's candidates; the gold score is kept apart.
    n_errors = 0
    for rows, _, tiles in _tiles(xu, yu, block_size):
        m = rows.stop - rows.start
        gold = np.full(m, -np.inf)
        gold_is_cand = np.zeros(m, dtype=bool)
        best_other = np.full(m, -np.inf)
        for cols, s in tiles:
            cand = s >= (kth[rows] - TIE_TOL)[:, None]
            denom = (a[rows][:, None] + b[cols][None, :]) / 2
            if (cand & (denom <= 0)).any():
                raise _margin_error(denom, cand, rows.start, cols.start)
            score = np.where(cand, s / np.where(cand, denom, 1.0), -np.inf)
            gr, gc = _gold_in_tile(rows, cols)
            gold[gr] = score[gr, gc]
            gold_is_cand[gr] = cand[gr, gc]
            score[gr, gc] = -np.inf
            np.maximum(best_other, score.max(axis=1), out=best_other)
            del s, score, cand, denom
        tol = TIE_TOL * np.maximum(1.0, np.abs(gold))
        correct = gold_is_cand & (gold > best_other + tol)
        n_errors += int(np.count_nonzero(~correct))
    return XsimResult(error=n_errors / n, n_errors=n_errors, n=n, k=int(k))


def retrieval_hits_cosines(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`retrieval_hits` from a cosine matrix ``s`` ``(n, n)`` already built (float64).

    For callers that hold ``s`` anyway (the layer sweep); same decisions, same ``TIE_TOL``.
    """
    s = np.array(s, dtype=np.float64)  # a copy: the diagonal is overwritten below
    n = s.shape[0]
    diag = np.diag(s).copy()
    s[np.arange(n), np.arange(n)] = -np.inf
    row_hit = diag > s.max(axis=1) + TIE_TOL
    col_hit = diag > s.max(axis=0) + TIE_TOL
    rank = 1 + np.count_nonzero(s >= (diag - TIE_TOL)[:, None], axis=1).astype(np.float64)
    return row_hit, col_hit, rank


def xsim_error_cosines(s: np.ndarray, k: int = 4) -> XsimResult:
    """:func:`xsim_error` from a cosine matrix ``s`` ``(n, n)`` already built (float64)."""
    s = np.asarray(s, dtype=np.float64)
    n = s.shape[0]
    check_k(k, n, "xsim_error")
    top = -np.partition(-s, k - 1, axis=1)[:, :k]
    a = top.mean(axis=1)
    kth = top.min(axis=1)
    b = np.partition(s, n - k, axis=0)[-k:].mean(axis=0)
    cand = s >= (kth - TIE_TOL)[:, None]
    denom = (a[:, None] + b[None, :]) / 2
    if (cand & (denom <= 0)).any():
        raise _margin_error(denom, cand, 0, 0)
    score = np.where(cand, s / np.where(cand, denom, 1.0), -np.inf)
    idx = np.arange(n)
    gold = score[idx, idx].copy()
    gold_is_cand = cand[idx, idx]
    score[idx, idx] = -np.inf
    tol = TIE_TOL * np.maximum(1.0, np.abs(gold))
    correct = gold_is_cand & (gold > score.max(axis=1) + tol)
    n_errors = int(np.count_nonzero(~correct))
    return XsimResult(error=n_errors / n, n_errors=n_errors, n=n, k=int(k))
