"""The logit lens against the model's own logits and an independent transformers computation.

The reference here never touches xlalign's decoding: each prompt runs alone through
``AutoModelForCausalLM`` with ``output_hidden_states=True``; the final norm and the LM head are
taken by attribute from the transformers model (``model.model.norm`` / ``transformer.ln_f``,
``lm_head``) and applied in float64; token classes come from :class:`TokenClassifier`, one id
at a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from xlalign.capture.engine import extract
from xlalign.cli import main
from xlalign.data.corpus import ParallelCorpus
from xlalign.data.tokens import TOKEN_CLASSES, TokenClassifier
from xlalign.errors import RunError
from xlalign.models.testing import build_tiny_model
from xlalign.store.run import load_run
from xlalign.studies.lens import LensConfig, lens_study, load_decoder, run_lens

CASES = [
    ("qwen2", True),
    ("qwen2", False),
    ("llama", True),
    ("llama", False),
    ("gpt2", True),
    ("gpt2", False),
]


def _answer_corpus(problems: ParallelCorpus, n: int = 10) -> ParallelCorpus:
    """``n`` problems with answer columns: a Chinese and an English word per row."""
    zh_words = ("苹果", "计算", "。", "是", "多少", "和", "的", "个", "共", "有")
    en_words = ("apples", "total", ".", "is", "many", "and", "the", "How", "of", "has")
    base = problems.head(n)
    meta = dict(base.meta)
    meta["answer_zh"] = tuple(zh_words[i % len(zh_words)] for i in range(n))
    meta["answer_en"] = tuple(
        en_words[i % len(en_words)] if i != 3 else None for i in range(n)
    )  # row 3 has no English answer
    return ParallelCorpus(base.ids, base.texts, meta, source="answers")


@pytest.fixture(scope="module")
def lens_runs(bpe_tokenizer, problems, tmp_path_factory) -> dict[tuple[str, bool], Path]:
    """A run (all sites, last pool, batches of 4 so rows are padded) per (arch, tied)."""
    root = tmp_path_factory.mktemp("lens")
    corpus = _answer_corpus(problems)
    out = {}
    for arch, tied in CASES:
        name = f"{arch}-{'tied' if tied else 'untied'}"
        model = build_tiny_model(
            arch, bpe_tokenizer, root / f"model-{name}", seed=3, tie_word_embeddings=tied
        )
        extract(
            str(model), corpus, None, sites="all", pools="last,mean", batch_size=4,
            output=root / f"run-{name}", progress=False, device="cpu",
        )  # fmt: skip
        out[(arch, tied)] = root / f"run-{name}"
    return out


def _reference(run_path: Path, tokenizer, corpus: ParallelCorpus):
    """Per language: ``{site: (n, vocab) float64 probabilities}`` and the model's own logits."""
    from transformers import AutoModelForCausalLM

    run = load_run(run_path)
    model = AutoModelForCausalLM.from_pretrained(run.manifest["model"]).eval()
    norm = model.transformer.ln_f if model.config.model_type == "gpt2" else model.model.norm
    head = model.lm_head
    n_layers = model.config.num_hidden_layers
    probs: dict[str, dict[str, list[np.ndarray]]] = {}
    own: dict[str, list[np.ndarray]] = {}
    norm64 = _double(norm)
    head64 = _double(head)
    with torch.no_grad():
        for lang in run.languages:
            probs[lang] = {s: [] for s in run.sites}
            own[lang] = []
            for text in corpus.text(lang):
                ids = tokenizer(text, return_tensors="pt")["input_ids"]
                out = model(ids, output_hidden_states=True)
                hs = out.hidden_states
                own[lang].append(torch.softmax(out.logits[0, -1].double(), -1).numpy())
                for site in run.sites:
                    if site == "embed":
                        logits = head64(norm64(hs[0][0, -1].double()))
                    elif site == "final":
                        logits = head64(hs[-1][0, -1].double())  # already after the norm
                    elif int(site[1:]) < n_layers - 1:
                        logits = head64(norm64(hs[int(site[1:]) + 1][0, -1].double()))
                    else:  # raw output of the last block: only the model's own logits say
                        logits = out.logits[0, -1].double()
                    probs[lang][site].append(torch.softmax(logits, -1).numpy())
    return (
        {lang: {s: np.stack(v) for s, v in d.items()} for lang, d in probs.items()},
        {lang: np.stack(v) for lang, v in own.items()},
        model,
    )


def _double(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module).double()


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "tied"), CASES)
def test_lens_equals_transformers_at_every_site(
    lens_runs, bpe_tokenizer, problems, arch, tied
) -> None:
    corpus = _answer_corpus(problems)
    ref, own, model = _reference(lens_runs[(arch, tied)], bpe_tokenizer, corpus)
    same = model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert same == tied  # the fixture really builds tied and untied unembeddings
    run = load_run(lens_runs[(arch, tied)])
    doc = lens_study(run, LensConfig(n_boot=50))
    last_block = f"L{run.n_layers - 1}"
    assert doc["decoding"]["final"].startswith("LM head only")
    assert doc["decoding"][last_block] == "final norm, then LM head"

    classify = TokenClassifier(bpe_tokenizer)
    vocab = next(iter(ref[run.languages[0]].values())).shape[1]
    classes = np.array(
        [TOKEN_CLASSES.index(classify(i)[1]) if i < len(bpe_tokenizer) else 7 for i in range(vocab)]
    )
    answer_ids = {
        lang: [
            bpe_tokenizer(w, add_special_tokens=False)["input_ids"][0] if w else -1
            for w in corpus.meta[f"answer_{lang}"]
        ]
        for lang in ("zh", "en")
    }
    by_key = {(r["site"], r["lang"], r["id"]): r for r in doc["records"]}
    assert len(by_key) == len(run.sites) * len(run.languages) * len(corpus)
    for lang in run.languages:
        # the lens at the last block's raw output (and at final) is the model's next-token
        # distribution at the last real token
        for site in (last_block, "final"):
            got = np.array(
                [
                    [by_key[(site, lang, i)]["class_mass"][c] for c in TOKEN_CLASSES]
                    for i in corpus.ids
                ]
            )
            want = np.stack([np.bincount(classes, p, len(TOKEN_CLASSES)) for p in own[lang]])
            np.testing.assert_allclose(got, want, atol=2e-6)
        for site in run.sites:
            p_ref = ref[lang][site]
            for i, row_id in enumerate(corpus.ids):
                rec = by_key[(site, lang, row_id)]
                mass = np.bincount(classes, p_ref[i], len(TOKEN_CLASSES))
                np.testing.assert_allclose(
                    [rec["class_mass"][c] for c in TOKEN_CLASSES], mass, atol=2e-6
                )
                entropy = -(p_ref[i] * np.log(p_ref[i])).sum()
                assert rec["entropy"] == pytest.approx(entropy, abs=1e-4)
                top_ids = [t for t, _ in rec["top"]]
                top_p = [p for _, p in rec["top"]]
                assert len(top_ids) == 5
                np.testing.assert_allclose(top_p, p_ref[i][top_ids], atol=1e-6)
                np.testing.assert_allclose(top_p, np.sort(p_ref[i])[::-1][:5], atol=1e-6)
                for a in ("zh", "en"):
                    tid = answer_ids[a][i]
                    if tid < 0:
                        assert a not in rec["answer_prob"] and a not in rec["answer_rank"]
                        continue
                    pa = p_ref[i][tid]
                    assert rec["answer_prob"][a] == pytest.approx(pa, abs=1e-6)
                    # float32 vs float64 may reorder near-ties; the rank must lie in the band
                    lo = 1 + int((p_ref[i] > pa + 1e-6).sum())
                    hi = int((p_ref[i] > pa - 1e-6).sum())  # counts the answer itself
                    assert lo <= rec["answer_rank"][a] <= hi


def test_summaries_are_means_with_bootstrap_intervals(lens_runs) -> None:
    run = load_run(lens_runs[("qwen2", True)])
    doc = lens_study(run, LensConfig(n_boot=100, seed=1))
    assert doc["answers"]["rows_with_answer"] == {"zh": 10, "en": 9}
    for s in doc["summaries"]:
        recs = [r for r in doc["records"] if r["site"] == s["site"] and r["lang"] == s["lang"]]
        assert s["n"] == len(recs) == 10
        for c in TOKEN_CLASSES:
            values = np.array([r["class_mass"][c] for r in recs], dtype=np.float64)
            cm = s["class_mass"][c]
            assert cm["mean"] == pytest.approx(values.mean(), rel=1e-5, abs=1e-9)
            assert cm["low"] - 1e-9 <= cm["mean"] <= cm["high"] + 1e-9
            assert values.min() - 1e-7 <= cm["low"] and cm["high"] <= values.max() + 1e-7
        assert sum(s["class_mass"][c]["mean"] for c in TOKEN_CLASSES) == pytest.approx(1, abs=1e-5)
        en = [r["answer_prob"]["en"] for r in recs if "en" in r["answer_prob"]]
        assert s["answer_prob"]["en"]["n"] == 9
        assert s["answer_prob"]["en"]["mean"] == pytest.approx(np.mean(en), rel=1e-5)
    share = doc["vocab_share"]
    assert sum(share.values()) == pytest.approx(1, abs=1e-5)


def test_lens_reads_no_forward_pass(lens_runs, monkeypatch) -> None:
    """The lens decodes stored vectors: no block of the model runs."""
    run = load_run(lens_runs[("llama", False)])
    decoder = load_decoder(run)

    def boom(*args, **kwargs):
        raise AssertionError("a forward pass ran")

    from transformers.models.llama import modeling_llama

    monkeypatch.setattr(modeling_llama.LlamaDecoderLayer, "forward", boom)
    monkeypatch.setattr(modeling_llama.LlamaModel, "forward", boom)
    doc = lens_study(run, LensConfig(n_boot=10), decoder=decoder)
    assert len(doc["records"]) == len(run.sites) * 2 * run.n_rows


def test_control_is_decoded_through_its_own_random_head(lens_runs, problems, tmp_path) -> None:
    """``run_lens`` finds the control folder and decodes it with the same random weights."""
    import shutil

    from xlalign.store.files import CONTROL_DIR

    src = lens_runs[("qwen2", False)]
    study = tmp_path / "study"
    shutil.copytree(src, study)
    run = load_run(study)
    control = extract(
        str(run.manifest["model"]), _answer_corpus(problems), None, sites="all", pools="last",
        batch_size=4, output=study / CONTROL_DIR, progress=False, device="cpu",
        random_init_seed=5,
    )  # fmt: skip
    doc, lines, path = run_lens(study, LensConfig(n_boot=20), progress=False)
    assert path == study / "lens.json" and (study / CONTROL_DIR / "lens.json").exists()
    assert doc["control"]["seed"] == 5 and len(doc["control"]["summaries"]) == len(doc["summaries"])
    # the control's last block decodes to the random model's own next-token distribution
    from transformers import AutoModelForCausalLM

    torch.manual_seed(5)
    rand = AutoModelForCausalLM.from_config(
        AutoModelForCausalLM.from_pretrained(run.manifest["model"]).config
    ).eval()
    tok = load_run(control.path).tokenizer()
    text = _answer_corpus(problems).text("zh")[0]
    with torch.no_grad():
        p = torch.softmax(rand(**tok(text, return_tensors="pt")).logits[0, -1].double(), -1)
    import json

    cdoc = json.loads((study / CONTROL_DIR / "lens.json").read_text())
    last = f"L{run.n_layers - 1}"
    rec = next(r for r in cdoc["records"] if r["site"] == last and r["lang"] == "zh")
    assert next(t for t, _ in rec["top"]) == int(p.argmax())
    assert rec["top"][0][1] == pytest.approx(float(p.max()), abs=1e-6)
    assert any("random-weights control" in line for line in lines)


def test_encoder_run_is_refused_with_the_reason(tiny_models, problems, tmp_path) -> None:
    run = extract(
        str(tiny_models["bert"]), problems.head(6), None, sites="embed,L0", pools="last",
        output=tmp_path / "bert", progress=False, device="cpu",
    )  # fmt: skip
    with pytest.raises(RunError, match="not a causal language model"):
        lens_study(run)


def test_cli_lens_writes_lens_json(lens_runs, tmp_path, capsys) -> None:
    import shutil

    study = tmp_path / "r"
    shutil.copytree(lens_runs[("gpt2", True)], study)
    code = main(["lens", str(study), "--n-boot", "20", "--no-progress", "--sites", "L1,final"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert (study / "lens.json").exists() and "zh prompts" in out
    code = main(["lens", str(study), "--sites", "L9", "--no-progress"])
    assert code == 2
    assert "site 'L9' not in run" in capsys.readouterr().err


def test_missing_pool_names_what_the_run_has(lens_runs, tmp_path, problems, tiny_models) -> None:
    run = extract(
        str(tiny_models["qwen2"]), problems.head(4), None, sites="L0", pools="mean",
        output=tmp_path / "m", progress=False, device="cpu",
    )  # fmt: skip
    with pytest.raises(RunError, match=r"pool .last. not in run.*it has mean"):
        lens_study(run)


def test_report_section_shows_the_lens_with_answers(lens_runs, tmp_path) -> None:
    from xlalign.report import ReportInputs, build_report

    run = load_run(lens_runs[("qwen2", True)])
    doc = lens_study(run, LensConfig(n_boot=20))
    paths = build_report(tmp_path, ReportInputs(title="t", lens=doc))
    assert paths["lens"] == tmp_path / "fig_lens.png" and paths["lens"].stat().st_size > 0
    md = (tmp_path / "report.md").read_text()
    assert "Latent language (logit lens)" in md and "No random-weights control" in md
    roles = doc["answers"]["roles"]
    assert roles["zh"]["zh"] == roles["en"]["en"] == "target"
    assert "P(zh answer (the prompt's answer))" in md and "P(en answer (the prompt's answer))" in md
    other = {"in the prompt": "in the prompt: copying it scores too",
             "not in the prompt": "not in the prompt: latent"}[roles["zh"]["en"]]  # fmt: skip
    assert f"P(en answer ({other}))" in md
    # one table row per site and language, in the site order of the run
    table = [line for line in md.splitlines() if line.startswith(("| embed", "| L", "| final"))]
    assert len(table) == len(run.sites) * len(run.languages)
    without = build_report(tmp_path / "none", ReportInputs(title="t"))
    assert "lens" not in without
    assert "logit lens" not in (tmp_path / "none" / "report.md").read_text()


def test_answer_roles_say_whether_the_other_language_is_in_the_prompt(lens_runs) -> None:
    """A prompt holding the other language's answer (translate-words: the source word) scores
    it by copying too; one that does not (cloze-words) measures the latent language. The
    shares are recomputed here from the prompts' texts."""
    from xlalign.studies.lens import answer_columns, answer_roles

    run = load_run(lens_runs[("qwen2", True)])
    answers = answer_columns(run)
    tok = run.tokenizer()
    got = answer_roles(run, list(run.languages), answers, tok)
    for lang in run.languages:
        texts = [tok.decode(t, skip_special_tokens=True) for t in run.token_ids(lang)]
        for a, words in answers.items():
            rows = [(p, str(w)) for p, w in zip(texts, words, strict=True) if w]
            share = sum(w in p for p, w in rows) / len(rows)
            assert got["in_prompt"][lang][a] == pytest.approx(share)
            want = (
                "target"
                if a == lang
                else ("in the prompt" if share >= 0.5 else "not in the prompt")
            )
            assert got["roles"][lang][a] == want
