"""A real ``xlalign extract`` process killed with SIGKILL part-way, then resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import xlalign
from slowcli import STOP_AFTER_CLI
from xlalign.data.corpus import ParallelCorpus
from xlalign.errors import XlalignError


def _cli(script: Path, stop_after: int, args: list[str]) -> subprocess.Popen:
    """The CLI in a child process that waits after ``stop_after`` batches (0: runs through)."""
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
        XLALIGN_TEST_STOP_AFTER=str(stop_after),
    )  # fmt: skip
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _done_batches(run: Path) -> int:
    try:
        progress = json.loads((run / "progress.json").read_text())
    except (OSError, json.JSONDecodeError):
        return 0
    return sum(len(v) for v in progress["done"].values())


def test_killed_extraction_resumes_to_identical_arrays(tiny_models, problems, tmp_path):
    rows = 24
    data = ParallelCorpus(
        problems.ids[:rows],
        {lang: problems.texts[lang][:rows] for lang in problems.languages},
        {k: v[:rows] for k, v in problems.meta.items()},
    ).to_jsonl(tmp_path / "data.jsonl")
    script = tmp_path / "slow_cli.py"
    script.write_text(STOP_AFTER_CLI)
    out = tmp_path / "killed"
    args = [
        "extract", "--model", str(tiny_models["qwen2"]), "--data", str(data), "--langs", "zh,en",
        "--sites", "all", "--pool", "last,mean,tokens", "--batch-size", "2", "--no-progress",
    ]  # fmt: skip

    # the child stops after its 8th batch of 24 (12 per language) and waits to be killed there:
    # no race between its batches and this loop, however loaded the machine
    proc = _cli(script, 8, [*args, "-o", str(out)])
    deadline = time.monotonic() + 600  # a hang guard only: the child waits at batch 8
    try:
        while _done_batches(out) < 8:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the child made no progress in 10 minutes"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert _done_batches(out) == 8

    # a killed run never reads as complete
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False
    with pytest.raises(XlalignError, match=r"incomplete.*--resume"):
        xlalign.load_run(out)

    resumed = _cli(script, 0, [*args, "-o", str(out), "--resume"])
    _, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr
    # the uninterrupted run, in this process (same machine, same kernels, same thread count)
    b = xlalign.extract(
        str(tiny_models["qwen2"]), data, "zh,en", sites="all", pools="last,mean,tokens",
        batch_size=2, output=tmp_path / "whole", progress=False,
    )  # fmt: skip
    a = xlalign.load_run(out)
    assert a.complete and len(a.manifest["sessions"]) == 2
    assert a.manifest["sessions"][-1]["prompts"] < 2 * rows
    for key in b:
        assert np.array_equal(a[key], b[key]), key
    for lang in b.languages:
        assert all(
            np.array_equal(x, y) for x, y in zip(a.token_ids(lang), b.token_ids(lang), strict=True)
        )
        for site in b.sites:
            pairs = zip(a.token_vectors(lang, site), b.token_vectors(lang, site), strict=True)
            assert all(np.array_equal(x, y) for x, y in pairs), (lang, site)
