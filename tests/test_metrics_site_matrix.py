"""Site x site matrices between two models: equal to the pairwise metrics and to plain numpy."""

from __future__ import annotations

import numpy as np
import pytest

from xlalign.errors import XlalignError
from xlalign.metrics import linear_cka, linear_cka_matrix, mutual_knn, mutual_knn_matrix
from xlalign.metrics import similarity as sim


def _cka64(x, y):
    x = np.asarray(x, np.float64) - np.mean(x, axis=0)
    y = np.asarray(y, np.float64) - np.mean(y, axis=0)
    k, lm = x @ x.T, y @ y.T
    return np.sum(k * lm) / np.sqrt(np.sum(k * k) * np.sum(lm * lm))


@pytest.fixture
def sites():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(50, 6))
    xs = [base @ rng.normal(size=(6, 24)) + 0.3 * i * rng.normal(size=(50, 24)) for i in range(4)]
    ys = [base @ rng.normal(size=(6, 40)) + 0.5 * j * rng.normal(size=(50, 40)) for j in range(3)]
    return [x.astype(np.float32) for x in xs], [y.astype(np.float32) for y in ys]


@pytest.mark.parametrize("gram_entries", [sim._GRAM_MAX_ENTRIES, 0])  # Gram and feature routes
def test_cka_matrix_equals_plain_numpy(sites, monkeypatch, gram_entries):
    monkeypatch.setattr(sim, "_GRAM_MAX_ENTRIES", gram_entries)
    xs, ys = sites
    m = linear_cka_matrix(xs, ys)
    want = np.array([[_cka64(x, y) for y in ys] for x in xs])
    np.testing.assert_allclose(m.value, want, rtol=1e-10)
    np.testing.assert_allclose(
        m.value, [[linear_cka(x, y).cka for y in ys] for x in xs], rtol=1e-10
    )


def test_knn_matrix_equals_pairwise_mutual_knn(sites):
    xs, ys = sites
    m = mutual_knn_matrix(xs, ys, k=7)
    want = [[mutual_knn(x, y, k=7).score for y in ys] for x in xs]
    np.testing.assert_array_equal(m.value, want)


def test_a_model_against_itself_has_1_on_the_diagonal(sites):
    xs, _ = sites
    np.testing.assert_allclose(np.diag(linear_cka_matrix(xs, xs).value), 1.0, atol=1e-12)
    np.testing.assert_array_equal(np.diag(mutual_knn_matrix(xs, xs, k=5).value), 1.0)


def test_cka_null_by_brute_force_permutations(sites):
    xs, ys = sites
    m = linear_cka_matrix(xs, ys, n_perms=40, seed=3)
    rng = np.random.default_rng(3)
    perms = [rng.permutation(50) for _ in range(40)]
    null = np.array([_cka64(xs[1], ys[2][p]) for p in perms])
    assert m.null_mean[1, 2] == pytest.approx(null.mean(), rel=1e-9)
    assert m.null_std[1, 2] == pytest.approx(null.std(), rel=1e-9)
    assert m.p_value[1, 2] == (1 + np.sum(null >= m.value[1, 2])) / 41
    assert m.value[0, 0] > m.null_mean[0, 0] + 5 * m.null_std[0, 0]  # shared signal is seen


def test_no_variance_and_bad_input_are_named(sites):
    xs, ys = sites
    flat = np.ones((50, 24), np.float32)
    m = linear_cka_matrix([flat, xs[0]], ys)
    assert np.isnan(m.value[0]).all() and np.isfinite(m.value[1]).all()
    assert "no variance" in m.reasons[(0, 1)]
    with pytest.raises(XlalignError, match="same prompts; got row counts"):
        linear_cka_matrix(xs, [y[:40] for y in ys])
    with pytest.raises(XlalignError, match="k must be between"):
        mutual_knn_matrix(xs, ys, k=50)
