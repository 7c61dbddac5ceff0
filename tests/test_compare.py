"""xlalign compare: two tiny models of different architectures, width and depth, on one corpus."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from xlalign.cli import main
from xlalign.data.problems import generate_problems
from xlalign.errors import XlalignError
from xlalign.models.testing import build_tiny_model
from xlalign.studies.compare import (
    CONTROL_DIR,
    CompareConfig,
    compare,
    relative_depth,
)
from xlalign.studies.findings import verdict
from xlalign.studies.layers import SweepConfig, layer_sweep, write_alignment

N = 40
SWEEP = SweepConfig(metrics=("z", "p1", "cka", "knn"), n_boot=20)
FAST = CompareConfig(k=5, n_perms=50, sweep=SWEEP)


def _extract(model, corpus, out, seed=None, **kw):
    from xlalign.capture.engine import extract

    return extract(
        str(model), corpus, ["zh", "en"], sites="all", pools=("last", "mean"), batch_size=16,
        output=out, progress=False, random_init_seed=seed, **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def corpus():
    return generate_problems(N, seed=42)


@pytest.fixture(scope="module")
def gpt2_wide(bpe_tokenizer, tmp_path_factory):
    """A GPT-2 of width 48 and 3 blocks: another architecture, width and depth than the Qwen2."""
    return build_tiny_model("gpt2", bpe_tokenizer, tmp_path_factory.mktemp("m") / "g", n_embd=48,
                            n_layer=3)  # fmt: skip


@pytest.fixture(scope="module")
def runs(tiny_models, gpt2_wide, corpus, tmp_path_factory):
    """Study-like folders: A (Qwen2) with its control and alignment.json; B (GPT-2) with a
    control and no alignment.json (compare computes it)."""
    root = tmp_path_factory.mktemp("cmp")
    a = _extract(tiny_models["qwen2"], corpus, root / "a")
    _extract(tiny_models["qwen2"], corpus, root / "a" / CONTROL_DIR, seed=0)
    write_alignment(layer_sweep(a, SWEEP, progress=False), a.path)
    write_alignment(
        layer_sweep(_load(root / "a" / CONTROL_DIR), SWEEP, progress=False),
        root / "a" / CONTROL_DIR,
    )
    b = _extract(gpt2_wide, corpus, root / "b")
    _extract(gpt2_wide, corpus, root / "b" / CONTROL_DIR, seed=0)
    corpus.to_jsonl(root / "a" / "corpus.jsonl")
    corpus.to_jsonl(root / "b" / "corpus.jsonl")
    return root, a, b


def _load(p):
    from xlalign.store.run import load_run

    return load_run(p)


@pytest.fixture(scope="module")
def result(runs):
    _root, a, b = runs
    return compare(
        [a.path, b.path], labels={"A": "Qwen tiny", "B": "GPT-2 wide"}, config=FAST,
        progress=False, say=lambda _m: None,
    )  # fmt: skip


# --------------------------------------------------------------------------- plain references


def _cka64(x, y):
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    x = x - x.mean(0)
    y = y - y.mean(0)
    k, lm = x @ x.T, y @ y.T
    return np.sum(k * lm) / np.sqrt(np.sum(k * k) * np.sum(lm * lm))


def _knn64(x, y, k):
    """Mutual k-NN by brute force: platonic-rep's clamp at the 0.95 quantile, unit rows."""

    def prep(a):
        a = np.asarray(a, np.float64).copy()
        t = np.quantile(np.abs(a), 0.95, axis=1).mean()
        a = np.clip(a, -t, t)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    def sets(a):
        s = prep(a) @ prep(a).T
        np.fill_diagonal(s, -np.inf)
        return [set(np.argsort(-s[i], kind="stable")[:k]) for i in range(len(s))]

    sx, sy = sets(x), sets(y)
    return np.mean([len(p & q) / k for p, q in zip(sx, sy, strict=True)])


# --------------------------------------------------------------------------- tests


def test_relative_depth_puts_embed_at_0_and_the_last_block_at_1():
    assert relative_depth("embed", 4) == 0.0
    assert relative_depth("L0", 4) == 0.25
    assert relative_depth("L3", 4) == 1.0
    assert relative_depth("L1", 3) == pytest.approx(2 / 3)
    assert relative_depth("final", 4) == 1.0
    assert relative_depth("lexical", 4) is None


def test_fields_are_those_of_compare_json(result):
    doc = result.to_dict()
    assert set(doc) == {f for f in result.__dataclass_fields__ if f != "paths"}
    for key in ("runs", "corpus", "curves", "similarity", "findings", "ranking", "headline"):
        assert doc[key], key
    assert [r["label"] for r in doc["runs"]] == ["Qwen tiny", "GPT-2 wide"]
    assert result.corpus["shared"] == "all" and result.corpus["note"] is None
    assert result.headline not in result.summary
    assert result.headline in {r["statement"] for r in result.ranking if r["metric"] == "z"}
    json.dumps(doc)  # JSON-ready as it is


def test_curves_carry_relative_depth_model_and_control(result, runs):
    _, a, b = runs
    curves = result.curves
    for label, run in (("Qwen tiny", a), ("GPT-2 wide", b)):
        mine = [c for c in curves if c["label"] == label and c["kind"] == "model"]
        depths = {c["site"]: c["relative_depth"] for c in mine}
        n = run.n_layers
        assert depths["embed"] == 0.0
        assert depths[f"L{n - 1}"] == 1.0
        assert depths["L0"] == pytest.approx(1 / n)
        assert {c["kind"] for c in curves if c["label"] == label} >= {"model", "control"}
    # B's sweep was computed by compare: it equals a sweep of the run itself
    direct = layer_sweep(b, SWEEP, progress=False)
    z = {
        r["site"]: r["value"]
        for r in direct["records"]
        if r["metric"] == "z" and r["pool"] == "mean" and r["depth"] is not None
    }
    got = {
        c["site"]: c["value"]
        for c in curves
        if c["label"] == "GPT-2 wide" and c["kind"] == "model" and c["metric"] == "z"
        and c["pool"] == "mean"
    }  # fmt: skip
    assert got == pytest.approx(z, rel=1e-12)


def test_similarity_equals_plain_float64_cka_and_knn(result, runs):
    _, a, b = runs
    recs = result.similarity
    assert {"a", "b", "lang", "pool", "metric", "site_a", "site_b", "value"} <= set(recs[0])
    n_cells = len(a.sites) * len(b.sites)
    assert len(recs) == 2 * 2 * 2 * n_cells  # 2 langs x 2 pools x 2 metrics
    assert a.d_model != b.d_model and a.n_layers != b.n_layers
    for r in recs:
        if (r["lang"], r["pool"]) != ("en", "mean") or r["site_a"] not in ("embed", "L2"):
            continue
        x = a.array("en", r["site_a"], "mean")
        y = b.array("en", r["site_b"], "mean")
        if r["metric"] == "cka":
            assert r["value"] == pytest.approx(_cka64(x, y), rel=1e-9)
            assert 0 < r["p_value"] <= 1 and r["n_perms"] == 50
        else:
            assert r["value"] == pytest.approx(_knn64(x, y, 5), abs=1e-12)


def test_a_model_compared_with_itself_has_1_on_the_diagonal(runs, tmp_path):
    _, a, _ = runs
    res = compare([a.path, a.path], config=FAST, progress=False, say=lambda _m: None)
    labels = [r["label"] for r in res.runs]
    assert len(set(labels)) == 2  # the same run twice gets two labels
    for r in res.similarity:
        if r["site_a"] == r["site_b"]:
            assert r["value"] == pytest.approx(1.0, abs=1e-12), r
    off = [
        r["value"] for r in res.similarity if r["metric"] == "cka" and r["site_a"] != r["site_b"]
    ]
    assert min(off) < 0.999  # the diagonal is not 1 just because everything is


def test_a_different_corpus_is_refused(runs, tiny_models, tmp_path, capsys):
    _, a, _ = runs
    other = generate_problems(N, seed=7)  # same ids p0000..., other texts
    c = _extract(tiny_models["qwen2"], other, tmp_path / "c")
    other.to_jsonl(tmp_path / "c" / "corpus.jsonl")
    with pytest.raises(XlalignError, match=r"different corpora: .* ids are shared but their texts"):
        compare([a.path, c.path], config=FAST, progress=False, say=lambda _m: None)
    assert main(["compare", str(a.path), str(c.path), "-o", str(tmp_path / "o")]) == 2
    assert "different corpora" in capsys.readouterr().err


def test_a_run_without_its_corpus_is_refused_when_fingerprints_differ(runs, tiny_models, tmp_path):
    _, a, _ = runs
    c = _extract(tiny_models["qwen2"], generate_problems(N, seed=7), tmp_path / "c")
    # same ids, other texts: refused, naming the shared ids whose texts differ
    with pytest.raises(XlalignError, match="different corpora: 40 ids are shared but their texts"):
        compare([a.path, c.path], config=FAST, progress=False, say=lambda _m: None)
    # a run folder that lost its copy of the corpus cannot be checked row by row
    (c.path / "corpus.jsonl").unlink()
    with pytest.raises(XlalignError, match="keeps no copy of its corpus"):
        compare([a.path, c.path], config=FAST, progress=False, say=lambda _m: None)


def test_partial_overlap_compares_the_intersection_and_says_so(runs, corpus, tiny_models, tmp_path):
    _, a, _ = runs
    part = corpus.head(30)
    c = _extract(tiny_models["llama"], part, tmp_path / "c")
    part.to_jsonl(tmp_path / "c" / "corpus.jsonl")
    said = []
    res = compare([a.path, c.path], config=FAST, progress=False, say=said.append)
    assert res.corpus["shared"] == "intersection"
    assert res.corpus["n_rows"] == 30
    assert res.corpus["ids"] == list(corpus.ids[:30])
    assert "share 30 rows" in res.corpus["note"] and any("share 30 rows" in s for s in said)
    assert any("share 30 rows" in s for s in res.summary)
    # similarity on the shared rows only
    (r,) = [
        r for r in res.similarity
        if (r["lang"], r["pool"], r["metric"], r["site_a"], r["site_b"]) == ("zh", "last", "cka", "L1", "L1")
    ]  # fmt: skip
    x = a.array("zh", "L1", "last")[:30]
    assert r["value"] == pytest.approx(_cka64(x, c.array("zh", "L1", "last")), rel=1e-9)
    # A's stored sweep is over 40 rows: it is recomputed on the 30 shared ones
    z = [cv for cv in res.curves if cv["metric"] == "z" and cv["kind"] == "model"]
    sub = _load(a.path)
    from xlalign.metrics import matched_vs_scrambled_z

    (z_embed,) = [
        cv for cv in z if cv["label"] == res.runs[0]["label"] and cv["site"] == "embed"
        and cv["pool"] == "mean"
    ]  # fmt: skip
    want = matched_vs_scrambled_z(
        sub.array("zh", "embed", "mean")[:30],
        sub.array("en", "embed", "mean")[:30],
        products="float64",  # the sweep's shared matrices are float64
    ).z
    assert z_embed["value"] == pytest.approx(want, rel=1e-12)


def test_findings_follow_the_verdict_rules_on_the_records(result):
    assert result.findings
    for f in result.findings:
        curves = {
            (c["kind"], c["site"]): c
            for c in result.curves
            if c["label"] == f["label"] and c["pool"] == f["pool"] and c["metric"] == f["metric"]
            and c["pair"] == f["pair"]
        }  # fmt: skip
        model, control = curves[("model", f["site"])], curves[("control", f["site"])]
        assert f["model"]["value"] == model["value"]
        assert f["control"]["value"] == control["value"]
        gains = [
            c["value"] - curves[("control", s)]["value"]
            for (kind, s), c in curves.items()
            if kind == "model"
            and c["value"] is not None
            and curves[("control", s)]["value"] is not None
        ]
        assert f["gain_over_control"] == pytest.approx(max(gains))
        lo, hi = f["model"]["ci_low"], f["model"]["ci_high"]
        clo, chi = f["control"]["ci_low"], f["control"]["ci_high"]
        if lo is not None and clo is not None:
            p_best = f["model"].get("p_best_site")
            expect = (
                "below-control"
                if hi < clo
                else "matched-by-null"
                if p_best is not None and p_best > 0.05
                else "matched-by-control"
                if lo <= chi
                else "beyond-control"
            )
            assert f["verdict"] == expect
    for r in result.ranking:
        assert set(r["order"]) == {"Qwen tiny", "GPT-2 wide"}


@pytest.mark.parametrize(
    ("model", "control", "lexical", "expect"),
    [
        ((5, 4, 6), None, None, "no-control"),
        ((5, 4, 6), None, (3, 2, 3.5), "no-control"),
        ((5, 4, 6), None, (5, 4.5, 6), "matched-by-lexical"),
        ((5, None, None), (5, None, None), None, "matched-by-control"),
        ((5, 4, 6), (1, 0, 2), None, "beyond-control"),
        ((5, 4, 6), (1, 0, 2), (3, 2, 4.5), "matched-by-lexical"),
        ((5, 4, 6), (1, 0, 2), (3, 2, 3.5), "beyond-control"),
        ((5, 4, 6), (6, 5.5, 7), None, "matched-by-control"),
        ((1, 0, 2), (5, 4, 6), None, "below-control"),
    ],
)
def test_verdict_contract_used_by_compare(model, control, lexical, expect):
    def pt(t):
        return None if t is None else {"value": t[0], "ci_low": t[1], "ci_high": t[2]}

    assert verdict(pt(model), pt(control), pt(lexical)) == expect


@pytest.mark.slow
def test_cli_with_labels_writes_the_report(runs, tmp_path, capsys):
    _, a, b = runs
    out = tmp_path / "cmp"
    code = main(
        ["compare", str(a.path), str(b.path), "-o", str(out), "--label", "A=Qwen tiny",
         "--label", f"{b.path}=GPT-2 wide", "--k", "5", "--n-perms", "0", "--no-progress"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    doc = json.loads((out / "compare.json").read_text())
    assert [r["label"] for r in doc["runs"]] == ["Qwen tiny", "GPT-2 wide"]
    assert all("p_value" not in r for r in doc["similarity"])
    assert str(out / "report.html") in capsys.readouterr().out
    html = (out / "report.html").read_text()
    assert "<script" not in html and 'src="http' not in html
    # one curve figure per pool, one heatmap figure per language and pool
    assert html.count("data:image/png;base64,") == 2 + 2 * 2
    md = (out / "report.md").read_text()
    figs = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md)
    assert len(figs) == 6 and all((out / f).exists() for f in figs)
    assert "Qwen tiny" in md and "GPT-2 wide" in md and "Findings" in md
    # a second comparison may replace the first in the same folder; a foreign folder is refused
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["compare", str(a.path), str(b.path), "-o", str(tmp_path / "busy")]) == 2
    assert "holds no comparison" in capsys.readouterr().err


def test_cli_refuses_bad_labels_and_a_single_run(runs, tmp_path, capsys):
    _, a, b = runs
    out = tmp_path / "cmp"
    assert main(["compare", str(a.path), str(b.path), "--label", "Z=x", "-o", str(out)]) == 2
    assert "--label Z=" in capsys.readouterr().err
    assert main(["compare", str(a.path), str(b.path), "--label", "qwen", "-o", str(out)]) == 2
    assert "write RUN=NAME" in capsys.readouterr().err
    assert main(["compare", str(a.path), "-o", str(out)]) == 2
    assert "at least two runs" in capsys.readouterr().err
    # one run labelled twice (issue 27): said, not the last one kept silently
    twice = ["--label", "A=x", "--label", "A=y"]
    assert main(["compare", str(a.path), str(b.path), *twice, "-o", str(out)]) == 2
    assert "given twice ('x' and 'y')" in capsys.readouterr().err
    both = ["--label", "A=x", "--label", f"{a.path}=y"]
    assert main(["compare", str(a.path), str(b.path), *both, "-o", str(out)]) == 2
    assert "labelled twice ('x' and 'y')" in capsys.readouterr().err
    assert not out.exists()


def test_python_api_is_exported_lazily(runs):
    import xlalign

    _, a, b = runs
    res = xlalign.compare([a.path, b.path], labels=["x", "y"], config=FAST, progress=False,
                          say=lambda _m: None)  # fmt: skip
    assert [r["label"] for r in res.runs] == ["x", "y"]
    assert res.paths == {}


def test_a_lexical_baseline_in_the_sweep_is_drawn_flat_and_judged(runs, tmp_path):
    """A sweep with a model-free ``lexical`` site (depth null): kind lexical, no depth, and a
    model that clears its control but not the lexical baseline is matched-by-lexical."""
    import shutil

    _, a, b = runs
    copy = tmp_path / "a"
    shutil.copytree(a.path, copy)
    doc = json.loads((copy / "alignment.json").read_text())
    # replace the sweep's own lexical records with one z record per pool that beats the model
    doc["records"] = [r for r in doc["records"] if r["site"] != "lexical"]
    zs = [r for r in doc["records"] if r["metric"] == "z" and r["value"] is not None]
    top = max(r["ci_high"] for r in zs)
    for pool in doc["pools"]:
        doc["records"].append(
            {**zs[0], "site": "lexical", "depth": None, "pool": pool, "value": top + 1,
             "ci_low": top + 0.5, "ci_high": top + 2}
        )  # fmt: skip
    (copy / "alignment.json").write_text(json.dumps(doc))
    res = compare([copy, b.path], config=FAST, progress=False, say=lambda _m: None)
    first = res.runs[0]["label"]
    lex = [c for c in res.curves if c["kind"] == "lexical" and c["label"] == first]
    assert len(lex) == len(doc["pools"]) and all(c["relative_depth"] is None for c in lex)
    for f in res.findings:
        if f["label"] == res.runs[0]["label"] and f["metric"] == "z":
            assert f["lexical"]["value"] == top + 1
            assert f["verdict"] in ("matched-by-lexical", "matched-by-control", "below-control")
            clears = f["model"]["ci_low"] > f["control"]["ci_high"]
            assert (f["verdict"] == "matched-by-lexical") == clears


def test_sites_with_few_distinct_vectors_are_marked_and_left_out_of_the_caption(result, runs):
    """At the embedding the last-token vectors of the problems take a few values: CKA between
    two models there measures which prompts share a token (it is ~1 for any two models)."""
    from xlalign.report.compare import _similarity_caption

    _, a, b = runs
    marked = 0
    for r in result.similarity:
        x = np.asarray(a.array(r["lang"], r["site_a"], r["pool"]))
        y = np.asarray(b.array(r["lang"], r["site_b"], r["pool"]))
        (ra, ca), (rb, cb) = (np.unique(v, axis=0, return_counts=True) for v in (x, y))
        assert (r["distinct_a"], r["distinct_b"]) == (len(ra), len(rb))
        few = any(c.max() >= 0.2 * len(x) or len(c) <= 0.5 * len(x) for c in (ca, cb))
        assert (r["artifact"] == "identical-vectors") == few
        marked += few
    assert marked > 0  # the embed/last cells of this corpus
    for f in result.findings:  # a finding at such a site names it too, and leads no ranking
        x = np.asarray((a if f["label"] == "Qwen tiny" else b).array(f["pair"][0], f["site"],
                                                                      f["pool"]))  # fmt: skip
        y = np.asarray((a if f["label"] == "Qwen tiny" else b).array(f["pair"][1], f["site"],
                                                                      f["pool"]))  # fmt: skip
        few = any(np.unique(v, axis=0, return_counts=True)[1].max() >= 0.2 * len(v) for v in (x, y))
        assert (f["artifact"] == "identical-vectors") == few, (f["label"], f["site"], f["pool"])
        assert not few or f["site"] == "embed"  # chosen only where every site is flagged
    for r in result.ranking:
        lead = [f for f in result.findings if f["label"] == r["leader"]
                and (f["pair"], f["pool"], f["metric"]) == (r["pair"], r["pool"], r["metric"])]  # fmt: skip
        assert all(f["artifact"] is None for f in lead)
    assert any("many are identical at embed" in w for w in result.warnings)
    for lang in ("zh", "en"):
        caption = _similarity_caption(result.similarity, "Qwen tiny", "GPT-2 wide", lang, "last")
        assert "left out of this summary" in caption
        found = re.search(r"between Qwen tiny (\S+) and GPT-2 wide (\S+?)[ .]", caption)
        assert found is not None, caption
        (best,) = [
            r for r in result.similarity
            if (r["lang"], r["pool"], r["metric"], r["site_a"], r["site_b"])
            == (lang, "last", "cka", found[1], found[2])
        ]  # fmt: skip
        assert best["artifact"] is None


def test_each_cell_carries_the_token_label_baseline_of_both_models(result, runs):
    """The token-label baseline (issue 29): CKA of a site's vectors with the one-hot of each
    prompt's last non-special token, recomputed here in float64 from the token files."""
    _root, a, b = runs

    def onehot_of_last(run, lang):
        ids, special = run.token_ids(lang), run.special_tokens_mask(lang)
        last = [
            int(np.asarray(t)[~np.asarray(s, bool)][-1]) for t, s in zip(ids, special, strict=True)
        ]
        values = sorted(set(last))
        return np.array([[1.0 if v == w else 0.0 for w in values] for v in last])

    checked = 0
    for r in result.similarity:
        if r["metric"] != "cka" or r["value"] is None or r["lang"] != "zh":
            continue
        ta = _cka64(np.asarray(a.array("zh", r["site_a"], r["pool"])), onehot_of_last(a, "zh"))
        tb = _cka64(np.asarray(b.array("zh", r["site_b"], r["pool"])), onehot_of_last(b, "zh"))
        assert r["token_label_a"] == pytest.approx(ta, rel=1e-6, abs=1e-9)
        assert r["token_label_b"] == pytest.approx(tb, rel=1e-6, abs=1e-9)
        assert r["above_token_label"] == (r["value"] > max(ta, tb))
        checked += 1
    assert checked > 0


def test_label_cka_equals_cka_with_the_explicit_one_hot():
    from xlalign.studies.compare import label_cka

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 7)) + 3.0
    codes = rng.integers(0, 5, size=60)
    onehot = np.eye(5)[codes]
    assert label_cka(x, codes) == pytest.approx(_cka64(x, onehot), rel=1e-10)
    assert label_cka(x, np.zeros(60, dtype=np.int64)) is None  # one class: undefined


def test_a_control_swept_with_other_settings_is_swept_again(runs, tmp_path):
    """Issue 27, item 4: a control's alignment.json swept with --center beside the model's
    uncentred one turned a verdict around. compare sweeps such a control again with the
    model's settings, says so, and its findings read the same as with a consistent control."""
    import shutil

    _root, a, b = runs
    copy = tmp_path / "a"
    shutil.copytree(a.path, copy)
    ctl = copy / CONTROL_DIR
    write_alignment(layer_sweep(_load(ctl), SweepConfig(metrics=SWEEP.metrics, n_boot=20,
                                                        center=True), progress=False), ctl)  # fmt: skip
    said: list[str] = []
    mixed = compare([copy, b.path], config=CompareConfig(k=5, n_perms=0), progress=False,
                    say=said.append)  # fmt: skip
    assert any("control-random-init/alignment.json was swept with other settings (center: True, "
               "not False)" in m for m in said)  # fmt: skip
    write_alignment(layer_sweep(_load(ctl), SWEEP, progress=False), ctl)  # consistent again
    clean = compare([copy, b.path], config=CompareConfig(k=5, n_perms=0), progress=False,
                    say=lambda _m: None)  # fmt: skip

    def key(f):
        return (f["label"], tuple(f["pair"]), f["pool"], f["metric"])

    assert {key(f): (f["verdict"], f["control"]) for f in mixed.findings} == {
        key(f): (f["verdict"], f["control"]) for f in clean.findings
    }
