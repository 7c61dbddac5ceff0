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
