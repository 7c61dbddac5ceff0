"""Benchmark: the layer sweep with and without bootstrap intervals, per backend, side by side.

Run: ``.venv/bin/python benchmarks/bench_sweep.py`` (``--quick``: one repeat, smaller runs).

Three synthetic runs (``xlalign.store.synthetic.write_synthetic_run``: float32 pairs with a shared
signal and a large per-language mean, as hidden states have), default metrics:

- study scale A: 26 sites x 200 pairs, d = 896, pools last and mean, zh/en (Qwen2.5-0.5B's
  shape, the study's 200 problems);
- study scale B: 37 sites x 200 pairs, d = 2,048, pool last, zh/en (Qwen2.5-3B's shape);
- FLORES-shaped: 4 languages, ``--pivot`` one of them, N = 2,009, d = 2,048, 2 sites, 1 pool.

Each is swept with ``--n-boot 0`` and with the default 200 resamples, by the shared-matrix
path (``metrics/pairwise.py``, the default up to ``SHARED_MAX_N`` pairs) and by the
per-metric path it replaced (every metric and interval rebuilt from the raw vectors; the
intervals there are the old resample-then-recompute loop, re-typed below, so "before" is
measured, not quoted). Timings run round-robin, so background load hits every variant alike;
the table prints medians and the ratios the issue asks for.

Part 2: the exact z over 5 sites of 200 x 2,048 against the study's 1000-draw function.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

import xlalign
from xlalign.metrics import bootstrap, matched_vs_scrambled_z_sweep
from xlalign.store.synthetic import write_synthetic_run
from xlalign.studies import layers
from xlalign.studies.layers import SweepConfig, layer_sweep

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_metrics import make_pairs, study_z

try:
    import torch

    #: The torch rows' label: ``--backend torch`` runs on CUDA where it is present.
    TORCH = "torch-cuda" if torch.cuda.is_available() else "torch-cpu"
except ImportError:  # pragma: no cover - torch is a dependency of xlalign
    TORCH = "torch-cpu"


@contextmanager
def legacy() -> Iterator[None]:
    """The sweep as it was: per-metric functions, intervals by resample-then-recompute."""
    saved = (layers.SHARED_MAX_N, bootstrap.z_ci_cosines, bootstrap.cka_ci_grams)
    layers.SHARED_MAX_N = 0
    bootstrap.z_ci_cosines = _legacy_z_ci  # type: ignore[assignment]
    bootstrap.cka_ci_grams = _legacy_cka_ci  # type: ignore[assignment]
    try:
        yield
    finally:
        layers.SHARED_MAX_N, bootstrap.z_ci_cosines, bootstrap.cka_ci_grams = saved  # type: ignore[assignment]


def _legacy_z_ci(s: np.ndarray, n_boot: int, seed: int, level: float, codes: Any) -> Any:
    def stat(idx: np.ndarray) -> float | None:
        return bootstrap._z_from_block(s[np.ix_(idx, idx)], None if codes is None else codes[idx])

    return bootstrap.bootstrap_ci(stat, s.shape[0], n_boot, seed, level)


def _legacy_cka_ci(kx: np.ndarray, ky: np.ndarray, n_boot: int, seed: int, level: float) -> Any:
    scale = max(float(np.trace(kx)), float(np.trace(ky)))

    def stat(idx: np.ndarray) -> float | None:
        a = bootstrap._double_centred(kx[np.ix_(idx, idx)])
        b = bootstrap._double_centred(ky[np.ix_(idx, idx)])
        hxx, hyy = float(np.einsum("ij,ij->", a, a)), float(np.einsum("ij,ij->", b, b))
        if min(hxx, hyy) <= (1e-10 * scale) ** 2:
            return None
        return float(np.einsum("ij,ij->", a, b)) / np.sqrt(hxx * hyy)

    return bootstrap.bootstrap_ci(stat, kx.shape[0], n_boot, seed, level)


def round_robin(
    variants: dict[str, Callable[[], Any]], repeats: int
) -> dict[str, tuple[float, float]]:
    """Median ``(wall s, CPU s)`` per variant; CPU time (all threads of this process) is what
    a shared machine's load does not inflate."""
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    return {
        k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
        for k, v in times.items()
    }


def sweep_variants(
    run: Any, pivot: str | None, with_legacy_ci: bool
) -> dict[str, Callable[[], Any]]:
    def go(n_boot: int, old: bool, backend: str = "numpy", nulls: int = 0) -> Callable[[], Any]:
        cfg = SweepConfig(n_boot=n_boot, pivot=pivot, backend=backend, null_perms=nulls)

        def fn() -> Any:
            if old:
                with legacy():
                    return layer_sweep(run, cfg, progress=False)
            return layer_sweep(run, cfg, progress=False)

        return fn

    out = {
        "numpy, n-boot 0": go(0, False),
        "numpy, n-boot 200": go(200, False),
        f"{TORCH}, n-boot 0": go(0, False, "torch"),
        f"{TORCH}, n-boot 200": go(200, False, "torch"),
        "before, n-boot 0": go(0, True),
        "numpy, n-boot 200, nulls 1000": go(200, False, nulls=1000),
    }
    # the intervals are now jackknife/Wilson (no resamples): the old resampling path is gone
    # from the sweep, so "before, n-boot 200" would time the new intervals; not run
    del with_legacy_ci
    return out


def report(title: str, med: dict[str, tuple[float, float]]) -> None:
    print(f"\n## {title}")
    print(f"{'variant':<24} {'wall s':>8} {'CPU s':>8}")
    for k, (w, c) in med.items():
        print(f"{k:<24} {w:8.2f} {c:8.2f}")

    def ratio(a: str, b: str) -> str:
        if a not in med or b not in med:
            return "n/a"
        return f"{med[a][0] / med[b][0]:6.2f}x wall, {med[a][1] / med[b][1]:6.2f}x CPU"

    print(f"intervals cost, numpy (200 / 0):      {ratio('numpy, n-boot 200', 'numpy, n-boot 0')}")
    print(
        f"intervals cost, {TORCH} (200 / 0):  {ratio(f'{TORCH}, n-boot 200', f'{TORCH}, n-boot 0')}"
    )
    print(
        f"{TORCH} / numpy, n-boot 200:        {ratio(f'{TORCH}, n-boot 200', 'numpy, n-boot 200')}"
    )
    print(f"point estimates, before / numpy:      {ratio('before, n-boot 0', 'numpy, n-boot 0')}")
    print(
        "permutation nulls (K = 1000) cost:     "
        f"{ratio('numpy, n-boot 200, nulls 1000', 'numpy, n-boot 200')}"
    )
    print(
        f"with intervals, before / numpy:       {ratio('before, n-boot 200', 'numpy, n-boot 200')}"
    )


def z_part(repeats: int) -> None:
    sites = {f"L{i}": make_pairs(200, 2048, 0.05 + 0.02 * i, seed=i) for i in range(5)}
    med = round_robin(
        {
            "study, 1000 draws": lambda: {k: study_z(x, y) for k, (x, y) in sites.items()},
            "exact sweep": lambda: matched_vs_scrambled_z_sweep(sites, method="exact"),
            "exact, float64 products": lambda: matched_vs_scrambled_z_sweep(
                sites, method="exact", products="float64"
            ),
        },
        repeats,
    )
    err = 0.0
    pairs = [make_pairs(200, 2048, sig, seed=100 + seed) for sig in (0.0, 0.01, 0.05, 0.3, 1.0)
             for seed in range(3)]  # fmt: skip
    pairs += list(sites.values())
    for x, y in pairs:
        got = matched_vs_scrambled_z_sweep({"s": (x, y)})["s"].z
        ref = matched_vs_scrambled_z_sweep({"s": (x, y)}, products="float64")["s"].z
        assert got is not None and ref is not None
        err = max(err, abs(got - ref) / max(abs(ref), 1.0))
    print(
        "float32 products (the default for float32 inputs) vs float64 products: "
        f"max |z32 - z64| / max(|z64|, 1) = {err:.1e} over {len(pairs)} site-like pairs"
    )
    print("\n## exact z, 5 sites x 200 pairs, d = 2048")
    for k, (w, c) in med.items():
        print(f"{k:<24} {w * 1e3:9.1f} ms wall {c * 1e3:9.1f} ms CPU")
    sw, sc = med["study, 1000 draws"]
    for k in ("exact sweep", "exact, float64 products"):
        ew, ec = med[k]
        print(f"speed-up study / {k}: {sw / ew:6.1f}x wall, {sc / ec:6.1f}x CPU")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one repeat; skip the slow 'before'")
    ap.add_argument("--only", choices=["a", "b", "flores", "z"], action="append")
    args = ap.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    only = set(args.only or ["a", "b", "flores", "z"])
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        shapes = {
            "a": (
                "study A: 26 sites x 200 pairs, d=896, 2 pools",
                200,
                896,
                26,
                ("zh", "en"),
                ("last", "mean"),
                None,
            ),
            "b": (
                "study B: 37 sites x 200 pairs, d=2048",
                200,
                2048,
                37,
                ("zh", "en"),
                ("last",),
                None,
            ),
            "flores": (
                "FLORES-shaped: 4 langs, pivot en, N=2009, d=2048, 2 sites",
                2009,
                2048,
                2,
                ("en", "zh", "fr", "de"),
                ("last",),
                "en",
            ),
        }
        for key, (title, n, d, n_sites, langs, pools, pivot) in shapes.items():
            if key not in only:
                continue
            path = write_synthetic_run(
                Path(tmp) / key, n, d, n_sites=n_sites, langs=langs, pools=pools
            )
            run = xlalign.load_run(path)
            slow_ci = not args.quick and key != "flores"
            med = round_robin(sweep_variants(run, pivot, slow_ci), repeats)
            if key == "flores" and not args.quick:
                with legacy():  # 200+ s: once
                    t0, c0 = time.perf_counter(), time.process_time()
                    layer_sweep(run, SweepConfig(n_boot=200, pivot=pivot), progress=False)
                    med["before, n-boot 200"] = (
                        time.perf_counter() - t0,
                        time.process_time() - c0,
                    )
            report(title, med)
    if "z" in only:
        z_part(max(repeats, 5))
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
