"""One writer per folder, no writer while a command reads: a second writer is refused, readers
never see a folder being written, and a writer never replaces a run a command is reading."""

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
from slowcli import finish_gated, start_gated
from xlalign.cli import main
from xlalign.errors import RunError
from xlalign.models.testing import build_tiny_model
from xlalign.store import lock

HOLD = """
import sys, time
from xlalign import lock
lock.acquire(sys.argv[1], "xlalign test-holder")
print("locked", flush=True)
time.sleep(600)
"""


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
    tiny_models, problems, tmp_path, capsys
):
    """The issue's reproduction: extract A running, extract A --overwrite on the same folder.

    The first writer is paused after its second batch (before its third is recorded) until the checks are done (it used to
    run on with a 0.3 s pause per batch and could finish, on a loaded machine, before the
    reader was tried: "DID NOT RAISE"; the lock itself had no window).
    """
    data = problems.head(16).to_jsonl(tmp_path / "data.jsonl")
    out = tmp_path / "cc2"
    args = [
        "extract", "--model", str(tiny_models["qwen2"]), "--data", str(data), "-o", str(out),
        "--pool", "last,mean,tokens", "--batch-size", "2", "--no-progress",
    ]  # fmt: skip
    first, gate = start_gated(tmp_path, "xlalign.store.writer:RunWriter.mark_done", args, call=3)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "xlalign", *args, "--overwrite"],
            env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr
        assert f"being written by PID {first.pid} on host {platform.node()}" in second.stderr
        assert "Traceback" not in second.stderr
        # a reader refuses the folder while the writer holds it, naming the writer
        with pytest.raises(RunError, match=rf"PID {first.pid}"):
            xlalign.load_run(out)
        assert main(["align", str(out), "--no-progress"]) == 2
        assert f"'{out}' is being written by PID {first.pid}" in capsys.readouterr().err
        rc, _, stderr = finish_gated(first, gate)
        assert rc == 0, stderr
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    run = xlalign.load_run(out)
    assert run.complete
    # every row was written by the one writer: no zero rows left behind by a second one
    for key in run:
        assert (abs(run[key]).sum(axis=1) > 0).all(), key


def _lens_run(model: Path, problems, out: Path) -> Path:
    xlalign.extract(
        str(model), problems.head(8), "zh,en", sites="embed,L0,final", pools="last",
        batch_size=4, output=out, progress=False,
    )  # fmt: skip
    return out


def _other_model(tiny_models, bpe_tokenizer, tmp_path) -> Path:
    """A second decoder of the same family: other weights (another seed)."""
    return build_tiny_model("qwen2", bpe_tokenizer, tmp_path / "other-qwen2", seed=7)


def test_lens_beside_extract_overwrite_cannot_mix_models(
    tiny_models, bpe_tokenizer, problems, tmp_path, capsys
):
    """Issue 27, item 5: lens RUN beside extract --overwrite RUN (another model), both orders.

    Whichever holds the run first, the other is refused with one line naming the run and the
    holder, and the run's lens.json is always computed from the arrays beside it.
    """
    run = _lens_run(tiny_models["qwen2"], problems, tmp_path / "run")
    other = _other_model(tiny_models, bpe_tokenizer, tmp_path)
    data = problems.head(8).to_jsonl(tmp_path / "data.jsonl")
    overwrite = [
        "extract", "--model", str(other), "--data", str(data), "--langs", "zh,en", "-o",
        str(run), "--sites", "embed,L0,final", "--pool", "last", "--batch-size", "4",
        "--overwrite", "--no-progress",
    ]  # fmt: skip
    lens_args = ["lens", str(run), "--no-progress", "--n-boot", "10"]
    capsys.readouterr()

    # 1. lens first, paused after it opened the run: the overwrite is refused
    proc, gate = start_gated(tmp_path, "xlalign.studies.lens:lens_study", lens_args)
    try:
        assert main(overwrite) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"'{run}' is being written by PID {proc.pid}" in err
        assert "xlalign lens" in err
        rc, _, stderr = finish_gated(proc, gate)
        assert rc == 0, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    doc = json.loads((run / "lens.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model"] == str(tiny_models["qwen2"])
    assert doc["model"] == manifest["model"]  # decoded from the arrays beside it

    # 2. extract --overwrite first, paused after its layout: lens is refused, nothing written
    proc, gate = start_gated(tmp_path, "xlalign.capture.engine:_capture", overwrite)
    try:
        assert not (run / "lens.json").exists()  # cleared by the overwrite
        assert main(lens_args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"'{run}' is being written by PID {proc.pid}" in err
        assert not (run / "lens.json").exists()
        rc, _, stderr = finish_gated(proc, gate)
        assert rc == 0, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert json.loads((run / "manifest.json").read_text())["model"] == str(other)
    assert not (run / "lens.json").exists()


def test_a_reader_holds_the_run_against_an_overwrite_naming_itself(
    tiny_models, bpe_tokenizer, problems, tmp_path, capsys
):
    """A command that only reads a run (align RUN -o OTHER) holds its shared lock for as long
    as it runs: extract --overwrite RUN is refused meanwhile, naming the reader's PID and
    command (without the lock, the overwrite replaced the arrays under the sweep)."""
    run = _lens_run(tiny_models["qwen2"], problems, tmp_path / "run")
    other = _other_model(tiny_models, bpe_tokenizer, tmp_path)
    data = problems.head(8).to_jsonl(tmp_path / "data.jsonl")
    align = ["align", str(run), "-o", str(tmp_path / "sweep"), "--no-progress"]
    capsys.readouterr()
    proc, gate = start_gated(tmp_path, "xlalign.studies.layers:layer_sweep", align)
    try:
        overwrite = [
            "extract", "--model", str(other), "--data", str(data), "--langs", "zh,en", "-o",
            str(run), "--sites", "embed,L0,final", "--pool", "last", "--batch-size", "4",
            "--overwrite", "--no-progress",
        ]  # fmt: skip
        assert main(overwrite) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"'{run}' is being read by PID {proc.pid} on host {platform.node()}" in err
        assert "align" in err
        # readers do not exclude one another
        assert main(["export-npz", str(run), "-o", str(tmp_path / "x.npz")]) == 0
        rc, _, stderr = finish_gated(proc, gate)
        assert rc == 0, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert json.loads((run / "manifest.json").read_text())["model"] == str(tiny_models["qwen2"])
    assert main(overwrite) == 0  # once the reader is gone
    capsys.readouterr()


def test_shared_and_exclusive_holds_in_one_process(tmp_path):
    """One process: a folder it reads is converted to the write lock and back; the locks count;
    another process's reader blocks the conversion and keeps its own lock."""
    folder = tmp_path / "f"
    folder.mkdir()
    with lock.reading():
        lock.hold_for_reading(folder)
        assert lock.holds_shared(folder) and not lock.holds(folder)
        with lock.folder_lock(folder):
            assert lock.holds(folder)
            assert lock.holder(folder) is None  # this process is the writer
        assert lock.holds_shared(folder) and not lock.holds(folder)
        probe = subprocess.run(
            [sys.executable, "-c", PROBE, str(folder)], capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert probe.stdout.strip() == "refused", probe.stderr  # still shared: no writer
    assert not lock.holds_shared(folder)
    inner = tmp_path / "inner"
    inner.mkdir()
    with lock.reading():  # nested scopes: each gives back what it took, the outer one after
        lock.hold_for_reading(folder)
        with lock.reading():
            lock.hold_for_reading(inner)
        assert not lock.holds_shared(inner) and lock.holds_shared(folder)
        lock.hold_for_reading(inner)
    assert not lock.holds_shared(folder) and not lock.holds_shared(inner)
    proc, gate = _reader_process(tmp_path, folder)
    try:
        with lock.reading():
            lock.hold_for_reading(folder)  # readers share
            with pytest.raises(RunError, match=rf"being read by PID {proc.pid}"):
                lock.acquire(folder)
            assert lock.holds_shared(folder) and not lock.holds(folder)
        assert lock.holder(folder) is None
    finally:
        (gate / "go").write_text("")
        proc.wait(timeout=60)
    with lock.folder_lock(folder):  # the reader is gone
        pass


PROBE = """
import sys
from xlalign.errors import RunError
from xlalign.models.testing import build_tiny_model
from xlalign.store import lock
try:
    lock.acquire(sys.argv[1])
    print("acquired")
except RunError:
    print("refused")
"""

READER = """
import sys, time
from pathlib import Path
from xlalign.store import lock
gate = Path(sys.argv[2])
with lock.reading():
    lock.hold_for_reading(sys.argv[1])
    (gate / "reached").write_text("")
    while not (gate / "go").exists():
        time.sleep(0.01)
"""


def _reader_process(tmp_path: Path, folder: Path) -> tuple[subprocess.Popen, Path]:
    gate = tmp_path / "reader-gate"
    gate.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", READER, str(folder), str(gate)])
    deadline = time.monotonic() + 120
    while not (gate / "reached").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    return proc, gate


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
