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


def _flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_middle_byte_of_a_large_weight_file_changes_the_fingerprint(tmp_path, monkeypatch):
    """Issue 27, item 1: one middle layer of a >2 MiB safetensors file edited in place. The
    sampled fingerprint runs recorded before could not see it; the full one does, and a
    changed config.json too. Hashes are cached by path, size, mtime and inode."""
    from xlalign.models.fingerprints import (
        cached_file_sha256,
        sampled_weights_fingerprint,
        weights_fingerprint,
    )
    from xlalign.models.gguf import file_sha256

    monkeypatch.setenv("XLALIGN_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "m"
    folder.mkdir()
    weights = folder / "model.safetensors"
    weights.write_bytes(bytes(range(256)) * (4 << 12))  # 4 MiB
    (folder / "config.json").write_text('{"rms_norm_eps": 1e-06}')
    full, sampled = weights_fingerprint(folder), sampled_weights_fingerprint(folder)
    _flip_middle_byte(weights)
    assert sampled_weights_fingerprint(folder) == sampled  # the original failure
    assert weights_fingerprint(folder) != full
    edited = weights_fingerprint(folder)
    (folder / "config.json").write_text('{"rms_norm_eps": 1e-05}')
    assert weights_fingerprint(folder) != edited
    # the cache: the same stat gives the cached hash; a new mtime is hashed again
    assert cached_file_sha256(weights) == file_sha256(weights)
    st = weights.stat()
    _flip_middle_byte(weights)  # same size; same inode; mtime put back below
    import os

    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    if weights.stat().st_ino == st.st_ino:
        assert cached_file_sha256(weights) != file_sha256(weights)  # stale: the stat matched
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cached_file_sha256(weights) == file_sha256(weights)


def test_an_edited_config_is_not_reused_and_old_sampled_runs_still_are(
    bpe_tokenizer, problems, tmp_path, monkeypatch
):
    import json

    from xlalign.models.fingerprints import sampled_weights_fingerprint

    monkeypatch.setenv("XLALIGN_CACHE", str(tmp_path / "cache"))
    model = build_tiny_model("qwen2", bpe_tokenizer, tmp_path / "m")
    corpus = problems.head(6)
    out = tmp_path / "run"
    kw = dict(ENSURE)
    ensure_run(str(model), corpus, out, **kw)
    # a run made before full hashing recorded the sampled fingerprint: still reused
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["weights_fingerprint"] = sampled_weights_fingerprint(model)
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert ensure_run(str(model), corpus, out, **kw)[1] == "reused"
    manifest["weights_fingerprint"] = xlalign.load_run(out).manifest["model_key"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    config = json.loads((model / "config.json").read_text())
    config["rms_norm_eps"] = config.get("rms_norm_eps", 1e-6) * 10
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunError, match=r"the weights at .* differ"):
        ensure_run(str(model), corpus, out, **kw)


def test_a_relative_model_path_means_the_run_s_model_from_anywhere(
    bpe_tokenizer, problems, tmp_path, monkeypatch, capsys
):
    """Issue 27, item 6: from another working directory, 'origin RUN --control random-init'
    built its control from whatever model sat at the run's relative path there. The manifest
    records the model's absolute path; a moved model is said, and lens --model points at it
    (checked by fingerprint)."""
    import json

    from xlalign.cli import main

    here, there = tmp_path / "here", tmp_path / "there"
    build_tiny_model("qwen2", bpe_tokenizer, here / "m")  # hidden size 32
    build_tiny_model("qwen2", bpe_tokenizer, there / "m", hidden_size=64, seed=1)
    data = tmp_path / "c.jsonl"
    problems.head(12).to_jsonl(data)
    monkeypatch.chdir(here)
    run = tmp_path / "run"
    argv = ["extract", "--model", "m", "--data", str(data), "-o", str(run), "--sites", "embed,L0",
            "--pool", "last,mean", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model"] == "m" and manifest["model_path"] == str((here / "m").resolve())
    monkeypatch.chdir(there)  # another model sits at the relative path 'm' here
    assert main(["origin", str(run), "--control", "random-init", "--no-progress"]) == 0
    control = xlalign.load_run(run / "control-random-init")
    assert control.d_model == 32  # the run's model, not the one at ./m
    # the model moves: the lens says so, and --model points at the new place
    (here / "m").rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["lens", str(run), "--no-control", "--n-boot", "5", "--no-progress"]) == 2
    assert "is not there any more (moved or deleted); pass --model" in capsys.readouterr().err
    argv = ["lens", str(run), "--no-control", "--n-boot", "5", "--no-progress"]
    assert main([*argv, "--model", str(tmp_path / "moved")]) == 0
    assert main([*argv, "--model", str(there / "m")]) == 2  # another model: refused
