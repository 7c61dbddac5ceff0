"""Matched-vs-scrambled z: is pair i's cosine higher than a random re-pairing's?

The statistic (from the study's ``matched_vs_scrambled_z``) is
``T(pi) = (1/N) sum_i cos(x_i, y_pi(i))``; ``matched = T(identity)`` and the null is ``T`` over
permutations ``pi`` of y's rows, uniform over all ``N!`` (or over within-stratum permutations).
``z = (matched - E[T]) / sd[T]``.

Two ways to get the null's moments:

``method="exact"``
    Closed form over all ``N!`` permutations (see ``docs/metrics.md``). With unit rows and
    column-centred matrices ``Xc = X - mean(X)``, ``Yc = Y - mean(Y)``::

        E[T]   = mean(X) . mean(Y)                     (= the mean of all N^2 cosines)
        Var[T] = ||Xc Yc^T||_F^2 / (N^2 (N - 1))

    because ``S_ij - r_i - c_j + m = (x_i - mean X) . (y_j - mean Y)``; the centred form avoids
    the cancellation of ``sum S^2 - N sum r^2 - ...``. When ``N <= min(d, 4096)`` the cosine
    matrix S is formed and double-centred directly (one float64 matmul); for larger ``N <= d``
    ``Xc Yc^T`` is summed block by block; for ``N > d`` the sum is ``tr((Xc^T Xc)(Yc^T Yc))``
    from two float64 ``d x d`` scatter matrices accumulated over row chunks. Memory stays
    linear in ``N`` (``N = 100_000``, ``d = 1024``: the inputs plus ~100 MB). Strata apply
    the same per stratum.
    Float64 throughout, except that with ``products="auto"`` (the default) float32 inputs in
    the direct case (no strata, no ``center``) take the one ``N x N`` product in float32, from
    rows normalised and centred in float64; the matched value and null mean stay float64 and z
    stays within ``1e-6 * max(|z|, 1)`` of the float64 value (``docs/metrics.md``, "Float32
    products"). No p-value (``p_value = None``): the exact null is not normal for small ``N``
    and a normal-approximation p would look more exact than it is.

``method="monte-carlo"``
    ``n_perms`` permutations from ``np.random.RandomState(seed)`` drawn as the study did, and the
    study's own arithmetic: rows are unit-normalised in the input dtype, each cosine is the
    input-dtype ``np.sum(x_u[i] * y_u[j])`` and each ``T`` the input-dtype ``np.mean`` over pairs,
    so float32 inputs give the study's float32 numbers bit for bit. (Float64 arithmetic moves
    the study's z by ~1e-7 relative on centred data but by up to ~1e-4 when the pairs share a
    large mean vector, as hidden states do, and more when z is near 0.) The
    cosine matrix is built once and gathered per permutation, not re-multiplied per draw.
    ``z`` uses the population std (``ddof=0``) like the study;
    ``p_value = (1 + #{T_k >= matched}) / (n_perms + 1)``. Above ``N = 8192`` the N x N matrix
    is not formed: ``T`` is accumulated in float64 over row blocks instead (slow; prefer exact).

Degenerate null: when every permutation gives the same ``T`` (for instance every x row is the
same vector, as the study's embedding-level last tokens are), ``z`` is ``None`` and
``undefined_reason`` says why; both methods decide this from the exact float64 variance, since a
Monte Carlo sample std of such a null is rounding noise (the study's formula turns it into
a finite, meaningless z such as 1.0).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xlalign.errors import XlalignError
from xlalign.metrics._checks import (
    CHUNK_ROWS,
    DENSE_MAX_ENTRIES,
    Result,
    UnitRows,
    check_nonzero,
    check_pair,
    row_norms,
    safe_scale,
    strata_codes,
)

__all__ = [
    "DEGENERATE_STD",
    "ZResult",
    "draw_permutations",
    "matched_vs_scrambled_z",
    "matched_vs_scrambled_z_sweep",
    "null_samples",
    "z_from_cosines",
]

METHODS = ("exact", "monte-carlo")

#: ``products=`` choices of the exact z (see :func:`matched_vs_scrambled_z`).
PRODUCTS = ("auto", "float64")

#: A null std at or below this is "zero up to rounding". T is a mean of cosines (|T| <= 1), so
#: an absolute threshold is on the right scale; in float64 the exact std of a degenerate null
#: comes out around 1e-17 or exactly 0, while float32 inputs cannot carry cosine differences
#: finer than ~1e-7, so a spread below 1e-9 cannot come from the data.
DEGENERATE_STD = 1e-9

#: Largest stratum for which the exact path forms its cosine block S directly (when also
#: n_s <= d; 4096^2 float64 = 128 MiB); bigger ones stream over row chunks.
DIRECT_MAX_N = 4096

#: Largest N for which the Monte Carlo path forms the N x N cosine matrix in the study's
#: arithmetic (8192^2 float64 = 512 MiB).
MC_DENSE_MAX_N = 8192

_REASON_SINGLETONS = (
    "every stratum has a single member: the only within-stratum permutation is the identity, "
    "so the null is a single point"
)
_REASON_FLAT = (
    "null has zero spread: every permutation gives the same statistic (e.g. all rows of x, "
    "or all rows of y, identical within each stratum)"
)


@dataclass(frozen=True)
class ZResult(Result):
    """A matched-vs-scrambled z and the null it was measured against.

    ``z`` and ``p_value`` are None when undefined (``undefined_reason`` says why; ``p_value`` is
    always None for ``method="exact"``). ``null_std`` is the population std of the null.
    """

    z: float | None
    matched: float
    null_mean: float
    null_std: float
    n: int
    p_value: float | None
    method: str
    n_perms: int | None
    stratified: bool
    centered: bool
    undefined_reason: str | None = None


# --------------------------------------------------------------------------- permutations


def draw_permutations(
    n: int,
    n_perms: int,
    seed: int,
    strata: Sequence[Any] | np.ndarray | None = None,
) -> np.ndarray:
    """Permutations of ``range(n)``, shape ``(n_perms, n)``, dtype int32 (int64 past 2**31).

    Unstratified: row k is the k-th ``np.random.RandomState(seed).permutation(n)``, the study's
    sequence. With ``strata`` (``n`` labels) each row permutes indices only within their
    stratum (uniformly; drawn from the same RandomState via random sort keys); a stratum of one
    is a fixed point.
    """
    if n < 1 or n_perms < 1:
        raise XlalignError(f"need n >= 1 and n_perms >= 1; got n={n}, n_perms={n_perms}")
    rng = np.random.RandomState(seed)
    dtype = np.int32 if n < 2**31 else np.int64
    out = np.empty((n_perms, n), dtype=dtype)
    codes = strata_codes(strata, n)
    if codes is None:
        for k in range(n_perms):
            out[k] = rng.permutation(n)
        return out
    grouped = np.argsort(codes, kind="stable")
    step = max(1, 4_000_000 // n)
    for k0 in range(0, n_perms, step):
        k1 = min(n_perms, k0 + step)
        keys = rng.random_sample((k1 - k0, n))
        # Sorting by (stratum, random key) lists each stratum's members in random order, in the
        # same slots that `grouped` lists them in index order: slot t maps grouped[t] -> new[t].
        new = np.lexsort((keys, np.broadcast_to(codes, keys.shape)), axis=-1)
        out[k0:k1][:, grouped] = new
    return out


# --------------------------------------------------------------------------- exact moments


@dataclass(frozen=True)
class _Moments:
    matched: float
    mean: float
    var: float


def _chunks(idx: np.ndarray | None, n: int) -> Iterator[Any]:
    size = CHUNK_ROWS
    for start in range(0, n, size):
        yield slice(start, start + size) if idx is None else idx[start : start + size]


def _groups(codes: np.ndarray | None, n: int) -> list[np.ndarray | None]:
    if codes is None:
        return [None]
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return list(np.split(order, bounds))


def _centred_cross(
    xu: UnitRows,
    yu: UnitRows,
    idx: np.ndarray | None,
    n_s: int,
    xbar: np.ndarray,
    ybar: np.ndarray,
    path: str,
) -> float:
    """``||Xc Yc^T||_F^2 = sum_ij (xc_i . yc_j)^2`` over the rows ``idx`` (all if None)."""
    if path == "feature":
        # sum_ij (xc_i . yc_j)^2 = tr((Xc^T Xc)(Yc^T Yc)): two d x d scatter matrices.
        gx = np.zeros((xu.d, xu.d), dtype=np.float64)
        gy = np.zeros((yu.d, yu.d), dtype=np.float64)
        for c in _chunks(idx, n_s):
            xc, yc = xu.take(c) - xbar, yu.take(c) - ybar
            gx += xc.T @ xc
            gy += yc.T @ yc
        return float(np.einsum("ij,ij->", gx, gy))
    if path != "gram":
        raise ValueError(f"unknown path {path!r}")
    total = 0.0
    for r in _chunks(idx, n_s):
        xr = xu.take(r) - xbar
        for c in _chunks(idx, n_s):
            blk = xr @ (yu.take(c) - ybar).T
            total += float(np.einsum("ij,ij->", blk, blk))
    return total


def _group_moments(
    xu: UnitRows, yu: UnitRows, idx: np.ndarray | None, n_s: int, path: str
) -> tuple[float, float, float]:
    """``(sum_i S_ii, mean of S, sum_ij (S_ij - r_i - c_j + m)^2)`` over the rows ``idx``."""
    if path == "auto":
        path = "direct" if n_s <= min(DIRECT_MAX_N, xu.d) else "gram" if n_s <= xu.d else "feature"
    if path == "direct":
        rows = slice(None) if idx is None else idx
        (xr, nx), (yr, ny) = xu.raw(rows), yu.raw(rows)
        s = xr @ yr.T
        s /= nx[:, None]
        s /= ny[None, :]
        m = float(s.mean())
        c = s - s.mean(axis=1, keepdims=True) - s.mean(axis=0, keepdims=True) + m
        return float(np.trace(s)), m, float(np.einsum("ij,ij->", c, c))
    sx = np.zeros(xu.d)
    sy = np.zeros(yu.d)
    diag = 0.0
    for c in _chunks(idx, n_s):
        xb, yb = xu.take(c), yu.take(c)
        sx += xb.sum(axis=0)
        sy += yb.sum(axis=0)
        diag += float(np.einsum("ij,ij->", xb, yb))
    xbar, ybar = sx / n_s, sy / n_s
    cross = _centred_cross(xu, yu, idx, n_s, xbar, ybar, path) if n_s > 1 else 0.0
    return diag, float(xbar @ ybar), cross


def _exact_moments(
    xu: UnitRows, yu: UnitRows, codes: np.ndarray | None, path: str = "auto"
) -> _Moments:
    """Matched value and exact null mean/variance; ``path`` ("auto", "direct", "gram",
    "feature") only chooses how, tests run all three."""
    n = xu.n
    matched_sum = 0.0
    mean = 0.0
    var = 0.0
    for idx in _groups(codes, n):
        n_s = n if idx is None else int(idx.size)
        diag, block_mean, cross = _group_moments(xu, yu, idx, n_s, path)
        w = n_s / n
        matched_sum += diag
        mean += w * block_mean
        if n_s > 1:
            var += w * w * cross / (n_s * n_s * (n_s - 1))
    return _Moments(matched=matched_sum / n, mean=mean, var=max(var, 0.0))


#: Entries per row block of the float32-product path's passes (``rows x d``: 1 MiB of float64,
#: so a block stays in cache; larger blocks measured twice as slow on the development VM).
_BLOCK_ENTRIES = 2**17


class _Scratch:
    """The float32-product path's reusable array of float32 centred rows ``(2, n, d)``. A sweep
    keeps one for all its sites, so no site pays for fresh memory (allocating and
    page-faulting it cost as much as the product)."""

    def __init__(self) -> None:
        self.f32: np.ndarray | None = None

    def array(self, n: int, d: int) -> np.ndarray:
        if self.f32 is None or self.f32.shape != (2, n, d):
            self.f32 = np.empty((2, n, d), dtype=np.float32)
        return self.f32


def _approximate_mean(a: np.ndarray) -> np.ndarray:
    """The mean of ``a``'s unit rows in float32 arithmetic (relative error ~1e-7): only a
    shift common to all rows, which double-centring removes exactly, so it need only bring the
    rows near their mean before they are rounded."""
    norms = np.sqrt(np.einsum("ij,ij->i", a, a))
    with np.errstate(divide="ignore"):
        inv = np.where(norms > 0, 1 / norms, 0).astype(np.float32)
    return (inv @ a).astype(np.float64) / a.shape[0]


def _float32_moments(x: np.ndarray, y: np.ndarray, scratch: _Scratch | None) -> _Moments:
    """Matched value and exact null moments with a float32 ``n x n`` product (``"auto"``).

    ``x``, ``y``: float32 ``(n, d)``, checked finite (zero rows are checked here, with the
    float64 path's errors). ``scratch``: reusable arrays (the sweep passes one) or None.

    One pass over row blocks converts each block to float64 and takes there the row norms, the
    unit rows, the matched sum ``sum_i u_i . v_i`` and the column sums, so the matched value
    and the null mean are float64 exactly as on the float64 path (their difference, the
    numerator of z, is where float32 rounding would show). In the same pass the unit rows minus
    an approximate mean are rounded to float32, so the rounding is relative to the rows' spread
    around their mean (small when they share a large mean vector, as hidden states do), not to
    the unit rows. Only the variance's ``||Xc Yc^T||_F^2`` comes from their float32 product;
    double-centring it in float64 removes the shift exactly, being common to all rows.
    """
    n, d = x.shape
    f32 = (scratch or _Scratch()).array(n, d)
    step = max(1, _BLOCK_ENTRIES // d)
    buf = np.empty((2, min(step, n), d), dtype=np.float64)
    shifts = (_approximate_mean(x), _approximate_mean(y))
    cols = np.zeros((2, d))
    matched = 0.0
    for start in range(0, n, step):
        rows = slice(start, start + step)
        m = min(step, n - start)
        for k, a in enumerate((x, y)):
            u = buf[k, :m]
            np.copyto(u, a[rows])
            norms = np.sqrt(np.einsum("ij,ij->i", u, u))
            if not norms.all():
                _raise_zero_rows(x, y)
            u *= (1.0 / norms)[:, None]
            cols[k] += u.sum(axis=0)
        matched += float(np.einsum("ij,ij->", buf[0, :m], buf[1, :m]))
        for k in (0, 1):
            np.subtract(buf[k, :m], shifts[k], out=f32[k, rows], casting="same_kind")
    p = (f32[0] @ f32[1].T).astype(np.float64)
    c = p - p.mean(axis=1, keepdims=True) - p.mean(axis=0, keepdims=True) + p.mean()
    cross = float(np.einsum("ij,ij->", c, c))
    mean = float((cols[0] / n) @ (cols[1] / n))
    return _Moments(matched=matched / n, mean=mean, var=cross / (n * n * (n - 1)))


def _raise_zero_rows(x: np.ndarray, y: np.ndarray) -> None:
    """Raise the float64 path's error for zero rows: x's first, all rows named."""
    check_nonzero(row_norms(x), "x")
    check_nonzero(row_norms(y), "y")
    raise AssertionError("unreachable: a block had a zero row")  # pragma: no cover


def _use_float32(
    products: str, x: np.ndarray, y: np.ndarray, codes: np.ndarray | None, center: bool
) -> bool:
    """Whether the exact z takes the float32-product path: float32 inputs, no strata, no
    centring, and the float64 path's direct case (``N <= min(d, 4096)``, where it forms the
    ``N x N`` cosine matrix too; for ``N > d`` it sums ``d x d`` scatter matrices instead,
    cheaper than any ``N x N`` product), with the scratch within ``DENSE_MAX_ENTRIES`` a side."""
    if products == "float64":
        return False
    n, d = x.shape
    return (
        x.dtype == np.float32
        and y.dtype == np.float32
        and codes is None
        and not center
        and n <= min(d, DIRECT_MAX_N)
        and n * d <= DENSE_MAX_ENTRIES
    )


def _degenerate_reason(m: _Moments, codes: np.ndarray | None) -> str | None:
    if codes is not None and np.unique(codes).size == codes.size:
        return _REASON_SINGLETONS
    if np.sqrt(m.var) <= DEGENERATE_STD:
        return _REASON_FLAT
    return None


# --------------------------------------------------------------------------- Monte Carlo


def _seed_unit(a: np.ndarray, center: bool) -> np.ndarray:
    """Rows scaled to unit length in the input dtype, exactly as the study's script did."""
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    if center:
        a = a - a.mean(axis=0)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _mc_null(
    x: np.ndarray, y: np.ndarray, perms: np.ndarray, center: bool
) -> tuple[np.generic, np.ndarray]:
    """``(matched, T)`` with ``T`` of shape ``(n_perms,)``, in the study's arithmetic."""
    n = x.shape[0]
    if n <= MC_DENSE_MAX_N:
        xu, yu = _seed_unit(x, center), _seed_unit(y, center)
        matched = np.mean(np.sum(xu * yu, axis=1))
        s = np.empty((n, n), dtype=np.result_type(xu, yu))
        for i in range(n):
            # Row-by-row elementwise product then np.sum: the same reduction (hence the same
            # rounding) as the study's np.sum(zh_u * en_u[perm], axis=1), unlike a BLAS matmul.
            s[i] = np.sum(xu[i][None, :] * yu, axis=1)
        rows = np.arange(n)[None, :]
        t = np.empty(perms.shape[0], dtype=s.dtype)
        step = max(1, 2_000_000 // n)
        for k0 in range(0, perms.shape[0], step):
            t[k0 : k0 + step] = np.mean(s[rows, perms[k0 : k0 + step]], axis=1)
        return matched, t
    xr, yr = UnitRows(x, "x", center=center), UnitRows(y, "y", center=center)
    yall = yr.all()
    acc = np.zeros(perms.shape[0], dtype=np.float64)
    diag = 0.0
    block = max(1, min(1024, 2**25 // n))
    for start in range(0, n, block):
        stop = min(n, start + block)
        s_b = xr.take(slice(start, stop)) @ yall.T
        local = np.arange(stop - start)
        diag += float(s_b[local, local + start].sum())
        acc += s_b[local[None, :], perms[:, start:stop]].sum(axis=1)
    return np.float64(diag / n), acc / n


def null_samples(
    x: Any,
    y: Any,
    perms: np.ndarray,
    *,
    center: bool = False,
) -> np.ndarray:
    """Scrambled statistics ``T_k = mean_i cos(x_i, y_perms[k, i])``, shape ``(n_perms,)``.

    ``x``, ``y``: ``(n_pairs, d_model)``; ``perms``: ``(n_perms, n_pairs)`` from
    :func:`draw_permutations`. Same arithmetic as the Monte Carlo z (the study's, in the input
    dtype). Passing one ``perms`` to every layer puts all layers on one null.
    """
    xa, ya = check_pair(x, y)
    UnitRows(xa, "x", center=center)
    UnitRows(ya, "y", center=center)
    perms = _check_perms(perms, xa.shape[0])
    return _mc_null(xa, ya, perms, center)[1]


def _check_perms(perms: np.ndarray, n: int) -> np.ndarray:
    p = np.asarray(perms)
    if p.ndim != 2 or p.shape[1] != n:
        raise XlalignError(f"perms must have shape (n_perms, {n}); got {p.shape}")
    return p


# --------------------------------------------------------------------------- public z


def _check_method(method: str, n_perms: int) -> None:
    if method not in METHODS:
        raise XlalignError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if method == "monte-carlo" and (not isinstance(n_perms, (int, np.integer)) or n_perms < 2):
        raise XlalignError(f"n_perms must be an integer >= 2; got {n_perms!r}")


def _z_validated(
    x: np.ndarray,
    y: np.ndarray,
    method: str,
    perms: np.ndarray | None,
    codes: np.ndarray | None,
    center: bool,
    products: str = "auto",
    scratch: _Scratch | None = None,
) -> ZResult:
    n = x.shape[0]
    if method == "exact" and _use_float32(products, x, y, codes, center):
        moments = _float32_moments(x, y, scratch)
    else:
        xu, yu = UnitRows(x, "x", center=center), UnitRows(y, "y", center=center)
        moments = _exact_moments(xu, yu, codes)
    reason = _degenerate_reason(moments, codes)
    common = {"n": n, "stratified": codes is not None, "centered": center}
    if method == "exact":
        std = float(np.sqrt(moments.var))
        z = None if reason else (moments.matched - moments.mean) / std
        return ZResult(
            z=z,
            matched=moments.matched,
            null_mean=moments.mean,
            null_std=std,
            p_value=None,
            method="exact",
            n_perms=None,
            undefined_reason=reason,
            **common,
        )
    assert perms is not None
    matched, t = _mc_null(x, y, perms, center)
    t_mean, t_std = t.mean(), t.std()
    if reason is None and t_std == 0:
        reason = "the Monte Carlo null sample has zero spread (every drawn permutation gave "
        reason += "the same statistic); use method='exact'"
    z = None if reason else float((matched - t_mean) / t_std)
    p = None if reason else (1 + int(np.count_nonzero(t >= matched))) / (t.size + 1)
    return ZResult(
        z=z,
        matched=float(matched),
        null_mean=float(t_mean),
        null_std=float(t_std),
        p_value=p,
        method="monte-carlo",
        n_perms=int(t.size),
        undefined_reason=reason,
        **common,
    )


def matched_vs_scrambled_z(
    x: Any,
    y: Any,
    method: str = "exact",
    n_perms: int = 1000,
    seed: int = 42,
    strata: Sequence[Any] | np.ndarray | None = None,
    center: bool = False,
    products: str = "auto",
) -> ZResult:
    """The matched-vs-scrambled z of pairs ``(x_i, y_i)`` with its null moments.

    Args:
        x, y: ``(n_pairs, d_model)`` arrays, row i of each is pair i (any real dtype; n >= 3).
        method: ``"exact"`` (closed form over all permutations) or ``"monte-carlo"``
            (``n_perms`` seeded permutations in the study's arithmetic; gives ``p_value``).
        n_perms, seed: Monte Carlo draws and the ``RandomState`` seed (ignored for exact).
        strata: optional ``n_pairs`` labels; the null permutes y only within each label, which
            separates instance-level from category-level alignment. A stratum of size 1 is a
            fixed point: it adds its own cosine to the null mean and nothing to its variance. If
            every stratum has size 1 the null is a single point and ``z`` is None.
        center: subtract each side's mean vector (x rows' mean from x, y rows' mean from y)
            before unit-normalising, removing the shared language-identity direction.
        products: how the exact z multiplies. ``"auto"``: when x and y are both float32 (as
            stored activations are), unstratified, not centred and ``n <= min(d, 4096)``, the
            ``n x n`` product is taken in float32 from rows normalised and centred in float64
            (see ``docs/metrics.md``); z then stays within ``1e-6 * max(|z|, 1)`` of the
            float64 value (tested, including a large shared mean, one dominant dimension and an
            outlier pair) at about half the cost. Otherwise, and with ``"float64"``, every
            product is float64.

    Raises:
        XlalignError: mismatched rows, fewer than 3 pairs, NaN/inf rows, zero-norm rows (or,
            with ``center``, rows equal to their side's mean), bad strata, method or products.
    """
    _check_method(method, n_perms)
    _check_products(products)
    xa, ya = check_pair(x, y, min_pairs=3, rescale=False)
    codes = strata_codes(strata, xa.shape[0])
    if not (method == "exact" and _use_float32(products, xa, ya, codes, center)):
        xa, ya = safe_scale(xa), safe_scale(ya)  # the float32 path computes in float64
    perms = None
    if method == "monte-carlo":
        perms = draw_permutations(xa.shape[0], n_perms, seed, strata)
    return _z_validated(xa, ya, method, perms, codes, center, products)


def _check_products(products: str) -> None:
    if products not in PRODUCTS:
        raise XlalignError(f"products must be one of {', '.join(PRODUCTS)}; got {products!r}")


def matched_vs_scrambled_z_sweep(
    pairs: Mapping[str, tuple[Any, Any]],
    method: str = "exact",
    n_perms: int = 1000,
    seed: int = 42,
    strata: Sequence[Any] | np.ndarray | None = None,
    center: bool = False,
    products: str = "auto",
) -> dict[str, ZResult]:
    """Site name -> :class:`ZResult` for every ``(x, y)`` in ``pairs``, all on one null.

    Every site must hold the same pairs (same ``n_pairs``). For Monte Carlo one permutation
    array ``(n_perms, n_pairs)`` is drawn once and used at every site (so layers are compared on
    the same null, as in calibrated similarity); a site's result equals
    ``matched_vs_scrambled_z(x, y, ...)`` with the same arguments. Errors name the site. The
    float32 path's scratch array is allocated once and reused by every site of one shape.
    """
    if not pairs:
        raise XlalignError("no sites given: pairs is empty")
    _check_method(method, n_perms)
    _check_products(products)
    checked: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    first: str | None = None
    may_fast = method == "exact" and strata is None
    for name, xy in pairs.items():
        try:
            xa, ya = check_pair(*xy, min_pairs=3, rescale=False)
            if not (may_fast and _use_float32(products, xa, ya, None, center)):
                xa, ya = safe_scale(xa), safe_scale(ya)  # the float32 path computes in float64
        except XlalignError as err:
            raise XlalignError(f"site {name!r}: {err}") from err
        if first is not None and xa.shape[0] != checked[first][0].shape[0]:
            raise XlalignError(
                f"site {name!r} has {xa.shape[0]} pairs but site {first!r} has "
                f"{checked[first][0].shape[0]}; every site needs the same pairs"
            )
        if first is None:
            first = name
        checked[name] = (xa, ya)
    n = next(iter(checked.values()))[0].shape[0]
    codes = strata_codes(strata, n)
    perms = draw_permutations(n, n_perms, seed, strata) if method == "monte-carlo" else None
    out: dict[str, ZResult] = {}
    scratch = _Scratch()
    for name, (xa, ya) in checked.items():
        try:
            out[name] = _z_validated(xa, ya, method, perms, codes, center, products, scratch)
        except XlalignError as err:
            raise XlalignError(f"site {name!r}: {err}") from err
    return out


def z_from_cosines(
    s: np.ndarray,
    codes: np.ndarray | None = None,
    center: bool = False,
) -> ZResult:
    """The exact z from a cosine matrix ``s[i, j] = cos(x_i, y_j)`` ``(n, n)`` already built.

    For callers that hold ``s`` anyway (the layer sweep builds it once for z, retrieval, xSIM,
    the hub score and the intervals). ``codes``: integer stratum codes ``(n,)`` or None;
    ``center`` only labels the result (``s`` must then come from centred rows). Same moments,
    in the same float64 arithmetic, as :func:`matched_vs_scrambled_z`'s direct path.
    """
    s = np.asarray(s, dtype=np.float64)
    n = s.shape[0]
    if s.ndim != 2 or s.shape[1] != n or n < 3:
        raise XlalignError(f"s must be a square (n, n) matrix with n >= 3; got {s.shape}")
    matched_sum = mean = var = 0.0
    for idx in _groups(codes, n):
        b = s if idx is None else s[np.ix_(idx, idx)]
        n_s = b.shape[0]
        m = float(b.mean())
        c = b - b.mean(axis=1, keepdims=True) - b.mean(axis=0, keepdims=True) + m
        w = n_s / n
        matched_sum += float(np.trace(b))
        mean += w * m
        if n_s > 1:
            var += w * w * float(np.einsum("ij,ij->", c, c)) / (n_s * n_s * (n_s - 1))
    moments = _Moments(matched=matched_sum / n, mean=mean, var=max(var, 0.0))
    reason = _degenerate_reason(moments, codes)
    std = float(np.sqrt(moments.var))
    return ZResult(
        z=None if reason else (moments.matched - moments.mean) / std,
        matched=moments.matched,
        null_mean=moments.mean,
        null_std=std,
        n=n,
        p_value=None,
        method="exact",
        n_perms=None,
        stratified=codes is not None,
        centered=center,
        undefined_reason=reason,
    )
