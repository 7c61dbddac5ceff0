"""Influential pairs: leave-one-out values against brute force, and the fewest pairs whose
removal flips a finding, checked by recomputation in float64 numpy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from xlalign.studies.influence import influential_pairs, loo_values


def _cos(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    return x @ y.T


def _z(x: np.ndarray, y: np.ndarray) -> float:
    """Matched-vs-scrambled z by full enumeration of the permutations (small n only)."""
    s, n = _cos(x, y), len(x)
    stats = np.array([s[np.arange(n), list(p)].mean() for p in itertools.permutations(range(n))])
    return float((np.trace(s) / n - stats.mean()) / stats.std())


def _p1(x: np.ndarray, y: np.ndarray) -> float:
    """P@1 x->y: the partner strictly nearer than every other candidate (ties are misses)."""
    s = _cos(x, y)
    hits = [all(s[i, i] > s[i, j] for j in range(len(s)) if j != i) for i in range(len(s))]
    return float(np.mean(hits))


def _cka(x: np.ndarray, y: np.ndarray) -> float:
    """Biased linear CKA from its definition (Kornblith et al. 2019)."""
    n = len(x)
    h = np.eye(n) - 1.0 / n
    k, ell = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float((k * ell).sum() / np.sqrt((k * k).sum() * (ell * ell).sum()))


@pytest.mark.parametrize("metric", ["z", "p1_xy", "p1_yx", "cka"])
def test_leave_one_out_equals_recomputing_without_each_pair(metric):
    rng = np.random.default_rng(1)
    n = 8 if metric == "z" else 30  # z by full enumeration of 7! permutations
    x = rng.normal(size=(n, 5))
    y = x + rng.normal(size=(n, 5)) * 1.2
    y[2] = y[5]  # a duplicated row: ties in P@1
    ref = {"z": _z, "p1_xy": _p1, "p1_yx": lambda a, b: _p1(b, a), "cka": _cka}[metric]
    expected = [ref(np.delete(x, i, 0), np.delete(y, i, 0)) for i in range(n)]
    np.testing.assert_allclose(loo_values(metric, x, y), expected, rtol=1e-9, atol=1e-12)


def _value(x: np.ndarray, y: np.ndarray, keep: np.ndarray) -> float:
    return _cka(x[keep], y[keep])


def _flips(model, control, removed, ahead) -> bool:
    keep = np.ones(len(model[0]), dtype=bool)
    keep[list(removed)] = False
    m, c = _value(*model, keep), _value(*control, keep)
    return (m <= c) if ahead else (m > c)


def test_a_few_outlier_rows_that_carry_the_model_above_its_control_are_named():
    """Three rows far from the rest, the same in both languages, lift the model's CKA above a
    control's; removing them (3 of 200, under 2%) drops it below. No single row does."""
    rng = np.random.default_rng(0)
    n, d = 200, 16
    x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    big = rng.normal(size=(3, d)) * 12
    x[[10, 50, 90]] = big
    y[[10, 50, 90]] = big + rng.normal(size=(3, d))
    shared = rng.normal(size=(n, 2))  # the control: a little real alignment everywhere
    cx = np.hstack([shared, rng.normal(size=(n, d - 2))])
    cy = np.hstack([shared, rng.normal(size=(n, d - 2))])
    everything = np.ones(n, dtype=bool)
    assert _value(x, y, everything) > _value(cx, cy, everything)
    ids = [f"r{i}" for i in range(n)]
    res = influential_pairs("cka", (x, y), (cx, cy), _value, ids)
    assert res is not None and res["direction"] == "below" and res["of"] == n
    assert sorted(res["ids"]) == ["r10", "r50", "r90"] and res["k"] == 3
    assert res["model"]["after"] <= res["control"]["after"]
    assert _flips((x, y), (cx, cy), [10, 50, 90], ahead=True)
    # the smallest such set: no one row and no two of the outliers flip it
    assert not any(_flips((x, y), (cx, cy), [i], ahead=True) for i in range(n))
    assert not any(
        _flips((x, y), (cx, cy), pair, ahead=True)
        for pair in itertools.combinations([10, 50, 90], 2)
    )


def test_rows_that_hold_the_model_below_its_control_are_named_too():
    """The HSK case: a few rows whose 'translation' is one repeated placeholder hold the
    model's CKA below the control's; without them it rises above."""
    rng = np.random.default_rng(3)
    n, d = 200, 12
    latent = rng.normal(size=(n, d))
    x, y = latent + 0.3 * rng.normal(size=(n, d)), latent + 0.3 * rng.normal(size=(n, d))
    y[[3, 7, 11, 19]] = 40.0  # four identical far-away vectors in one language only
    cx, cy = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    cx[:, 0] = cy[:, 0] = rng.normal(size=n) * 2
    everything = np.ones(n, dtype=bool)
    assert _value(x, y, everything) < _value(cx, cy, everything)
    res = influential_pairs("cka", (x, y), (cx, cy), _value, [str(i) for i in range(n)])
    assert res is not None and res["direction"] == "above"
    assert set(res["ids"]) <= {"3", "7", "11", "19"}
    removed = [int(i) for i in res["ids"]]
    assert _flips((x, y), (cx, cy), removed, ahead=False)


def test_a_robust_gap_gives_none_and_a_tiny_sample_is_not_checked():
    rng = np.random.default_rng(2)
    n, d = 200, 8
    latent = rng.normal(size=(n, d))
    x, y = latent + 0.2 * rng.normal(size=(n, d)), latent + 0.2 * rng.normal(size=(n, d))
    cx, cy = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    ids = [str(i) for i in range(n)]
    assert influential_pairs("cka", (x, y), (cx, cy), _value, ids) is None
    # under 50 pairs, 2% is less than one pair: nothing to remove
    few = slice(0, 49)
    assert influential_pairs("cka", (x[few], y[few]), (cx[few], cy[few]), _value, ids[:49]) is None


def test_leave_one_out_keeps_its_precision_under_a_large_shared_offset():
    """Hidden states carry massive activations: one dimension offset by 1e5 in every row. CKA
    and z do not change under a column offset (CKA) or a row/column shift of the cosines (z's
    null), and the leave-one-out must not lose them to rounding."""
    rng = np.random.default_rng(4)
    n = 30
    x = rng.normal(size=(n, 6))
    y = x + rng.normal(size=(n, 6))
    x[:, 0] += 1e5
    y[:, 0] += 1e5

    def centred_cka(a, b):
        return _cka(a - a.mean(0), b - b.mean(0))

    expected = [centred_cka(np.delete(x, i, 0), np.delete(y, i, 0)) for i in range(n)]
    np.testing.assert_allclose(loo_values("cka", x, y), expected, rtol=1e-7)
    assert np.isfinite(loo_values("z", x, y)).all()
