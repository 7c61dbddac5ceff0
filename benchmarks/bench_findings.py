"""What the findings' artifact checks cost beside the sweep they read.

Run:  python benchmarks/bench_findings.py [--repeats 3] [--n 500] [--d 896] [--sites 26]

Side by side, interleaved, on two synthetic runs on disk (a "model" and a "control", pools
last and mean, the study's shape: 500 pairs, d = 896, 26 sites):

  (s) the layer sweep of the model and of the control (:func:`xlalign.studies.layers.layer_sweep`,
      default metrics, 200 bootstrap resamples): what ``xlalign align`` computes anyway
  (f) :func:`xlalign.studies.findings.findings_for_sweep` on those two sweeps with the control's
      run: verdicts, grouped warnings, and the influential-pairs check (leave-one-out of z,
      P@1 and CKA at each finding's site, near-duplicate groups, exact recomputation)

Prints the median of ``--repeats`` runs of each and the ratio (f)/(s): the share the checks add
to the align stage.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from xlalign.store.run import load_run
from xlalign.store.synthetic import write_synthetic_run
from xlalign.studies.findings import findings_for_sweep
from xlalign.studies.layers import SweepConfig, layer_sweep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--d", type=int, default=896)
    ap.add_argument("--sites", type=int, default=26)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        kw = dict(n_sites=args.sites, pools=("last", "mean"))
        model = load_run(write_synthetic_run(Path(tmp) / "m", args.n, args.d, seed=1, **kw))
        control = load_run(
            write_synthetic_run(Path(tmp) / "c", args.n, args.d, seed=2, noise=3.0, **kw)
        )
        cfg = SweepConfig(lexical=False)
        sweep_s, findings_s = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            sweeps = [layer_sweep(r, cfg, progress=False) for r in (model, control)]
            sweep_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            doc = findings_for_sweep(model, sweeps[0], sweeps[1], cfg, control=control)
            findings_s.append(time.perf_counter() - t0)
        checked = sum("influential" in f for f in doc["findings"])
    s, f = statistics.median(sweep_s), statistics.median(findings_s)
    print(f"{args.n} pairs, d = {args.d}, {args.sites} sites, pools last+mean, "
          f"{len(doc['findings'])} findings ({checked} checked for influential pairs)")  # fmt: skip
    print(f"(s) sweeps of model and control: {s:.2f} s (median of {args.repeats})")
    print(f"(f) findings with the checks:    {f:.2f} s (median of {args.repeats})")
    print(f"ratio (f)/(s): {f / s:.3f}")


if __name__ == "__main__":
    main()
