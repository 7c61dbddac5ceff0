"""A named model, a GGUF file or a local folder never asks the Hub, offline flag or not.

Each test unsets Hugging Face's offline mode, makes every network connection fail and records
it, then runs a study and runs it again on the same folder (the reuse path, which loads the
tokenizer to compare its fingerprint): not one connection may be attempted.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from xlalign.cli import main


@pytest.fixture
def no_network(monkeypatch) -> list[str]:
    """Offline mode off, every connection refused and recorded."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    attempts: list[str] = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(str(address))
        raise OSError("network unreachable (test)")

    def refuse_create(address, *args, **kwargs):
        attempts.append(str(address))
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse_create)
    return attempts


def _study(model: str, data: Path, out: Path) -> list[str]:
    return ["run", "--model", model, "--data", str(data), "--langs", "zh,en", "--sites",
            "embed,L0", "--control", "none", "--no-lens", "--no-neurons", "--n-boot", "0",
            "-o", str(out), "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def data(problems, tmp_path_factory) -> Path:
    return problems.head(20).to_jsonl(tmp_path_factory.mktemp("data") / "p.jsonl")


def test_a_folder_is_reused_without_a_request(tiny_models, data, tmp_path, no_network, capsys):
    argv = _study(str(tiny_models["qwen2"]), data, tmp_path / "s")
    assert main(argv) == 0
    assert main(argv) == 0
    assert "(reused)" in capsys.readouterr().out
    assert no_network == []


def test_a_gguf_file_is_reused_without_a_request(
    tiny_models, data, tmp_path, no_network, monkeypatch, capsys
):
    from xlalign.models.testing import write_gguf

    monkeypatch.setenv("XLALIGN_CACHE", str(tmp_path / "cache"))
    gguf_file = write_gguf(tiny_models["qwen2"], tmp_path / "tiny.gguf")
    argv = _study(str(gguf_file), data, tmp_path / "s")
    assert main(argv) == 0
    assert main(argv) == 0
    assert "(reused)" in capsys.readouterr().out
    assert no_network == []


@pytest.mark.minilm
def test_a_named_model_is_reused_without_a_request(minilm_path, data, tmp_path, no_network, capsys):
    argv = _study("minilm", data, tmp_path / "s")
    assert main(argv) == 0
    assert main(argv) == 0
    assert "(reused)" in capsys.readouterr().out
    assert no_network == []


# ---------------------------------------------------------------------------------------------
# a newcomer's first commands


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from xlalign.cli import main\n"
        "for argv in (['--help'], ['run', '--help'], ['neurons', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_a_misspelt_named_model_gets_the_close_match(tmp_path, capsys, problems):
    data = problems.head(4).to_jsonl(tmp_path / "p.jsonl")
    argv = ["extract", "--model", "qwen2.5-05b", "--data", str(data), "-o", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "named models: qwen2.5-0.5b, gemma-3-270m, minilm (did you mean qwen2.5-0.5b?)" in err


def test_pool_and_pools_are_one_option(tiny_models, problems, tmp_path):
    data = problems.head(8).to_jsonl(tmp_path / "p.jsonl")
    run = tmp_path / "r"
    argv = ["extract", "--model", str(tiny_models["qwen2"]), "--data", str(data), "--sites",
            "embed", "--pools", "last,mean", "-o", str(run), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    import xlalign

    assert xlalign.load_run(run).pools == ("last", "mean")
    out = tmp_path / "a"
    argv = ["align", str(run), "--pool", "mean", "-o", str(out), "--n-boot", "0", "--no-progress"]
    assert main(argv) == 0
    import json

    records = json.loads((out / "alignment.json").read_text())["records"]
    assert {r["pool"] for r in records if r["site"] != "lexical"} == {"mean"}
