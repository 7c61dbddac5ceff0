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


def test_a_models_own_sweep_of_other_settings_or_other_arrays_is_swept_again(runs, tmp_path):
    """The model's stored alignment.json is checked like the control's: swept with other
    settings, or recording another run's fingerprint, it is swept again and the message names
    the model's own file; the control's consistent sweep is read as stored."""
    import shutil

    _root, a, b = runs
    copy = tmp_path / "a"
    shutil.copytree(a.path, copy)
    centred = SweepConfig(metrics=SWEEP.metrics, n_boot=20, center=True)
    write_alignment(layer_sweep(_load(copy), centred, progress=False), copy)
    names = {"A": "qa", "B": "gb"}
    cfg = CompareConfig(k=5, n_perms=0, sweep=SWEEP)  # the settings every sweep must have
    said: list[str] = []
    res = compare([copy, b.path], labels=names, config=cfg, progress=False, say=said.append)
    moved = [m for m in said if "again" in m]
    assert moved == [
        f"{copy / 'alignment.json'} was swept with other settings (center: True, not False): "
        "sweeping qa (model) again, so every sweep compared has the same settings"
    ]
    assert res.runs[0]["sweep"] == "computed again (its alignment.json has other settings)"
    # B keeps no sweep: both of its sweeps are computed, and said so
    assert res.runs[1]["sweep"] == "computed (the run has no alignment.json)"
    assert [m for m in said if m.startswith("sweeping gb")] == [
        f"sweeping gb (model): {b.path} has no alignment.json",
        f"sweeping gb (control): {b.path / CONTROL_DIR} has no alignment.json",
    ]
    # the same settings, but the sweep of other arrays (as after extracting again)
    doc = layer_sweep(_load(copy), SWEEP, progress=False)
    write_alignment(doc, copy)
    stored = json.loads((copy / "alignment.json").read_text())
    run = _load(copy)
    assert stored["run_fingerprint"] == run.fingerprint  # consistent: read as stored
    said.clear()
    res = compare([copy, b.path], labels=names, config=cfg, progress=False, say=said.append)
    assert not [m for m in said if "again" in m or m.startswith("sweeping qa")]
    assert res.runs[0]["sweep"] == "alignment.json of the run"
    # the model's sweep stored, the control's missing: the control alone is computed
    (copy / CONTROL_DIR / "alignment.json").unlink()
    said.clear()
    res = compare([copy, b.path], labels=names, config=cfg, progress=False, say=said.append)
    assert [m for m in said if m.startswith("sweeping qa")] == [
        f"sweeping qa (control): {copy / CONTROL_DIR} has no alignment.json"
    ]
    kinds = {c["kind"] for c in res.curves if c["label"] == "qa"}
    assert kinds == {"model", "control", "lexical"}
    want = {(r["x"], r["y"], r["pool"], r["metric"], r["site"]): r["value"]
            for r in layer_sweep(_load(copy / CONTROL_DIR), SWEEP, progress=False)["records"]
            if r["site"] != "lexical"}  # fmt: skip
    got = {(*c["pair"], c["pool"], c["metric"], c["site"]): c["value"]
           for c in res.curves if c["label"] == "qa" and c["kind"] == "control"}  # fmt: skip
    assert got == want
    stored["run_fingerprint"] = "0" * len(run.fingerprint)
    (copy / "alignment.json").write_text(json.dumps(stored))
    said.clear()
    res = compare([copy, b.path], labels=names, config=cfg, progress=False, say=said.append)
    assert [m for m in said if "again" in m] == [
        f"{copy / 'alignment.json'} was swept with other settings (run fingerprint: "
        f"{stored['run_fingerprint']}, not {run.fingerprint}): sweeping qa (model) again, so "
        "every sweep compared has the same settings"
    ]
    assert res.runs[0]["sweep"] == "computed again (its alignment.json has other settings)"


def test_curves_carry_each_records_undefined_reason(runs):
    from xlalign.studies.compare import _curves, _Model

    _, a, _ = runs
    rec = {"x": "zh", "y": "en", "pool": "mean", "metric": "z", "ci_low": None, "ci_high": None}
    doc = {"records": [{**rec, "site": "L0", "value": None, "undefined_reason": "constant rows"},
                       {**rec, "site": "L1", "value": 2.0}]}  # fmt: skip
    ctl = {"records": [{**rec, "site": "L0", "value": None, "undefined_reason": "no variance"}]}
    curves = _curves(_Model("A", str(a.path), a, None, alignment=doc, control_alignment=ctl))
    assert [(c["kind"], c["site"], c["value"], c["undefined_reason"]) for c in curves] == [
        ("model", "L0", None, "constant rows"),
        ("model", "L1", 2.0, None),
        ("control", "L0", None, "no variance"),
    ]
    assert all(set(c) >= {"undefined_reason", "relative_depth"} for c in curves)


def test_similarity_cells_of_synthetic_runs_carry_n_reasons_and_artifacts(tmp_path):
    """``_similarity`` on two synthetic runs of 12 rows, where A's zh vectors at embed are all
    one vector: CKA is undefined there with its reason, the site is named as an artifact word
    for word, k-NN with k = n is undefined with the metric's own error, every cell has n = 12,
    and no null note is made when no null is asked for."""
    from types import SimpleNamespace

    from xlalign.metrics import linear_cka_matrix, mutual_knn_matrix
    from xlalign.store.run import load_run
    from xlalign.store.synthetic import write_synthetic_run
    from xlalign.studies.compare import _count_identical, _Model, _similarity

    pa = write_synthetic_run(tmp_path / "a", 12, 8, n_sites=2, seed=1)
    pb = write_synthetic_run(tmp_path / "b", 12, 8, n_sites=2, seed=2)
    f = pa / "arrays" / "zh" / "embed" / "last.npy"
    np.save(f, np.repeat(np.load(f)[:1], 12, axis=0))
    a = _Model("A", str(pa), load_run(pa), None, rows=np.arange(12))
    b = _Model("B", str(pb), load_run(pb), None, rows=np.arange(12))
    for m in (a, b):
        _count_identical(m, ["zh", "en"], ["last"])
    steps: list[int] = []
    cfg = CompareConfig(k=12, n_perms=0)
    recs, notes, artifacts = _similarity(
        a, b, ["zh", "en"], ["last"], cfg, SimpleNamespace(update=steps.append)
    )
    assert notes == [] and steps == [1, 1]
    assert artifacts == [
        "A, zh, last pool: of the 12 vectors, many are identical at embed (12 share one of 1 "
        "distinct): prompts share the token pooled there, so similarity with those sites mostly "
        "measures which prompts share it (two models' vectors of the same two tokens have CKA "
        "1); those cells carry artifact 'identical-vectors'"
    ]
    sites = list(a.run.sites)
    assert len(recs) == 2 * 2 * len(sites) ** 2  # two languages, two metrics, every site pair
    assert all(r["n"] == 12 for r in recs)
    xs = [np.asarray(a.run.array("zh", s, "last")) for s in sites]
    ys = [np.asarray(b.run.array("zh", s, "last")) for s in sites]
    with pytest.raises(XlalignError) as err:
        mutual_knn_matrix(xs, ys, k=12)
    knn = [r for r in recs if r["metric"] == "mutual_knn"]
    assert all(r["value"] is None and r["undefined_reason"] == str(err.value) for r in knn)
    want = linear_cka_matrix(xs, ys, n_perms=0)
    for r in recs:
        if r["metric"] != "cka" or r["lang"] != "zh":
            continue
        i, j = sites.index(r["site_a"]), sites.index(r["site_b"])
        if r["site_a"] == "embed":
            assert r["value"] is None and "no variance" in r["undefined_reason"]
            assert r["undefined_reason"] == want.reasons[(i, j)]
            assert r["artifact"] == "identical-vectors" and r["distinct_a"] == 1
        else:
            assert r["value"] == pytest.approx(_cka64(xs[i], ys[j]), abs=1e-6)
            assert r["undefined_reason"] is None and r["artifact"] is None
            assert r["distinct_a"] == r["distinct_b"] == 12
    for r in recs:  # above both models' token-label baselines, or undefined
        if r["metric"] == "cka":
            ta, tb = r["token_label_a"], r["token_label_b"]
            want_above = None if None in (r["value"], ta, tb) else r["value"] > max(ta, tb)
            assert r["above_token_label"] == want_above
    # with a null: each cell's null mean, spread and p-value are the matrix's
    recs, notes, _ = _similarity(
        a, b, ["zh"], ["last"], CompareConfig(k=3, n_perms=20, seed=4),
        SimpleNamespace(update=steps.append),
    )  # fmt: skip
    null = linear_cka_matrix(xs, ys, n_perms=20, seed=4)
    assert notes == [] and null.p_value is not None
    for r in recs:
        if r["metric"] == "cka":
            i, j = sites.index(r["site_a"]), sites.index(r["site_b"])
            for key, grid in (("null_mean", null.null_mean), ("null_std", null.null_std),
                              ("p_value", null.p_value)):  # fmt: skip
                v = grid[i, j]
                assert r[key] == (float(v) if np.isfinite(v) else None), key
            assert r["n_perms"] == 20


def _synthetic(path, seed=1, **kw):
    """A synthetic run of 12 rows; runs of one ``seed`` share the corpus (its fingerprint), and
    ``perturb`` rotates every array so their vectors differ."""
    from xlalign.store.synthetic import write_synthetic_run

    perturb = kw.pop("perturb", False)
    kw.setdefault("pools", ("last", "mean"))
    out = write_synthetic_run(path, 12, 8, n_sites=2, seed=seed, **kw)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["corpus_fingerprint"] = f"synthetic-{seed}"  # as extract records the corpus's
    (out / "manifest.json").write_text(json.dumps(manifest))
    if perturb:
        rot = np.random.default_rng(3).normal(size=(8, 8))
        for f in (out / "arrays").rglob("*.npy"):
            x = np.load(f)
            np.save(f, (x @ rot).astype(x.dtype))
    return out


def test_compare_refuses_runs_it_cannot_pair_word_for_word(tmp_path):
    cfg = CompareConfig(k=3, n_perms=0)

    def refused(a, b, **over):
        with pytest.raises(XlalignError) as err:
            compare([a, b], config=CompareConfig(k=3, n_perms=0, **over), progress=False,
                    say=lambda _m: None)  # fmt: skip
        return str(err.value)

    a = _synthetic(tmp_path / "a")
    fr = _synthetic(tmp_path / "fr", langs=("zh", "fr"))
    assert refused(a, fr) == "the runs share 1 language(s) (zh); a comparison needs two"
    swapped = _synthetic(tmp_path / "swapped", langs=("en", "zh"))
    assert refused(a, swapped) == (
        f"the runs order their languages differently ({a}: zh,en; {swapped}: en,zh), so their "
        "language pairs do not match (x/y, P@1 x->y); extract them with the same --langs order"
    )
    b = _synthetic(tmp_path / "b", perturb=True)
    assert refused(a, b, langs=("zh", "fr")) == f"language 'fr' not in run {a}: it has zh, en"
    last, mean = (
        _synthetic(tmp_path / "l", pools=("last",)),
        _synthetic(tmp_path / "m", pools=("mean",)),
    )
    assert refused(last, mean) == (
        "the runs share no pooled vectors (pools); extract them with one pool in common"
    )
    other = _synthetic(tmp_path / "other", seed=9)
    (other / "corpus.jsonl").unlink(missing_ok=True)
    assert refused(other, a).startswith(f"runs {other} and {a} were made from different corpora")
    # a row changed on disk since extraction is named before anything is computed
    f = b / "arrays" / "en" / "L0" / "mean.npy"
    x = np.load(f)
    x[4, 2] = np.nan
    np.save(f, x)
    with pytest.raises(XlalignError, match=r"en, site L0, pool mean holds NaN or inf in row 4 "):
        compare([a, b], config=cfg, progress=False, say=lambda _m: None)


def test_compare_of_synthetic_runs_keeps_the_asked_pools_and_names_a_small_sample(tmp_path, capsys):
    from xlalign.store.lock import LOCK_FILE

    a, b = _synthetic(tmp_path / "a"), _synthetic(tmp_path / "b", perturb=True)
    out = tmp_path / "cmp"
    locks: list[str] = []

    def say(_m):  # called while compare holds the output folder's lock
        if (out / LOCK_FILE).exists():
            locks.append(json.loads((out / LOCK_FILE).read_text())["command"])

    res = compare([a, b], labels=["A", "B"], config=CompareConfig(k=3, n_perms=0, pools=("mean",)),
                  output=out, progress=True, say=say)  # fmt: skip
    assert res.format == "xlalign.compare"
    base = SweepConfig()  # no stored sweep: swept with the defaults
    assert res.settings == {
        "k": 3, "n_perms": 0, "seed": 0, "languages": ["zh", "en"], "pools": ["mean"],
        "sweep": {"metrics": list(base.metrics), "null": base.null, "n_boot": base.n_boot,
                  "seed": base.seed},
        "relative_depth": "embed 0, block i of n at (i + 1) / n, final 1",
    }  # fmt: skip
    for label, path in (("A", a), ("B", b)):
        assert (
            f"{label} has no random-weights control ({path}/control-random-init): its findings "
            "say no-control (run `xlalign run ... --control random-init`)"
        ) in res.warnings
    assert {r["pool"] for r in res.similarity} == {"mean"}  # the sweeps' curves keep both
    assert (
        "only 12 shared pairs (under 30): these numbers are not reliable; intervals are wide "
        "and a few pairs can move any value"
    ) in res.warnings
    assert locks and set(locks) == {"xlalign compare"}
    err = capsys.readouterr().err
    assert "compare: 100%" in err and "| 2/2 [" in err  # one pair, two languages, one pool
    assert "matrix/s]" in err  # the bar counts matrices
    # an older sweep of A that records no null, beside B's computed one: said, in a fixed order
    from xlalign.studies.layers import layer_sweep, write_alignment

    old = layer_sweep(_load(a), SweepConfig(n_boot=0, n_perms=50), progress=False)
    write_alignment({k: v for k, v in old.items() if k != "null"}, a)
    res = compare([a, b], config=CompareConfig(k=3, n_perms=0), progress=True,
                  say=lambda _m: None)  # fmt: skip
    err = capsys.readouterr().err
    assert "compare: 100%" in err and "| 4/4 [" in err  # two pools now
    assert "the runs' sweeps use different nulls (exact, not recorded)" in res.warnings


def test_a_row_view_reads_each_language_at_its_rows(runs):
    """compare's view of a run on the shared rows: ids, arrays, token ids and special-token
    masks of the rows asked for, in that order, language by language."""
    from xlalign.studies.compare import _RowView

    _, a, _ = runs
    rows = np.array([5, 0, 3])
    view = _RowView(a, rows)
    assert list(view.ids) == [a.ids[i] for i in rows] and view.n_rows == 3
    for lang in ("zh", "en"):
        tokens, masks = a.token_ids(lang), a.special_tokens_mask(lang)
        got_t, got_m = view.token_ids(lang), view.special_tokens_mask(lang)
        assert len(got_t) == len(got_m) == 3
        for k, i in enumerate(rows):
            assert np.array_equal(got_t[k], tokens[i]) and np.array_equal(got_m[k], masks[i])
        np.testing.assert_array_equal(
            view.array(lang, "L0", "mean"), np.asarray(a.array(lang, "L0", "mean"))[rows]
        )
    # the two languages' tokens differ, so reading the other language would be seen
    assert any(
        not np.array_equal(z, e)
        for z, e in zip(view.token_ids("zh"), view.token_ids("en"), strict=True)
    )


# --------------------------------------------------------------------------- parts, on small runs
# (issue 25: each part of compare checked on runs built here, without a model)


def _manifest_run(path, ids, fingerprint=None, langs=("zh", "en"), **extra):
    """A run folder's manifest only (no array): what shared_rows and _saved_corpus read."""
    from pathlib import Path

    from xlalign.store.run import Run

    man = {"languages": list(langs), "ids": list(ids), "n_rows": len(ids), **extra}
    if fingerprint is not None:
        man["corpus_fingerprint"] = fingerprint
    return Run(Path(path), man)


def _texts_corpus(rows, langs=("zh", "en")):
    """``rows``: ``[(id, {lang: text})]`` -> a ParallelCorpus in that order."""
    from xlalign.data.corpus import ParallelCorpus

    return ParallelCorpus(
        tuple(i for i, _ in rows), {lang: tuple(t[lang] for _, t in rows) for lang in langs}
    )


def _row(i, suffix=""):
    return (i, {"zh": f"zh {i}", "en": f"en {i}{suffix}", "fr": f"fr {i}"})


def _models(*runs):
    from xlalign.studies.compare import _Model

    return [
        _Model(label=chr(65 + k), given=f"runs/{chr(97 + k)}", run=r, control=None)
        for k, r in enumerate(runs)
    ]


def test_shared_rows_of_runs_with_one_fingerprint_and_ids_are_all_rows(tmp_path):
    from xlalign.studies.compare import shared_rows

    ids = ["r0", "r1", "r2", "r3"]
    # no corpus copy anywhere: only the fingerprints can say the runs share their rows
    ms = _models(*(_manifest_run(tmp_path / x, ids, "fp1") for x in "ab"))
    got = shared_rows(ms, ("zh", "en"))
    assert got == {
        "shared": "all", "n_rows": 4, "n_rows_per_run": {"A": 4, "B": 4}, "ids": ids,
        "fingerprints": {"A": "fp1", "B": "fp1"}, "languages": ["zh", "en"], "note": None,
    }  # fmt: skip
    for m in ms:
        assert m.rows.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("fp_a", "fp_b", "ids_b"),
    [
        ("fp1", "fp2", ["r0", "r1", "r2", "r3"]),  # fingerprints differ: ids alone do not say
        (None, None, ["r0", "r1", "r2", "r3"]),  # no fingerprint at all: nothing to trust
        ("fp1", "fp1", ["r3", "r2", "r1", "r0"]),  # one fingerprint, rows stored otherwise
    ],
)
def test_shared_rows_are_matched_by_id_and_text_unless_fingerprints_and_ids_agree(
    tmp_path, fp_a, fp_b, ids_b
):
    from xlalign.studies.compare import shared_rows

    ids_a = ["r0", "r1", "r2", "r3"]
    texts = dict(_row(i) for i in ids_a)
    a = _manifest_run(tmp_path / "a", ids_a, fp_a)
    b = _manifest_run(tmp_path / "b", ids_b, fp_b)
    _texts_corpus([(i, texts[i]) for i in ids_a]).to_jsonl(tmp_path / "a" / "corpus.jsonl")
    _texts_corpus([(i, texts[i]) for i in ids_b]).to_jsonl(tmp_path / "b" / "corpus.jsonl")
    ms = _models(a, b)
    got = shared_rows(ms, ["zh", "en"])
    assert got["shared"] == "intersection"
    assert got["ids"] == ids_a and got["ids_with_other_texts"] == []
    assert got["fingerprints"] == {"A": fp_a, "B": fp_b}
    assert got["note"] == (
        "the runs share 4 rows (same id and texts), of 4 in A, 4 in B; only those are compared"
    )
    assert ms[0].rows.tolist() == [0, 1, 2, 3]
    assert ms[1].rows.tolist() == [ids_b.index(i) for i in ids_a]


def test_shared_rows_keep_the_ids_with_equal_texts_in_the_first_runs_order(tmp_path):
    """A: x0 (A only) and r1..r5; B: r5..r1 reversed, r3 with another English text, y8 and y9
    (B only). Shared: r1, r2, r4, r5 in A's order; r3 is named as left out."""
    from xlalign.studies.compare import shared_rows

    rows_a = [_row("x0"), *(_row(f"r{i}") for i in range(1, 6))]
    rows_b = [_row(f"r{i}", " (other)" if i == 3 else "") for i in range(5, 0, -1)]
    rows_b += [_row("y8"), _row("y9")]
    ids_a, ids_b = [i for i, _ in rows_a], [i for i, _ in rows_b]
    a = _manifest_run(tmp_path / "a", ids_a, "fpA")
    b = _manifest_run(tmp_path / "b", ids_b, "fpB")
    _texts_corpus(rows_a).to_jsonl(tmp_path / "a" / "corpus.jsonl")
    _texts_corpus(rows_b).to_jsonl(tmp_path / "b" / "corpus.jsonl")
    ms = _models(a, b)
    got = shared_rows(ms, ("zh", "en"))
    text_b = dict(rows_b)
    want = [i for i, t in rows_a if i in text_b and text_b[i] == t]
    other = [i for i, t in rows_a if i in text_b and text_b[i] != t]
    assert want == ["r1", "r2", "r4", "r5"] and other == ["r3"]
    assert got == {
        "shared": "intersection", "n_rows": 4, "n_rows_per_run": {"A": 6, "B": 7}, "ids": want,
        "fingerprints": {"A": "fpA", "B": "fpB"}, "languages": ["zh", "en"],
        "ids_with_other_texts": other,
        "note": "the runs share 4 rows (same id and texts), of 6 in A, 7 in B; only those are "
        "compared; 1 shared ids have other texts and are left out (e.g. 'r3')",
    }  # fmt: skip
    assert ms[0].rows.tolist() == [ids_a.index(i) for i in want]
    assert ms[1].rows.tolist() == [ids_b.index(i) for i in want]
    assert ms[0].rows.dtype == np.int64
    # compared on zh alone, r3 is shared too
    assert shared_rows(_models(a, b), ["zh"])["ids"] == ["r1", "r2", "r3", "r4", "r5"]


def test_shared_rows_of_a_single_run_without_fingerprint_are_its_corpus_rows(tmp_path):
    from xlalign.studies.compare import shared_rows

    rows = [_row(f"r{i}") for i in range(3)]
    run = _manifest_run(tmp_path / "a", [i for i, _ in rows])
    _texts_corpus(rows).to_jsonl(tmp_path / "a" / "corpus.jsonl")
    (m,) = _models(run)
    assert shared_rows([m], ["zh", "en"])["ids"] == ["r0", "r1", "r2"]
    assert m.rows.tolist() == [0, 1, 2]


def test_shared_rows_refuse_runs_that_cannot_be_matched_and_say_why(tmp_path):
    from xlalign.errors import RunError
    from xlalign.studies.compare import shared_rows

    def runs(rows_a, rows_b, save_b=True):
        for name, rows, save in (("a", rows_a, True), ("b", rows_b, save_b)):
            if save:
                _texts_corpus(rows).to_jsonl(tmp_path / name / "corpus.jsonl")
        return _models(
            _manifest_run(tmp_path / "a", [i for i, _ in rows_a], "fpA"),
            _manifest_run(tmp_path / "b", [i for i, _ in rows_b], "fpB"),
        )

    same = [_row(f"r{i}") for i in range(4)]
    (tmp_path / "b").mkdir()
    with pytest.raises(RunError) as e:  # B keeps no corpus copy: its rows cannot be read
        shared_rows(runs(same, same, save_b=False), ["zh", "en"])
    assert str(e.value) == (
        "runs runs/a and runs/b were made from different corpora (corpus fingerprints differ) "
        "and runs/b keeps no copy of its corpus (corpus.jsonl) to find the rows they share; "
        "compare runs made from one corpus"
    )
    other = [_row(f"r{i}", " (other)") for i in range(4)]
    with pytest.raises(RunError) as e:
        shared_rows(runs(same, other), ["zh", "en"])
    assert str(e.value) == (
        "runs runs/a, runs/b were made from different corpora: 4 ids are shared but their "
        "texts differ (e.g. 'r0'); compare runs made from one corpus"
    )
    with pytest.raises(RunError) as e:
        shared_rows(runs(same, [_row(f"q{i}") for i in range(4)]), ["zh", "en"])
    assert str(e.value) == (
        "runs runs/a, runs/b were made from different corpora: no id is shared; compare runs "
        "made from one corpus"
    )
    with pytest.raises(RunError) as e:  # two rows in common: too few for the metrics
        shared_rows(runs(same, same[:2]), ["zh", "en"])
    assert str(e.value) == (
        "runs runs/a, runs/b share only 2 rows (same id and texts); the metrics need at least 3"
    )
    assert shared_rows(runs(same, same[:3]), ["zh", "en"])["n_rows"] == 3  # three are enough


def test_saved_corpus_is_the_runs_copy_else_a_source_with_its_fingerprint(tmp_path):
    from xlalign.data.corpus import load_corpus
    from xlalign.studies.compare import _saved_corpus

    full = _texts_corpus([_row(f"r{i}") for i in range(4)], langs=("zh", "en", "fr"))
    source = full.to_jsonl(tmp_path / "source.jsonl")
    # the run was made from the file read in its languages (fr is then a metadata column)
    fp = load_corpus(source, ["zh", "en"]).fingerprint()
    assert fp != full.fingerprint()  # read in every language, it would not match
    # the run's own copy is trusted whatever the manifest says
    (tmp_path / "own").mkdir()
    full.select(["zh", "en"]).to_jsonl(tmp_path / "own" / "corpus.jsonl")
    got = _saved_corpus(_manifest_run(tmp_path / "own", full.ids, "stale", corpus_source="x"))
    assert got is not None and got.fingerprint() == full.select(["zh", "en"]).fingerprint()
    # no copy: the source file, read in the run's languages, when its fingerprint matches
    (tmp_path / "bare").mkdir()
    got = _saved_corpus(_manifest_run(tmp_path / "bare", full.ids, fp, corpus_source=str(source)))
    assert got is not None and got.languages == ("zh", "en") and got.ids == full.ids
    assert got.fingerprint() == fp
    # a source edited since (another fingerprint) is not the run's corpus
    run = _manifest_run(tmp_path / "bare", full.ids, "stale", corpus_source=str(source))
    assert _saved_corpus(run) is None
    # a broken copy is skipped for the source
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "corpus.jsonl").write_text("not json\n", encoding="utf-8")
    run = _manifest_run(tmp_path / "broken", full.ids, fp, corpus_source=str(source))
    got = _saved_corpus(run)
    assert got is not None and got.fingerprint() == fp
    # nothing to read: None
    assert _saved_corpus(_manifest_run(tmp_path / "bare", full.ids, fp)) is None


def test_saved_corpus_reads_no_file_named_after_an_in_memory_or_missing_source(
    tmp_path, monkeypatch
):
    """``<memory>`` (a corpus built in Python) and a missing source name no file: a folder of
    that name in the working directory is not read as the run's corpus."""
    from xlalign.studies.compare import _saved_corpus

    monkeypatch.chdir(tmp_path)
    corpus = _texts_corpus([_row(f"r{i}") for i in range(3)])
    for name in ("<memory>", "None"):
        (tmp_path / name).mkdir()
        for lang in ("zh", "en"):
            (tmp_path / name / f"{lang}.txt").write_text(
                "".join(t + "\n" for t in corpus.text(lang)), encoding="utf-8"
            )
    (tmp_path / "run").mkdir()
    assert _saved_corpus(_manifest_run(tmp_path / "run", corpus.ids)) is None
    run = _manifest_run(tmp_path / "run", corpus.ids, corpus_source="<memory>")
    assert _saved_corpus(run) is None


def test_stored_alignment_is_none_when_absent_and_refuses_what_is_not_a_sweep(tmp_path):
    from xlalign.errors import RunError
    from xlalign.studies.compare import _stored_alignment

    assert _stored_alignment(tmp_path) is None
    p = tmp_path / "alignment.json"
    doc = {"records": [{"site": "L0", "value": 1.5}], "null": "exact"}
    p.write_text(json.dumps(doc), encoding="utf-8")
    assert _stored_alignment(tmp_path) == doc
    p.write_text("{not json", encoding="utf-8")
    with pytest.raises(RunError, match=re.escape(f"{p}: not valid JSON (")):
        _stored_alignment(tmp_path)
    for bad in ([{"records": []}], {"records": {"L0": 1}}, {"null": "exact"}):
        p.write_text(json.dumps(bad), encoding="utf-8")
        with pytest.raises(RunError) as e:
            _stored_alignment(tmp_path)
        assert str(e.value) == f"{p}: not an alignment.json (no 'records' list)"


class _SummaryRun:
    def __init__(self, arch, n_layers):
        self.manifest = {"architecture": arch}
        self.n_layers = n_layers


def _ranked(*keys):
    return [{"metric": m, "pool": p, "statement": f"{m}/{p}"} for m, p in keys]


def test_summary_leads_with_z_statements_then_other_metrics_in_finding_order():
    from xlalign.studies.compare import _Model, _summary
    from xlalign.studies.findings import FINDING_METRICS

    models = [
        _Model(label="A", given="a", run=_SummaryRun("qwen2", 4), control=None),  # type: ignore[arg-type]
        _Model(label="B", given="b", run=_SummaryRun("gpt2", 3), control=None),  # type: ignore[arg-type]
    ]
    first = "2 runs: A (qwen2, 4 layers), B (gpt2, 3 layers); 7 shared pairs"
    assert FINDING_METRICS.index("p1_xy") < FINDING_METRICS.index("cka")
    # every z statement, pools in name order, ahead of the other metrics
    ranking = _ranked(("cka", "last"), ("z", "mean"), ("p1_xy", "last"), ("z", "last"),
                      ("z", "max"))  # fmt: skip
    head, lines = _summary(models, {"n_rows": 7, "note": "only 7"}, ranking)
    assert head == "z/last"
    assert lines == [first, "corpus: only 7", "z/max", "z/mean"]
    # no z: the first two by metric (finding order) then pool
    ranking = _ranked(("cka", "mean"), ("p1_yx", "mean"), ("p1_xy", "mean"), ("p1_xy", "last"))
    head, lines = _summary(models, {"n_rows": 7, "note": None}, ranking)
    assert (head, lines) == ("p1_xy/last", [first, "p1_xy/mean"])
    head, lines = _summary(models, {"n_rows": 7}, [])
    assert head == "no finding: the sweeps hold none of z, P@1 or CKA with a value"
    assert lines == [first]


def test_run_entry_describes_the_run_its_depths_and_its_control(tmp_path):
    from xlalign.store.run import Run
    from xlalign.studies.compare import _Model, _run_entry

    sites = ["embed", "L0", "L1", "L2", "L3", "final"]
    man = {"model": "hub/tiny", "architecture": "qwen2", "n_layers": 4, "d_model": 8,
           "sites": sites}  # fmt: skip
    run, ctl = Run(tmp_path / "a", man), Run(tmp_path / "a" / CONTROL_DIR, dict(man))
    m = _Model(label="A", given="a", run=run, control=ctl, sweep_source="computed")
    want = {
        "label": "A", "path": str(tmp_path / "a"), "model": "hub/tiny", "architecture": "qwen2",
        "n_layers": 4, "d_model": 8, "sites": sites,
        "relative_depths": {"embed": 0.0, "L0": 1 / 4, "L1": 2 / 4, "L2": 3 / 4, "L3": 1.0,
                            "final": 1.0},
        "control": str(tmp_path / "a" / CONTROL_DIR), "sweep": "computed",
    }  # fmt: skip
    assert _run_entry(m) == want
    m.control = None
    assert _run_entry(m) == {**want, "control": None}


def test_common_keeps_the_first_runs_order_or_checks_the_asked_ones():
    from xlalign.errors import RunError, XlalignError
    from xlalign.studies.compare import _common

    have = [["zh", "en", "de", "fr"], ["en", "zh", "fr"], ["zh", "de", "en", "fr"]]
    given = ["a", "b", "c"]
    assert _common("language", None, have, given) == ["zh", "en", "fr"]
    assert _common("language", ("fr", "en"), have, given) == ["fr", "en"]
    with pytest.raises(RunError) as e:
        _common("language", ["en", "de"], have, given)
    assert str(e.value) == "language 'de' not in run b: it has en, zh, fr"
    with pytest.raises(ValueError) as e:  # one list of languages per run, or a bug
        _common("pool", ["x"], [["x"], ["x"]], ["a"])
    assert not isinstance(e.value, XlalignError)


def test_check_output_accepts_new_empty_or_earlier_comparison_folders_only(tmp_path):
    from xlalign.store.lock import LOCK_FILE
    from xlalign.studies.compare import _check_output

    _check_output(tmp_path / "new")  # not there yet
    (tmp_path / "empty").mkdir()
    _check_output(tmp_path / "empty")
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / LOCK_FILE).write_text("")
    _check_output(tmp_path / "locked")  # our own lock is not content
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "compare.json").write_text("{}")
    (tmp_path / "earlier" / "report.md").write_text("")
    _check_output(tmp_path / "earlier")
    (tmp_path / "file").write_text("x")
    with pytest.raises(XlalignError) as e:
        _check_output(tmp_path / "file")
    assert str(e.value) == f"output '{tmp_path / 'file'}' exists and is not a folder"
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(XlalignError) as e:
        _check_output(tmp_path / "busy")
    assert str(e.value) == (
        f"output folder '{tmp_path / 'busy'}' is not empty and holds no comparison (no "
        "compare.json); choose a new or empty folder"
    )


def _small_result():
    from xlalign.studies.compare import FORMAT, CompareResult

    return CompareResult(
        format=FORMAT, headline="h", summary=["s"], warnings=["w"], runs=[],
        corpus={"shared": "all", "n_rows": 3, "ids": ["a", "b", "c"], "languages": ["zh", "en"],
                "note": None, "n_rows_per_run": {}, "fingerprints": {}},
        curves=[], similarity=[], findings=[], ranking=[], settings={"k": 3},
        paths={"json": "elsewhere"},
    )  # fmt: skip


def test_compare_result_to_dict_is_every_field_but_paths():
    res = _small_result()
    doc = res.to_dict()
    names = ["format", "headline", "summary", "warnings", "runs", "corpus", "curves",
             "similarity", "findings", "ranking", "settings"]  # fmt: skip
    assert list(doc) == names
    assert all(doc[n] is getattr(res, n) for n in names)


def test_write_compare_writes_the_json_and_the_report_into_a_new_or_earlier_folder(tmp_path):
    from xlalign.studies.compare import write_compare

    res = _small_result()
    out = tmp_path / "deep" / "out"  # its parent is made too
    for _ in range(2):  # a second write replaces the first
        paths = write_compare(res, out)
        assert paths == {"json": out / "compare.json", "html": out / "report.html",
                         "md": out / "report.md"}  # fmt: skip
        assert json.loads((out / "compare.json").read_text()) == res.to_dict()
        assert "h" in (out / "report.md").read_text()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(XlalignError, match="holds no comparison"):
        write_compare(res, tmp_path / "busy")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"k": 0}, "--k must be at least 1, got 0"),
        ({"n_perms": -1}, "--n-perms must be >= 0, got -1"),
        ({"seed": -1}, "--seed must be 0 or more, got -1"),
    ],
)
def test_compare_config_refuses_values_below_their_least(kw, message):
    with pytest.raises(XlalignError) as e:
        CompareConfig(**kw)
    assert str(e.value) == message
    least = {"k": 1, "n_perms": 0, "seed": 0}
    assert CompareConfig(**least) == CompareConfig(k=1, n_perms=0, seed=0)


def _array_run(path, ids, arrays, sites=("embed", "L0"), langs=("zh", "en")):
    """A Run whose arrays are given: ``arrays[(lang, site, pool)]`` (any other key fails)."""
    from xlalign.store.run import Run

    class _ArrayRun(Run):
        def array(self, lang, site, pool, *, mmap=True):
            return arrays[(lang, site, pool)]

    man = {"ids": list(ids), "n_rows": len(ids), "languages": list(langs), "sites": list(sites),
           "model": "hub/tiny"}  # fmt: skip
    return _ArrayRun(path, man)


def test_row_view_keeps_the_given_rows_in_the_given_order(tmp_path):
    from xlalign.studies.compare import _RowView

    ids = [f"r{i}" for i in range(5)]
    rng = np.random.default_rng(0)
    arrays = {(lang, s, p): rng.normal(size=(5, 3)).astype(np.float32)
              for lang in ("zh", "en") for s in ("embed", "L0") for p in ("last", "mean")}  # fmt: skip
    base = _array_run(tmp_path, ids, arrays)
    rows = np.array([3, 0, 4])
    view = _RowView(base, rows)
    assert view.ids == ("r3", "r0", "r4") and view.n_rows == 3
    assert view.path == base.path and view.manifest["model"] == "hub/tiny"
    assert base.ids == tuple(ids) and base.n_rows == 5  # the run itself is untouched
    for (lang, s, p), x in arrays.items():
        got = view.array(lang, s, p)
        assert got.shape == (3, 3)
        np.testing.assert_array_equal(got, x[[3, 0, 4]])


def test_count_identical_counts_each_site_on_the_shared_rows_only(tmp_path):
    """Rows 1, 3, 5 (not shared) are one vector; the shared rows 0, 2, 4 differ at L0, and
    two of them are equal at the embedding."""
    from xlalign.studies.compare import _count_identical, _Model

    rng = np.random.default_rng(1)
    arrays = {}
    for lang in ("zh", "en"):
        for s in ("embed", "L0"):
            for p in ("last", "mean"):
                x = rng.normal(size=(6, 2))
                x[[1, 3, 5]] = 7.0
                if s == "embed" and lang == "en":
                    x[2] = x[0]
                arrays[(lang, s, p)] = x
    run = _array_run(tmp_path, [f"r{i}" for i in range(6)], arrays)
    m = _Model(label="A", given="a", run=run, control=None, rows=np.array([0, 2, 4]))
    _count_identical(m, ["en"], ["mean"])
    assert set(m.identical) == {("en", "embed", "mean"), ("en", "L0", "mean")}
    for key, g in m.identical.items():
        _, counts = np.unique(arrays[key][[0, 2, 4]], axis=0, return_counts=True)
        assert (g.n, g.distinct, g.largest_group) == (3, len(counts), counts.max())
        assert g.identical == (key[1] == "embed")  # 2 of 3 rows: above a fifth


def test_identical_at_is_true_when_either_language_is_flagged_at_the_site():
    from xlalign.metrics.duplicates import identical_groups
    from xlalign.studies.compare import _identical_at, _Model

    same, distinct = np.ones((4, 2)), np.eye(4)
    m = _Model(label="A", given="a", run=None, control=None)  # type: ignore[arg-type]
    m.identical = {("en", "L0", "last"): identical_groups(same),
                   ("zh", "L0", "last"): identical_groups(distinct)}  # fmt: skip
    assert _identical_at(m, ("zh", "en"), "L0", "last") is True
    assert _identical_at(m, ("en", "zh"), "L0", "last") is True
    assert _identical_at(m, ("zh", "de"), "L0", "last") is False
    assert _identical_at(m, ("zh", "en"), "L1", "last") is False


class _TokenRun:
    """Token files of a run: ``tokens[lang]`` is a list of (ids, special mask) per row."""

    def __init__(self, tokens, error=None):
        self.tokens, self.error = tokens, error

    def token_ids(self, lang):
        if self.error is not None:
            raise self.error
        return [np.asarray(t, dtype=np.int32) for t, _ in self.tokens[lang]]

    def special_tokens_mask(self, lang):
        return [np.asarray(s, dtype=bool) for _, s in self.tokens[lang]]


def _token_rows():
    """Per language, rows of (ids, special): ends in a special token, in a plain one, all
    special; the last plain token id of each row is the label."""
    zh = [([1, 40, 41, 2], [1, 0, 0, 1]), ([1, 50, 52, 53], [1, 0, 0, 0]), ([1, 2], [1, 1]),
          ([60, 61, 62, 2], [0, 0, 0, 1]), ([1, 40, 9, 41], [1, 0, 0, 0])]  # fmt: skip
    en = [([1, 7, 8], [1, 0, 0]), ([1, 70], [1, 0]), ([1, 71, 72, 73], [1, 0, 0, 0]),
          ([1, 8, 2], [1, 0, 1]), ([1, 2], [1, 1])]  # fmt: skip
    return {"zh": zh, "en": en}


def _last_plain(rows):
    out = []
    for ids, special in rows:
        plain = [t for t, s in zip(ids, special, strict=True) if not s]
        out.append(plain[-1] if plain else -1)
    return out


def test_last_token_labels_are_each_shared_rows_last_non_special_token(tmp_path):
    from xlalign.errors import RunError
    from xlalign.studies.compare import _Model, last_token_labels

    tokens = _token_rows()
    rows = np.array([4, 0, 2, 3])
    m = _Model(label="A", given="a", run=_TokenRun(tokens), control=None, rows=rows)  # type: ignore[arg-type]
    for lang in ("zh", "en"):
        got = last_token_labels(m, lang)
        want = [_last_plain(tokens[lang])[i] for i in rows]
        assert got.dtype == np.int64 and got.tolist() == want
    assert _last_plain(tokens["zh"]) == [41, 53, -1, 62, 41]  # the rows say what they test
    # a run without token files: no labels
    for err in (FileNotFoundError("no tokens"), RunError("language 'zh' not in run")):
        m.run = _TokenRun(tokens, error=err)  # type: ignore[assignment]
        assert last_token_labels(m, "zh") is None
    # an empty run: an empty int64 array
    m.run, m.rows = _TokenRun({"zh": []}), np.zeros(0, dtype=np.int64)  # type: ignore[assignment]
    got = last_token_labels(m, "zh")
    assert got.shape == (0,) and got.dtype == np.int64
    # token ids and masks of different lengths are a broken run, not silently cut
    m.run = _TokenRun({"zh": tokens["zh"]})  # type: ignore[assignment]
    m.run.special_tokens_mask = lambda lang: [np.asarray(s, bool) for _, s in tokens[lang][:3]]
    m.rows = np.arange(3)
    with pytest.raises(ValueError):
        last_token_labels(m, "zh")


def test_token_label_cka_is_cka_with_the_one_hot_of_each_rows_last_token(tmp_path):
    from xlalign.studies.compare import _Model, token_label_cka

    tokens = _token_rows()
    rows = np.array([4, 0, 1, 3, 2])
    m = _Model(label="A", given="a", run=_TokenRun(tokens), control=None, rows=rows)  # type: ignore[arg-type]
    rng = np.random.default_rng(2)
    xs = [rng.normal(size=(5, 3)), rng.normal(size=(5, 4)) + 10.0]
    for lang in ("zh", "en"):
        labels = [_last_plain(tokens[lang])[i] for i in rows]
        values = sorted(set(labels))
        assert len(values) >= 3
        onehot = np.array([[1.0 if v == w else 0.0 for w in values] for v in labels])
        got = token_label_cka(m, lang, xs)
        assert got == pytest.approx([_cka64(x, onehot) for x in xs], rel=1e-9)
    m.run = _TokenRun(tokens, error=OSError("gone"))  # type: ignore[assignment]
    assert token_label_cka(m, "zh", xs) == [None, None]
