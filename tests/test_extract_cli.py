"""``xlalign extract`` and ``xlalign export-npz`` through ``main([...])``: results and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import xlalign
from xlalign.cli import main


@pytest.fixture(scope="module")
def data(problems, tmp_path_factory):
    """40 problems as JSONL (id, category, zh, en)."""
    from xlalign.data.corpus import ParallelCorpus

    n = 40
    small = ParallelCorpus(
        problems.ids[:n],
        {lang: problems.texts[lang][:n] for lang in problems.languages},
        {k: v[:n] for k, v in problems.meta.items()},
    )
    return small.to_jsonl(tmp_path_factory.mktemp("data") / "problems.jsonl")


def _extract(model, data, out, *extra: str) -> list[str]:
    return [
        "extract", "--model", str(model), "--data", str(data), "--langs", "zh,en",
        "-o", str(out), "--no-progress", *extra,
    ]  # fmt: skip


def test_extract_then_export(tiny_models, data, tmp_path, capsys):
    out = tmp_path / "run"
    argv = _extract(tiny_models["qwen2"], data, out, "--sites", "all", "--pool", "last,mean")
    assert main([*argv, "--batch-size", "32"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "embed, L0..L3, final" in printed
    run = xlalign.load_run(out)
    assert run.complete and run.pools == ("last", "mean") and run.manifest["batch_size"] == 32
    assert run.meta["category"][:3] == [json.loads(x)["category"] for x in
                                        data.read_text().splitlines()[:3]]  # fmt: skip

    npz = tmp_path / "all_layers_lasttok.npz"
    assert main(["export-npz", str(out), "--pool", "last", "-o", str(npz)]) == 0
    with np.load(npz, allow_pickle=False) as f:
        assert {"zh_L0", "en_L0", "zh_embed", "en_embed", "zh_final", "en_L3"} <= set(f.files)
        np.testing.assert_array_equal(f["zh_L0"], run["zh", "L0", "last"])
    sub = tmp_path / "sub.npz"
    argv = ["export-npz", str(out), "--pool", "mean", "--sites", "embed,L0", "-o", str(sub)]
    assert main(argv) == 0
    with np.load(sub, allow_pickle=False) as f:
        assert set(f.files) == {"zh_embed", "zh_L0", "en_embed", "en_L0"}


def test_extract_options_reach_the_manifest(tiny_models, data, tmp_path):
    out = tmp_path / "run"
    argv = _extract(
        tiny_models["gpt2"], data, out, "--sites", "embed,L1-L2", "--pool", "weighted,first",
        "--batch-size", "5", "--padding-side", "left", "--dtype", "float32", "--device", "cpu",
        "--random-init-seed", "3",
    )  # fmt: skip
    assert main(argv) == 0
    m = xlalign.load_run(out).manifest
    assert m["sites"] == ["embed", "L1", "L2"] and m["pools"] == ["weighted", "first"]
    assert m["padding_side"] == "left" and m["batch_size"] == 5
    assert m["random_init_seed"] == 3 and m["dtype"] == "float32" and m["device"] == "cpu"
    assert m["weights"].startswith("random-init (seed 3)")


def test_extract_control_adds_the_control_beside_the_trained_run_as_run_does(
    tiny_models, data, tmp_path, capsys
):
    """--control random-init means what it means in run: the trained model's run in OUT and a
    random-weights control in OUT/control-random-init; every line about random weights says
    so. --random-init-seed extracts random weights alone, and says so too."""
    out = tmp_path / "run"
    argv = _extract(tiny_models["gpt2"], data, out, "--sites", "embed,L0", "--control",
                    "random-init", "--control-seed", "3")  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    run, ctl = xlalign.load_run(out), xlalign.load_run(out / "control-random-init")
    assert run.manifest["random_init_seed"] is None and run.manifest["weights"] == "trained"
    assert ctl.manifest["random_init_seed"] == 3 and ctl.manifest["control_of"]["model"]
    assert f"wrote {out}: " in printed
    assert f"wrote {out / 'control-random-init'} (random weights, seed 3): " in printed
    assert main(["align", str(out), "--n-boot", "0", "--no-progress"]) == 0
    findings = json.loads((out / "findings.json").read_text())
    assert findings["study"]["control"] == "random-init"
    capsys.readouterr()
    assert main(["align", str(out / "control-random-init"), "--n-boot", "0", "--no-progress"]) == 0
    assert "(random weights, seed 3)" in capsys.readouterr().out
    conflict = _extract(tiny_models["gpt2"], data, tmp_path / "x", "--control", "random-init",
                        "--random-init-seed", "1")  # fmt: skip
    assert main(conflict) == 2
    assert "choose one" in capsys.readouterr().err


def test_resume_and_overwrite_flags(tiny_models, data, tmp_path, capsys):
    out = tmp_path / "run"
    argv = _extract(tiny_models["llama"], data, out, "--sites", "L0")
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    assert "already holds a complete run; pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert main([*argv, "--resume", "--overwrite"]) == 2
    assert "--resume and --overwrite conflict" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sites", "L40"], "site 'L40' not in model: it has embed, L0..L3, final"),
        (["--sites", "L2-L1"], "site range 'L2-L1' runs backwards"),
        (["--sites", "layer3"], "site 'layer3' not understood"),
        (
            ["--pool", "max"],
            "pool 'max' unknown: choose from last, mean, first, weighted, eos, tokens",
        ),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--padding-side", "middle"], "--padding-side must be left or right"),
        (["--dtype", "fp8"], "unknown dtype 'fp8'"),
        (["--control", "shuffle"], "--control must be random-init"),
        (["--control-seed", "1"], "--control-seed needs --control random-init"),
    ],
)
def test_bad_flags_are_one_line_errors(tiny_models, data, tmp_path, capsys, extra, message):
    code = main([*_extract(tiny_models["qwen2"], data, tmp_path / "run"), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("xlalign: error:") and message in last and "Traceback" not in err


def test_final_on_bert_is_a_clear_error(tiny_models, data, tmp_path, capsys):
    code = main([*_extract(tiny_models["bert"], data, tmp_path / "run"), "--sites", "final"])
    assert code == 2
    assert "site 'final' not in model: it has embed, L0..L3 (model has no final norm)" in (
        capsys.readouterr().err
    )


def test_missing_language_model_and_data(tiny_models, data, tmp_path, capsys):
    argv = _extract(tiny_models["qwen2"], data, tmp_path / "run")
    langs = argv.index("--langs") + 1
    argv[langs] = "zh,fr"
    assert main(argv) == 2
    assert "missing language column(s) 'fr'" in capsys.readouterr().err

    argv = _extract(tmp_path / "no-model", data, tmp_path / "run")
    assert main(argv) == 2
    assert f"model path '{tmp_path / 'no-model'}' does not exist" in capsys.readouterr().err

    argv = _extract(tiny_models["qwen2"], tmp_path / "none.jsonl", tmp_path / "run")
    assert main(argv) == 2
    assert "none.jsonl: no such file" in capsys.readouterr().err


def test_export_errors(tiny_models, data, tmp_path, capsys):
    assert main(["export-npz", str(tmp_path / "nothing"), "-o", str(tmp_path / "x.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(_extract(tiny_models["qwen2"], data, out, "--sites", "embed,L0")) == 0
    capsys.readouterr()
    assert main(["export-npz", str(out), "--pool", "first", "-o", str(tmp_path / "x.npz")]) == 2
    assert "pool 'first' not in run: it has last, mean" in capsys.readouterr().err
    assert main(["export-npz", str(out), "--sites", "L2", "-o", str(tmp_path / "x.npz")]) == 2
    assert "site 'L2' not in run: it has embed, L0" in capsys.readouterr().err


def test_zero_norm_vectors_give_one_warning_line(tiny_models, data, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"])
    with torch.no_grad():
        model.model.embed_tokens.weight.zero_()
    zeroed = tmp_path / "zeroed"
    model.save_pretrained(zeroed)
    AutoTokenizer.from_pretrained(tiny_models["qwen2"]).save_pretrained(zeroed)
    out = tmp_path / "run"
    assert main([*_extract(zeroed, data, out), "--sites", "embed", "--pool", "last"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith("xlalign: warning: 80 captured vector(s) have norm 0")
    assert xlalign.load_run(out).manifest["n_zero_norm_vectors"] == 80


def test_origin_control_after_extract_needs_no_data(tiny_models, data, tmp_path, capsys):
    """The README tour's order: extract, then origin RUN --control random-init, nothing else."""
    out = tmp_path / "run"
    argv = _extract(tiny_models["qwen2"], data, out, "--sites", "embed,L0", "--pool",
                    "last,mean,tokens")  # fmt: skip
    assert main(argv) == 0
    kept = xlalign.load_corpus(out / "corpus.jsonl")
    assert kept.fingerprint() == xlalign.load_corpus(data).fingerprint()
    assert main(["origin", str(out), "--control", "random-init", "--no-progress"]) == 0
    origin = json.loads((out / "origin.json").read_text())
    assert origin["control"] is not None
    # --data is accepted with a RUN folder (it names the corpus for the control); -o is not
    argv = ["origin", str(out), "--data", str(data), "--control", "random-init", "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["origin", str(out), "-o", str(tmp_path / "elsewhere")]) == 2
    assert "-o goes with --model" in capsys.readouterr().err


def test_the_lens_summary_of_random_weights_says_so():
    from xlalign.studies.lens import summarize

    doc = {"model": "m", "pool": "last", "sites": ["L0"], "n_rows": 5, "summaries": []}
    assert summarize({**doc, "random_init_seed": 3})[0].startswith(
        "logit lens of m (random weights, seed 3) (last pool"
    )
    assert summarize({**doc, "random_init_seed": None})[0].startswith("logit lens of m (last pool")


@pytest.mark.parametrize("command", ["align", "lens", "compare"])
def test_a_negative_seed_is_a_clear_error(command, tmp_path, capsys):
    """Issue 27, item 7: --seed -1 raised a traceback from numpy in align, lens and compare."""
    from xlalign.studies.compare import CompareConfig
    from xlalign.studies.layers import SweepConfig
    from xlalign.studies.lens import LensConfig

    config = {"align": SweepConfig, "lens": LensConfig, "compare": CompareConfig}[command]
    with pytest.raises(xlalign.XlalignError, match="--seed must be 0 or more, got -1"):
        config(seed=-1)
    argv = {"align": ["align", str(tmp_path)], "lens": ["lens", str(tmp_path)],
            "compare": ["compare", str(tmp_path), str(tmp_path)]}[command]  # fmt: skip
    assert main([*argv, "--seed", "-1"]) == 2
    assert "traceback" not in capsys.readouterr().err.lower()
