"""Brute-force float64 references (and shared test data) that several test files use.

Written from the peers' published definitions (platonic-rep ``metrics.py``: ``hsic_biased``,
``hsic_unbiased``, ``cka``; Song et al. 2012 eq. 5), densely and literally: explicit ``n x n``
kernels and the explicit centring matrix. Nothing here calls xlalign.
"""

from __future__ import annotations

import numpy as np


def hsic_biased(k: np.ndarray, l_: np.ndarray) -> float:
    """tr(K H L H), H the explicit centring matrix (platonic-rep ``hsic_biased``)."""
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l_ @ h))


def hsic_unbiased(k: np.ndarray, l_: np.ndarray) -> float:
    """Song et al. (2012) eq. 5, term by term, as platonic-rep's ``hsic_unbiased``."""
    m = k.shape[0]
    kt, lt = k.copy(), l_.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    value = (
        np.sum(kt * lt.T)
        + np.sum(kt) * np.sum(lt) / ((m - 1) * (m - 2))
        - 2 * np.sum(kt @ lt) / (m - 2)
    )
    return float(value / (m * (m - 3)))


def hsics(x: np.ndarray, y: np.ndarray, unbiased: bool = False) -> tuple[float, float, float]:
    """``(HSIC(K, L), HSIC(K, K), HSIC(L, L))`` of the linear kernels of x and y."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    k, l_ = x @ x.T, y @ y.T
    f = hsic_unbiased if unbiased else hsic_biased
    return f(k, l_), f(k, k), f(l_, l_)


def cka(x: np.ndarray, y: np.ndarray, unbiased: bool = False, eps: float = 0.0) -> float:
    """Linear CKA; ``eps`` = 1e-6 is platonic-rep's denominator term."""
    kl, kk, ll = hsics(x, y, unbiased)
    return kl / (np.sqrt(kk * ll) + eps)


def z_from_cosines(s: np.ndarray, labels: np.ndarray | None = None) -> float | None:
    """The exact matched-vs-scrambled z of a cosine matrix ``s`` over all (within-stratum)
    permutations: the closed form per stratum block, written out; None when the null is flat."""
    n = len(s)
    labels = np.zeros(n, dtype=int) if labels is None else np.asarray(labels)
    mean = var = 0.0
    for lab in np.unique(labels):
        g = np.flatnonzero(labels == lab)
        b = s[np.ix_(g, g)]
        m = b.mean()
        mean += len(g) / n * m
        if len(g) > 1:
            resid = b - b.mean(axis=1, keepdims=True) - b.mean(axis=0, keepdims=True) + m
            var += (len(g) / n) ** 2 * (resid**2).sum() / (len(g) ** 2 * (len(g) - 1))
    if np.sqrt(var) <= 1e-9:
        return None
    return float((np.trace(s) / n - mean) / np.sqrt(var))


def paired(
    n: int, d: int, signal: float, seed: int, offset: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Float32 pairs sharing ``signal`` times a latent, with a common mean ``offset`` away."""
    rs = np.random.RandomState(seed)
    shared = rs.randn(n, d)
    mu = offset * rs.randn(d)
    x = signal * shared + rs.randn(n, d) + mu
    return x.astype(np.float32), (signal * shared + rs.randn(n, d) + mu).astype(np.float32)


def with_ties(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Duplicated rows on both sides: exact cosine ties and tied k-NN distances."""
    x, y = paired(n, d, 0.8, seed)
    x[5] = x[4]
    y[7] = y[6]
    y[9] = y[8] * 2.0  # same direction, another length: a cosine tie
    x[11] = x[12]
    y[11] = y[12]
    return x, y
