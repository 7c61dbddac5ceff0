"""Steering: the hook against edited hidden states, generation against plain ``generate``,
the language rule on known strings, and bad input as one clear line.

References never go through xlalign's steering code: the edited forward feeds block ``l``'s
clean output plus the vector into block ``l + 1`` through a pre-hook (or into the final norm
for the last block), and plain generation is transformers' ``generate`` on one prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from xlalign.capture.engine import extract
from xlalign.cli import main
from xlalign.data.corpus import ParallelCorpus
from xlalign.errors import XlalignError
from xlalign.models.loading import load_model
from xlalign.store.run import load_run
from xlalign.studies.steer import (
    SteerConfig,
    diffmean,
    generate,
    keeps_numbers,
    language_of,
    numbers_of,
    script_of,
    split_rows,
    steer_study,
    steering,
)


@pytest.fixture(scope="module")
def qwen(tiny_models):
    return load_model(str(tiny_models["qwen2"]), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def steer_run(tiny_models, problems: ParallelCorpus, tmp_path_factory) -> Path:
    """A run of the tiny Qwen2 on 40 problems: every site, last and mean pools."""
    out = tmp_path_factory.mktemp("steer") / "run"
    extract(
        str(tiny_models["qwen2"]), problems.head(40), ["zh", "en"], sites="all",
        pools=("last", "mean"), batch_size=16, output=out, progress=False, device="cpu",
    )  # fmt: skip
    return out


def _ids(qwen, texts):
    return [qwen.tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]


# ---------------------------------------------------------------------------------------------
# the hook


@pytest.mark.parametrize("layer", [0, 1, -1])
def test_hook_adds_exactly_the_vector(qwen, layer):
    """Steering block ``l`` gives the logits of a forward whose block ``l + 1`` (or final norm)
    receives the clean output of block ``l`` plus the vector; and block ``l``'s output seen by a
    later hook is the clean one plus the vector, exactly."""
    model, adapter = qwen.model, qwen.adapter
    layer = layer % len(adapter.blocks)  # -1: the last block, whose output feeds the final norm
    ids = torch.tensor([_ids(qwen, ["Calculate 12 + 34."])[0]])
    v = torch.randn(qwen.d_model, generator=torch.Generator().manual_seed(1)) * 3.0
    seen = {}

    def grab(name):
        def hook(module, args, out):
            seen[name] = (out if isinstance(out, torch.Tensor) else out[0]).detach().clone()

        return hook

    with torch.inference_mode():
        h = adapter.blocks[layer].register_forward_hook(grab("clean"))
        model(input_ids=ids)
        h.remove()
        with steering(adapter, {layer: v.numpy()}):
            h = adapter.blocks[layer].register_forward_hook(grab("steered"))
            steered = model(input_ids=ids).logits
            h.remove()
        edited = seen["clean"] + v

        nxt = adapter.blocks[layer + 1] if layer + 1 < len(adapter.blocks) else adapter.final_norm
        h = nxt.register_forward_pre_hook(
            lambda m, a, k: ((edited, *a[1:]), k) if a else (a, {**k, "hidden_states": edited}),
            with_kwargs=True,
        )
        reference = model(input_ids=ids).logits
        h.remove()
    assert torch.equal(seen["steered"], seen["clean"] + v)
    torch.testing.assert_close(steered, reference, rtol=0, atol=1e-5)
    assert not torch.allclose(steered, model(input_ids=ids).logits, atol=1e-3)  # it did steer


def test_alpha_zero_reproduces_plain_generate(qwen):
    """Zero vectors at two blocks, batched with left padding: token for token ``generate``."""
    prompts = _ids(qwen, ["Calculate 12 + 34.", "求组合数 C(5, 1) 的值。", "What is 7?"])
    out = generate(
        qwen, prompts, 8, layers=[0, 1, 0], vectors=np.zeros((3, qwen.d_model)), batch_size=3
    )
    eos = qwen.tokenizer.eos_token_id
    for p, got in zip(prompts, out, strict=True):
        with torch.inference_mode():
            ref = qwen.model.generate(
                input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                max_new_tokens=8, do_sample=False, pad_token_id=eos, eos_token_id=eos,
            )[0, len(p) :].tolist()  # fmt: skip
        cut = ref.index(eos) if eos in ref else len(ref)
        assert got == ref[:cut]
        assert len(got) > 0


def test_steered_generation_equals_full_forwards(qwen):
    """With the KV cache the vector reaches every position: the same tokens as greedy decoding
    by full forwards of the whole sequence, each with the vector added everywhere."""
    p = _ids(qwen, ["Find the value of C(5, 1)."])[0]
    v = np.random.default_rng(3).standard_normal(qwen.d_model) * 4
    got = generate(qwen, [p], 6, layers=[1], vectors=v[None], batch_size=1)[0]
    seq, ref = list(p), []
    eos = qwen.tokenizer.eos_token_id
    with torch.inference_mode(), steering(qwen.adapter, {1: v}):
        for _ in range(6):
            t = int(qwen.model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            if t == eos:
                break
            seq.append(t)
            ref.append(t)
    assert got == ref and len(ref) > 0
    assert got != generate(qwen, [p], 6, batch_size=1)[0]


def test_batched_equals_one_prompt_steered(qwen):
    """Different lengths (left padding) and different vectors per row: one batch = one by one."""
    prompts = _ids(qwen, ["Calculate 12 + 34.", "一个长方形的长为 3,宽为 4,求其面积。", "Hi"])
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((3, qwen.d_model)) * 2
    layers = [1, 0, -1]
    batched = generate(qwen, prompts, 6, layers=layers, vectors=vecs, batch_size=3)
    alone = [
        generate(qwen, [p], 6, layers=[layers[i]], vectors=vecs[i : i + 1], batch_size=1)[0]
        for i, p in enumerate(prompts)
    ]
    assert batched == alone
    plain = generate(qwen, prompts, 6, batch_size=3)
    assert batched[0] != plain[0] or batched[1] != plain[1]  # the vectors changed something


# ---------------------------------------------------------------------------------------------
# the language rule


@pytest.mark.parametrize(
    ("text", "script", "lang"),
    [
        (" To find the remainder when 6719 is divided by 15", "latin", "en"),
        ("让我们逐步解决这个问题。", "cjk", "zh"),
        ("计算 the value", "mixed", "mixed"),  # 2 cjk units, 2 words: no majority
        ("计算 the value 的值", "cjk", "zh"),  # 4 of 6 units cjk
        ("Find 计 of C(5, 1)", "latin", "en"),  # 2 words of 3 units
        ("123 + 456 = 579", "none", "none"),
        ("", "none", "none"),
        ("Привет мир", "other", "other"),
    ],
)
def test_language_rule(text, script, lang):
    assert script_of(text) == script
    assert language_of(text, ("en", "zh")) == lang


def test_numbers_kept():
    nums = numbers_of("What is the remainder when 6719 is divided by 15?")
    assert nums == ["6719", "15"]
    assert keeps_numbers(nums, "6719 除以 15 的余数")
    assert not keeps_numbers(nums, "67190 and 15")  # whole numbers only
    assert keeps_numbers([], "anything")
    assert not keeps_numbers(nums, "6719 only") and keeps_numbers(nums, "6719 only", every=False)


def test_diffmean_and_split(steer_run):
    run = load_run(steer_run)
    rows, held = split_rows(run.n_rows, 0.5, 0)
    assert len(rows) + len(held) == run.n_rows and not set(rows) & set(held)
    en = np.asarray(run["en", "L1", "mean"], dtype=np.float64)
    zh = np.asarray(run["zh", "L1", "mean"], dtype=np.float64)
    expected = sum(zh[i] - en[i] for i in rows) / len(rows)
    np.testing.assert_allclose(diffmean(run, "en", "zh", "L1", "mean", rows), expected, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# the study


def test_study_records_and_controls(steer_run, qwen):
    cfg = SteerConfig(layers=(0, 1), alphas=(0.0, 2.0), max_prompts=6, max_new_tokens=4, n_boot=50)
    doc = steer_study(load_run(steer_run), cfg, loaded=qwen)
    recs = doc["records"]
    assert recs[0]["layer"] is None and recs[0]["alpha"] == 0.0
    assert [(r["layer"], r["alpha"]) for r in recs[1:]] == [(0, 2.0), (1, 2.0)]
    for r in recs:
        assert r["n"] == 6
        for k in ("success", "stay"):
            s = r[k]
            assert s["low"] <= s["value"] <= s["high"]
            assert s["value"] * 6 == pytest.approx(round(s["value"] * 6))
        assert r["success"]["value"] + r["stay"]["value"] <= 1 + 1e-12
    for r in recs[1:]:
        assert r["control"]["n"] == 6 and r["verdict"] in ("beyond-control", "matched-by-control")
        scale = next(d["scale"] for d in doc["directions"] if d["layer"] == r["layer"])
        assert r["added_norm"] == pytest.approx(2.0 * scale)
    assert doc["rows"]["direction"] + doc["rows"]["heldout"] == 40
    assert set(doc["rows"]["prompt_ids"]).isdisjoint(
        {load_run(steer_run).ids[i] for i in split_rows(40, 0.5, 0)[0]}
    )


def test_cli_writes_json_figure_and_escaped_report(steer_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(steer_run, run)
    code = main([
        "steer", str(run), "--from", "zh", "--to", "en", "--layers", "1", "--alphas", "1",
        "--max-prompts", "4", "--max-new-tokens", "3", "--n-boot", "20", "--no-progress",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    doc = json.loads((run / "steer.json").read_text())
    assert doc["source"] == "zh" and doc["records"][1]["control"]["seeds"] == [0, 1, 2]
    assert (run / "fig_steer.png").stat().st_size > 0
    html = (run / "steer.html").read_text()
    assert "<script" not in html
    # the prompts hold no markup; an example with one must come out escaped
    from xlalign.report.steer import write_steer_report

    doc["examples"][0]["steered"] = "<b>x</b>"
    write_steer_report(tmp_path, doc, "t")
    page = (tmp_path / "steer.html").read_text()
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page


def test_study_report_has_the_section(steer_run, qwen, tmp_path):
    from xlalign.report import ReportInputs, build_report

    cfg = SteerConfig(layers=(1,), alphas=(1.0,), max_prompts=3, max_new_tokens=2, n_boot=10)
    doc = steer_study(load_run(steer_run), cfg, loaded=qwen)
    paths = build_report(tmp_path, ReportInputs(title="t", steer=doc))
    page = paths["html"].read_text()
    assert "Steering the output language" in page and "steer" in paths
    assert "L1" in page and doc["examples"][0]["prompt"].split()[0] in page


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "xx", "--to", "zh"], "--from 'xx'"),
        (["--from", "en", "--to", "fr"], "both written in latin"),
        (["--from", "en", "--to", "ja"], "--to ja: not in the run"),
        (["--from", "en", "--to", "zh", "--layers", "9"], "block 9 out of range"),
        (["--from", "en", "--to", "zh", "--layers", "a"], "--layers takes integers"),
        (["--from", "en", "--to", "zh", "--alphas", "0"], "--alphas needs one value above 0"),
        (["--from", "en", "--to", "zh", "--pool", "max"], "--pool must be mean or last"),
    ],
)
def test_bad_flags_one_line(steer_run, capsys, args, message):
    code = main(["steer", str(steer_run), *args, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_encoder_run_refused(tiny_models, problems, tmp_path, capsys):
    out = tmp_path / "bert"
    extract(
        str(tiny_models["bert"]), problems.head(8), ["zh", "en"], sites="all", pools="mean",
        batch_size=8, output=out, progress=False, device="cpu",
    )  # fmt: skip
    code = main(["steer", str(out), "--from", "en", "--to", "zh", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "not a causal language model" in err
    assert len(err.strip().splitlines()) == 1


def test_config_errors_name_flags():
    with pytest.raises(XlalignError, match="--max-new-tokens"):
        SteerConfig(max_new_tokens=0)
    with pytest.raises(XlalignError, match="--heldout"):
        SteerConfig(heldout=1.0)


# ---------------------------------------------------------------------------------------------
# the stage of xlalign run


def test_run_stage_when_asked_and_reused(tiny_models, tmp_path):
    from xlalign.pipeline.config import StudyConfig
    from xlalign.pipeline.study import run_study

    out = tmp_path / "study"
    cfg = StudyConfig(
        model=str(tiny_models["qwen2"]), problems=15, langs=("zh", "en"), output=str(out),
        n_boot=20, control="none", lens=False, neurons=False, steer="en:zh",
    )  # fmt: skip
    result = run_study(cfg, command=["test"], progress=False, say=lambda _m: None)
    doc = json.loads((out / "steer.json").read_text())
    assert doc["source"] == "en" and doc["target"] == "zh" and doc["layers"] == [0]
    assert doc["rows"]["generated"] == 8  # round(15 * 0.5) held out, all under --max-prompts
    assert any(line.startswith("steer: ") for line in result["neurons"])
    assert "Steering the output language" in (out / "report.html").read_text()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["stages"]["steer"] == "computed"
    run_study(cfg, command=["test"], progress=False, say=lambda _m: None)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["stages"]["steer"] == "reused"


@pytest.mark.parametrize(
    ("steer", "message"),
    [("en", "--steer takes FROM:TO"), ("en:ja", "ja is not a language of the study")],
)
def test_run_stage_bad_flag_one_line(tiny_models, tmp_path, capsys, steer, message):
    code = main([
        "run", "--model", str(tiny_models["qwen2"]), "--problems", "15", "--langs", "zh,en",
        "-o", str(tmp_path / "x"), "--steer", steer, "--no-progress",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x" / "manifest.json").exists()  # refused before extraction
