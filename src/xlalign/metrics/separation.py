"""Language separation along the top principal components of the pooled vectors (the study's PCA).

The study fits sklearn ``PCA(n_components=10)`` on ``vstack([x_u, y_u])`` (rows unit-normalised),
reads ``explained_variance_ratio_``, projects each language with ``pca.transform`` and reports
Cohen's d on the first component and the z of the top-k projections. Here PCA is an exact SVD
(or, when there are more rows than columns, an eigendecomposition of the ``d x d`` scatter
matrix) in float64, so ratios equal sklearn's ``svd_solver="full"``; for the study's
``(400, 2048)`` input sklearn's ``"auto"`` picks its randomized solver, which agrees to its
own approximation error.

Sign convention (sklearn >= 1.5, ``svd_flip(u, vt, u_based_decision=False)``): each
component is flipped so that its entry of largest absolute value is positive. The sign of d
follows: positive d means x projects higher than y on that component.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xlalign.errors import XlalignError
from xlalign.metrics._checks import Result, UnitRows, check_pair
from xlalign.metrics.permutation import ZResult, matched_vs_scrambled_z

__all__ = ["CohenResult", "cohen_d_pc1", "pca_subspace_z"]


@dataclass(frozen=True)
class CohenResult(Result):
    """Cohen's d of x vs y on the pooled first principal component, and the PCA's spectrum.

    ``explained_variance_ratio``: the first ``min(10, 2n - 1, d)`` ratios. ``d`` is None when
    both projections are constant (``undefined_reason`` says so).
    """

    d: float | None
    explained_variance_ratio: tuple[float, ...]
    n: int
    undefined_reason: str | None = None


@dataclass(frozen=True)
class _Pca:
    mean: np.ndarray  # (d,)
    components: np.ndarray  # (n_components, d), rows unit, sign-normalised
    ratio: np.ndarray  # (n_components,)


def _pca(pooled: np.ndarray, n_components: int) -> _Pca:
    """Top ``n_components`` principal axes of ``pooled (m, d)``; ratios of total variance."""
    mean = pooled.mean(axis=0)
    c = pooled - mean
    total = float(np.einsum("ij,ij->", c, c))
    m, d = c.shape
    if m <= d:
        _, s, vt = np.linalg.svd(c, full_matrices=False)
        var, comps = s**2, vt
    else:
        evals, evecs = np.linalg.eigh(c.T @ c)
        order = np.argsort(evals)[::-1]
        var, comps = np.clip(evals[order], 0.0, None), evecs[:, order].T
    comps = comps[:n_components].copy()
    biggest = np.argmax(np.abs(comps), axis=1)
    signs = np.sign(comps[np.arange(comps.shape[0]), biggest])
    comps *= np.where(signs == 0, 1.0, signs)[:, None]
    ratio = var[:n_components] / total if total > 0 else np.zeros(comps.shape[0])
    return _Pca(mean=mean, components=comps, ratio=ratio)


def _pooled_pca(
    x: np.ndarray, y: np.ndarray, n_components: int
) -> tuple[_Pca, np.ndarray, np.ndarray]:
    xu, yu = UnitRows(x, "x").all(), UnitRows(y, "y").all()
    return _pca(np.vstack([xu, yu]), n_components), xu, yu


def cohen_d_pc1(x: Any, y: Any) -> CohenResult:
    """Cohen's d separating x from y on the first PC of their pooled unit vectors.

    ``x``, ``y``: ``(n, d_model)`` (n >= 3). Rows are unit-normalised, pooled, PCA-fitted;
    each side is projected (after subtracting the pooled mean, as ``pca.transform``) and
    ``d = (mean_x - mean_y) / sqrt((std_x^2 + std_y^2) / 2)`` with population stds, as the
    study's ``d_cohen_pc0``.
    """
    xa, ya = check_pair(x, y, min_pairs=3)
    n, dim = xa.shape
    pca, xu, yu = _pooled_pca(xa, ya, min(10, 2 * n - 1, dim))
    ratios = tuple(float(r) for r in pca.ratio)
    if not pca.ratio.any():
        reason = "all pooled vectors are identical: there is no principal component"
        return CohenResult(d=None, explained_variance_ratio=ratios, n=n, undefined_reason=reason)
    px = (xu - pca.mean) @ pca.components[0]
    py = (yu - pca.mean) @ pca.components[0]
    pooled_sd = np.sqrt((px.std() ** 2 + py.std() ** 2) / 2)
    if pooled_sd == 0:
        reason = "both languages are constant on PC 1 (zero pooled std)"
        return CohenResult(d=None, explained_variance_ratio=ratios, n=n, undefined_reason=reason)
    d = float((px.mean() - py.mean()) / pooled_sd)
    return CohenResult(d=d, explained_variance_ratio=ratios, n=n)


def pca_subspace_z(
    x: Any,
    y: Any,
    k: int,
    method: str = "exact",
    n_perms: int = 1000,
    seed: int = 42,
    strata: Sequence[Any] | np.ndarray | None = None,
    center: bool = False,
) -> ZResult:
    """Matched-vs-scrambled z of x and y projected on the top ``k`` pooled principal components.

    As the study: PCA on the pooled unit vectors, ``transform`` (subtract pooled mean, project)
    each side, then :func:`~xlalign.metrics.permutation.matched_vs_scrambled_z` on the
    ``(n, k)`` projections (which unit-normalises them again). Needs
    ``1 <= k <= min(2n - 1, d_model)``; other arguments as for that function.
    """
    xa, ya = check_pair(x, y, min_pairs=3)
    n, dim = xa.shape
    limit = min(2 * n - 1, dim)
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= limit:
        raise XlalignError(
            f"pca_subspace_z: k must be between 1 and min(2n - 1, d) = {limit}; got {k!r}"
        )
    pca, xu, yu = _pooled_pca(xa, ya, int(k))
    px = (xu - pca.mean) @ pca.components.T
    py = (yu - pca.mean) @ pca.components.T
    try:
        return matched_vs_scrambled_z(
            px, py, method=method, n_perms=n_perms, seed=seed, strata=strata, center=center
        )
    except XlalignError as err:
        raise XlalignError(f"after projecting onto the top {k} PCs: {err}") from err
