"""The weights' fingerprint against reading the same bytes, and its cached cost.

Run:  HF_HUB_OFFLINE=1 python benchmarks/bench_fingerprint.py [--model qwen2.5-0.5b] [--repeats 3]

Side by side on one model folder (default: the named ``qwen2.5-0.5b``, its dequantized copy):

  (r) reading every weight and config file once, 4 MiB at a time (what "disk speed" means here)
  (f) :func:`xlalign.models.fingerprints.weights_fingerprint` with an empty hash cache: SHA-256
      of every byte
  (w) the same call again: the hashes come from the cache (a ``stat`` per file)

Prints medians of ``--repeats`` and the ratios (f)/(r) (held to a small factor: hashing at disk
speed) and (w)/(f).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from xlalign.models.loading import resolve_source

    folder = resolve_source(args.model)[0]
    files = sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin")])
    files += [
        folder / n for n in ("config.json", "generation_config.json") if (folder / n).is_file()
    ]
    size = sum(p.stat().st_size for p in files)
    read_s, cold_s, warm_s = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for p in files:
            with p.open("rb") as f:
                while f.read(1 << 22):
                    pass
        read_s.append(time.perf_counter() - t0)
        with tempfile.TemporaryDirectory() as cache:
            os.environ["XLALIGN_CACHE"] = cache  # an empty hash cache: every byte is hashed
            from xlalign.models.fingerprints import weights_fingerprint

            t0 = time.perf_counter()
            weights_fingerprint(folder)
            cold_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            weights_fingerprint(folder)
            warm_s.append(time.perf_counter() - t0)
    r, f, w = (statistics.median(v) for v in (read_s, cold_s, warm_s))
    print(f"{folder}: {len(files)} files, {size / 1e9:.2f} GB (medians of {args.repeats})")
    print(f"(r) read every byte:            {r:.3f} s ({size / r / 1e9:.2f} GB/s)")
    print(f"(f) fingerprint, empty cache:   {f:.3f} s ({size / f / 1e9:.2f} GB/s)")
    print(f"(w) fingerprint, cached hashes: {w * 1e3:.2f} ms")
    print(f"ratio (f)/(r): {f / r:.2f}; (w)/(f): {w / f:.5f}")


if __name__ == "__main__":
    main()
