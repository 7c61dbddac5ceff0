"""Benchmark: model-to-model site x site matrices vs calling the pairwise metric per cell.

Run: ``.venv/bin/python benchmarks/bench_compare.py`` (``--repeats 3``).

The shape of Qwen2.5-0.5B (25 sites, d = 896) against Gemma 3 270M (19 sites, d = 640) on the
study's 200 prompts, synthetic float32 with a shared signal. It times ``linear_cka_matrix``
(each site's Gram matrix once) against ``linear_cka`` called for each of the 475 cells, the
same for ``mutual_knn_matrix`` against ``mutual_knn``, and the CKA matrix with its 100-
permutation null; it checks that the matrices equal the per-cell values. Medians.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from xlalign.metrics import linear_cka, linear_cka_matrix, mutual_knn, mutual_knn_matrix

N, SITES_A, D_A, SITES_B, D_B = 200, 25, 896, 19, 640


def sites(n_sites: int, d: int, base: np.ndarray, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((base.shape[1], d))
    return [
        (base @ proj + (0.5 + k / n_sites) * rng.standard_normal((N, d))).astype(np.float32)
        for k in range(n_sites)
    ]


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    base = np.random.default_rng(0).standard_normal((N, 16))
    xs, ys = sites(SITES_A, D_A, base, 1), sites(SITES_B, D_B, base, 2)
    cells = SITES_A * SITES_B
    print(f"{SITES_A} x {SITES_B} sites, {N} prompts, d = {D_A} and {D_B} ({cells} cells)")
    t_mat, m = timed(lambda: linear_cka_matrix(xs, ys), args.repeats)
    t_cell, ref = timed(lambda: np.array([[linear_cka(x, y).cka for y in ys] for x in xs]), 1)
    assert np.allclose(m.value, ref, rtol=1e-10, atol=0)
    t_null, _ = timed(lambda: linear_cka_matrix(xs, ys, n_perms=100), 1)
    t_kmat, k = timed(lambda: mutual_knn_matrix(xs, ys), args.repeats)
    t_kcell, kref = timed(lambda: np.array([[mutual_knn(x, y).score for y in ys] for x in xs]), 1)
    assert np.array_equal(k.value, kref)
    print(f"{'':<28}{'per cell':>10}{'matrix':>10}{'ratio':>8}")
    print(f"{'linear CKA':<28}{t_cell:>9.2f}s{t_mat:>9.2f}s{t_cell / t_mat:>7.1f}x")
    print(f"{'mutual k-NN (k = 10)':<28}{t_kcell:>9.2f}s{t_kmat:>9.2f}s{t_kcell / t_kmat:>7.1f}x")
    print(f"{'CKA + 100-permutation null':<28}{'':>10}{t_null:>9.2f}s")


if __name__ == "__main__":
    main()
