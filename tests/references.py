"""Brute-force float64 references that several test files check the library against.

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
