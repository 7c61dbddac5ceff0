"""Benchmark: the layer sweep on N = 10^5 and 10^6 synthetic pairs read from disk; retrieval scaling.

Run:  .venv/bin/python benchmarks/bench_scale.py
      [--n 100000,1000000] [--sites 8] [--d 1024] [--metrics z,cka,hub]
      [--retrieval-n 10000,20000,40000] [--workdir DIR] [--keep]

Part 1, the sweep. For each N a synthetic run (two languages, ``--sites`` sites, d = 1024,
float32; :func:`xlalign.store.synthetic.write_synthetic_run`) is written to disk block by block, then
``layer_sweep`` runs in a fresh subprocess over memory-mapped arrays with the metrics that
stream in ``O(N d^2)``: the exact z, linear CKA and the semantic-hub score (no bootstrap). The
child reports its wall time, ``ru_maxrss`` (peak resident memory, which counts the file pages
it has mapped: reclaimable page cache, bounded by the files' size) and the peak of its
anonymous memory (``RssAnon`` in /proc/self/status, sampled every 20 ms: what the computation
itself holds). The scaling exponent is the log-log slope of time against N.

When the disk cannot hold every site at the largest N (10^6 x 1024 x 8 sites x 2 languages x
4 bytes = 65.5 GB), the sites of that run are hard links to one file per language; each site
is still read and computed on its own, but reads after the first come from the page cache.

Part 2, retrieval (P@1 both ways, MEXA, MRR: ``retrieval_scores``) is ``O(N^2 d)``: at
N = 10^6 that is 2e15 float64 flops, hours per site on a 2-core CPU, so it is timed on the
first rows of the smallest run at ``--retrieval-n`` sizes, each in a fresh subprocess, and the
fitted power law is extrapolated to 10^5 and 10^6 (printed as an extrapolation).

The whole default run took 22 minutes on a shared 2-core VM, 16 of them the 10^6 sweep (about
5e13 float64 flops of scatter matrices); ``--n 100000 --sites 2`` gives a first figure in
about a minute. Figures: docs/benchmarks.md, "Scaling".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

RETRIEVAL_EXTRAPOLATE = (100_000, 1_000_000)


# ---------------------------------------------------------------------------------------------
# the measured child


class AnonPeak:
    """Samples this process's anonymous resident memory (``RssAnon``) in a thread."""

    def __init__(self, every_s: float = 0.02) -> None:
        self.peak = 0
        self._every = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> int:
        """Current ``RssAnon`` in bytes (0 where /proc is not available)."""
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            self._stop.wait(self._every)

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def child(args: argparse.Namespace) -> None:
    """Measure one call in this (fresh) process and print one JSON line."""
    import xlalign
    from xlalign.metrics import retrieval_scores
    from xlalign.studies.layers import SweepConfig, layer_sweep

    run = xlalign.load_run(args.run)
    baseline = AnonPeak.now()
    out: dict[str, Any] = {}
    with AnonPeak() as anon:
        t0 = time.perf_counter()
        if args.child == "sweep":
            cfg = SweepConfig(metrics=tuple(args.metrics.split(",")), n_boot=0)
            res = layer_sweep(run, cfg, progress=False)
            z = [r["value"] for r in res["records"] if r["metric"] == "z"]
            cka = [r["value"] for r in res["records"] if r["metric"] == "cka"]
            out.update(z_first=z[0] if z else None, cka_first=cka[0] if cka else None)
        else:
            n = args.rows
            x = run["zh", run.sites[0], "last"][:n]
            y = run["en", run.sites[0], "last"][:n]
            r = retrieval_scores(x, y)
            out.update(p1_xy=r.p1_xy, mexa=r.mexa)
        out["time_s"] = time.perf_counter() - t0
    out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["peak_anon"] = anon.peak
    out["anon_before"] = baseline
    print(json.dumps(out))


def measure(kind: str, run: Path, **kw: Any) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, "--run", str(run)]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------------------------------------
# the parent


def gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def slope(ns: list[int], ts: list[float]) -> float:
    """Least-squares slope of log(time) against log(N)."""
    return float(np.polyfit(np.log(ns), np.log(ts), 1)[0])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {gib(ram)} RAM, Python {platform.python_version()}, "
        f"numpy {np.__version__}, OPENBLAS_NUM_THREADS={blas}, load average "
        f"{os.getloadavg()[0]:.2f}"
    )


def make_run(root: Path, n: int, d: int, sites: int) -> tuple[Path, bool, float]:
    from xlalign.store.synthetic import write_synthetic_run

    need = n * d * 4 * 2 * sites
    free = shutil.disk_usage(root).free
    share = need > 0.5 * free  # leave the disk half free
    t0 = time.perf_counter()
    path = write_synthetic_run(root / f"n{n}", n, d, n_sites=sites, share_sites=share, seed=n)
    return path, share, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", default="100000,1000000", help="pair counts of the sweep")
    p.add_argument("--sites", type=int, default=8)
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--metrics", default="z,cka,hub", help="sweep metrics (O(N d^2) ones)")
    p.add_argument("--retrieval-n", default="10000,20000,40000")
    p.add_argument("--workdir", type=Path, default=None, help="where the runs go (a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the synthetic runs")
    p.add_argument("--child", choices=["sweep", "retrieval"], help=argparse.SUPPRESS)
    p.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return

    ns = sorted(int(v) for v in args.n.split(",") if v)
    rns = sorted(int(v) for v in args.retrieval_n.split(",") if v)
    if rns and rns[-1] > ns[0]:
        p.error(f"--retrieval-n sizes must not exceed the smallest --n ({ns[0]})")
    root = args.workdir or Path(tempfile.mkdtemp(prefix="xlalign-bench-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    print(
        f"sweep: d = {args.d}, {args.sites} sites, 2 languages, metrics {args.metrics}, "
        f"float32 memory-mapped inputs in {root}\n"
    )
    print(f"{'N':>9} {'write s':>8} {'sweep s':>9} {'s/site':>8} {'peak RSS':>11} "
          f"{'peak anon':>11} {'inputs/site':>12}  note")  # fmt: skip
    sweep_t: list[float] = []
    runs: dict[int, Path] = {}
    try:
        for n in ns:
            run, shared, write_s = make_run(root, n, args.d, args.sites)
            runs[n] = run
            m = measure("sweep", run, metrics=args.metrics)
            sweep_t.append(m["time_s"])
            note = "sites share one file (disk)" if shared else ""
            print(
                f"{n:>9} {write_s:>8.1f} {m['time_s']:>9.1f} {m['time_s'] / args.sites:>8.1f} "
                f"{gib(m['peak_rss']):>11} {gib(m['peak_anon']):>11} "
                f"{gib(2 * n * args.d * 4):>12}  {note} z(site 0) = {m['z_first']:.1f}",
                flush=True,
            )
            if n != ns[0] and not args.keep:
                shutil.rmtree(run)
        if len(ns) > 1:
            print(
                f"\nsweep scaling exponent (log-log slope of time vs N): {slope(ns, sweep_t):.2f}"
            )

        if rns:
            print(f"\nretrieval_scores (P@1, MEXA, MRR), first rows of the N = {ns[0]} run, d = "
                  f"{args.d}")  # fmt: skip
            print(f"{'N':>9} {'time s':>9} {'peak anon':>11} {'P@1':>7}")
            rt = []
            for n in rns:
                m = measure("retrieval", runs[ns[0]], rows=n)
                rt.append(m["time_s"])
                print(f"{n:>9} {m['time_s']:>9.1f} {gib(m['peak_anon']):>11} {m['p1_xy']:>7.3f}",
                      flush=True)  # fmt: skip
            if len(rns) > 1:
                k = slope(rns, rt)
                print(f"retrieval scaling exponent: {k:.2f}")
                for n in RETRIEVAL_EXTRAPOLATE:
                    est = rt[-1] * (n / rns[-1]) ** k
                    print(f"EXTRAPOLATED (not measured): N = {n}: {est:,.0f} s = "
                          f"{est / 3600:.1f} h")  # fmt: skip
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
        elif not args.keep:
            for run in runs.values():
                shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    main()
