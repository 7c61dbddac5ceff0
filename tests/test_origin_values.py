"""Every key of the origin decomposition against plain transformers hidden states.

The reference runs each prompt alone through the model with ``output_hidden_states=True``,
tokenises with the tokenizer's own call (``return_special_tokens_mask=True``), and computes each
number from its definition in float64 (exact permutation moments written out over the full
``N x N`` cosine matrix). Nothing here calls xlalign's metrics or the origin module's helpers.
Two tokenizers: Qwen2-style byte-level BPE (no special tokens in a prompt) and BERT-style
WordPiece ([CLS] ... [SEP], and [UNK] for characters it never saw), so masks that confuse
special, shared and non-shared tokens give different numbers.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from references import z_from_cosines
from xlalign.data.corpus import ParallelCorpus
from xlalign.models.testing import build_tiny_model
from xlalign.studies.origin import OriginConfig, origin_study

N_ROWS = 40
# Capture batches prompts in float32; the reference runs them one at a time. Cosines then agree
# to ~1e-6, and a z (a cosine difference over a null sd of ~1e-2 here) to ~1e-4 absolute.
REL = 1e-4
ABS_Z = 1e-3
ABS_COS = 1e-5


# ---------------------------------------------------------------------------------------------
# references


def unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def exact_z(x: np.ndarray, y: np.ndarray, strata: Any = None) -> float | None:
    """Matched-vs-scrambled z over all (within-stratum) permutations, from the full matrix."""
    return z_from_cosines(unit(x) @ unit(y).T, strata)


CJK = ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0xAC00, 0xD7AF))


def token_class(text: str, special: bool) -> str:
    """The classes of docs (tokens.py docstring), from the decoded text."""
    if special:
        return "special"
    if "\ufffd" in text:
        return "partial"
    core = text.strip()
    if not core:
        return "space"
    if any(lo <= ord(c) <= hi for c in core for lo, hi in CJK):
        return "cjk"
    if all(unicodedata.category(c) == "Nd" for c in core):
        return "digit"
    if all(c.isalpha() and "LATIN" in unicodedata.name(c, "") for c in core):
        return "latin"
    if all(unicodedata.category(c)[0] in "PS" for c in core):
        return "punct"
    return "other"


def decoded(tok: Any, tid: int) -> str:
    """One id's text, WordPiece's '##' continuation mark removed (not from a bare '##')."""
    text = tok.decode([int(tid)], clean_up_tokenization_spaces=False)
    return text.removeprefix("##") or text


class Reference:
    """One language's prompts through plain transformers: ids, special mask, hidden states."""

    def __init__(self, model: Any, tok: Any, texts: list[str], sites: dict[str, int]) -> None:
        self.ids: list[np.ndarray] = []
        self.special: list[np.ndarray] = []
        self.states: dict[str, list[np.ndarray]] = {s: [] for s in sites}
        for text in texts:
            enc = tok(text, return_special_tokens_mask=True, return_tensors="pt")
            mask = enc.pop("special_tokens_mask")[0].numpy().astype(bool)
            with torch.no_grad():
                hs = model(**enc, output_hidden_states=True).hidden_states
            self.ids.append(enc["input_ids"][0].numpy())
            self.special.append(mask)
            for site, k in sites.items():
                self.states[site].append(hs[k][0].double().numpy())

    def last_pos(self) -> list[int]:
        """The last non-special token (every BERT prompt ends in [SEP])."""
        return [int(np.flatnonzero(~m)[-1]) for m in self.special]

    def last(self, site: str) -> np.ndarray:
        return np.stack([h[p] for h, p in zip(self.states[site], self.last_pos(), strict=True)])

    def last_ids(self) -> np.ndarray:
        return np.array([int(r[p]) for r, p in zip(self.ids, self.last_pos(), strict=True)])

    def mean(self, site: str, masks: list[np.ndarray] | None = None) -> tuple[np.ndarray, list]:
        masks = masks if masks is not None else [~m for m in self.special]
        rows = [i for i, m in enumerate(masks) if m.any()]
        out = [self.states[site][i][masks[i]].mean(axis=0) for i in rows]
        return (np.stack(out) if out else np.zeros((0, 1))), rows


def shared_ids(a: Reference, b: Reference, i: int) -> set[int]:
    return set(a.ids[i][~a.special[i]].tolist()) & set(b.ids[i][~b.special[i]].tolist())


def reference_decomposition(
    a: Reference, b: Reference, site: str, categories: list[int]
) -> dict[str, Any]:
    n = len(a.ids)
    out: dict[str, Any] = {}
    out["z_mean_full"] = exact_z(a.mean(site)[0], b.mean(site)[0])
    lx, ly = a.last(site), b.last(site)
    out["z_last"] = exact_z(lx, ly)
    keep = a.last_ids() != b.last_ids()
    out["n_last_nonidentical"] = int(keep.sum())
    out["z_last_nonidentical"] = exact_z(lx[keep], ly[keep])
    shared_x = [np.isin(a.ids[i], list(shared_ids(a, b, i))) & ~a.special[i] for i in range(n)]
    shared_y = [np.isin(b.ids[i], list(shared_ids(a, b, i))) & ~b.special[i] for i in range(n)]
    for key, (mx, my) in {
        "mean_shared": (shared_x, shared_y),
        "mean_nonshared": (
            [~m & ~s for m, s in zip(shared_x, a.special, strict=True)],
            [~m & ~s for m, s in zip(shared_y, b.special, strict=True)],
        ),
    }.items():
        xs, rx = a.mean(site, mx)
        ys, ry = b.mean(site, my)
        both = sorted(set(rx) & set(ry))
        out["n_" + key] = len(both)
        out["z_" + key] = exact_z(xs[[rx.index(r) for r in both]], ys[[ry.index(r) for r in both]])
    out["z_stratified"] = exact_z(lx, ly, strata=categories)
    cats = np.asarray(categories)
    out["z_within_category"] = {
        str(c): exact_z(lx[cats == c], ly[cats == c]) for c in sorted(set(categories))
    }
    total, count = 0.0, 0
    for i in range(n):
        ux, uy = unit(a.states[site][i]), unit(b.states[site][i])
        for tid in shared_ids(a, b, i):
            jx = np.flatnonzero((a.ids[i] == tid) & ~a.special[i])
            jy = np.flatnonzero((b.ids[i] == tid) & ~b.special[i])
            c = ux[jx] @ uy[jy].T
            total, count = total + c.sum(), count + c.size
    out["context_cosine"] = total / count if count else None
    return out


def close(got: Any, want: Any, abs_tol: float = ABS_Z) -> bool:
    if want is None or got is None:
        return got is want
    return got == pytest.approx(want, rel=REL, abs=abs_tol)


# ---------------------------------------------------------------------------------------------
# fixtures: one small run per tokenizer style, and its reference


@pytest.fixture(scope="module", params=["qwen2", "bert"])
def case(request, bpe_tokenizer, wordpiece_tokenizer, problems, tmp_path_factory) -> dict[str, Any]:
    from xlalign.capture.engine import extract

    arch = request.param
    # only the two models this module needs (not the session's four): mutation runs rebuild them
    root = tmp_path_factory.mktemp("models")
    tok = wordpiece_tokenizer if arch == "bert" else bpe_tokenizer
    path = build_tiny_model(arch, tok, root / arch)
    corpus = problems.head(N_ROWS)
    if arch == "bert":
        # characters the WordPiece never saw become [UNK] (not a special token)
        zh = tuple(t + "ω" if i % 4 == 0 else t for i, t in enumerate(corpus.text("zh")))
        corpus = ParallelCorpus(corpus.ids, {"zh": zh, "en": corpus.text("en")}, corpus.meta)
    # every site has a hidden_states entry: for the decoder skip the last block's raw output
    # (hidden_states[-1] is after the final norm, stored as 'final')
    sites = "embed,L0-L3" if arch == "bert" else "embed,L0-L2,final"
    site_index = (
        {"embed": 0, "L0": 1, "L1": 2, "L2": 3, "L3": 4}
        if arch == "bert"
        else {"embed": 0, "L0": 1, "L1": 2, "L2": 3, "final": 4}
    )
    run = extract(
        str(path), corpus, ["zh", "en"], sites=sites, pools=("last", "mean", "tokens"),
        batch_size=7, output=tmp_path_factory.mktemp("origin") / arch, progress=False,
    )  # fmt: skip
    auto = AutoModel if arch == "bert" else AutoModelForCausalLM
    model = auto.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    refs = {
        lang: Reference(model, tok, list(corpus.text(lang)), site_index) for lang in ("zh", "en")
    }
    result = origin_study(run, OriginConfig(null="exact"))
    return {
        "arch": arch,
        "run": run,
        "tok": tok,
        "refs": refs,
        "result": result,
        "categories": [int(c) for c in corpus.meta["category"]],
        "sites": list(site_index),
    }


# ---------------------------------------------------------------------------------------------
# tests


def test_the_cases_exercise_what_the_masks_separate(case: dict[str, Any]) -> None:
    a, b = case["refs"]["zh"], case["refs"]["en"]
    assert set(case["categories"]) == {0, 1, 2, 3, 4}
    if case["arch"] == "bert":
        assert all(m[0] and m[-1] for m in a.special)  # [CLS] ... [SEP]
        assert sum(int((r == case["tok"].unk_token_id).sum()) for r in a.ids) == 10
    else:
        assert not any(m.any() for m in a.special)
    # some pairs share tokens, and their prompts hold non-shared tokens as well
    assert all(shared_ids(a, b, i) for i in range(N_ROWS))


def test_every_decomposition_key_matches_plain_transformers(case: dict[str, Any]) -> None:
    a, b = case["refs"]["zh"], case["refs"]["en"]
    got_sites = [r["site"] for r in case["result"]["decomposition"]]
    assert got_sites == case["sites"]
    for rec in case["result"]["decomposition"]:
        want = reference_decomposition(a, b, rec["site"], case["categories"])
        for key in (
            "z_mean_full",
            "z_mean_shared",
            "z_mean_nonshared",
            "z_last",
            "z_last_nonidentical",
            "z_stratified",
        ):
            assert close(rec[key], want[key]), (rec["site"], key, rec[key], want[key])
            assert (rec[key] is None) == (key in rec["reasons"])
        for key in ("n_last_nonidentical", "n_mean_shared", "n_mean_nonshared"):
            assert rec[key] == want[key], (rec["site"], key)
        assert set(rec["z_within_category"]) == set(want["z_within_category"])
        for cat, z in want["z_within_category"].items():
            assert close(rec["z_within_category"][cat], z), (rec["site"], cat)
        ctx = case["result"]["shared_tokens"]["context_cosine"][rec["site"]]
        assert close(ctx, want["context_cosine"], ABS_COS), rec["site"]


def test_decomposition_values_are_told_apart(case: dict[str, Any]) -> None:
    # the keys differ on this data, so computing one in place of another is caught above
    rec = case["result"]["decomposition"][2]
    values = [
        rec[k]
        for k in ("z_mean_full", "z_mean_shared", "z_mean_nonshared", "z_last", "z_stratified")
    ]
    assert all(v is not None for v in values)
    assert len({round(v, 6) for v in values}) == len(values)
    assert rec["z_last_nonidentical"] != rec["z_last"]
    within = [v for v in rec["z_within_category"].values() if v is not None]
    assert len({round(v, 6) for v in within}) == len(within) >= 3


def test_token_counts_unk_rate_and_last_tokens(case: dict[str, Any]) -> None:
    res, tok = case["result"], case["tok"]
    specials = set(tok.all_special_ids) - {tok.unk_token_id}
    for lang in ("zh", "en"):
        ref = case["refs"][lang]
        counts = Counter(
            token_class(decoded(tok, t), int(t) in specials) for row in ref.ids for t in row
        )
        got = res["token_classes"][lang]
        assert {k: v for k, v in got.items() if v} == dict(counts), lang
        n_tokens = sum(len(r) for r in ref.ids)
        n_unk = sum(int((r == tok.unk_token_id).sum()) for r in ref.ids) if tok.unk_token else 0
        assert res["tokenizer"]["unk_rate"][lang] == pytest.approx(n_unk / n_tokens)
    if case["arch"] == "bert":
        assert res["tokenizer"]["unk_rate"]["zh"] > 0
    a, b = case["refs"]["zh"], case["refs"]["en"]
    pairs = Counter(zip(a.last_ids().tolist(), b.last_ids().tolist(), strict=True))
    table = {(r["zh_id"], r["en_id"]): r for r in res["last_token_table"]}
    assert {k: r["count"] for k, r in table.items()} == dict(pairs)
    assert all(r["identical"] == (k[0] == k[1]) for k, r in table.items())
    shared = res["shared_tokens"]
    per_pair = [shared_ids(a, b, i) for i in range(N_ROWS)]
    assert shared["total"] == sum(len(s) for s in per_pair)
    assert shared["pairs_with_shared"] == sum(bool(s) for s in per_pair)
    by_class = Counter(token_class(decoded(tok, t), False) for s in per_pair for t in s)
    assert {k: v for k, v in shared["by_class"].items() if v} == dict(by_class)


def test_seed_keys_and_norms_match_plain_transformers(case: dict[str, Any]) -> None:
    res = case["result"]
    a, b = case["refs"]["zh"], case["refs"]["en"]
    assert close(res["z_raw_embed_last_token"], exact_z(a.last("embed"), b.last("embed")))
    assert close(res["z_l0_output_last_token"], exact_z(a.last("L0"), b.last("L0")))
    assert close(res["z_raw_embed_mean_no_bos"], exact_z(a.mean("embed")[0], b.mean("embed")[0]))
    for lang, ref in (("zh", a), ("en", b)):
        for site in ("embed", "L0"):
            norm = np.linalg.norm(ref.last(site), axis=1).mean()
            assert res["norms_last_token"][lang][site] == pytest.approx(norm, rel=1e-5)
    assert res["norm_ratio_l0_over_embed"] == pytest.approx(
        np.linalg.norm(a.last("L0"), axis=1).mean()
        / np.linalg.norm(a.last("embed"), axis=1).mean(),
        rel=1e-5,
    )
    assert res["n_pairs"] == N_ROWS and res["languages"] == ["zh", "en"]
    for lang, ref in (("zh", a), ("en", b)):
        for site in ("embed", "L0"):
            rows, counts = np.unique(np.asarray(ref.last(site)), axis=0, return_counts=True)
            got = res["identical_last_token"][lang][site]
            assert (got["distinct"], got["largest_group"]) == (len(rows), counts.max())
            flag = counts.max() >= 0.2 * N_ROWS or len(rows) <= 0.5 * N_ROWS
            assert got["identical"] == flag, (lang, site)
