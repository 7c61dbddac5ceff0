"""The torch backend (metrics/torch_ops.py, on the CPU) equals the numpy one on every metric."""

from __future__ import annotations

import numpy as np
import pytest

from xlalign.metrics import pairwise
from xlalign.metrics.bootstrap import CI

torch_ops = pytest.importorskip("xlalign.metrics.torch_ops")


def paired(n: int, d: int, signal: float, seed: int, offset: float = 0.0):
    rs = np.random.RandomState(seed)
    shared = rs.randn(n, d)
    mu = offset * rs.randn(d)
    x = signal * shared + rs.randn(n, d) + mu
    return x.astype(np.float32), (signal * shared + rs.randn(n, d) + mu).astype(np.float32)


def with_ties(n: int, d: int, seed: int):
    x, y = paired(n, d, 0.8, seed)
    x[5] = x[4]
    y[7] = y[6]
    y[9] = y[8] * 2.0
    x[11], y[11] = x[12], y[12]
    return x, y


def brute(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Float64 brute force from the definitions (no shared code with either backend)."""
    xu = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    yu = y.astype(np.float64) / np.linalg.norm(y.astype(np.float64), axis=1, keepdims=True)
    s = xu @ yu.T
    n = s.shape[0]
    mean = s.mean()
    c = s - s.mean(1, keepdims=True) - s.mean(0, keepdims=True) + mean
    z = (np.trace(s) / n - mean) / np.sqrt((c**2).sum() / (n * n * (n - 1)))
    xc = x - x.astype(np.float64).mean(0)
    yc = y - y.astype(np.float64).mean(0)
    cka = np.linalg.norm(xc.T @ yc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    off = (s.sum() - np.trace(s)) / (n * (n - 1))
    return {"z": z, "cka": cka, "hub": np.trace(s) / n - off}


CASES = {
    "plain": lambda: paired(60, 24, 0.6, 0),
    "shared_mean": lambda: paired(50, 32, 0.4, 1, offset=20.0),
    "ties": lambda: with_ties(40, 16, 2),
}


def both(x, y):
    return (
        pairwise.Pair(pairwise.Side(x, "x"), pairwise.Side(y, "y")),
        torch_ops.Pair(torch_ops.Side(x, "x", "cpu"), torch_ops.Side(y, "y", "cpu")),
    )


def same_ci(a: CI, b: CI) -> None:
    assert a.low == pytest.approx(b.low, rel=1e-9)
    assert a.high == pytest.approx(b.high, rel=1e-9)
    assert a.point == pytest.approx(b.point, rel=1e-12)
    assert a.n_skipped == b.n_skipped


@pytest.mark.parametrize("case", CASES)
def test_torch_equals_numpy_on_every_metric(case: str) -> None:
    x, y = CASES[case]()
    npp, tp = both(x, y)
    strata = np.arange(x.shape[0]) % 3
    for codes, center in ((None, False), (strata, False), (None, True)):
        a, b = npp.z(codes, center).to_dict(), tp.z(codes, center).to_dict()
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, rel=1e-10, abs=1e-14), key
            else:
                assert b[key] == value, key
        same_ci(npp.z_ci(50, 1, 0.9, codes, center), tp.z_ci(50, 1, 0.9, codes, center))
    # decisions (hits, ranks, k-NN sets, xSIM errors) are identical, ties included
    assert tp.retrieval() == npp.retrieval()
    assert tp.xsim() == npp.xsim()
    assert tp.mutual_knn() == npp.mutual_knn()
    assert tp.mutual_knn(3) == npp.mutual_knn(3)
    assert tp.cknna().score == pytest.approx(npp.cknna().score, rel=1e-12)
    assert tp.cka().cka == pytest.approx(npp.cka().cka, rel=1e-12)
    assert tp.hub().score == pytest.approx(npp.hub().score, rel=1e-12, abs=1e-15)
    for direction in ("xy", "yx", "mexa"):
        same_ci(npp.p1_ci(direction, 60, 2, 0.95), tp.p1_ci(direction, 60, 2, 0.95))
    same_ci(npp.cka_ci(60, 2, 0.95), tp.cka_ci(60, 2, 0.95))
    ref = brute(x, y)
    assert tp.z().z == pytest.approx(ref["z"], rel=1e-9)
    assert tp.cka().cka == pytest.approx(ref["cka"], rel=1e-9)
    assert tp.hub().score == pytest.approx(ref["hub"], rel=1e-9, abs=1e-12)


def test_ties_are_misses_in_both_backends() -> None:
    x, y = with_ties(40, 16, 2)
    y[3] = y[3] + 0.0
    x[20] = y[20]
    y[21] = y[20]  # x_20 ties between y_20 (gold) and y_21: a miss
    npp, tp = both(x, y)
    assert not npp.hits()[0][20] and not tp.hits()[0][20]
    np.testing.assert_array_equal(npp.hits()[2], tp.hits()[2])


def test_torch_errors_name_the_row() -> None:
    x, y = paired(10, 4, 0.5, 6)
    x[3] = 0.0
    _, tp = both(x, y)
    with pytest.raises(Exception, match="zero-norm rows at indices \\[3\\]"):
        tp.z()
