"""Issue 27, item 8: a NaN row in a run's file (written there after extraction) is named with
its run, language, site, pool, row and id by the lens and by compare; never averaged away (the
lens's summary at that site used to read null for every class, silently)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import xlalign
from xlalign.cli import main
from xlalign.models.testing import build_tiny_model


@pytest.fixture(scope="module")
def runs(tiny_models, bpe_tokenizer, problems, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nonfinite")
    other = build_tiny_model("llama", bpe_tokenizer, root / "llama", seed=3)
    out = {}
    for name, model in (("a", tiny_models["qwen2"]), ("b", other)):
        xlalign.extract(
            str(model), problems.head(10), "zh,en", sites="embed,L0,final", pools="last",
            batch_size=4, output=root / name, progress=False,
        )  # fmt: skip
        out[name] = root / name
    return out


def _with_nan_row(run: Path, tmp_path: Path, row: int) -> Path:
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    f = copy / "arrays" / "en" / "L0" / "last.npy"
    a = np.load(f)
    a[row, 5] = np.nan
    np.save(f, a)
    return copy


def test_lens_names_a_nan_row_and_writes_nothing(runs, tmp_path, capsys):
    run = _with_nan_row(runs["a"], tmp_path, 6)
    ident = json.loads((run / "manifest.json").read_text())["ids"][6]
    assert main(["lens", str(run), "--no-progress", "--n-boot", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"xlalign: error: run '{run}': en, site L0, pool last holds NaN or inf in row 6 (id "
        f"{ident!r}); extraction never writes such vectors, so the file was changed since: "
        "extract the run again"
    )
    assert not (run / "lens.json").exists()


def test_compare_names_the_run_and_site_of_a_nan_row(runs, tmp_path, capsys):
    bad = _with_nan_row(runs["b"], tmp_path, 2)
    argv = ["compare", str(runs["a"]), str(bad), "-o", str(tmp_path / "cmp"), "--n-perms", "0",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"run '{bad}': en, site L0, pool last holds NaN or inf in row 2" in err
    assert not (tmp_path / "cmp").exists()
