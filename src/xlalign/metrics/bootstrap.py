"""Percentile bootstrap intervals over pairs, and cheap batched ones for z, P@1 and CKA.

A resample draws ``n`` pair indices with replacement (``np.random.default_rng(seed)``, the
``n_boot x n`` indices drawn in order, row by row) and re-evaluates the statistic on those
pairs. :func:`bootstrap_ci` calls a statistic once per resample. The interval helpers for z,
P@1 and CKA never index a resampled ``n x n`` block: a resample is its count vector
``c`` (``c_j`` = how often pair j was drawn, ``sum c = n``), and every sum over the resampled
block ``M[idx, idx]`` is a product with ``c``:

- ``sum_kl M[idx_k, idx_l] = c^T M c``; the k-th row sum of the block is ``(M c)[idx_k]``;
  ``sum_k M[idx_k, idx_k] = c . diag(M)``; ``sum_kl M[idx_k, idx_l]^2 = c^T (M∘M) c``.

So the z of a resample (its cosine block against the exact within-stratum null), its CKA (the
centred resampled Gram matrices ``H K[idx, idx] H``) and its P@1 (mean of the pairs' hits) are
all matrix products of the ``(n_boot, n)`` count matrix with the ``n x n`` cosine / Gram
matrices the point estimate built: ``O(n_boot n^2)`` in a handful of BLAS calls, chunked over
resamples (:data:`BOOT_CHUNK_ENTRIES`) to bound memory. The values equal the resample-then-
recompute definition to float64 rounding (tests check 1e-9 on the same seeds).

Entry points that take the matrices (:func:`z_ci_cosines`, :func:`cka_ci_grams`,
:func:`mean_ci`) let a caller that already holds them (the layer sweep) skip rebuilding them.
Meant for the study's scale (hundreds to a few thousand pairs), not for 100k.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xlalign.errors import XlalignError
from xlalign.metrics._checks import RESIDUE_TOL, Result, UnitRows, check_pair, strata_codes
from xlalign.metrics.permutation import DEGENERATE_STD
from xlalign.metrics.retrieval import retrieval_hits
from xlalign.metrics.similarity import _prepare

__all__ = [
    "CI",
    "bootstrap_ci",
    "bootstrap_counts",
    "cka_ci",
    "cka_ci_grams",
    "gram_boot_stats",
    "mean_ci",
    "p1_ci",
    "z_ci",
    "z_ci_cosines",
]

#: Most entries of the ``(chunk, n)`` count matrix per batched step (float64: 32 MiB); each
#: step also holds a few products of that size.
BOOT_CHUNK_ENTRIES = 2**22

#: Count matrices up to this many entries (float64: 64 MiB) are kept for reuse.
BOOT_CACHE_ENTRIES = 2**23


@dataclass(frozen=True)
class CI(Result):
    """A percentile bootstrap interval ``[low, high]`` at ``level``, and the full-sample value.

    ``n_skipped`` resamples gave an undefined statistic (None or non-finite) and were left out;
    ``low``/``high`` are None if every resample was skipped.
    """

    low: float | None
    high: float | None
    level: float
    n_boot: int
    point: float | None
    n_skipped: int


def _finite(v: float | None) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def _check_args(n: int, n_boot: int, level: float) -> None:
    if n < 1 or n_boot < 1:
        raise XlalignError(f"need n >= 1 and n_boot >= 1; got n={n}, n_boot={n_boot}")
    if not 0 < level < 1:
        raise XlalignError(f"level must be in (0, 1); got {level}")


def _interval(values: np.ndarray, point: float | None, level: float, n_boot: int) -> CI:
    """The percentile CI of the finite entries of ``values`` ``(n_boot,)``; NaN = skipped."""
    kept = values[np.isfinite(values)]
    if kept.size == 0:
        return CI(None, None, level, n_boot, _finite(point), n_boot)
    low, high = np.quantile(kept, [(1 - level) / 2, (1 + level) / 2])
    return CI(float(low), float(high), level, n_boot, _finite(point), n_boot - int(kept.size))


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float | None],
    n: int,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> CI:
    """Percentile interval of ``statistic(idx)`` over ``n_boot`` resamples of ``range(n)``.

    ``statistic`` receives an index array ``(n,)`` (the identity ``arange(n)`` for the point
    value) and returns a float, or None when undefined on that resample.
    """
    _check_args(n, n_boot, level)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_boot, n))
    values = np.array([_finite(statistic(idx)) for idx in draws], dtype=np.float64)
    return _interval(values, _finite(statistic(np.arange(n))), level, n_boot)


def bootstrap_counts(
    n: int, n_boot: int, seed: int, chunk: int | None = None
) -> Iterator[np.ndarray]:
    """Count matrices ``(b, n)`` float64 of successive resamples, ``b <= chunk`` rows each.

    Row k counts how often each pair is drawn in resample k; the draws are exactly
    :func:`bootstrap_ci`'s (``default_rng(seed).integers(0, n, size=(n_boot, n))``): drawing
    them chunk by chunk continues the same stream. The arrays are read-only: the last few
    ``(n, n_boot, seed)`` are cached (the sweep asks for the same resamples at every site,
    pair and metric).
    """
    step, kept = _count_plan(n, n_boot, chunk)
    if kept:
        yield from _cached_counts(n, n_boot, seed, step)
    else:
        yield from _draw_counts(n, n_boot, seed, step)


def _count_plan(n: int, n_boot: int, chunk: int | None = None) -> tuple[int, bool]:
    """``(resamples per chunk, whether they are cached)`` of :func:`bootstrap_counts`."""
    return chunk or max(1, BOOT_CHUNK_ENTRIES // n), n_boot * n <= BOOT_CACHE_ENTRIES


def _draw_counts(n: int, n_boot: int, seed: int, step: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for k0 in range(0, n_boot, step):
        b = min(step, n_boot - k0)
        draws = rng.integers(0, n, size=(b, n))
        flat = (draws + n * np.arange(b)[:, None]).ravel()
        out = np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)
        out.flags.writeable = False
        yield out


@functools.lru_cache(maxsize=4)
def _cached_counts(n: int, n_boot: int, seed: int, step: int) -> tuple[np.ndarray, ...]:
    return tuple(_draw_counts(n, n_boot, seed, step))


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


# --------------------------------------------------------------------------- P@1 (any mean)


def mean_ci(values: Any, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> CI:
    """Bootstrap interval of the mean of per-pair ``values`` ``(n,)`` (hits, ranks...).

    Equals ``bootstrap_ci(lambda idx: values[idx].mean(), n, ...)``, batched.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    _check_args(v.size, n_boot, level)
    out = np.concatenate([c @ v / v.size for c in bootstrap_counts(v.size, n_boot, seed)])
    return _interval(out, float(v.mean()), level, n_boot)


# --------------------------------------------------------------------------- z


def _z_from_block(s: np.ndarray, codes: np.ndarray | None) -> float | None:
    """Exact-null z of the square cosine block ``s`` (within-stratum permutations)."""
    n = s.shape[0]
    groups = (
        [np.arange(n)] if codes is None else [np.flatnonzero(codes == c) for c in np.unique(codes)]
    )
    mean = 0.0
    var = 0.0
    for g in groups:
        n_s = g.size
        b = s[np.ix_(g, g)]
        m = b.mean()
        mean += n_s / n * m
        if n_s > 1:
            c = b - b.mean(axis=1, keepdims=True) - b.mean(axis=0, keepdims=True) + m
            var += (n_s / n) ** 2 * float(np.einsum("ij,ij->", c, c)) / (n_s * n_s * (n_s - 1))
    std = np.sqrt(max(var, 0.0))
    if std <= DEGENERATE_STD:
        return None
    return float((np.trace(s) / n - mean) / std)


def _double_centred(b: np.ndarray) -> np.ndarray:
    return b - b.mean(axis=1, keepdims=True) - b.mean(axis=0, keepdims=True) + b.mean()


def z_ci_cosines(
    s: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    codes: np.ndarray | None = None,
) -> CI:
    """:func:`z_ci` from the cosine matrix ``s = cos(x_i, y_j)`` ``(n, n)``, float64.

    ``codes``: ``(n,)`` integer stratum codes (as :func:`~xlalign.metrics._checks.strata_codes`
    gives) or None. Batched over resamples with count vectors ``c``: per stratum block ``B``
    of a resample (``n_s = sum c`` members drawn), with ``B0`` the block double-centred on the
    full sample (z is unchanged by adding row and column effects to S, and centring first keeps
    the sums below from cancelling):
    ``matched = c . diag(B0) / n``, ``mean = c^T B0 c / (n n_s)``, and the centred sum of
    squares ``c^T (B0∘B0) c - (sum_j c_j (B0 c)_j^2 + sum_j c_j (B0^T c)_j^2) / n_s
    + (c^T B0 c)^2 / n_s^2``.
    """
    s = np.asarray(s, dtype=np.float64)
    n = s.shape[0]
    _check_args(n, n_boot, level)
    groups = (
        [np.arange(n)] if codes is None else [np.flatnonzero(codes == u) for u in np.unique(codes)]
    )
    blocks = []
    for g in groups:
        b0 = _double_centred(s[np.ix_(g, g)])
        blocks.append((g, b0, np.ascontiguousarray(np.diag(b0)), b0 * b0))
    out = []
    for c in bootstrap_counts(n, n_boot, seed):
        num = np.zeros(c.shape[0])
        var = np.zeros(c.shape[0])
        for g, b0, diag, sq in blocks:
            cg = c[:, g] if codes is not None else c
            ns = cg.sum(axis=1)
            rows = cg @ b0.T  # (B0 c)_j: row sums of the resampled block
            cols = cg @ b0  # (B0^T c)_j: column sums
            tot = _rowdot(cg, rows)
            safe = np.maximum(ns, 1.0)
            num += (cg @ diag - tot / safe) / n
            cross = (
                _rowdot(cg, cg @ sq)
                - (_rowdot(cg, rows * rows) + _rowdot(cg, cols * cols)) / safe
                + tot * tot / (safe * safe)
            )
            var += np.where(ns > 1, cross / (n * n * np.maximum(ns - 1, 1.0)), 0.0)
        std = np.sqrt(np.maximum(var, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            out.append(np.where(std > DEGENERATE_STD, num / std, np.nan))
    return _interval(np.concatenate(out), _z_from_block(s, codes), level, n_boot)


def z_ci(
    x: Any,
    y: Any,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    strata: Sequence[Any] | np.ndarray | None = None,
    center: bool = False,
) -> CI:
    """Bootstrap interval of the exact matched-vs-scrambled z (float64, exact null).

    Resampled pairs keep their stratum labels. Resamples whose null is degenerate (z undefined)
    are skipped and counted in ``n_skipped``. With ``center`` the language means are estimated
    once on the full sample (a fixed preprocessing step), not re-estimated per resample.
    ``point`` equals ``matched_vs_scrambled_z(x, y, strata=strata, center=center).z``.
    """
    xa, ya = check_pair(x, y, min_pairs=3)
    codes = strata_codes(strata, xa.shape[0])
    s = UnitRows(xa, "x", center=center).all() @ UnitRows(ya, "y", center=center).all().T
    return z_ci_cosines(s, n_boot, seed, level, codes)


# --------------------------------------------------------------------------- P@1


def p1_ci(
    x: Any,
    y: Any,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    direction: str = "xy",
) -> CI:
    """Bootstrap interval of P@1 (``direction`` "xy", "yx", or "mexa"), resampling queries.

    Each pair's hit (strict, ties are misses) is decided once against the full candidate pool
    and the resample averages those hits. Re-running retrieval inside a resample would make a
    pair drawn twice tie with its own copy and always miss, biasing P@1 towards 0.
    """
    if direction not in ("xy", "yx", "mexa"):
        raise XlalignError(f"direction must be 'xy', 'yx' or 'mexa'; got {direction!r}")
    hit_xy, hit_yx, _ = retrieval_hits(x, y)
    hits = {"xy": hit_xy, "yx": hit_yx, "mexa": hit_xy & hit_yx}[direction]
    return mean_ci(hits, n_boot, seed, level)


# --------------------------------------------------------------------------- CKA


def gram_boot_stats(k: np.ndarray, n_boot: int, seed: int) -> list[tuple[np.ndarray, ...]]:
    """Per chunk of resamples, what one side's Gram matrix ``k`` adds to every CKA interval:
    ``(K c, c^T K c, <H K[idx,idx] H, H K[idx,idx] H>)``, each per resample.

    They depend on one side only, so a pivot language's are computed once per site and reused
    against every other language (the resamples are the same: same ``n``, ``n_boot``, seed).
    """
    k = np.asarray(k, dtype=np.float64)
    kk = k * k
    out: list[tuple[np.ndarray, ...]] = []
    for c in bootstrap_counts(k.shape[0], n_boot, seed):
        ck = c @ k  # k symmetric: (K c)_j per resample
        sk = _rowdot(c, ck)
        out.append((ck, sk, _hsic_counts(c, kk, ck, ck, sk, sk)))
    return out


def cka_ci_grams(
    kx: np.ndarray,
    ky: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    *,
    x_stats: list[tuple[np.ndarray, ...]] | None = None,
    y_stats: list[tuple[np.ndarray, ...]] | None = None,
) -> CI:
    """:func:`cka_ci` from the Gram matrices ``kx = Xc Xc^T``, ``ky = Yc Yc^T`` ``(n, n)``.

    ``Xc``, ``Yc``: the features centred on the full sample (any centring gives the same
    resampled ``H K[idx, idx] H``; the full-sample one keeps the sums small). With ``c`` a
    resample's counts: ``<H K H, H L H> = c^T (K∘L) c - 2/n sum_j c_j (Kc)_j (Lc)_j
    + (c^T K c)(c^T L c) / n^2``. Resamples where a side has no variance are skipped.
    ``x_stats``/``y_stats``: :func:`gram_boot_stats` of a side, when the caller keeps them.
    """
    kx = np.asarray(kx, dtype=np.float64)
    ky = np.asarray(ky, dtype=np.float64)
    n = kx.shape[0]
    _check_args(n, n_boot, level)
    scale = max(float(np.trace(kx)), float(np.trace(ky)))
    xs = x_stats if x_stats is not None else gram_boot_stats(kx, n_boot, seed)
    ys = y_stats if y_stats is not None else gram_boot_stats(ky, n_boot, seed)
    kl = kx * ky
    out = []
    for c, (ck, sk, hxx), (cl, sl, hyy) in zip(
        bootstrap_counts(n, n_boot, seed), xs, ys, strict=True
    ):
        hxy = _hsic_counts(c, kl, ck, cl, sk, sl)
        ok = np.minimum(hxx, hyy) > _cka_floor(scale)
        with np.errstate(divide="ignore", invalid="ignore"):
            out.append(np.where(ok, hxy / np.sqrt(np.where(ok, hxx * hyy, 1.0)), np.nan))
    point = _cka_point(kx, ky, scale)
    return _interval(np.concatenate(out), point, level, n_boot)


def _hsic_counts(
    c: np.ndarray, prod: np.ndarray, a: np.ndarray, b: np.ndarray, sa: np.ndarray, sb: np.ndarray
) -> np.ndarray:
    """``<H K[idx,idx] H, H L[idx,idx] H>`` per resample: ``prod = K∘L``, ``a = c K``, ..."""
    n = c.shape[1]
    return _rowdot(c, c @ prod) - 2 / n * _rowdot(c, a * b) + sa * sb / (n * n)


def _cka_floor(scale: float) -> float:
    """Self-HSIC at or below which a (resampled) side of CKA has no variance: rounding
    residue, relative to ``scale``, the larger trace of the two Gram matrices."""
    return (RESIDUE_TOL * scale) ** 2


def _cka_point(kx: np.ndarray, ky: np.ndarray, scale: float) -> float | None:
    a, b = _double_centred(kx), _double_centred(ky)
    hxx, hyy = float(np.einsum("ij,ij->", a, a)), float(np.einsum("ij,ij->", b, b))
    if min(hxx, hyy) <= _cka_floor(scale):
        return None
    return float(np.einsum("ij,ij->", a, b)) / np.sqrt(hxx * hyy)


def centred_gram(f: np.ndarray) -> np.ndarray:
    """``Fc Fc^T`` ``(n, n)`` float64 with ``Fc`` the rows of ``f`` minus their mean."""
    fc = np.asarray(f, dtype=np.float64)
    fc = fc - fc.mean(axis=0)
    return fc @ fc.T


def cka_ci(
    x: Any,
    y: Any,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    prepare: bool = False,
) -> CI:
    """Bootstrap interval of biased linear CKA (as :func:`~xlalign.metrics.linear_cka`).

    Uses the ``n x n`` Gram matrices, centred per resample (``H K H``); a resample that
    repeats a row simply weights it twice. Resamples where a side has no variance are skipped.
    """
    xa, ya = check_pair(x, y, min_pairs=3, same_dim=False)
    if prepare:
        fx, fy = _prepare(xa, 0.95, "x"), _prepare(ya, 0.95, "y")
    else:
        fx, fy = np.asarray(xa, dtype=np.float64), np.asarray(ya, dtype=np.float64)
    return cka_ci_grams(centred_gram(fx), centred_gram(fy), n_boot, seed, level)
