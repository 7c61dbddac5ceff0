"""One writer per folder: a second writer is refused, readers never see a folder being written."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import xlalign
from slowcli import SLOW_CLI
from xlalign.cli import main
from xlalign.errors import RunError
from xlalign.store import lock

HOLD = """
import sys, time
from xlalign import lock
lock.acquire(sys.argv[1], "xlalign test-holder")
print("locked", flush=True)
time.sleep(600)
"""


def _done_batches(run: Path) -> int:
    try:
        return sum(len(v) for v in json.loads((run / "progress.json").read_text())["done"].values())
    except (OSError, json.JSONDecodeError, KeyError):
        return 0


def _holder_process(tmp_path: Path, folder: Path) -> subprocess.Popen:
    script = tmp_path / "hold.py"
    script.write_text(HOLD)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_refused_with_pid_and_host_and_kill_releases(tmp_path):
    folder = tmp_path / "f"
    proc = _holder_process(tmp_path, folder)
    try:
        with pytest.raises(RunError, match=rf"PID {proc.pid} on host {platform.node()}"):
            lock.acquire(folder)
        assert lock.holder(folder)["pid"] == proc.pid
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    # the kernel released the killed holder's lock: no stale lock
    assert lock.holder(folder) is None
    with lock.folder_lock(folder):
        assert lock.holds(folder)
        with lock.folder_lock(folder):  # re-entrant in one process
            pass
        assert lock.holds(folder)
    assert not lock.holds(folder)


def test_concurrent_overwrite_is_refused_and_run_is_not_read_while_written(
    tiny_models, problems, tmp_path
):
    """The issue's reproduction: extract A running, extract A --overwrite on the same folder."""
    data = problems.head(16).to_jsonl(tmp_path / "data.jsonl")
    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_CLI)
    out = tmp_path / "cc2"
    args = [
        "extract", "--model", str(tiny_models["qwen2"]), "--data", str(data), "-o", str(out),
        "--pool", "last,mean,tokens", "--batch-size", "2", "--no-progress",
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", XLALIGN_TEST_DELAY="0.3")
    first = subprocess.Popen(
        [sys.executable, str(script), *args], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while _done_batches(out) < 2:
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = subprocess.run(
            [sys.executable, "-m", "xlalign", *args, "--overwrite"],
            env=dict(env, XLALIGN_TEST_DELAY="0"), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr
        assert f"being written by PID {first.pid} on host {platform.node()}" in second.stderr
        assert "Traceback" not in second.stderr
        # a reader refuses the folder while the writer holds it, naming the writer
        with pytest.raises(RunError, match=rf"PID {first.pid}"):
            xlalign.load_run(out)
        assert main(["align", str(out), "--no-progress"]) == 2
        _, stderr = first.communicate(timeout=180)
        assert first.returncode == 0, stderr
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    run = xlalign.load_run(out)
    assert run.complete
    # every row was written by the one writer: no zero rows left behind by a second one
    for key in run:
        assert (abs(run[key]).sum(axis=1) > 0).all(), key


def test_killed_writer_leaves_no_lock_and_resume_proceeds(tiny_models, problems, tmp_path):
    data = problems.head(8)
    out = tmp_path / "r"
    proc = _holder_process(tmp_path, out)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert (out / lock.LOCK_FILE).exists()  # left behind, but not held
    run = xlalign.extract(
        str(tiny_models["qwen2"]), data, "zh,en", sites="embed,L0", batch_size=4, output=out,
        progress=False,
    )  # fmt: skip
    assert run.complete and lock.holder(out) is None


def test_failed_command_leaves_no_folder(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(RunError, match=r"has no manifest\.json"), lock.folder_lock(out):
        xlalign.load_run(out)
    assert not out.exists()
