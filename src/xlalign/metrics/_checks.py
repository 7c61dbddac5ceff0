"""Input validation shared by the metrics: every check raises ``XlalignError`` naming the problem.

The arrays are scanned in row chunks so that validating a ``(100_000, 4096)`` float32 matrix
never allocates a float64 copy of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from xlalign.errors import XlalignError

#: Rows per chunk when scanning or normalising big arrays (bounds temporaries to ~chunk * d).
CHUNK_ROWS = 4096

#: Inputs with at most this many entries are converted to float64 once and kept (64 MiB);
#: bigger ones are converted block by block as they are read.
DENSE_MAX_ENTRIES = 2**23

#: Cosines closer than this count as equal (ties). Cosines lie in [-1, 1]; float64 dot products
#: of unit vectors carry rounding noise of order sqrt(d) * 1e-16 that depends on BLAS blocking,
#: so two exactly duplicated rows can come back 1e-16 apart. Float32 data cannot resolve cosine
#: differences below ~1e-7, so 1e-10 merges rounding noise and nothing the data can carry.
TIE_TOL = 1e-10

#: A centred row (or centred matrix) whose norm is at most this fraction of the uncentred
#: data's is rounding residue of the mean, not a direction: it counts as zero.
RESIDUE_TOL = 1e-10


class Result:
    """Mixin for the frozen result dataclasses: ``to_dict`` gives a JSON-safe dict."""

    def to_dict(self) -> dict[str, Any]:
        """Field name -> value (floats, ints, strings, tuples; None stays None)."""
        return dataclasses.asdict(cast(Any, self))


def _show_indices(idx: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(i)) for i in idx[:limit])
    more = f", ... ({idx.size} in all)" if idx.size > limit else ""
    return f"[{shown}{more}]"


def as_float_array(a: Any, name: str) -> np.ndarray:
    """The input as a 2-D real floating array ``(n_pairs, d)``, without copying float32/64."""
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise XlalignError(f"{name} must be a 2-D array (n_pairs, d_model); got shape {arr.shape}")
    if arr.dtype.kind in "iub":
        arr = arr.astype(np.float64)
    elif arr.dtype.kind != "f":
        raise XlalignError(f"{name} must hold real numbers; got dtype {arr.dtype}")
    if arr.shape[1] == 0:
        raise XlalignError(f"{name} has no columns (shape {arr.shape})")
    return arr


def check_finite(a: np.ndarray, name: str) -> None:
    """Raise if any row of ``a`` holds NaN or inf, naming the first such row."""
    for start in range(0, a.shape[0], CHUNK_ROWS):
        bad = ~np.isfinite(a[start : start + CHUNK_ROWS]).all(axis=1)
        if bad.any():
            first = start + int(np.argmax(bad))
            rest = ~np.isfinite(a[first:]).all(axis=1)
            raise XlalignError(
                f"{name} has non-finite values (NaN or inf): first in row {first} "
                f"({int(rest.sum())} such rows from there on)"
            )


def check_pair(
    x: Any,
    y: Any,
    *,
    min_pairs: int = 3,
    same_dim: bool = True,
    rescale: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` validated: 2-D, real, finite, same row count, at least ``min_pairs`` rows.

    ``same_dim``: also require equal widths (needed wherever x is compared with y by cosine).
    ``rescale=False`` skips :func:`safe_scale`, for callers that compute in float64 from
    float32 inputs (no float32 value over- or underflows a float64 sum of squares).
    """
    xa = as_float_array(x, "x")
    ya = as_float_array(y, "y")
    if xa.shape[0] != ya.shape[0]:
        raise XlalignError(
            "x and y must have one row per pair, the same number of rows; "
            f"got x.shape={xa.shape}, y.shape={ya.shape}"
        )
    if same_dim and xa.shape[1] != ya.shape[1]:
        raise XlalignError(
            "x and y must have the same width to compare them by cosine; "
            f"got x.shape={xa.shape}, y.shape={ya.shape}"
        )
    n = xa.shape[0]
    if n < min_pairs:
        raise XlalignError(f"need at least {min_pairs} pairs (rows), got {n}")
    check_finite(xa, "x")
    check_finite(ya, "y")
    if not rescale:
        return xa, ya
    return safe_scale(xa), safe_scale(ya)


#: Inputs whose largest magnitude lies outside ``2**-SAFE_EXPONENT .. 2**SAFE_EXPONENT`` are
#: rescaled by :func:`safe_scale` before any metric squares them.
SAFE_EXPONENT = 40


def max_abs(a: np.ndarray) -> float:
    """The largest ``|a_ij|``, scanned in row chunks (no full-size temporary)."""
    m = 0.0
    for start in range(0, a.shape[0], CHUNK_ROWS):
        blk = a[start : start + CHUNK_ROWS]
        if blk.size:
            m = max(m, float(np.abs(blk).max()))
    return m


def safe_scale(a: np.ndarray) -> np.ndarray:
    """``a`` times a power of two that brings its largest magnitude near 1, if it is extreme.

    Every metric here is invariant to scaling one side by a constant, and a power of two is
    exact in binary floating point: where ``a``'s own arithmetic is representable, the scaled
    arithmetic gives the same bits (the study's float32 numbers stay bit for bit), and where it
    is not (squares of 1e-30 underflow and of 1e30 overflow in float32, of 1e200 in float64) it
    now is. The dtype is kept, unless scaling in it would flush a row to zero or to subnormal
    values (rows of very different sizes, say 1e13 and 1e-35 in float32): then the scaled copy
    is float64, where every row keeps its digits. Arrays already in ``2**+-SAFE_EXPONENT`` come
    back unchanged.
    """
    exponent = safe_exponent(max_abs(a))
    if exponent == 0:
        return a
    scaled = np.ldexp(a, -exponent).astype(a.dtype, copy=False)
    if a.dtype != np.float64 and _flushes_a_row(a, scaled):
        return np.ldexp(np.asarray(a, dtype=np.float64), -exponent)
    return scaled


def _flushes_a_row(a: np.ndarray, scaled: np.ndarray) -> bool:
    """Whether a nonzero row of ``a`` has no normal-range value left in ``scaled``."""
    tiny = np.finfo(scaled.dtype).tiny
    for start in range(0, a.shape[0], CHUNK_ROWS):
        kept = np.abs(scaled[start : start + CHUNK_ROWS]).max(axis=1, initial=0.0)
        nonzero = np.abs(a[start : start + CHUNK_ROWS]).max(axis=1, initial=0.0) > 0
        if bool(np.any(nonzero & (kept < tiny))):
            return True
    return False


def safe_exponent(m: float) -> int:
    """The ``e`` such that :func:`safe_scale` multiplies by ``2**-e`` an array whose largest
    magnitude is ``m``; 0 when it leaves the array unchanged (``m`` is 0 or not extreme)."""
    if m == 0.0:
        return 0
    exponent = int(np.frexp(m)[1])
    return 0 if -SAFE_EXPONENT <= exponent <= SAFE_EXPONENT else exponent


def row_norms(a: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
    """Float64 L2 norms of the rows of ``a - shift``, shape ``(n_rows,)``, computed in chunks."""
    out = np.empty(a.shape[0], dtype=np.float64)
    for start in range(0, a.shape[0], CHUNK_ROWS):
        blk = np.asarray(a[start : start + CHUNK_ROWS], dtype=np.float64)
        if shift is not None:
            blk = blk - shift
        out[start : start + CHUNK_ROWS] = np.sqrt(np.einsum("ij,ij->i", blk, blk))
    return out


def column_mean(a: np.ndarray) -> np.ndarray:
    """Float64 mean of the rows of ``a``, shape ``(d,)``, accumulated in chunks."""
    total = np.zeros(a.shape[1], dtype=np.float64)
    for start in range(0, a.shape[0], CHUNK_ROWS):
        total += np.asarray(a[start : start + CHUNK_ROWS], dtype=np.float64).sum(axis=0)
    return total / a.shape[0]


def check_nonzero(norms: np.ndarray, name: str, *, centred: bool = False) -> None:
    """Raise if any norm is zero (a zero vector has no direction, so no cosine)."""
    zero = np.flatnonzero(norms == 0)
    if zero.size == 0:
        return
    what = (
        f"rows equal to the mean of {name} (zero norm after centring)"
        if centred
        else ("zero-norm rows")
    )
    raise XlalignError(
        f"{name} has {what} at indices {_show_indices(zero)}: "
        "a zero vector has no direction, so cosine is undefined"
    )


class UnitRows:
    """Rows of ``a`` (optionally minus its column mean) scaled to unit length, on demand.

    Holds ``a``, the float64 row norms and, for small inputs, a float64 copy of ``a``;
    ``take(rows)`` returns a fresh float64 block of unit rows, so callers stream over big
    inputs without a full float64 copy.
    """

    def __init__(self, a: np.ndarray, name: str, *, center: bool = False) -> None:
        self.a = a
        self.name = name
        self.shift: np.ndarray | None = None
        self._raw: np.ndarray | None = None
        if a.shape[0] * a.shape[1] <= DENSE_MAX_ENTRIES:
            raw = np.asarray(a, dtype=np.float64)
            sq = np.einsum("ij,ij->i", raw, raw)
            raw_max = float(np.sqrt(sq.max()))
            if center:
                self.shift = raw.mean(axis=0)
                raw = raw - self.shift
                sq = np.einsum("ij,ij->i", raw, raw)
            norms = np.sqrt(sq)
            self._raw = raw
        else:
            raw_max = float(row_norms(a).max()) if center else 0.0
            self.shift = column_mean(a) if center else None
            norms = row_norms(a, self.shift)
        if center:
            # A row equal to the mean leaves rounding residue, not a direction.
            norms = np.where(norms <= RESIDUE_TOL * raw_max, 0.0, norms)
        check_nonzero(norms, name, centred=center)
        self.norms = norms

    @property
    def n(self) -> int:
        return int(self.a.shape[0])

    @property
    def d(self) -> int:
        return int(self.a.shape[1])

    def raw(self, rows: slice | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Float64 rows before scaling (minus the mean if centred) and their norms.

        May be views of the input: never modify them in place.
        """
        if self._raw is not None:
            return self._raw[rows], self.norms[rows]
        blk = np.array(self.a[rows], dtype=np.float64)
        if self.shift is not None:
            blk -= self.shift
        return blk, self.norms[rows]

    def take(self, rows: slice | np.ndarray) -> np.ndarray:
        """Float64 unit rows ``(len(rows), d)``, a fresh array."""
        blk, norms = self.raw(rows)
        if self._raw is not None:
            return blk / norms[:, None]
        blk /= norms[:, None]  # raw() made a fresh copy: scale it in place, no second copy
        return blk

    def all(self) -> np.ndarray:
        """All unit rows ``(n, d)`` in float64 (only for inputs known to be small)."""
        return self.take(slice(None))


def strata_codes(strata: Sequence[Any] | np.ndarray | None, n: int) -> np.ndarray | None:
    """Integer codes ``(n,)`` in ``0..n_strata-1`` (first-seen order irrelevant), or None."""
    if strata is None:
        return None
    labels = np.asarray(strata)
    if labels.ndim != 1:
        raise XlalignError(f"strata must be a 1-D sequence of labels; got shape {labels.shape}")
    if labels.shape[0] != n:
        raise XlalignError(f"strata has {labels.shape[0]} labels but there are {n} pairs")
    if labels.dtype.kind in "iufUSb":
        _, codes = np.unique(labels, return_inverse=True)
        return np.asarray(codes, dtype=np.int64).reshape(n)
    seen: dict[Any, int] = {}
    return np.array([seen.setdefault(lab, len(seen)) for lab in labels.tolist()], dtype=np.int64)


def check_k(k: int, n: int, what: str, *, low: int = 1) -> None:
    """Raise unless ``low <= k <= n - 1`` (neighbours exclude the point itself)."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
        raise XlalignError(f"{what}: k must be an integer, got {k!r}")
    if k < low or k > n - 1:
        raise XlalignError(f"{what}: k must be between {low} and n - 1 = {n - 1}; got k={k}")
