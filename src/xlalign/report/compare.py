"""The comparison's report: curves on relative depth, model-to-model heatmaps, findings.

:func:`build_compare_report` renders a parsed ``compare.json`` (see
:mod:`xlalign.studies.compare`) into ``report.html`` (self-contained) and ``report.md`` in one
folder, with the same document model and figure helpers as the study's report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from xlalign.report.figures import METRIC_LABELS, mpl_text, safe_name, save_figure
from xlalign.report.render import flatten, fmt_value
from xlalign.report.template import (
    Block,
    Bullets,
    Cell,
    Details,
    Heading,
    Image,
    Para,
    Table,
    to_html,
    to_markdown,
)
from xlalign.store.files import atomic_write_text

#: At most this many (pair, pool) curve figures and (a, b, lang, pool) heatmap figures.
MAX_FIGURES = 12
_SIM_LABELS = {"cka": "linear CKA", "mutual_knn": "mutual k-NN"}


def _records(doc: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    return [r for r in doc.get(key) or [] if isinstance(r, Mapping)]


def _num(v: Any) -> float:
    if v is None or isinstance(v, bool):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _labels(doc: Mapping[str, Any]) -> list[str]:
    return [str(r.get("label")) for r in _records(doc, "runs")]


# ---------------------------------------------------------------------------------------------
# figures


def curves_figure(doc: Mapping[str, Any], pair: tuple[str, str], pool: str) -> Figure:
    """Every metric against relative depth for one language pair and pool, one colour per run.

    Solid: the model (with its confidence band); dashed: its random-weights control; dotted
    horizontal: its lexical baseline, where the sweep has one.
    """
    curves = [
        r
        for r in _records(doc, "curves")
        if tuple(r.get("pair") or ()) == pair and r.get("pool") == pool
    ]
    metrics = list(dict.fromkeys(str(r.get("metric")) for r in curves))
    metrics = [m for m in METRIC_LABELS if m in metrics] + [
        m for m in metrics if m not in METRIC_LABELS
    ]
    labels = _labels(doc)
    colours = {lab: f"C{k % 10}" for k, lab in enumerate(labels)}
    ncols = min(4, max(1, len(metrics)))
    nrows = max(1, math.ceil(len(metrics) / ncols))
    fig = Figure(figsize=(3.8 * ncols, 2.9 * nrows + 1.0), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, metric in enumerate(metrics):
        ax = axes[k // ncols][k % ncols]
        for lab in labels:
            for kind, style in (("model", "-o"), ("control", "--")):
                pts = sorted(
                    (
                        (_num(r.get("relative_depth")), _num(r.get("value")),
                         _num(r.get("ci_low")), _num(r.get("ci_high")))
                        for r in curves
                        if r.get("label") == lab and r.get("kind") == kind
                        and r.get("metric") == metric and r.get("relative_depth") is not None
                    ),
                    key=lambda p: p[0],
                )  # fmt: skip
                if not pts:
                    continue
                arr = np.array(pts, dtype=float)
                if kind == "model":
                    band = np.isfinite(arr[:, 2]) & np.isfinite(arr[:, 3])
                    if band.any():
                        ax.fill_between(arr[band, 0], arr[band, 2], arr[band, 3],
                                        color=colours[lab], alpha=0.18, linewidth=0)  # fmt: skip
                ax.plot(arr[:, 0], arr[:, 1], style, color=colours[lab], markersize=3,
                        linewidth=1.5 if kind == "model" else 1.1)  # fmt: skip
            for r in curves:
                if (
                    r.get("label") == lab
                    and r.get("kind") == "lexical"
                    and r.get("metric") == metric
                ):
                    v = _num(r.get("value"))
                    if math.isfinite(v):
                        ax.axhline(v, color=colours[lab], linestyle=":", linewidth=1.0)
        ax.set_title(mpl_text(METRIC_LABELS.get(metric, metric)), fontsize=10)
        ax.set_xlim(-0.03, 1.03)
        ax.set_xlabel("relative depth (embed 0, last block 1)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(True, color="0.9", linewidth=0.6)
    for k in range(len(metrics), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    handles: list[Line2D] = [Line2D([], [], color=colours[lab], marker="o", ms=3) for lab in labels]
    names = [mpl_text(lab) for lab in labels]
    handles += [
        Line2D([], [], color="0.3", linestyle="--"),
        Line2D([], [], color="0.3", linestyle=":"),
    ]
    names += ["random-weights control", "lexical baseline"]
    fig.legend(handles, names, loc="outside lower center", ncols=min(len(handles), 5))
    fig.suptitle(
        mpl_text(f"{pair[0]} vs {pair[1]}, {pool} pool, against relative depth"), fontsize=12
    )
    return fig


def similarity_matrix(
    doc: Mapping[str, Any], a: str, b: str, lang: str, pool: str, metric: str
) -> tuple[np.ndarray, list[str], list[str]]:
    """``(M, sites_a, sites_b)``: the ``similarity`` records of one cell set as a matrix."""
    recs = [
        r
        for r in _records(doc, "similarity")
        if (r.get("a"), r.get("b"), r.get("lang"), r.get("pool"), r.get("metric"))
        == (a, b, lang, pool, metric)
    ]
    sa = list(dict.fromkeys(str(r.get("site_a")) for r in recs))
    sb = list(dict.fromkeys(str(r.get("site_b")) for r in recs))
    m = np.full((len(sa), len(sb)), np.nan)
    ia, ib = {s: i for i, s in enumerate(sa)}, {s: j for j, s in enumerate(sb)}
    for r in recs:
        m[ia[str(r["site_a"])], ib[str(r["site_b"])]] = _num(r.get("value"))
    return m, sa, sb


def similarity_figure(doc: Mapping[str, Any], a: str, b: str, lang: str, pool: str) -> Figure:
    """Heatmaps of linear CKA and mutual k-NN between every site of ``a`` and of ``b``."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad="0.85")
    fig = Figure(figsize=(11.0, 5.2), layout="constrained")
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, metric in zip(axes, ("cka", "mutual_knn"), strict=True):
        m, sa, sb = similarity_matrix(doc, a, b, lang, pool, metric)
        im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto",
                       interpolation="nearest")  # fmt: skip
        fig.colorbar(im, ax=ax, shrink=0.85)
        step_a = max(1, len(sa) // 20)
        step_b = max(1, len(sb) // 20)
        ax.set_yticks(range(0, len(sa), step_a), [mpl_text(s) for s in sa[::step_a]], fontsize=7)
        ax.set_xticks(range(0, len(sb), step_b), [mpl_text(s) for s in sb[::step_b]], fontsize=7,
                      rotation=90)  # fmt: skip
        ax.set_ylabel(mpl_text(f"{a} site"), fontsize=8)
        ax.set_xlabel(mpl_text(f"{b} site"), fontsize=8)
        ax.set_title(mpl_text(_SIM_LABELS[metric]), fontsize=10)
    fig.suptitle(mpl_text(f"{a} vs {b}: {lang} prompts, {pool} pool"), fontsize=11)
    return fig


# ---------------------------------------------------------------------------------------------
# sections


def build_compare_report(out_dir: Path, doc: Mapping[str, Any]) -> dict[str, Path]:
    """Return the paths written: ``"html"``, ``"md"`` and each figure's name -> its PNG."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path] = {}
    labels = _labels(doc)
    title = "xlalign compare: " + " vs ".join(labels)
    summary = [str(doc.get("headline") or "")] + [str(s) for s in doc.get("summary") or []]
    sections = [
        ("findings", "Findings", _findings_section(doc)),
        ("curves", "Curves on relative depth", _curves_section(out_dir, doc, figures)),
        ("similarity", "Model-to-model similarity", _similarity_section(out_dir, doc, figures)),
        ("corpus", "Corpus", _corpus_section(doc)),
        ("runs", "Runs", _runs_section(doc)),
    ]
    blocks: list[Block] = []
    nav = [("summary", "Summary")]
    warnings = [str(w) for w in doc.get("warnings") or []]
    if warnings:
        blocks += [Heading(2, "Warnings", "warnings"), Bullets(warnings)]
        nav.append(("warnings", "Warnings"))
    for anchor, label, section in sections:
        nav.append((anchor, label))
        blocks.append(Heading(2, label, anchor))
        blocks += section
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    atomic_write_text(html_path, to_html(title, blocks, summary, nav))
    atomic_write_text(md_path, to_markdown(title, blocks, summary))
    return {"html": html_path, "md": md_path, **figures}


def _point(d: Any) -> str:
    if isinstance(d, Mapping) and d.get("no_shared_tokens") and d.get("value") is None:
        return "no shared tokens"
    if not isinstance(d, Mapping) or d.get("value") is None:
        return "none"
    lo, hi = d.get("ci_low"), d.get("ci_high")
    ci = f" [{fmt_value(lo, 3)}, {fmt_value(hi, 3)}]" if lo is not None and hi is not None else ""
    return f"{fmt_value(d.get('value'), 3)}{ci}"


def _findings_section(doc: Mapping[str, Any]) -> list[Block]:
    findings = _records(doc, "findings")
    if not findings:
        return [Para("No findings: the sweeps hold none of z, P@1 or CKA with a value.")]
    blocks: list[Block] = [
        Para(
            "For each run, language pair, pool and metric: the site where the model gains most "
            "over its random-weights control, with both values and their confidence intervals, "
            "the lexical baseline where the sweep has one, and the verdict (beyond-control: the "
            "model's interval lies above the control's and the lexical baseline's)."
        ),
        Bullets([str(r.get("statement")) for r in _records(doc, "ranking")]),
    ]
    rows: list[list[str | Cell]] = []
    for f in findings:
        pair = f.get("pair") or ["?", "?"]
        rows.append(
            [
                str(f.get("label")), f"{pair[0]}/{pair[1]}", str(f.get("pool")),
                METRIC_LABELS.get(str(f.get("metric")), str(f.get("metric"))),
                str(f.get("site")), fmt_value(f.get("relative_depth"), 3),
                _point(f.get("model")), _point(f.get("control")), _point(f.get("lexical")),
                fmt_value(f.get("gain_over_control"), 3), str(f.get("verdict")),
            ]
        )  # fmt: skip
    blocks.append(
        Table(
            [
                "run",
                "pair",
                "pool",
                "metric",
                "site",
                "rel. depth",
                "model [CI]",
                "control [CI]",
                "lexical [CI]",
                "gain",
                "verdict",
            ],
            rows,
        )
    )
    return blocks


def _curves_section(out_dir: Path, doc: Mapping[str, Any], figures: dict[str, Path]) -> list[Block]:
    curves = _records(doc, "curves")
    keys = list(dict.fromkeys((tuple(r.get("pair") or ()), str(r.get("pool"))) for r in curves))
    if not keys:
        return [Para("No sweep records: nothing to draw.")]
    blocks: list[Block] = [
        Para(
            "Each panel is one metric of the layer sweep against relative depth: the embedding "
            "at 0, block i of n at (i + 1)/n, so every model's last block sits at 1 and models "
            "of different depth share one axis. One colour per run; solid: the model with its "
            "confidence band; dashed: its random-weights control; dotted: its lexical baseline."
        )
    ]
    if len(keys) > MAX_FIGURES:
        blocks.append(Para(f"Showing the first {MAX_FIGURES} of {len(keys)} figures.", note=True))
    for pair, pool in keys[:MAX_FIGURES]:
        p = (str(pair[0]), str(pair[1]))
        name = f"curves_{safe_name(f'{p[0]}-{p[1]}_{pool}')}"
        png, _ = save_figure(curves_figure(doc, p, pool), out_dir, name)
        figures[name] = png
        blocks.append(
            Image(png, f"Curves, {p[0]} vs {p[1]}, {pool} pool", f"{p[0]} vs {p[1]}, {pool} pool.")
        )
    return blocks


def _similarity_section(
    out_dir: Path, doc: Mapping[str, Any], figures: dict[str, Path]
) -> list[Block]:
    recs = _records(doc, "similarity")
    keys = list(
        dict.fromkeys(
            (str(r.get("a")), str(r.get("b")), str(r.get("lang")), str(r.get("pool"))) for r in recs
        )
    )
    if not keys:
        return [Para("No model-to-model similarity was computed.")]
    settings = doc.get("settings") or {}
    blocks: list[Block] = [
        Para(
            "Linear CKA and mutual k-NN (k = "
            f"{fmt_value(settings.get('k'))}) between every site of one model (rows) and every "
            "site of the other (columns), on the same prompts of one language. A model compared "
            "with itself gives 1 on the diagonal. CKA's permutation null (the same row "
            f"permutations for every cell, {fmt_value(settings.get('n_perms'))} of them) gives a "
            "p-value per cell in compare.json where it was cheap to compute."
        )
    ]
    if len(keys) > MAX_FIGURES:
        blocks.append(Para(f"Showing the first {MAX_FIGURES} of {len(keys)} figures.", note=True))
    for a, b, lang, pool in keys[:MAX_FIGURES]:
        name = f"similarity_{safe_name(f'{a}_{b}_{lang}_{pool}')}"
        png, _ = save_figure(similarity_figure(doc, a, b, lang, pool), out_dir, name)
        figures[name] = png
        blocks.append(
            Image(png, f"{a} vs {b}, {lang}, {pool}", _similarity_caption(recs, a, b, lang, pool))
        )
        blocks.append(
            Details(
                f"Values ({a} vs {b}, {lang}, {pool} pool)",
                _similarity_tables(doc, a, b, lang, pool),
            )
        )
    return blocks


def _similarity_caption(
    recs: Sequence[Mapping[str, Any]], a: str, b: str, lang: str, pool: str
) -> str:
    cka = [
        r for r in recs
        if (r.get("a"), r.get("b"), r.get("lang"), r.get("pool"), r.get("metric"))
        == (a, b, lang, pool, "cka") and r.get("value") is not None
    ]  # fmt: skip
    clean = [r for r in cka if not r.get("artifact")]
    left_out = len(cka) - len(clean)
    note = (
        f" {left_out} cells with a site of largely identical vectors (prompts sharing the "
        "pooled token) are left out of this summary; their CKA measures the shared tokens."
        if left_out
        else ""
    )
    below = [r for r in clean if r.get("above_token_label") is False]
    genuine = [r for r in clean if r.get("above_token_label") is not False]
    if below and genuine:
        clean = genuine
        note += (
            f" {len(below)} cells whose CKA does not exceed both models' token-label baselines "
            "(CKA of each site with the one-hot of the prompt's last token) are left out too: "
            "there the two models agree on which token ends the prompt, and little more."
        )
    elif below:
        note += (
            " No cell exceeds both models' token-label baselines (CKA of each site with the "
            "one-hot of the prompt's last token): the two models agree on which token ends "
            "the prompt, and the CKA says little more."
        )
    if not clean:
        return f"{a} vs {b} on {lang} prompts, {pool} pool.{note}"
    best = max(clean, key=lambda r: float(r["value"]))
    text = (
        f"{a} vs {b} on {lang} prompts, {pool} pool; highest CKA {fmt_value(best['value'], 3)} "
        f"between {a} {best['site_a']} and {b} {best['site_b']}"
    )
    if best.get("null_mean") is not None:
        text += f" (null mean {fmt_value(best['null_mean'], 3)}, p = {fmt_value(best.get('p_value'), 3)})"
    if best.get("token_label_a") is not None and best.get("token_label_b") is not None:
        text += (
            f"; token-label baselines {fmt_value(best['token_label_a'], 3)} ({a}) and "
            f"{fmt_value(best['token_label_b'], 3)} ({b})"
        )
    return text + "." + note


def _similarity_tables(doc: Mapping[str, Any], a: str, b: str, lang: str, pool: str) -> list[Block]:
    out: list[Block] = []
    for metric in ("cka", "mutual_knn"):
        m, sa, sb = similarity_matrix(doc, a, b, lang, pool, metric)
        rows: list[list[str | Cell]] = [
            [s, *(Cell(fmt_value(float(v), 3)) if np.isfinite(v) else Cell("undefined", undefined=True)
                  for v in m[i])]
            for i, s in enumerate(sa)
        ]  # fmt: skip
        out.append(Table([f"{a} \\ {b}", *sb], rows, caption=_SIM_LABELS[metric]))
    return out


def _corpus_section(doc: Mapping[str, Any]) -> list[Block]:
    c = doc.get("corpus") or {}
    items = [
        f"shared rows: {fmt_value(c.get('n_rows'))} ({c.get('shared')})",
        "rows per run: " + fmt_value(c.get("n_rows_per_run")),
        "languages: " + ", ".join(str(x) for x in c.get("languages") or []),
    ]
    if c.get("note"):
        items.append(str(c["note"]))
    return [Bullets(items)]


def _runs_section(doc: Mapping[str, Any]) -> list[Block]:
    rows: list[list[str | Cell]] = []
    for r in _records(doc, "runs"):
        rows.append(
            [str(r.get("label")), str(r.get("model")), str(r.get("architecture")),
             fmt_value(r.get("n_layers")), fmt_value(r.get("d_model")),
             str(r.get("control") or "none"), str(r.get("sweep")), str(r.get("path"))]
        )  # fmt: skip
    settings = doc.get("settings") or {}
    flat = [[k, fmt_value(v)] for k, v in flatten(settings)]
    return [
        Table(
            ["label", "model", "architecture", "layers", "width", "control", "sweep", "folder"],
            rows,
        ),
        Table(["setting", "value"], flat, caption="Settings"),  # type: ignore[arg-type]
    ]
