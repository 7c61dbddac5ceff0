"""The torch backend (metrics/torch_ops.py, on the CPU) equals the numpy one on every metric."""

from __future__ import annotations

import numpy as np
import pytest

from references import paired, with_ties
from xlalign.metrics import pairwise
from xlalign.metrics.bootstrap import CI

torch_ops = pytest.importorskip("xlalign.metrics.torch_ops")


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
    for key, rel in (("low", 1e-9), ("high", 1e-9), ("point", 1e-12)):
        va, vb = getattr(a, key), getattr(b, key)
        assert va == vb if None in (va, vb) else va == pytest.approx(vb, rel=rel), key
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


# --------------------------------------------------------------------------- device-side steps


def knn_inputs() -> dict[str, np.ndarray]:
    rs = np.random.RandomState(7)
    ties = rs.randint(-3, 4, size=(12, 9)).astype(np.float64)  # many equal |x| in a row
    ties[2] = 5.0  # a constant row
    ties[3] = -ties[4]  # rows of equal magnitudes
    return {
        "float32": rs.randn(15, 20).astype(np.float32),
        "ties_and_constant": ties,
        "one_column": rs.randn(6, 1),
        "two_columns": rs.randn(6, 2),
        "huge": rs.randn(8, 11) * 1e200,  # rescaled by a power of two first (safe_scale)
        "tiny": rs.randn(8, 11) * 1e-200,
        "subnormal": rs.randn(8, 11) * 1e-310,  # 2**-e overflows a float: scaled in two steps
    }


@pytest.mark.parametrize("q", [0.95, 0.5, 0.3, 1.0])
@pytest.mark.parametrize("case", list(knn_inputs()))
def test_prepare_t_equals_numpy_prepare(case: str, q: float) -> None:
    from xlalign.metrics.similarity import _prepare

    a = knn_inputs()[case]
    want = _prepare(a, q, "x")
    got = torch_ops.prepare_t(torch_ops.torch.tensor(a).to(torch_ops.F64), q, "x")
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize(
    "rows",
    [
        {3: 0.0},  # a zero row
        {r: 0.0 for r in range(1, 12)},  # most rows zero: every quantile 0, so every row clamps
    ],
)
def test_prepare_t_zero_rows_raise_numpy_message(rows: dict[int, float]) -> None:
    from xlalign.metrics.similarity import _prepare

    a = np.random.RandomState(3).randn(12, 6)
    for r, v in rows.items():
        a[r] = v
    a[0, 1:] = 0.0  # row 0: one non-zero entry
    with pytest.raises(Exception) as want:
        _prepare(a, 0.95, "x")
    with pytest.raises(type(want.value)) as got:
        torch_ops.prepare_t(torch_ops.torch.tensor(a), 0.95, "x")
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32])
def test_device_rows_and_gram_equal_numpy(dtype) -> None:
    import warnings

    x, _ = paired(30, 12, 0.5, 4, offset=5.0)
    x = np.asarray(x * 8, dtype=dtype)
    x.flags.writeable = False  # as a memory-mapped run's arrays: no torch warning
    ns, ts = pairwise.Side(x, "x"), torch_ops.Side(x, "x", "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for center in (False, True):
            (wr, wn), (gr, gn) = ns.rows(center), ts.t_rows(center)
            np.testing.assert_allclose(gr.numpy(), wr, rtol=1e-13, atol=1e-12)
            np.testing.assert_allclose(gn.numpy(), wn, rtol=1e-13)
        (wk, wkk, wv), (gk, gkk, gv) = ns.gram(), ts.t_gram()
    np.testing.assert_allclose(gk.numpy(), wk, rtol=1e-11, atol=1e-9)
    assert gkk == pytest.approx(wkk, rel=1e-12) and gv == wv


def residue_rows() -> np.ndarray:
    a = np.random.RandomState(5).randn(7, 5) + 1e3
    a[6] = a[:6].mean(axis=0)  # the mean of all 7 rows: only rounding residue after centring
    return a


@pytest.mark.parametrize(
    ("make", "center", "match"),
    [
        (lambda: np.where(np.arange(6)[:, None] == 2, 0.0, np.ones((6, 4))), False, "zero-norm"),
        (residue_rows, True, "equal to the mean"),
        (lambda: np.ones((5, 3)), True, "equal to the mean"),  # every row: flat after centring
    ],
)
def test_device_zero_norm_and_residue_rows_raise_numpy_message(make, center, match) -> None:
    a = make()
    with pytest.raises(Exception, match=match) as want:
        pairwise.Side(a, "x").rows(center)
    with pytest.raises(type(want.value)) as got:
        torch_ops.Side(a, "x", "cpu").t_rows(center)
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize(
    ("n", "n_boot", "seed", "chunk_entries"), [(40, 60, 2, None), (9, 25, 0, 36)]
)
def test_device_counts_are_numpys_and_cross_once(
    monkeypatch, n, n_boot, seed, chunk_entries
) -> None:
    from xlalign.metrics import bootstrap

    if chunk_entries:  # several chunks
        monkeypatch.setattr(bootstrap, "BOOT_CHUNK_ENTRIES", chunk_entries)
    want = list(bootstrap.bootstrap_counts(n, n_boot, seed))
    got = list(torch_ops.device_counts(n, n_boot, seed, "cpu"))
    assert len(got) == len(want) == (1 if chunk_entries is None else 7)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch_ops.F64
        np.testing.assert_array_equal(g.numpy(), w)
    again = list(torch_ops.device_counts(n, n_boot, seed, torch_ops.torch.device("cpu")))
    assert all(a is b for a, b in zip(again, got, strict=True))  # the kept device copies


def test_device_counts_too_big_to_keep_are_drawn_each_time(monkeypatch) -> None:
    from xlalign.metrics import bootstrap

    monkeypatch.setattr(bootstrap, "BOOT_CACHE_ENTRIES", 10)
    want = np.concatenate(list(bootstrap.bootstrap_counts(8, 5, 3)))
    got = list(torch_ops.device_counts(8, 5, 3, "cpu"))
    np.testing.assert_array_equal(torch_ops.torch.cat(got).numpy(), want)
    assert got[0] is not next(torch_ops.device_counts(8, 5, 3, "cpu"))


def flat():
    """x's rows all equal: no spread in the scrambled null, no variance for CKA."""
    x, y = paired(20, 6, 0.5, 8)
    x[:] = x[0]
    return x, y


@pytest.mark.parametrize("case", [*CASES, "flat"])
def test_device_point_values_equal_numpy(case: str) -> None:
    from xlalign.metrics.bootstrap import _cka_point, _z_from_block

    x, y = flat() if case == "flat" else CASES[case]()
    npp, tp = both(x, y)
    for center in (False,) if case == "flat" else (False, True):  # flat: centred rows are 0
        got = tp.z_ci(30, 4, 0.9, None, center)
        want = _z_from_block(npp.cosines(center), None)
        assert (got.point is None) == (want is None) == (case == "flat")
        if want is not None:
            assert got.point == pytest.approx(want, rel=1e-12)
            assert got.point == tp.z(center=center).z
        same_ci(npp.z_ci(30, 4, 0.9, None, center), got)
    kx, ky = npp.x.gram()[0], npp.y.gram()[0]
    want = _cka_point(kx, ky, max(float(np.trace(kx)), float(np.trace(ky))))
    got = tp.cka_ci(30, 4, 0.9)
    assert (got.point is None) == (want is None) == (case == "flat")
    if want is not None:
        assert got.point == pytest.approx(want, rel=1e-12)
    same_ci(npp.cka_ci(30, 4, 0.9), got)


@pytest.mark.parametrize("case", CASES)
def test_device_p1_intervals_are_numpys_bit_for_bit(case: str) -> None:
    npp, tp = both(*CASES[case]())
    for direction in ("xy", "yx", "mexa"):
        assert tp.p1_ci(direction, 70, 5, 0.9) == npp.p1_ci(direction, 70, 5, 0.9)
    with pytest.raises(Exception, match="direction must be"):
        tp.p1_ci("xz", 10, 0, 0.9)


def test_per_cell_path_copies_no_matrix_to_host(monkeypatch) -> None:
    x, y = with_ties(40, 16, 2)
    _, tp = both(x, y)
    copied: list[tuple[int, ...]] = []
    real = torch_ops._np

    def spy(t):
        copied.append(tuple(t.shape))
        return real(t)

    monkeypatch.setattr(torch_ops, "_np", spy)
    for center in (False, True):
        tp.z(center=center)
        tp.z_ci(20, 1, 0.9, None, center)
    tp.retrieval(), tp.xsim(), tp.hub(), tp.cka(), tp.cka_ci(20, 1, 0.9)
    tp.mutual_knn(), tp.cknna(), tp.p1_ci("xy", 20, 1, 0.9)
    # vectors only (n per pair, n_boot per interval, n k for CKNNA): nothing n x d or n x n
    assert copied and all(int(np.prod(shape)) < 40 * 16 for shape in copied), copied
