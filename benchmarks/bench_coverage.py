"""Benchmark: do the sweep's 95% intervals cover the population value?

Run: ``.venv/bin/python benchmarks/bench_coverage.py`` (``--reps 500``; ``--n 50,200,2000``).

Simulated paired data with a known population value: ``x ~ N(0, I_d)`` (d = 32) and
``y = rho * x + sqrt(1 - rho^2) * e`` with ``e ~ N(0, I_d)`` (the cosine metrics compare
``x_i`` with ``y_i`` in one space, so no rotation; CKA would not see one),
for weak, medium and strong alignment (rho = 0.3, 0.6, 0.9). The population values:

- **debiased CKA**: ``||S_xy||_F^2 / (||S_xx||_F ||S_yy||_F) = rho^2`` (S_xx = S_yy = I,
  S_xy = rho I);
- **semantic-hub gap**: ``E cos(x, y_matched) - E cos(x, y_other) = E cos(x, y_matched)`` (the
  other is independent and isotropic), by Monte Carlo over 10^6 pairs;
- **P@1 at gallery size N**: ``E[F(c)^(N - 1)]``, ``c`` the matched cosine and ``F`` the CDF of
  the cosine of two independent isotropic vectors (``(1 + t) / 2 ~ Beta((d-1)/2, (d-1)/2)``),
  by Monte Carlo over the same 10^6 matched cosines.

Each repetition draws fresh data, computes the sweep's intervals
(:meth:`xlalign.metrics.pairwise.Pair.interval`: Wilson for P@1, the exact jackknife for the
others) and, for contrast, the pair bootstrap the sweep used before (200 resamples, P@1 and
biased CKA's percentile interval; biased CKA's population value is also ``rho^2``). The table
prints the share of repetitions whose interval holds the population value (target 93-97%) and
the share whose interval holds its own estimate.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import stats

from xlalign.metrics.pairwise import Side

D = 32
STRENGTHS = {"weak": 0.3, "medium": 0.6, "strong": 0.9}


def _draw(rng: np.random.Generator, n: int, rho: float) -> tuple[np.ndarray, ...]:
    x = rng.standard_normal((n, D))
    y = rho * x + np.sqrt(1 - rho**2) * rng.standard_normal((n, D))
    return x, y


def _matched_cosines(rho: float, m: int = 1_000_000) -> np.ndarray:
    rng = np.random.default_rng(12345)
    out = []
    for _ in range(m // 100_000):
        x, y = _draw(rng, 100_000, rho)
        out.append((x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1))
    return np.concatenate(out)


def population(rho: float, n: int) -> dict[str, float]:
    c = _matched_cosines(rho)
    a = (D - 1) / 2
    cdf = stats.beta.cdf((1 + c) / 2, a, a)
    return {
        "cka_unbiased": rho**2,
        "cka": rho**2,
        "semantic_hub": float(c.mean()),
        "p1_xy": float(np.mean(cdf ** (n - 1))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=500)
    ap.add_argument("--n", default="50,200,2000")
    ap.add_argument(
        "--old-max-n",
        type=int,
        default=200,
        help="the old bootstrap's contrast only up to this N (200 resamples of an n x n Gram "
        "product per repetition: minutes per cell at N = 2,000)",
    )
    args = ap.parse_args()
    sizes = [int(v) for v in args.n.split(",")]
    print(f"d = {D}, {args.reps} repetitions per cell, 95% intervals")
    header = (
        "| N | alignment | P@1 pop. | P@1 Wilson | P@1 old bootstrap | hub jackknife "
        "| debiased CKA pop. | debiased CKA jackknife | biased CKA old bootstrap | "
        "estimate inside (new / old) |"
    )
    print(header)
    print("|---" * 10 + "|")
    for n in sizes:
        for name, rho in STRENGTHS.items():
            pop = population(rho, n)
            rng = np.random.default_rng(1000 * n + int(rho * 10))
            cover = {k: 0 for k in ("p1", "p1_old", "hub", "ckau", "cka_old")}
            inside_new = inside_old = 0
            t0 = time.perf_counter()
            for rep in range(args.reps):
                x, y = _draw(rng, n, rho)
                pair = Side(x, "x").pair_with(Side(y, "y"))
                p1 = pair.retrieval().p1_xy
                hub = pair.hub().score
                ckau = pair.cka_unbiased().cka
                cka = pair.cka().cka
                new = {
                    "p1": (pair.interval("p1_xy", p1, 0.95), p1, pop["p1_xy"]),
                    "hub": (pair.interval("semantic_hub", hub, 0.95), hub, pop["semantic_hub"]),
                    "ckau": (pair.interval("cka_unbiased", ckau, 0.95), ckau, pop["cka_unbiased"]),
                }
                old = (
                    {
                        "p1_old": (pair.p1_ci("xy", 200, rep, 0.95), p1, pop["p1_xy"]),
                        "cka_old": (pair.cka_ci(200, rep, 0.95), cka, pop["cka"]),
                    }
                    if n <= args.old_max_n
                    else {}
                )
                ok_new = ok_old = True
                for group, bucket in ((new, "new"), (old, "old")):
                    for key, (ci, est, truth) in group.items():
                        lo, hi = ci.low, ci.high
                        if lo is None or hi is None:
                            continue
                        cover[key] += lo <= truth <= hi
                        inside = lo - 1e-12 <= est <= hi + 1e-12
                        if bucket == "new":
                            ok_new &= inside
                        else:
                            ok_old &= inside
                inside_new += ok_new
                inside_old += ok_old
            r = args.reps
            pct = {k: f"{100 * v / r:.1f}%" for k, v in cover.items()}
            has_old = n <= args.old_max_n
            if not has_old:
                pct["p1_old"] = pct["cka_old"] = "not run"
            print(
                f"| {n} | {name} (rho {rho}) | {pop['p1_xy']:.3f} | {pct['p1']} | "
                f"{pct['p1_old']} | {pct['hub']} | {pop['cka_unbiased']:.2f} | "
                f"{pct['ckau']} | {pct['cka_old']} | {100 * inside_new / r:.0f}% / "
                + (f"{100 * inside_old / r:.0f}% |" if has_old else "not run |"),
                flush=True,
            )
            print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
