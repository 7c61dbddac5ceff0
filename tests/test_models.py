"""Model loading and adapters: parts found per family, facts recorded, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xlalign.errors import XlalignError
from xlalign.models.architecture import FAMILIES, resolve_adapter
from xlalign.models.device import resolve_device, resolve_dtype
from xlalign.models.fingerprints import weights_fingerprint
from xlalign.models.loading import load_model


@pytest.mark.parametrize(
    ("arch", "causal", "positions", "has_final", "adds_bos", "bos"),
    [
        ("qwen2", True, False, True, False, None),
        ("llama", True, False, True, False, None),
        ("gpt2", True, True, True, False, None),
        ("bert", False, True, False, True, "[CLS]"),
    ],
)
def test_load_model_finds_parts_and_facts(
    tiny_models, arch, causal, positions, has_final, adds_bos, bos
):
    loaded = load_model(str(tiny_models[arch]))
    assert loaded.family == arch
    assert loaded.is_causal_lm is causal
    assert type(loaded.model).__name__.endswith(("ForCausalLM", "LMHeadModel")) is causal
    assert loaded.n_layers == 4 and loaded.d_model == 32
    assert loaded.adapter.has_additive_positions is positions
    assert (loaded.adapter.final_norm is not None) is has_final
    assert loaded.adds_bos is adds_bos and loaded.bos_token == bos
    assert loaded.dtype == torch.float32 and loaded.device == torch.device("cpu")
    assert loaded.weights_fingerprint is not None
    assert all(isinstance(b, nn.Module) for b in loaded.adapter.blocks)
    assert not loaded.model.training
    # module paths are recorded from the top model, for the manifest
    paths = loaded.adapter.paths
    expected_blocks = {
        "qwen2": "model.layers",
        "llama": "model.layers",
        "gpt2": "transformer.h",
        "bert": "encoder.layer",
    }[arch]
    assert paths["blocks"] == expected_blocks


def test_generic_search_finds_the_same_parts(tiny_models, monkeypatch):
    loaded = load_model(str(tiny_models["qwen2"]))
    monkeypatch.delitem(FAMILIES, "qwen2")
    adapter = resolve_adapter(loaded.model)
    assert adapter.embedding is loaded.adapter.embedding
    assert adapter.blocks == loaded.adapter.blocks
    assert adapter.final_norm is loaded.adapter.final_norm
    assert adapter.has_additive_positions is False


def test_generic_search_sees_gpt2_positions(tiny_models, monkeypatch):
    loaded = load_model(str(tiny_models["gpt2"]))
    monkeypatch.delitem(FAMILIES, "gpt2")
    adapter = resolve_adapter(loaded.model)
    assert adapter.has_additive_positions is True
    assert adapter.final_norm is loaded.adapter.final_norm


class _NoBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed


class _NoEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])


def test_unsupported_model_names_what_is_missing():
    with pytest.raises(XlalignError, match="no list of transformer blocks found in _NoBlocks"):
        resolve_adapter(_NoBlocks())
    with pytest.raises(XlalignError, match="no input embedding module found in _NoEmbedding"):
        resolve_adapter(_NoEmbedding())


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(XlalignError, match=r"model path '.*nowhere' does not exist"):
        load_model(str(tmp_path / "nowhere"))


def test_unknown_hub_id_offline_fails_fast_with_a_hint(monkeypatch):
    import transformers

    def never(*args, **kwargs):  # transformers would retry an unreachable Hub for ~30 s
        raise AssertionError("from_pretrained must not run for an offline Hub miss")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", never)
    with pytest.raises(
        XlalignError,
        match=r"model 'no-such-org/no-such-model' is not a local folder and not in the Hugging "
        r"Face cache, and HF_HUB_OFFLINE is set.*--model path/to/folder.*--model minilm",
    ):
        load_model("no-such-org/no-such-model")


def test_hub_miss_without_offline_flag_fails_fast_too(monkeypatch):
    """Unset HF_HUB_OFFLINE: one short request (here no network, or no such repo) decides."""
    import transformers
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(
        transformers.AutoConfig, "from_pretrained",
        lambda *a, **k: (_ for _ in ()).throw(AssertionError("no retries")),
    )  # fmt: skip
    with pytest.raises(XlalignError, match=r"no-such-model-xlalign.*--model minilm"):
        load_model("no-such-org/no-such-model-xlalign")


def test_dtype_and_device_choices(tiny_models):
    loaded = load_model(str(tiny_models["llama"]), dtype="bfloat16", device="cpu")
    assert loaded.dtype == torch.bfloat16
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.bfloat16
    with pytest.raises(XlalignError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8", torch.device("cpu"))
    with pytest.raises(XlalignError, match="unknown device"):
        resolve_device("abacus")
    if not torch.cuda.is_available():
        with pytest.raises(XlalignError, match="CUDA is not available"):
            resolve_device("cuda")


def test_random_init_control_same_architecture_fresh_weights(tiny_models):
    path = str(tiny_models["gpt2"])
    trained = load_model(path)
    a = load_model(path, random_init_seed=3)
    b = load_model(path, random_init_seed=3)
    assert type(a.model) is type(trained.model) and a.n_layers == trained.n_layers
    assert a.random_init_seed == 3 and trained.random_init_seed is None
    wa = a.adapter.blocks[0].mlp.c_fc.weight
    assert torch.equal(wa, b.adapter.blocks[0].mlp.c_fc.weight)
    assert not torch.equal(wa, trained.adapter.blocks[0].mlp.c_fc.weight)


def test_weights_fingerprint_follows_the_files(tiny_models, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_models["qwen2"], copy)
    first = weights_fingerprint(copy)
    assert first == weights_fingerprint(tiny_models["qwen2"])
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert weights_fingerprint(copy) != first
    assert weights_fingerprint(tmp_path) is None


@pytest.mark.minilm
def test_minilm_adapter(minilm_path):
    loaded = load_model(str(minilm_path))
    assert loaded.family == "bert" and loaded.n_layers == 6 and loaded.d_model == 384
    assert loaded.adapter.has_additive_positions is True
    assert loaded.adapter.final_norm is None
    assert loaded.adds_bos is True and loaded.bos_token == "[CLS]" and loaded.adds_eos is True


def test_load_tokenizer_resolves_like_load_model(tiny_models):
    from transformers import AutoTokenizer

    from xlalign.models.loading import load_tokenizer

    path = str(tiny_models["qwen2"])
    text = "小明有 3 个苹果。"
    assert (
        load_tokenizer(path)(text)["input_ids"]
        == AutoTokenizer.from_pretrained(path)(text)["input_ids"]
    )
    with pytest.raises(XlalignError, match="does-not-exist"):
        load_tokenizer("./does-not-exist")
