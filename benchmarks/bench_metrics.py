"""Benchmark: the study's z loop vs xlalign's exact and Monte Carlo sweeps; memory at 100k pairs.

Run: ``.venv/bin/python benchmarks/bench_metrics.py`` (``--large-n 0`` skips the 100k part).

Part 1, the study's scale: 200 pairs, d = 2048, 37 sites (embedding + 36 layers of
Qwen2.5-3B), synthetic float32 pairs with a shared signal and a large shared mean vector.
It times (1) the study's ``matched_vs_scrambled_z`` (re-typed below) looping over the
sites, (2) ``matched_vs_scrambled_z_sweep(method="exact")`` and (3) the same sweep with
Monte Carlo (one shared permutation array), and checks that (3) reproduces (1). Set
``OPENBLAS_NUM_THREADS=1`` to measure single-threaded BLAS (steadier on a busy machine).

Part 2, scale: the exact z and ``retrieval_scores`` at N = 100,000, d = 1024, each in a
fresh subprocess so that its peak resident memory (``ru_maxrss``) and the peak of numpy's
traced allocations (``tracemalloc``, inputs included) belong to that call alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

from xlalign.metrics import (
    matched_vs_scrambled_z,
    matched_vs_scrambled_z_sweep,
    retrieval_scores,
)

N_SITES, N_PAIRS, D_MODEL = 37, 200, 2048


def study_z(zh: np.ndarray, en: np.ndarray, n_perms: int = 1000) -> float:
    """The study's formula: 1000 RandomState(42) permutations, population std."""
    zh_u = zh / np.linalg.norm(zh, axis=1, keepdims=True)
    en_u = en / np.linalg.norm(en, axis=1, keepdims=True)
    matched = np.mean(np.sum(zh_u * en_u, axis=1))
    rng = np.random.RandomState(42)
    scrambled = np.array(
        [np.mean(np.sum(zh_u * en_u[rng.permutation(len(en_u))], axis=1)) for _ in range(n_perms)]
    )
    return float((matched - scrambled.mean()) / scrambled.std())


def make_pairs(n: int, d: int, signal: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Float32 pairs: shared per-pair signal + noise + a large mean vector common to both."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, d), dtype=np.float32)
    y = np.empty((n, d), dtype=np.float32)
    common = 4.0 * rng.standard_normal(d, dtype=np.float32)
    for start in range(0, n, 8192):  # chunks keep the generator's temporaries small
        stop = min(n, start + 8192)
        shared = signal * rng.standard_normal((stop - start, d), dtype=np.float32)
        x[start:stop] = shared + rng.standard_normal((stop - start, d), dtype=np.float32) + common
        y[start:stop] = shared + rng.standard_normal((stop - start, d), dtype=np.float32) + common
    return x, y


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """``(best, median, last result)`` of ``repeats`` runs, in seconds.

    The best run is the timeit convention: on a shared machine slower runs measure the other
    processes, not the code. Both are printed.
    """
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), out


def study_scale(repeats: int) -> None:
    sites = {f"L{i}": make_pairs(N_PAIRS, D_MODEL, 0.05 + 0.02 * i, seed=i) for i in range(N_SITES)}
    print(f"# Part 1: {N_SITES} sites, {N_PAIRS} pairs, d = {D_MODEL}, float32")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    best_seed, med_seed, seed_z = timed(
        lambda: {k: study_z(x, y) for k, (x, y) in sites.items()}, repeats
    )
    best_ex, med_ex, exact = timed(
        lambda: matched_vs_scrambled_z_sweep(sites, method="exact"), 3 * repeats
    )
    best_mc, med_mc, mc = timed(
        lambda: matched_vs_scrambled_z_sweep(sites, method="monte-carlo"), repeats
    )
    assert isinstance(seed_z, dict) and isinstance(exact, dict) and isinstance(mc, dict)
    mc_err = max(abs(mc[k].z - seed_z[k]) / abs(seed_z[k]) for k in sites)
    ex_gap = max(abs(exact[k].z - seed_z[k]) / abs(seed_z[k]) for k in sites)
    print(f"{'':<44} {'best':>9} {'median':>9} {'best/site':>11}")
    rows = [
        (f"study formula, loop over sites (x{repeats})", best_seed, med_seed),
        (f"xlalign exact sweep (x{3 * repeats})", best_ex, med_ex),
        (f"xlalign Monte Carlo sweep, shared perms (x{repeats})", best_mc, med_mc),
    ]
    for label, best, med in rows:
        print(f"{label:<44} {best:8.3f}s {med:8.3f}s {best / N_SITES * 1e3:8.2f} ms")
    print(
        f"speed-up study / exact:       {best_seed / best_ex:7.1f}x best, "
        f"{med_seed / med_ex:7.1f}x median"
    )
    print(
        f"speed-up study / Monte Carlo: {best_seed / best_mc:7.1f}x best, "
        f"{med_seed / med_mc:7.1f}x median"
    )
    print(f"max |z_MC - z_study| / |z_study|    = {mc_err:.2e}  (target <= 1e-6)")
    print(f"max |z_exact - z_study| / |z_study| = {ex_gap:.2e}  (Monte Carlo noise of the study)")


def child(task: str, n: int, d: int) -> None:
    """One large measurement in this (fresh) process; prints a JSON line."""
    tracemalloc.start()
    x, y = make_pairs(n, d, 0.3, seed=0)
    rss_inputs = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.reset_peak()
    t0 = time.perf_counter()
    if task == "exact":
        res = matched_vs_scrambled_z(x, y)
        value = {"z": res.z}
    else:
        r = retrieval_scores(x, y)
        value = {"p1_xy": r.p1_xy, "p1_yx": r.p1_yx, "mexa": r.mexa}
    seconds = time.perf_counter() - t0
    _, traced_peak = tracemalloc.get_traced_memory()
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "task": task,
                "seconds": seconds,
                "traced_peak": traced_peak,
                "rss_inputs": rss_inputs,
                "rss_peak": rss_peak,
                **value,
            }
        )
    )


def scale(n: int, d: int) -> None:
    inputs = 2 * n * d * 4
    print(f"\n# Part 2: N = {n:,}, d = {d}, float32 inputs ({inputs / 2**30:.2f} GiB for x and y)")
    for task, label in (("exact", "exact z"), ("retrieval", "retrieval_scores (P@1, MEXA, MRR)")):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", task, "--large-n", str(n)]
        cmd += ["--large-d", str(d)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        extra = {k: v for k, v in r.items() if k in ("z", "p1_xy", "p1_yx", "mexa")}
        print(
            f"{label:<36} {r['seconds']:8.1f} s   peak RSS {r['rss_peak'] / 2**30:5.2f} GiB "
            f"(after making inputs {r['rss_inputs'] / 2**30:5.2f} GiB)   traced numpy peak "
            f"during the call {r['traced_peak'] / 2**30:5.2f} GiB   {extra}"
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--large-n", type=int, default=100_000, help="0 skips part 2")
    ap.add_argument("--large-d", type=int, default=1024)
    ap.add_argument("--skip-study", action="store_true", help="skip part 1")
    ap.add_argument("--repeats", type=int, default=3, help="runs per timing in part 1")
    ap.add_argument("--child", choices=["exact", "retrieval"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.large_n, args.large_d)
        return
    if not args.skip_study:
        study_scale(args.repeats)
    if args.large_n:
        scale(args.large_n, args.large_d)


if __name__ == "__main__":
    main()
