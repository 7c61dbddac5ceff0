"""Apply each hand-made mutation (issue 17's seven, issue 25's) to a scratch copy of src/ and test.

Every mutation must make at least one test fail. The source is copied to a temporary folder,
one textual replacement is applied, and pytest runs the named test files with that copy first
on ``PYTHONPATH``; the working tree is never touched. A replacement whose text is no longer in
the source (after a rewrite) is reported as "not applicable", so the list can be updated.

    .venv/bin/python tests/known_mutations.py                # all of them
    .venv/bin/python tests/known_mutations.py compare: lens:  # those whose text holds one
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
    # issue 25: bugs a reviewer planted that the suite let through; each has a test now
    (
        "compare: B's vectors read at A's row positions",
        "studies/compare.py",
        "ys = [np.asarray(b.run.array(lang, s, pool))[b.rows] for s in sb]",
        "ys = [np.asarray(b.run.array(lang, s, pool))[a.rows] for s in sb]",
        ["tests/test_compare_values.py::test_cross_model_cells_pair_rows_by_id_not_by_position"],
    ),
    (
        "compare: B's sweep on A's row positions",
        "studies/compare.py",
        "view = _RowView(run, m.rows) if partial else run",
        "view = _RowView(run, models[0].rows) if partial else run",
        ["tests/test_compare_values.py::test_each_sweep_is_computed_on_its_own_rows_matched_by_id"],
    ),
    (
        "compare: B's relative depth with A's layer count",
        "studies/compare.py",
        '"relative_depth_b": relative_depth(site_b, b.run.n_layers),',
        '"relative_depth_b": relative_depth(site_b, a.run.n_layers),',
        ["tests/test_compare_values.py::test_each_side_gets_its_own_models_relative_depth"],
    ),
    (
        "compare: ranking sorted the wrong way",
        "studies/compare.py",
        "ordered = sorted(fs, key=key, reverse=True)",
        "ordered = sorted(fs, key=key)",
        ["tests/test_compare_values.py::test_ranking_orders_runs_by_the_rule_pair_by_pair"],
    ),
    (
        "compare: ranking by the smallest gain",
        "studies/compare.py",
        "return (int(beyond(f)), -math.inf if g is None else g)",
        "return (int(beyond(f)), -math.inf if g is None else -g)",
        ["tests/test_compare_values.py::test_headline_names_the_run_with_the_largest_gain"],
    ),
    (
        "compare: gain over control with the sign flipped",
        "studies/compare.py",
        'return float(r["value"]) - float(c["value"])',
        'return float(c["value"]) - float(r["value"])',
        ["tests/test_compare_values.py::test_findings_gain_is_the_largest_model_minus_control"],
    ),
    (
        "lens: 95% intervals that are 90% ones",
        "studies/lens.py",
        "[(1 - level) / 2, (1 + level) / 2]",
        "[(1 - level), level]",
        ["tests/test_lens_values.py::test_mean_ci_covers_the_mean_at_its_level"],
    ),
    (
        "lens: answer rank counts the answer itself",
        "studies/lens.py",
        "greater = (logits[:, None, :] > ans_logit[:, :, None]).sum(dim=-1) + 1",
        "greater = (logits[:, None, :] >= ans_logit[:, :, None]).sum(dim=-1) + 1",
        ["tests/test_lens_values.py::test_answer_probability_and_rank_of_the_first_token"],
    ),
    (
        "lens: the answer's last token",
        "studies/lens.py",
        "out[i, j] = int(ids[0])",
        "out[i, j] = int(ids[-1])",
        [
            "tests/test_lens_values.py::test_answer_probability_and_rank_of_the_first_token",
            "tests/test_lens_values.py::test_answer_token_ids_take_the_first_token",
        ],
    ),
    (
        "lens: a logit reported as the answer's probability",
        "studies/lens.py",
        "ans_p = torch.where(have, p.gather(1, safe), torch.nan)",
        "ans_p = torch.where(have, logits.gather(1, safe), torch.nan)",
        ["tests/test_lens_values.py::test_answer_probability_and_rank_of_the_first_token"],
    ),
    (
        "findings: origin largest gain with the sign flipped",
        "studies/findings.py",
        '(float(r[key]) - float(ctl_rows[r["site"]][key]), r)',
        '(float(ctl_rows[r["site"]][key]) - float(r[key]), r)',
        ["tests/test_findings_values.py::test_origin_gain_sign_and_pool_decide_the_site"],
    ),
    (
        "findings: identical-vectors rule on the mean pool",
        "studies/findings.py",
        'flagged = identical if pool == "last" else set()',
        'flagged = identical if pool == "mean" else set()',
        ["tests/test_findings_values.py::test_origin_gain_sign_and_pool_decide_the_site"],
    ),
    (
        "findings: stratified z ignores --standardize",
        "studies/findings.py",
        'StandardizedRun(run, list(alignment["languages"])) if config.standardize else run',
        "run",
        ["tests/test_findings_values.py::test_stratified_z_follows_standardize_and_center"],
    ),
    (
        "findings: stratified z ignores --center",
        "studies/findings.py",
        "strata=labels, center=config.center, products=STUDY_PRODUCTS",
        "strata=labels, center=False, products=STUDY_PRODUCTS",
        ["tests/test_findings_values.py::test_stratified_z_follows_standardize_and_center"],
    ),
    (
        "corpora: HSK remainder rows to the smallest remainders",
        "data/corpora.py",
        "key=lambda k: quotas[k] - take[k], reverse=True)",
        "key=lambda k: quotas[k] - take[k])",
        ["tests/test_corpora.py::test_stratified_sample_remainders_go_to_the_largest_fractions"],
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


def main(only: list[str]) -> int:
    """Apply every mutation, or those whose description holds one of ``only``."""
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for what, rel, old, new, tests in MUTATIONS:
            if only and not any(o in what for o in only):
                continue
            result = run_one(old, new, rel, tests, Path(tmp))
            failures += not result.startswith("KILLED")
            print(f"{what:<52} {result}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
