"""Every metric of one language pair at one site, from matrices built once and shared.

The public metric functions each start from the raw vectors: called one after another on the
same pair they rebuild the same ``n x n`` cosine matrix for z, P@1/MEXA/MRR, xSIM and the hub
score, and the same Gram matrices for CKA and its interval. Here a :class:`Side` holds what
one language contributes (float64 rows and norms, the centred Gram matrix for CKA, the
clamped-and-normalised k-NN Gram matrix and masks), built lazily and at most once, so a pivot
language's side is built once per site and reused against every other language; a
:class:`Pair` builds the cosine matrix once and derives every cosine metric and the
bootstrap intervals (:mod:`xlalign.metrics.bootstrap`) from it.

Values equal the public functions' to float64 rounding (tests compare every metric); the
decisions (retrieval hits, k-NN sets) use the same ``TIE_TOL``. Meant for the sizes the sweep
computes intervals for (``n`` up to about 10,000: ``n x n`` float64 matrices); larger inputs
should use the public, streaming functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xlalign.errors import XlalignError
from xlalign.metrics._checks import (
    RESIDUE_TOL,
    UnitRows,
    as_float_array,
    check_finite,
    check_k,
    safe_scale,
)
from xlalign.metrics.bootstrap import CI, cka_ci_grams, gram_boot_stats, mean_ci, z_ci_cosines
from xlalign.metrics.jackknife import (
    CORRECTION_MAX_N,
    jackknife_ci,
    loo2_cka_unbiased,
    loo_cka,
    loo_cka_unbiased,
    loo_hub,
    loo_z,
    wilson_ci,
)
from xlalign.metrics.permutation import ZResult, z_from_cosines
from xlalign.metrics.retrieval import (
    RetrievalResult,
    XsimResult,
    retrieval_hits_cosines,
    xsim_error_cosines,
)
from xlalign.metrics.similarity import (
    CkaResult,
    CknnaResult,
    HubResult,
    KnnResult,
    _prepare,
    _topk_mask,
    cka_result,
    cknna_from_neighbours,
    hub_result,
)

__all__ = ["Pair", "Side", "unbiased_hsic_centred"]


def unbiased_hsic_centred(inner: Any, diag_dot: Any, tr_k: float, tr_l: float, n: int) -> Any:
    """Song et al.'s unbiased HSIC from centred Gram matrices ``K``, ``L`` (rows sum to 0).

    ``inner = <K, L>``, ``diag_dot = sum_i K_ii L_ii``, ``tr_k``, ``tr_l`` the traces. With
    ``K~`` the kernel with its diagonal zeroed, ``K~ 1 = -diag K``, so every term of
    ``[tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))`` is one of these
    (arrays broadcast: the permutation null passes one ``inner`` per permutation).
    """
    return (inner - diag_dot + tr_k * tr_l / ((n - 1) * (n - 2)) - 2 * diag_dot / (n - 2)) / (
        n * (n - 3)
    )


class Side:
    """One language's vectors ``(n_pairs, d_model)`` at one site, and what pairs reuse.

    Everything is computed on first use and kept: unit rows (plain and centred), the
    centred Gram matrix ``Xc Xc^T`` with ``<K, K>``, the k-NN features' Gram matrix and masks.
    """

    def __init__(self, a: Any, name: str) -> None:
        a = as_float_array(a, name)
        check_finite(a, name)
        self.a = safe_scale(a)  # every metric here is scale-free; no squares of 1e300
        self.name = name
        self._cache: dict[Any, Any] = {}

    @property
    def n(self) -> int:
        return int(self.a.shape[0])

    def _get(self, key: Any, build: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def rows(self, center: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Float64 rows (minus the mean with ``center``) ``(n, d)`` and their norms ``(n,)``."""

        def build() -> tuple[np.ndarray, np.ndarray]:
            u = UnitRows(self.a, self.name, center=center)
            return u.raw(slice(None))

        return self._get(("rows", center), build)  # type: ignore[no-any-return]

    def gram(self) -> tuple[np.ndarray, float, bool]:
        """``(K, <K, K>, has_variance)``: ``K = Xc Xc^T`` ``(n, n)``, ``Xc`` centred rows."""

        def build() -> tuple[np.ndarray, float, bool]:
            f = np.asarray(self.a, dtype=np.float64)
            c = f - f.mean(axis=0)
            cc, ff = np.einsum("ij,ij->", c, c), np.einsum("ij,ij->", f, f)
            var = np.sqrt(cc) > RESIDUE_TOL * np.sqrt(ff)
            k = c @ c.T
            return k, float(np.einsum("ij,ij->", k, k)), bool(var)

        return self._get("gram", build)  # type: ignore[no-any-return]

    def gram_boot(self, n_boot: int, seed: int) -> list[tuple[np.ndarray, ...]]:
        """This side's share of every CKA interval (:func:`gram_boot_stats`), kept."""
        return self._get(  # type: ignore[no-any-return]
            ("gram_boot", n_boot, seed), lambda: gram_boot_stats(self.gram()[0], n_boot, seed)
        )

    def knn(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(G, mask)``: clamped, normalised features' inner products ``(n, n)`` (diagonal
        ``-inf``) and the ``k``-NN mask (self excluded, ties to the lower index)."""

        def build() -> tuple[np.ndarray, np.ndarray]:
            g = self._get("knn_gram", self._knn_gram)
            return g, _topk_mask(g, k)

        return self._get(("knn", k), build)  # type: ignore[no-any-return]

    def pair_with(self, y: Side) -> Pair:
        """The :class:`Pair` of this side (x) against ``y``, on this side's backend."""
        return Pair(self, y)

    def _knn_gram(self) -> np.ndarray:
        f = _prepare(self.a, 0.95, self.name)
        g = f @ f.T
        np.fill_diagonal(g, -np.inf)
        return g


class Pair:
    """The metrics of ``x`` against ``y`` (row i of each is pair i) from shared matrices."""

    def __init__(self, x: Side, y: Side) -> None:
        if x.a.shape[0] != y.a.shape[0]:
            raise XlalignError(
                "x and y must have one row per pair, the same number of rows; "
                f"got x.shape={x.a.shape}, y.shape={y.a.shape}"
            )
        self.x, self.y = x, y
        self.n = x.n
        self._cache: dict[Any, Any] = {}

    def _need(self, min_pairs: int, same_dim: bool = True) -> None:
        if same_dim and self.x.a.shape[1] != self.y.a.shape[1]:
            raise XlalignError(
                "x and y must have the same width to compare them by cosine; "
                f"got x.shape={self.x.a.shape}, y.shape={self.y.a.shape}"
            )
        if self.n < min_pairs:
            raise XlalignError(f"need at least {min_pairs} pairs (rows), got {self.n}")

    def cosines(self, center: bool = False) -> np.ndarray:
        """``S[i, j] = cos(x_i, y_j)`` ``(n, n)`` float64 (of centred rows with ``center``)."""
        if ("s", center) not in self._cache:
            self._need(2)
            (xr, nx), (yr, ny) = self.x.rows(center), self.y.rows(center)
            s = xr @ yr.T  # the same arithmetic as matched_vs_scrambled_z's direct path
            s /= nx[:, None]
            s /= ny[None, :]
            self._cache[("s", center)] = s
        return self._cache[("s", center)]  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ cosine metrics

    def z(self, codes: np.ndarray | None = None, center: bool = False) -> ZResult:
        """Exact matched-vs-scrambled z (as ``matched_vs_scrambled_z(method="exact")``)."""
        self._need(3)
        return z_from_cosines(self.cosines(center), codes, center)

    def z_ci(
        self, n_boot: int, seed: int, level: float, codes: np.ndarray | None, center: bool
    ) -> CI:
        """As :func:`~xlalign.metrics.bootstrap.z_ci`."""
        self._need(3)
        return z_ci_cosines(self.cosines(center), n_boot, seed, level, codes)

    def hits(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As :func:`~xlalign.metrics.retrieval.retrieval_hits`."""
        if "hits" not in self._cache:
            self._cache["hits"] = retrieval_hits_cosines(self.cosines())
        return self._cache["hits"]  # type: ignore[no-any-return]

    def retrieval(self) -> RetrievalResult:
        """As :func:`~xlalign.metrics.retrieval.retrieval_scores`."""
        row_hit, col_hit, rank = self.hits()
        return RetrievalResult(
            p1_xy=float(row_hit.mean()),
            p1_yx=float(col_hit.mean()),
            mexa=float((row_hit & col_hit).mean()),
            mrr=float((1.0 / rank).mean()),
            n=self.n,
        )

    def p1_ci(self, direction: str, n_boot: int, seed: int, level: float) -> CI:
        """As :func:`~xlalign.metrics.bootstrap.p1_ci`."""
        return mean_ci(self._hit_vector(direction), n_boot, seed, level)

    def _hit_vector(self, direction: str) -> np.ndarray:
        """Each pair's hit ``(n,)`` bool for P@1 ``"xy"``, ``"yx"`` or ``"mexa"``."""
        row_hit, col_hit, _ = self.hits()
        hits = {"xy": row_hit, "yx": col_hit, "mexa": row_hit & col_hit}.get(direction)
        if hits is None:
            raise XlalignError(f"direction must be 'xy', 'yx' or 'mexa'; got {direction!r}")
        return hits

    def xsim(self, k: int = 4) -> XsimResult:
        """As :func:`~xlalign.metrics.retrieval.xsim_error`."""
        return xsim_error_cosines(self.cosines(), k)

    def hub(self) -> HubResult:
        """As :func:`~xlalign.metrics.similarity.semantic_hub_score`."""
        s = self.cosines()
        return hub_result(float(np.trace(s)), float(s.sum()), self.n)

    # ------------------------------------------------------------------ kernel metrics

    def cka(self) -> CkaResult:
        """Biased linear CKA, as :func:`~xlalign.metrics.similarity.linear_cka`."""
        self._need(3, same_dim=False)
        kx, hxx, x_var = self.x.gram()
        ky, hyy, y_var = self.y.gram()
        if not (x_var and y_var):
            return cka_result(0.0, 0.0, 0.0, x_var=x_var, y_var=y_var, n=self.n, unbiased=False)
        hxy = float(np.einsum("ij,ij->", kx, ky))
        return cka_result(hxy, hxx, hyy, x_var=True, y_var=True, n=self.n, unbiased=False)

    def cka_unbiased(self) -> CkaResult:
        """Debiased linear CKA (Song et al.'s unbiased HSIC), as ``linear_cka(unbiased=True)``."""
        self._need(4, same_dim=False)
        kx, hxx, x_var = self.x.gram()
        ky, hyy, y_var = self.y.gram()
        n = self.n
        if not (x_var and y_var):
            return cka_result(0.0, 0.0, 0.0, x_var=x_var, y_var=y_var, n=n, unbiased=True)
        dx, dy = np.diag(kx), np.diag(ky)
        tx, ty = float(dx.sum()), float(dy.sum())
        hxy = unbiased_hsic_centred(float(np.einsum("ij,ij->", kx, ky)), float(dx @ dy), tx, ty, n)
        hxx_u = unbiased_hsic_centred(hxx, float(dx @ dx), tx, tx, n)
        hyy_u = unbiased_hsic_centred(hyy, float(dy @ dy), ty, ty, n)
        return cka_result(hxy, hxx_u, hyy_u, x_var=True, y_var=True, n=n, unbiased=True)

    def cka_ci(self, n_boot: int, seed: int, level: float) -> CI:
        """As :func:`~xlalign.metrics.bootstrap.cka_ci`."""
        self._need(3, same_dim=False)
        return cka_ci_grams(
            self.x.gram()[0],
            self.y.gram()[0],
            n_boot,
            seed,
            level,
            x_stats=self.x.gram_boot(n_boot, seed),
            y_stats=self.y.gram_boot(n_boot, seed),
        )

    # ------------------------------------------------------------------ intervals

    def interval(self, metric: str, point: float | None, level: float, center: bool = False) -> CI:
        """The interval of a record (:mod:`xlalign.metrics.jackknife`): Wilson for the shares
        ``p1_xy``, ``p1_yx``, ``mexa``; the exact leave-one-out jackknife around ``point``
        for ``z`` (cosines of centred rows with ``center``; the width ignores strata),
        ``cka``, ``cka_unbiased`` and ``semantic_hub``."""
        if metric in ("p1_xy", "p1_yx", "mexa"):
            return wilson_ci(
                self._hit_vector({"p1_xy": "xy", "p1_yx": "yx"}.get(metric, metric)), level
            )
        if metric == "z":
            self._need(4)
            c = self.cosines(center)
            c = c - c.mean(axis=1, keepdims=True) - c.mean(axis=0, keepdims=True) + c.mean()
            return jackknife_ci(loo_z(c), point, level)
        if metric == "semantic_hub":
            return jackknife_ci(loo_hub(self.cosines()), point, level)
        if metric in ("cka", "cka_unbiased"):
            self._need(4, same_dim=False)
            kx, ky = self.x.gram()[0], self.y.gram()[0]
            if metric == "cka":
                return jackknife_ci(loo_cka(kx, ky), point, level)
            loo2 = loo2_cka_unbiased(kx, ky) if self.n <= CORRECTION_MAX_N else None
            return jackknife_ci(loo_cka_unbiased(kx, ky), point, level, loo2)
        raise XlalignError(f"no interval for metric '{metric}'")

    def mutual_knn(self, k: int = 10) -> KnnResult:
        """As :func:`~xlalign.metrics.similarity.mutual_knn` (``prepare=True``)."""
        self._need(3, same_dim=False)
        check_k(k, self.n, "mutual_knn")
        mx, my = self.x.knn(k)[1], self.y.knn(k)[1]
        return KnnResult(score=int(np.count_nonzero(mx & my)) / (self.n * k), k=int(k), n=self.n)

    def cknna(self, k: int = 10) -> CknnaResult:
        """As :func:`~xlalign.metrics.similarity.cknna` (``prepare=True``)."""
        self._need(4, same_dim=False)
        n = self.n
        check_k(k, n, "cknna", low=2)
        (gk, mk), (gl, ml) = self.x.knn(k), self.y.knn(k)
        kr, kc = np.nonzero(mk)
        lr, lc = np.nonzero(ml)
        kv, lv = gk[kr, kc], gl[lr, lc]
        return cknna_from_neighbours((kr, kc, kv), (lr, lc, lv), n, k)
