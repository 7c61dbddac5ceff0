"""Reuse and resume compare what a model is (weights, tokenizer, dtype, device), not its path."""

from __future__ import annotations

import shutil

import pytest

import xlalign
from xlalign.errors import RunError
from xlalign.models.fingerprints import state_dict_fingerprint, tokenizer_fingerprint
from xlalign.models.loading import ModelOptions, load_model, wrap_model
from xlalign.models.testing import build_tiny_model, train_wordpiece
from xlalign.pipeline.reuse import ensure_run

#: The small capture every test here runs (and runs again to see it reused or refused).
ENSURE: dict = dict(
    langs=["zh", "en"],
    sites="embed,L0",
    batch_size=3,
    progress=False,
    options=ModelOptions(device="cpu"),
)


def test_model_swapped_at_same_path_is_not_reused(bpe_tokenizer, problems, tmp_path):
    """The issue's reproduction: a 4-layer model replaced by an 8-layer one at the same path."""
    model = build_tiny_model("qwen2", bpe_tokenizer, tmp_path / "m", num_hidden_layers=4)
    corpus = problems.head(6)
    out = tmp_path / "study"
    kw = dict(ENSURE)
    run, state = ensure_run(str(model), corpus, out, **kw)
    assert state == "captured" and run.n_layers == 4
    assert ensure_run(str(model), corpus, out, **kw)[1] == "reused"

    shutil.rmtree(model)
    build_tiny_model("qwen2", bpe_tokenizer, model, num_hidden_layers=8)
    with pytest.raises(RunError, match=r"the weights at .* differ"):
        ensure_run(str(model), corpus, out, **kw)

    # the same check for dtype, said by name
    shutil.rmtree(model)
    build_tiny_model("qwen2", bpe_tokenizer, model, num_hidden_layers=4)
    with pytest.raises(RunError, match=r"dtype differs \(run: float32, now: bfloat16\)"):
        ensure_run(
            str(model),
            corpus,
            out,
            **{**kw, "options": ModelOptions(device="cpu", dtype="bfloat16")},
        )


def test_tokenizer_swapped_is_not_reused_nor_resumed(bpe_tokenizer, problems, tmp_path):
    model = build_tiny_model("qwen2", bpe_tokenizer, tmp_path / "m")
    corpus = problems.head(6)
    out = tmp_path / "run"
    kw = dict(ENSURE)
    ensure_run(str(model), corpus, out, **kw)
    other = train_wordpiece([t for lang in corpus.languages for t in corpus.text(lang)])
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model / name).unlink(missing_ok=True)
    other.save_pretrained(model)
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(bpe_tokenizer)
    with pytest.raises(RunError, match="the tokenizer differs"):
        ensure_run(str(model), corpus, out, **kw)


def test_resume_refuses_other_in_memory_weights(bpe_tokenizer, problems, tmp_path):
    path = build_tiny_model("qwen2", bpe_tokenizer, tmp_path / "m")
    a = load_model(str(path), device="cpu")
    mem_a = wrap_model(a.model, a.tokenizer)
    b = load_model(str(path), device="cpu", random_init_seed=3)
    mem_b = wrap_model(b.model, b.tokenizer)
    assert state_dict_fingerprint(mem_a.model) != state_dict_fingerprint(mem_b.model)
    out = tmp_path / "run"
    corpus = problems.head(6)
    xlalign.extract(mem_a, corpus, "zh,en", sites="embed", batch_size=3, output=out,
                    progress=False)  # fmt: skip
    manifest = xlalign.load_run(out).manifest
    manifest["complete"] = False
    (out / "manifest.json").write_text(__import__("json").dumps(manifest))
    with pytest.raises(RunError, match=r"model_key differs \(the weights' fingerprint; run: "):
        xlalign.extract(mem_b, corpus, "zh,en", sites="embed", batch_size=3, output=out,
                        resume=True, progress=False)  # fmt: skip
