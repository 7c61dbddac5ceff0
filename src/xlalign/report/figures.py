"""The report's figures: alignment against depth, PCA scatters, a grouped similarity heatmap and
the language x language matrices of a many-language sweep.

Figures are built on :class:`matplotlib.figure.Figure` directly (no ``pyplot``), so making a
report touches no global plotting state and works with any backend the caller has chosen.
Each figure is saved as PNG and SVG by :func:`save_figure`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from xlalign.data.lexical import LEXICAL_SITE
from xlalign.store.files import atomic_file

#: Readable panel titles for the layer sweep's metrics; unknown metrics keep their own name.
METRIC_LABELS = {
    "z": "matched-vs-scrambled z",
    "p1_xy": "P@1 (x → y)",
    "p1_yx": "P@1 (y → x)",
    "mexa": "MEXA",
    "mrr": "MRR",
    "xsim_error": "xsim error rate",
    "cka": "linear CKA (biased)",
    "cka_unbiased": "linear CKA (debiased)",
    "mutual_knn": "mutual k-NN",
    "cknna": "CKNNA",
    "svcca": "SVCCA",
    "semantic_hub": "semantic hub",
    "cohen_d_pc1": "Cohen's d on PC1",
}

#: Metrics whose chance level is zero, drawn as a thin reference line.
_ZERO_BASELINE = frozenset({"z", "cohen_d_pc1", "cka_unbiased", "semantic_hub"})

#: At most this many language pairs get an alignment figure (one figure per pair).
MAX_PAIRS = 6

#: Language-matrix figures show at most this many sites (default: first, middle, last) ...
MAX_MATRIX_SITES = 3
#: ... for at most this many metrics (one figure each).
MAX_MATRIX_METRICS = 6
#: Above this many languages the matrix axes carry no language names (they would overlap).
MAX_MATRIX_LABELS = 40
#: Matrix names that are not record names (``p1`` folds ``p1_xy`` and ``p1_yx``).
MATRIX_LABELS = {"p1": "P@1 (row language → column language)"}

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
_PNG_DPI = 110


@dataclass(frozen=True, eq=False)
class PcaInput:
    """Pooled vectors of two languages at one site, for a PCA scatter.

    ``x`` and ``y`` are ``(n_pairs, d_model)`` with row ``i`` of each holding the same item;
    ``categories`` (length ``n_pairs``) sets the marker of each item.
    """

    x: np.ndarray
    y: np.ndarray
    lang_x: str
    lang_y: str
    categories: Sequence[Any] | None = None

    def __post_init__(self) -> None:
        _check_pair_arrays(self.x, self.y, self.categories, "PcaInput")


@dataclass(frozen=True, eq=False)
class HeatmapInput:
    """Pooled vectors of two languages at one site, for the pairs x pairs cosine heatmap.

    ``x`` and ``y`` are ``(n_pairs, d_model)``; rows and columns of the heatmap are grouped by
    ``categories`` (length ``n_pairs``) when given.
    """

    x: np.ndarray
    y: np.ndarray
    site: str
    pool: str
    lang_x: str
    lang_y: str
    categories: Sequence[Any] | None = None

    def __post_init__(self) -> None:
        _check_pair_arrays(self.x, self.y, self.categories, "HeatmapInput")


def _check_pair_arrays(
    x: np.ndarray, y: np.ndarray, categories: Sequence[Any] | None, what: str
) -> None:
    xs, ys = np.shape(x), np.shape(y)
    if len(xs) != 2 or xs != ys:
        raise ValueError(
            f"{what}: x and y must both be (n_pairs, d_model) with the same shape; "
            f"got x {xs} and y {ys}"
        )
    if categories is not None and len(categories) != xs[0]:
        raise ValueError(
            f"{what}: categories has {len(categories)} entries but x and y have {xs[0]} rows"
        )


# ---------------------------------------------------------------------------------------------
# Pure helpers (tested directly)
# ---------------------------------------------------------------------------------------------


def _category_key(value: Any) -> tuple[int, Any]:
    # Numbers sort numerically, everything else by its text, so mixed labels never fail to sort.
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return (0, float(value))
    return (1, str(value))


def category_order(
    categories: Sequence[Hashable],
) -> tuple[np.ndarray, list[int], list[Hashable]]:
    """Return ``(order, starts, labels)`` grouping items by category, stably.

    ``order`` (length ``n``) lists item indices with categories sorted (numbers numerically,
    then text) and items of one category in their original order; ``starts[k]`` is the
    position in ``order`` where group ``labels[k]`` begins.
    """
    labels = sorted(dict.fromkeys(categories), key=_category_key)
    rank = {label: k for k, label in enumerate(labels)}
    ranks = np.array([rank[c] for c in categories], dtype=np.int64)
    order = np.argsort(ranks, kind="stable")
    starts = [int(np.searchsorted(ranks[order], k, side="left")) for k in range(len(labels))]
    return order, starts, labels


def unit_rows(a: np.ndarray) -> np.ndarray:
    """Return ``a`` ``(n, d)`` as float64 with every non-zero row scaled to unit length."""
    a = np.asarray(a, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    # A zero row stays zero instead of turning into NaNs.
    return a / np.where(norms == 0.0, 1.0, norms)


def cosine_matrix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Return ``S`` ``(n, n)`` with ``S[i, j] = cos(x_i, y_j)`` in float64."""
    return unit_rows(x) @ unit_rows(y).T


def pca_2d(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(px, py, varexp)``: both languages projected on the top two principal axes.

    Rows are unit-normalised, both languages pooled into one ``(2n, d)`` cloud and centred,
    and the top two right singular vectors taken. ``px`` and ``py`` are ``(n, 2)``;
    ``varexp`` (length 2) is the fraction of the pooled cloud's variance on each axis. Axes
    past the data's rank come out as zeros.
    """
    n = len(x)
    pooled = np.concatenate([unit_rows(x), unit_rows(y)])
    pooled = pooled - pooled.mean(axis=0)
    _, s, vt = np.linalg.svd(pooled, full_matrices=False)
    k = min(2, vt.shape[0])
    coords = np.zeros((len(pooled), 2))
    coords[:, :k] = pooled @ vt[:k].T
    total = float(np.sum(s**2))
    varexp = np.zeros(2)
    if total > 0:
        varexp[:k] = s[:k] ** 2 / total
    return coords[:n], coords[n:], varexp


def alignment_pairs(alignment: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """Return the language pairs of an ``alignment.json`` document, in its order."""
    if not alignment:
        return []
    pairs = alignment.get("pairs")
    if pairs:
        return [(str(p[0]), str(p[1])) for p in pairs]
    seen = dict.fromkeys(
        (str(r.get("x")), str(r.get("y"))) for r in _records(alignment) if "x" in r and "y" in r
    )
    return list(seen)


def alignment_sites(*docs: Mapping[str, Any] | None) -> list[str]:
    """Return the sites of the documents ordered by depth (the first document's order wins)."""
    sites: dict[str, float] = {}
    for doc in docs:
        if not doc:
            continue
        depth = {
            str(r.get("site")): _as_float(r.get("depth"))
            for r in _records(doc)
            if r.get("site") != LEXICAL_SITE  # a reference line, not a depth
        }
        listed = doc.get("sites") or sorted(depth, key=lambda s: _nan_last(depth[s]))
        for site in listed:
            sites.setdefault(str(site), depth.get(str(site), math.nan))
    return list(sites)


def alignment_metrics(*docs: Mapping[str, Any] | None) -> list[str]:
    """Return the metrics present in the documents' records, known metrics first."""
    found: dict[str, None] = {}
    for doc in docs:
        for r in _records(doc):
            if r.get("metric") is not None:
                found.setdefault(str(r["metric"]), None)
    known = [m for m in METRIC_LABELS if m in found]
    return known + [m for m in found if m not in METRIC_LABELS]


def alignment_pools(*docs: Mapping[str, Any] | None) -> list[str]:
    """Return the pools of the documents (listed ones first, then any seen only in records)."""
    found: dict[str, None] = {}
    for doc in docs:
        if not doc:
            continue
        for p in doc.get("pools") or []:
            found.setdefault(str(p), None)
        for r in _records(doc):
            if r.get("pool") is not None:
                found.setdefault(str(r["pool"]), None)
    return list(found)


@dataclass(frozen=True, eq=False)
class Series:
    """One metric of one pool along the sites: ``value``, ``ci_low``, ``ci_high`` ``(n_sites,)``.

    Undefined or missing points are NaN (drawn as gaps); ``reasons`` holds the
    ``undefined_reason`` of each undefined point that gave one, by site.
    """

    value: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    reasons: dict[str, str]


def alignment_series(
    alignment: Mapping[str, Any] | None,
    sites: Sequence[str],
    pair: tuple[str, str],
    metric: str,
    pool: str,
) -> Series:
    """Return the :class:`Series` of ``metric`` for ``pool`` and ``pair`` along ``sites``."""
    index = {s: i for i, s in enumerate(sites)}
    value, lo, hi = (np.full(len(sites), np.nan) for _ in range(3))
    reasons: dict[str, str] = {}
    for r in _records(alignment):
        if (
            r.get("metric") != metric
            or r.get("pool") != pool
            or (r.get("x"), r.get("y")) != pair
            or r.get("site") not in index
        ):
            continue
        i = index[r["site"]]
        value[i] = _as_float(r.get("value"))
        lo[i] = _as_float(r.get("ci_low"))
        hi[i] = _as_float(r.get("ci_high"))
        if math.isnan(value[i]) and r.get("undefined_reason"):
            reasons[r["site"]] = str(r["undefined_reason"])
    return Series(value, lo, hi, reasons)


def lexical_value(
    alignment: Mapping[str, Any] | None, pair: tuple[str, str], metric: str, pool: str
) -> float | None:
    """The lexical baseline's value of ``metric`` for ``pair`` and ``pool`` (None if absent)."""
    for r in _records(alignment):
        if (
            r.get("site") == LEXICAL_SITE
            and r.get("metric") == metric
            and r.get("pool") == pool
            and (r.get("x"), r.get("y")) == pair
        ):
            v = _as_float(r.get("value"))
            return None if math.isnan(v) else v
    return None


def _records(doc: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    if not doc:
        return []
    return [r for r in doc.get("records") or [] if isinstance(r, Mapping)]


def _as_float(v: Any) -> float:
    if isinstance(v, bool) or v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _nan_last(v: float) -> tuple[int, float]:
    return (1, 0.0) if math.isnan(v) else (0, v)


def mpl_text(s: Any) -> str:
    """Return ``s`` as text matplotlib shows literally (``$`` would start mathtext)."""
    return str(s).replace("$", r"\$")


def _short(s: Any, limit: int = 28) -> str:
    # Long category names would squeeze the plot; the HTML tables keep them whole.
    text = str(s)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def safe_name(s: str) -> str:
    """Return ``s`` reduced to characters safe in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("._") or "x"


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def alignment_figure(
    alignment: Mapping[str, Any] | None,
    control: Mapping[str, Any] | None,
    pair: tuple[str, str],
) -> Figure:
    """Return the figure of every metric against depth for one language pair.

    One panel per metric; one solid line per pool with its confidence band, and the
    random-weights control as a dashed line of the same colour. Undefined values are gaps.
    """
    sites = alignment_sites(alignment, control)
    metrics = alignment_metrics(alignment, control)
    pools = alignment_pools(alignment, control)
    colours = {p: f"C{k % 10}" for k, p in enumerate(pools)}
    ncols = min(4, max(1, len(metrics)))
    nrows = max(1, math.ceil(len(metrics) / ncols))
    # Wide site axes (e.g. 37 sites of a 36-layer model) need wider panels to stay readable.
    panel_w = 3.6 if len(sites) <= 12 else 4.8
    fig = Figure(figsize=(panel_w * ncols, 2.9 * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    xs = np.arange(len(sites))
    has_lexical = False
    for k, metric in enumerate(metrics):
        ax = axes[k // ncols][k % ncols]
        drawn = False
        reasons: dict[str, str] = {}
        for pool in pools:
            main = alignment_series(alignment, sites, pair, metric, pool)
            reasons.update(main.reasons)
            band = np.isfinite(main.ci_low) & np.isfinite(main.ci_high)
            if band.any():
                ax.fill_between(
                    xs,
                    np.where(band, main.ci_low, 0.0),
                    np.where(band, main.ci_high, 0.0),
                    where=band,
                    color=colours[pool],
                    alpha=0.2,
                    linewidth=0,
                )
            if np.isfinite(main.value).any():
                ax.plot(xs, main.value, "-o", color=colours[pool], markersize=3, linewidth=1.5)
                drawn = True
            ctrl = alignment_series(control, sites, pair, metric, pool)
            if np.isfinite(ctrl.value).any():
                ax.plot(xs, ctrl.value, "--", color=colours[pool], linewidth=1.2, alpha=0.9)
                drawn = True
            lexical = lexical_value(alignment, pair, metric, pool)
            if lexical is not None:
                ax.axhline(lexical, color=colours[pool], linestyle=":", linewidth=1.2)
                has_lexical = drawn = True
        if metric in _ZERO_BASELINE:
            ax.axhline(0.0, color="0.6", linewidth=0.8, zorder=0)
        if not drawn:
            ax.set_yticks([])
            why = next(iter(reasons.values()), "no values")
            ax.text(
                0.5,
                0.5,
                mpl_text(f"undefined:\n{why}"),
                transform=ax.transAxes,
                ha="center",
                va="center",
                fontsize=8,
                color="0.4",
                wrap=True,
            )
        ax.set_title(mpl_text(METRIC_LABELS.get(metric, metric)), fontsize=10)
        ax.set_xticks(xs)
        small = len(sites) > 8
        ax.set_xticklabels(
            [mpl_text(s) for s in sites],
            rotation=90 if small else 0,
            fontsize=6 if len(sites) > 20 else 8,
        )
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(True, color="0.9", linewidth=0.6)
        ax.set_xlim(-0.5, len(sites) - 0.5)
    for k in range(len(metrics), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    handles = [Line2D([], [], color=colours[p], linestyle="-", marker="o", ms=3) for p in pools]
    labels = [mpl_text(f"{p} pool") for p in pools]
    if control:
        handles.append(Line2D([], [], color="0.3", linestyle="--"))
        labels.append("random-weights control")
    if has_lexical:
        handles.append(Line2D([], [], color="0.3", linestyle=":"))
        labels.append("lexical baseline (token ids)")
    if any(r.get("ci_low") is not None for r in _records(alignment)):
        handles.append(Line2D([], [], color="0.3", alpha=0.25, linewidth=8))
        labels.append("confidence band")
    fig.suptitle(mpl_text(f"Alignment against depth: {pair[0]} vs {pair[1]}"), fontsize=12)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 5))
    return fig


def pca_figure(pca: Mapping[str, PcaInput]) -> Figure:
    """Return one PCA scatter per site: colour by language, marker by category."""
    n = max(1, len(pca))
    fig = Figure(figsize=(4.4 * n, 4.8), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    lang_handles: dict[str, Line2D] = {}
    cat_handles: dict[str, Line2D] = {}
    for ax, (site, inp) in zip(axes, pca.items(), strict=False):
        px, py, varexp = pca_2d(inp.x, inp.y)
        cats = list(inp.categories) if inp.categories is not None else [None] * len(px)
        _, _, labels = category_order(cats)
        markers = {c: _MARKERS[k % len(_MARKERS)] for k, c in enumerate(labels)}
        for colour, lang, pts in (("C0", inp.lang_x, px), ("C3", inp.lang_y, py)):
            for c in labels:
                rows = np.array([cc == c for cc in cats])
                ax.scatter(
                    pts[rows, 0],
                    pts[rows, 1],
                    s=14,
                    marker=markers[c],
                    color=colour,
                    alpha=0.7,
                    linewidths=0,
                )
                if c is not None:
                    cat_handles.setdefault(
                        mpl_text(_short(c)),
                        Line2D([], [], color="0.35", marker=markers[c], linestyle="", ms=5),
                    )
            lang_handles.setdefault(
                mpl_text(lang), Line2D([], [], color=colour, marker="o", linestyle="", ms=6)
            )
        ax.set_title(mpl_text(site), fontsize=10)
        ax.set_xlabel(f"PC1 ({100 * varexp[0]:.1f}% of variance)", fontsize=8)
        ax.set_ylabel(f"PC2 ({100 * varexp[1]:.1f}%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, color="0.92", linewidth=0.6)
    fig.suptitle("PCA of both languages (rows unit-normalised, pooled, centred)", fontsize=11)
    handles = list(lang_handles.values()) + list(cat_handles.values())
    names = list(lang_handles) + [f"category {c}" for c in cat_handles]
    if handles:
        fig.legend(handles, names, loc="outside lower center", ncols=min(len(handles), 7))
    return fig


def heatmap_figure(heatmap: HeatmapInput) -> Figure:
    """Return the pairs x pairs cosine heatmap, rows and columns grouped by category."""
    sim = cosine_matrix(heatmap.x, heatmap.y)
    n = len(sim)
    starts: list[int] = []
    labels: list[Hashable] = []
    if heatmap.categories is not None:
        order, starts, labels = category_order(list(heatmap.categories))
        sim = sim[np.ix_(order, order)]
    diag = float(np.mean(np.diag(sim))) if n else math.nan
    off = float((sim.sum() - np.trace(sim)) / (n * n - n)) if n > 1 else math.nan
    fig = Figure(figsize=(7.6, 6.4), layout="constrained")
    ax = fig.add_subplot()
    # aspect="auto": the square matrix fills the axes, so the colour bar matches its height.
    im = ax.imshow(sim, cmap="viridis", interpolation="nearest", aspect="auto")
    fig.colorbar(im, ax=ax, label="cosine similarity")
    for b in starts[1:]:
        ax.axhline(b - 0.5, color="white", linewidth=1.0)
        ax.axvline(b - 0.5, color="white", linewidth=1.0)
    if labels:
        ends = [*starts[1:], n]
        centres = [(s + e - 1) / 2 for s, e in zip(starts, ends, strict=True)]
        names = [mpl_text(_short(c)) for c in labels]
        ax.set_xticks(centres, names, fontsize=8, rotation=45 if len(labels) > 6 else 0)
        ax.set_yticks(centres, names, fontsize=8)
        ax.set_xlabel(mpl_text(f"{heatmap.lang_y} items, grouped by category"), fontsize=9)
        ax.set_ylabel(mpl_text(f"{heatmap.lang_x} items, grouped by category"), fontsize=9)
    else:
        ax.set_xlabel(mpl_text(f"{heatmap.lang_y} item"), fontsize=9)
        ax.set_ylabel(mpl_text(f"{heatmap.lang_x} item"), fontsize=9)
    ax.set_title(
        mpl_text(
            f"Cosine similarity at {heatmap.site} ({heatmap.pool} pool)\n"
            f"mean matched (diagonal) {diag:.3f}, mean mismatched {off:.3f}"
        ),
        fontsize=10,
    )
    return fig


def matrix_metrics(alignment: Mapping[str, Any] | None) -> list[str]:
    """Return the metrics with language matrices in ``alignment``, known metrics first."""
    found = list((alignment or {}).get("matrices") or {})
    order = ["z", "p1", *METRIC_LABELS]
    known = [m for m in dict.fromkeys(order) if m in found]
    return known + [m for m in found if m not in known]


def matrix_sites(sites: Sequence[str], chosen: Sequence[str] | None = None) -> list[str]:
    """Return the sites to show: ``chosen`` (those present), else the first, middle and last."""
    if chosen:
        return [s for s in chosen if s in sites][:MAX_MATRIX_SITES]
    if len(sites) <= MAX_MATRIX_SITES:
        return list(sites)
    picks = [0, (len(sites) - 1) // 2, len(sites) - 1]
    return [sites[i] for i in dict.fromkeys(picks)]


def language_matrix(alignment: Mapping[str, Any], metric: str, pool: str, site: str) -> np.ndarray:
    """Return the ``(L, L)`` matrix of ``metric`` at ``site`` as floats, NaN where undefined."""
    langs = list(alignment.get("languages") or [])
    raw = (((alignment.get("matrices") or {}).get(metric) or {}).get(pool) or {}).get(site)
    out = np.full((len(langs), len(langs)), np.nan)
    if isinstance(raw, list):
        for i, row in enumerate(raw[: len(langs)]):
            for j, v in enumerate(list(row)[: len(langs)]):
                out[i, j] = _as_float(v)
    return out


def language_matrix_figure(
    alignment: Mapping[str, Any], metric: str, pool: str, sites: Sequence[str]
) -> Figure:
    """Return one heatmap per site of the ``(L, L)`` matrix of ``metric`` for ``pool``.

    Rows are the x language, columns the y language (for P@1: retrieval from row to column);
    cells never computed (the diagonal, pairs a pivot left out) are grey. Values are written
    in the cells when there are at most 12 languages.
    """
    langs = [str(lang) for lang in alignment.get("languages") or []]
    n = len(langs)
    mats = {site: language_matrix(alignment, metric, pool, site) for site in sites}
    finite = np.concatenate([m[np.isfinite(m)] for m in mats.values()] or [np.zeros(0)])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    side = min(6.0, max(3.2, 0.32 * n + 1.6))
    fig = Figure(figsize=(side * len(sites) + 1.2, side + 0.9), layout="constrained")
    axes = fig.subplots(1, max(1, len(sites)), squeeze=False)[0]
    cmap = _grey_bad("viridis")
    im = None
    for ax, site in zip(axes, sites, strict=False):
        m = mats[site]
        im = ax.imshow(
            np.ma.masked_invalid(m), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest"
        )
        ax.set_title(mpl_text(site), fontsize=10)
        if n <= MAX_MATRIX_LABELS:
            names = [mpl_text(_short(lang, 12)) for lang in langs]
            size = 8 if n <= 12 else 6
            ax.set_xticks(np.arange(n), names, fontsize=size, rotation=90 if n > 6 else 0)
            ax.set_yticks(np.arange(n), names, fontsize=size)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        if n <= 12:
            for (i, j), v in np.ndenumerate(m):
                if np.isfinite(v):
                    bright = (v - vmin) / (vmax - vmin) > 0.6
                    ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=7,
                            color="black" if bright else "white")  # fmt: skip
        ax.set_xlabel("y language", fontsize=8)
        ax.set_ylabel("x language", fontsize=8)
    label = MATRIX_LABELS.get(metric) or METRIC_LABELS.get(metric, metric)
    if im is not None:
        fig.colorbar(im, ax=list(axes), shrink=0.8, label=mpl_text(label))
    fig.suptitle(mpl_text(f"{label} between languages ({pool} pool)"), fontsize=11)
    return fig


def _grey_bad(name: str) -> Any:
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad="0.85")


def save_figure(fig: Figure, out_dir: Path, name: str) -> tuple[Path, Path]:
    """Return the ``(png, svg)`` paths ``fig_<name>`` that ``fig`` was saved to in ``out_dir``."""
    png = out_dir / f"fig_{name}.png"
    svg = out_dir / f"fig_{name}.svg"
    # No software or date stamps, so a re-run gives the same PNG bytes.
    with atomic_file(png) as tmp:  # a full disk leaves no half figure, no temporary file
        fig.savefig(tmp, format="png", dpi=_PNG_DPI, metadata={"Software": None})
    with atomic_file(svg) as tmp:
        fig.savefig(tmp, format="svg", metadata={"Date": None})
    return png, svg
