"""Percentile bootstrap intervals over pairs, and cheap ones for z, P@1 and CKA.

A resample draws ``n`` pair indices with replacement (``np.random.default_rng(seed)``, all
``n_boot x n`` indices drawn at once) and re-evaluates the statistic on those pairs. The
helpers build the ``n x n`` cosine or Gram matrix once and index it per resample, so they are
meant for the study's scale (hundreds to a few thousand pairs), not for 100k.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xlalign.errors import XlalignError
from xlalign.metrics._checks import Result, UnitRows, check_pair, strata_codes
from xlalign.metrics.permutation import DEGENERATE_STD
from xlalign.metrics.retrieval import retrieval_hits
from xlalign.metrics.similarity import _prepare

__all__ = ["CI", "bootstrap_ci", "cka_ci", "p1_ci", "z_ci"]


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
    if n < 1 or n_boot < 1:
        raise XlalignError(f"need n >= 1 and n_boot >= 1; got n={n}, n_boot={n_boot}")
    if not 0 < level < 1:
        raise XlalignError(f"level must be in (0, 1); got {level}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_boot, n))
    values = [v for v in (_finite(statistic(idx)) for idx in draws) if v is not None]
    point = _finite(statistic(np.arange(n)))
    if not values:
        return CI(None, None, level, n_boot, point, n_boot)
    low, high = np.quantile(np.asarray(values), [(1 - level) / 2, (1 + level) / 2])
    return CI(float(low), float(high), level, n_boot, point, n_boot - len(values))


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

    def stat(idx: np.ndarray) -> float | None:
        return _z_from_block(s[np.ix_(idx, idx)], None if codes is None else codes[idx])

    return bootstrap_ci(stat, xa.shape[0], n_boot, seed, level)


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
    hit_xy, hit_yx, _ = retrieval_hits(x, y)
    hits = {"xy": hit_xy, "yx": hit_yx, "mexa": hit_xy & hit_yx}.get(direction)
    if hits is None:
        raise XlalignError(f"direction must be 'xy', 'yx' or 'mexa'; got {direction!r}")
    h = hits.astype(np.float64)
    return bootstrap_ci(lambda idx: float(h[idx].mean()), h.size, n_boot, seed, level)


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
    # Centring with the full-sample mean first changes no HKH but keeps the Grams small.
    fx, fy = fx - fx.mean(axis=0), fy - fy.mean(axis=0)
    kx, ky = fx @ fx.T, fy @ fy.T
    scale = max(float(np.trace(kx)), float(np.trace(ky)))

    def centred(k: np.ndarray) -> np.ndarray:
        return k - k.mean(axis=0) - k.mean(axis=1, keepdims=True) + k.mean()

    def stat(idx: np.ndarray) -> float | None:
        a, b = centred(kx[np.ix_(idx, idx)]), centred(ky[np.ix_(idx, idx)])
        hxx, hyy = float(np.einsum("ij,ij->", a, a)), float(np.einsum("ij,ij->", b, b))
        if min(hxx, hyy) <= (1e-10 * scale) ** 2:
            return None
        return float(np.einsum("ij,ij->", a, b)) / np.sqrt(hxx * hyy)

    return bootstrap_ci(stat, xa.shape[0], n_boot, seed, level)
