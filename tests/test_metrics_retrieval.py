"""Retrieval metrics against brute force written from the published definitions."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from xlalign.errors import XlalignError
from xlalign.metrics import retrieval_hits, retrieval_scores, xsim_error


def cosines(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Float64 cosine matrix by elementwise sums, so equal rows give bit-equal cosines."""
    xu = x / np.sqrt((x * x).sum(axis=1, keepdims=True))
    yu = y / np.sqrt((y * y).sum(axis=1, keepdims=True))
    return (xu[:, None, :] * yu[None, :, :]).sum(axis=-1)


def brute_retrieval(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    s = cosines(np.asarray(x, np.float64), np.asarray(y, np.float64))
    n = s.shape[0]
    row = [all(s[i, i] > s[i, j] for j in range(n) if j != i) for i in range(n)]
    col = [all(s[j, j] > s[i, j] for i in range(n) if i != j) for j in range(n)]
    rank = [1 + sum(s[i, j] >= s[i, i] for j in range(n) if j != i) for i in range(n)]
    return {
        "p1_xy": float(np.mean(row)),
        "p1_yx": float(np.mean(col)),
        "mexa": float(np.mean([r and c for r, c in zip(row, col, strict=True)])),
        "mrr": float(np.mean([1 / r for r in rank])),
    }


def brute_xsim(x: np.ndarray, y: np.ndarray, k: int) -> int:
    """Errors per the LASER ratio margin; ties at the k-th cosine all count as candidates."""
    s = cosines(np.asarray(x, np.float64), np.asarray(y, np.float64))
    n = s.shape[0]
    a = np.array([np.mean(sorted(s[i], reverse=True)[:k]) for i in range(n)])
    b = np.array([np.mean(sorted(s[:, j], reverse=True)[:k]) for j in range(n)])
    errors = 0
    for i in range(n):
        kth = sorted(s[i], reverse=True)[k - 1]
        cand = [j for j in range(n) if s[i, j] >= kth]
        score = {j: s[i, j] / ((a[i] + b[j]) / 2) for j in cand}
        ok = i in cand and all(score[i] > score[j] for j in cand if j != i)
        errors += not ok
    return errors


def laser_xsim_literal(x: np.ndarray, y: np.ndarray, k: int) -> int:
    """LASER's xsim.py calculate_error with margin 'ratio', faiss search replaced by argsort."""
    s = cosines(np.asarray(x, np.float64), np.asarray(y, np.float64))
    idx_xy = np.argsort(-s, axis=1)[:, :k]
    cos_xy = np.take_along_axis(s, idx_xy, axis=1)
    idx_yx = np.argsort(-s.T, axis=1)[:, :k]
    cos_yx = np.take_along_axis(s.T, idx_yx, axis=1)
    avg_xy, avg_yx = cos_xy.mean(axis=1), cos_yx.mean(axis=1)
    scores = np.zeros((s.shape[0], k))
    for i in range(s.shape[0]):
        for j in range(k):
            scores[i, j] = cos_xy[i, j] / ((avg_xy[i] + avg_yx[idx_xy[i, j]]) / 2)
    best = idx_xy[np.arange(s.shape[0]), scores.argmax(axis=1)]
    return int(np.count_nonzero(best != np.arange(s.shape[0])))


def pairs(n: int, d: int, signal: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rs = np.random.RandomState(seed)
    shared = rs.randn(n, d)
    return signal * shared + rs.randn(n, d), signal * shared + rs.randn(n, d)


def with_ties(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs with exact duplicate rows, so some partners tie with other candidates."""
    x, y = pairs(12, 6, 0.8, seed)
    y[5] = y[3]  # x_3 and x_5 see their partners tie
    x[8] = x[7]  # y_7 and y_8 see their partners tie
    x[10], y[10] = x[9], y[9]  # a duplicated pair: ties both ways
    return x.astype(np.float32), y.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("signal", [0.3, 1.0])
def test_retrieval_equals_brute_force(seed: int, signal: float) -> None:
    x, y = pairs(25, 8, signal, seed)
    res = retrieval_scores(x, y)
    ref = brute_retrieval(x, y)
    assert res.n == 25
    for key, value in ref.items():
        assert getattr(res, key) == pytest.approx(value, abs=1e-12), key


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_ties_are_misses(seed: int) -> None:
    x, y = with_ties(seed)
    res = retrieval_scores(x, y)
    ref = brute_retrieval(x, y)
    for key, value in ref.items():
        assert getattr(res, key) == pytest.approx(value, abs=1e-12), key
    hit_xy, hit_yx, rank = retrieval_hits(x, y)
    assert not hit_xy[3] and not hit_xy[5] and not hit_xy[9] and not hit_xy[10]
    assert not hit_yx[7] and not hit_yx[8] and not hit_yx[9] and not hit_yx[10]
    assert rank[9] >= 2 and rank[10] >= 2


def test_all_identical_x_rows() -> None:
    x = np.ones((5, 3))
    y = np.random.RandomState(0).randn(5, 3)
    res = retrieval_scores(x, y)
    # Every y sees all x tied; x_i still finds y_i when y_i is the y closest to the shared x.
    assert res.p1_yx == 0.0 and res.mexa == 0.0 and res.p1_xy == 0.2
    assert res.p1_xy == brute_retrieval(x, y)["p1_xy"]
    assert res.mrr == pytest.approx(brute_retrieval(x, y)["mrr"])


def test_block_size_does_not_change_results() -> None:
    x, y = with_ties(4)
    assert retrieval_scores(x, y, block_size=3) == retrieval_scores(x, y, block_size=1024)
    assert xsim_error(x, y, block_size=3) == xsim_error(x, y, block_size=1024)
    assert retrieval_scores(x, y, block_size=1) == retrieval_scores(x, y)


def test_two_pairs_are_allowed() -> None:
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([[0.9, 0.1], [0.2, 0.8]])
    res = retrieval_scores(x, y)
    assert (res.p1_xy, res.p1_yx, res.mexa, res.mrr) == (1.0, 1.0, 1.0, 1.0)
    swapped = retrieval_scores(x, y[::-1])
    assert (swapped.p1_xy, swapped.mexa, swapped.mrr) == (0.0, 0.0, 0.5)
    assert xsim_error(x, y, k=1).n_errors == brute_xsim(x, y, 1) == 0
    with pytest.raises(XlalignError, match=r"at least 2 pairs \(rows\), got 1"):
        retrieval_scores(x[:1], y[:1])


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("k", [1, 4, 7])
def test_xsim_equals_brute_force_and_laser_literal(seed: int, k: int) -> None:
    x, y = pairs(30, 8, 0.6, seed)
    res = xsim_error(x, y, k=k)
    assert res.n_errors == brute_xsim(x, y, k)
    assert res.n_errors == laser_xsim_literal(x, y, k)  # no ties in continuous data
    assert res.error == pytest.approx(res.n_errors / 30)
    assert (res.n, res.k) == (30, k)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_xsim_with_ties_equals_brute_force(seed: int) -> None:
    x, y = with_ties(seed)
    for k in (1, 2, 4):
        assert xsim_error(x, y, k=k).n_errors == brute_xsim(x, y, k)


def test_xsim_margin_helps_against_a_hub() -> None:
    """A hub target close to every source wins on raw cosine but loses under the margin."""
    rs = np.random.RandomState(0)
    x = rs.randn(20, 16)
    y = x + 0.3 * rs.randn(20, 16)
    hub = x.mean(axis=0) * 4
    y[0] = hub + 0.01 * rs.randn(16)
    cos_errors = 20 * (1 - retrieval_scores(x, y).p1_xy)
    assert xsim_error(x, y, k=4).n_errors <= cos_errors
    assert xsim_error(x, y, k=4).n_errors == brute_xsim(x, y, 4)


def test_xsim_bad_k_and_negative_margin() -> None:
    x, y = pairs(5, 4, 0.5, 0)
    with pytest.raises(XlalignError, match=r"k must be between 1 and n - 1 = 4; got k=5"):
        xsim_error(x, y, k=5)
    with pytest.raises(XlalignError, match="got k=0"):
        xsim_error(x, y, k=0)
    x = np.eye(3)
    y = -np.eye(3) - 0.1
    with pytest.raises(XlalignError, match=r"margin denominator .* <= 0"):
        xsim_error(x, y, k=1)


def test_retrieval_memory_stays_within_a_block() -> None:
    """N = 8,000: the full cosine matrix is 512 MB; one 1024-row block is 65 MB."""
    x, y = pairs(8000, 8, 2.0, 0)
    tracemalloc.start()
    try:
        res = retrieval_scores(x, y)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 0 < res.p1_xy < 1
    assert peak < 200 * 2**20


def test_retrieval_bad_inputs() -> None:
    x, y = pairs(6, 4, 0.5, 0)
    with pytest.raises(XlalignError, match=r"x.shape=\(6, 4\), y.shape=\(5, 4\)"):
        retrieval_scores(x, y[:5])
    y[2] = np.nan
    with pytest.raises(XlalignError, match=r"y has non-finite .* row 2"):
        retrieval_scores(x, y)
    y[2] = 0.0
    with pytest.raises(XlalignError, match=r"y has zero-norm rows at indices \[2\]"):
        xsim_error(x, y)
    with pytest.raises(XlalignError, match="block_size"):
        retrieval_scores(x, x, block_size=0)
