"""Big-model inference: a tiny model spread by Accelerate over CPU and disk gives the same vectors."""

from __future__ import annotations

import numpy as np
import pytest

import xlalign
from xlalign.cli import main
from xlalign.errors import XlalignError
from xlalign.models.loading import load_model

#: Bytes of weights the CPU may hold: the embedding and block 0 of the tiny Qwen2 (210 kB of
#: float32 weights in all); blocks 1-3 and the final norm go to disk and are paged in per call.
CPU_BYTES = 150_000


def test_offloaded_model_gives_the_plain_vectors(tiny_models, problems, tmp_path):
    path = str(tiny_models["qwen2"])
    plain = load_model(path, device="cpu")
    n_params = sum(p.numel() for p in plain.model.parameters())
    assert n_params * 4 > CPU_BYTES  # the limit really forces offload
    spread = load_model(
        path, device_map="auto", max_memory={"cpu": CPU_BYTES}, offload_folder=tmp_path / "off"
    )
    placed = spread.model.hf_device_map
    assert "disk" in placed.values() and placed["model.embed_tokens"] == "cpu", placed
    assert str(spread.device) == "cpu"  # inputs go where the embedding executes, not to meta

    kw = dict(sites="all", pools="last,mean,weighted", batch_size=8, progress=False)
    a = xlalign.extract(plain, problems, "zh,en", output=tmp_path / "plain", **kw)
    b = xlalign.extract(spread, problems, "zh,en", output=tmp_path / "spread", **kw)
    assert a.sites == b.sites and len(list(a.keys())) == len(list(b.keys()))
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=str(key))
    assert b.manifest["hf_device_map"]["model.layers.3"] == "disk"


def test_device_map_from_the_command_line(tiny_models, problems_jsonl, tmp_path, capsys):
    common = [
        "extract", "--model", str(tiny_models["llama"]), "--data", str(problems_jsonl),
        "--sites", "embed,L1,final", "--batch-size", "16", "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    assert main([*common, "-o", str(tmp_path / "plain")]) == 0
    spread = [
        "--device-map", "auto", "--max-memory", f"cpu={CPU_BYTES}",
        "--offload-folder", str(tmp_path / "off"), "-o", str(tmp_path / "spread"),
    ]  # fmt: skip
    assert main([*common, *spread]) == 0
    a, b = xlalign.load_run(tmp_path / "plain"), xlalign.load_run(tmp_path / "spread")
    assert b.manifest["device_map"] == "auto" and "disk" in b.manifest["hf_device_map"].values()
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=str(key))


def test_memory_flags_need_a_device_map(tiny_models):
    with pytest.raises(XlalignError, match="need --device-map"):
        load_model(str(tiny_models["qwen2"]), max_memory={"cpu": CPU_BYTES})
