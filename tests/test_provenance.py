"""Issue 27, item 4: derived outputs record their settings and the arrays they read; outputs
that do not belong together are refused or computed again, and a command writes only under -o."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import pytest

import xlalign
from slowcli import start_gated
from xlalign.cli import main
from xlalign.errors import RunError
from xlalign.pipeline.config import StudyConfig
from xlalign.pipeline.demo import StudyDocs
from xlalign.pipeline.study import run_study
from xlalign.store.lock import LOCK_FILE
from xlalign.studies.provenance import study_problems

ARGS = ["--metrics", "z,p1", "--n-boot", "0", "--no-progress"]


@pytest.fixture(scope="module")
def study(tiny_models, tmp_path_factory) -> Path:
    """A study folder (run, random-weights control, sweeps, findings), swept uncentred."""
    out = tmp_path_factory.mktemp("provenance") / "s"
    cfg = StudyConfig(
        model=str(tiny_models["qwen2"]), problems=15, langs=("zh", "en"), output=str(out),
        n_boot=0, sites="embed,L0,final", lens=False, neurons=False, report=False,
        metrics=("z", "p1"),
    )  # fmt: skip
    run_study(cfg, command=["test"], progress=False, say=lambda _m: None)
    return out


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def test_sweeps_and_findings_record_the_arrays_and_settings_they_came_from(study):
    run = xlalign.load_run(study)
    control = xlalign.load_run(study / "control-random-init")
    sweep = json.loads((study / "alignment.json").read_text())
    ctl_sweep = json.loads((study / "control-random-init" / "alignment.json").read_text())
    assert sweep["run_fingerprint"] == run.fingerprint
    assert ctl_sweep["run_fingerprint"] == control.fingerprint != run.fingerprint
    findings = json.loads((study / "findings.json").read_text())
    inputs = findings["parts"]["alignment"]["inputs"]
    digest = "sha256:" + hashlib.sha256((study / "alignment.json").read_bytes()).hexdigest()
    assert inputs["alignment"]["sha256"] == digest
    assert inputs["alignment"]["run_fingerprint"] == run.fingerprint
    assert inputs["alignment"]["settings"]["center"] is False
    assert inputs["control_alignment"]["run_fingerprint"] == control.fingerprint
    assert study_problems(study, run, control) == []


def test_align_with_o_writes_only_under_it(study, tmp_path, capsys):
    """`align S -o OTHER --center --standardize` used to rewrite S/control-random-init/
    alignment.json (outside -o); a later compare then read an uncentred model sweep beside a
    centred control sweep."""
    before = _snapshot(study)
    other = tmp_path / "other"
    assert main(["align", str(study), "-o", str(other), "--center", "--standardize", *ARGS]) == 0
    capsys.readouterr()
    assert _snapshot(study) == before  # nothing in S changed
    for folder in (other, other / "control-random-init"):
        doc = json.loads((folder / "alignment.json").read_text())
        assert (doc["center"], doc["standardize"]) == (True, True)
    findings = json.loads((other / "findings.json").read_text())
    used = findings["parts"]["alignment"]["inputs"]["control_alignment"]
    assert used["file"] == str(other / "control-random-init" / "alignment.json")
    assert study_problems(study) == []


def test_a_kill_between_the_sweeps_of_run_center_is_never_accepted(
    study, tiny_models, tmp_path, capsys
):
    """kill -9 of `run --center` right after the model's sweep: a centred model sweep beside an
    uncentred control sweep and the old findings. The answer refuses the folder, naming the
    difference; compare sweeps the control again; align makes it whole again."""
    folder = tmp_path / "s"
    shutil.copytree(study, folder)
    args = [
        "run", "--model", str(tiny_models["qwen2"]), "--problems", "15", "--langs", "zh,en",
        "-o", str(folder), "--sites", "embed,L0,final", "--metrics", "z,p1", "--n-boot", "0",
        "--no-lens", "--no-neurons", "--center", "--no-progress",
    ]  # fmt: skip
    # the second write_alignment is the control's: the model's sweep is on disk by then
    proc, _gate = start_gated(tmp_path, "xlalign.studies.layers:write_alignment", args, call=2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert json.loads((folder / "alignment.json").read_text())["center"] is True
    ctl = json.loads((folder / "control-random-init" / "alignment.json").read_text())
    assert ctl["center"] is False  # the mix the kill leaves
    problems = study_problems(folder)
    assert any("swept with other settings (center: True, not False)" in p for p in problems)
    assert any("findings.json (alignment) was computed from another" in p for p in problems)
    with pytest.raises(RunError, match=r"do not belong together: .*center: True, not False"):
        StudyDocs.read(folder)
    # compare reads the stored sweeps side by side only with the same settings
    assert main(["compare", str(folder), str(study), "-o", str(tmp_path / "cmp"), "--n-perms",
                 "0", "--no-progress"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "swept with other settings (center:" in out
    assert main(["align", str(folder), "--center", *ARGS]) == 0
    capsys.readouterr()
    assert study_problems(folder) == []
    StudyDocs.read(folder)


def test_a_sweep_of_arrays_extracted_since_is_not_used(study, tiny_models, tmp_path, capsys):
    """A stored alignment.json of an earlier extraction (same folder, extracted again) is stale:
    compare sweeps again, origin does not read it, study_problems names it."""
    folder = tmp_path / "s"
    shutil.copytree(study, folder)
    stale = json.loads((folder / "alignment.json").read_text())
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["created"] = "2000-01-01T00:00:00Z"  # as a new extraction would
    (folder / "manifest.json").write_text(json.dumps(manifest))
    run = xlalign.load_run(folder)
    assert stale["run_fingerprint"] != run.fingerprint
    problems = study_problems(folder, run)
    assert any("computed from other arrays" in p and "extracted again" in p for p in problems)
    assert main(["compare", str(folder), str(study), "-o", str(tmp_path / "cmp"), "--n-perms",
                 "0", "--no-progress"]) == 0  # fmt: skip
    assert "run fingerprint: " in capsys.readouterr().out
