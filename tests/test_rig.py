"""The test rig itself: tiny, offline, and shaped like the real thing."""

from __future__ import annotations

import pytest
from transformers import AutoConfig, AutoModel, AutoTokenizer

from conftest import MAX_TINY_PARAMS


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gpt2", "bert"])
def test_tiny_models_are_tiny_and_load_from_disk(tiny_models, arch):
    path = tiny_models[arch]
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == arch
    model = AutoModel.from_pretrained(path)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < MAX_TINY_PARAMS, n_params
    assert config.num_hidden_layers >= 2


def test_bpe_tokenizer_behaves_like_qwen2(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["qwen2"])
    ids = tok("计算 123 + 45 的值。")["input_ids"]
    pieces = [tok.decode([i]) for i in ids]
    # digits one per token, no BOS, nothing added at the end
    assert "1" in pieces and "2" in pieces and "3" in pieces
    assert all(not (p.strip().isdigit() and len(p.strip()) > 1) for p in pieces)
    assert tok.bos_token is None
    assert tok.decode(ids) == "计算 123 + 45 的值。"
    assert ids[0] not in tok.all_special_ids and ids[-1] not in tok.all_special_ids
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"


def test_wordpiece_adds_cls_and_sep(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["bert"])
    ids = tok("Find the value of C(5, 1).")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id


@pytest.mark.minilm
def test_minilm_loads_offline(minilm_path):
    config = AutoConfig.from_pretrained(minilm_path)
    assert config.model_type == "bert" and config.hidden_size == 384
    assert config.num_hidden_layers == 6
