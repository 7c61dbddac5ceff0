"""The layer sweep: every metric at every site, pool and language pair of a run, on one null.

Reads the run site by site (memory-mapped), so memory stays bounded by one site's arrays of two
languages. Monte Carlo z uses one permutation array for every site, pool and pair, so layers are
compared on the same null (calibrated similarity).

Scale: the exact z, CKA and the semantic-hub score stream over row chunks (``O(N d^2)`` time,
``O(N + d^2)`` memory); retrieval (P@1, MEXA, MRR, xSIM) streams in tiles but costs
``O(N^2 d)``; the k-NN metrics, SVCCA and Cohen's d hold float64 copies and are meant for
study-sized N. Bootstrap intervals are skipped above :data:`CI_MAX_N` pairs.

Many languages: every pair of languages (or each against ``pivot``) is read pair by pair from
the memory-mapped store, never all languages at once, and ``matrices`` in the result holds the
L x L matrix of each metric per pool and site (see :func:`language_matrices`).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xlalign.data.lexical import LEXICAL_SITE
from xlalign.errors import RunError, XlalignError
from xlalign.metrics import (
    COMPAT_MODES,
    cknna,
    cohen_d_pc1,
    cycle_knn,
    edit_distance_knn,
    lcs_knn,
    linear_cka,
    matched_vs_scrambled_z,
    matched_vs_scrambled_z_sweep,
    mutual_knn,
    platonic_threshold,
    retrieval_scores,
    semantic_hub_score,
    svcca,
    xsim_error,
)
from xlalign.metrics._checks import strata_codes
from xlalign.metrics.nulls import NULL_METRICS, null_distributions, null_summary
from xlalign.metrics.pairwise import Pair, Side
from xlalign.metrics.permutation import draw_permutations
from xlalign.store.files import CORPUS_FILE, TOKEN_POOL, atomic_file, atomic_write_json
from xlalign.store.pools import POOL_DESCRIPTIONS
from xlalign.store.run import Run

#: Metric selectors (``--metrics``) and the record names each one produces.
METRICS: dict[str, tuple[str, ...]] = {
    "z": ("z",),
    "p1": ("p1_xy", "p1_yx"),
    "mexa": ("mexa",),
    "mrr": ("mrr",),
    "xsim": ("xsim_error",),
    "cka": ("cka",),
    "cka_unbiased": ("cka_unbiased",),
    "knn": ("mutual_knn",),
    "cknna": ("cknna",),
    "svcca": ("svcca",),
    "hub": ("semantic_hub",),
    "cohen": ("cohen_d_pc1",),
    "cycle_knn": ("cycle_knn",),
    "lcs_knn": ("lcs_knn",),
    "edit_distance_knn": ("edit_distance_knn",),
}
#: Metrics that ``--compat platonic`` changes (platonic-rep's clamp, normalisation, epsilons).
PLATONIC_METRICS = frozenset(
    {"cka", "cka_unbiased", "knn", "cknna", "svcca", "cycle_knn", "lcs_knn", "edit_distance_knn"}
)
#: The default metrics. CKA is the debiased one (Song et al.'s unbiased HSIC): the biased ``cka``
#: of unrelated vectors is far from 0 when pairs are few for the width (about 0.5 at n = 30,
#: d = 25); ask for ``cka`` to see it beside.
DEFAULT_METRICS = ("z", "p1", "mexa", "xsim", "cka_unbiased", "knn", "hub")
#: Metrics with confidence intervals (:meth:`xlalign.metrics.pairwise.Pair.interval`).
CI_METRICS = ("z", "p1_xy", "p1_yx", "mexa", "cka", "cka_unbiased", "semantic_hub")
#: How each interval is made (``alignment.json``'s ``ci_method``).
CI_METHODS = {
    "z": "jackknife (exact leave-one-out; width ignores --stratify)",
    "p1_xy": "wilson",
    "p1_yx": "wilson",
    "mexa": "wilson",
    "cka": "jackknife (exact leave-one-out)",
    "cka_unbiased": "jackknife (exact leave-one-out)",
    "semantic_hub": "jackknife (exact leave-one-out)",
}
#: Above this many pairs the nulls that gather an ``n x n`` matrix per permutation (CKA, CKNNA:
#: ``K n^2`` reads, 100 s for K = 1,000 at n = 2,009 on two cores) are skipped and said; the
#: others (P@1, MEXA, hub gap, z, mutual k-NN: ``K n`` or ``K n k``) are kept.
GRAM_NULL_MAX_N = 1024
_GRAM_NULLS = frozenset({"cka", "cka_unbiased", "cknna"})
#: Metrics whose permutation null ``--compat platonic`` would change (computed on clamped
#: features by the public functions): no null is recorded for them under it.
_PLATONIC_NULL = frozenset({"cka", "cka_unbiased", "mutual_knn", "cknna"})
#: Above this many pairs the intervals are skipped: the interval helpers hold ``N x N``
#: float64 matrices (10,000 pairs: 800 MB).
CI_MAX_N = 10_000
#: Up to this many pairs a site's metrics come from matrices built once and shared
#: (:mod:`xlalign.metrics.pairwise`: one cosine matrix, per-language Gram matrices reused
#: across pairs, batched intervals); above it each metric streams on its own (``n x n``
#: float64 matrices: 4,096 pairs hold 128 MiB each).
SHARED_MAX_N = 4096
#: How the studies' exact z multiplies: float64 throughout, so every z a study reports (the
#: shared cosine matrix's, the per-metric path's, the lexical baseline's, the origin study's)
#: agrees with the others to float64 rounding. The library's default for float32 inputs is
#: float32 products (``products="auto"``), within 1e-6 of these; see docs/metrics.md.
STUDY_PRODUCTS = "float64"

#: ``--backend`` choices.
BACKENDS = ("auto", "numpy", "torch")
#: Metrics whose value does not change when the two languages swap places.
SYMMETRIC_METRICS = frozenset(
    {
        "z",
        "mexa",
        "cka",
        "cka_unbiased",
        "mutual_knn",
        "cknna",
        "svcca",
        "semantic_hub",
        "lcs_knn",
        "edit_distance_knn",
    }
)
#: Directed record pairs folded into one matrix: ``p1[i][j]`` retrieves language j's partner
#: of each language-i sentence (``p1_xy`` of the pair (i, j), or ``p1_yx`` of (j, i)).
_FOLDED = {"p1_xy": ("p1", False), "p1_yx": ("p1", True)}


@dataclass(frozen=True)
class SweepConfig:
    """What the layer sweep computes (each field is the ``xlalign align`` flag of the same name)."""

    metrics: tuple[str, ...] = DEFAULT_METRICS
    """Metric selectors, from :data:`METRICS`."""
    null: str = "exact"
    """Null of the z statistic: ``exact`` or ``monte-carlo``."""
    n_perms: int = 1000
    """Monte Carlo permutations (shared by every site)."""
    seed: int = 42
    """Seed of the Monte Carlo null and of the bootstrap."""
    stratify: str | None = None
    """Metadata column: permute only within its groups (separates instance from template)."""
    center: bool = False
    """Remove each language's mean vector before normalising."""
    pivot: str | None = None
    """Compare every language with this one only, instead of every pair."""
    n_boot: int = 200
    """Confidence intervals: 0 turns them off. The intervals are exact (jackknife, Wilson) and
    use no resamples; the count is kept for the commands that still resample (origin)."""
    null_perms: int = 1000
    """Permutations of the pairing for every similarity's null (``p_value``, ``null_q95``,
    ``p_best_site``), shared by all sites and pools (0: none)."""
    ci_level: float = 0.95
    """Confidence level of the intervals."""
    sites: tuple[str, ...] | None = None
    """Sites to sweep (default: all in the run)."""
    pools: tuple[str, ...] | None = None
    """Pools to sweep (default: every per-prompt pool in the run)."""
    langs: tuple[str, ...] | None = None
    """Languages to include (default: all in the run)."""
    compat: str = "exact"
    """exact, or platonic: platonic-rep's pipeline for the CKA / k-NN / SVCCA metrics."""
    lexical: bool = True
    """Also score the model-free lexical baseline (bag of token ids) as site ``lexical``."""
    standardize: bool = False
    """z-score each dimension over the pooled rows of the languages first (rogue dimensions)."""
    backend: str = "auto"
    """Array library of the metrics: numpy, torch (on CUDA when present, else the CPU), or auto
    (torch where CUDA is present, else numpy)."""

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise XlalignError(
                f"--metrics: unknown metric(s) {', '.join(unknown)}; choose from "
                f"{', '.join(METRICS)}"
            )
        if not self.metrics:
            raise XlalignError("--metrics: give at least one metric")
        if self.null not in ("exact", "monte-carlo"):
            raise XlalignError(f"--null must be 'exact' or 'monte-carlo', got {self.null!r}")
        if self.n_boot < 0:
            raise XlalignError(f"--n-boot must be >= 0, got {self.n_boot}")
        if self.null_perms < 0:
            raise XlalignError(f"--null-perms must be 0 (none) or more, got {self.null_perms}")
        if self.n_perms < 2:
            raise XlalignError(f"--n-perms must be at least 2, got {self.n_perms}")
        if self.seed < 0:
            raise XlalignError(f"--seed must be 0 or more, got {self.seed}")
        if self.compat not in COMPAT_MODES:
            raise XlalignError(
                f"--compat must be one of {', '.join(COMPAT_MODES)} for align, got {self.compat!r}"
            )
        if not 0 < self.ci_level < 1:
            raise XlalignError(f"--ci-level must be between 0 and 1, got {self.ci_level}")
        if self.backend not in BACKENDS:
            raise XlalignError(
                f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}"
            )


@dataclass
class _Rec:
    site: str
    depth: int | None
    pool: str
    x: str
    y: str
    metric: str
    value: float | None
    n: int
    undefined_reason: str | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    p_value: float | None = None
    null_q95: float | None = None
    p_best_site: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "depth": self.depth,
            "pool": self.pool,
            "x": self.x,
            "y": self.y,
            "metric": self.metric,
            "value": self.value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "p_value": self.p_value,
            "null_q95": self.null_q95,
            "p_best_site": self.p_best_site,
            "n": self.n,
            "undefined_reason": self.undefined_reason,
            "detail": self.detail,
        }


def _finite(v: Any) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def language_pairs(langs: Sequence[str], pivot: str | None) -> list[tuple[str, str]]:
    """Every unordered pair of ``langs`` in order, or ``(pivot, other)`` for each other."""
    if pivot is None:
        return list(itertools.combinations(langs, 2))
    if pivot not in langs:
        raise XlalignError(f"--pivot '{pivot}' is not a language of the run: {', '.join(langs)}")
    return [(pivot, lang) for lang in langs if lang != pivot]


def _selected(run: Run, cfg: SweepConfig) -> tuple[list[str], list[str], list[str]]:
    def pick(kind: str, asked: Sequence[str] | None, have: Sequence[str]) -> list[str]:
        if asked is None:
            return list(have)
        missing = [a for a in asked if a not in have]
        if missing:
            raise RunError(
                f"{kind} {', '.join(missing)} not in run {run.path}: it has {', '.join(have)}"
            )
        return list(asked)

    langs = pick("language(s)", cfg.langs, run.languages)
    sites = pick("site(s)", cfg.sites, run.sites)
    if cfg.pools is not None and TOKEN_POOL in cfg.pools:
        raise RunError("pool 'tokens' has one vector per token; sweep a pooled vector instead")
    vector_pools = [p for p in run.pools if p != TOKEN_POOL]
    pools = pick("pool(s)", cfg.pools, vector_pools)
    if len(langs) < 2:
        raise RunError(f"the sweep needs two languages; selected {', '.join(langs)}")
    return langs, sites, pools


def _strata(run: Run, cfg: SweepConfig) -> list[Any] | None:
    if cfg.stratify is None:
        return None
    meta = run.meta
    if cfg.stratify not in meta:
        raise RunError(
            f"--stratify column '{cfg.stratify}' not in run: it has "
            f"{', '.join(meta) or 'no metadata columns'}"
        )
    labels = list(meta[cfg.stratify])
    for i, label in enumerate(labels):
        if isinstance(label, (dict, list)):  # a nested JSON value has no stratum
            raise RunError(
                f"--stratify column '{cfg.stratify}' holds a {type(label).__name__} at row {i} "
                f"(id {run.ids[i]}); stratify by a column of strings or numbers"
            )
    return labels


def _guard(fn: Callable[[], Any]) -> tuple[Any, str | None]:
    """Run a metric; a metric that cannot be computed on this data gives its reason instead."""
    try:
        return fn(), None
    except XlalignError as e:
        return None, str(e)


def _site_metrics(
    x: np.ndarray,
    y: np.ndarray,
    cfg: SweepConfig,
    strata: Sequence[Any] | None,
    clamp: tuple[float, float] | None = None,
    pair: Pair | None = None,
) -> Iterator[tuple[str, float | None, str | None, dict[str, Any]]]:
    """``(metric, value, undefined_reason, detail)`` for every metric except z.

    ``clamp``: with ``cfg.compat == "platonic"``, the joint clamps of x's and y's language
    (:func:`~xlalign.metrics.platonic_threshold` over all sites of the run), applied before the
    metrics of :data:`PLATONIC_METRICS`. With ``pair`` the cosine metrics, CKA and the k-NN
    metrics come from its shared matrices (equal values, computed once; CKA and k-NN only
    without ``--compat platonic``); the others from the public functions.
    """
    chosen = set(cfg.metrics)
    px, py = x, y
    sim: dict[str, Any] = {}
    if cfg.compat == "platonic" and clamp is not None:
        px = np.clip(np.asarray(x, dtype=np.float64), -clamp[0], clamp[0])
        py = np.clip(np.asarray(y, dtype=np.float64), -clamp[1], clamp[1])
        sim = {"prepare": False, "compat": "platonic"}
    if chosen & {"p1", "mexa", "mrr"}:
        r, why = _guard(pair.retrieval if pair is not None else lambda: retrieval_scores(x, y))
        for sel, names in (("p1", ("p1_xy", "p1_yx")), ("mexa", ("mexa",)), ("mrr", ("mrr",))):
            if sel in chosen:
                for name in names:
                    yield name, None if r is None else _finite(getattr(r, name)), why, {}
    simple: dict[str, tuple[str, Callable[[], Any], str]] = {
        "xsim": ("xsim_error", lambda: xsim_error(x, y), "error"),
        "cka": ("cka", lambda: linear_cka(px, py, **sim), "cka"),
        "cka_unbiased": ("cka_unbiased", lambda: linear_cka(px, py, unbiased=True, **sim), "cka"),
        "knn": ("mutual_knn", lambda: mutual_knn(px, py, **sim), "score"),
        "cknna": ("cknna", lambda: cknna(px, py, **sim), "score"),
        "svcca": ("svcca", lambda: svcca(px, py, **sim), "score"),
        "cycle_knn": ("cycle_knn", lambda: cycle_knn(px, py, **sim), "score"),
        "lcs_knn": ("lcs_knn", lambda: lcs_knn(px, py, **sim), "score"),
        "edit_distance_knn": (
            "edit_distance_knn",
            lambda: edit_distance_knn(px, py, **sim),
            "score",
        ),
        "hub": ("semantic_hub", lambda: semantic_hub_score(x, y), "score"),
        "cohen": ("cohen_d_pc1", lambda: cohen_d_pc1(x, y), "d"),
    }
    if pair is not None:
        shared: dict[str, Callable[[], Any]] = {"xsim": pair.xsim, "hub": pair.hub}
        if not sim:  # --compat platonic changes CKA and the k-NN metrics: public functions
            shared |= {
                "cka": pair.cka,
                "cka_unbiased": pair.cka_unbiased,
                "knn": pair.mutual_knn,
                "cknna": pair.cknna,
            }
        for sel, fn in shared.items():
            simple[sel] = (simple[sel][0], fn, simple[sel][2])
    for sel in cfg.metrics:
        if sel not in simple:
            continue
        name, fn, attr = simple[sel]
        res, why = _guard(fn)
        value = None if res is None else _finite(getattr(res, attr))
        if res is not None and value is None:
            why = getattr(res, "undefined_reason", None) or "undefined"
        detail = res.to_dict() if res is not None and hasattr(res, "to_dict") else {}
        if sel in ("cka", "cka_unbiased"):  # how far from n >> d: the bias of the biased one
            detail = {**detail, "n": int(x.shape[0]), "d": int(x.shape[1])}
            if y.shape[1] != x.shape[1]:
                detail["d_y"] = int(y.shape[1])
        yield name, value, why, detail


def _ci(
    metric: str,
    value: float,
    x: np.ndarray,
    y: np.ndarray,
    cfg: SweepConfig,
    pair: Pair | None = None,
) -> tuple[float | None, float | None]:
    """The record's interval (:meth:`Pair.interval`); a pair built here when none is shared."""
    if cfg.n_boot == 0 or metric not in CI_METRICS:
        return None, None
    if cfg.compat == "platonic" and metric in ("cka", "cka_unbiased"):
        return None, None  # the value is of clamped features; the shared Grams are not
    if pair is None:
        pair, _ = _guard(lambda: Side(x, "x").pair_with(Side(y, "y")))
        if pair is None:
            return None, None
    ci, _why = _guard(lambda: pair.interval(metric, value, cfg.ci_level, cfg.center))  # type: ignore[union-attr]
    if ci is None:
        return None, None
    return _finite(ci.low), _finite(ci.high)


def _z_all_sites(
    run: Run,
    lx: str,
    ly: str,
    pool: str,
    sites: Sequence[str],
    cfg: SweepConfig,
    strata: Sequence[Any] | None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """z at every site on one null; a site whose data cannot be scored gets its reason."""
    kw: dict[str, Any] = dict(
        method=cfg.null, n_perms=cfg.n_perms, seed=cfg.seed, strata=strata, center=cfg.center,
        products=STUDY_PRODUCTS,
    )  # fmt: skip
    try:
        return matched_vs_scrambled_z_sweep(_LazySites(run, lx, ly, pool, sites), **kw), {}  # type: ignore[arg-type]
    except XlalignError:
        pass
    # One site failed (e.g. a zero-norm vector): score the others one by one. The same seed
    # draws the same permutations, so they still share one null.
    zs: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for site in sites:
        x, y = run.array(lx, site, pool), run.array(ly, site, pool)
        res, why = _guard(lambda x=x, y=y: matched_vs_scrambled_z(x, y, **kw))  # type: ignore[misc]
        if res is None:
            errors[site] = why or "undefined"
        else:
            zs[site] = res
    return zs, errors


def _side_factory(backend: str) -> tuple[Callable[[np.ndarray, str], Side], str]:
    """``((array, name) -> Side, label)`` of the chosen backend (``auto``: torch where CUDA is
    present, else numpy)."""
    if backend == "numpy":
        return Side, "numpy"
    try:
        import torch

        from xlalign.metrics import torch_ops
    except ImportError as err:
        if backend == "torch":
            raise XlalignError(f"--backend torch needs torch installed: {err}") from err
        return Side, "numpy"
    cuda = torch.cuda.is_available()
    if backend == "auto" and not cuda:
        return Side, "numpy"
    device = "cuda" if cuda else "cpu"
    return (lambda a, name: torch_ops.Side(a, name, device)), f"torch ({device})"


def _z_single(
    x: np.ndarray, y: np.ndarray, cfg: SweepConfig, strata: Sequence[Any] | None
) -> Callable[[Any, bool], Any]:
    """The exact z of one site from the public function (when no shared Pair could be built)."""
    return lambda _codes, center: matched_vs_scrambled_z(
        x, y, strata=strata, center=center, products=STUDY_PRODUCTS
    )


def layer_sweep(
    run: Run, config: SweepConfig | None = None, *, progress: bool = True
) -> dict[str, Any]:
    """The sweep's results as a JSON-ready dict (the contents of ``alignment.json``).

    ``records`` holds one entry per site x pool x language pair x metric, in long format, with
    its confidence interval where one is computed and the reason where the value is undefined.
    """
    from tqdm.auto import tqdm

    cfg = config or SweepConfig()
    langs, sites, pools = _selected(run, cfg)
    dominance = dominance_records(run, langs, sites, pools)  # on the raw vectors, always
    quality = corpus_quality(run, langs)
    duplicates = duplicate_prompts(run, langs)
    if duplicates:  # the same prompt, the same vector: ties, whatever the batch's float noise
        run = DedupedRun(run, duplicates)  # type: ignore[assignment]
    if cfg.standardize:
        run = StandardizedRun(run, langs)  # type: ignore[assignment]
    pairs = language_pairs(langs, cfg.pivot)
    strata = _strata(run, cfg)
    depth = {s: run.sites.index(s) for s in sites}
    records: list[_Rec] = []
    total = len(pairs) * len(pools) * len(sites)
    bar = tqdm(total=total, desc="align", unit="site", disable=not progress)
    ci_skipped = None
    if cfg.n_boot > 0 and run.n_rows > CI_MAX_N:
        ci_skipped = (
            f"intervals skipped: {run.n_rows} pairs > {CI_MAX_N} (the interval helpers "
            "hold N x N matrices); use --n-boot 0 or a subsample"
        )
    thresholds: dict[tuple[str, str], float] = {}

    def threshold(lang: str, pool: str) -> float:
        # platonic-rep clamps a model's features once, over all of its layers
        if (lang, pool) not in thresholds:
            thresholds[lang, pool] = platonic_threshold(
                [run.array(lang, s, pool) for s in run.sites]
            )
        return thresholds[lang, pool]

    shared = run.n_rows <= SHARED_MAX_N
    null_k = cfg.null_perms if shared else 0
    null_skipped = None
    if cfg.null_perms and not shared:
        null_skipped = (
            f"permutation nulls skipped: {run.n_rows} pairs > {SHARED_MAX_N} (each permutation "
            "re-reads n x n matrices); use a subsample for p-values"
        )
    elif (
        cfg.null_perms
        and run.n_rows > GRAM_NULL_MAX_N
        and set(cfg.metrics)
        & {
            "cka",
            "cka_unbiased",
            "cknna",
        }
    ):
        null_skipped = (
            f"CKA and CKNNA permutation nulls skipped: {run.n_rows} pairs > {GRAM_NULL_MAX_N} "
            "(each permutation re-reads an n x n matrix); the other metrics have theirs"
        )
    perms: np.ndarray | None = None  # one set for every site, pool and pair, drawn once
    site_nulls: dict[tuple[int, int, str], dict[str, np.ndarray]] = {}
    make_side, backend = _side_factory(cfg.backend)
    exact_shared = shared and cfg.null == "exact"
    codes, codes_err = (
        (None, None) if strata is None else _guard(lambda: strata_codes(strata, run.n_rows))
    )
    z_by: dict[tuple[int, int], tuple[dict[str, Any], dict[str, str]]] = {}
    if "z" in cfg.metrics and not exact_shared:
        for (pi, (lx, ly)), (qi, pool) in itertools.product(enumerate(pairs), enumerate(pools)):
            z_by[pi, qi] = _z_all_sites(run, lx, ly, pool, sites, cfg, strata)
    # Site by site, then pair by pair, so that one language's Side (x of consecutive pairs:
    # the pivot, with --pivot) is built once per site and pool and reused; records are then
    # listed pair by pair, pool by pool, site by site as before.
    cells: dict[tuple[int, int, int], list[_Rec]] = {}
    for (qi, pool), (si, site) in itertools.product(enumerate(pools), enumerate(sites)):
        x_side: tuple[str, Side | None] | None = None
        for pi, (lx, ly) in enumerate(pairs):
            clamp = None
            if cfg.compat == "platonic" and set(cfg.metrics) & PLATONIC_METRICS:
                clamp = (threshold(lx, pool), threshold(ly, pool))
            x = np.asarray(run.array(lx, site, pool))
            y = np.asarray(run.array(ly, site, pool))
            pair: Pair | None = None
            if shared:
                if x_side is None or x_side[0] != lx:
                    x_side = (lx, _guard(lambda x=x: make_side(x, "x"))[0])  # type: ignore[misc]
                y_side = _guard(lambda y=y: make_side(y, "y"))[0]  # type: ignore[misc]
                if x_side[1] is not None and y_side is not None:
                    pair = _guard(lambda xs=x_side[1], ys=y_side: xs.pair_with(ys))[0]  # type: ignore[misc]
            base: dict[str, Any] = dict(
                site=site, depth=depth[site], pool=pool, x=lx, y=ly, n=len(x)
            )
            site_recs: list[_Rec] = []
            zs, z_errors = z_by.get((pi, qi), ({}, {}))
            if "z" in cfg.metrics and exact_shared:
                z_fn = pair.z if pair is not None else _z_single(x, y, cfg, strata)
                res, why = (
                    (None, codes_err)
                    if codes_err
                    else _guard(
                        lambda f=z_fn: f(codes, cfg.center)  # type: ignore[misc]
                    )
                )
                if res is None:
                    z_errors = {site: why or "undefined"}
                else:
                    zs = {site: res}
            if site in zs:
                z = zs[site]
                site_recs.append(
                    _Rec(
                        metric="z",
                        value=_finite(z.z),
                        undefined_reason=z.undefined_reason,
                        detail=z.to_dict(),
                        **base,  # type: ignore[arg-type]
                    )
                )
            elif site in z_errors:
                site_recs.append(
                    _Rec(metric="z", value=None, undefined_reason=z_errors[site], **base)
                )  # type: ignore[arg-type]
            for name, value, why, detail in _site_metrics(x, y, cfg, strata, clamp, pair):
                site_recs.append(
                    _Rec(metric=name, value=value, undefined_reason=why, detail=detail, **base)  # type: ignore[arg-type]
                )
            for rec in site_recs:
                if rec.value is not None and ci_skipped is None:
                    rec.ci_low, rec.ci_high = _ci(rec.metric, rec.value, x, y, cfg, pair)
            names = {r.metric for r in site_recs if r.value is not None} & set(NULL_METRICS)
            if cfg.compat == "platonic":
                names -= _PLATONIC_NULL
            if run.n_rows > GRAM_NULL_MAX_N:
                names -= _GRAM_NULLS
            if cfg.null != "exact" or site not in zs:
                names.discard("z")  # the Monte Carlo z has its own null and p-value
            if null_k and pair is not None and names:
                if perms is None:
                    perms = draw_permutations(run.n_rows, null_k, cfg.seed, strata)
                nulls, _why = _guard(
                    lambda p=pair, pm=perms, nm=names, z=zs.get(site): null_distributions(  # type: ignore[misc]
                        p, pm, nm, z=z, center=cfg.center
                    )
                )
                for rec in site_recs:
                    if nulls and rec.metric in nulls:
                        summary = null_summary(rec.value, nulls[rec.metric])
                        rec.p_value, rec.null_q95 = summary["p_value"], summary["null_q95"]
                        site_nulls.setdefault((pi, qi, rec.metric), {})[site] = nulls[rec.metric]
            cells[pi, qi, si] = site_recs
            bar.update(1)
    for pi, qi, si in itertools.product(range(len(pairs)), range(len(pools)), range(len(sites))):
        records.extend(cells[pi, qi, si])
    bar.close()
    _best_site_p(cells, site_nulls, sites)
    if cfg.lexical:
        records.extend(lexical_records(run, pairs, pools, cfg, strata, skip_ci=ci_skipped))
    record_dicts = [r.to_dict() for r in records]
    return {
        "run": str(run.path),
        "run_fingerprint": run.fingerprint,  # the arrays read (xlalign.store.Run.fingerprint)
        "model": run.manifest.get("model"),
        "random_init_seed": run.manifest.get("random_init_seed"),
        "languages": langs,
        "pairs": [list(p) for p in pairs],
        "sites": sites,
        "pools": pools,
        "pool_info": _pool_info(run, pools),
        "pool_note": run.pool_note,
        "metrics": list(cfg.metrics),
        "null": cfg.null,
        "n_perms": cfg.n_perms if cfg.null == "monte-carlo" else None,
        "seed": cfg.seed,
        "stratify": cfg.stratify,
        "center": cfg.center,
        "compat": cfg.compat,
        "n_boot": cfg.n_boot,
        "ci_level": cfg.ci_level,
        "ci_skipped": ci_skipped,
        "ci_method": {m: CI_METHODS[m] for m in CI_METRICS} if cfg.n_boot else None,
        "null_perms": cfg.null_perms,
        "null_skipped": null_skipped,
        "pivot": cfg.pivot,
        "standardize": cfg.standardize,
        "backend": backend,
        "records": record_dicts,
        "dominance": dominance,
        "corpus_quality": quality,
        "duplicate_prompts": {
            lang: [[run.ids[i] for i in g] for g in groups] for lang, groups in duplicates.items()
        },
        "matrices": language_matrices(record_dicts, langs, pools, sites),
        "matrix_orientation": (
            "matrices[metric][pool][site][i][j]: languages[i] as x against languages[j] as y; "
            "symmetric metrics fill both triangles, directed ones (p1, mrr, xsim_error, "
            "cohen_d_pc1) only the direction computed; the diagonal and pairs not compared "
            "(see pivot) are null"
        ),
    }


def _best_site_p(
    cells: Mapping[tuple[int, int, int], Sequence[_Rec]],
    site_nulls: Mapping[tuple[int, int, str], Mapping[str, np.ndarray]],
    sites: Sequence[str],
) -> None:
    """Set ``p_best_site`` on every record with a null: the share (add-one) of permutations in
    which the metric's maximum over all sites (the same permutation at every site) reaches
    the record's value. At the best site it corrects for having picked the best of many."""
    for (pi, qi, metric), by_site in site_nulls.items():
        stack = np.vstack([by_site[s] for s in sites if s in by_site])
        top = np.where(np.isnan(stack), -np.inf, stack).max(axis=0)
        top = top[np.isfinite(top)]
        for si, site in enumerate(sites):
            for rec in cells.get((pi, qi, si), ()):
                if rec.metric == metric and site in by_site and rec.value is not None:
                    rec.p_best_site = float(
                        (1 + np.count_nonzero(top >= rec.value)) / (top.size + 1)
                    )


def corpus_quality(run: Run, langs: Sequence[str]) -> dict[str, Any] | None:
    """The quality report of the run's corpus (:func:`xlalign.data.quality.check_corpus`) in
    ``langs``: from the run's saved corpus copy when it has one, else as the manifest recorded
    it at extraction (all of the run's languages); None for a run with neither."""
    from xlalign.data.corpus import load_corpus
    from xlalign.data.quality import check_corpus

    path = run.path / CORPUS_FILE
    if path.is_file():
        try:
            corpus = load_corpus(path, list(langs))
        except XlalignError:
            corpus = None
        if corpus is not None:
            source = str(run.manifest.get("corpus_source") or corpus.source)
            return check_corpus(dataclasses.replace(corpus, source=source)).to_json()
    recorded = run.manifest.get("corpus_quality")
    return recorded if isinstance(recorded, dict) else None


def language_matrices(
    records: Sequence[Mapping[str, Any]],
    langs: Sequence[str],
    pools: Sequence[str],
    sites: Sequence[str],
) -> dict[str, dict[str, dict[str, list[list[float | None]]]]]:
    """``{metric: {pool: {site: M}}}``, ``M`` the ``(L, L)`` nested list over ``langs``.

    ``M[i][j]`` is the record of the pair (``langs[i]`` as x, ``langs[j]`` as y); a symmetric
    metric (:data:`SYMMETRIC_METRICS`) fills ``M[j][i]`` too. ``p1_xy``/``p1_yx`` become one
    directed matrix ``p1`` (``p1[i][j]``: share of language-i sentences whose nearest
    language-j sentence is their translation). Entries never computed are None.
    """
    index = {lang: k for k, lang in enumerate(langs)}
    n = len(langs)
    out: dict[str, dict[str, dict[str, list[list[float | None]]]]] = {}
    for rec in records:
        x, y = index.get(rec["x"]), index.get(rec["y"])
        if x is None or y is None or rec["pool"] not in pools or rec["site"] not in sites:
            continue
        name, flip = _FOLDED.get(rec["metric"], (rec["metric"], False))
        per_pool = out.setdefault(name, {}).setdefault(rec["pool"], {})
        m = per_pool.setdefault(rec["site"], [[None] * n for _ in range(n)])
        i, j = (y, x) if flip else (x, y)
        m[i][j] = rec["value"]
        if name in SYMMETRIC_METRICS:
            m[j][i] = rec["value"]
    # sites in depth order within each pool, whatever order the records came in
    return {
        name: {pool: {s: per[s] for s in sites if s in per} for pool, per in by_pool.items()}
        for name, by_pool in out.items()
    }


class _LazySites(Mapping[str, tuple[np.ndarray, np.ndarray]]):
    """A read-only mapping site -> (x, y) that loads each site's arrays only when asked."""

    def __init__(self, run: Run, lx: str, ly: str, pool: str, sites: Sequence[str]) -> None:
        self.run, self.lx, self.ly, self.pool, self.sites = run, lx, ly, pool, list(sites)

    def __len__(self) -> int:
        return len(self.sites)

    def __iter__(self) -> Iterator[str]:
        return iter(self.sites)

    def __getitem__(self, site: str) -> tuple[np.ndarray, np.ndarray]:
        return self.run.array(self.lx, site, self.pool), self.run.array(self.ly, site, self.pool)


# ---------------------------------------------------------------------------------------------
# controls computed beside the sweep: the lexical baseline, dominant dimensions, standardizing


#: Why the lexical z is undefined when the two languages share no token.
NO_SHARED_TOKENS = (
    "no shared tokens: the two languages' texts share no token (special tokens aside), so "
    "every lexical cosine between them is 0 and the lexical baseline gives no alignment"
)


def lexical_records(
    run: Run,
    pairs: Sequence[tuple[str, str]],
    pools: Sequence[str],
    cfg: SweepConfig,
    strata: Sequence[Any] | None,
    *,
    skip_ci: str | None = None,
) -> list[_Rec]:
    """The lexical baseline's records: every metric of ``cfg`` on bag-of-token-id vectors.

    Scored by the same per-site path as the model (same metrics, null, seed and strata), once
    per language pair, and repeated under every pool so each pool's curve has its reference
    (the values do not depend on the pool). See :mod:`xlalign.data.lexical`.
    """
    from xlalign.data.lexical import MAX_ENTRIES, bag_of_ids, n_entries

    out: list[_Rec] = []
    for lx, ly in pairs:
        skip_why = None
        shared: int | None = None  # token ids the two languages have in common
        try:
            ids = [run.token_ids(lx), run.token_ids(ly)]
        except (OSError, XlalignError) as e:  # a run folder without its token files
            ids = [[np.zeros(0, np.int64)] * run.n_rows] * 2
            skip_why = f"lexical baseline skipped: the run's token ids cannot be read ({e})"
        n = len(ids[0])
        recs: list[_Rec] = []
        if skip_why is None and (size := n_entries(ids)) > MAX_ENTRIES:
            skip_why = (
                f"lexical baseline skipped: {size} bag-of-ids entries > {MAX_ENTRIES} "
                "(use a subsample)"
            )
        if skip_why is not None:
            names = ["z"] if "z" in cfg.metrics else []
            names += [nm for sel in cfg.metrics if sel != "z" for nm in METRICS[sel]]
            recs = [
                _Rec(LEXICAL_SITE, None, "", lx, ly, nm, None, n, undefined_reason=skip_why)
                for nm in names
            ]
        else:
            x, y = bag_of_ids(ids, [run.special_tokens_mask(lx), run.special_tokens_mask(ly)])
            shared = int(((x != 0).any(axis=0) & (y != 0).any(axis=0)).sum())
            base: dict[str, Any] = dict(site=LEXICAL_SITE, depth=None, pool="", x=lx, y=ly, n=n)
            if "z" in cfg.metrics:
                kw: dict[str, Any] = dict(
                    method=cfg.null, n_perms=cfg.n_perms, seed=cfg.seed, strata=strata,
                    center=cfg.center, products=STUDY_PRODUCTS,
                )  # fmt: skip
                z, z_why = _guard(functools.partial(matched_vs_scrambled_z, x, y, **kw))
                z_why = z_why if z is None else z.undefined_reason
                if shared == 0 and (z is None or _finite(z.z) is None):
                    z_why = NO_SHARED_TOKENS
                recs.append(
                    _Rec(
                        metric="z",
                        value=None if z is None else _finite(z.z),
                        undefined_reason=z_why,
                        detail={} if z is None else z.to_dict(),
                        **base,
                    )
                )
            for name, value, why, detail in _site_metrics(x, y, cfg, strata):
                recs.append(
                    _Rec(metric=name, value=value, undefined_reason=why, detail=detail, **base)
                )
            for rec in recs:
                if rec.value is not None and skip_ci is None:
                    rec.ci_low, rec.ci_high = _ci(rec.metric, rec.value, x, y, cfg)
        for pool in pools:
            for rec in recs:
                d = dict(rec.__dict__)
                d["pool"] = pool
                d["detail"] = {
                    **rec.detail,
                    "shared_tokens": shared,
                    "features": "bag of token ids (special tokens left out)",
                }
                out.append(_Rec(**d))
    return out


def dominance_records(
    run: Run, langs: Sequence[str], sites: Sequence[str], pools: Sequence[str]
) -> list[dict[str, Any]]:
    """One ``dominance`` record per site, pool and language, on the raw stored vectors.

    ``share`` is the share of the mean squared norm held by the largest dimension, ``top_dims``
    the indices of the three largest, ``flagged`` whether ``share`` exceeds
    :data:`~xlalign.metrics.dominance.DOMINANCE_WARN`. ``distinct`` counts the distinct
    vectors, ``largest_group`` the rows that share the commonest one, and ``identical`` flags a
    site where that group holds at least
    :data:`~xlalign.metrics.duplicates.IDENTICAL_SHARE` of the rows (prompts sharing the pooled
    token).
    """
    from xlalign.metrics.dominance import DOMINANCE_WARN
    from xlalign.metrics.duplicates import identical_groups

    out: list[dict[str, Any]] = []
    for site in sites:
        for pool in pools:
            for lang in langs:
                rec: dict[str, Any] = {
                    "site": site,
                    "depth": run.sites.index(site),
                    "pool": pool,
                    "lang": lang,
                }
                res, why = _guard(functools.partial(_dominance_of, run, lang, site, pool))
                if res is None:
                    rec.update(share=None, top_dims=[], top_shares=[], undefined_reason=why)
                else:
                    rec.update(
                        share=res.share, top_dims=res.top_dims, top_shares=res.top_shares,
                        undefined_reason=None if res.share is not None else "every vector is 0",
                    )  # fmt: skip
                rec["flagged"] = rec["share"] is not None and rec["share"] > DOMINANCE_WARN
                groups = identical_groups(run.array(lang, site, pool))
                rec.update(
                    distinct=groups.distinct,
                    largest_group=groups.largest_group,
                    identical=groups.identical,
                )
                out.append(rec)
    return out


def _dominance_of(run: Run, lang: str, site: str, pool: str) -> Any:
    from xlalign.metrics.dominance import dimension_dominance

    return dimension_dominance(run.array(lang, site, pool))


class StandardizedRun:
    """A read-only view of a run whose pooled vectors are z-scored per dimension.

    Each dimension's mean and std are taken over the pooled rows of every language in
    ``langs`` at that site and pool (for the usual two languages: over both, as in Timkey &
    van Schijndel 2021); every other attribute is the run's own.
    """

    def __init__(self, run: Run, langs: Sequence[str]) -> None:
        self._run, self._langs = run, list(langs)
        self._moments: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._run, name)

    def _stats(self, site: str, pool: str) -> tuple[np.ndarray, np.ndarray]:
        from xlalign.metrics.dominance import standardize_moments

        key = (site, pool)
        if key not in self._moments:
            arrays = [self._run.array(lang, site, pool) for lang in self._langs]
            self._moments[key] = standardize_moments(*arrays)
        return self._moments[key]

    def array(self, lang: str, site: str, pool: str, *, mmap: bool = True) -> np.ndarray:
        """``(n_rows, d_model)`` float64: the stored vectors, each dimension z-scored."""
        mu, scale = self._stats(site, pool)
        return (np.asarray(self._run.array(lang, site, pool), dtype=np.float64) - mu) / scale


def duplicate_prompts(run: Run, langs: Sequence[str]) -> dict[str, list[list[int]]]:
    """Per language, the groups of rows (two or more, in row order) whose prompts are the same
    token ids: the same input to the model. A run without token files gives none."""
    out: dict[str, list[list[int]]] = {}
    for lang in langs:
        try:
            ids = run.token_ids(lang)
        except (OSError, XlalignError):
            continue
        first: dict[bytes, int] = {}
        groups: dict[int, list[int]] = {}
        for i, t in enumerate(ids):
            key = np.asarray(t).tobytes()
            if key in first:
                groups.setdefault(first[key], [first[key]]).append(i)
            else:
                first[key] = i
        if groups:
            out[lang] = list(groups.values())
    return out


class DedupedRun:
    """A read-only view of a run in which rows with the same prompt (:func:`duplicate_prompts`)
    hold exactly the same vector: the first row's. Batching can leave two copies of one prompt
    a few 1e-6 apart (different padding, different kernels); retrieval counts ties as misses,
    and without this view whether the copy "wins" would depend on the batch size."""

    def __init__(self, run: Run, groups: Mapping[str, Sequence[Sequence[int]]]) -> None:
        self._run, self._groups = run, groups

    def __getattr__(self, name: str) -> Any:
        return getattr(self._run, name)

    def array(self, lang: str, site: str, pool: str, *, mmap: bool = True) -> np.ndarray:
        a = self._run.array(lang, site, pool)
        groups = self._groups.get(lang)
        if not groups:
            return a
        a = np.array(a, copy=True)
        for g in groups:
            a[list(g[1:])] = a[g[0]]
        return a


# ---------------------------------------------------------------------------------------------
# output


CSV_FIELDS = (
    "site",
    "depth",
    "pool",
    "x",
    "y",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "undefined_reason",
)


def write_alignment(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``alignment.json``, ``alignment.csv`` and ``alignment.png`` into ``out_dir``."""
    from xlalign.report.figures import alignment_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "alignment.json", "csv": out / "alignment.csv"}
    atomic_write_json(paths["json"], result)
    with atomic_file(paths["csv"]) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for rec in result["records"]:
            w.writerow({k: "" if rec.get(k) is None else rec[k] for k in CSV_FIELDS})
    pairs = [tuple(p) for p in result["pairs"]]
    if pairs:
        fig = alignment_figure(result, None, pairs[0])  # type: ignore[arg-type]
        paths["png"] = out / "alignment.png"
        with atomic_file(paths["png"]) as tmp:  # a full disk leaves no half file behind
            fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    return paths


def _pool_info(run: Run, pools: Sequence[str]) -> dict[str, str | None]:
    """What each pool is: the run's own description, today's for a run from an older xlalign."""
    stored = {} if run.pool_note is not None else dict(run.manifest.get("pool_info") or {})
    return {p: stored.get(p) or POOL_DESCRIPTIONS.get(p) for p in pools}


def format_table(result: dict[str, Any], max_pairs: int = 6) -> str:
    """A compact text table per language pair and pool: sites down, metrics across.

    Columns are as wide as the metric names; an undefined value shows as ``undef [k]``, with
    reason ``k`` listed under the table.
    """
    names = [n for sel in result["metrics"] for n in METRICS[sel]]
    widths = [max(12, len(n) + 2) for n in names]
    by_key: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in result["records"]:
        by_key[(r["x"], r["y"], r["pool"], r["site"], r["metric"])] = r
    lines: list[str] = []
    reasons: dict[str, int] = {}
    for lx, ly in [tuple(p) for p in result["pairs"]][:max_pairs]:
        for pool in result["pools"]:
            lines.append(f"{lx} vs {ly}, pool {pool} (null {result['null']})")
            lines.append(
                f"{'site':<8}" + "".join(f"{n:>{w}}" for n, w in zip(names, widths, strict=True))
            )
            for site in result["sites"]:
                cells = []
                for n, w in zip(names, widths, strict=True):
                    rec = by_key.get((lx, ly, pool, site, n))
                    v = None if rec is None else rec["value"]
                    if v is not None:
                        text = format(v, ".3f")
                    else:
                        why = "not computed" if rec is None else rec.get("undefined_reason")
                        k = reasons.setdefault(str(why or "no reason recorded"), len(reasons) + 1)
                        text = f"undef [{k}]"
                    cells.append(f"{text:>{w}}")
                lines.append(f"{site:<8}" + "".join(cells))
            lines.append("")
    if reasons:
        lines.append("undefined:")
        lines += [f"  [{k}] {why}" for why, k in reasons.items()]
    if len(result["pairs"]) > max_pairs:
        lines.append(f"... and {len(result['pairs']) - max_pairs} more pairs in alignment.json")
    return "\n".join(lines).rstrip()
