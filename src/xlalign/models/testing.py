"""Offline builders for tests and benchmarks: trained tokenizers and tiny random models.

Everything here runs with no network in seconds. Models are built from explicit configs through
transformers' own classes and saved to a folder, so they load through ``from_pretrained(path)``
exactly like a user's model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

#: Qwen2's pre-tokenisation pattern: digits are split one per token (``\p{N}``), a space before
#: a word attaches to it, a space before a digit stays on its own.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

#: Tiny configs: a few layers of width 32. Keys are the architectures tests cover.
TINY_ARCHS = ("qwen2", "llama", "gpt2", "bert")


def train_byte_bpe(texts: Iterable[str], vocab_size: int = 800) -> Any:
    """A Qwen2-style byte-level BPE tokenizer (no BOS, pad = eos = ``<|endoftext|>``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN2_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN2_SPECIALS[1:]),
        padding_side="right",
    )


def train_wordpiece(texts: Iterable[str], vocab_size: int = 800) -> Any:
    """A BERT-style WordPiece tokenizer that wraps every text in ``[CLS] ... [SEP]``."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(BERT_SPECIALS), show_progress=False
    )
    tok.train_from_iterator(list(texts), trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def tiny_config(arch: str, tokenizer: Any, **overrides: Any) -> Any:
    """A transformers config for ``arch`` sized to ``tokenizer``'s vocabulary."""
    from transformers import BertConfig, GPT2Config, LlamaConfig, Qwen2Config

    cls: type[Any]
    vocab = len(tokenizer)
    pad = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else pad
    decoder: dict[str, Any] = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=pad,
        eos_token_id=eos,
        bos_token_id=None,
    )
    if arch in ("qwen2", "llama"):
        cls = Qwen2Config if arch == "qwen2" else LlamaConfig
        kwargs: dict[str, Any] = dict(decoder, tie_word_embeddings=True)
    elif arch == "gemma3":  # not in TINY_ARCHS: the neuron study's tests build it themselves
        from transformers import Gemma3TextConfig

        cls = Gemma3TextConfig
        kwargs = dict(decoder, head_dim=8)
    elif arch == "gpt2":
        cls = GPT2Config
        kwargs = dict(
            vocab_size=vocab,
            n_embd=32,
            n_layer=4,
            n_head=4,
            n_positions=256,
            pad_token_id=pad,
            eos_token_id=eos,
            bos_token_id=eos,
        )
    elif arch == "bert":
        cls = BertConfig
        kwargs = dict(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=256,
            pad_token_id=pad,
        )
    else:
        raise ValueError(f"unknown tiny architecture '{arch}'; known: {', '.join(TINY_ARCHS)}")
    kwargs.update(overrides)
    return cls(**kwargs)


def build_tiny_model(
    arch: str, tokenizer: Any, path: str | Path, seed: int = 0, **overrides: Any
) -> Path:
    """Build a random ``arch`` model, save it with ``tokenizer`` to ``path``; returns ``path``."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    config = tiny_config(arch, tokenizer, **overrides)
    torch.manual_seed(seed)
    auto = AutoModel if arch == "bert" else AutoModelForCausalLM
    model = auto.from_config(config)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def corpus_texts(corpora: Sequence[Any]) -> list[str]:
    """All texts of all languages of the given corpora, for training a tokenizer."""
    return [t for c in corpora for lang in c.languages for t in c.text(lang)]


def write_gguf(folder: str | Path, path: str | Path, tensor_type: str = "F32") -> Path:
    """Write the tiny Qwen2 model saved in ``folder`` as a GGUF file, as llama.cpp lays it out.

    ``tensor_type`` is ``F32``, ``F16`` or a type ``gguf.quants.quantize`` can write
    (``Q8_0``...); norms and biases stay F32, as llama.cpp keeps them. The tokenizer goes in
    as ``tokenizer.ggml.*`` (byte-level BPE: tokens, merges). Returns ``path``.
    """
    import json

    import gguf  # type: ignore[import-untyped]
    import numpy as np
    from transformers import AutoConfig, AutoModelForCausalLM

    folder, path = Path(folder), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(folder)
    if config.model_type != "qwen2":
        raise ValueError(f"write_gguf writes qwen2 models, got {config.model_type}")
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    arch = "qwen2"
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("xlalign tiny qwen2")
    w.add_context_length(config.max_position_embeddings)
    w.add_block_count(config.num_hidden_layers)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    qtype = gguf.GGMLQuantizationType[tensor_type]
    file_types = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16}
    file_type = file_types.get(tensor_type)
    w.add_file_type(gguf.LlamaFileType[f"MOSTLY_{tensor_type}"] if file_type is None else file_type)
    vocab = tok["model"]["vocab"]
    added = {a["content"]: a["id"] for a in tok.get("added_tokens", [])}
    by_id = {i: t for t, i in {**vocab, **added}.items()}
    tokens = [by_id[i] for i in range(config.vocab_size)]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(
        [gguf.TokenType.CONTROL if t in added else gguf.TokenType.NORMAL for t in tokens]
    )
    merges = tok["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_eos_token_id(config.eos_token_id)
    w.add_pad_token_id(config.pad_token_id)
    w.add_add_bos_token(False)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no GGUF name for {hf_name}")
        data = tensor.detach().float().numpy()
        if data.ndim == 1 or tensor_type == "F32":
            w.add_tensor(name, data.astype(np.float32))
        elif tensor_type == "F16":
            w.add_tensor(name, data.astype(np.float16))
        else:
            q = gguf.quants.quantize(data, qtype)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
