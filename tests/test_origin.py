"""The origin study: the seed's numbers where the seed is right, corrected where it is wrong."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from xlalign.cli import main
from xlalign.errors import RunError, XlalignError
from xlalign.store.run import load_run
from xlalign.studies.origin import OriginConfig, check_origin_run, origin_study, summarize

SEED_KEYS = (
    "z_raw_embed_last_token",
    "z_raw_embed_mean_no_bos",
    "z_l0_output_last_token",
    "z_l0_cached",
    "delta_l0_minus_embed",
    "embedding_cohen_d_pc0",
    "norm_ratio_l0_over_embed",
    "z_pca_2",
    "z_pca_5",
    "z_pca_10",
)


# ---------------------------------------------------------------------------------------------
# the seed's formulas, written out independently (they are the reference here)


def seed_z(zh: np.ndarray, en: np.ndarray, n_perms: int = 1000) -> tuple[float, float]:
    """The seed's matched_vs_scrambled_z: RandomState(42) draws, population std."""
    zh_u = zh / np.linalg.norm(zh, axis=1, keepdims=True)
    en_u = en / np.linalg.norm(en, axis=1, keepdims=True)
    matched = np.mean(np.sum(zh_u * en_u, axis=1))
    rng = np.random.RandomState(42)
    scrambled = np.array(
        [np.mean(np.sum(zh_u * en_u[rng.permutation(len(en_u))], axis=1)) for _ in range(n_perms)]
    )
    return float((matched - scrambled.mean()) / scrambled.std()), float(matched)


def pca_fit(data: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, top-k components (rows) and variance ratios from the covariance eigendecomposition."""
    mean = data.mean(axis=0)
    cov = np.cov((data - mean).T.astype(np.float64))
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    vals, vecs = vals[order], vecs[:, order]
    return mean, vecs[:, :k].T, vals[:k] / vals.sum()


@pytest.fixture(scope="module")
def seed_loop(tiny_models, problems):
    """The seed's extraction: one prompt per forward, hooks on embed_tokens and layers[0]."""
    path = tiny_models["qwen2"]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    grabbed: dict[str, np.ndarray] = {}
    h1 = model.model.embed_tokens.register_forward_hook(
        lambda m, i, o: grabbed.__setitem__("emb", o.detach().squeeze(0).float().numpy())
    )

    def l0_hook(m, i, o):
        h = o if isinstance(o, torch.Tensor) else o[0]
        grabbed["l0"] = h.detach().squeeze(0).float().numpy()

    h2 = model.model.layers[0].register_forward_hook(l0_hook)
    out: dict[str, dict[str, np.ndarray]] = {}
    for lang in ("zh", "en"):
        last, mean_all, mean_skip1, l0_last, last_ids = [], [], [], [], []
        for text in problems.text(lang):
            inputs = tok(text, return_tensors="pt")
            with torch.no_grad():
                model(**inputs)
            emb = grabbed["emb"]
            last.append(emb[-1])
            mean_all.append(emb.mean(axis=0))
            mean_skip1.append(emb[1:].mean(axis=0))
            l0_last.append(grabbed["l0"][-1])
            last_ids.append(int(inputs["input_ids"][0, -1]))
        out[lang] = {
            "embed_last": np.stack(last),
            "embed_mean": np.stack(mean_all),
            "embed_mean_skip1": np.stack(mean_skip1),
            "l0_last": np.stack(l0_last),
            "last_ids": np.array(last_ids),
        }
    h1.remove()
    h2.remove()
    return out


@pytest.fixture(scope="module")
def origin_mc(qwen_study_run):
    return origin_study(qwen_study_run, OriginConfig(null="monte-carlo"))


@pytest.fixture(scope="module")
def origin_exact(qwen_study_run):
    return origin_study(qwen_study_run, OriginConfig(null="exact"))


# ---------------------------------------------------------------------------------------------
# the seed's numbers, reproduced


def test_seed_z_values_match_a_one_prompt_at_a_time_recomputation(origin_mc, seed_loop):
    zh, en = seed_loop["zh"], seed_loop["en"]
    expected = {
        "z_raw_embed_last_token": seed_z(zh["embed_last"], en["embed_last"])[0],
        "z_l0_output_last_token": seed_z(zh["l0_last"], en["l0_last"])[0],
        # corrected: no BOS, so the mean is over every token (the seed's emb[1:] drops one)
        "z_raw_embed_mean_no_bos": seed_z(zh["embed_mean"], en["embed_mean"])[0],
    }
    for key, value in expected.items():
        assert origin_mc[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert origin_mc["z_l0_cached"] == pytest.approx(expected["z_l0_output_last_token"], rel=1e-4)
    assert origin_mc["delta_l0_minus_embed"] == pytest.approx(
        expected["z_l0_output_last_token"] - expected["z_raw_embed_last_token"], rel=1e-4
    )
    ratio = (
        np.linalg.norm(zh["l0_last"], axis=1).mean()
        / np.linalg.norm(zh["embed_last"], axis=1).mean()
    )
    assert origin_mc["norm_ratio_l0_over_embed"] == pytest.approx(ratio, rel=1e-5)
    assert origin_mc["null"] == {"method": "monte-carlo", "n_perms": 1000, "seed": 42}


def test_seed_pca_results_match(origin_mc, seed_loop):
    zh, en = seed_loop["zh"]["embed_last"], seed_loop["en"]["embed_last"]
    zh_u = zh / np.linalg.norm(zh, axis=1, keepdims=True)
    en_u = en / np.linalg.norm(en, axis=1, keepdims=True)
    mean, comps, ratios = pca_fit(np.vstack([zh_u, en_u]), 10)
    np.testing.assert_allclose(origin_mc["embedding_pca_varexp"], ratios, rtol=1e-4, atol=1e-7)
    pz, pe = (zh_u - mean) @ comps.T, (en_u - mean) @ comps.T
    d = (pz[:, 0].mean() - pe[:, 0].mean()) / np.sqrt(
        (pz[:, 0].std() ** 2 + pe[:, 0].std() ** 2) / 2
    )
    # the sign of a principal component is a convention; the size of the separation is not
    assert abs(origin_mc["embedding_cohen_d_pc0"]) == pytest.approx(abs(d), rel=1e-4)
    for k in (2, 5, 10):
        # z is invariant to the sign of each component (both sides flip together)
        assert origin_mc[f"z_pca_{k}"] == pytest.approx(seed_z(pz[:, :k], pe[:, :k])[0], rel=1e-4)


def test_every_seed_key_present_and_finite(origin_exact):
    for key in SEED_KEYS:
        assert isinstance(origin_exact[key], float) and math.isfinite(origin_exact[key]), key
    assert len(origin_exact["embedding_pca_varexp"]) == 10
    assert origin_exact["null"]["method"] == "exact"
    assert set(origin_exact["z_details"]) >= {"z_raw_embed_last_token", "z_pca_10"}


# ---------------------------------------------------------------------------------------------
# where xlalign deliberately differs from the seed


def test_no_real_token_is_dropped_from_mean_pooling(qwen_study_run, tiny_models, seed_loop):
    run = qwen_study_run
    assert run.manifest["adds_bos"] is False and run.manifest["bos_token"] is None
    # the mean is over every token: equal to the embedding rows of all the ids, averaged
    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"], dtype=torch.float32)
    table = model.get_input_embeddings().weight.detach().double().numpy()
    ids = run.token_ids("zh")
    expected = np.stack([table[r].mean(axis=0) for r in ids])
    np.testing.assert_allclose(run.array("zh", "embed", "mean"), expected, rtol=1e-5, atol=1e-6)
    # and the seed's emb[1:] would have dropped the first real token
    assert not np.allclose(seed_loop["zh"]["embed_mean_skip1"], expected, atol=1e-4)


def test_cjk_tokens_are_found(origin_exact):
    classes = origin_exact["token_classes"]
    assert classes["zh"]["cjk"] > 0 and classes["en"]["cjk"] == 0
    assert classes["zh"]["digit"] == classes["en"]["digit"] > 0  # digits split one per token
    assert classes["zh"]["special"] == classes["en"]["special"] == 0
    assert origin_exact["tokenizer"]["adds_bos"] is False


def test_identical_last_tokens_are_detected(origin_exact, seed_loop, problems):
    table = origin_exact["last_token_table"]
    same = [r for r in table if r["identical"]]
    assert len(same) == 1 and same[0]["zh"] == same[0]["en"] == "?"
    assert same[0]["count"] == sum(1 for c in problems.meta["category"] if c == 2) == 40
    assert sum(r["count"] for r in table) == 200
    ids_same = int((seed_loop["zh"]["last_ids"] == seed_loop["en"]["last_ids"]).sum())
    assert ids_same == 40


def test_degenerate_null_is_null_with_reason(origin_exact):
    embed = next(r for r in origin_exact["decomposition"] if r["site"] == "embed")
    # with the '?' pairs set aside every zh prompt ends in '。': one vector, a flat null
    assert embed["n_last_nonidentical"] == 160
    assert embed["z_last_nonidentical"] is None
    assert "zero spread" in embed["reasons"]["z_last_nonidentical"]
    l0 = next(r for r in origin_exact["decomposition"] if r["site"] == "L0")
    assert isinstance(l0["z_last_nonidentical"], float)


def test_decomposition_covers_every_site_and_is_consistent(origin_exact, qwen_study_run):
    from xlalign.metrics import matched_vs_scrambled_z

    run = qwen_study_run
    sites = [r["site"] for r in origin_exact["decomposition"]]
    assert sites == list(run.sites)
    l1 = origin_exact["decomposition"][sites.index("L1")]
    direct = matched_vs_scrambled_z(  # the studies multiply in float64 (STUDY_PRODUCTS)
        run.array("zh", "L1", "mean"), run.array("en", "L1", "mean"), products="float64"
    )
    assert l1["z_mean_full"] == pytest.approx(direct.z, rel=1e-9)
    # the shared-token mean, recomputed by hand from the stored token vectors
    ids_zh, ids_en = run.token_ids("zh"), run.token_ids("en")
    vz, ve = run.token_vectors("zh", "L1"), run.token_vectors("en", "L1")
    xs, ys = [], []
    for a, b, va, vb in zip(ids_zh, ids_en, vz, ve, strict=True):
        shared = set(a.tolist()) & set(b.tolist())
        xs.append(va[np.isin(a, list(shared))].mean(axis=0))
        ys.append(vb[np.isin(b, list(shared))].mean(axis=0))
    expect = matched_vs_scrambled_z(np.stack(xs), np.stack(ys))
    assert l1["z_mean_shared"] == pytest.approx(expect.z, rel=1e-6)
    assert l1["n_mean_shared"] == 200
    assert set(l1["z_within_category"]) == {"0", "1", "2", "3", "4"}
    assert isinstance(l1["z_stratified"], float)


def test_shared_tokens_and_context_cosine(origin_exact, qwen_study_run):
    shared = origin_exact["shared_tokens"]
    assert shared["pairs_with_shared"] == 200  # every pair shares its digits
    assert shared["by_class"]["digit"] > 0 and shared["by_class"]["cjk"] == 0
    assert shared["embedding_cosine"] == 1.0
    ctx = shared["context_cosine"]
    # no additive positions: at the embedding the same id is the same vector
    assert ctx["embed"] == pytest.approx(1.0, abs=1e-6)
    assert ctx["L0"] < 1.0 - 1e-4


def test_random_init_control_is_reported_beside(qwen_study_run, problems, tmp_path):
    from xlalign.capture.engine import extract

    control = extract(
        qwen_study_run.manifest["model"], problems, ["zh", "en"], sites="embed,L0",
        pools=("last", "mean"), output=tmp_path / "ctl", random_init_seed=3, progress=False,
    )  # fmt: skip
    res = origin_study(qwen_study_run, control=control, control_info={"seed": 3})
    ctl = res["control"]
    assert ctl["kind"] == "random-init" and ctl["seed"] == 3
    assert isinstance(ctl["z_raw_embed_last_token"], float)
    assert ctl["z_raw_embed_last_token"] != res["z_raw_embed_last_token"]
    assert [r["site"] for r in ctl["decomposition"]] == ["embed", "L0"]
    text = "\n".join(summarize(res))
    assert "random-init control" in text


# ---------------------------------------------------------------------------------------------
# CLI and bad runs


def test_origin_cli_writes_json_and_summary(qwen_study_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(qwen_study_run.path, run_dir)
    assert main(["origin", str(run_dir), "--null", "monte-carlo"]) == 0
    out = capsys.readouterr().out
    assert "tokenizer adds BOS: no" in out and "z_raw_embed_last_token" in out
    assert (run_dir / "origin.json").exists()


def test_bad_run_names_what_is_missing_and_the_flags(
    qwen_study_run, tiny_models, tmp_path, problems
):
    from xlalign.capture.engine import extract

    partial = extract(
        str(tiny_models["qwen2"]), problems, ["zh", "en"], sites="L1", pools=("first",),
        output=tmp_path / "partial", progress=False,
    )  # fmt: skip
    with pytest.raises(
        RunError, match=r"site 'embed', site 'L0', pool 'last', pool 'mean'.*--sites embed,L0"
    ):
        check_origin_run(partial)
    run_dir = tmp_path / "notokens"
    shutil.copytree(qwen_study_run.path, run_dir)
    shutil.rmtree(run_dir / "tokens")
    with pytest.raises(RunError, match=r"needs token ids.*--pool last,mean"):
        check_origin_run(load_run(run_dir))


def test_origin_cli_bad_run_is_one_line_error(tmp_path, tiny_models, problems, capsys):
    from xlalign.capture.engine import extract

    extract(
        str(tiny_models["qwen2"]), problems, ["zh", "en"], sites="L1", pools=("last",),
        output=tmp_path / "r", progress=False,
    )  # fmt: skip
    assert main(["origin", str(tmp_path / "r")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after any loading bar
    assert last.startswith("xlalign: error:") and "xlalign extract" in last


@pytest.mark.minilm
def test_real_minilm_origin(minilm_path, tmp_path):
    from xlalign.capture.engine import extract
    from xlalign.data.problems import generate_problems

    corpus = generate_problems(50, 42)
    run = extract(
        str(minilm_path), corpus, ["zh", "en"], sites="embed,L0,L5", pools=("last", "mean", "tokens"),
        output=tmp_path / "minilm", progress=False,
    )  # fmt: skip
    res = origin_study(run)
    assert res["positions"]["has_additive_positions"] is True
    assert res["token_classes"]["zh"]["special"] == res["token_classes"]["en"]["special"] == 100
    # [CLS] and [SEP] are special; every prompt ends in [SEP], so the last-token analyses use
    # the last non-special token instead of a token every pair shares
    assert "last non-special token" in res["last_token"]
    table = res["last_token_table"]
    assert all(r["zh"] != "[SEP]" and r["en"] != "[SEP]" for r in table)
    assert sum(r["count"] for r in table) == 50
    by_en = {r["en"] for r in table}
    assert by_en <= {".", "?", ")"}, by_en
    vecs = run.token_vectors("en", "embed")
    pos = [int(np.flatnonzero(~m)[-1]) for m in run.special_tokens_mask("en")]
    expect = np.stack([v[p] for v, p in zip(vecs, pos, strict=True)])
    zh_pos = [int(np.flatnonzero(~m)[-1]) for m in run.special_tokens_mask("zh")]
    zh_expect = np.stack(
        [v[p] for v, p in zip(run.token_vectors("zh", "embed"), zh_pos, strict=True)]
    )
    from xlalign.metrics import matched_vs_scrambled_z

    assert res["z_raw_embed_last_token"] == pytest.approx(
        matched_vs_scrambled_z(zh_expect, expect, products="float64").z, rel=1e-9
    )
    tok = run.tokenizer()
    ids = run.token_ids("en")[0]
    mask = run.special_tokens_mask("en")[0]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert mask[0] and mask[-1] and not mask[1:-1].any()
    summary = "\n".join(summarize(res))
    assert "additive position embeddings at embed: yes" in summary
    assert "unknown-token rate" in summary  # the English-centric vocabulary misses Chinese


def test_origin_in_one_step_from_model_and_corpus(tiny_models, problems_jsonl, tmp_path, capsys):
    out = tmp_path / "one-step"
    code = main(
        ["origin", "--model", str(tiny_models["llama"]), "--data", str(problems_jsonl),
         "--langs", "zh,en", "-o", str(out), "--sites", "embed,L0,L1", "--control",
         "random-init", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    res = json.loads((out / "origin.json").read_text())
    assert [r["site"] for r in res["decomposition"]] == ["embed", "L0", "L1"]
    assert res["control"]["seed"] == 0
    assert load_run(out / "control-random-init").manifest["random_init_seed"] == 0
    assert "random-init control" in capsys.readouterr().out


def test_cached_npz_is_reported_as_z_l0_cached(qwen_study_run, tmp_path):
    npz = tmp_path / "all_layers_lasttok.npz"
    assert main(["export-npz", str(qwen_study_run.path), "--pool", "last", "-o", str(npz)]) == 0
    res = origin_study(qwen_study_run, cached_npz=npz)
    assert res["z_l0_cached"] == res["z_l0_output_last_token"]
    assert res["z_l0_cached_source"] == str(npz)
    np.savez(tmp_path / "bad.npz", zh_L1=np.zeros((3, 2)))
    with pytest.raises(XlalignError, match=r"bad\.npz: missing key\(s\) zh_L0, en_L0"):
        origin_study(qwen_study_run, cached_npz=tmp_path / "bad.npz")
