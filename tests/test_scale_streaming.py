"""Streaming statistics: big memory-mapped inputs give the in-memory values with bounded memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import xlalign
from xlalign.metrics import (
    _checks,
    linear_cka,
    matched_vs_scrambled_z,
    retrieval,
    retrieval_scores,
    semantic_hub_score,
    similarity,
    xsim_error,
)
from xlalign.metrics._checks import UnitRows
from xlalign.store.synthetic import write_synthetic_run
from xlalign.studies.layers import CI_MAX_N, SweepConfig, layer_sweep


def paired(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rs = np.random.RandomState(seed)
    z = rs.randn(n, 8)
    x = z @ rs.randn(8, d) + 0.7 * rs.randn(n, d) + 4 * rs.randn(d)
    y = z @ rs.randn(8, d) + 0.7 * rs.randn(n, d) + 2 * rs.randn(d)
    return x.astype(np.float32), y.astype(np.float32)


@pytest.fixture
def force_streaming(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every input count as big, with small chunks and tiles, so small data stream."""
    monkeypatch.setattr(similarity, "DENSE_MAX_ENTRIES", 0)
    monkeypatch.setattr(similarity, "CHUNK_ROWS", 97)
    monkeypatch.setattr(retrieval, "DENSE_Y_MAX_ENTRIES", 0)
    monkeypatch.setattr(retrieval, "TILE_COLS", 53)

    def no_full_copy(self: UnitRows) -> np.ndarray:
        raise AssertionError("a streamed metric asked for every unit row at once")

    monkeypatch.setattr(UnitRows, "all", no_full_copy)


@pytest.mark.parametrize("unbiased", [False, True])
def test_streamed_cka_equals_in_memory(unbiased: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = paired(700, 24)
    y = y[:, :20]  # widths may differ
    dense = linear_cka(x, y, unbiased=unbiased)
    monkeypatch.setattr(similarity, "DENSE_MAX_ENTRIES", 0)
    monkeypatch.setattr(similarity, "CHUNK_ROWS", 97)
    called: list[int] = []
    real = similarity._linear_cka_streamed
    monkeypatch.setattr(similarity, "_linear_cka_streamed", lambda *a: called.append(1) or real(*a))
    streamed = linear_cka(x, y, unbiased=unbiased)
    assert called and streamed.cka == pytest.approx(dense.cka, rel=1e-11)


def test_streamed_cka_keeps_the_no_variance_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = paired(300, 8)
    y[:] = y[0]
    monkeypatch.setattr(similarity, "DENSE_MAX_ENTRIES", 0)
    res = linear_cka(x, y)
    assert res.cka is None and "y has no variance" in (res.undefined_reason or "")


def test_tiled_retrieval_equals_in_memory(force_streaming: None) -> None:
    x, y = paired(400, 16, seed=3)
    y[7] = y[9]  # an exact tie: both must count it as a miss
    dense_r = _dense(lambda: retrieval_scores(x, y, block_size=64))
    dense_x = _dense(lambda: xsim_error(x, y, k=4, block_size=64))
    assert retrieval_scores(x, y, block_size=64) == dense_r
    assert xsim_error(x, y, k=4, block_size=64) == dense_x
    assert 0 < dense_r.p1_xy < 1 and 0 < dense_x.error < 1  # not a trivial case


def _dense(fn):  # type: ignore[no-untyped-def]
    """Run ``fn`` with the in-memory paths restored (inside a force_streaming test)."""
    saved = retrieval.DENSE_Y_MAX_ENTRIES, UnitRows.all
    retrieval.DENSE_Y_MAX_ENTRIES = 2**26
    UnitRows.all = lambda self: self.take(slice(None))  # type: ignore[method-assign]
    try:
        return fn()
    finally:
        retrieval.DENSE_Y_MAX_ENTRIES, UnitRows.all = saved  # type: ignore[method-assign]


def test_memmapped_metrics_make_no_float64_copy(tmp_path) -> None:
    """N x d = 400k x 40 float32 on disk: a float64 copy of one side would be 128 MB."""
    n, d = 400_000, 40
    run = xlalign.load_run(write_synthetic_run(tmp_path / "run", n, d, n_sites=1))
    x, y = run["zh", "embed", "last"], run["en", "embed", "last"]
    assert isinstance(x, np.memmap)
    full_copy = n * d * 8
    for fn in (
        lambda: matched_vs_scrambled_z(x, y),
        lambda: linear_cka(x, y),
        lambda: linear_cka(x, y, unbiased=True),
        lambda: semantic_hub_score(x, y),
    ):
        tracemalloc.start()
        try:
            fn()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # O(N) vectors (norms, kernel diagonals: 3.2 MB each) and chunk temporaries only
        assert peak < full_copy / 4, (peak, full_copy)
    assert n * d > _checks.DENSE_MAX_ENTRIES  # the inputs really take the streamed paths


def test_sweep_reads_site_by_site_and_skips_quadratic_intervals(tmp_path) -> None:
    n = CI_MAX_N + 1000
    run = xlalign.load_run(write_synthetic_run(tmp_path / "run", n, 16, n_sites=3))
    cfg = SweepConfig(metrics=("z", "cka", "hub"), n_boot=50)
    res = layer_sweep(run, cfg, progress=False)
    assert "intervals skipped" in (res["ci_skipped"] or "")
    assert all(r["ci_low"] is None for r in res["records"])
    z = {r["site"]: r["value"] for r in res["records"] if r["metric"] == "z"}
    for site in run.sites:
        direct = matched_vs_scrambled_z(run["zh", site, "last"], run["en", site, "last"])
        assert z[site] == pytest.approx(direct.z, rel=1e-12) and z[site] > 10
