"""The torch backend of the shared-matrix metrics: :class:`Side` and :class:`Pair` on a device.

Same interface and same results as :mod:`xlalign.metrics.pairwise` (numpy), computed with
torch on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``...): exact z, P@1/MEXA/MRR, xSIM,
linear CKA, mutual k-NN, CKNNA, the semantic-hub score and the batched bootstrap intervals
of z, P@1 and CKA with their point values. Everything runs in float64, products included: the
retrieval and k-NN decisions compare cosines with a ``TIE_TOL = 1e-10`` margin that float32
products (rounding ~1e-7) cannot honour, and the moment sums of z cancel.

Each side's array crosses to the device once, in its own dtype, and becomes float64 there; the
row norms and the zero-norm / centred-residue check (:class:`~xlalign.metrics._checks.UnitRows`'
rule), the centring, the Gram matrices, the k-NN features' clamp at the 0.95 row quantile
(:func:`prepare_t`, numpy's linear interpolation) and every ``n x n`` and bootstrap product
run on the device. What stays on the host, and why:

- validation of the input (finite values, shape), in numpy before the copy: ``O(n d)`` once
  per side, and its messages are the numpy ones;
- the bootstrap draws: numpy's generator, so both backends resample the same pairs; each
  ``(n, n_boot, seed)`` count matrix is copied to the device once and kept
  (:func:`device_counts`);
- the last, ``O(n_boot)`` steps of an interval (its quantiles) and the per-pair hit vectors
  of P@1/MEXA/MRR (``n`` booleans);
- CKNNA's sparse sums over the ``n k`` neighbour entries;
- z with strata (``--stratify``): the per-stratum blocks go through the numpy code;
- the error paths: a zero-norm row copies the ``n`` norms to the host to name it.

Results come back as the same frozen dataclasses; the tests compare both backends on every
metric, ties included, and each device-side step with its numpy counterpart.

Import this module only where torch is installed (it is a dependency of xlalign's capture);
:mod:`xlalign.metrics.pairwise` never imports it, so the numpy metrics stay torch-free.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from xlalign.errors import XlalignError
from xlalign.metrics._checks import (
    RESIDUE_TOL,
    TIE_TOL,
    check_k,
    check_nonzero,
    safe_exponent,
)
from xlalign.metrics.bootstrap import (
    CI,
    _check_args,
    _cka_floor,
    _count_plan,
    _interval,
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
    cka_result,
    cknna_from_neighbours,
    hub_result,
)

__all__ = ["Pair", "Side", "default_backend", "device_counts", "prepare_t"]

F64 = torch.float64

#: numpy dtypes that cross to the device as they are (others become float64 on the host).
_TORCH_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


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


def _double_centred(b: torch.Tensor) -> torch.Tensor:
    """As :func:`xlalign.metrics.bootstrap._double_centred`."""
    return b - b.mean(dim=1, keepdim=True) - b.mean(dim=0, keepdim=True) + b.mean()


def _check_rows(norms: torch.Tensor, name: str, *, centred: bool = False) -> None:
    """:func:`~xlalign.metrics._checks.check_nonzero` of device norms (copied only if one is 0)."""
    if bool((norms == 0).any()):
        check_nonzero(_np(norms), name, centred=centred)


def prepare_t(f: torch.Tensor, q: float, name: str) -> torch.Tensor:
    """:func:`xlalign.metrics.similarity._prepare` of a float64 ``(n, d)`` tensor, on its device.

    The same steps: the power-of-two rescale of extreme inputs, the clamp at ``t`` = the mean
    over rows of each row's ``q``-quantile of ``|x|`` (``0 < q <= 1``; ``q = 1`` skips it),
    with numpy's default linear interpolation written out (``torch.quantile`` refuses more
    than 2**24 entries), then rows L2-normalised; zero rows raise numpy's ``XlalignError``.
    """
    if f.numel() and (e := safe_exponent(float(f.abs().max()))):
        # exact: powers of two, as np.ldexp; in two factors, since 2**-e alone overflows a
        # float when the largest value is below ~1e-308 (e < -1023)
        half = -e // 2
        f = f * math.ldexp(1.0, half) * math.ldexp(1.0, -e - half)
    if q < 1:
        d = f.shape[1]
        # np.quantile(method="linear"): virtual index (d - 1) q, its floor and the fraction
        # gamma, and numpy's _lerp (from the upper neighbour when gamma >= 0.5)
        virtual = (d - 1) * q
        lo = min(math.floor(virtual), d - 1)
        gamma = virtual - lo
        s = torch.sort(f.abs(), dim=1).values
        below, above = s[:, lo], s[:, min(lo + 1, d - 1)]
        diff = above - below
        quant = above - diff * (1 - gamma) if gamma >= 0.5 else below + diff * gamma
        t = float(quant.mean())
        f = f.clamp(-t, t)
    norms = torch.sqrt((f * f).sum(dim=1))
    _check_rows(norms, name)
    return f / norms[:, None]


@functools.lru_cache(maxsize=4)
def _cached_device_counts(
    n: int, n_boot: int, seed: int, step: int, device: torch.device
) -> tuple[torch.Tensor, ...]:
    return tuple(
        torch.tensor(c, dtype=F64, device=device)
        for c in bootstrap_counts(n, n_boot, seed, chunk=step)
    )


def device_counts(
    n: int, n_boot: int, seed: int, device: str | torch.device
) -> Iterator[torch.Tensor]:
    """:func:`~xlalign.metrics.bootstrap.bootstrap_counts` on ``device``: numpy's draws, in
    the same chunks. Those the host caches are kept on the device too (the last few
    ``(n, n_boot, seed, device)``), so a sweep copies each count matrix across once, not once
    per cell and metric. Treat them as read-only."""
    dev = torch.device(device)
    step, kept = _count_plan(n, n_boot)
    if kept:
        yield from _cached_device_counts(n, n_boot, seed, step, dev)
    else:
        for c in bootstrap_counts(n, n_boot, seed, chunk=step):
            yield torch.tensor(c, dtype=F64, device=dev)


def _hsic_t(
    c: torch.Tensor,
    prod: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    sa: torch.Tensor,
    sb: torch.Tensor,
) -> torch.Tensor:
    """As :func:`xlalign.metrics.bootstrap._hsic_counts`, per resample (row of ``c``)."""
    n = c.shape[1]
    return (c * (c @ prod)).sum(dim=1) - 2 / n * (c * (a * b)).sum(dim=1) + sa * sb / (n * n)


def _null(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float, float, float]:
    """``(B0, B0∘B0, trace, mean, std)`` of the cosine matrix ``s``: its double-centred form,
    and the matched sum, null mean and null std of z (one device sync), as
    :func:`~xlalign.metrics.bootstrap._z_from_block` without strata."""
    n = s.shape[0]
    b0 = _double_centred(s)
    sq = b0 * b0
    trace, mean, ss = torch.stack([torch.diagonal(s).sum(), s.mean(), sq.sum()]).tolist()
    var = max(ss / (n * n * (n - 1)), 0.0)
    return b0, sq, trace, mean, math.sqrt(var)


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

    def t_input(self) -> torch.Tensor:
        """The input ``(n, d)`` as float64 on the device: one copy across, in its own dtype."""

        def build() -> torch.Tensor:
            a = self.a if self.a.dtype in _TORCH_FLOATS else self.a.astype(np.float64)
            return torch.tensor(np.ascontiguousarray(a), device=self.device).to(F64)

        return self._get("t_input", build)  # type: ignore[no-any-return]

    def t_centred(self) -> torch.Tensor:
        """The input minus its column mean ``(n, d)``, float64 on the device."""

        def build() -> torch.Tensor:
            f = self.t_input()
            return f - f.mean(dim=0)

        return self._get("t_centred", build)  # type: ignore[no-any-return]

    def t_rows(self, center: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`rows` on the device: float64 rows (centred with ``center``) and their norms.

        :class:`~xlalign.metrics._checks.UnitRows`' rule: a centred norm at most
        ``RESIDUE_TOL`` times the largest uncentred one is residue of the mean, so zero, and a
        zero norm raises its message. The rows may alias :meth:`t_input`: never modify them.
        """

        def build() -> tuple[torch.Tensor, torch.Tensor]:
            f = self.t_input()
            sq = (f * f).sum(dim=1)
            if not center:
                norms = torch.sqrt(sq)
                _check_rows(norms, self.name)
                return f, norms
            raw_max = torch.sqrt(sq.max())
            c = self.t_centred()
            norms = torch.sqrt((c * c).sum(dim=1))
            norms = torch.where(norms <= RESIDUE_TOL * raw_max, 0.0, norms)
            _check_rows(norms, self.name, centred=True)
            return c, norms

        return self._get(("t_rows", center), build)  # type: ignore[no-any-return]

    def t_gram(self) -> tuple[torch.Tensor, float, bool]:
        """:meth:`gram` on the device: ``(K, <K, K>, has_variance)``."""

        def build() -> tuple[torch.Tensor, float, bool]:
            f, c = self.t_input(), self.t_centred()
            k = c @ c.T
            cc, ff, kk = torch.stack([(c * c).sum(), (f * f).sum(), (k * k).sum()]).tolist()
            return k, kk, math.sqrt(cc) > RESIDUE_TOL * math.sqrt(ff)

        return self._get("t_gram", build)  # type: ignore[no-any-return]

    def t_gram_boot(self, n_boot: int, seed: int) -> list[tuple[torch.Tensor, ...]]:
        """:meth:`gram_boot` on the device: per chunk of resamples ``(K c, c^T K c,
        <H K[idx,idx] H, H K[idx,idx] H>)``, kept (a pivot's serve every language)."""

        def build() -> list[tuple[torch.Tensor, ...]]:
            k = self.t_gram()[0]
            kk = k * k
            out: list[tuple[torch.Tensor, ...]] = []
            for c in device_counts(self.n, n_boot, seed, self.device):
                ck = c @ k  # k symmetric: (K c)_j per resample
                sk = (c * ck).sum(dim=1)
                out.append((ck, sk, _hsic_t(c, kk, ck, ck, sk, sk)))
            return out

        return self._get(("t_gram_boot", n_boot, seed), build)  # type: ignore[no-any-return]

    def t_knn(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`knn` on the device: the clamped features' Gram matrix and the k-NN mask."""

        def gram() -> torch.Tensor:
            f = prepare_t(self.t_input(), 0.95, self.name)
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
        """:meth:`cosines` on the device (kept)."""
        if ("t_s", center) not in self._cache:
            self._need(2)
            (xr, nx), (yr, ny) = self.tx.t_rows(center), self.ty.t_rows(center)
            s = xr @ yr.T
            s /= nx[:, None]
            s /= ny[None, :]
            self._cache[("t_s", center)] = s
        return self._cache[("t_s", center)]  # type: ignore[no-any-return]

    def cosines(self, center: bool = False) -> np.ndarray:
        """The cosine matrix as numpy ``(n, n)`` (a copy off the device: strata paths only)."""
        return _np(self.t_cosines(center))

    def _counts(self, n_boot: int, seed: int) -> Iterator[torch.Tensor]:
        return device_counts(self.n, n_boot, seed, self.device)

    # ------------------------------------------------------------------ z

    def z(self, codes: np.ndarray | None = None, center: bool = False) -> ZResult:
        self._need(3)
        s = self.t_cosines(center)
        if codes is not None:
            return z_from_cosines(_np(s), codes, center)  # strata: small blocks, numpy
        n = self.n
        _, _, trace, mean, std = _null(s)
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
        n = self.n
        _check_args(n, n_boot, level)
        b0, sq, trace, mean, std = _null(self.t_cosines(center))
        diag = torch.diagonal(b0).contiguous()
        out = []
        for c in self._counts(n_boot, seed):
            rows, cols = c @ b0.T, c @ b0
            tot = (c * rows).sum(dim=1)
            num = (c @ diag - tot / n) / n
            cross = (
                (c * (c @ sq)).sum(dim=1)
                - ((c * rows * rows).sum(dim=1) + (c * cols * cols).sum(dim=1)) / n
                + tot * tot / (n * n)
            )
            boot_std = torch.sqrt(torch.clamp(cross / (n * n * (n - 1)), min=0.0))
            out.append(torch.where(boot_std > DEGENERATE_STD, num / boot_std, torch.nan))
        point = None if std <= DEGENERATE_STD else (trace / n - mean) / std
        return _interval(_np(torch.cat(out)), point, level, n_boot)

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
            both = _np(torch.stack([row_hit.to(F64), col_hit.to(F64), rank]))  # one copy
            self._cache["hits"] = (both[0] == 1, both[1] == 1, both[2])
        return self._cache["hits"]  # type: ignore[no-any-return]

    def p1_ci(self, direction: str, n_boot: int, seed: int, level: float) -> CI:
        """As the numpy one: the resampled means ``c . hits / n`` on the device (sums of 0/1
        times integer counts: exact, so the same bits as numpy's)."""
        hits = np.asarray(self._hit_vector(direction), dtype=np.float64)
        _check_args(hits.size, n_boot, level)
        v = torch.tensor(hits, device=self.device)
        out = torch.cat([c @ v / hits.size for c in self._counts(n_boot, seed)])
        return _interval(_np(out), float(hits.mean()), level, n_boot)

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
        diag, total = torch.stack([torch.diagonal(s).sum(), s.sum()]).tolist()
        return hub_result(diag, total, self.n)

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
        """As :func:`~xlalign.metrics.bootstrap.cka_ci_grams`, each side's share kept on it."""
        self._need(3, same_dim=False)
        n = self.n
        _check_args(n, n_boot, level)
        kx, ky = self.tx.t_gram()[0], self.ty.t_gram()[0]
        a, b = _double_centred(kx), _double_centred(ky)
        # the point value: _cka_point's sums, in one device sync
        tx, ty, hxx0, hyy0, hxy0 = torch.stack(
            [kx.trace(), ky.trace(), (a * a).sum(), (b * b).sum(), (a * b).sum()]
        ).tolist()
        del a, b
        floor = _cka_floor(max(tx, ty))
        kl = kx * ky
        out = []
        for c, (ck, sk, hxx), (cl, sl, hyy) in zip(
            self._counts(n_boot, seed),
            self.tx.t_gram_boot(n_boot, seed),
            self.ty.t_gram_boot(n_boot, seed),
            strict=True,
        ):
            hxy = _hsic_t(c, kl, ck, cl, sk, sl)
            ok = torch.minimum(hxx, hyy) > floor
            val = hxy / torch.sqrt(torch.where(ok, hxx * hyy, 1.0))
            out.append(torch.where(ok, val, torch.nan))
        point = None if min(hxx0, hyy0) <= floor else hxy0 / math.sqrt(hxx0 * hyy0)
        return _interval(_np(torch.cat(out)), point, level, n_boot)

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
