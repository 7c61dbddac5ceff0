"""The README's five-minute tour runs as printed: its commands are read from README.md."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from xlalign.cli import main
from xlalign.errors import XlalignError

README = Path(__file__).resolve().parents[1] / "README.md"
TOUR_HEADING = "## A five-minute tour"
#: The model name the tour uses.
TOUR_MODEL = "minilm"


def tour_commands(text: str) -> list[list[str]]:
    """The argument lists of the tour's first ``bash`` block: continuations joined, comments cut."""
    if TOUR_HEADING not in text:
        raise AssertionError(f"README.md has no '{TOUR_HEADING}' section")
    section = text.split(TOUR_HEADING, 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "the tour has no ```bash block"
    joined = block.group(1).replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def test_tour_parser_joins_continuations_and_drops_comments():
    text = f"{TOUR_HEADING}\n\n```bash\nxlalign a --x 1 \\\n    --y 2  # note\nxlalign b\n```\n"
    assert tour_commands(text) == [["xlalign", "a", "--x", "1", "--y", "2"], ["xlalign", "b"]]


@pytest.fixture(scope="module")
def model_names(minilm_path) -> dict[str, str]:
    """How the tour's model name reaches the bundled weights in this checkout.

    Once ``--model minilm`` resolves by itself (the named-model table), nothing is replaced and
    the tour runs exactly as printed; until then the name stands for the bundled folder.
    """
    from xlalign.models.loading import load_model

    try:
        load_model(TOUR_MODEL)
    except XlalignError:
        return {TOUR_MODEL: str(minilm_path)}
    return {}


@pytest.mark.slow
@pytest.mark.minilm
def test_readme_tour_runs_as_printed(model_names, minilm_path, tmp_path, monkeypatch, capsys):
    model_folder = minilm_path
    commands = tour_commands(README.read_text(encoding="utf-8"))
    assert [c[1] for c in commands] == ["problems", "extract", "align", "origin", "export-npz",
                                        "run"]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    outputs = []
    for argv in commands:
        assert argv[0] == "xlalign"
        args = [model_names.get(a, a) if argv[i - 1] == "--model" else a
                for i, a in enumerate(argv[1:], start=1)]  # fmt: skip
        rc = main(args)
        out = capsys.readouterr()
        assert rc == 0, f"`{shlex.join(argv)}` failed:\n{out.err[-2000:]}"
        outputs.append(out.out)

    run = Path("runs/x")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["complete"] and manifest["pool_semantics"] == 2
    origin = json.loads((run / "origin.json").read_text())
    assert origin["control"] is not None  # --control random-init ran without --data
    assert (run / "control-random-init" / "manifest.json").exists()
    with np.load("all_layers_lasttok.npz", allow_pickle=False) as npz:
        assert {"zh_L0", "en_L0", "zh_embed"} <= set(npz.files)
        stored = np.load(run / "arrays" / "zh" / "L0" / "last.npy", allow_pickle=False)
        np.testing.assert_array_equal(npz["zh_L0"], stored)
    # the last command reused the tour's run folder and says where its report is
    assert "extract done" in outputs[-1] and "(reused)" in outputs[-1]
    assert f"report: {run / 'report.html'}" in outputs[-1]
    assert (run / "report.html").exists()
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "last: hidden state of the last real token that is not a special token" in report
    if not model_names:  # the name resolved by itself: the name, not its folder, is shown
        assert 'model = "minilm"' in (run / "config.toml").read_text()
        folder = str(model_folder)  # where the name resolved to: never shown as the model
        for name in ("report.md", "origin.json", "alignment.json"):
            text = (run / name).read_text(encoding="utf-8")
            assert folder not in text and folder.replace("_", "\\_") not in text, name


COMPARE_HEADING = "## Comparing models"


@pytest.mark.slow
@pytest.mark.minilm
def test_readme_compare_block_runs_as_printed(minilm_path, tmp_path, monkeypatch, capsys):
    text = README.read_text(encoding="utf-8")
    assert COMPARE_HEADING in text
    commands = tour_commands(TOUR_HEADING + text.split(COMPARE_HEADING, 1)[1])
    assert [c[1] for c in commands] == ["demo", "compare"]
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        assert argv[0] == "xlalign"
        args = argv[1:] + (["--no-progress"] if argv[1] == "demo" else [])
        rc = main(args)
        out = capsys.readouterr()
        assert rc == 0, f"`{shlex.join(argv)}` failed:\n{out.err[-2000:]}"
    doc = json.loads(Path("runs/cmp/compare.json").read_text())
    assert [r["label"] for r in doc["runs"]] == ["trained", "random-init"]
    assert Path("runs/cmp/report.html").exists()
