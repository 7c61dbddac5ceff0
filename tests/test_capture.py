"""Capture parity: batched extraction equals a plain one-prompt-at-a-time hooked forward."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

import xlalign
from xlalign.capture.engine import ZeroNormWarning
from xlalign.capture.hooks import SiteCapture
from xlalign.data.corpus import ParallelCorpus
from xlalign.errors import XlalignError
from xlalign.models.loading import load_model

ARCHS = ("qwen2", "llama", "gpt2", "bert")
ALL_POOLS = ("last", "mean", "first", "weighted", "tokens")
RTOL = 1e-5


@pytest.fixture(scope="module")
def small(problems: ParallelCorpus) -> ParallelCorpus:
    # 40 rows: batch size 32 gives one full and one partial batch, 7 gives a ragged tail.
    return problems.head(40)


# ---------------------------------------------------------------------------------------------
# the independent reference: the seed's method, one prompt per full forward, numpy float64


def _parts(model, arch):
    """(embedding hook targets, blocks) of the full model, written out per family."""
    if arch in ("qwen2", "llama"):
        return [model.model.embed_tokens], list(model.model.layers)
    if arch == "gpt2":
        return [model.transformer.wte, model.transformer.wpe], list(model.transformer.h)
    return [model.embeddings], list(model.encoder.layer)


def reference_capture(path: Path, arch: str, texts) -> dict[str, list[dict[str, np.ndarray]]]:
    """Per prompt: ``{"tokens": {site: (T, d) float64}, "special": (T,) bool, "hs": [...]}``."""
    auto = AutoModel if arch == "bert" else AutoModelForCausalLM
    model = auto.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    embeds, blocks = _parts(model, arch)
    captured: dict[str, np.ndarray] = {}

    def keep(name):
        def hook(module, args, output):
            h = output if isinstance(output, torch.Tensor) else output[0]
            value = h.detach().squeeze(0).double().numpy()
            # GPT-2: the embedding output is wte(ids) + wpe(positions), two hooked modules.
            captured[name] = captured[name] + value if name in captured else value

        return hook

    handles = [m.register_forward_hook(keep("embed")) for m in embeds]
    handles += [b.register_forward_hook(keep(f"L{i}")) for i, b in enumerate(blocks)]
    out = []
    try:
        for text in texts:
            enc = tok(text, return_tensors="pt", return_special_tokens_mask=True)
            special = enc.pop("special_tokens_mask")[0].numpy().astype(bool)
            captured.clear()
            with torch.no_grad():
                result = model(**enc, output_hidden_states=True)
            hs = [h.squeeze(0).double().numpy() for h in result.hidden_states]
            sites = dict(captured)
            if arch != "bert":
                sites["final"] = hs[-1]
            out.append({"sites": sites, "special": special, "hs": hs})
    finally:
        for h in handles:
            h.remove()
    return out


def pool_reference(h: np.ndarray, special: np.ndarray, pool: str) -> np.ndarray:
    """Pool one prompt's ``(T, d)`` float64 states the plain way."""
    if pool == "last":  # the last token the tokenizer did not add
        return h[np.flatnonzero(~special)[-1]]
    if pool == "eos":
        assert special[-1]
        return h[-1]
    if pool == "first":
        return h[0]
    if pool == "mean":
        return h[~special].mean(axis=0)
    if pool == "weighted":
        t = np.arange(1, len(h) + 1, dtype=np.float64)
        return (t[:, None] * h).sum(axis=0) / t.sum()
    raise ValueError(pool)


def assert_rows_close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Every row within ``RTOL`` of its reference, relative to the reference row's norm."""
    assert actual.shape == expected.shape, what
    err = np.linalg.norm(actual - expected, axis=-1)
    scale = np.maximum(np.linalg.norm(expected, axis=-1), 1e-30)
    worst = float((err / scale).max())
    assert worst <= RTOL, f"{what}: max relative error {worst:.2e}"


@pytest.fixture(scope="module")
def references(tiny_models, small):
    cache: dict[str, dict[str, list]] = {}

    def get(arch: str) -> dict[str, list]:
        if arch not in cache:
            cache[arch] = {
                lang: reference_capture(tiny_models[arch], arch, small.text(lang))
                for lang in small.languages
            }
        return cache[arch]

    return get


# ---------------------------------------------------------------------------------------------
# parity


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("batch_size", [1, 7, 32])
@pytest.mark.parametrize("arch", ARCHS)
def test_batched_capture_equals_one_prompt_reference(
    tiny_models, small, references, tmp_path, arch, batch_size, padding_side
):
    run = xlalign.extract(
        str(tiny_models[arch]),
        small,
        ["zh", "en"],
        sites="all",
        pools=ALL_POOLS + (("eos",) if arch == "bert" else ()),
        batch_size=batch_size,
        padding_side=padding_side,
        output=tmp_path / "run",
        progress=False,
    )
    expected_sites = ["embed", "L0", "L1", "L2", "L3"] + ([] if arch == "bert" else ["final"])
    assert list(run.sites) == expected_sites
    ref = references(arch)
    for lang in ("zh", "en"):
        for site in run.sites:
            for pool in ("last", "mean", "first", "weighted") + (
                ("eos",) if arch == "bert" else ()
            ):
                expected = np.stack(
                    [pool_reference(r["sites"][site], r["special"], pool) for r in ref[lang]]
                )
                got = run.array(lang, site, pool)
                assert got.dtype == np.float32 and got.shape == (len(small), 32)
                assert_rows_close(got, expected, f"{arch} {lang} {site} {pool}")
            vectors = run.token_vectors(lang, site)
            for i, r in enumerate(ref[lang]):
                assert_rows_close(vectors[i], r["sites"][site], f"{arch} {lang} {site} tokens {i}")


@pytest.mark.parametrize("arch", ARCHS)
def test_sites_match_output_hidden_states(tiny_models, small, references, tmp_path, arch):
    """embed = hidden_states[0]; L{i} = hidden_states[i+1] for inner blocks; final = [-1]."""
    run = xlalign.extract(
        str(tiny_models[arch]), small, "zh,en", pools="tokens", batch_size=7,
        output=tmp_path / "run", progress=False,
    )  # fmt: skip
    n = run.n_layers
    for i, r in enumerate(references(arch)["en"]):
        hs = r["hs"]
        assert len(hs) == n + 1
        vectors = {site: run.token_vectors("en", site)[i] for site in run.sites}
        assert_rows_close(vectors["embed"], hs[0], "embed vs hidden_states[0]")
        for k in range(n - 1):
            assert_rows_close(vectors[f"L{k}"], hs[k + 1], f"L{k} vs hidden_states[{k + 1}]")
        last_block = vectors[f"L{n - 1}"]
        if arch == "bert":  # no final norm: the last hidden state is the last block's output
            assert "final" not in run.sites
            assert_rows_close(last_block, hs[-1], "bert last block vs hidden_states[-1]")
        else:
            assert_rows_close(vectors["final"], hs[-1], "final vs hidden_states[-1]")
            # the last block's site is its raw output, before the final norm
            assert_rows_close(last_block, r["sites"][f"L{n - 1}"], "last block raw output")
            rel = np.linalg.norm(last_block - hs[-1]) / np.linalg.norm(hs[-1])
            assert rel > 1e-2, f"{arch}: L{n - 1} should differ from hidden_states[-1]"


# ---------------------------------------------------------------------------------------------
# early stop, sites and pools


def test_forward_stops_after_the_deepest_site(tiny_models, small, tmp_path):
    loaded = load_model(str(tiny_models["qwen2"]))
    calls = {name: 0 for name in ["L0", "L1", "L2", "L3", "norm", "lm_head"]}

    def count(name):
        def hook(*_):
            calls[name] += 1

        return hook

    for i, block in enumerate(loaded.adapter.blocks):
        block.register_forward_hook(count(f"L{i}"))
    loaded.adapter.final_norm.register_forward_hook(count("norm"))
    loaded.model.lm_head.register_forward_hook(count("lm_head"))

    xlalign.extract(
        loaded, small, "zh,en", sites="embed,L0", batch_size=8, output=tmp_path / "a",
        progress=False,
    )  # fmt: skip
    assert calls == {"L0": 10, "L1": 0, "L2": 0, "L3": 0, "norm": 0, "lm_head": 0}

    for k in calls:
        calls[k] = 0
    xlalign.extract(
        loaded, small, "zh,en", sites="embed", batch_size=8, output=tmp_path / "b", progress=False
    )
    assert sum(calls.values()) == 0  # embed is the input of block 0: no block runs

    xlalign.extract(
        loaded, small, "zh,en", sites="all", batch_size=8, output=tmp_path / "c", progress=False
    )
    assert calls["L3"] == 10 and calls["norm"] == 10 and calls["lm_head"] == 0


def test_site_subset_and_ranges(tiny_models, small, tmp_path):
    run = xlalign.extract(
        str(tiny_models["llama"]), small, ["en", "zh"], sites="final,L1-L2,embed", pools="last",
        batch_size=16, output=tmp_path / "run", progress=False,
    )  # fmt: skip
    assert run.sites == ("embed", "L1", "L2", "final")
    assert run.languages == ("en", "zh")
    full = xlalign.extract(
        str(tiny_models["llama"]), small, ["en", "zh"], pools="last", batch_size=16,
        output=tmp_path / "full", progress=False,
    )  # fmt: skip
    for site in run.sites:
        np.testing.assert_array_equal(run["en", site, "last"], full["en", site, "last"])


def test_hooks_are_removed_after_capture(tiny_models, small, tmp_path):
    loaded = load_model(str(tiny_models["gpt2"]))
    before = [len(b._forward_hooks) + len(b._forward_pre_hooks) for b in loaded.adapter.blocks]
    with SiteCapture(loaded, ["embed", "L1", "final"]):
        pass
    after = [len(b._forward_hooks) + len(b._forward_pre_hooks) for b in loaded.adapter.blocks]
    assert before == after
    xlalign.extract(loaded, small, "zh,en", output=tmp_path / "r", progress=False)
    after = [len(b._forward_hooks) + len(b._forward_pre_hooks) for b in loaded.adapter.blocks]
    assert before == after


def test_mean_excludes_special_tokens_by_mask_not_position(tiny_models, small, tmp_path):
    run = xlalign.extract(
        str(tiny_models["bert"]), small, "zh,en", sites="embed", pools="mean,tokens",
        batch_size=7, output=tmp_path / "r", progress=False,
    )  # fmt: skip
    tok = run.tokenizer()
    specials = run.special_tokens_mask("en")
    ids = run.token_ids("en")
    vectors = run.token_vectors("en", "embed")
    mean = run.array("en", "embed", "mean")
    for i in range(len(small)):
        assert ids[i][0] == tok.cls_token_id and ids[i][-1] == tok.sep_token_id
        assert specials[i][0] and specials[i][-1] and not specials[i][1:-1].any()
        np.testing.assert_allclose(mean[i], vectors[i][1:-1].mean(axis=0), rtol=1e-5, atol=1e-6)
    assert run.manifest["adds_bos"] is True and run.manifest["bos_token"] == "[CLS]"


def test_qwen2_style_tokenizer_adds_no_bos_and_skips_nothing(tiny_models, small, tmp_path):
    run = xlalign.extract(
        str(tiny_models["qwen2"]), small, "zh,en", sites="embed", pools="mean,first,tokens",
        batch_size=7, output=tmp_path / "r", progress=False,
    )  # fmt: skip
    assert run.manifest["adds_bos"] is False and run.manifest["bos_token"] is None
    tok = run.tokenizer()
    for lang in ("zh", "en"):
        vectors = run.token_vectors(lang, "embed")
        for i, ids in enumerate(run.token_ids(lang)):
            assert ids.tolist() == tok(small.text(lang)[i])["input_ids"]
            np.testing.assert_allclose(
                run[lang, "embed", "mean"][i], vectors[i].mean(axis=0), rtol=1e-5, atol=1e-6
            )
            np.testing.assert_array_equal(run[lang, "embed", "first"][i], vectors[i][0])


def test_bfloat16_capture_stores_float32(tiny_models, small, tmp_path):
    run = xlalign.extract(
        str(tiny_models["qwen2"]), small, "zh,en", sites="L0,final", pools="last,mean",
        batch_size=16, dtype="bfloat16", output=tmp_path / "r", progress=False,
    )  # fmt: skip
    assert run.manifest["dtype"] == "bfloat16"
    fp32 = xlalign.extract(
        str(tiny_models["qwen2"]), small, "zh,en", sites="L0,final", pools="last,mean",
        batch_size=16, output=tmp_path / "f", progress=False,
    )  # fmt: skip
    a, b = run["zh", "final", "mean"], fp32["zh", "final", "mean"]
    assert a.dtype == np.float32
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99


def test_random_init_control_changes_weights_not_architecture(tiny_models, small, tmp_path):
    path = str(tiny_models["qwen2"])
    trained = xlalign.extract(path, small, "zh,en", pools="last", output=tmp_path / "t",
                              progress=False)  # fmt: skip
    control = xlalign.extract(path, small, "zh,en", pools="last", output=tmp_path / "c",
                              random_init_seed=1, progress=False)  # fmt: skip
    again = xlalign.extract(path, small, "zh,en", pools="last", output=tmp_path / "d",
                            random_init_seed=1, progress=False)  # fmt: skip
    # seed 1: the fixture built the "trained" tiny model with torch.manual_seed(0)
    assert (
        control.manifest["random_init_seed"] == 1 and trained.manifest["random_init_seed"] is None
    )
    assert control.sites == trained.sites and control.d_model == trained.d_model
    assert not np.allclose(control["zh", "L0", "last"], trained["zh", "L0", "last"])
    np.testing.assert_array_equal(control["zh", "L0", "last"], again["zh", "L0", "last"])


# ---------------------------------------------------------------------------------------------
# numerical guards


def test_inf_or_nan_stops_the_run_naming_site_language_and_prompt(tiny_models, small, tmp_path):
    loaded = load_model(str(tiny_models["qwen2"]))
    with torch.no_grad():
        loaded.adapter.blocks[2].mlp.down_proj.weight.fill_(float("inf"))
    with pytest.raises(XlalignError, match=r"site L2, language zh, prompt id \d+.*bfloat16"):
        xlalign.extract(
            loaded, small, "zh,en", sites="L0-L3", batch_size=8, output=tmp_path / "r",
            progress=False,
        )  # fmt: skip
    with pytest.raises(XlalignError, match="incomplete"):
        xlalign.load_run(tmp_path / "r")


def test_zero_norm_vectors_are_reported_not_divided(tiny_models, small, tmp_path):
    loaded = load_model(str(tiny_models["qwen2"]))
    with torch.no_grad():
        loaded.adapter.embedding.weight.zero_()
    with pytest.warns(ZeroNormWarning, match="norm 0"):
        run = xlalign.extract(
            loaded, small, "zh,en", sites="embed", pools="last,mean", batch_size=8,
            output=tmp_path / "r", progress=False,
        )  # fmt: skip
    zero = run.manifest["zero_norm_vectors"]
    assert run.manifest["n_zero_norm_vectors"] == 2 * 2 * len(small) == len(zero)
    assert {(z["site"], z["lang"], z["pool"]) for z in zero} == {
        ("embed", lang, pool) for lang in ("zh", "en") for pool in ("last", "mean")
    }
    assert {z["id"] for z in zero} == set(small.ids)
    for lang in ("zh", "en"):
        assert np.isfinite(run[lang, "embed", "mean"]).all()
        assert not run[lang, "embed", "mean"].any()


# ---------------------------------------------------------------------------------------------
# the real all-MiniLM-L6-v2


@pytest.mark.minilm
def test_minilm_special_tokens_found_and_left_out_of_mean(minilm_path, small, tmp_path):
    run = xlalign.extract(
        str(minilm_path), small, "zh,en", sites="embed,L5", pools="mean,last,eos,tokens",
        batch_size=7, padding_side="left", output=tmp_path / "r", progress=False,
    )  # fmt: skip
    m = run.manifest
    assert m["family"] == "bert" and m["has_additive_positions"] is True
    assert m["adds_bos"] is True and m["bos_token"] == "[CLS]"
    assert run.sites == ("embed", "L5")  # BERT has no final norm
    tok = run.tokenizer()
    for lang in ("zh", "en"):
        ids, specials = run.token_ids(lang), run.special_tokens_mask(lang)
        for site in run.sites:
            vectors = run.token_vectors(lang, site)
            mean, last, eos = (run[lang, site, p] for p in ("mean", "last", "eos"))
            for i in range(len(small)):
                assert ids[i][0] == tok.cls_token_id and ids[i][-1] == tok.sep_token_id
                assert specials[i].tolist() == [True] + [False] * (len(ids[i]) - 2) + [True]
                expected = vectors[i][1:-1].astype(np.float64).mean(axis=0)
                assert_rows_close(mean[i][None], expected[None], f"minilm {lang} {site} mean")
                np.testing.assert_array_equal(last[i], vectors[i][-2])  # the token before [SEP]
                np.testing.assert_array_equal(eos[i], vectors[i][-1])  # [SEP]

    # one prompt alone through the plain model gives the same vectors
    model = AutoModel.from_pretrained(minilm_path).eval()
    enc = tok(small.text("en")[0], return_tensors="pt")
    with torch.no_grad():
        hs = model(**enc, output_hidden_states=True).hidden_states
    assert_rows_close(run.token_vectors("en", "embed")[0], hs[0][0].double().numpy(), "embed")
    assert_rows_close(run.token_vectors("en", "L5")[0], hs[-1][0].double().numpy(), "L5")
