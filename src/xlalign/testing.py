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
    if arch in ("qwen2", "llama"):
        cls = Qwen2Config if arch == "qwen2" else LlamaConfig
        kwargs: dict[str, Any] = dict(
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
            tie_word_embeddings=True,
        )
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
