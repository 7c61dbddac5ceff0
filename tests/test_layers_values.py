"""Every number of the layer sweep against a brute-force float64 computation from its definition.

The references below are written from docs/metrics.md and the peers' published definitions
(REFERENCE.md) in plain numpy, on the full ``N x N`` matrices; none calls xlalign.metrics.
Each record of ``layer_sweep`` is compared with the reference computed on *that* record's site,
pool and language pair, so a metric routed to the wrong function, site, pool or direction fails.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from references import cka, hsic_biased, hsic_unbiased
from xlalign.store.run import load_run
from xlalign.store.synthetic import write_synthetic_run
from xlalign.studies.layers import METRICS, SweepConfig, layer_sweep

N, D = 36, 12
SITES = ("embed", "L0", "L1")
POOLS = ("last", "mean")
ALL_METRICS = tuple(METRICS)
N_BOOT = 40
SEED = 7

# ---------------------------------------------------------------------------------------------
# references, from the definitions


def unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def cosines(x: np.ndarray, y: np.ndarray, center: bool = False) -> np.ndarray:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if center:
        x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    return unit(x) @ unit(y).T


def exact_z_of_block(s: np.ndarray, strata: np.ndarray | None = None) -> float | None:
    """z with E and Var over all (within-stratum) permutations, REFERENCE.md's formulas."""
    n = s.shape[0]
    labels = np.zeros(n, dtype=int) if strata is None else np.asarray(strata)
    mean = var = 0.0
    for lab in np.unique(labels):
        g = np.flatnonzero(labels == lab)
        b = s[np.ix_(g, g)]
        ns = len(g)
        m = b.sum() / ns**2
        mean += ns / n * m
        if ns > 1:
            r, c = b.mean(axis=1), b.mean(axis=0)
            resid = b - r[:, None] - c[None, :] + m
            var += (ns / n) ** 2 * (resid**2).sum() / (ns**2 * (ns - 1))
    if np.sqrt(var) <= 1e-9:
        return None
    return float((np.trace(s) / n - mean) / np.sqrt(var))


def hits(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: gold strictly above every other entry of its row (xy), of its column (yx)."""
    n = s.shape[0]
    off = ~np.eye(n, dtype=bool)
    d = np.diag(s)
    row = np.array([all(d[i] > s[i, j] + 1e-10 for j in range(n) if off[i, j]) for i in range(n)])
    col = np.array([all(d[i] > s[j, i] + 1e-10 for j in range(n) if off[j, i]) for i in range(n)])
    return row, col


def mrr(s: np.ndarray) -> float:
    n = s.shape[0]
    ranks = [1 + sum(s[i, j] >= s[i, i] - 1e-10 for j in range(n) if j != i) for i in range(n)]
    return float(np.mean([1.0 / r for r in ranks]))


def xsim_error(s: np.ndarray, k: int = 4) -> float:
    """LASER xSIM, margin ratio: candidates are x_i's k nearest y; gold must score strictly best."""
    n = s.shape[0]
    a = np.array([np.sort(s[i])[::-1][:k].mean() for i in range(n)])
    b = np.array([np.sort(s[:, j])[::-1][:k].mean() for j in range(n)])
    errors = 0
    for i in range(n):
        kth = np.sort(s[i])[::-1][k - 1]
        cands = [j for j in range(n) if s[i, j] >= kth - 1e-10]
        score = {j: s[i, j] / ((a[i] + b[j]) / 2) for j in cands}
        ok = i in score and all(score[i] > score[j] for j in cands if j != i)
        errors += not ok
    return errors / n


def prepare(x: np.ndarray, q: float = 0.95) -> np.ndarray:
    """platonic-rep's prepare_features then F.normalize."""
    a = np.asarray(x, np.float64).copy()
    t = np.mean([np.quantile(np.abs(row), q) for row in a])
    return unit(np.clip(a, -t, t))


def knn_sets(g: np.ndarray, k: int) -> list[set[int]]:
    """Each row's k nearest by the Gram matrix ``g`` (self excluded, ties to the lower index)."""
    g = g.copy()
    np.fill_diagonal(g, -np.inf)
    return [set(np.argsort(-g[i], kind="stable")[:k].tolist()) for i in range(len(g))]


def mutual_knn(x: np.ndarray, y: np.ndarray, k: int = 10) -> float:
    fx, fy = prepare(x), prepare(y)
    a, b = knn_sets(fx @ fx.T, k), knn_sets(fy @ fy.T, k)
    return float(np.mean([len(a[i] & b[i]) / k for i in range(len(a))]))


def cknna(x: np.ndarray, y: np.ndarray, k: int = 10) -> float:
    """platonic-rep's cknna (unbiased), masks from top-k with the diagonal excluded."""
    fx, fy = prepare(x), prepare(y)
    kx, ly = fx @ fx.T, fy @ fy.T

    def mask(g: np.ndarray) -> np.ndarray:
        m = np.zeros_like(g)
        for i, nb in enumerate(knn_sets(g, k)):
            m[i, list(nb)] = 1.0
        return m

    def sim(a: np.ndarray, b: np.ndarray) -> float:
        mk = mask(a) * mask(b)
        return hsic_unbiased(mk * a, mk * b)

    return sim(kx, ly) / np.sqrt(sim(kx, kx) * sim(ly, ly))


def knn_lists(f: np.ndarray, k: int) -> list[list[int]]:
    """Each row's k nearest by inner product, nearest first (self excluded, ties to lower index)."""
    g = f @ f.T
    np.fill_diagonal(g, -np.inf)
    return [np.argsort(-g[i], kind="stable")[:k].tolist() for i in range(len(g))]


def cycle_knn(x: np.ndarray, y: np.ndarray, k: int = 10) -> float:
    """Share of i with some y-space neighbour j that has i among its x-space neighbours."""
    a, b = knn_lists(prepare(x), k), knn_lists(prepare(y), k)
    return float(np.mean([any(i in a[j] for j in b[i]) for i in range(len(a))]))


def lcs(p: list[int], q: list[int]) -> int:
    t = [[0] * (len(q) + 1) for _ in range(len(p) + 1)]
    for i, u in enumerate(p):
        for j, v in enumerate(q):
            t[i + 1][j + 1] = t[i][j] + 1 if u == v else max(t[i][j + 1], t[i + 1][j])
    return t[-1][-1]


def levenshtein(p: list[int], q: list[int]) -> int:
    t = [[i + j if i * j == 0 else 0 for j in range(len(q) + 1)] for i in range(len(p) + 1)]
    for i in range(1, len(p) + 1):
        for j in range(1, len(q) + 1):
            t[i][j] = min(
                t[i - 1][j] + 1, t[i][j - 1] + 1, t[i - 1][j - 1] + (p[i - 1] != q[j - 1])
            )
    return t[-1][-1]


def lcs_knn(x: np.ndarray, y: np.ndarray, k: int = 10) -> float:
    a, b = knn_lists(prepare(x), k), knn_lists(prepare(y), k)
    return float(np.mean([lcs(a[i], b[i]) for i in range(len(a))]))


def edit_distance_knn(x: np.ndarray, y: np.ndarray, k: int = 10) -> float:
    a, b = knn_lists(prepare(x), k), knn_lists(prepare(y), k)
    return 1.0 - float(np.mean([levenshtein(a[i], b[i]) for i in range(len(a))])) / k


def svcca(x: np.ndarray, y: np.ndarray, dims: int = 10) -> float:
    def basis(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, np.float64)
        a = (a - a.mean(axis=0)) / a.std(axis=0, ddof=1)
        return np.linalg.svd(a, full_matrices=False)[0][:, :dims]

    return float(np.linalg.svd(basis(x).T @ basis(y), compute_uv=False).mean())


def hub(s: np.ndarray) -> float:
    n = s.shape[0]
    return float(np.trace(s) / n - (s.sum() - np.trace(s)) / (n * (n - 1)))


def cohen_d(x: np.ndarray, y: np.ndarray) -> float:
    """Cohen's d on PC1 of the pooled unit rows; PC sign: largest |entry| positive (sklearn)."""
    pooled = np.vstack([unit(x), unit(y)])
    mean = pooled.mean(axis=0)
    vals, vecs = np.linalg.eigh(np.cov((pooled - mean).T))
    pc = vecs[:, np.argmax(vals)]
    pc = pc * np.sign(pc[np.argmax(np.abs(pc))])
    px, py = (unit(x) - mean) @ pc, (unit(y) - mean) @ pc
    return float((px.mean() - py.mean()) / np.sqrt((px.std() ** 2 + py.std() ** 2) / 2))


def reference(metric: str, x: np.ndarray, y: np.ndarray) -> float | None:
    s = cosines(x, y)
    row, col = hits(s)
    return {
        "z": lambda: exact_z_of_block(s),
        "p1_xy": lambda: float(row.mean()),
        "p1_yx": lambda: float(col.mean()),
        "mexa": lambda: float((row & col).mean()),
        "mrr": lambda: mrr(s),
        "xsim_error": lambda: xsim_error(s),
        "cka": lambda: cka(x, y),
        "cka_unbiased": lambda: cka(x, y, unbiased=True),
        "mutual_knn": lambda: mutual_knn(x, y),
        "cknna": lambda: cknna(x, y),
        "svcca": lambda: svcca(x, y),
        "semantic_hub": lambda: hub(s),
        "cohen_d_pc1": lambda: cohen_d(x, y),
        "cycle_knn": lambda: cycle_knn(x, y),
        "lcs_knn": lambda: lcs_knn(x, y),
        "edit_distance_knn": lambda: edit_distance_knn(x, y),
    }[metric]()


def _jackknife(point: float, loo: np.ndarray, surplus: float = 0.0) -> tuple[float, float]:
    """``point +- 1.96 se`` from the leave-one-out values (the jackknife's definition), the
    variance lowered by ``surplus`` (the debiased CKA's delete-2 correction)."""
    n = len(loo)
    var = (n - 1) / n * float(np.sum((loo - loo.mean()) ** 2))
    if var - surplus > 0:
        var -= surplus
    q = 1.959963984540054
    return point - q * np.sqrt(var), point + q * np.sqrt(var)


def _wilson(k: int, n: int) -> tuple[float, float]:
    """The Wilson score interval: the shares p with |k/n - p| <= q sqrt(p(1-p)/n), solved."""
    q = 1.959963984540054
    phat = k / n
    centre = (phat + q * q / (2 * n)) / (1 + q * q / n)
    half = q * np.sqrt(phat * (1 - phat) / n + q * q / (4 * n * n)) / (1 + q * q / n)
    return min(phat, centre - half), max(phat, centre + half)


def _without(a: np.ndarray, *rows: int) -> np.ndarray:
    keep = np.ones(len(a), dtype=bool)
    keep[list(rows)] = False
    return a[keep]


def reference_ci(
    metric: str, x: np.ndarray, y: np.ndarray, point: float, center: bool = False
) -> tuple[float, float]:
    """The sweep's interval of ``metric`` from its definition (docs/metrics.md): Wilson for the
    shares, the delete-one jackknife (rows deleted and everything recomputed) for the rest;
    z's width is that of the unstratified z of the cosine matrix (centred rows with
    ``center``), the debiased CKA's variance lowers by half the delete-2 surplus."""
    n = len(x)
    if metric in ("p1_xy", "p1_yx", "mexa"):
        row, col = hits(cosines(x, y))
        share = {"p1_xy": row, "p1_yx": col, "mexa": row & col}[metric]
        return _wilson(int(share.sum()), n)
    if metric == "z":
        s = cosines(x, y, center=center)
        loo = [exact_z_of_block(_without(_without(s, i).T, i).T) for i in range(n)]
        return _jackknife(point, np.array(loo, dtype=float))
    if metric == "semantic_hub":
        s = cosines(x, y)
        return _jackknife(point, np.array([hub(_without(_without(s, i).T, i).T) for i in range(n)]))
    unbiased = metric == "cka_unbiased"
    loo = np.array([cka(_without(x, i), _without(y, i), unbiased) for i in range(n)])
    surplus = 0.0
    if unbiased:
        for i, j in itertools.combinations(range(n), 2):
            both = cka(_without(x, i, j), _without(y, i, j), True)
            surplus += (point - loo[i] - loo[j] + both) ** 2
    return _jackknife(point, loo, 0.5 * surplus)


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder of three languages whose arrays are pairs with a known, moderate signal.

    The layout comes from ``write_synthetic_run``; the arrays are then replaced by
    ``signal * shared_i + noise`` (a different signal per site, a small offset per language)
    so that no metric sits at its ceiling: P@1 = 1 would not tell xy from yx.
    """
    path = write_synthetic_run(
        tmp_path_factory.mktemp("sweep") / "run", N, D, n_sites=len(SITES),
        langs=("zh", "en", "de"), pools=POOLS, categories=3,
    )  # fmt: skip
    rs = np.random.RandomState(11)
    for k, site in enumerate(SITES):
        for pool in POOLS:
            shared = rs.randn(N, D)
            for lang in ("zh", "en", "de"):
                v = (0.6 + 0.4 * k) * shared + rs.randn(N, D) + 0.5 * rs.randn(D)
                np.save(path / "arrays" / lang / site / f"{pool}.npy", v.astype(np.float32))
    return path


@pytest.fixture
def sweep(run_dir: Path) -> dict:
    # function scope on purpose: mutmut runs, for each mutant, only the tests that call the
    # mutated function, and a module-scoped result would be credited to the first test alone
    cfg = SweepConfig(lexical=False, metrics=ALL_METRICS, n_boot=N_BOOT, seed=SEED)
    return layer_sweep(load_run(run_dir), cfg, progress=False)


def arrays(run_dir: Path, lang: str, site: str, pool: str) -> np.ndarray:
    return np.load(run_dir / "arrays" / lang / site / f"{pool}.npy").astype(np.float64)


# ---------------------------------------------------------------------------------------------
# tests


def test_the_data_is_not_at_any_metric_ceiling(run_dir: Path) -> None:
    # otherwise a swapped direction or site could pass by coincidence
    x, y = arrays(run_dir, "zh", "L0", "mean"), arrays(run_dir, "en", "L0", "mean")
    row, col = hits(cosines(x, y))
    assert 0.1 < row.mean() < 0.95 and 0.1 < col.mean() < 0.95, (row.mean(), col.mean())
    assert row.mean() != col.mean()
    other = arrays(run_dir, "zh", "L1", "mean")
    assert not np.allclose(x, other)


def test_every_record_is_the_metric_on_its_own_site_pool_and_pair(
    sweep: dict, run_dir: Path
) -> None:
    names = [n for sel in ALL_METRICS for n in METRICS[sel]]
    pairs = list(itertools.combinations(("zh", "en", "de"), 2))
    assert [tuple(p) for p in sweep["pairs"]] == pairs
    by_key = {(r["x"], r["y"], r["pool"], r["site"], r["metric"]): r for r in sweep["records"]}
    assert len(by_key) == len(sweep["records"]) == len(pairs) * len(POOLS) * len(SITES) * len(names)
    for (lx, ly), pool, site in itertools.product(pairs, POOLS, SITES):
        x, y = arrays(run_dir, lx, site, pool), arrays(run_dir, ly, site, pool)
        for name in names:
            rec = by_key[(lx, ly, pool, site, name)]
            want = reference(name, x, y)
            assert want is not None and np.isfinite(want)
            assert rec["value"] == pytest.approx(want, rel=1e-7, abs=1e-9), (
                lx,
                ly,
                pool,
                site,
                name,
            )
            assert rec["n"] == N and rec["depth"] == SITES.index(site)
            assert rec["undefined_reason"] is None
        z = by_key[(lx, ly, pool, site, "z")]["detail"]
        s = cosines(x, y)
        assert z["matched"] == pytest.approx(np.trace(s) / N, rel=1e-9)
        assert z["null_mean"] == pytest.approx(s.mean(), rel=1e-9)
        resid = s - s.mean(axis=1, keepdims=True) - s.mean(axis=0, keepdims=True) + s.mean()
        sd = np.sqrt((resid**2).sum() / (N**2 * (N - 1)))
        assert z["null_std"] == pytest.approx(sd, rel=1e-9)
        assert (z["method"], z["stratified"], z["centered"], z["p_value"]) == (
            "exact",
            False,
            False,
            None,
        )


def test_metric_values_differ_between_metrics(sweep: dict) -> None:
    # the data tells the metrics apart, so routing one metric to another is caught above
    recs = [
        r
        for r in sweep["records"]
        if (r["x"], r["y"], r["pool"], r["site"]) == ("zh", "en", "mean", "L0")
    ]
    values = [r["value"] for r in recs]
    assert len(set(np.round(values, 9))) == len(values)


def test_confidence_intervals_are_jackknife_and_wilson_from_their_definitions(
    sweep: dict, run_dir: Path
) -> None:
    with_ci = ("z", "p1_xy", "p1_yx", "mexa", "cka", "cka_unbiased", "semantic_hub")
    checked = set()
    for rec in sweep["records"]:
        if rec["metric"] not in with_ci:
            assert rec["ci_low"] is None and rec["ci_high"] is None, rec["metric"]
            continue
        assert rec["ci_low"] <= rec["value"] <= rec["ci_high"], rec["metric"]
        if (rec["x"], rec["y"], rec["pool"]) != ("zh", "en", "mean") or rec["site"] != "L0":
            continue
        x = arrays(run_dir, rec["x"], rec["site"], rec["pool"])
        y = arrays(run_dir, rec["y"], rec["site"], rec["pool"])
        low, high = reference_ci(rec["metric"], x, y, rec["value"])
        assert rec["ci_low"] == pytest.approx(low, rel=1e-7, abs=1e-9), rec["metric"]
        assert rec["ci_high"] == pytest.approx(high, rel=1e-7, abs=1e-9), rec["metric"]
        assert rec["ci_low"] < rec["ci_high"]
        checked.add(rec["metric"])
    assert checked == set(with_ci)


def test_stratified_centered_z_and_its_interval(run_dir: Path) -> None:
    run = load_run(run_dir)
    cfg = SweepConfig(lexical=False,
        metrics=("z",), stratify="category", center=True, n_boot=N_BOOT, seed=SEED,
        sites=("L1",), pools=("mean",), langs=("zh", "en"),
    )  # fmt: skip
    (rec,) = layer_sweep(run, cfg, progress=False)["records"]
    strata = np.asarray(run.meta["category"])
    x, y = arrays(run_dir, "zh", "L1", "mean"), arrays(run_dir, "en", "L1", "mean")
    s = cosines(x, y, center=True)
    assert rec["value"] == pytest.approx(exact_z_of_block(s, strata), rel=1e-9)
    # not the unstratified or uncentred value
    assert rec["value"] != pytest.approx(exact_z_of_block(s), rel=1e-3)
    assert rec["value"] != pytest.approx(exact_z_of_block(cosines(x, y), strata), rel=1e-3)
    low, high = reference_ci("z", x, y, rec["value"], center=True)
    assert (rec["ci_low"], rec["ci_high"]) == (
        pytest.approx(low, rel=1e-7),
        pytest.approx(high, rel=1e-7),
    )


def test_pivot_orients_every_pair_from_the_pivot(run_dir: Path) -> None:
    cfg = SweepConfig(
        lexical=False, metrics=("p1", "cohen"), pivot="en", n_boot=0, sites=("L0",), pools=("last",)
    )
    res = layer_sweep(load_run(run_dir), cfg, progress=False)
    assert res["pairs"] == [["en", "zh"], ["en", "de"]]
    for rec in res["records"]:
        x, y = arrays(run_dir, rec["x"], "L0", "last"), arrays(run_dir, rec["y"], "L0", "last")
        assert rec["x"] == "en"
        assert rec["value"] == pytest.approx(reference(rec["metric"], x, y), rel=1e-9)
        assert rec["ci_low"] is None


def test_language_matrices_hold_the_record_values(sweep: dict) -> None:
    langs = sweep["languages"]
    for rec in sweep["records"]:
        i, j = langs.index(rec["x"]), langs.index(rec["y"])
        if rec["metric"] in ("p1_xy", "p1_yx"):
            m = sweep["matrices"]["p1"][rec["pool"]][rec["site"]]
            a, b = (i, j) if rec["metric"] == "p1_xy" else (j, i)
            assert m[a][b] == rec["value"]
            continue
        m = sweep["matrices"][rec["metric"]][rec["pool"]][rec["site"]]
        assert m[i][j] == rec["value"]
        symmetric = rec["metric"] not in ("mrr", "xsim_error", "cohen_d_pc1", "cycle_knn")
        assert (m[j][i] == rec["value"]) if symmetric else m[j][i] is None
        assert m[i][i] is None


def test_monte_carlo_null_is_the_studys_draws(run_dir: Path) -> None:
    run = load_run(run_dir)
    cfg = SweepConfig(lexical=False,
        metrics=("z",), null="monte-carlo", n_perms=300, seed=SEED, n_boot=0, pools=("last",),
        langs=("zh", "en"),
    )  # fmt: skip
    res = layer_sweep(run, cfg, progress=False)
    for rec in res["records"]:
        x = unit(arrays(run_dir, "zh", rec["site"], "last"))
        y = unit(arrays(run_dir, "en", rec["site"], "last"))
        rng = np.random.RandomState(SEED)
        perms = [rng.permutation(N) for _ in range(300)]  # the same draws at every site
        null = np.array([np.mean(np.sum(x * y[p], axis=1)) for p in perms])
        matched = np.mean(np.sum(x * y, axis=1))
        # float64 here, the study's float32 arithmetic there: agree to float32 precision
        assert rec["value"] == pytest.approx((matched - null.mean()) / null.std(), rel=1e-4)
        assert rec["detail"]["p_value"] == pytest.approx((1 + (null >= matched).sum()) / 301)


def test_the_result_echoes_its_config_and_skips_intervals_past_the_limit(
    tmp_path: Path,
) -> None:
    from xlalign.studies.layers import CI_MAX_N

    n = CI_MAX_N + 1
    path = write_synthetic_run(tmp_path / "big", n, 3, n_sites=1, pools=("last",))
    cfg = SweepConfig(
        lexical=False, metrics=("z",), n_boot=5, seed=3, ci_level=0.9, stratify="category"
    )
    res = layer_sweep(load_run(path), cfg, progress=False)
    assert f"{n} pairs > {CI_MAX_N}" in res["ci_skipped"]
    assert all(r["ci_low"] is None and r["ci_high"] is None for r in res["records"])
    assert all(r["value"] is not None for r in res["records"])
    echo = {k: res[k] for k in ("null", "n_perms", "seed", "stratify", "center", "n_boot")}
    assert echo == {
        "null": "exact", "n_perms": None, "seed": 3, "stratify": "category", "center": False,
        "n_boot": 5,
    }  # fmt: skip
    assert (res["ci_level"], res["pivot"], res["metrics"]) == (0.9, None, ["z"])
    assert res["model"] == "synthetic" and res["run"] == str(path)
    assert res["languages"] == ["zh", "en"] and res["sites"] == ["embed"]


def test_written_files_and_table_carry_the_record_values(sweep: dict, tmp_path: Path) -> None:
    import csv
    import json

    from xlalign.studies.layers import CSV_FIELDS, format_table, write_alignment

    paths = write_alignment(sweep, tmp_path / "out")
    # JSON turns tuples into lists; nothing else may change
    assert json.loads(paths["json"].read_text(encoding="utf-8")) == json.loads(json.dumps(sweep))
    with paths["csv"].open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == CSV_FIELDS
        rows = list(reader)
    assert len(rows) == len(sweep["records"])
    for row, rec in zip(rows, sweep["records"], strict=True):
        for k in CSV_FIELDS:
            want = rec[k]
            if want is None:
                assert row[k] == "", k
            elif isinstance(want, float):
                assert float(row[k]) == want, k
            else:
                assert row[k] == str(want), k
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "out").glob(".*tmp"))

    table = format_table(sweep, max_pairs=2).splitlines()
    names = [n for sel in sweep["metrics"] for n in METRICS[sel]]
    by_key = {(r["x"], r["y"], r["pool"], r["site"], r["metric"]): r for r in sweep["records"]}
    k = 0
    for lx, ly in [tuple(p) for p in sweep["pairs"]][:2]:
        for pool in sweep["pools"]:
            assert table[k] == f"{lx} vs {ly}, pool {pool} (null exact)"
            assert table[k + 1].split() == ["site", *names]
            for i, site in enumerate(sweep["sites"]):
                cells = table[k + 2 + i].split()
                assert cells[0] == site
                want = [format(by_key[(lx, ly, pool, site, n)]["value"], ".3f") for n in names]
                assert cells[1:] == want, (lx, ly, pool, site)
            assert table[k + 2 + len(sweep["sites"])] == ""
            k += 3 + len(sweep["sites"])
    assert table[k] == "... and 1 more pairs in alignment.json"
    assert len(table) == k + 1


def test_a_site_that_cannot_be_scored_gets_its_reason_and_the_others_their_values(
    run_dir: Path, tmp_path: Path
) -> None:
    # a copy of the run where one zh vector at L0 is zero: no direction, so no cosine there
    path = tmp_path / "run"
    shutil.copytree(run_dir, path)
    bad = np.load(path / "arrays" / "zh" / "L0" / "last.npy")
    bad[4] = 0.0
    np.save(path / "arrays" / "zh" / "L0" / "last.npy", bad)
    cfg = SweepConfig(lexical=False,
        metrics=("z", "p1", "cka"), null="monte-carlo", n_perms=200, seed=SEED, n_boot=0,
        pools=("last",), langs=("zh", "en"),
    )  # fmt: skip
    res = layer_sweep(load_run(path), cfg, progress=False)
    by = {(r["site"], r["metric"]): r for r in res["records"]}
    for metric in ("z", "p1_xy", "p1_yx"):
        rec = by[("L0", metric)]
        assert rec["value"] is None and "zero-norm rows at indices [4]" in rec["undefined_reason"]
    x, y = arrays(path, "zh", "L0", "last"), arrays(path, "en", "L0", "last")
    assert by[("L0", "cka")]["value"] == pytest.approx(cka(x, y), rel=1e-9)  # no norms in CKA
    rng = np.random.RandomState(SEED)
    perms = [rng.permutation(N) for _ in range(200)]
    for site in ("embed", "L1"):
        xu, yu = unit(arrays(path, "zh", site, "last")), unit(arrays(path, "en", site, "last"))
        null = np.array([np.mean(np.sum(xu * yu[p], axis=1)) for p in perms])
        matched = np.mean(np.sum(xu * yu, axis=1))
        rec = by[(site, "z")]
        assert rec["value"] == pytest.approx((matched - null.mean()) / null.std(), rel=1e-4)
        assert rec["undefined_reason"] is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metrics": ("z", "bleu")}, r"--metrics: unknown metric\(s\) bleu; choose from z, p1"),
        ({"metrics": ()}, "--metrics: give at least one"),
        ({"null": "bootstrap"}, "--null must be 'exact' or 'monte-carlo', got 'bootstrap'"),
        ({"n_boot": -1}, "--n-boot must be >= 0, got -1"),
        ({"n_perms": 1}, "--n-perms must be at least 2, got 1"),
        ({"ci_level": 1.0}, "--ci-level must be between 0 and 1, got 1.0"),
        ({"ci_level": 0.0}, "--ci-level must be between 0 and 1, got 0.0"),
    ],
)
def test_a_bad_sweep_config_names_its_flag_and_value(kwargs: dict, message: str) -> None:
    from xlalign.errors import XlalignError

    with pytest.raises(XlalignError, match=message):
        SweepConfig(lexical=False, **kwargs)


def test_edge_values_of_the_sweep_config_are_accepted() -> None:
    SweepConfig(lexical=False, n_boot=0, n_perms=2, ci_level=0.5, metrics=("z",))


def test_a_bad_selection_names_what_was_asked_and_what_the_run_has(
    run_dir: Path, tmp_path: Path
) -> None:
    from xlalign.errors import RunError, XlalignError

    run = load_run(run_dir)
    where = str(run_dir)
    cases = [
        ({"sites": ("L9", "L0")}, rf"site\(s\) L9 not in run {where}: it has embed, L0, L1$"),
        ({"langs": ("zh", "xx")}, rf"language\(s\) xx not in run {where}: it has zh, en, de$"),
        ({"pools": ("first",)}, rf"pool\(s\) first not in run {where}: it has last, mean$"),
        ({"langs": ("en",)}, "the sweep needs two languages; selected en$"),
        ({"stratify": "topic"}, "--stratify column 'topic' not in run: it has category$"),
        ({"pivot": "xx"}, "--pivot 'xx' is not a language of the run: zh, en, de$"),
    ]
    for kwargs, message in cases:
        with pytest.raises(XlalignError, match=message):
            layer_sweep(
                run, SweepConfig(lexical=False, metrics=("z",), n_boot=0, **kwargs), progress=False
            )
    # a run that kept token vectors: they are never swept, and asking for them is refused
    path = tmp_path / "tokens"
    shutil.copytree(run_dir, path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["pools"] = [*manifest["pools"], "tokens"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with_tokens = load_run(path)
    res = layer_sweep(
        with_tokens, SweepConfig(lexical=False, metrics=("z",), n_boot=0), progress=False
    )
    assert res["pools"] == ["last", "mean"]
    with pytest.raises(RunError, match="pool 'tokens' has one vector per token"):
        cfg = SweepConfig(lexical=False, metrics=("z",), n_boot=0, pools=("tokens",))
        layer_sweep(with_tokens, cfg, progress=False)
    # selections keep the order asked
    cfg = SweepConfig(
        lexical=False, metrics=("z",), n_boot=0, sites=("L1", "embed"), langs=("en", "zh")
    )
    res = layer_sweep(run, cfg, progress=False)
    assert res["sites"] == ["L1", "embed"] and res["pairs"] == [["en", "zh"]]
    assert [r["depth"] for r in res["records"]] == [2, 0, 2, 0]


@pytest.mark.parametrize("selector", ALL_METRICS)
def test_each_metric_selector_alone_gives_exactly_its_records(
    selector: str, run_dir: Path, sweep: dict
) -> None:
    cfg = SweepConfig(
        lexical=False, metrics=(selector,), n_boot=0, sites=("L0",), langs=("zh", "en")
    )
    res = layer_sweep(load_run(run_dir), cfg, progress=False)
    got = {(r["pool"], r["metric"]): r["value"] for r in res["records"]}
    assert sorted(got) == sorted((p, m) for p in POOLS for m in METRICS[selector])
    full = {
        (r["pool"], r["metric"]): r["value"]
        for r in sweep["records"]
        if (r["site"], r["x"], r["y"]) == ("L0", "zh", "en")
    }
    for key, value in got.items():
        assert value == full[key], key


def test_a_run_without_metadata_says_so_when_asked_to_stratify(
    run_dir: Path, tmp_path: Path
) -> None:
    from xlalign.errors import RunError

    path = tmp_path / "nometa"
    shutil.copytree(run_dir, path)
    meta = json.loads((path / "meta.json").read_text())
    meta["columns"] = {}
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(
        RunError, match=r"--stratify column 'category' not in run: it has no metadata columns$"
    ):
        layer_sweep(load_run(path), SweepConfig(lexical=False, stratify="category"), progress=False)


def test_undefined_metrics_carry_their_own_reason(tmp_path: Path) -> None:
    # every zh vector identical (the study's embedding-level last token within a category):
    # z has a one-point null, CKA a side without variance; d = 4 < SVCCA's 10 dims
    path = write_synthetic_run(tmp_path / "flat", 12, 4, n_sites=1, pools=("last",))
    np.save(path / "arrays" / "zh" / "embed" / "last.npy", np.ones((12, 4), dtype=np.float32))
    metrics = ("z", "cka", "svcca", "p1")
    res = layer_sweep(
        load_run(path), SweepConfig(lexical=False, metrics=metrics, n_boot=10), progress=False
    )
    by = {r["metric"]: r for r in res["records"]}
    assert by["z"]["value"] is None and "zero spread" in by["z"]["undefined_reason"]
    assert by["cka"]["value"] is None and "no variance" in by["cka"]["undefined_reason"]
    assert by["svcca"]["value"] is None and "dims" in by["svcca"]["undefined_reason"]
    assert by["cka"]["detail"]["undefined_reason"] == by["cka"]["undefined_reason"]
    # retrieving x from y: every candidate ties, and ties are misses; retrieving y from x:
    # every query has the same nearest y, which is the partner of exactly one of them
    assert by["p1_yx"]["value"] == 0.0 and by["p1_yx"]["undefined_reason"] is None
    assert by["p1_xy"]["value"] == pytest.approx(1 / 12)
    for rec in res["records"]:
        if rec["value"] is None:
            assert rec["ci_low"] is None and rec["ci_high"] is None


def test_platonic_mode_clamps_once_over_all_sites_then_normalises(
    run_dir: Path, sweep: dict
) -> None:
    # platonic-rep: one threshold per model over all layers (each prompt's 0.95 quantile of |x|
    # over every layer's values, averaged over prompts), clamp, L2-normalise rows, then the
    # metric; its CKA adds 1e-6 to the denominator
    cfg = SweepConfig(
        lexical=False, metrics=("cka", "knn", "z"), compat="platonic", n_boot=0, langs=("zh", "en")
    )
    res = layer_sweep(load_run(run_dir), cfg, progress=False)

    def threshold(lang: str, pool: str) -> float:
        flat = np.concatenate([np.abs(arrays(run_dir, lang, s, pool)) for s in SITES], axis=1)
        return float(np.mean([np.quantile(row, 0.95) for row in flat]))

    for rec in res["records"]:
        x = arrays(run_dir, "zh", rec["site"], rec["pool"])
        y = arrays(run_dir, "en", rec["site"], rec["pool"])
        tx, ty = threshold("zh", rec["pool"]), threshold("en", rec["pool"])
        px, py = unit(np.clip(x, -tx, tx)), unit(np.clip(y, -ty, ty))
        if rec["metric"] == "cka":
            k, l_ = px @ px.T, py @ py.T
            want = hsic_biased(k, l_) / (np.sqrt(hsic_biased(k, k) * hsic_biased(l_, l_)) + 1e-6)
        elif rec["metric"] == "mutual_knn":
            a, b = knn_sets(px @ px.T, 10), knn_sets(py @ py.T, 10)
            want = float(np.mean([len(a[i] & b[i]) / 10 for i in range(N)]))
        else:  # z has no platonic variant: unchanged
            want = reference("z", x, y)
        assert rec["value"] == pytest.approx(want, rel=1e-9), (
            rec["site"],
            rec["pool"],
            rec["metric"],
        )
    # and the mode changes the numbers it is meant to change
    exact = {
        (r["site"], r["pool"], r["metric"]): r["value"]
        for r in sweep["records"]
        if (r["x"], r["y"]) == ("zh", "en")
    }
    changed = [
        r["value"] != pytest.approx(exact[(r["site"], r["pool"], r["metric"])], rel=1e-6)
        for r in res["records"]
        if r["metric"] == "cka"
    ]
    assert all(changed)
