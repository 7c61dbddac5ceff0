"""Behaviour that had no test: XLM-R capture, refusals, bad run folders, loaders, resume, Ctrl-C.

Store error messages are matched on the file or field they name, not on their wording.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer, T5Config, XLMRobertaConfig

import xlalign
from faults import Crash, crash_after
from slowcli import STOP_AFTER_CLI
from xlalign.cli import main
from xlalign.data.corpus import ParallelCorpus, load_hf_dataset
from xlalign.errors import XlalignError
from xlalign.models.testing import build_tiny_model
from xlalign.store.run import load_run
from xlalign.store.synthetic import write_synthetic_run


@pytest.fixture(scope="module")
def small(problems: ParallelCorpus) -> ParallelCorpus:
    return problems.head(16)


# ---------------------------------------------------------------------------------------------
# a RoBERTa/XLM-R-style encoder: position ids start at pad_token_id + 1


@pytest.fixture(scope="module")
def xlmr_path(wordpiece_tokenizer, tmp_path_factory) -> Path:
    tok = wordpiece_tokenizer
    config = XLMRobertaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=130, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModel.from_config(config)
    assert sum(p.numel() for p in model.parameters()) < 200_000  # tiny
    path = tmp_path_factory.mktemp("xlmr") / "xlmr"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_xlmr_capture_equals_plain_transformers(xlmr_path, small, tmp_path, padding_side):
    small = small.head(9)  # batches of 4: padding in every batch, a ragged tail
    run = xlalign.extract(
        str(xlmr_path), small, "zh,en", sites="all", pools=("last", "mean", "tokens"),
        batch_size=4, padding_side=padding_side, output=tmp_path / "run", progress=False,
    )  # fmt: skip
    assert list(run.sites) == ["embed", "L0", "L1"]
    model = AutoModel.from_pretrained(xlmr_path).eval()
    tok = AutoTokenizer.from_pretrained(xlmr_path)
    # the position offset is real: position ids 0.. instead of pad+1.. change the embedding
    enc = tok(small.text("en")[0], return_tensors="pt")
    with torch.no_grad():
        right = model(**enc, output_hidden_states=True).hidden_states[0]
        t = enc["input_ids"].shape[1]
        wrong = model(
            **enc, position_ids=torch.arange(t)[None], output_hidden_states=True
        ).hidden_states[0]
    assert not torch.allclose(right, wrong, atol=1e-4)
    for lang in ("zh", "en"):
        for i, text in enumerate(small.text(lang)):
            enc = tok(text, return_tensors="pt", return_special_tokens_mask=True)
            special = enc.pop("special_tokens_mask")[0].numpy().astype(bool)
            with torch.no_grad():
                hs = model(**enc, output_hidden_states=True).hidden_states
            for k, site in enumerate(run.sites):
                h = hs[k][0].double().numpy()
                got = run.token_vectors(lang, site)[i]
                np.testing.assert_allclose(got, h, rtol=1e-4, atol=1e-5, err_msg=f"{site} {i}")
                # pool last: the last token that is not special (XLM-R appends </s>)
                last = np.flatnonzero(~special)[-1]
                assert special[-1] and last == len(special) - 2
                np.testing.assert_allclose(run.array(lang, site, "last")[i], h[last], rtol=1e-4,
                                           atol=1e-5)  # fmt: skip
                np.testing.assert_allclose(
                    run.array(lang, site, "mean")[i], h[~special].mean(axis=0), rtol=1e-4, atol=1e-5
                )


# ---------------------------------------------------------------------------------------------
# refusals


def test_encoder_decoder_is_refused_by_name(small, wordpiece_tokenizer, tmp_path, capsys):
    folder = tmp_path / "t5"
    T5Config(vocab_size=64, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8).save_pretrained(
        folder
    )
    wordpiece_tokenizer.save_pretrained(folder)  # a complete folder: the architecture is refused
    with pytest.raises(XlalignError, match=r"encoder-decoder model \(t5\)"):
        xlalign.extract(str(folder), small, "zh,en", output=tmp_path / "run", progress=False)
    data = small.to_jsonl(tmp_path / "d.jsonl")
    code = main(["extract", "--model", str(folder), "--data", str(data), "-o", str(tmp_path / "r")])
    assert code == 2
    assert "encoder-decoder" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() or not (tmp_path / "run" / "arrays").exists()


def test_prompt_longer_than_the_models_positions_names_prompt_and_limit(
    bpe_tokenizer, small, tmp_path
):
    path = build_tiny_model("gpt2", bpe_tokenizer, tmp_path / "gpt2-8", n_positions=8)
    lengths = [len(bpe_tokenizer(t)["input_ids"]) for t in small.text("zh")]
    assert max(lengths) > 8  # otherwise the test tests nothing
    longest = small.ids[int(np.argmax(lengths))]
    with pytest.raises(
        XlalignError, match=rf"prompt id {longest} \(zh\) has {max(lengths)} tokens; .* at most 8"
    ):
        xlalign.extract(str(path), small, "zh,en", output=tmp_path / "run", progress=False)


# ---------------------------------------------------------------------------------------------
# bad run folders


@pytest.fixture
def synthetic(tmp_path) -> Path:
    return write_synthetic_run(tmp_path / "run", 12, 4, n_sites=2)


def _edit_manifest(path: Path, text: str) -> None:
    (path / "manifest.json").write_text(text, encoding="utf-8")


def test_corrupt_manifest_names_the_file(synthetic):
    _edit_manifest(synthetic, '{"format": "xlalign.run", "complete": tr')
    with pytest.raises(XlalignError, match=r"manifest\.json"):
        load_run(synthetic)


def test_foreign_manifest_names_the_file(synthetic):
    _edit_manifest(synthetic, json.dumps({"format": "something-else", "complete": True}))
    with pytest.raises(XlalignError, match=r"manifest\.json"):
        load_run(synthetic)


def test_newer_format_version_names_the_version(synthetic):
    manifest = json.loads((synthetic / "manifest.json").read_text())
    manifest["format_version"] = 99
    _edit_manifest(synthetic, json.dumps(manifest))
    with pytest.raises(XlalignError, match=r"manifest\.json.*99"):
        load_run(synthetic)
    assert main(["align", str(synthetic), "-o", str(synthetic / "al"), "--no-progress"]) == 2


@pytest.mark.parametrize(
    "text",
    [
        "[1, 2]",
        '{"format": "xlalign.run", "format_version": "x"}',
        '{"format": "xlalign.run", "format_version": 1, "pool_semantics": "2"}',
    ],
)
def test_manifest_of_the_wrong_shape_names_the_file(synthetic, text):
    _edit_manifest(synthetic, text)
    with pytest.raises(XlalignError, match=r"manifest\.json"):
        load_run(synthetic)


@pytest.fixture
def crashed(tiny_models, small, tmp_path, monkeypatch) -> tuple[Path, dict]:
    """An extraction that died after 3 of its 8 batches."""
    kwargs = dict(sites="embed,L0", pools="last,mean", batch_size=4, progress=False)
    out = tmp_path / "part"
    with monkeypatch.context() as m:
        crash_after(m, 3)
        with pytest.raises(Crash):
            xlalign.extract(str(tiny_models["qwen2"]), small, "zh,en", output=out, **kwargs)
    return out, kwargs


def test_resume_with_a_missing_array_file_names_it(crashed, tiny_models, small):
    out, kwargs = crashed
    (out / "arrays" / "en" / "L0" / "mean.npy").unlink()
    with pytest.raises(XlalignError, match=r"en.L0.mean\.npy"):
        xlalign.extract(
            str(tiny_models["qwen2"]), small, "zh,en", output=out, resume=True, **kwargs
        )


def test_resume_with_a_wrongly_shaped_array_file_names_it(crashed, tiny_models, small):
    out, kwargs = crashed
    np.save(out / "arrays" / "zh" / "embed" / "last.npy", np.zeros((3, 32), dtype=np.float32))
    with pytest.raises(XlalignError, match=r"zh.embed.last\.npy.*\(3, 32\)"):
        xlalign.extract(
            str(tiny_models["qwen2"]), small, "zh,en", output=out, resume=True, **kwargs
        )


@pytest.mark.parametrize("name", ["..", ".", "a/b", "a\\b"])
def test_a_language_named_like_a_path_is_refused(tiny_models, small, tmp_path, name):
    corpus = ParallelCorpus(small.ids, {name: small.text("zh"), "en": small.text("en")})
    out = tmp_path / "deep" / "run"
    with pytest.raises(XlalignError, match="cannot be used as a folder name"):
        xlalign.extract(str(tiny_models["qwen2"]), corpus, None, output=out, progress=False)
    # refused before anything was written, inside or outside the run folder
    assert {p.name for p in tmp_path.iterdir()} <= {"deep"}
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


# ---------------------------------------------------------------------------------------------
# loaders and the whole study


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="needs 'datasets'")
def test_datasets_loader_reads_a_local_dataset(small, tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    small.to_jsonl(folder / "train.jsonl")
    corpus = load_hf_dataset(str(folder), "train", ["zh", "en"])
    assert corpus.text("zh") == small.text("zh") and corpus.text("en") == small.text("en")
    assert list(corpus.ids) == list(small.ids)
    assert [int(c) for c in corpus.meta["category"]] == list(small.meta["category"])


def test_run_with_data_file_studies_that_file(tiny_models, small, tmp_path, capsys):
    data = small.to_jsonl(tmp_path / "corpus.jsonl")
    out = tmp_path / "study"
    code = main(
        ["run", "--model", str(tiny_models["qwen2"]), "--data", str(data), "--langs", "zh,en",
         "-o", str(out), "--sites", "embed,L0", "--n-boot", "0", "--control", "none",
         "--metrics", "z,p1", "--no-progress"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    run = load_run(out)
    assert list(run.ids) == list(small.ids) and run.n_rows == len(small)
    doc = json.loads((out / "alignment.json").read_text())
    rec = next(r for r in doc["records"] if (r["site"], r["pool"], r["metric"]) ==
               ("L0", "last", "p1_xy"))  # fmt: skip
    # P@1 from the stored arrays, by brute force
    x, y = run.array("zh", "L0", "last"), run.array("en", "L0", "last")
    xu = x / np.linalg.norm(x, axis=1, keepdims=True)
    yu = y / np.linalg.norm(y, axis=1, keepdims=True)
    s = xu.astype(np.float64) @ yu.astype(np.float64).T
    hit = [all(s[i, i] > s[i, j] + 1e-10 for j in range(len(s)) if j != i) for i in range(len(s))]
    assert rec["value"] == pytest.approx(np.mean(hit))
    assert (out / "origin.json").exists()


def test_an_incomplete_study_with_the_studys_pools_resumes(tiny_models, small, tmp_path):
    from xlalign.pipeline.config import StudyConfig
    from xlalign.pipeline.reuse import STUDY_POOLS
    from xlalign.pipeline.study import run_study

    out = tmp_path / "study"
    kwargs = dict(sites="embed,L0", pools=STUDY_POOLS, batch_size=4, progress=False)
    path = str(tiny_models["qwen2"])
    whole = xlalign.extract(path, small, "zh,en", output=tmp_path / "whole", **kwargs)
    mp = pytest.MonkeyPatch()
    try:
        crash_after(mp, 3)
        with pytest.raises(Crash):
            xlalign.extract(path, small, "zh,en", output=out, **kwargs)
    finally:
        mp.undo()
    assert not load_run(out, allow_incomplete=True).complete
    data = small.to_jsonl(tmp_path / "corpus.jsonl")
    cfg = StudyConfig(
        model=path, data=str(data), langs=("zh", "en"), output=str(out), sites="embed,L0",
        batch_size=4, n_boot=0, control="none",
    )  # fmt: skip
    said: list[str] = []
    run_study(cfg, command=["test"], progress=False, say=said.append)
    assert any("extract done" in line and "(resumed)" in line for line in said), said
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["stages"]["extract"] == "resumed"
    run = load_run(out)
    assert run.complete and len(run.manifest["sessions"]) == 2
    for key in whole:
        np.testing.assert_array_equal(run[key], whole[key], err_msg=str(key))
    assert (out / "alignment.json").exists() and (out / "origin.json").exists()


# ---------------------------------------------------------------------------------------------
# Ctrl-C


@pytest.mark.slow
def test_ctrl_c_exits_130_and_leaves_a_resumable_run(tiny_models, small, tmp_path):
    data = small.to_jsonl(tmp_path / "data.jsonl")
    script = tmp_path / "slow_cli.py"
    script.write_text(STOP_AFTER_CLI)  # waits after its 2nd batch until interrupted: no race
    out = tmp_path / "run"
    args = ["extract", "--model", str(tiny_models["qwen2"]), "--data", str(data), "--langs",
            "zh,en", "--sites", "embed,L0", "--batch-size", "2", "--no-progress"]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               XLALIGN_TEST_STOP_AFTER="2")  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    # a suite started in the background (`make check &`) ignores SIGINT, and a child inherits
    # that: give the child the default disposition, as a terminal's Ctrl-C would find it
    proc = subprocess.Popen(
        [sys.executable, str(script), *args, "-o", str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 600  # a hang guard only
    try:
        while time.monotonic() < deadline:
            try:
                done = json.loads((out / "progress.json").read_text())["done"]
                if sum(len(v) for v in done.values()) >= 2:
                    break
            except (OSError, json.JSONDecodeError, KeyError):
                pass
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"finished before it could be interrupted: {proc.stderr}"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err.strip().splitlines()[-1]
    assert "Traceback" not in err
    with pytest.raises(XlalignError, match="incomplete"):
        load_run(out)
    resumed = xlalign.extract(
        str(tiny_models["qwen2"]), small, "zh,en", sites="embed,L0", batch_size=2,
        output=out, resume=True, progress=False,
    )  # fmt: skip
    assert resumed.complete
