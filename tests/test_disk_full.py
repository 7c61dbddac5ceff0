"""A full disk is an error naming the file and the bytes, never SIGBUS; the run then resumes.

A read-only output folder is refused before any computation. Where this process may mount a
small tmpfs (root in a container), the disk really is full; everywhere, ``posix_fallocate``
is also made to fail with ENOSPC in-process, the fault-injection point the writer relies on.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import xlalign
from xlalign.cli import main
from xlalign.errors import RunError


def _mount_tmpfs(path: Path, size: str, readonly: bool = False) -> None:
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 6 MiB tmpfs (skipped where mounting is not allowed)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mnt = tmp_path / "disk"
    _mount_tmpfs(mnt, "6m")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _args(model: Path, data: Path, out: Path) -> list[str]:
    return [
        "extract", "--model", str(model), "--data", str(data), "-o", str(out),
        "--pool", "last,mean,tokens", "--batch-size", "16", "--no-progress",
    ]  # fmt: skip


def test_full_disk_is_an_error_and_the_run_resumes(tiny_models, problems, tmp_path, small_disk):
    data = problems.to_jsonl(tmp_path / "p.jsonl")  # 200 rows: ~4.5 MiB of arrays
    out = small_disk / "run"
    filler = small_disk / "filler"
    filler.write_bytes(b"\1" * (3 << 20))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "xlalign", *_args(tiny_models["qwen2"], data, out)]
    full = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert full.returncode == 2, (full.returncode, full.stderr)  # SIGBUS was -7 (shell: 135)
    assert "no space left on the device for" in full.stderr and "needs" in full.stderr
    assert "Traceback" not in full.stderr
    filler.unlink()
    resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    a = xlalign.load_run(out)
    b = xlalign.extract(str(tiny_models["qwen2"]), data, sites="all", pools="last,mean,tokens",
                        batch_size=16, output=tmp_path / "whole", progress=False)  # fmt: skip
    for key in b:
        assert np.array_equal(a[key], b[key]), key


def test_fallocate_enospc_names_file_and_bytes_then_resumes(
    tiny_models, problems, tmp_path, monkeypatch
):
    corpus = problems.head(12)
    out = tmp_path / "run"
    kw = dict(sites="embed,L0", pools="last,tokens", batch_size=4, progress=False)
    calls = []

    def no_space(fd: int, offset: int, length: int) -> None:
        calls.append(length)
        if len(calls) == 3:  # the third array file: the folder is half laid out
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(RunError, match=r"no space left on the device for .*\.npy \(needs \d+"):
        xlalign.extract(str(tiny_models["qwen2"]), corpus, "zh,en", output=out, **kw)
    assert (out / "manifest.json").exists()  # the manifest came first
    monkeypatch.undo()
    run = xlalign.extract(str(tiny_models["qwen2"]), corpus, "zh,en", output=out, resume=True,
                          **kw)  # fmt: skip
    whole = xlalign.extract(str(tiny_models["qwen2"]), corpus, "zh,en",
                            output=tmp_path / "whole", **kw)  # fmt: skip
    for key in whole:
        assert np.array_equal(run[key], whole[key]), key


def test_read_only_output_is_refused_before_any_computation(
    tiny_models, problems, tmp_path, monkeypatch, capsys
):
    run = xlalign.extract(str(tiny_models["qwen2"]), problems.head(6), "zh,en", sites="embed",
                          batch_size=3, output=tmp_path / "run", progress=False)  # fmt: skip
    ro = tmp_path / "ro"
    if os.geteuid() == 0:  # root writes through chmod: use a read-only mount instead
        if sys.platform != "linux":
            pytest.skip("needs Linux to mount a read-only tmpfs as root")
        _mount_tmpfs(ro, "1m", readonly=True)
    else:
        ro.mkdir()
        ro.chmod(0o555)
    import xlalign.studies.layers as layers

    def never(*a: object, **k: object) -> None:
        raise AssertionError("the sweep ran before the output folder was checked")

    monkeypatch.setattr(layers, "layer_sweep", never)
    try:
        assert main(["align", str(run.path), "-o", str(ro), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"cannot write into output folder '{ro}'" in err
        assert "read-only" in err or "permission denied" in err
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(ro)], check=False)
        else:
            ro.chmod(0o755)
