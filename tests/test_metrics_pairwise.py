"""Shared-matrix metrics (metrics/pairwise.py) equal the public functions, ties included."""

from __future__ import annotations

import numpy as np
import pytest

from references import paired, with_ties
from xlalign.metrics import (
    cka_ci,
    cknna,
    linear_cka,
    matched_vs_scrambled_z,
    mutual_knn,
    p1_ci,
    retrieval_scores,
    semantic_hub_score,
    xsim_error,
    z_ci,
)
from xlalign.metrics.pairwise import Pair, Side

CASES = {
    "plain": lambda: paired(60, 24, 0.6, 0),
    "shared_mean": lambda: paired(50, 32, 0.4, 1, offset=20.0),
    "ties": lambda: with_ties(40, 16, 2),
}


@pytest.mark.parametrize("case", CASES)
def test_every_metric_equals_the_public_function(case: str) -> None:
    x, y = CASES[case]()
    p = Pair(Side(x, "x"), Side(y, "y"))
    strata = np.arange(x.shape[0]) % 4
    for codes, center in ((None, False), (strata, False), (None, True)):
        got = p.z(codes, center).to_dict()
        # the shared matrices are float64: compare with the public function's float64 products
        want = matched_vs_scrambled_z(
            x, y, strata=codes, center=center, products="float64"
        ).to_dict()
        for key, value in want.items():
            if isinstance(value, float):
                # strata: BLAS blocks a sub-block product differently; a large shared mean amplifies it
                assert got[key] == pytest.approx(value, rel=1e-10, abs=1e-14), key
            else:
                assert got[key] == value, key
    assert p.retrieval() == retrieval_scores(x, y)
    assert p.xsim() == xsim_error(x, y)
    hub, want_hub = p.hub(), semantic_hub_score(x, y)
    assert hub.score == pytest.approx(want_hub.score, rel=1e-12, abs=1e-14)
    assert p.cka().cka == pytest.approx(linear_cka(x, y).cka, rel=1e-12)
    assert p.mutual_knn() == mutual_knn(x, y)
    got_c, want_c = p.cknna(), cknna(x, y)
    assert got_c.score == pytest.approx(want_c.score, rel=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_intervals_equal_the_public_helpers(case: str) -> None:
    x, y = CASES[case]()
    p = Pair(Side(x, "x"), Side(y, "y"))
    kw = dict(n_boot=80, seed=3, level=0.9)
    for got, want in (
        (p.z_ci(80, 3, 0.9, None, False), z_ci(x, y, **kw)),  # type: ignore[arg-type]
        (p.p1_ci("xy", 80, 3, 0.9), p1_ci(x, y, direction="xy", **kw)),  # type: ignore[arg-type]
        (p.p1_ci("yx", 80, 3, 0.9), p1_ci(x, y, direction="yx", **kw)),  # type: ignore[arg-type]
        (p.cka_ci(80, 3, 0.9), cka_ci(x, y, **kw)),  # type: ignore[arg-type]
    ):
        assert got.low == pytest.approx(want.low, rel=1e-10)
        assert got.high == pytest.approx(want.high, rel=1e-10)
        assert got.n_skipped == want.n_skipped


def test_one_side_serves_many_pairs_unchanged() -> None:
    pivot, a = paired(30, 12, 0.5, 4)
    _, b = paired(30, 12, 0.5, 5)
    side = Side(pivot, "x")
    first = Pair(side, Side(a, "y")).cka().cka
    Pair(side, Side(b, "y")).cka()
    assert Pair(side, Side(a, "y")).cka().cka == first == pytest.approx(linear_cka(pivot, a).cka)


def test_errors_match_the_public_functions() -> None:
    x, y = paired(10, 4, 0.5, 6)
    x[3] = 0.0
    p = Pair(Side(x, "x"), Side(y, "y"))
    with pytest.raises(Exception, match="zero-norm rows at indices \\[3\\]"):
        p.z()
    y2 = np.full((10, 4), np.nan)
    with pytest.raises(Exception, match="non-finite"):
        Side(y2, "y")


def test_sides_rescale_extreme_inputs_like_the_public_functions() -> None:
    """Squares of 1e300 overflow float64: a Side rescales by a power of two first, as
    check_pair does, so centring does not turn every row into 'equal to the mean'."""
    x, y = paired(30, 12, 0.6, 5)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    big = Pair(Side(x64 * 1e300, "x"), Side(y64 * 1e300, "y"))
    ref = Pair(Side(x64, "x"), Side(y64, "y"))
    for center in (False, True):
        assert big.z(None, center).z == pytest.approx(ref.z(None, center).z, rel=1e-12)
    assert big.cka().cka == pytest.approx(ref.cka().cka, rel=1e-12)
    assert big.retrieval() == ref.retrieval()
