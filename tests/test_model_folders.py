"""Broken model folders: an error naming the file that is wrong or missing, not a traceback."""

from __future__ import annotations

import re
import shutil

import pytest

from xlalign.cli import main
from xlalign.errors import XlalignError
from xlalign.models.folders import check_model_folder


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_truncated_safetensors_names_the_file(tiny_models, problems_jsonl, tmp_path, capsys):
    model = _copy(tiny_models["qwen2"], tmp_path / "m")
    weights = model / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(XlalignError, match=rf"'{re.escape(str(weights))}' is truncated: "
                       rf"{size // 2} of {size} bytes"):  # fmt: skip
        check_model_folder(model)
    rc = main(["extract", "--model", str(model), "--data", str(problems_jsonl), "-o",
               str(tmp_path / "out"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and str(weights) in err and "Traceback" not in err


def test_header_cut_short_is_named(tiny_models, tmp_path):
    model = _copy(tiny_models["qwen2"], tmp_path / "m")
    with (model / "model.safetensors").open("r+b") as f:
        f.truncate(20)
    with pytest.raises(XlalignError, match=r"model\.safetensors' is truncated: its header"):
        check_model_folder(model)


def test_folder_without_tokenizer_names_what_is_missing(tiny_models, problems_jsonl, tmp_path,
                                                        capsys):  # fmt: skip
    model = _copy(tiny_models["qwen2"], tmp_path / "m")
    for p in model.glob("tokenizer*"):
        p.unlink()
    rc = main(["extract", "--model", str(model), "--data", str(problems_jsonl), "-o",
               str(tmp_path / "out"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert f"model folder '{model}' has no tokenizer files" in err and "tokenizer.json" in err
    assert "tokenises to no tokens" not in err


def test_whole_folders_pass(tiny_models):
    for path in tiny_models.values():
        check_model_folder(path)


def test_load_model_itself_names_a_broken_folder(tiny_models, tmp_path):
    """Every command loads through load_model (lens, compare, problems --model), so the check
    lives there, not only in extract; the random-init control reads no weights, so a truncated
    weights file does not stop it."""
    from xlalign.models.loading import load_model

    model = _copy(tiny_models["qwen2"], tmp_path / "m")
    weights = model / "model.safetensors"
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size // 3)
    with pytest.raises(XlalignError, match=rf"'{re.escape(str(weights))}' is truncated"):
        load_model(str(model), device="cpu")
    assert load_model(str(model), device="cpu", random_init_seed=0).model is not None
    for p in model.glob("tokenizer*"):
        p.unlink()
    with pytest.raises(XlalignError, match="has no tokenizer files"):
        load_model(str(model), device="cpu", random_init_seed=0)


def test_a_folder_without_config_is_not_taken_for_a_model(tmp_path, monkeypatch):
    """A path to a folder with no config.json is named as such (a run folder as a run); a bare
    Hub id that is also a folder here (`xlalign run --model gpt2 -o gpt2` creates ./gpt2
    first) still means the Hub's model, so offline it fails with the Hub message."""
    from xlalign.models.loading import load_model

    (tmp_path / "stuff").mkdir()
    with pytest.raises(XlalignError, match=r"is not a model folder: it has no config\.json"):
        load_model(str(tmp_path / "stuff"), device="cpu")
    run = tmp_path / "myrun"
    run.mkdir()
    (run / "manifest.json").write_text("{}")
    with pytest.raises(XlalignError, match="is an xlalign run folder, not a model"):
        load_model(str(run), device="cpu")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "gpt2").mkdir()
    with pytest.raises(XlalignError) as err:
        load_model("gpt2", device="cpu")
    assert "no tokenizer files" not in str(err.value) and "config.json" not in str(err.value)
