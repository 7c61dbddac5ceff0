"""The sweep's shared-matrix path (pivot side reused, batched intervals) equals the per-metric
path record for record."""

from __future__ import annotations

import numpy as np
import pytest

import xlalign
from xlalign.store.synthetic import write_synthetic_run
from xlalign.studies import layers
from xlalign.studies.layers import SweepConfig, layer_sweep

ALL = ("z", "p1", "mexa", "mrr", "xsim", "cka", "knn", "cknna", "hub", "svcca")


def assert_same(a: dict, b: dict) -> None:
    assert len(a["records"]) == len(b["records"])
    for ra, rb in zip(a["records"], b["records"], strict=True):
        key = (ra["site"], ra["pool"], ra["x"], ra["y"], ra["metric"])
        assert key == (rb["site"], rb["pool"], rb["x"], rb["y"], rb["metric"])
        assert ra["undefined_reason"] == rb["undefined_reason"], key
        for f in ("value", "ci_low", "ci_high"):
            if ra[f] is None:
                assert rb[f] is None, (key, f)
            else:
                assert ra[f] == pytest.approx(rb[f], rel=1e-9, abs=1e-12), (key, f)


@pytest.mark.parametrize(
    "extra",
    [
        {"pivot": "en"},
        {"stratify": "category", "center": True},
        {"null": "monte-carlo", "n_perms": 50},
    ],
)
def test_shared_path_equals_per_metric_path(tmp_path, monkeypatch, extra) -> None:
    run = xlalign.load_run(
        write_synthetic_run(
            tmp_path / "run", 40, 24, n_sites=3, langs=("zh", "en", "fr"), pools=("last", "mean")
        )
    )
    cfg = SweepConfig(metrics=ALL, n_boot=60, **extra)
    fast = layer_sweep(run, cfg, progress=False)
    monkeypatch.setattr(layers, "SHARED_MAX_N", 0)
    slow = layer_sweep(run, cfg, progress=False)
    assert_same(fast, slow)


def test_zero_norm_row_in_shared_path_gives_reasons(tmp_path, monkeypatch) -> None:
    path = write_synthetic_run(tmp_path / "run", 30, 8, n_sites=2, langs=("zh", "en"))
    arr = np.load(path / "arrays" / "zh" / "L0" / "last.npy")
    arr[4] = 0.0
    np.save(path / "arrays" / "zh" / "L0" / "last.npy", arr)
    run = xlalign.load_run(path)
    cfg = SweepConfig(metrics=("z", "p1", "cka", "hub"), n_boot=20)
    fast = layer_sweep(run, cfg, progress=False)
    monkeypatch.setattr(layers, "SHARED_MAX_N", 0)
    assert_same(fast, layer_sweep(run, cfg, progress=False))
    (z,) = [r for r in fast["records"] if r["site"] == "L0" and r["metric"] == "z"]
    assert z["value"] is None and "zero-norm rows at indices [4]" in z["undefined_reason"]


@pytest.mark.parametrize("shared_max", [4096, 0])
def test_torch_backend_sweep_equals_numpy(tmp_path, monkeypatch, shared_max) -> None:
    pytest.importorskip("torch")
    run = xlalign.load_run(
        write_synthetic_run(tmp_path / "run", 36, 20, n_sites=2, langs=("zh", "en", "fr"))
    )
    monkeypatch.setattr(layers, "SHARED_MAX_N", shared_max)  # 0: the streaming per-metric path
    cfg = dict(metrics=ALL, n_boot=40, pivot="zh", stratify="category")
    ref = layer_sweep(run, SweepConfig(backend="numpy", **cfg), progress=False)  # type: ignore[arg-type]
    got = layer_sweep(run, SweepConfig(backend="torch", **cfg), progress=False)  # type: ignore[arg-type]
    assert ref["backend"] == "numpy"
    assert got["backend"] == "torch (cpu)"
    assert_same(got, ref)


def test_bad_backend_names_the_flag() -> None:
    with pytest.raises(xlalign.errors.XlalignError, match="--backend must be one of"):
        SweepConfig(backend="jax")


def test_pivot_side_is_built_once_per_site_and_pool(tmp_path, monkeypatch) -> None:
    run = xlalign.load_run(
        write_synthetic_run(
            tmp_path / "run", 30, 12, n_sites=3, langs=("en", "zh", "fr", "de"), pools=("last",)
        )
    )
    built: list[str] = []
    real = layers._side_factory

    def counting(backend: str):
        make, label = real(backend)

        def make_counted(a, name):
            built.append(name)
            return make(a, name)

        return make_counted, label

    monkeypatch.setattr(layers, "_side_factory", counting)
    layer_sweep(
        run, SweepConfig(metrics=("z", "cka", "knn"), n_boot=10, pivot="en"), progress=False
    )
    assert built.count("x") == 3  # the pivot: once per site (3 sites, 1 pool), not per language
    assert built.count("y") == 3 * 3  # each other language at each site
