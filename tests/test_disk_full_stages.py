"""Issue 27, item 7: a full disk in every stage after extraction (align, origin, lens, compare,
export-npz, run) is one line naming the path, and leaves no temporary file, no empty folder,
and every file that was there before as it was.

The disk really is full: a small tmpfs (root on Linux; skipped elsewhere) holding what the
command reads and writes, filled to one page of free space.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from xlalign.cli import main
from xlalign.pipeline.config import StudyConfig
from xlalign.pipeline.study import run_study
from xlalign.store.lock import LOCK_FILE


@pytest.fixture(scope="module")
def study(tiny_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("diskfull") / "s"
    cfg = StudyConfig(
        model=str(tiny_models["qwen2"]), problems=15, langs=("zh", "en"), output=str(out),
        n_boot=0, sites="embed,L0,final", lens=False, neurons=False, report=False,
        metrics=("z", "p1"),
    )  # fmt: skip
    run_study(cfg, command=["test"], progress=False, say=lambda _m: None)
    return out


@pytest.fixture
def disk(tmp_path) -> Iterator[Path]:
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path, leave: int = 4096) -> None:
    free = shutil.disk_usage(disk).free
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        os.posix_fallocate(fd, 0, free - leave)
    finally:
        os.close(fd)


def _state(disk: Path) -> dict[str, str]:
    return {
        str(p.relative_to(disk)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        for p in sorted(disk.rglob("*"))
        if p.name not in (LOCK_FILE, "filler")
    }


@pytest.mark.parametrize("stage", ["align", "origin", "lens", "compare", "export-npz", "run"])
def test_a_full_disk_in_a_later_stage_is_one_line_and_leaves_nothing(
    stage, study, tiny_models, disk, tmp_path, capsys
):
    run = study
    if stage in ("origin", "lens"):  # they write into the run folder: the run is on the disk
        run = disk / "s"
        shutil.copytree(study, run)
    argv = {
        "align": ["align", str(run), "-o", str(disk / "out"), "--n-boot", "0"],
        "origin": ["origin", str(run), "--control", "random-init"],
        "lens": ["lens", str(run), "--n-boot", "5"],
        "compare": ["compare", str(study), str(study / "control-random-init"), "-o",
                    str(disk / "cmp"), "--n-perms", "0"],
        "export-npz": ["export-npz", str(run), "-o", str(disk / "new" / "x.npz")],
        "run": ["run", "--model", str(tiny_models["qwen2"]), "--problems", "15", "--langs",
                "zh,en", "-o", str(disk / "study"), "--sites", "embed,L0", "--n-boot", "0",
                "--no-lens", "--no-neurons"],
    }[stage]  # fmt: skip
    _fill(disk)
    before = _state(disk)
    capsys.readouterr()
    assert main([*argv, "--no-progress"] if stage != "export-npz" else argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "xlalign" in line]  # not transformers' bars
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("xlalign: error: ") and "no space left on the device" in err, err
    assert str(disk) in err  # names the file or folder it was writing
    after = _state(disk)
    assert [p for p in after if p.endswith(".tmp")] == []
    empty = [p for p in disk.rglob("*") if p.is_dir() and not any(p.iterdir())]
    assert empty == []
    assert {k: v for k, v in after.items() if k in before} == before  # nothing lost


def test_export_npz_to_an_existing_folder_is_one_line(study, tmp_path, capsys):
    folder = tmp_path / "there"
    folder.mkdir()
    assert main(["export-npz", str(study), "-o", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err == f"xlalign: error: -o '{folder}' is a folder; give the .npz file to write\n"
    assert list(folder.iterdir()) == []
