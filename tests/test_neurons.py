"""The neuron study (LAPE and its ablation test) against independent computations.

References: counts from a plain forward of each prompt alone (no batching, no padding) with the
activation read by a hook and counted in numpy; LAPE's thresholds from a float64 transcription of
the formulas written with Python loops and sorting; the ablation against a copy of the model
whose down projection has the ablated input columns zeroed; a tiny model with a neuron planted
to fire only on one language's tokens.
"""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from xlalign.capture.batching import tokenize
from xlalign.cli import main
from xlalign.data.corpus import ParallelCorpus
from xlalign.errors import XlalignError
from xlalign.models.architecture import ModelAdapter, mlp_activations
from xlalign.models.loading import ModelOptions, load_model
from xlalign.models.testing import build_tiny_model
from xlalign.studies.neurons import (
    ActivationCounts,
    NeuronsConfig,
    Selection,
    ablated,
    ablation_findings,
    count_activations,
    jaccard,
    lape,
    neuron_study,
    paired_delta,
    random_like,
    token_nll,
)

ARCHS = ("qwen2", "llama", "gemma3", "gpt2")


@pytest.fixture(scope="module")
def models(bpe_tokenizer, tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("neuron_models")
    return {
        arch: load_model(str(build_tiny_model(arch, bpe_tokenizer, root / arch)), ModelOptions(device="cpu"))
        for arch in ARCHS
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# counts


def _reference_counts(loaded, texts: list[str]) -> tuple[np.ndarray, int, np.ndarray]:
    """``(counts (L, n), tokens, near_zero (L, n))`` from each prompt run alone, in float64."""
    acts = mlp_activations(loaded.adapter)
    seen: dict[int, np.ndarray] = {}

    def hook_for(layer):
        def hook(module, args, out):
            seen[layer] = out[0].double().numpy()

        return hook

    handles = [m.register_forward_hook(hook_for(i)) for i, m in enumerate(acts.modules)]
    counts = near = None
    n_tokens = 0
    try:
        for text in texts:
            enc = loaded.tokenizer(text, return_special_tokens_mask=True)
            ids = torch.tensor([enc["input_ids"]])
            keep = ~np.asarray(enc["special_tokens_mask"], dtype=bool)
            with torch.no_grad():
                loaded.adapter.base(input_ids=ids, attention_mask=torch.ones_like(ids))
            layer_counts = np.stack([(seen[i][keep] > 0).sum(0) for i in range(len(seen))])
            layer_near = np.stack([(np.abs(seen[i][keep]) < 1e-5).sum(0) for i in range(len(seen))])
            counts = layer_counts if counts is None else counts + layer_counts
            near = layer_near if near is None else near + layer_near
            n_tokens += int(keep.sum())
    finally:
        for h in handles:
            h.remove()
    assert counts is not None and near is not None
    return counts, n_tokens, near


@pytest.mark.parametrize("arch", ARCHS)
def test_counts_equal_each_prompt_run_alone(models, problems, arch):
    loaded = models[arch]
    corpus = problems.head(12)
    tokens = {lang: tokenize(loaded.tokenizer, corpus.text(lang)) for lang in ("zh", "en")}
    groups = [np.array([0, 2, 4, 6, 8, 10]), np.array([1, 3, 5, 7, 9, 11])]
    got = count_activations(loaded, tokens, groups, batch_size=4)  # padded batches
    for g, rows in enumerate(groups):
        for k, lang in enumerate(("zh", "en")):
            ref, n_tok, near = _reference_counts(loaded, [corpus.text(lang)[i] for i in rows])
            assert got[g].tokens[k] == n_tok
            diff = np.abs(got[g].counts[:, :, k] - ref)
            assert (diff <= near).all()  # only values at 0 to rounding may fall either side
            assert diff.sum() <= max(1, near.sum() // 10)


def test_counts_leave_out_padding_and_special_tokens(
    models, wordpiece_tokenizer, problems, tmp_path
):
    # BERT wraps every prompt in [CLS] ... [SEP]: those positions are not counted
    bert = load_model(str(build_tiny_model("bert", wordpiece_tokenizer, tmp_path / "bert")),
                      ModelOptions(device="cpu"))  # fmt: skip
    corpus = problems.head(6)
    tokens = {lang: tokenize(bert.tokenizer, corpus.text(lang)) for lang in ("zh", "en")}
    (got,) = count_activations(bert, tokens, [np.arange(6)], batch_size=4)
    for k, lang in enumerate(("zh", "en")):
        t = tokens[lang]
        assert got.tokens[k] == int((~t.special).sum())
        ref, n_tok, _near = _reference_counts(bert, list(corpus.text(lang)))
        assert n_tok == got.tokens[k]
        assert np.abs(got.counts[:, :, k] - ref).sum() <= 2


def test_a_planted_neuron_is_selected_for_its_language_only(bpe_tokenizer, problems, tmp_path):
    # one-block GPT-2 whose embeddings carry a language marker in dimension 0 that only neuron 7
    # reads: it fires on every Chinese token and on (almost) no English one
    zh = [re.sub(r"[^\u4e00-\u9fff]", "", t) for t in problems.text("zh")][:40]
    en = [re.sub(r"[^A-Za-z ]", "", t).strip() for t in problems.text("en")][:40]
    corpus = ParallelCorpus([str(i) for i in range(40)], {"zh": zh, "en": en}, {})
    path = build_tiny_model("gpt2", bpe_tokenizer, tmp_path / "m", n_layer=1)
    loaded = load_model(str(path), ModelOptions(device="cpu"))
    zh_ids = set(tokenize(bpe_tokenizer, zh).ids.tolist())
    en_ids = set(tokenize(bpe_tokenizer, en).ids.tolist())
    assert not zh_ids & en_ids
    net = loaded.model
    with torch.no_grad():
        marker = torch.full((net.transformer.wte.weight.shape[0],), -0.05)
        marker[sorted(zh_ids)] = 0.05
        net.transformer.wte.weight[:, 0] = marker
        block = net.transformer.h[0]
        block.attn.c_proj.weight.zero_()
        block.attn.c_proj.bias.zero_()
        fc = block.mlp.c_fc  # Conv1D: weight (d_model, n_neurons)
        fc.weight[0, :] = 0.0
        fc.weight[:, 7] = 0.0
        fc.weight[0, 7] = 10.0
        fc.bias[7] = 0.0
    doc, sel = neuron_study(
        loaded, corpus, ["zh", "en"], NeuronsConfig(ablate=False, top_rate=0.05)
    )
    assert sel.probs[0, 7, 0] == 1.0 and sel.probs[0, 7, 1] < 0.05
    assert [0, 7] in sel.members["zh"].tolist()
    assert [0, 7] not in sel.members["en"].tolist()
    assert {f["verdict"] for f in doc["findings"]} <= {"no-ablation", "no-neurons"}


# ---------------------------------------------------------------------------------------------
# LAPE


def _lape_reference(counts: np.ndarray, tokens: np.ndarray, filter_rate, top_rate, bar_rate):
    """LAPE with Python loops and sorted lists, float64 (the module doc's formulas)."""
    n_layers, n_neurons, n_langs = counts.shape
    p = [[[counts[layer, i, k] / tokens[k] for k in range(n_langs)] for i in range(n_neurons)]
         for layer in range(n_layers)]  # fmt: skip
    flat = sorted(v for layer in p for neuron in layer for v in neuron)

    def kth(rate):
        k = min(max(1, round(len(flat) * rate)), len(flat))
        return flat[k - 1]

    filter_value, bar_value = kth(filter_rate), kth(bar_rate)
    entropies = []
    for layer in range(n_layers):
        for i in range(n_neurons):
            total = sum(p[layer][i])
            if not any(v > filter_value for v in p[layer][i]):
                continue
            q = [v / total for v in p[layer][i]]
            h = -sum(x * math.log(x) for x in q if x > 0)
            entropies.append((h, layer * n_neurons + i))
    by_neuron = {(idx // n_neurons, idx % n_neurons): h for h, idx in entropies}
    entropies.sort()
    n_top = round(n_layers * n_neurons * top_rate)
    chosen = [(idx // n_neurons, idx % n_neurons) for _h, idx in entropies[:n_top]]
    members = [sorted(c for c in chosen if p[c[0]][c[1]][k] > bar_value) for k in range(n_langs)]
    return filter_value, bar_value, chosen, members, by_neuron


@pytest.mark.parametrize("rates", [(0.95, 0.01, 0.95), (0.9, 0.2, 0.8), (0.5, 1.0, 0.5)])
@pytest.mark.parametrize("seed", [0, 1])
def test_lape_equals_a_float64_transcription(rates, seed):
    rng = np.random.default_rng(seed)
    tokens = np.array([50, 80, 65])
    counts = np.stack([rng.binomial(n, rng.uniform(0, 1, size=(3, 40))) for n in tokens], axis=-1)
    counts[0, :3] = 0  # neurons that never fire: never selected
    counts[1, 5] = tokens  # fires on every token of every language: entropy log 3
    counts[2, 9] = [tokens[0], 0, 0]  # one language only: entropy 0
    langs = ("a", "b", "c")
    sel = lape(ActivationCounts(counts, tokens, langs), NeuronsConfig(*rates))
    filter_value, bar_value, chosen, members, entropy = _lape_reference(counts, tokens, *rates)
    finite = np.isfinite(sel.entropy)
    assert finite.sum() == len(entropy)
    for (layer, i), h in entropy.items():
        assert sel.entropy[layer, i] == pytest.approx(h, abs=1e-12)
    assert sel.filter_value == pytest.approx(filter_value, abs=1e-15)
    assert sel.bar_value == pytest.approx(bar_value, abs=1e-15)
    assert [tuple(r) for r in sel.selected.tolist()] == chosen
    for k, lang in enumerate(langs):
        assert [tuple(r) for r in sel.members[lang].tolist()] == members[k]
    assert all(tuple(r) not in chosen for r in ((0, 0), (0, 1), (0, 2)))


def test_jaccard_and_random_like():
    a = np.array([[0, 1], [0, 2], [1, 3]])
    b = np.array([[0, 2], [1, 3], [2, 0]])
    assert jaccard(a, b) == pytest.approx(2 / 4)
    assert jaccard(np.zeros((0, 2)), np.zeros((0, 2))) is None
    # a set holding half of layer 2's 8 neurons and one of layer 5's: the control must take
    # exactly the other half of layer 2, and one other neuron of layer 5
    big = np.array([[2, i] for i in range(4)] + [[5, 4]])
    for seed in range(5):
        drawn = random_like(big, 8, seed=seed, exclude=big)
        assert drawn[:, 0].tolist().count(2) == 4 and drawn[:, 0].tolist().count(5) == 1
        assert {tuple(r) for r in drawn.tolist()} >= {(2, 4), (2, 5), (2, 6), (2, 7)}
        assert not {tuple(r) for r in drawn.tolist()} & {tuple(r) for r in big.tolist()}
    with pytest.raises(XlalignError, match="too few other neurons"):
        random_like(
            np.array([[0, i] for i in range(6)]),
            10,
            seed=0,
            exclude=np.array([[0, i] for i in range(6)]),
        )
    drawn = random_like(a, 10, seed=3, exclude=a)
    assert np.array_equal(drawn, random_like(a, 10, seed=3, exclude=a))
    assert not np.array_equal(random_like(a, 10, seed=3), random_like(a, 10, seed=4))


def test_paired_delta_is_the_token_weighted_change():
    base = (np.array([2.0, 4.0, 9.0]), np.array([2, 4, 3]))
    changed = (np.array([3.0, 4.0, 12.0]), np.array([2, 4, 3]))
    out = paired_delta(base, changed, n_boot=500, seed=0)
    assert out["value"] == pytest.approx((1 + 0 + 3) / 9)
    assert out["ci_low"] <= out["value"] <= out["ci_high"]
    # every prompt's NLL rises by 0.5 a token while the prompts' NLLs differ wildly: the paired,
    # token-weighted interval is exactly 0.5 (an unpaired or unweighted one would not be)
    rng = np.random.default_rng(1)
    n = rng.integers(1, 30, size=60)
    nll = rng.uniform(0, 50, size=60) * n
    out = paired_delta((nll, n), (nll + 0.5 * n, n), n_boot=300, seed=2)
    assert out["value"] == pytest.approx(0.5)
    assert out["ci_low"] == pytest.approx(0.5) and out["ci_high"] == pytest.approx(0.5)
    with pytest.raises(XlalignError, match="different tokens"):
        paired_delta(base, (changed[0], np.array([2, 4, 4])), 0, 0)


# ---------------------------------------------------------------------------------------------
# ablation


@pytest.mark.parametrize("arch", ["qwen2", "gemma3", "gpt2"])
def test_ablation_equals_zeroed_down_projection_columns(models, problems, arch):
    loaded = models[arch]
    data = tokenize(loaded.tokenizer, problems.head(8).text("en"))
    rows = np.arange(8)
    neurons = np.array([[0, 3], [0, 17], [2, 5], [3, 40]])
    base = token_nll(loaded, data, rows, batch_size=3)
    with ablated(mlp_activations(loaded.adapter), neurons):
        hooked = token_nll(loaded, data, rows, batch_size=3)
    zeroed = copy.copy(loaded)
    zeroed.model = copy.deepcopy(loaded.model)
    from xlalign.models.architecture import resolve_adapter

    zeroed.adapter = resolve_adapter(zeroed.model)
    with torch.no_grad():
        for layer, i in neurons.tolist():
            mlp = zeroed.adapter.blocks[layer].mlp
            if arch == "gpt2":
                mlp.c_proj.weight[i, :] = 0.0  # Conv1D: weight (n_neurons, d_model)
            else:
                mlp.down_proj.weight[:, i] = 0.0
    reference = token_nll(zeroed, data, rows, batch_size=3)
    np.testing.assert_array_equal(hooked[1], reference[1])
    np.testing.assert_allclose(hooked[0], reference[0], rtol=1e-5, atol=1e-5)
    assert np.abs(hooked[0] - base[0]).max() > 1e-4  # the ablation changed something


def test_token_nll_equals_the_model_loss(models, problems):
    loaded = models["qwen2"]
    texts = problems.head(5).text("zh")
    data = tokenize(loaded.tokenizer, texts)
    nll, n = token_nll(loaded, data, np.arange(5), batch_size=2)
    for i, text in enumerate(texts):
        ids = torch.tensor([loaded.tokenizer(text)["input_ids"]])
        with torch.no_grad():
            loss = loaded.model(input_ids=ids, labels=ids).loss.item()
        assert n[i] == ids.shape[1] - 1
        assert nll[i] / n[i] == pytest.approx(loss, rel=1e-5)


def test_special_tokens_are_never_predicted_targets(models, problems):
    from xlalign.store.writer import TokenData

    loaded = models["qwen2"]
    texts = problems.head(4).text("en")
    data = tokenize(loaded.tokenizer, texts)
    special = data.special.copy()
    ends = data.offsets[1:] - 1
    special[ends] = True  # mark each prompt's last token special, as an appended EOS would be
    marked = TokenData(data.ids, data.offsets, special)
    nll, n = token_nll(loaded, marked, np.arange(4), batch_size=3)
    for i, text in enumerate(texts):
        ids = torch.tensor([loaded.tokenizer(text)["input_ids"]])
        labels = ids.clone()
        labels[0, -1] = -100
        with torch.no_grad():
            loss = loaded.model(input_ids=ids, labels=labels).loss.item()
        assert n[i] == ids.shape[1] - 2
        assert nll[i] / n[i] == pytest.approx(loss, rel=1e-5)


def test_the_study_selects_on_both_halves_and_evaluates_held_out_rows(models, problems):
    from xlalign.studies.neurons import split_rows

    loaded = models["qwen2"]
    corpus = problems.head(30)
    cfg = NeuronsConfig(top_rate=0.05, max_eval=8, n_boot=0, control_seeds=(0,))
    doc, sel = neuron_study(loaded, corpus, ["zh", "en"], cfg)
    half_a, half_b, held = split_rows(30, cfg.heldout, cfg.seed)
    assert not set(half_a) & set(half_b) and not (set(half_a) | set(half_b)) & set(held)
    assert len(half_a) + len(half_b) + len(held) == 30
    evaluated = {corpus.ids[int(i)] for i in held[:8]}
    assert set(doc["rows"]["heldout_ids"]) == evaluated
    tokens = {lang: tokenize(loaded.tokenizer, corpus.text(lang)) for lang in ("zh", "en")}
    a, b = count_activations(loaded, tokens, [half_a, half_b])
    whole = lape(a + b, cfg)
    assert np.array_equal(sel.selected, whole.selected)
    for lang in ("zh", "en"):
        assert np.array_equal(sel.members[lang], whole.members[lang])
        expected = jaccard(lape(a, cfg).members[lang], lape(b, cfg).members[lang])
        assert doc["stability"][lang]["jaccard"] == expected
    for r in doc["ablation"]:
        if r["kind"] == "random":
            own = {tuple(x) for x in sel.members[r["ablated"]].tolist()}
            assert r["n_ablated"] == len(own)


def test_too_few_rows_for_the_halves_name_the_flag(models, problems):
    with pytest.raises(XlalignError, match=r"--heldout 0\.9"):
        neuron_study(models["qwen2"], problems.head(4), ["zh", "en"], NeuronsConfig(heldout=0.9))


def test_verdicts_follow_the_rule():
    sel = Selection(
        probs=np.zeros((1, 4, 2)), entropy=np.zeros((1, 4)), filter_value=0.0, bar_value=0.0,
        n_top=2, selected=np.array([[0, 0], [0, 1]]),
        members={"zh": np.array([[0, 0]]), "en": np.array([[0, 1]]), "fr": np.zeros((0, 2))},
    )  # fmt: skip

    def rec(ablated, kind, seed, evaluated, value, low=None, high=None):
        return {"ablated": ablated, "kind": kind, "seed": seed, "evaluated": evaluated,
                "delta_nll": {"value": value, "ci_low": low, "ci_high": high}}  # fmt: skip

    ablation = [
        rec("zh", "language", None, "zh", 0.5, 0.4, 0.6),  # beyond: 0.4 > 0.1, and > en 0.2
        rec("zh", "language", None, "en", 0.2),
        rec("zh", "language", None, "fr", 0.1),
        rec("zh", "random", 0, "zh", 0.05),
        rec("zh", "random", 1, "zh", 0.1),  # the largest control, not the first
        rec("zh", "random", 1, "en", 9.0),  # a control evaluated on another language: not zh's
        rec("zh", "random", 2, "zh", 0.02),
        rec("en", "language", None, "en", 0.3, 0.1, 0.5),  # matched: 0.1 <= control 0.15
        rec("en", "language", None, "zh", 0.0),
        rec("en", "language", None, "fr", 0.0),
        rec("en", "random", 0, "en", 0.15),
    ]
    findings = {f["lang"]: f for f in ablation_findings(["zh", "en", "fr"], sel, ablation)}
    assert findings["zh"]["verdict"] == "beyond-control"
    assert findings["zh"]["control"]["value"] == 0.1
    assert findings["en"]["verdict"] == "matched-by-control"
    assert findings["fr"]["verdict"] == "no-neurons"
    ablation[1] = rec("zh", "language", None, "en", 0.5)  # hurts English as much as Chinese
    findings = {f["lang"]: f for f in ablation_findings(["zh", "en", "fr"], sel, ablation)}
    assert findings["zh"]["verdict"] == "not-language-specific"
    ablation[3] = rec("zh", "random", 0, "zh", 0.4)  # a control reaching the interval's low end
    findings = {f["lang"]: f for f in ablation_findings(["zh", "en", "fr"], sel, ablation)}
    assert findings["zh"]["verdict"] == "matched-by-control"


# ---------------------------------------------------------------------------------------------
# the command, the stage and their errors


def test_neurons_command_writes_its_records(tiny_models, problems, tmp_path, capsys):
    data = problems.head(40).to_jsonl(tmp_path / "p.jsonl")
    out = tmp_path / "n"
    argv = ["neurons", "--model", str(tiny_models["qwen2"]), "--data", str(data), "--langs",
            "zh,en", "-o", str(out), "--top-rate", "0.05", "--n-boot", "50", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads((out / "neurons.json").read_text())
    assert doc["languages"] == ["zh", "en"] and doc["n_layers"] == 4 and doc["n_neurons"] == 64
    assert len(doc["records"]) == 2 * 4
    assert doc["rows"]["selection"] + doc["rows"]["heldout"] == 40
    for lang in ("zh", "en"):
        saved = np.load(out / "neurons" / f"{lang}.npy", allow_pickle=False)
        assert saved.shape == (doc["selected"][lang], 2)
        assert sum(r["n_selected"] for r in doc["records"] if r["lang"] == lang) == len(saved)
    probs = np.load(out / "neurons" / "activation_probs.npy", allow_pickle=False)
    assert probs.shape == (4, 64, 2) and probs.dtype == np.float32
    kinds = {(r["kind"], r["evaluated"]) for r in doc["ablation"]}
    assert ("none", "zh") in kinds and ("language", "en") in kinds
    assert {f["verdict"] for f in doc["findings"]} <= set(
        ["beyond-control", "matched-by-control", "not-language-specific", "no-neurons"]
    )
    assert (out / "fig_neurons.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "language-specific neurons" in printed and "neurons.json" in printed


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--top-rate", "2", "--top-rate must be in"),
        ("--heldout", "1", "--heldout must be between 0 and 1"),
        ("--control-seeds", "a,b", "--control-seeds takes integers"),
        ("--langs", "zh,xx", "xx"),
    ],
)
def test_neurons_command_errors_name_the_flag(tiny_models, problems, tmp_path, capsys, flag,
                                              value, message):  # fmt: skip
    data = problems.head(12).to_jsonl(tmp_path / "p.jsonl")
    argv = ["neurons", "--model", str(tiny_models["qwen2"]), "--data", str(data), "-o",
            str(tmp_path / "n"), flag, value, "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "n" / "neurons.json").exists()


def test_an_encoder_gets_its_neurons_without_an_ablation(tiny_models, problems, tmp_path):
    data = problems.head(20).to_jsonl(tmp_path / "p.jsonl")
    out = tmp_path / "n"
    argv = ["neurons", "--model", str(tiny_models["bert"]), "--data", str(data), "-o", str(out),
            "--top-rate", "0.1", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads((out / "neurons.json").read_text())
    assert (
        doc["ablation"] == [] and doc["activation"]["module"] == "intermediate.intermediate_act_fn"
    )
    for f in doc["findings"]:
        assert f["verdict"] in ("no-ablation", "no-neurons")
        if f["verdict"] == "no-ablation":
            assert "not a causal LM" in f["statement"]


def test_an_unknown_mlp_is_refused_naming_what_was_looked_for():
    blocks = [nn.Linear(4, 4), nn.Linear(4, 4)]
    adapter = ModelAdapter("toy", nn.Sequential(*blocks), nn.Identity(), blocks, None, False)
    with pytest.raises(XlalignError, match=r"Linear .*mlp\.act_fn, mlp\.act, intermediate"):
        mlp_activations(adapter)


def test_run_has_the_neuron_stage_and_its_report_section(tiny_models, problems, tmp_path):
    data = problems.head(40).to_jsonl(tmp_path / "p.jsonl")
    out = tmp_path / "s"
    argv = ["run", "--model", str(tiny_models["qwen2"]), "--data", str(data), "-o", str(out),
            "--no-lens", "--control", "none", "--n-boot", "20", "--neurons-top-rate", "0.05",
            "--neurons-max-eval", "10", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads((out / "neurons.json").read_text())
    assert doc["rows"]["evaluated"] == 10
    assert "Language-specific neurons" in (out / "report.html").read_text()
    assert (out / "fig_neurons.png").exists()
    provenance = json.loads((out / "provenance.json").read_text())
    assert "computed" in json.dumps(provenance)

    off = tmp_path / "off"
    argv[argv.index(str(out))] = str(off)
    argv.append("--no-neurons")
    assert main(argv) == 0
    assert not (off / "neurons.json").exists()
    assert "neurons = false" in (off / "provenance.json").read_text()


def test_chance_jaccard_is_the_overlap_of_random_sets():
    from xlalign.studies.neurons import chance_jaccard

    rng = np.random.default_rng(0)
    n, a, b = 5000, 400, 300
    draws = [
        jaccard(
            np.stack([np.zeros(a, int), rng.choice(n, a, replace=False)], axis=1),
            np.stack([np.zeros(b, int), rng.choice(n, b, replace=False)], axis=1),
        )
        for _ in range(300)
    ]
    assert chance_jaccard(a, b, n) == pytest.approx(np.mean(draws), rel=0.05)
    assert chance_jaccard(0, 0, n) is None
