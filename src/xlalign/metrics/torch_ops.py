"""The torch backend of the shared-matrix metrics: :class:`Side` and :class:`Pair` on a device.

Same interface and same results as :mod:`xlalign.metrics.pairwise` (numpy), computed with
torch on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``...): exact z, P@1/MEXA/MRR, xSIM,
linear CKA, mutual k-NN, CKNNA, the semantic-hub score and the batched bootstrap intervals
of z, P@1 and CKA. Everything runs in float64, products included: the retrieval and k-NN
decisions compare cosines with a ``TIE_TOL = 1e-10`` margin that float32 products (rounding
~1e-7) cannot honour, and the moment sums of z cancel. Validation (finite values, zero-norm
rows), the clamping quantile of the k-NN features, the bootstrap draws (numpy's generator, so
both backends resample the same pairs) and CKNNA's sparse ``n k`` sums stay in numpy: they
are ``O(n d)`` or smaller. Results come back as the same frozen dataclasses; the tests
compare both backends on every metric, ties included.

Import this module only where torch is installed (it is a dependency of xlalign's capture);
:mod:`xlalign.metrics.pairwise` never imports it, so the numpy metrics stay torch-free.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from xlalign.errors import XlalignError
from xlalign.metrics._checks import TIE_TOL, UnitRows, check_k
from xlalign.metrics.bootstrap import (
    CI,
    _cka_point,
    _interval,
    _z_from_block,
    bootstrap_counts,
)
from xlalign.metrics.pairwise import Pair as _NumpyPair
from xlalign.metrics.pairwise import Side as _NumpySide
from xlalign.metrics.permutation import _REASON_FLAT, DEGENERATE_STD, ZResult, z_from_cosines
from xlalign.metrics.retrieval import XsimResult
from xlalign.metrics.similarity import (
    CkaResult,
    CknnaResult,
    HubResult,
    KnnResult,
    _prepare,
    cka_result,
    cknna_from_neighbours,
    hub_result,
)

__all__ = ["Pair", "Side", "default_backend"]

F64 = torch.float64


def default_backend() -> str:
    """``"torch"`` where CUDA is available, else ``"numpy"``."""
    return "torch" if torch.cuda.is_available() else "numpy"


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _topk_mask(vals: torch.Tensor, k: int) -> torch.Tensor:
    """As :func:`xlalign.metrics.similarity._topk_mask`: ``k`` per row, ties to lower index."""
    kth = torch.topk(vals, k, dim=1).values[:, k - 1 : k]
    above = vals > kth + TIE_TOL
    near = (vals - kth).abs() <= TIE_TOL
    need = k - above.sum(dim=1, keepdim=True)
    return above | (near & (torch.cumsum(near.to(torch.int64), dim=1) <= need))


class Side(_NumpySide):
    """One language's vectors at one site, matrices on ``device`` (see the numpy ``Side``)."""

    def __init__(self, a: Any, name: str, device: str | torch.device = "cpu") -> None:
        super().__init__(a, name)
        self.device = torch.device(device)

    def pair_with(self, y: _NumpySide) -> Pair:
        """The torch :class:`Pair` of this side (x) against ``y`` (a torch ``Side`` too)."""
        if not isinstance(y, Side):
            raise XlalignError("a torch Side pairs only with a torch Side")
        return Pair(self, y)

    def t_rows(self, center: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        def build() -> tuple[torch.Tensor, torch.Tensor]:
            raw, norms = UnitRows(self.a, self.name, center=center).raw(slice(None))
            return self._t(raw), self._t(norms)

        return self._get(("t_rows", center), build)  # type: ignore[no-any-return]

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=F64, device=self.device)

    def t_gram(self) -> tuple[torch.Tensor, float, bool]:
        def build() -> tuple[torch.Tensor, float, bool]:
            f = self._t(np.asarray(self.a, dtype=np.float64))
            c = f - f.mean(dim=0)
            var = bool(torch.sqrt((c * c).sum()) > 1e-10 * torch.sqrt((f * f).sum()))
            k = c @ c.T
            return k, float((k * k).sum()), var

        return self._get("t_gram", build)  # type: ignore[no-any-return]

    def t_knn(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        def gram() -> torch.Tensor:
            f = self._t(_prepare(self.a, 0.95, self.name))
            g = f @ f.T
            g.fill_diagonal_(-torch.inf)
            return g

        def build() -> tuple[torch.Tensor, torch.Tensor]:
            g = self._get("t_knn_gram", gram)
            return g, _topk_mask(g, k)

        return self._get(("t_knn", k), build)  # type: ignore[no-any-return]


class Pair(_NumpyPair):
    """The metrics of ``x`` against ``y`` from shared matrices on the sides' device."""

    def __init__(self, x: Side, y: Side) -> None:
        super().__init__(x, y)
        self.tx, self.ty = x, y
        self.device = x.device

    def t_cosines(self, center: bool = False) -> torch.Tensor:
        if ("t_s", center) not in self._cache:
            self._need(2)
            (xr, nx), (yr, ny) = self.tx.t_rows(center), self.ty.t_rows(center)
            s = xr @ yr.T
            s /= nx[:, None]
            s /= ny[None, :]
            self._cache[("t_s", center)] = s
        return self._cache[("t_s", center)]  # type: ignore[no-any-return]

    def cosines(self, center: bool = False) -> np.ndarray:
        """The cosine matrix as numpy ``(n, n)`` (a copy off the device)."""
        return _np(self.t_cosines(center))

    # ------------------------------------------------------------------ z

    def z(self, codes: np.ndarray | None = None, center: bool = False) -> ZResult:
        self._need(3)
        s = self.t_cosines(center)
        if codes is not None:
            return z_from_cosines(_np(s), codes, center)  # strata: small blocks, numpy
        n = self.n
        m = s.mean()
        c = s - s.mean(dim=1, keepdim=True) - s.mean(dim=0, keepdim=True) + m
        trace, mean = float(torch.diagonal(s).sum()), float(m)
        var = max(float((c * c).sum()) / (n * n * (n - 1)), 0.0)
        std = float(np.sqrt(var))
        reason = _REASON_FLAT if std <= DEGENERATE_STD else None
        return ZResult(
            z=None if reason else (trace / n - mean) / std,
            matched=trace / n,
            null_mean=mean,
            null_std=std,
            n=n,
            p_value=None,
            method="exact",
            n_perms=None,
            stratified=False,
            centered=center,
            undefined_reason=reason,
        )

    def z_ci(
        self, n_boot: int, seed: int, level: float, codes: np.ndarray | None, center: bool
    ) -> CI:
        self._need(3)
        if codes is not None:
            return super().z_ci(n_boot, seed, level, codes, center)
        s = self.t_cosines(center)
        n = self.n
        b0 = s - s.mean(dim=1, keepdim=True) - s.mean(dim=0, keepdim=True) + s.mean()
        diag, sq = torch.diagonal(b0).contiguous(), b0 * b0
        out = []
        for counts in bootstrap_counts(n, n_boot, seed):
            c = torch.tensor(counts, dtype=F64, device=self.device)
            rows, cols = c @ b0.T, c @ b0
            tot = (c * rows).sum(dim=1)
            num = (c @ diag - tot / n) / n
            cross = (
                (c * (c @ sq)).sum(dim=1)
                - ((c * rows * rows).sum(dim=1) + (c * cols * cols).sum(dim=1)) / n
                + tot * tot / (n * n)
            )
            std = torch.sqrt(torch.clamp(cross / (n * n * (n - 1)), min=0.0))
            out.append(_np(torch.where(std > DEGENERATE_STD, num / std, torch.nan)))
        point = _z_from_block(self.cosines(center), None)
        return _interval(np.concatenate(out), point, level, n_boot)

    # ------------------------------------------------------------------ retrieval

    def hits(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if "hits" not in self._cache:
            s = self.t_cosines().clone()
            diag = torch.diagonal(s).clone()
            s.fill_diagonal_(-torch.inf)
            row_hit = diag > s.max(dim=1).values + TIE_TOL
            col_hit = diag > s.max(dim=0).values + TIE_TOL
            rank = 1 + (s >= (diag - TIE_TOL)[:, None]).sum(dim=1).to(F64)
            del s
            self._cache["hits"] = (_np(row_hit), _np(col_hit), _np(rank))
        return self._cache["hits"]  # type: ignore[no-any-return]

    def xsim(self, k: int = 4) -> XsimResult:
        s = self.t_cosines()
        n = self.n
        check_k(k, n, "xsim_error")
        top = torch.topk(s, k, dim=1).values
        a, kth = top.mean(dim=1), top[:, k - 1]
        b = torch.topk(s, k, dim=0).values.mean(dim=0)
        cand = s >= (kth - TIE_TOL)[:, None]
        denom = (a[:, None] + b[None, :]) / 2
        bad = cand & (denom <= 0)
        if bool(bad.any()):
            i, j = (int(v) for v in torch.nonzero(bad)[0])
            raise XlalignError(
                f"xsim_error: margin denominator (a_i + b_j) / 2 = {float(denom[i, j]):.3g} <= 0 "
                f"for x row {i} and y row {j}: the ratio margin needs positive mean "
                "k-NN cosines"
            )
        score = torch.where(cand, s / torch.where(cand, denom, 1.0), -torch.inf)
        idx = torch.arange(n, device=s.device)
        gold = score[idx, idx].clone()
        gold_is_cand = cand[idx, idx]
        score[idx, idx] = -torch.inf
        tol = TIE_TOL * torch.clamp(gold.abs(), min=1.0)
        correct = gold_is_cand & (gold > score.max(dim=1).values + tol)
        n_errors = int((~correct).sum())
        return XsimResult(error=n_errors / n, n_errors=n_errors, n=n, k=int(k))

    def hub(self) -> HubResult:
        s = self.t_cosines()
        return hub_result(float(torch.diagonal(s).sum()), float(s.sum()), self.n)

    # ------------------------------------------------------------------ kernels

    def cka(self) -> CkaResult:
        self._need(3, same_dim=False)
        kx, hxx, x_var = self.tx.t_gram()
        ky, hyy, y_var = self.ty.t_gram()
        if not (x_var and y_var):
            return cka_result(0.0, 0.0, 0.0, x_var=x_var, y_var=y_var, n=self.n, unbiased=False)
        hxy = float((kx * ky).sum())
        return cka_result(hxy, hxx, hyy, x_var=True, y_var=True, n=self.n, unbiased=False)

    def cka_ci(self, n_boot: int, seed: int, level: float) -> CI:
        self._need(3, same_dim=False)
        kx, ky = self.tx.t_gram()[0], self.ty.t_gram()[0]
        n = self.n
        scale = max(float(torch.diagonal(kx).sum()), float(torch.diagonal(ky).sum()))
        kl, kk, ll = kx * ky, kx * kx, ky * ky
        out = []
        for counts in bootstrap_counts(n, n_boot, seed):
            c = torch.tensor(counts, dtype=F64, device=self.device)
            ck, cl = c @ kx, c @ ky
            sk, sl = (c * ck).sum(dim=1), (c * cl).sum(dim=1)

            def hsic(
                prod: torch.Tensor,
                a: torch.Tensor,
                b: torch.Tensor,
                sa: torch.Tensor,
                sb: torch.Tensor,
                c: torch.Tensor = c,
            ) -> torch.Tensor:
                return (
                    (c * (c @ prod)).sum(dim=1) - 2 / n * (c * a * b).sum(dim=1) + sa * sb / (n * n)
                )

            hxy, hxx, hyy = (
                hsic(kl, ck, cl, sk, sl),
                hsic(kk, ck, ck, sk, sk),
                hsic(ll, cl, cl, sl, sl),
            )
            ok = torch.minimum(hxx, hyy) > (1e-10 * scale) ** 2
            val = hxy / torch.sqrt(torch.where(ok, hxx * hyy, 1.0))
            out.append(_np(torch.where(ok, val, torch.nan)))
        point = _cka_point(_np(kx), _np(ky), scale)
        return _interval(np.concatenate(out), point, level, n_boot)

    def mutual_knn(self, k: int = 10) -> KnnResult:
        self._need(3, same_dim=False)
        check_k(k, self.n, "mutual_knn")
        mx, my = self.tx.t_knn(k)[1], self.ty.t_knn(k)[1]
        return KnnResult(score=int((mx & my).sum()) / (self.n * k), k=int(k), n=self.n)

    def cknna(self, k: int = 10) -> CknnaResult:
        self._need(4, same_dim=False)
        n = self.n
        check_k(k, n, "cknna", low=2)
        (gk, mk), (gl, ml) = self.tx.t_knn(k), self.ty.t_knn(k)
        # n k entries per side: the sparse sums run in numpy, as in the numpy backend.
        kr, kc = (_np(v) for v in torch.nonzero(mk, as_tuple=True))
        lr, lc = (_np(v) for v in torch.nonzero(ml, as_tuple=True))
        kv, lv = _np(gk[mk]), _np(gl[ml])
        return cknna_from_neighbours((kr, kc, kv), (lr, lc, lv), n, k)
