"""Dominant ("rogue", "massive") dimensions, and the per-dimension standardisation that tames them.

Some layers put most of a vector's norm into a handful of dimensions (Sun et al. 2024,
"Massive Activations in Large Language Models"; Timkey & van Schijndel 2021, "All Bark and No
Bite"). Cosine, CKA and k-NN then measure those few dimensions. :func:`dimension_dominance`
names them; :func:`standardize_pair` is Timkey & van Schijndel's remedy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xlalign.errors import XlalignError
from xlalign.metrics._checks import Result

__all__ = [
    "DOMINANCE_WARN",
    "DominanceResult",
    "dimension_dominance",
    "standardize_moments",
    "standardize_pair",
]

_CHUNK = 4096  # rows per block: float64 copies stay small whatever the run's size

#: A site where one dimension holds more than this share of the mean squared norm is flagged.
DOMINANCE_WARN = 0.5


@dataclass(frozen=True)
class DominanceResult(Result):
    """Share of the mean squared norm held by the largest dimensions of a set of vectors.

    ``share`` is the top dimension's share, ``top_dims`` the indices of the ``k`` largest
    (largest first) and ``top_shares`` their shares. None when every vector is zero.
    """

    share: float | None
    top_dims: list[int]
    top_shares: list[float]
    n: int
    d: int


def dimension_dominance(x: Any, k: int = 3) -> DominanceResult:
    """Return dimension ``j``'s share ``sum_i x_ij^2 / sum_i ||x_i||^2`` for the top ``k``.

    ``x`` is ``(n_rows, d_model)``; sums in float64 over the raw (uncentred) vectors, so the
    shares of all dimensions add up to 1.
    """
    a = np.asarray(x)  # a memory-mapped array stays mapped: read in row chunks below
    if a.ndim != 2 or a.shape[0] == 0:
        raise XlalignError(f"expected a non-empty (n_rows, d_model) array, got shape {a.shape}")
    per_dim = np.zeros(a.shape[1], dtype=np.float64)
    for start in range(0, a.shape[0], _CHUNK):
        block = np.asarray(a[start : start + _CHUNK], dtype=np.float64)
        if not np.isfinite(block).all():
            raise XlalignError("the vectors hold NaN or inf values")
        per_dim += np.einsum("ij,ij->j", block, block)
    total = float(per_dim.sum())
    if total == 0.0:
        return DominanceResult(None, [], [], a.shape[0], a.shape[1])
    order = np.argsort(-per_dim, kind="stable")[: min(k, a.shape[1])]
    shares = [float(per_dim[j] / total) for j in order]
    return DominanceResult(shares[0], [int(j) for j in order], shares, a.shape[0], a.shape[1])


def standardize_moments(*arrays: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, scale)`` ``(d_model,)`` float64 of each dimension over the rows of all arrays.

    ``scale`` is the population std; a dimension constant over all rows (std at rounding
    level) gets scale ``inf``, so standardizing maps it to 0: it carries no information.
    """
    parts = [np.asarray(a, dtype=np.float64) for a in arrays]
    if not parts or any(p.ndim != 2 or p.shape[1] != parts[0].shape[1] for p in parts):
        raise XlalignError(
            "standardize needs (n, d) arrays of one width, got shapes "
            + ", ".join(str(p.shape) for p in parts)
        )
    both = np.concatenate(parts)
    mu = both.mean(axis=0)
    sd = np.sqrt(((both - mu) ** 2).mean(axis=0))
    tiny = sd <= 1e-12 * np.maximum(1.0, np.abs(mu))
    return mu, np.where(tiny, np.inf, sd)


def standardize_pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` with each dimension z-scored over the pooled rows of both, float64.

    Mean and population std of each dimension are taken over the ``n_x + n_y`` rows together
    (Timkey & van Schijndel 2021), so both languages share one transform; constant dimensions
    become 0 (see :func:`standardize_moments`).
    """
    mu, scale = standardize_moments(x, y)
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return (xa - mu) / scale, (ya - mu) / scale
