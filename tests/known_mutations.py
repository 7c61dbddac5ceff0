"""Apply each of issue 17's seven hand-made mutations to a scratch copy of src/ and run the tests.

Every mutation must make at least one test fail. The source is copied to a temporary folder,
one textual replacement is applied, and pytest runs the named test files with that copy first
on ``PYTHONPATH``; the working tree is never touched. A replacement whose text is no longer in
the source (after a rewrite) is reported as "not applicable", so the list can be updated.

    .venv/bin/python tests/known_mutations.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: (what, file under src/xlalign, old text, new text, test files)
MUTATIONS = [
    (
        "P@1 bootstrap without resampling",
        "metrics/bootstrap.py",
        # the batched bootstrap (speed15): a resample's mean is c . hits / n
        "[c @ v / v.size for c in bootstrap_counts(v.size, n_boot, seed)]",
        "[np.full(c.shape[0], v.mean()) for c in bootstrap_counts(v.size, n_boot, seed)]",
        ["tests/test_bootstrap_calibration.py", "tests/test_layers_values.py"],
    ),
    (
        "z bootstrap does not resample the strata labels",
        "metrics/bootstrap.py",
        # batched: a stratum's resampled size is the sum of its members' counts
        "ns = cg.sum(axis=1)",
        "ns = np.full(cg.shape[0], float(g.size))",
        ["tests/test_bootstrap_calibration.py", "tests/test_layers_values.py"],
    ),
    (
        "z_within_category computed on all rows",
        "studies/origin.py",
        "z = _z(np.asarray(last_x)[idx], np.asarray(last_y)[idx], cfg)",
        "z = _z(np.asarray(last_x), np.asarray(last_y), cfg)",
        ["tests/test_origin_values.py"],
    ),
    (
        "z_stratified without its strata",
        "studies/origin.py",
        'zs["z_stratified"] = _z(last_x, last_y, cfg, strata=strata)',
        'zs["z_stratified"] = _z(last_x, last_y, cfg)',
        ["tests/test_origin_values.py"],
    ),
    (
        "sweep metric knn routed to cknna",
        "studies/layers.py",
        # the sweep's shared-matrix path (speed15) takes knn from the Pair
        '"knn": pair.mutual_knn,',
        '"knn": pair.cknna,',
        ["tests/test_layers_values.py"],
    ),
    (
        "semantic hub reads diag_mean instead of its score",
        "studies/layers.py",
        '"hub": ("semantic_hub", lambda: semantic_hub_score(x, y), "score"),',
        '"hub": ("semantic_hub", lambda: semantic_hub_score(x, y), "diag_mean"),',
        ["tests/test_layers_values.py"],
    ),
    (
        "non-shared mask keeps the special tokens",
        "studies/origin.py",
        "[~m & ~s for m, s in zip(mx, tx.special, strict=True)],",
        "[~m for m in mx],",
        ["tests/test_origin_values.py"],
    ),
]


def run_one(old: str, new: str, rel: str, tests: list[str], scratch: Path) -> str:
    src = scratch / "src"
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    target = src / "xlalign" / rel
    text = target.read_text(encoding="utf-8")
    if text.count(old) != 1:
        return "not applicable (text not found once)"
    target.write_text(text.replace(old, new), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(src), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    return f"{'KILLED' if proc.returncode == 1 else 'SURVIVED rc=' + str(proc.returncode)}: {last}"


def main() -> int:
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for what, rel, old, new, tests in MUTATIONS:
            result = run_one(old, new, rel, tests, Path(tmp))
            failures += not result.startswith("KILLED")
            print(f"{what:<52} {result}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
