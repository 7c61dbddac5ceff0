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


# ---------------------------------------------------------------------------------------------
# the study's pure helpers, on hand-made inputs (no model)


def _bootstrap_reference(values, n_boot, seed, level):
    """``mean_ci`` from its definition, by loops: the documented single draw of ``n_boot x n``
    row indices, each resample's column means, and the percentile interval by linear
    interpolation between the order statistics."""
    values = np.asarray(values, dtype=np.float64)
    n, m = values.shape
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    boots = np.array([[sum(values[i, c] for i in row) / n for c in range(m)] for row in idx])

    def quantile(xs, q):
        xs = sorted(xs)
        h = (len(xs) - 1) * q
        lo = int(np.floor(h))
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (h - lo) * (xs[hi] - xs[lo])

    qs = ((1 - level) / 2, (1 + level) / 2)
    low = np.array([quantile(boots[:, c], qs[0]) for c in range(m)])
    high = np.array([quantile(boots[:, c], qs[1]) for c in range(m)])
    mean = np.array([sum(values[:, c]) / n for c in range(m)])
    return mean, low, high


def test_mean_ci_equals_the_bootstrap_written_out_by_loops():
    rng = np.random.default_rng(0)
    values = np.column_stack([rng.normal(size=7), rng.exponential(3.0, size=7), np.arange(7.0)])
    for n_boot, seed, level in ((50, 3, 0.9), (41, 11, 0.5)):
        got = mean_ci(values, n_boot, seed, level)
        want = _bootstrap_reference(values, n_boot, seed, level)
        for g, w in zip(got, want, strict=True):
            assert g.shape == (3,)
            np.testing.assert_allclose(g, w, rtol=1e-12)
    # two rows are resampled (four equally likely resample means 0, .5, .5, 1): the 95% interval
    # of 400 resamples reaches both extremes; one row has nothing to resample
    mean, lo, hi = mean_ci(np.array([[0.0], [1.0]]), 400, 1, 0.95)
    assert (mean[0], lo[0], hi[0]) == (0.5, 0.0, 1.0)
    mean, lo, hi = mean_ci(np.array([[2.5, -1.0]]), 400, 1, 0.95)
    assert mean.tolist() == lo.tolist() == hi.tolist() == [2.5, -1.0]


def test_g_rounds_to_seven_significant_digits_and_drops_non_finite_values():
    from xlalign.studies.lens import _g

    assert _g(np.nan) is None and _g(np.inf) is None and _g(-np.inf) is None
    assert _g(1 / 3) == 0.3333333 and _g(np.float32(0.1)) == 0.1 and _g(-2) == -2.0
    assert type(_g(np.float64(123456789.0))) is float and _g(123456789.0) == 123456800.0


class _CodeTok:
    """Token ids are code points; id 0 is a special token that decodes to "S" unless
    ``skip_special_tokens`` (transformers' default: False)."""

    def decode(self, ids, skip_special_tokens=False):
        return "".join(("" if skip_special_tokens else "S") if i == 0 else chr(i) for i in ids)


class _PromptRun:
    """The parts of a run that :func:`answer_roles` and :func:`answer_columns` read."""

    def __init__(self, prompts, meta=None):
        self.prompts, self.meta = prompts, meta or {}

    def token_ids(self, lang):
        from xlalign.errors import RunError

        if lang == "fr":
            raise RunError("no token ids for fr")
        if lang == "de":
            raise OSError("token file unreadable")
        return [[ord(c) if c != "§" else 0 for c in p] for p in self.prompts[lang]]


def test_answer_roles_from_hand_counted_prompts():
    """Shares counted by hand over the rows that have an answer; a language whose token ids
    cannot be read is left out, the others still counted; the special token (§, decoding to
    "S") is left out of the prompt texts."""
    from xlalign.studies.lens import answer_roles

    run = _PromptRun(
        {"zh": ["猫是cat吗", "狗", "什么", "§鸟"], "en": ["a cat", "the dog", "what", "§bird"]}
    )
    answers = {
        "en": ["cat", None, "dog", ""],  # rows 0 and 2 answered
        "zh": ["猫", "狗", "", "S"],  # rows 0, 1 and 3; "S" only in a special token's text
        "ko": [None, "", None, ""],  # no row answered
    }
    got = answer_roles(run, ["fr", "zh", "de", "en"], answers, _CodeTok())
    assert got == {
        "in_prompt": {
            "zh": {"en": 1 / 2, "zh": 2 / 3, "ko": None},  # cat in row 0, dog not in row 2
            "en": {"en": 1 / 2, "zh": 0.0, "ko": None},
        },
        "roles": {
            "zh": {"en": "in the prompt", "zh": "target", "ko": "not in the prompt"},
            "en": {"en": "target", "zh": "not in the prompt", "ko": "not in the prompt"},
        },
    }
    one = answer_roles(run, ["en"], {"zh": ["猫", None, None, "bird"]}, _CodeTok())
    assert one["roles"] == {"en": {"zh": "in the prompt"}}  # 1 of 2 holds it: half counts
    assert one["in_prompt"] == {"en": {"zh": 0.5}}
    with pytest.raises(ValueError):  # an answer column of another length than the prompts
        answer_roles(run, ["en"], {"zh": ["猫", "狗"]}, _CodeTok())


def test_answer_columns_are_the_answer_prefixed_metadata_columns():
    from xlalign.studies.lens import answer_columns

    meta = {
        "answer_en": ("cat", None),
        "topic": ("a", "b"),
        "answer_": ("x", "y"),  # no language: not an answer column
        "my_answer_zh": ("猫", "狗"),
        "answer_zh": ("猫", "狗"),
    }
    got = answer_columns(_PromptRun({}, meta))
    assert got == {"en": ["cat", None], "zh": ["猫", "狗"]}
    assert all(type(v) is list for v in got.values())


def _part(class_mass, entropy, top_ids, top_probs, answer_prob, answer_rank):
    from xlalign.studies.lens import SiteDecoding

    a = [np.asarray(x) for x in (class_mass, entropy, top_ids, top_probs, answer_prob)]
    return SiteDecoding(*a, np.asarray(answer_rank, dtype=np.int64))


def _mass(rng, n):
    from xlalign.data.tokens import TOKEN_CLASSES

    m = rng.random((n, len(TOKEN_CLASSES))) + 0.01
    return m / m.sum(axis=1, keepdims=True)


def test_records_hold_each_rows_numbers_under_its_site_language_and_id():
    from xlalign.data.tokens import TOKEN_CLASSES
    from xlalign.studies.lens import _records

    rng = np.random.default_rng(4)
    mass = _mass(rng, 2)
    part = _part(
        mass, [1.25, 0.3333333333], [[7, 3, 9], [2, 7, 4]], [[0.5, 0.2, 0.1], [0.4, 0.3, 0.2]],
        [[0.25, np.nan], [0.5, 0.125]], [[3, -1], [1, 2]],
    )  # fmt: skip
    recs = _records("L2", "zh", ["r0", "r1"], part, ["en", "ja"])
    assert len(recs) == 2
    for i, rec in enumerate(recs):
        assert set(rec) == {"site", "lang", "id", "class_mass", "entropy", "top",
                            "answer_prob", "answer_rank"}  # fmt: skip
        assert (rec["site"], rec["lang"], rec["id"]) == ("L2", "zh", f"r{i}")
        assert list(rec["class_mass"]) == list(TOKEN_CLASSES)
        for c, v in zip(TOKEN_CLASSES, mass[i], strict=True):
            assert rec["class_mass"][c] == pytest.approx(v, rel=1e-6)
    assert recs[1]["entropy"] == 0.3333333 and recs[0]["entropy"] == 1.25
    assert recs[0]["top"] == [[7, 0.5], [3, 0.2], [9, 0.1]]
    assert recs[1]["top"] == [[2, 0.4], [7, 0.3], [4, 0.2]]
    assert all(type(t) is int for r in recs for t, _ in r["top"])
    # a row without an answer in a language (rank -1) has no entry for it
    assert recs[0]["answer_prob"] == {"en": 0.25} and recs[0]["answer_rank"] == {"en": 3}
    assert recs[1]["answer_prob"] == {"en": 0.5, "ja": 0.125}
    assert recs[1]["answer_rank"] == {"en": 1, "ja": 2}
    plain = _records("final", "en", ["r0", "r1"], part, [])
    assert all("answer_prob" not in r and "answer_rank" not in r for r in plain)
    # arrays that do not line up are refused, not cut short
    with pytest.raises(ValueError):
        _records(
            "L2", "zh", ["r0"], _part(mass[:1, :-1], [1.0], [[7]], [[0.5]], [[0.2]], [[1]]), []
        )
    with pytest.raises(ValueError):
        _records("L2", "zh", ["r0"], _part(mass[:1], [1.0], [[7, 3]], [[0.5]], [[0.2]], [[1]]), [])


def test_control_reference_keeps_seed_folder_and_summaries():
    from xlalign.studies.lens import control_reference

    summaries = [{"site": "L0", "lang": "zh"}]
    doc = {"random_init_seed": 5, "run": "/runs/a/control", "summaries": summaries,
           "records": [{"site": "L0"}], "model": "m"}  # fmt: skip
    assert control_reference(doc) == {
        "kind": "random-init", "seed": 5, "run": "/runs/a/control", "summaries": summaries
    }  # fmt: skip


def _cm(latin, cjk):
    return {"latin": {"mean": latin}, "cjk": {"mean": cjk}, "digit": {"mean": 0.01}}


def test_summarize_states_peaks_last_site_answers_and_control():
    """The lines name, per prompt language, the site where latin and cjk mass peak (a missing
    mean counts as 0), the last site's masses, each answer's peak probability and site, and the
    control's largest latin/cjk mass; every number is read off the hand-made summaries."""
    from xlalign.studies.lens import summarize

    def row(site, lang, latin, cjk, answers=None):
        out = {"site": site, "lang": lang, "class_mass": _cm(latin, cjk)}
        if answers is not None:
            out["answer_prob"] = answers
        return out

    summaries = [
        row("embed", "zh", 0.10, 0.30, {"en": {"mean": 0.01}, "zh": None}),
        row("L0", "zh", 0.62, None, {"en": {"mean": 0.4567}, "zh": None}),  # en peaks here
        row("L1", "zh", 0.33, 0.81, {"en": {"mean": 0.2}, "zh": None}),
        row("final", "zh", 0.20, 0.35, {"en": {"mean": 0.3}, "zh": None}),
        row("embed", "en", 0.05, 0.02),
        row("L0", "en", 0.15, 0.04),
        row("L1", "en", 0.55, 0.01),
        row("final", "en", 0.91, 0.03),
    ]
    doc = {
        "model": "tiny-qwen", "random_init_seed": None, "pool": "last",
        "sites": ["embed", "L0", "L1", "final"], "n_rows": 12, "summaries": summaries,
        "answers": {"languages": ["zh", "en"],
                    "roles": {"zh": {"en": "not in the prompt"}, "en": {"en": "target"}}},
        "vocab_share": {"latin": 0.4213, "cjk": 0.1678},
    }  # fmt: skip
    assert summarize(doc) == [
        "logit lens of tiny-qwen (last pool, 4 sites, 12 prompts per language)",
        "zh prompts: latin mass peaks at 0.62 at L0; cjk mass peaks at 0.81 at L1; "
        "at final: latin 0.20, cjk 0.35",
        "  P(en answer (not in the prompt: latent)) peaks at 0.457 at L0",
        "en prompts: latin mass peaks at 0.91 at final; cjk mass peaks at 0.04 at L0; "
        "at final: latin 0.91, cjk 0.03",
        "no random-weights control for the lens",
    ]
    ctl_rows = [row("L0", "zh", 0.12, 0.31), row("L1", "zh", None, 0.05),
                row("L0", "en", 0.2, None)]  # fmt: skip
    ctl = {"kind": "random-init", "seed": 5, "summaries": ctl_rows}
    lines = summarize({**doc, "random_init_seed": 7, "answers": None, "control": ctl})
    assert lines[0] == (
        "logit lens of tiny-qwen (random weights, seed 7) (last pool, 4 sites, 12 prompts per "
        "language)"
    )
    assert not any(line.startswith("  P(") for line in lines)
    assert lines[-1] == (
        "random-weights control: latin/cjk mass at most 0.31 at any site "
        "(vocabulary share: latin 0.42, cjk 0.17)"
    )
    # a control without summaries is no control
    assert summarize({**doc, "control": {"summaries": []}})[-1] == (
        "no random-weights control for the lens"
    )


def test_summary_means_intervals_mode_and_answers_of_a_hand_made_site():
    """Class mass and entropy: means with the bootstrap of :func:`_bootstrap_reference`; the
    commonest top-1 token with its share; per answer language the mean probability (interval
    over the rows that have an answer), their count, the median rank and the share ranked 1;
    a language no row answers is None."""
    from xlalign.data.tokens import TOKEN_CLASSES
    from xlalign.studies.lens import _summary

    rng = np.random.default_rng(9)
    n = 6
    mass = _mass(rng, n)
    entropy = rng.uniform(0.5, 4.0, n)
    top_ids = np.array([[5, 1], [7, 2], [5, 3], [7, 4], [7, 8], [9, 6]])
    prob_en = np.array([0.5, np.nan, 0.1, 0.4, 0.2, 0.7])
    rank_en = np.array([1, -1, 4, 1, 2, 1])
    part = _part(
        mass, entropy, top_ids, rng.random((n, 2)),
        np.column_stack([np.full(n, np.nan), prob_en]),
        np.column_stack([np.full(n, -1), rank_en]),
    )  # fmt: skip
    cfg = LensConfig(n_boot=30, seed=7, level=0.8)
    s = _summary("L3", "zh", part, ["zh", "en"], cfg, lambda t: f"<{t}>")
    assert (s["site"], s["lang"], s["n"]) == ("L3", "zh", n)
    mean, low, high = _bootstrap_reference(np.column_stack([mass, entropy]), 30, 7, 0.8)
    assert list(s["class_mass"]) == list(TOKEN_CLASSES)
    for j, c in enumerate([*TOKEN_CLASSES, None]):
        got = s["entropy"] if c is None else s["class_mass"][c]
        assert set(got) == {"mean", "low", "high"}
        assert got["mean"] == pytest.approx(mean[j], rel=1e-6)
        assert got["low"] == pytest.approx(low[j], rel=1e-6)
        assert got["high"] == pytest.approx(high[j], rel=1e-6)
        assert got["low"] < got["mean"] < got["high"]
    assert s["top1_mode"] == {"id": 7, "text": "<7>", "share": 0.5}  # 7 is top-1 in 3 of 6
    have = rank_en >= 0
    m, lo, hi = _bootstrap_reference(prob_en[have][:, None], 30, 7, 0.8)
    en = s["answer_prob"]["en"]
    assert en["n"] == 5 and en["mean"] == pytest.approx(m[0], rel=1e-6)
    assert en["low"] == pytest.approx(lo[0], rel=1e-6)
    assert en["high"] == pytest.approx(hi[0], rel=1e-6)
    assert set(en) == {"mean", "low", "high", "n"}
    assert s["answer_rank"]["en"] == {"median": 1.0, "top1_share": 0.6}  # ranks 1, 4, 1, 2, 1
    assert s["answer_prob"]["zh"] is None and s["answer_rank"]["zh"] is None
    plain = _summary("final", "en", part, [], cfg, lambda t: "")
    assert "answer_prob" not in plain and "answer_rank" not in plain
    # a site with no rows: no means, no mode
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        empty = _summary("L0", "en", _part(mass[:0], entropy[:0], top_ids[:0],
                         top_ids[:0] * 0.0, prob_en[:0, None], rank_en[:0, None]),
                         ["en"], cfg, lambda t: "")  # fmt: skip
    assert empty["n"] == 0 and empty["top1_mode"] is None
    assert empty["entropy"] == {"mean": None, "low": None, "high": None}
    assert empty["answer_prob"] == {"en": None} and empty["answer_rank"] == {"en": None}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": 0}, "--top-k must be at least 1, got 0"),
        ({"n_boot": 0}, "--n-boot must be at least 1, got 0"),
        ({"seed": -1}, "--seed must be 0 or more, got -1"),
        ({"level": 0.0}, "the confidence level must be in (0, 1), got 0.0"),
        ({"level": 1.0}, "the confidence level must be in (0, 1), got 1.0"),
        ({"level": 1.5}, "the confidence level must be in (0, 1), got 1.5"),
    ],
)
def test_lens_config_refuses_bad_options_naming_the_value(kwargs, message):
    from xlalign.errors import XlalignError

    with pytest.raises(XlalignError) as err:
        LensConfig(**kwargs)
    assert str(err.value) == message


def test_lens_config_accepts_the_smallest_valid_options():
    cfg = LensConfig(top_k=1, n_boot=1, seed=0, level=0.001)
    assert (cfg.top_k, cfg.n_boot, cfg.seed, cfg.level) == (1, 1, 0, 0.001)
    assert LensConfig(level=0.999).level == 0.999


def test_decoding_note_says_what_each_site_went_through():
    from types import SimpleNamespace

    from xlalign.studies.lens import _decoding_note

    with_norm, without = SimpleNamespace(norm=object()), SimpleNamespace(norm=None)
    final = "LM head only: the site is the final norm's output already"
    assert _decoding_note("final", with_norm) == _decoding_note("final", without) == final
    assert _decoding_note("L0", with_norm) == _decoding_note("embed", with_norm)
    assert _decoding_note("L0", with_norm) == "final norm, then LM head"
    assert _decoding_note("L0", without) == "LM head only: the model has no final norm"


@pytest.fixture
def bars(monkeypatch):
    """``bars()`` replaces tqdm from then on and returns the bars made, each recording what
    it was told."""

    def watch():
        made = []

        class Bar:
            def __init__(self, **kwargs):
                self.kwargs, self.updates, self.closed = kwargs, [], 0
                made.append(self)

            def update(self, k):
                self.updates.append(k)

            def close(self):
                self.closed += 1

        monkeypatch.setattr("tqdm.auto.tqdm", Bar)
        return made

    return watch


def test_progress_bar_counts_sites_and_closes_once(bars):
    from xlalign.studies.lens import _bar

    made = bars()
    off = _bar(3, False)
    off(1)
    off(0, close=True)
    assert made == []  # no bar without progress
    step = _bar(3, True)
    for _ in range(3):
        step(1)
    assert len(made) == 1 and made[0].closed == 0  # a step does not close the bar
    step(0, close=True)
    bar = made[0]
    assert bar.kwargs == {"total": 3, "desc": "lens", "unit": "site", "leave": False}
    assert bar.updates == [1, 1, 1] and bar.closed == 1


@pytest.mark.parametrize("with_norm", [False, True])
def test_the_decoder_applies_the_norm_only_where_the_model_has_one(with_norm):
    """LensDecoder on plain torch modules: logits are head(norm(h)) for states before the
    final norm, head(h) for states after it or for a model without a final norm (float64
    reference from the modules' weights)."""
    from xlalign.models.loading import LensModules
    from xlalign.studies.lens import LensDecoder

    torch.manual_seed(0)
    d, vocab = 6, 9
    head = torch.nn.Linear(d, vocab, bias=False)
    norm = torch.nn.LayerNorm(d, eps=1e-5) if with_norm else None
    if norm is not None:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 2.0)
            norm.bias.uniform_(-1.0, 1.0)
    dec = LensDecoder(LensModules(final_norm=norm, head=head), np.zeros(vocab, dtype=np.int64))
    h = np.random.default_rng(1).normal(size=(4, d)) * 3 + 1
    w = head.weight.detach().double().numpy()
    if norm is None:
        assert dec.norm is None
        before = h
    else:
        mu, var = h.mean(1, keepdims=True), h.var(1, keepdims=True)
        g, b = norm.weight.detach().double().numpy(), norm.bias.detach().double().numpy()
        before = (h - mu) / np.sqrt(var + 1e-5) * g + b
    got = dec.logits(h, normed=False).double().numpy()
    np.testing.assert_allclose(got, before @ w.T, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        dec.logits(h, normed=True).double().numpy(), h @ w.T, rtol=1e-4, atol=1e-4
    )


def test_a_run_of_an_encoder_is_refused_naming_what_needs_the_head(tmp_path):
    """Refused from the manifest alone, before any model is loaded, word for word."""
    import json

    from xlalign.errors import RunError
    from xlalign.store.run import load_run
    from xlalign.store.synthetic import write_synthetic_run
    from xlalign.studies.lens import load_run_model

    path = write_synthetic_run(tmp_path / "bert", 4, 8)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(architecture="BertModel", model="org/tiny-bert", is_causal_lm=False)
    (path / "manifest.json").write_text(json.dumps(manifest))
    run = load_run(path)
    head = f"run '{run.path}' is of BertModel (org/tiny-bert), not a causal language model: "
    with pytest.raises(RunError) as err:
        load_run_model(run)
    assert str(err.value) == head + "it has no LM head for the logit lens to decode through"
    with pytest.raises(RunError) as err:
        load_run_model(run, purpose="neuron ablation")
    assert str(err.value) == head + "neuron ablation needs one"


def test_the_lens_model_is_checked_against_the_run_and_takes_the_tokenizer_given(
    tiny_models, bpe_tokenizer, wordpiece_tokenizer, problems, tmp_path
):
    """load_decoder classes the vocabulary with the tokenizer it is given; load_run_model
    refuses, word for word, weights edited in place since the run and a model of another
    hidden size given for a run that records no fingerprint."""
    import json
    import shutil

    from transformers import AutoModelForCausalLM

    from xlalign.data.tokens import vocabulary_classes
    from xlalign.errors import RunError
    from xlalign.models.fingerprints import sampled_weights_fingerprint
    from xlalign.models.testing import build_tiny_model
    from xlalign.store.run import load_run
    from xlalign.studies.lens import load_decoder, load_run_model

    src = tmp_path / "qwen"
    shutil.copytree(tiny_models["qwen2"], src)
    run = extract(
        str(src), problems.head(4), ["zh", "en"], sites="L0", pools="last",
        output=tmp_path / "run", progress=False, device="cpu",
    )  # fmt: skip
    dec = load_decoder(run, tokenizer=wordpiece_tokenizer)
    want = vocabulary_classes(wordpiece_tokenizer, dec.vocab_size)
    assert np.array_equal(dec.onehot.argmax(1).numpy(), want)
    assert not np.array_equal(want, vocabulary_classes(run.tokenizer(), dec.vocab_size))
    # a run made before full hashing records a sampled fingerprint: the same weights load
    legacy_path = tmp_path / "legacy"
    shutil.copytree(run.path, legacy_path)
    manifest = json.loads((legacy_path / "manifest.json").read_text())
    manifest["weights_fingerprint"] = sampled_weights_fingerprint(src)
    (legacy_path / "manifest.json").write_text(json.dumps(manifest))
    legacy = load_run(legacy_path)
    assert load_run_model(legacy).d_model == legacy.d_model
    # the weights edited in place since the runs were made
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    model.save_pretrained(src)
    for r in (run, legacy):
        with pytest.raises(RunError) as err:
            load_run_model(r)
        assert str(err.value) == (
            f"the weights at '{r.manifest['model']}' changed since run '{r.path}' was made "
            "(weights fingerprint differs); extract the run again"
        )
    # a model of another width, given for a run that records no fingerprint
    wide = build_tiny_model("gpt2", bpe_tokenizer, tmp_path / "wide", n_embd=48, n_layer=2)
    manifest = json.loads((run.path / "manifest.json").read_text())
    manifest.pop("weights_fingerprint", None)
    (run.path / "manifest.json").write_text(json.dumps(manifest))
    old = load_run(run.path)
    with pytest.raises(RunError) as err:
        load_run_model(old, model=str(wide))
    assert str(err.value) == (
        f"model '{manifest['model']}' has hidden size 48, run '{old.path}' holds vectors of "
        f"size {old.d_model}: not the run's model"
    )


def test_lens_study_uses_the_decoder_given_reads_one_language_and_steps_its_bar(answered, bars):
    """A decoder given is the one used (here the run's model with every token classed as the
    first class, so the vocabulary's share is all in it, every class listed); one language
    alone is read; the bar counts the sites and is closed once."""
    from xlalign.data.tokens import TOKEN_CLASSES
    from xlalign.models.loading import lens_modules
    from xlalign.studies.lens import LensDecoder, load_run_model

    run = answered[0]
    modules = lens_modules(load_run_model(run))
    dec = LensDecoder(modules, np.zeros(modules.vocab_size, dtype=np.int64))
    made = bars()
    sites = ("L0", "final")
    doc = lens_study(run, LensConfig(langs=("zh",), sites=sites, n_boot=10), decoder=dec,
                     progress=True)  # fmt: skip
    assert doc["vocab_share"] == {c: (1.0 if k == 0 else 0.0) for k, c in enumerate(TOKEN_CLASSES)}
    assert doc["languages"] == ["zh"] and {r["lang"] for r in doc["records"]} == {"zh"}
    assert [s["site"] for s in doc["summaries"]] == list(sites)
    (bar,) = made
    assert bar.kwargs["total"] == 2 and bar.updates == [1, 1] and bar.closed == 1


def test_a_run_without_the_last_token_pool_is_refused_word_for_word(tmp_path):
    from xlalign.errors import RunError
    from xlalign.store.run import load_run
    from xlalign.store.synthetic import write_synthetic_run

    run = load_run(write_synthetic_run(tmp_path / "r", 4, 8, pools=("mean", "max")))
    with pytest.raises(RunError) as err:
        lens_study(run)
    assert str(err.value) == (
        f"pool 'last' not in run '{run.path}': it has mean, max; the lens decodes the "
        "last-token state (extract with --pool last)"
    )
