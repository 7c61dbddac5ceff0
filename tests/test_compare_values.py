"""compare's numbers against definitions, on inputs where a plausible bug would show (issue 25).

- Two runs of one corpus whose rows are stored in different orders and whose models have
  different depths: every cross-model cell is recomputed from the rows matched by id, every
  relative depth from the model's own layer count (4 blocks vs 3).
- The ranking and the findings' gain on hand-built sweep records (hypothesis): the order is
  checked pair by pair against the rule, the gain against a brute-force argmax over sites.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xlalign.capture.engine import extract
from xlalign.data.corpus import ParallelCorpus
from xlalign.data.problems import generate_problems
from xlalign.models.testing import build_tiny_model
from xlalign.studies.compare import (
    CompareConfig,
    _findings,
    _Model,
    _ranking,
    _summary,
    compare,
)
from xlalign.studies.layers import SweepConfig

N = 25  # generate_problems makes 5 * (n // 5) rows
N_LAYERS_A, N_LAYERS_B = 4, 3  # the depths the test builds, not read back from the runs
SWEEP = SweepConfig(metrics=("z", "cka"), n_boot=0, lexical=False)
CFG = CompareConfig(k=3, n_perms=0, sweep=SWEEP)


def _cka64(x, y):
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    x = x - x.mean(0)
    y = y - y.mean(0)
    k, lm = x @ x.T, y @ y.T
    return np.sum(k * lm) / np.sqrt(np.sum(k * k) * np.sum(lm * lm))


def _knn64(x, y, k):
    """Mutual k-NN by brute force (platonic-rep's clamp at the 0.95 quantile, unit rows)."""

    def prep(a):
        a = np.asarray(a, np.float64).copy()
        t = np.quantile(np.abs(a), 0.95, axis=1).mean()
        a = np.clip(a, -t, t)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    def sets(a):
        s = prep(a) @ prep(a).T
        np.fill_diagonal(s, -np.inf)
        return [set(np.argsort(-s[i], kind="stable")[:k]) for i in range(len(s))]

    return np.mean([len(p & q) / k for p, q in zip(sets(x), sets(y), strict=True)])


def _depth(site: str, n_layers: int) -> float:
    return {"embed": 0.0, "final": 1.0}.get(site, (int(site[1:]) + 1) / n_layers if site[1:].isdigit() else None)  # fmt: skip


@pytest.fixture(scope="module")
def reordered(bpe_tokenizer, tmp_path_factory):
    """Run A (Qwen2, 4 blocks) on the corpus's first rows, two left out; run B (GPT-2, 3 blocks,
    width 48) on every row, stored in a shuffled order. A's positions are valid positions in B,
    so reading B at A's positions gives wrong rows, not an error."""
    root = tmp_path_factory.mktemp("reorder")
    corpus = generate_problems(N, seed=42)
    perm = np.random.default_rng(7).permutation(len(corpus))
    shuffled = ParallelCorpus(
        tuple(corpus.ids[i] for i in perm),
        {lang: tuple(t[i] for i in perm) for lang, t in corpus.texts.items()},
        {k: tuple(v[i] for i in perm) for k, v in corpus.meta.items()},
        source="shuffled",
    )
    first = corpus.head(len(corpus) - 2)
    qa = build_tiny_model("qwen2", bpe_tokenizer, root / "qa", num_hidden_layers=N_LAYERS_A)
    gb = build_tiny_model("gpt2", bpe_tokenizer, root / "gb", n_layer=N_LAYERS_B, n_embd=48)
    runs = []
    for model, data, name in ((qa, first, "a"), (gb, shuffled, "b")):
        run = extract(
            str(model), data, ["zh", "en"], sites="all", pools=("last", "mean"), batch_size=8,
            output=root / name, progress=False,
        )  # fmt: skip
        data.to_jsonl(root / name / "corpus.jsonl")
        runs.append(run)
    a, b = runs
    assert a.n_layers == N_LAYERS_A and b.n_layers == N_LAYERS_B
    assert list(b.ids) != [i for i in a.ids if i in set(b.ids)]  # the orders really differ
    res = compare([a.path, b.path], config=CFG, progress=False, say=lambda _m: None)
    return a, b, res


def _by_id(run, lang, site, pool, ids):
    pos = {row_id: k for k, row_id in enumerate(run.ids)}
    return np.asarray(run.array(lang, site, pool))[[pos[i] for i in ids]]


def test_cross_model_cells_pair_rows_by_id_not_by_position(reordered):
    a, b, res = reordered
    ids = res.corpus["ids"]
    assert res.corpus["shared"] == "intersection" and ids == list(a.ids)
    cells = {
        (r["lang"], r["pool"], r["metric"], r["site_a"], r["site_b"]): r for r in res.similarity
    }
    assert len(cells) == 2 * 2 * 2 * len(a.sites) * len(b.sites)
    moved = 0
    for lang in ("zh", "en"):
        for pool in ("last", "mean"):
            xs = {s: _by_id(a, lang, s, pool, ids) for s in a.sites}
            ys = {s: _by_id(b, lang, s, pool, ids) for s in b.sites}
            for sa, x in xs.items():
                for sb, y in ys.items():
                    want = _cka64(x, y)
                    got = cells[(lang, pool, "cka", sa, sb)]["value"]
                    assert got == pytest.approx(want, rel=1e-9, abs=1e-12), (lang, pool, sa, sb)
                    knn = cells[(lang, pool, "mutual_knn", sa, sb)]["value"]
                    assert knn == pytest.approx(_knn64(x, y, 3), abs=1e-12)
                    # B's rows at A's positions give another number: the test can tell
                    wrong = np.asarray(b.array(lang, sb, pool))[: len(ids)]
                    moved += abs(_cka64(x, wrong) - want) > 1e-3
    assert moved > 0


def test_each_side_gets_its_own_models_relative_depth(reordered):
    _, _, res = reordered
    for r in res.similarity:
        assert r["relative_depth_a"] == pytest.approx(_depth(r["site_a"], N_LAYERS_A))
        assert r["relative_depth_b"] == pytest.approx(_depth(r["site_b"], N_LAYERS_B))
    for entry, n in zip(res.runs, (N_LAYERS_A, N_LAYERS_B), strict=True):
        for site, d in entry["relative_depths"].items():
            assert d == pytest.approx(_depth(site, n))
    labels = [r["label"] for r in res.runs]
    for c in res.curves:
        n = N_LAYERS_A if c["label"] == labels[0] else N_LAYERS_B
        assert c["relative_depth"] == pytest.approx(_depth(c["site"], n))
    for f in res.findings:
        n = N_LAYERS_A if f["label"] == labels[0] else N_LAYERS_B
        assert f["relative_depth"] == pytest.approx(_depth(f["site"], n))
        assert f["best_relative_depth"] == pytest.approx(_depth(f["best_site"], n))
    # the shared middle block really sits at different depths in the two models
    assert _depth("L1", N_LAYERS_A) != _depth("L1", N_LAYERS_B)


def test_each_sweep_is_computed_on_its_own_rows_matched_by_id(reordered):
    """The z curve of B (swept on the shared rows) equals the exact z of B's rows taken by id."""
    from references import z_from_cosines

    a, b, res = reordered
    ids = res.corpus["ids"]
    labels = [r["label"] for r in res.runs]
    for run, label in ((a, labels[0]), (b, labels[1])):
        for c in res.curves:
            if c["label"] != label or c["metric"] != "z" or c["pool"] != "mean":
                continue
            x = _by_id(run, "zh", c["site"], "mean", ids).astype(np.float64)
            y = _by_id(run, "en", c["site"], "mean", ids).astype(np.float64)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            y /= np.linalg.norm(y, axis=1, keepdims=True)
            assert c["value"] == pytest.approx(z_from_cosines(x @ y.T), rel=1e-6)


# --------------------------------------------------------------------------- ranking


def _rule_beyond(f):
    return f["verdict"] == "beyond-control" and not f.get("artifact")


def _beats(f, g):
    """Whether finding ``f`` ranks above ``g``: beyond-control (not an artifact) first, then the
    larger gain over the control, a missing gain last."""
    if _rule_beyond(f) != _rule_beyond(g):
        return _rule_beyond(f)
    gf = -np.inf if f["gain_over_control"] is None else f["gain_over_control"]
    gg = -np.inf if g["gain_over_control"] is None else g["gain_over_control"]
    return gf > gg


_VERDICTS = ("beyond-control", "matched-by-control", "below-control", "no-control")


@st.composite
def _finding_sets(draw):
    n = draw(st.integers(2, 5))
    gains = draw(st.lists(st.integers(-50, 50), min_size=n, max_size=n, unique=True))
    out = []
    for i, g in enumerate(gains):
        out.append(
            {
                "label": f"run{i}",
                "pair": ["zh", "en"],
                "pool": "mean",
                "metric": "z",
                "site": "L0",
                "relative_depth": 0.5,
                "model": {"value": 1.0},
                "control": {"value": 1.0 - g / 10},
                "verdict": draw(st.sampled_from(_VERDICTS)),
                "artifact": draw(st.sampled_from([None, None, "identical-vectors"])),
                "gain_over_control": None if draw(st.integers(0, 5)) == 0 else g / 10,
            }
        )
    return out


@settings(max_examples=200, deadline=None)
@given(_finding_sets())
def test_ranking_orders_runs_by_the_rule_pair_by_pair(fs):
    (r,) = _ranking(fs)
    assert (r["pair"], r["pool"], r["metric"]) == (["zh", "en"], "mean", "z")
    assert "(mean pool, z): " in r["statement"]
    by_label = {f["label"]: f for f in fs}
    order = [by_label[x] for x in r["order"]]
    assert sorted(r["order"]) == sorted(by_label)
    for i, f in enumerate(order):
        for g in order[i + 1 :]:
            assert not _beats(g, f), (f, g)
    leaders = [f for f in fs if _rule_beyond(f)]
    if leaders:  # the largest gain among the runs beyond their control (a missing gain: -inf)
        top = max(leaders, key=lambda f: -np.inf if f["gain_over_control"] is None else f["gain_over_control"])  # fmt: skip
        ties = [f for f in leaders if f["gain_over_control"] == top["gain_over_control"]]
        assert r["leader"] in {f["label"] for f in ties}
        assert r["statement"].startswith(f"{r['leader']} aligns zh/en most beyond its control")
    else:
        assert r["leader"] is None
        assert r["statement"].startswith("no run aligns zh/en beyond its control")


def test_headline_names_the_run_with_the_largest_gain():
    """Two runs beyond their controls, gains 0.5 and 2.0: the second leads the headline."""
    fs = [
        {"label": "small", "pair": ["zh", "en"], "pool": "mean", "metric": "z", "site": "L1",
         "relative_depth": 0.5, "model": {"value": 3.0}, "control": {"value": 2.5},
         "verdict": "beyond-control", "artifact": None, "gain_over_control": 0.5},
        {"label": "large", "pair": ["zh", "en"], "pool": "mean", "metric": "z", "site": "L2",
         "relative_depth": 1.0, "model": {"value": 2.5}, "control": {"value": 0.5},
         "verdict": "beyond-control", "artifact": None, "gain_over_control": 2.0},
    ]  # fmt: skip
    ranking = _ranking(fs)
    assert ranking[0]["order"] == ["large", "small"] and ranking[0]["leader"] == "large"

    class _R:
        manifest: ClassVar[dict] = {"architecture": "x"}
        n_layers = 2

    models = [_Model(label=lab, given=lab, run=_R(), control=None) for lab in ("small", "large")]  # type: ignore[arg-type]
    head, _ = _summary(models, {"n_rows": 10}, ranking)
    assert head.startswith("large aligns zh/en most beyond its control")


# --------------------------------------------------------------------------- findings' gain

SITES = ("embed", "L0", "L1", "L2", "L3")


class _FakeRun:
    manifest: ClassVar[dict] = {}
    n_layers = 4
    sites = SITES


def _recs(values, metric="z", half=0.01):
    return [
        {"x": "zh", "y": "en", "pool": "mean", "metric": metric, "site": s, "value": v,
         "ci_low": v - half, "ci_high": v + half}
        for s, v in zip(SITES, values, strict=True)
    ]  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.integers(-40, 40), min_size=5, max_size=5, unique=True),
    st.lists(st.integers(-40, 40), min_size=5, max_size=5),
)
def test_findings_gain_is_the_largest_model_minus_control(model, control):
    m = _Model(label="A", given="a", run=_FakeRun(), control=None)  # type: ignore[arg-type]
    m.alignment = {"records": _recs([v / 10 for v in model])}
    m.control_alignment = {"records": _recs([v / 10 for v in control])}
    (f,), _ = _findings([m])
    gains = [(mv - cv) / 10 for mv, cv in zip(model, control, strict=True)]
    best = int(np.argmax(gains))
    if gains.count(gains[best]) == 1:
        assert f["site"] == SITES[best]
    assert f["gain_over_control"] == pytest.approx(max(gains))
    assert f["model"]["value"] == pytest.approx(model[SITES.index(f["site"])] / 10)
    assert f["control"]["value"] == pytest.approx(control[SITES.index(f["site"])] / 10)
    assert f["best_value"] == pytest.approx(max(model) / 10)
    assert f["best_site"] == SITES[int(np.argmax(model))]
    assert f["relative_depth"] == pytest.approx(_depth(f["site"], 4))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 200), st.data())
def test_relative_depth_of_every_block_of_any_depth(n_layers, data):
    """Block ``i`` of ``n`` at ``(i + 1) / n``, a one-block model included; no blocks: None."""
    from xlalign.studies.compare import relative_depth

    i = data.draw(st.integers(0, n_layers - 1))
    assert relative_depth(f"L{i}", n_layers) == pytest.approx((i + 1) / n_layers)
    assert relative_depth("embed", n_layers) == 0.0 and relative_depth("final", n_layers) == 1.0
    assert relative_depth(f"L{i}", 0) is None and relative_depth("lexical", n_layers) is None


# --------------------------------------------------------------------------- token-label CKA


def test_label_cka_of_float32_vectors_is_computed_in_float64():
    """Vectors far from the origin in float32: centring and the Gram in float32 would lose about
    four digits; the reference is the explicit one-hot CKA in float64."""
    from xlalign.studies.compare import label_cka

    rng = np.random.default_rng(3)
    x32 = (rng.normal(size=(80, 6)) + 1000.0).astype(np.float32)
    codes = rng.integers(0, 4, size=80)
    codes[:4] = np.arange(4)  # every class present
    ref = _cka64(x32.astype(np.float64), np.eye(4)[codes])
    assert label_cka(x32, codes) == pytest.approx(ref, rel=1e-9)
    assert label_cka(np.ones((10, 3)), np.arange(10) % 2) is None  # constant rows: undefined


# --------------------------------------------------------------------------- labels


def test_parse_labels_splits_at_the_first_equals_and_strips():
    from xlalign.studies.compare import parse_labels

    got = parse_labels([" A = Qwen 0.5B ", "runs/g=Gemma=3", "b=x"])
    assert got == {"A": "Qwen 0.5B", "runs/g": "Gemma=3", "b": "x"}
    assert parse_labels([]) == {}


@pytest.mark.parametrize(
    ("items", "named"),
    [
        (["A"], "'A'"),
        (["=Qwen"], "'=Qwen'"),
        (["A=  "], "'A=  '"),
        ([" =x"], "' =x'"),
        (["A=one", " A =two"], "'one' and 'two'"),
    ],
)
def test_parse_labels_refuses_what_is_not_run_eq_name(items, named):
    from xlalign.errors import XlalignError
    from xlalign.studies.compare import parse_labels

    with pytest.raises(XlalignError, match="--label") as e:
        parse_labels(items)
    assert named in str(e.value)


def test_a_label_key_is_a_run_as_given_before_it_is_a_letter(tmp_path):
    from xlalign.errors import XlalignError
    from xlalign.studies.compare import _label_index

    given = ["B", "A", str(tmp_path / "c")]
    assert _label_index("A", given) == 1  # the run named A, not the first run
    assert _label_index("B", given) == 0
    assert _label_index("c", given) == 2  # the third run's letter
    assert _label_index("C", given) == 2
    assert _label_index(str(tmp_path / "." / "c"), given) == 2  # the same path, spelt otherwise
    for bad in ("D", "d", "AB", "1", ""):
        with pytest.raises(XlalignError, match=r"A\.\.C") as e:
            _label_index(bad, given)
        assert f"'{bad}'" in str(e.value) and f"runs (B, A, {tmp_path / 'c'})" in str(e.value)


class _LabelRun:
    def __init__(self, path, model=None, seed=None):
        self.path = path
        self.manifest = {"model": model, "random_init_seed": seed}


def test_labels_default_to_the_model_name_marked_random_init_and_numbered():
    from xlalign.studies.compare import _labels

    runs = [
        _LabelRun("r/1", "hub/Qwen2.5-0.5B"),
        _LabelRun("r/2", "hub/Qwen2.5-0.5B", seed=0),
        _LabelRun("r/3", "/models/Qwen2.5-0.5B"),
        _LabelRun("r/4", "hub/Qwen2.5-0.5B"),
        _LabelRun("r/runfolder"),
    ]
    given = [r.path for r in runs]
    assert _labels(given, None, runs) == [  # type: ignore[arg-type]
        "Qwen2.5-0.5B",
        "Qwen2.5-0.5B (random-init)",
        "Qwen2.5-0.5B #2",
        "Qwen2.5-0.5B #3",
        "runfolder",
    ]
    # a user's label is kept as given, even for a random-init run
    named = _labels(given[:2], {"B": "ctrl", "r/1": "model"}, runs[:2])  # type: ignore[arg-type]
    assert named == ["model", "ctrl"]
    assert _labels(given[:2], ["x", "x"], runs[:2]) == ["x", "x #2"]  # type: ignore[arg-type]


def test_labels_refuse_a_run_labelled_twice_or_a_list_of_the_wrong_length():
    from xlalign.errors import XlalignError
    from xlalign.studies.compare import _labels

    runs = [_LabelRun("r/1", "m1"), _LabelRun("r/2", "m2")]
    given = ["r/1", "r/2"]
    with pytest.raises(XlalignError, match=r"run r/1 labelled twice \('one' and 'two'\)"):
        _labels(given, {"A": "one", "r/1": "two"}, runs)  # type: ignore[arg-type]
    with pytest.raises(XlalignError, match="labels: 1 given for 2 runs"):
        _labels(given, ["only"], runs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- stored settings


def test_settings_differ_names_each_value_setting_that_differs():
    from xlalign.studies.compare import VALUE_SETTINGS, settings_differ

    cfg = SweepConfig()
    same = {k: getattr(cfg, k) for k in VALUE_SETTINGS if k != "ci_method"}
    same["ci_method"] = "jackknife"
    assert settings_differ(same, cfg) == []
    other = {"null": "monte-carlo", "seed": 7, "stratify": "template", "center": True,
             "standardize": True, "compat": "platonic", "n_boot": 0, "ci_level": 0.9,
             "null_perms": 10}  # fmt: skip
    for key, value in other.items():
        got = settings_differ({**same, key: value}, cfg)
        assert got == [f"{key}: {value!r}, not {getattr(cfg, key)!r}"], key


def test_settings_differ_reads_a_missing_setting_as_the_default_it_predates():
    from xlalign.studies.compare import settings_differ

    cfg = SweepConfig()
    # before the nulls a sweep had none; before the jackknife its intervals were a bootstrap
    assert settings_differ({}, cfg) == ["null_perms: 0, not 1000"]
    assert settings_differ({"n_boot": 200, "null_perms": 1000}, cfg) == [
        "ci_method: pair bootstrap, not jackknife/Wilson"
    ]
    no_ci = SweepConfig(n_boot=0)
    assert settings_differ({"n_boot": 0, "null_perms": 1000}, no_ci) == []
    assert settings_differ({"null_perms": 1000, "stratify": None}, SweepConfig(stratify="t")) == [
        "stratify: None, not 't'"
    ]
    mc = SweepConfig(null="monte-carlo", n_perms=500)
    doc = {"null": "monte-carlo", "null_perms": 1000, "n_perms": 1000}
    assert settings_differ(doc, mc) == ["n_perms: 1000, not 500"]
    assert settings_differ({**doc, "n_perms": 500}, mc) == []
    assert settings_differ({**doc, "null": "exact", "n_perms": 3}, SweepConfig()) == []


def test_sweep_config_is_the_users_else_the_stored_sweeps_else_the_default():
    from xlalign.studies.compare import _sweep_config

    mine = SweepConfig(seed=3)
    assert _sweep_config([{"seed": 9}], CompareConfig(sweep=mine)) is mine
    assert _sweep_config([None, None], CompareConfig()) == SweepConfig()
    stored = {
        "metrics": ["z", "cka"], "null": "monte-carlo", "n_perms": 77, "seed": 5,
        "stratify": "template", "center": True, "n_boot": 0, "ci_level": 0.9,
        "standardize": True, "compat": "platonic", "null_perms": 20,
    }  # fmt: skip
    got = _sweep_config([None, stored, {"seed": 1}], CompareConfig())
    want = SweepConfig(
        metrics=("z", "cka"), null="monte-carlo", n_perms=77, seed=5, stratify="template",
        center=True, n_boot=0, ci_level=0.9, standardize=True, compat="platonic", null_perms=20,
    )  # fmt: skip
    assert got == want
    # a sweep that predates a setting: the default, and no null (it had none)
    assert _sweep_config([{"seed": 5}], CompareConfig()) == SweepConfig(seed=5, null_perms=0)


def test_gain_needs_a_control_value_at_the_records_site():
    from xlalign.studies.compare import _gain

    key = (("zh", "en"), "mean", "z")
    ctrl = {(*key, "L0"): {"value": 0.25}, (*key, "L1"): {"value": None}}
    assert _gain({"site": "L0", "value": 1.0}, ctrl, key) == 0.75
    assert _gain({"site": "L1", "value": 1.0}, ctrl, key) is None  # control undefined there
    assert _gain({"site": "L2", "value": 1.0}, ctrl, key) is None  # no control record


def test_only_the_models_best_site_carries_p_best_site():
    """p_best_site corrects the choice of the model's best site; the control at that site and
    the lexical baseline were not chosen that way, so their points carry none."""
    m = _Model(label="A", given="a", run=_FakeRun(), control=None)  # type: ignore[arg-type]
    recs = _recs([0.1, 0.9, 0.2, 0.3, 0.4])
    m.alignment = {"records": [{**r, "p_best_site": 0.001} for r in recs]}
    lexical = {"site": "lexical", "value": 0.05, "ci_low": 0.04, "ci_high": 0.06}
    m.alignment["records"].append({**recs[0], **lexical, "p_best_site": 0.5})
    m.control_alignment = {"records": [{**r, "p_best_site": 0.7} for r in _recs([0.0] * 5)]}
    (f,), _ = _findings([m])
    assert f["model"] == {"value": 0.9, "ci_low": 0.89, "ci_high": 0.91, "p_best_site": 0.001}
    assert f["control"] == {"value": 0.0, "ci_low": -0.01, "ci_high": 0.01}
    assert f["lexical"] == {"value": 0.05, "ci_low": 0.04, "ci_high": 0.06}


def test_above_the_token_label_baselines_means_strictly_above_both():
    from xlalign.studies.compare import _above

    assert _above(0.5, 0.2, 0.4) is True
    assert _above(0.5, 0.5, 0.1) is False  # equal to one baseline: not above it
    assert _above(0.3, 0.2, 0.4) is False  # above one model's baseline only
    assert _above(None, 0.2, 0.4) is None
    assert _above(0.5, None, 0.4) is None and _above(0.5, 0.2, None) is None


def test_statement_states_each_runs_value_control_site_depth_and_verdict():
    from xlalign.studies.compare import _statement

    fs = [
        {"label": "Qwen", "site": "L11", "relative_depth": 0.5, "model": {"value": 12.345},
         "control": {"value": 0.04321}, "verdict": "beyond-control", "artifact": None},
        {"label": "Gemma", "site": "L0", "relative_depth": 1 / 3, "model": {"value": 0.5},
         "control": {"value": None}, "verdict": "matched-by-control",
         "artifact": "identical-vectors"},
        {"label": "Tiny", "site": "embed", "relative_depth": None, "model": {"value": -2.0},
         "control": None, "verdict": "no-control", "artifact": None},
    ]  # fmt: skip
    got = _statement(("zh", "en"), "last", "cka", fs, "Qwen")
    assert got == (
        "Qwen aligns zh/en most beyond its control (last pool, cka): "
        "Qwen cka 12.3 vs control 0.0432 at L11, depth 0.5 (beyond-control); "
        "Gemma cka 0.5 vs control undefined at L0, depth 0.333 "
        "(matched-by-control, identical vectors: shared tokens); "
        "Tiny cka -2 at embed, depth undefined (no control)"
    )
    none = _statement(("en", "zh"), "mean", "z", fs[2:], None)
    assert none == (
        "no run aligns en/zh beyond its control (mean pool, z): "
        "Tiny z -2 at embed, depth undefined (no control)"
    )


def test_fin_keeps_finite_values_as_floats_and_drops_the_rest():
    from xlalign.studies.compare import _fin

    got = _fin(np.float32(1.5))
    assert got == 1.5 and type(got) is float
    assert _fin(float("nan")) is None and _fin(np.inf) is None and _fin(-np.inf) is None


def test_findings_pass_over_identical_vector_sites_and_other_metrics():
    """compare's findings: only the finding metrics with a value count (a record of another
    metric first, and an undefined z, change nothing); the model's best site is passed over
    where either language's vectors there are largely identical in that pool, unless every
    site is, and then the finding is marked."""
    from xlalign.metrics.duplicates import IdenticalGroups

    same = IdenticalGroups(n=40, distinct=3, largest_group=30, identical=True)
    apart = IdenticalGroups(n=40, distinct=40, largest_group=1, identical=False)
    values = [0.1, 0.9, 0.2, 0.8, 0.4]  # best L0, then L2
    m = _Model(label="A", given="a", run=_FakeRun(), control=None)  # type: ignore[arg-type]
    knn = {**_recs(values)[0], "metric": "mutual_knn", "value": 5.0}
    undefined = {**_recs(values)[4], "value": None}
    m.alignment = {"records": [knn, *_recs(values)[:4], undefined]}
    m.control_alignment = {"records": _recs([0.0] * 5)}

    def finding(flags):
        m.identical = {(lang, s, p): apart for lang in ("zh", "en") for s in SITES for p in ("mean", "last")}  # fmt: skip
        m.identical.update({k: same for k in flags})
        (f,), _ = _findings([m])
        return f["metric"], f["site"], f["best_site"], f["artifact"]

    assert finding([]) == ("z", "L0", "L0", None)
    assert finding([("en", "L0", "mean")]) == ("z", "L2", "L2", None)
    assert finding([("zh", "L0", "mean")]) == ("z", "L2", "L2", None)
    assert finding([("en", "L0", "last")]) == ("z", "L0", "L0", None)  # another pool's flag
    every = [("zh", s, "mean") for s in SITES]
    assert finding(every) == ("z", "L0", "L0", "identical-vectors")


def test_findings_without_a_control_or_with_tied_gains_take_the_first_best_site():
    m = _Model(label="A", given="a", run=_FakeRun(), control=None)  # type: ignore[arg-type]
    m.alignment = {"records": _recs([0.1, 0.9, 0.2, 0.9, 0.4])}
    (f,), _ = _findings([m])  # no control: the best site, first of a tie
    assert (f["site"], f["control"], f["gain_over_control"]) == ("L0", None, None)
    assert f["verdict"] == "no-control"
    m.control_alignment = {"records": _recs([0.0, 0.5, 0.2, 0.5, 0.1])}
    (f,), _ = _findings([m])  # gains 0.1, 0.4, 0.0, 0.4, 0.3: the first largest
    assert f["site"] == "L0" and f["gain_over_control"] == pytest.approx(0.4)
    assert f["best_site"] == "L0" and f["best_relative_depth"] == pytest.approx(_depth("L0", 4))
    assert f["verdict"] == "beyond-control"  # 0.9 [0.89, 0.91] over 0.5 [0.49, 0.51]
    lexical = {**_recs([0.95] * 5)[0], "site": "lexical"}  # 0.95 [0.94, 0.96]
    m.alignment["records"].append(lexical)  # a lexical baseline above the model
    (f,), _ = _findings([m])
    assert f["verdict"] == "matched-by-lexical"


def test_run_letters_reach_z_and_no_further(tmp_path):
    from xlalign.errors import XlalignError
    from xlalign.studies.compare import _label_index, _labels

    given = [f"runs/{i}" for i in range(30)]
    assert _label_index("Z", given) == 25 and _label_index("z", given) == 25
    assert _label_index("Y", given) == 24
    for bad in ("[", "`", "@"):  # the characters beside the letters
        with pytest.raises(XlalignError, match="nor a run letter"):
            _label_index(bad, given)
    # a path spelt with ./ and ../ is the run it resolves to
    (tmp_path / "c").mkdir()
    runs = [str(tmp_path / "a"), str(tmp_path / "c")]
    assert _label_index(f"{tmp_path}/./c", runs) == 1
    assert _label_index(f"{tmp_path}/a/../c", runs) == 1
    # a run whose model and folder have no name part is labelled by its path
    assert _labels(["/"], None, [_LabelRun("/")]) == ["/"]  # type: ignore[arg-type]
    with pytest.raises(
        XlalignError, match=r"labelled twice \('one' and 'two'\): give one per run$"
    ):
        _labels(["r/1"], {"A": "one", "r/1": "two"}, [_LabelRun("r/1", "m")])  # type: ignore[arg-type]


def test_label_cka_is_defined_for_small_vectors_and_two_rows():
    """CKA does not depend on scale: vectors of size 1e-3 give the value of the unscaled ones;
    two rows of two classes (the one-hot Gram's centred norm is exactly 1) give 1."""
    from xlalign.studies.compare import label_cka

    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 4))
    codes = np.arange(30) % 3
    ref = _cka64(x, np.eye(3)[codes])
    assert label_cka(x * 1e-3, codes) == pytest.approx(ref, rel=1e-9)
    assert label_cka(np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([0, 1])) == pytest.approx(1.0)
