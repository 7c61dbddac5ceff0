"""The lens's answer numbers and intervals against independent computations, in the fast tier.

Issue 25: an answer's last token read instead of its first, a logit reported as a probability,
a rank that counts the answer itself and "95%" intervals that are 90% ones all survived the
fast tier. Here a tiny Qwen2 decoder runs each prompt alone through plain transformers; the
answer's first token comes from the tokenizer, its probability from a float64 softmax of the
model's own logits, its rank by counting the vocabulary; the intervals are checked by their
coverage on simulated data.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xlalign.capture.engine import extract
from xlalign.data.corpus import ParallelCorpus
from xlalign.studies.lens import LensConfig, answer_token_ids, lens_study, mean_ci

N_ROWS = 8
MULTI = ("apples", "total", "many", "oranges", "baskets", "How")  # several tokens each


@pytest.fixture(scope="module")
def answered(tiny_models, bpe_tokenizer, problems, tmp_path_factory):
    """A run of the tiny Qwen2 whose answers are, on even rows, the model's own top token at
    the prompt's last token (so rank 1 occurs) and, on odd rows, words of several tokens."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"]).eval()
    base = problems.head(N_ROWS)
    probs, logits = {}, {}
    with torch.no_grad():
        for lang in ("zh", "en"):
            rows = []
            for text in base.text(lang):
                ids = bpe_tokenizer(text, return_tensors="pt")["input_ids"]
                rows.append(model(ids).logits[0, -1].double().numpy())
            logits[lang] = np.stack(rows)
            probs[lang] = np.exp(logits[lang] - logits[lang].max(1, keepdims=True))
            probs[lang] /= probs[lang].sum(1, keepdims=True)
    answers = []
    for i in range(N_ROWS):
        if i % 2 == 0:  # the zh prompt's own top token, as text
            answers.append(bpe_tokenizer.decode([int(probs["zh"][i].argmax())]))
        else:
            answers.append(MULTI[i % len(MULTI)])
    meta = dict(base.meta)
    meta["answer_en"] = tuple(answers)
    corpus = ParallelCorpus(base.ids, base.texts, meta, source="answered")
    run = extract(
        str(tiny_models["qwen2"]), corpus, ["zh", "en"], sites="all", pools="last",
        batch_size=3, output=tmp_path_factory.mktemp("ans") / "run", progress=False,
        device="cpu",
    )  # fmt: skip
    return run, probs, logits, answers


def test_answer_probability_and_rank_of_the_first_token(answered, bpe_tokenizer):
    run, probs, logits, answers = answered
    last = f"L{run.n_layers - 1}"
    doc = lens_study(run, LensConfig(sites=(last, "final"), n_boot=20))
    first = [bpe_tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    # the case exposes a last-token bug: several answers end on another token than they start
    assert sum(len(t) > 1 and t[0] != t[-1] for t in first) >= 3
    by_key = {(r["site"], r["lang"], r["id"]): r for r in doc["records"]}
    rank1 = {"zh": [], "en": []}
    exact = distinct = 0
    for lang in ("zh", "en"):
        for i, row_id in enumerate(run.ids):
            p, z = probs[lang][i], logits[lang][i]
            tid = first[i][0]
            lo = 1 + int((z > z[tid] + 1e-5).sum())  # tokens clearly more probable
            hi = int((z > z[tid] - 1e-5).sum())  # ... and those within float32 noise (and itself)
            exact += lo == hi
            for site in (last, "final"):
                rec = by_key[(site, lang, row_id)]
                assert rec["answer_prob"]["en"] == pytest.approx(p[tid], rel=1e-4)
                assert lo <= rec["answer_rank"]["en"] <= hi
                if len(first[i]) > 1 and abs(z[first[i][-1]] - z[tid]) > 1e-3:
                    other = p[first[i][-1]]  # the last token's probability is another number
                    assert rec["answer_prob"]["en"] != pytest.approx(other, rel=1e-4)
                    distinct += 1
            rank1[lang].append(lo == 1 == hi)
    assert exact >= 2 * N_ROWS - 2  # ranks really decided, not all within the noise band
    assert any(rank1["zh"])  # the top token's rank is 1
    assert distinct >= 6  # first and last token's probabilities told apart on several rows
    for s in doc["summaries"]:
        ranks = np.array([by_key[(s["site"], s["lang"], i)]["answer_rank"]["en"] for i in run.ids])
        assert s["answer_rank"]["en"]["top1_share"] == pytest.approx(np.mean(ranks == 1))
        assert s["answer_rank"]["en"]["top1_share"] == pytest.approx(np.mean(rank1[s["lang"]]))
        assert s["answer_rank"]["en"]["median"] == pytest.approx(np.median(ranks))
        want = np.array([probs[s["lang"]][i][first[i][0]] for i in range(N_ROWS)])
        assert s["answer_prob"]["en"]["mean"] == pytest.approx(want.mean(), rel=1e-4)
    # probabilities, not logits: each row's answer probability and its top-k are in [0, 1]
    for rec in doc["records"]:
        assert 0 <= rec["answer_prob"]["en"] <= 1
        assert all(0 <= q <= 1 for _, q in rec["top"])


def test_answer_token_ids_take_the_first_token():
    class Tok:
        """A tokenizer whose ids are the characters' code points."""

        def __call__(self, text, add_special_tokens=True):  # transformers' default: True
            assert isinstance(text, str) and add_special_tokens is False
            return {"input_ids": [ord(c) for c in text]}

    got = answer_token_ids(Tok(), {"en": ["cat", "", None, "x"], "zh": ["猫咪", "b", 7, None]})
    assert got.dtype == np.int64
    assert got.tolist() == [[ord("c"), ord("猫")], [-1, ord("b")], [-1, -1], [ord("x"), -1]]
    assert answer_token_ids(Tok(), {}).shape == (0, 0)


@pytest.mark.parametrize("level", [0.95, 0.8])
def test_mean_ci_covers_the_mean_at_its_level(level):
    """Percentile-bootstrap intervals of a mean, on normal samples of known mean: over 2000
    samples of 100 the share whose interval holds the mean is near ``level`` (standard error
    0.5 point at 95%, 0.9 at 80%; the percentile bootstrap runs about half a point low at this
    n). A 90% interval called 95% covers about 89.5%, 4 standard errors under the bound."""
    rng = np.random.default_rng(12345)
    n, reps = 100, 2000
    hits = np.zeros(2)
    for r in range(reps):
        values = rng.normal(loc=[0.0, 3.0], scale=[1.0, 2.0], size=(n, 2))
        mean, lo, hi = mean_ci(values, n_boot=400, seed=r, level=level)
        np.testing.assert_allclose(mean, values.mean(axis=0), rtol=1e-12)
        hits += (lo <= [0.0, 3.0]) & (hi >= [0.0, 3.0])
    coverage = hits / reps
    assert np.all(coverage >= level - 0.025) and np.all(coverage <= level + 0.015), coverage


def test_lens_summaries_use_the_configured_level(answered):
    """The summaries' intervals are :func:`mean_ci` at the config's level (default 0.95),
    over the records of their site and language."""
    run, *_ = answered
    for cfg, level in ((LensConfig(sites=("L0",), n_boot=50), 0.95),
                       (LensConfig(sites=("L0",), n_boot=50, level=0.5), 0.5)):  # fmt: skip
        doc = lens_study(run, cfg)
        assert doc["bootstrap"]["level"] == level
        for s in doc["summaries"]:
            recs = [r for r in doc["records"] if r["site"] == s["site"] and r["lang"] == s["lang"]]
            ent = np.array([[r["entropy"]] for r in recs])
            _, lo, hi = mean_ci(ent, 50, cfg.seed, level)
            assert s["entropy"]["low"] == pytest.approx(lo[0], rel=1e-5)
            assert s["entropy"]["high"] == pytest.approx(hi[0], rel=1e-5)
