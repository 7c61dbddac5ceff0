"""Nothing of the user's is deleted or rewritten outside ``-o``; a run's parts belong together.

Each test first sets up the situation that used to lose data or mix studies (issue 28): a
folder with a foreign manifest and a user file, ``align -o`` elsewhere, a control built on
another corpus, a moved ``refs/main`` in a local Hugging Face cache, runs with their languages
in another order, damaged manifests, concurrent writers.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import xlalign
from xlalign.cli import main
from xlalign.errors import RunError
from xlalign.store.files import CONTROL_DIR, MANIFEST

N = 24


@pytest.fixture(scope="module")
def data(problems, tmp_path_factory) -> Path:
    """The first N problems as JSONL."""
    return problems.head(N).to_jsonl(tmp_path_factory.mktemp("data") / "problems.jsonl")


@pytest.fixture(scope="module")
def other_data(problems, tmp_path_factory) -> Path:
    """N other problems: another corpus with the same languages."""
    from xlalign.data.corpus import ParallelCorpus

    rows = slice(N, 2 * N)
    other = ParallelCorpus(
        problems.ids[rows],
        {lang: problems.texts[lang][rows] for lang in problems.languages},
        {k: v[rows] for k, v in problems.meta.items()},
    )
    return other.to_jsonl(tmp_path_factory.mktemp("other") / "other.jsonl")


@pytest.fixture(scope="module")
def study(tiny_models, data, tmp_path_factory) -> Path:
    """A study folder of the tiny Qwen2 with its random-weights control (no lens: quicker)."""
    out = tmp_path_factory.mktemp("study") / "s"
    argv = ["run", "--model", str(tiny_models["qwen2"]), "--data", str(data), "--langs", "zh,en",
            "-o", str(out), "--no-lens", "--n-boot", "20", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    return out


def _extract(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", "--model", str(model), "--data", str(data), "--langs", "zh,en",
            "--sites", "embed,L0", "--pool", "last,mean", "-o", str(out), "--no-progress",
            *extra]  # fmt: skip


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (the lock file aside) -> its SHA-256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".xlalign.lock"
    }


def _hold_lock(folder: Path) -> subprocess.Popen[str]:
    """Another process holding ``folder``'s write lock until killed."""
    code = (
        "import sys, time\n"
        "from xlalign.store.lock import acquire\n"
        f"acquire({str(folder)!r}, 'test holder')\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


# ---------------------------------------------------------------------------------------------
# --overwrite deletes only what xlalign wrote


def test_overwrite_keeps_a_folder_whose_manifest_xlalign_did_not_write(
    tiny_models, data, tmp_path, capsys
):
    user = tmp_path / "userdata"
    (user / "sub").mkdir(parents=True)
    (user / MANIFEST).write_text('{"name": "x"}\n')
    (user / "thesis.txt").write_text("t\n")
    (user / "sub" / "notes.txt").write_text("n\n")
    before = _snapshot(user)
    assert main(_extract(tiny_models["qwen2"], data, user, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "manifest.json: not an xlalign run manifest" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _snapshot(user) == before


@pytest.mark.parametrize("where", ["thesis.txt", "sub/notes.txt", f"{CONTROL_DIR}/notes.txt"])
def test_overwrite_refuses_while_a_run_holds_files_xlalign_never_writes(
    tiny_models, data, tmp_path, capsys, where
):
    out = tmp_path / "run"
    assert main(_extract(tiny_models["qwen2"], data, out)) == 0
    if where.startswith(CONTROL_DIR):  # a control beside it, as a study has
        assert main(_extract(tiny_models["qwen2"], data, out / CONTROL_DIR)) == 0
    user_file = out / where
    user_file.parent.mkdir(parents=True, exist_ok=True)
    user_file.write_text("mine\n")
    before = _snapshot(out)
    capsys.readouterr()

    assert main(_extract(tiny_models["qwen2"], data, out, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert where.split("/")[0] in err and "deletes only what xlalign wrote" in err
    assert _snapshot(out) == before  # nothing deleted, the run still reads
    assert xlalign.load_run(out).complete

    user_file.unlink()
    if where.startswith("sub/"):
        user_file.parent.rmdir()  # an empty folder of the user's is the user's too
    assert main(_extract(tiny_models["qwen2"], data, out, "--overwrite")) == 0


def test_overwrite_replaces_a_study_folder_xlalign_wrote(tiny_models, data, study, tmp_path):
    import shutil

    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    assert (copy / "report.html").exists() and (copy / CONTROL_DIR / MANIFEST).exists()
    assert main(_extract(tiny_models["qwen2"], data, copy, "--overwrite")) == 0
    left = {p.name for p in copy.iterdir()}
    assert "report.html" not in left and CONTROL_DIR not in left
    assert xlalign.load_run(copy).sites == ("embed", "L0")


@pytest.mark.parametrize(
    "text", ["[1, 2]", '{"format": "xlalign.run", "complete": tr', '{"name": "x"}']
)
@pytest.mark.parametrize("command", ["extract --resume", "run"])
def test_a_damaged_or_foreign_manifest_is_one_line(
    tiny_models, data, tmp_path, capsys, text, command
):
    out = tmp_path / "run"
    out.mkdir()
    (out / MANIFEST).write_text(text)
    if command == "run":
        argv = ["run", "--model", str(tiny_models["qwen2"]), "--data", str(data), "-o",
                str(out), "--no-progress"]  # fmt: skip
    else:
        argv = _extract(tiny_models["qwen2"], data, out, "--resume")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xlalign: error: ") and str(out / MANIFEST) in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "run: None" not in err
    assert (out / MANIFEST).read_text() == text


# ---------------------------------------------------------------------------------------------
# every command writes only under its -o


def test_align_elsewhere_leaves_the_study_untouched(study, tmp_path, capsys):
    before = _snapshot(study)
    out = tmp_path / "centred"
    argv = ["align", str(study), "-o", str(out), "--center", "--standardize", "--n-boot", "20",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert _snapshot(study) == before
    control_sweep = json.loads((out / CONTROL_DIR / "alignment.json").read_text())
    assert control_sweep["center"] is True
    findings = json.loads((out / "findings.json").read_text())
    assert {f["verdict"] for f in findings["findings"]} != {"no-control"}


# ---------------------------------------------------------------------------------------------
# a control belongs to its study


def test_origin_refuses_to_build_the_control_on_another_corpus(
    tiny_models, data, other_data, tmp_path, capsys
):
    run = tmp_path / "run"
    assert main(_extract(tiny_models["qwen2"], data, run)) == 0
    argv = ["origin", str(run), "--data", str(other_data), "--control", "random-init",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    assert "not the one the run" in capsys.readouterr().err
    assert not (run / CONTROL_DIR).exists()


def test_a_control_of_another_corpus_is_refused_by_align_and_compare(
    tiny_models, data, other_data, tmp_path, capsys
):
    run = tmp_path / "run"
    assert main(_extract(tiny_models["qwen2"], data, run)) == 0
    # the original failure: a random-weights run of the same model on another corpus, placed
    # where the run's control goes
    ctl = run / CONTROL_DIR
    xlalign.extract(
        str(tiny_models["qwen2"]), xlalign.load_corpus(other_data), ["zh", "en"],
        sites="embed,L0", pools=("last", "mean"), output=ctl, progress=False, random_init_seed=0,
    )  # fmt: skip
    capsys.readouterr()
    assert main(["align", str(run), "--n-boot", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "does not belong to the run" in err and "the corpus differs" in err
    assert not (run / "findings.json").exists() and not (run / "alignment.json").exists()
    with pytest.raises(RunError, match="does not belong to the run"):
        xlalign.compare([run, ctl], progress=False, say=lambda s: None)
    assert main(["lens", str(run), "--n-boot", "10", "--no-progress"]) == 2
    assert "does not belong to the run" in capsys.readouterr().err
    assert not (run / "lens.json").exists()
    assert main(["origin", str(run), "--control", "random-init", "--no-progress"]) == 2
    assert "the corpus differs" in capsys.readouterr().err
    assert not (run / "origin.json").exists()


def test_control_mismatches_names_each_difference():
    from xlalign.store.run import control_mismatches

    run = {"corpus_fingerprint": "a", "languages": ["zh", "en"], "model": "m",
           "architecture": "Qwen2Model", "n_layers": 4, "d_model": 32, "dtype": "float32",
           "random_init_seed": None}  # fmt: skip
    same = {**run, "random_init_seed": 0}
    assert control_mismatches(run, same) == []
    assert control_mismatches(run, {**same, "compat": "exact"}) == []  # the default, spelled out
    assert control_mismatches(run, {**same, "n_layers": 6}) == [
        "n_layers differs (run: 4, control: 6)"
    ]
    assert control_mismatches(run, {**same, "random_init_seed": None}) == [
        "its weights are not random (no random_init_seed): it is not a control"
    ]
    made_for_other = {**same, "control_of": {"corpus_fingerprint": "b", "model": "m"}}
    assert control_mismatches(run, made_for_other) == [
        "it was made for another run (corpus_fingerprint 'b')"
    ]


def test_the_study_records_the_run_its_control_belongs_to(study):
    run = json.loads((study / MANIFEST).read_text())
    made_for = json.loads((study / CONTROL_DIR / MANIFEST).read_text())["control_of"]
    assert made_for == {
        "model": run["model"],
        "model_key": run["model_key"],
        "corpus_fingerprint": run["corpus_fingerprint"],
    }


def test_align_while_another_process_writes_the_control_is_refused(study, tmp_path, capsys):
    import shutil

    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    before = _snapshot(copy)
    holder = _hold_lock(copy / CONTROL_DIR)
    try:
        assert main(["align", str(copy), "--n-boot", "0", "--no-progress"]) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert "test holder" in err and "align again" in err
    assert _snapshot(copy) == before  # no findings.json without its control


def test_concurrent_compare_into_one_folder_is_refused(study, tmp_path, capsys):
    out = tmp_path / "cmp"
    holder = _hold_lock(out)
    try:
        argv = ["compare", str(study), str(study / CONTROL_DIR), "-o", str(out)]
        assert main(argv) == 2
    finally:
        holder.kill()
        holder.wait()
    assert "test holder" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == [".xlalign.lock"]


# ---------------------------------------------------------------------------------------------
# runs that cannot meet


def test_compare_names_the_languages_of_runs_in_another_order(tiny_models, data, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(_extract(tiny_models["qwen2"], data, a)) == 0
    argv = _extract(tiny_models["llama"], data, b)
    argv[argv.index("zh,en")] = "en,zh"
    assert main(argv) == 0
    with pytest.raises(RunError, match=r"order their languages differently .*zh,en.*en,zh"):
        xlalign.compare([a, b], progress=False, say=lambda s: None)


# ---------------------------------------------------------------------------------------------
# a Hub model whose main moved


def _snapshot_model(cache: Path, repo: str, commit: str, source: Path) -> None:
    import shutil

    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(source, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)


def test_a_hub_model_whose_main_moved_is_not_reused(bpe_tokenizer, problems, data, tmp_path):
    from xlalign.models.testing import build_tiny_model

    cache = tmp_path / "hub"
    first, second = "a" * 40, "b" * 40
    _snapshot_model(
        cache, "org/tiny", first, build_tiny_model("qwen2", bpe_tokenizer, tmp_path / "m1", seed=1)
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}  # fmt: skip
    out = tmp_path / "study"
    argv = [sys.executable, "-m", "xlalign", "run", "--model", "org/tiny", "--data", str(data),
            "--langs", "zh,en", "--sites", "embed,L0", "--control", "none", "--no-lens",
            "--n-boot", "0", "-o", str(out), "--no-progress"]  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / MANIFEST).read_text())["commit_hash"] == first

    again = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr  # same commit: reused

    # main moves to other weights (same config and tokenizer)
    _snapshot_model(
        cache, "org/tiny", second, build_tiny_model("qwen2", bpe_tokenizer, tmp_path / "m2", seed=2)
    )
    moved = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert moved.returncode == 2
    assert f"made from commit {first}" in moved.stderr and f"now commit {second}" in moved.stderr
    pinned = subprocess.run([*argv, "--revision", first], env=env, capture_output=True, text=True)
    assert pinned.returncode == 0, pinned.stderr  # the remedy the error gives


# ---------------------------------------------------------------------------------------------
# errors that name what the user knows


def test_a_row_that_makes_z_undefined_is_named_by_its_corpus_id():
    import numpy as np

    from xlalign.studies.origin import OriginConfig, _z

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    x[2] = 0.0  # row 2 of this subset is corpus row "p-17"
    z = _z(x, y, OriginConfig(), ids=["p-3", "p-9", "p-17", "p-20", "p-21", "p-40"])
    assert z.value is None and z.reason is not None
    assert "indices [2]" in z.reason and "corpus ids of those rows: p-17" in z.reason


def test_the_demo_takes_hub_ids_as_they_are():
    from xlalign.pipeline.demo import DemoConfig

    for model in ("google/gemma-3-270m", "qwen/qwen2.5-0.5b"):
        assert DemoConfig(model=model).model == model


def test_the_demo_does_not_overwrite_an_answer_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "d"
    out.mkdir()
    (out / "answer.md").write_text("my notes\n")
    assert main(["demo", "--model", "minilm", "-o", str(out), "--no-progress"]) == 2
    assert "not a demo answer" in capsys.readouterr().err
    assert (out / "answer.md").read_text() == "my notes\n" and not (out / "problems").exists()


def test_the_demo_names_its_models(tmp_path, capsys):
    assert main(["demo", "--model", "qwen2.5-05b", "-o", str(tmp_path / "d")]) == 2
    assert "did you mean qwen2.5-0.5b?" in capsys.readouterr().err
    assert main(["demo", "--model", "bogus", "-o", str(tmp_path / "d"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "the demo's own models: qwen2.5-0.5b, gemma-3-270m, minilm" in err


def test_origin_names_the_corpus_id_of_a_zero_row_in_a_subset(tiny_models, problems, tmp_path):
    import numpy as np

    from xlalign.data.corpus import ParallelCorpus

    rows = problems.head(24)
    ids = [f"p-{7 * i}" for i in range(24)]  # ids that are not row numbers
    corpus = ParallelCorpus(ids, dict(rows.texts), dict(rows.meta))
    run = tmp_path / "run"
    xlalign.extract(
        str(tiny_models["qwen2"]), corpus, ["zh", "en"], sites="embed,L0", pools=("last", "mean"),
        output=run, progress=False,
    )  # fmt: skip
    path = run / "arrays" / "zh" / "L0" / "last.npy"
    vectors = np.load(path, allow_pickle=False)
    vectors[5] = 0.0
    np.save(path, vectors, allow_pickle=False)
    assert main(["origin", str(run), "--no-progress"]) == 0
    text = (run / "origin.json").read_text()
    assert "corpus ids of those rows: p-35" in text


def test_overwrite_keeps_a_users_tmp_files(tiny_models, data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_extract(tiny_models["qwen2"], data, out)) == 0
    (out / ".notes.tmp").write_text("mine\n")
    (out / ".mybackup.tmp").mkdir()
    (out / ".mybackup.tmp" / "thesis.txt").write_text("t\n")
    before = _snapshot(out)
    assert main(_extract(tiny_models["qwen2"], data, out, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert ".mybackup.tmp" in err and ".notes.tmp" in err
    assert _snapshot(out) == before


def test_resuming_an_interrupted_layout_keeps_a_users_files(tiny_models, data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_extract(tiny_models["qwen2"], data, out)) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    manifest.update(complete=False, laid_out=False)  # killed while laying the folder out
    (out / MANIFEST).write_text(json.dumps(manifest))
    (out / CONTROL_DIR).mkdir()
    (out / CONTROL_DIR / "notes.txt").write_text("mine\n")
    assert main(_extract(tiny_models["qwen2"], data, out, "--resume")) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert (out / CONTROL_DIR / "notes.txt").read_text() == "mine\n"


def test_overwrite_while_another_process_writes_the_control_is_refused(
    tiny_models, data, tmp_path, capsys
):
    out = tmp_path / "run"
    assert main(_extract(tiny_models["qwen2"], data, out)) == 0
    assert main(_extract(tiny_models["qwen2"], data, out / CONTROL_DIR)) == 0
    before = _snapshot(out)
    holder = _hold_lock(out / CONTROL_DIR)
    try:
        assert main(_extract(tiny_models["qwen2"], data, out, "--overwrite")) == 2
    finally:
        holder.kill()
        holder.wait()
    assert "test holder" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_export_npz_replaces_a_file_only_when_asked(study, tmp_path, capsys):
    target = tmp_path / "thesis.npz"
    target.write_bytes(b"mine")
    argv = ["export-npz", str(study), "--pool", "last", "-o", str(target)]
    assert main(argv) == 2
    assert "pass --overwrite" in capsys.readouterr().err and target.read_bytes() == b"mine"
    assert main([*argv, "--overwrite"]) == 0
    assert target.read_bytes() != b"mine"
    assert main(["export-npz", str(study), "-o", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_the_control_follows_the_runs_dtype(tiny_models, data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*_extract(tiny_models["qwen2"], data, run), "--dtype", "bfloat16"]) == 0
    argv = ["origin", str(run), "--control", "random-init", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads((run / CONTROL_DIR / MANIFEST).read_text())["dtype"] == "bfloat16"
    assert main(argv) == 0  # and is reused the next time
