"""The study's report: figures saved beside ``report.html`` (self-contained) and ``report.md``.

:func:`build_report` takes already-computed results (the parsed ``alignment.json`` and
``origin.json``, pooled vectors for the PCA and heatmap figures, provenance) and writes
everything into one folder. It reads no run folder itself, so it can be tested, and reused,
with any inputs. Every part is optional: a missing document or key is reported as
"undefined" (with the reason when the results give one), never a crash.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xlalign.data.tokens import TOKEN_CLASSES
from xlalign.report.figures import (
    MATRIX_LABELS,
    MAX_MATRIX_METRICS,
    MAX_PAIRS,
    METRIC_LABELS,
    HeatmapInput,
    PcaInput,
    alignment_figure,
    alignment_metrics,
    alignment_pairs,
    alignment_pools,
    alignment_series,
    alignment_sites,
    heatmap_figure,
    language_matrix_figure,
    lexical_value,
    matrix_metrics,
    matrix_sites,
    pca_figure,
    safe_name,
    save_figure,
)
from xlalign.report.lens import lens_section
from xlalign.report.neurons import neurons_section
from xlalign.report.steer import steer_section
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

#: The keys the original study's script computed, with what each measures.
SEED_KEYS: dict[str, str] = {
    "z_raw_embed_last_token": "z of the last token's raw input embedding (before any block)",
    "z_raw_embed_mean_no_bos": "z of the mean input embedding, BOS left out only if one is added",
    "z_l0_output_last_token": "z of the last token at the first block's output",
    "z_l0_cached": "z at the first block from the study's earlier all-layers cache",
    "delta_l0_minus_embed": "first-block z minus raw-embedding z (last token)",
    "embedding_pca_varexp": "variance fraction of the first 10 principal axes of the embeddings",
    "embedding_cohen_d_pc0": "Cohen's d between the languages on the embeddings' first axis",
    "norm_ratio_l0_over_embed": "mean norm at the first block's output over the embedding's",
    "z_pca_2": "z of the embeddings projected on their top 2 principal axes",
    "z_pca_5": "z of the embeddings projected on their top 5 principal axes",
    "z_pca_10": "z of the embeddings projected on their top 10 principal axes",
}

_DECOMPOSITION_COLUMNS: dict[str, str] = {
    "z_mean_full": "mean pool over all tokens",
    "z_mean_shared": "mean pool over tokens both languages share",
    "z_mean_nonshared": "mean pool over tokens of one language only",
    "z_last": "last token",
    "z_last_nonidentical": "last token, pairs whose last tokens differ",
    "z_stratified": "last token, null permuting only within a category",
}

UNDEFINED = "undefined"


@dataclass(frozen=True, eq=False)
class ReportInputs:
    """Everything a report shows; any part may be missing.

    ``alignment`` and ``control_alignment`` are parsed ``alignment.json`` documents (the model
    and its random-weights control); ``origin`` is the parsed ``origin.json``; ``pca`` maps a
    site label to the vectors of its PCA scatter; ``provenance`` is a nested dict shown as a
    flat table; ``summary_lines`` open the report. ``matrix_sites`` picks the sites of the
    language x language heatmaps (default: first, middle and last; at most three), shown when
    ``alignment`` holds ``matrices`` for three or more languages.
    """

    title: str
    alignment: Mapping[str, Any] | None = None
    control_alignment: Mapping[str, Any] | None = None
    origin: Mapping[str, Any] | None = None
    pca: Mapping[str, PcaInput] = field(default_factory=dict)
    heatmap: HeatmapInput | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)
    summary_lines: Sequence[str] = field(default_factory=list)
    matrix_sites: Sequence[str] | None = None
    findings: Mapping[str, Any] | None = None
    #: parsed ``lens.json`` (logit lens by language, control summaries under ``control``)
    lens: Mapping[str, Any] | None = None
    #: parsed ``neurons.json`` (language-specific neurons and their ablation)
    neurons: Mapping[str, Any] | None = None
    #: parsed ``steer.json`` (DiffMean steering of the output language and its control)
    steer: Mapping[str, Any] | None = None


def build_report(out_dir: Path, inputs: ReportInputs) -> dict[str, Path]:
    """Return the paths written: ``"html"``, ``"md"`` and each figure's name -> its PNG.

    Writes ``report.html`` (self-contained: inline CSS, figures as PNG data URIs, no scripts
    or external links), ``report.md`` (figures by relative path) and every figure as
    ``fig_<name>.png`` and ``fig_<name>.svg`` into ``out_dir``. Figure names: ``alignment``
    (one language pair) or ``alignment_<x>-<y>`` (several pairs, the first
    :data:`MAX_PAIRS`), ``pca`` and ``heatmap``, each only when its inputs are given, and
    ``languages_<metric>`` per metric with language matrices (three or more languages).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path] = {}

    blocks: list[Block] = []
    nav: list[tuple[str, str]] = []
    if inputs.summary_lines:
        nav.append(("summary", "Summary"))
    sections = [
        ("findings", "Findings and their controls", _findings_section(inputs.findings)),
        ("alignment", "Alignment against depth", _alignment_section(out_dir, inputs, figures)),
        ("languages", "Language x language", _matrix_section(out_dir, inputs, figures)),
        ("pca", "PCA scatter", _pca_section(out_dir, inputs, figures)),
        ("heatmap", "Similarity heatmap", _heatmap_section(out_dir, inputs, figures)),
        ("origin", "Origin findings", _origin_section(inputs.origin)),
        ("lens", "Latent language (logit lens)", lens_section(out_dir, inputs.lens, figures)),
        (
            "neurons",
            "Language-specific neurons",
            neurons_section(out_dir, inputs.neurons, figures),
        ),
        ("steer", "Steering the output language", steer_section(out_dir, inputs.steer, figures)),
        ("provenance", "Provenance", _provenance_section(inputs.provenance)),
    ]
    for anchor, label, section in sections:
        if not section:  # only the language matrices are left out when there are none
            continue
        nav.append((anchor, label))
        blocks.append(Heading(2, label, anchor))
        blocks += section

    html_path = out_dir / "report.html"
    md_path = out_dir / "report.md"
    atomic_write_text(html_path, to_html(inputs.title, blocks, inputs.summary_lines, nav))
    atomic_write_text(md_path, to_markdown(inputs.title, blocks, inputs.summary_lines))
    return {"html": html_path, "md": md_path, **figures}


# ---------------------------------------------------------------------------------------------
# Value formatting
# ---------------------------------------------------------------------------------------------


def fmt_value(v: Any, digits: int = 4) -> str:
    """Return ``v`` as short text: numbers to ``digits`` significant digits, None as undefined."""
    if v is None:
        return UNDEFINED
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "NaN" if math.isnan(v) else f"{float(v):.{digits}g}"
    if isinstance(v, Mapping):
        return ", ".join(f"{k}: {fmt_value(x, digits)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt_value(x, digits) for x in v)
    return str(v)


def _value_cell(v: Any, reason: str | None, *, inline_reason: bool = True) -> Cell:
    if v is None:
        why = reason or "no reason recorded"
        text = f"{UNDEFINED}: {why}" if inline_reason else UNDEFINED
        return Cell(text, title=why, undefined=True)
    return Cell(fmt_value(v))


def _get(doc: Any, *keys: str) -> Any:
    # Walks nested mappings; anything missing or of the wrong shape reads as None.
    for k in keys:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(k)
    return doc


def flatten(d: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yield ``(dotted.key, value)`` for every leaf of a nested mapping (lists of dicts too)."""
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            yield from flatten(v, f"{key}.")
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, Mapping) for x in v):
            for i, x in enumerate(v):
                yield from flatten(x, f"{key}.{i}.")
        else:
            yield key, v


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


def finding_notes(f: Mapping[str, Any]) -> list[str]:
    """The artifact marks of a finding in ``findings.json``, in words (the console summary,
    the report and the demo's answer alike)."""
    notes = []
    if f.get("dominated"):
        std = f["dominated"].get("standardized")
        notes.append(
            "one dimension dominates"
            + (f", standardized {fmt_value(std)}" if std is not None else "")
        )
    if f.get("influential"):
        inf = f["influential"]
        notes.append(f"rests on {inf['k']} of {inf['of']} pairs")
    if f.get("artifact"):
        notes.append(str(f["artifact"]))
    return notes


def _best_cell(d: Any) -> Cell:
    cell = _ci_cell(d)
    if isinstance(d, Mapping) and d.get("value") is not None and d.get("site"):
        p = d.get("p_best_site")
        p_text = (
            ""
            if p is None
            else f" (p best site {p:.3f})"
            if p < 0.01
            else f" (p best site {p:.2f})"
        )
        return Cell(f"{cell.text} at {d['site']}{p_text}")
    return cell


def _counts_cell(d: Any) -> Cell:
    if not isinstance(d, Mapping) or not d.get("compared"):
        return Cell("none", title="no control", undefined=True)
    text = f"above at {d['above']}, below at {d['below']} of {d['compared']}"
    title = f"above: {d.get('above_sites') or 'none'}; below: {d.get('below_sites') or 'none'}"
    return Cell(text, title=title)


def _ci_cell(d: Any) -> Cell:
    if isinstance(d, Mapping) and d.get("no_shared_tokens") and d.get("value") is None:
        return Cell("no shared tokens", title="the lexical baseline gives no alignment")
    if not isinstance(d, Mapping) or d.get("value") is None:
        return Cell("none", title="not available", undefined=True)
    text = fmt_value(d["value"])
    if d.get("ci_low") is not None and d.get("ci_high") is not None:
        text += f" [{fmt_value(d['ci_low'])}, {fmt_value(d['ci_high'])}]"
    return Cell(text)


def _p_cell(p: Any, n_sites: Any) -> str | Cell:
    """``0.001 (of 26)``: the best site's p against the best of all sites of scrambled pairs."""
    if p is None:
        return Cell(
            "none",
            title="no permutation null for this metric (see the warnings)",
            undefined=True,
        )
    text = f"{float(p):.3f}" if float(p) < 0.01 else f"{float(p):.2f}"
    return f"{text} (of {n_sites} sites)" if n_sites else text


def _findings_section(findings: Mapping[str, Any] | None) -> list[Block]:
    """The first section: made from ``findings.json`` alone (headline, verdicts, warnings)."""
    if not findings:
        return []
    blocks: list[Block] = [Para(str(findings.get("headline", "")))]
    rows: list[list[str | Cell]] = []
    for f in findings.get("findings") or []:
        if not isinstance(f, Mapping):
            continue
        gain = f.get("largest_gain")
        rows.append(
            [
                "/".join(str(p) for p in f.get("pair") or []),
                str(f.get("pool")),
                METRIC_LABELS.get(str(f.get("metric")), str(f.get("metric"))),
                str(f.get("site")),
                _ci_cell(f.get("model")),
                _p_cell((f.get("model") or {}).get("p_best_site"), f.get("n_sites")),
                _ci_cell(f.get("control")),
                _best_cell(f.get("control_best")),
                _counts_cell(f.get("sites_vs_control")),
                _ci_cell(f.get("lexical")),
                _ci_cell(f.get("stratified")),
                str(f.get("verdict")),
                f"{gain['site']} ({'+' if gain['gain'] >= 0 else ''}{fmt_value(gain['gain'])})"
                if isinstance(gain, Mapping)
                else Cell("none", undefined=True),
                "; ".join(finding_notes(f)),
            ]
        )
    if rows:
        blocks.append(
            Table(
                [
                    "pair",
                    "pool",
                    "metric",
                    "best site",
                    "model [CI]",
                    "p best site",
                    "control at that site",
                    "control's best site",
                    "model vs control, site by site",
                    "lexical baseline",
                    "within-category null",
                    "verdict",
                    "largest gain over control",
                    "artifacts",
                ],
                rows,
                caption="Each metric at the model's best site, beside its controls",
            )
        )
    blocks.append(
        Para(
            "Verdicts: beyond-control when the model's best site beats the best site of "
            "scrambled pairings (p best site at most 0.05: the share of the scrambled "
            "pairings of the sweep's permutation null whose best site reaches the model's) and its interval lies above both the "
            "random-weights control's and the lexical baseline's (bag of token ids); "
            "matched-by-null when scrambled pairings reach it; matched-by-control or "
            "matched-by-lexical when it overlaps (or lies below) one of them; below-control "
            "when it lies wholly under the control; no-control when none was run. Intervals: "
            "95%, exact jackknife (z, CKA) and Wilson (P@1). How to read them: docs/report.md.",
            note=True,
        )
    )
    warnings = [str(w) for w in findings.get("warnings") or []]
    if warnings:
        blocks += [Heading(3, "Warnings"), Bullets(warnings)]
    dominance = [d for d in findings.get("dominance") or [] if isinstance(d, Mapping)]
    drows: list[list[str | Cell]] = []
    for d in dominance:
        shares = "; ".join(
            f"{r.get('lang')}: dim {', '.join(str(i) for i in r.get('top_dims') or [])} "
            f"({fmt_value(r.get('share'), 3)})"
            for r in d.get("languages") or []
        )
        for v in d.get("values") or []:
            drows.append(
                [
                    str(d.get("site")),
                    str(d.get("pool")),
                    shares,
                    "/".join(v.get("pair") or []),
                    METRIC_LABELS.get(str(v.get("metric")), str(v.get("metric"))),
                    _value_cell(v.get("raw"), None, inline_reason=False),
                    _value_cell(v.get("standardized"), None, inline_reason=False),
                ]
            )
    if drows:
        blocks.append(
            Table(
                [
                    "site",
                    "pool",
                    "top dimensions (share of squared norm)",
                    "pair",
                    "metric",
                    "raw",
                    "standardized",
                ],
                drows,
                caption="Sites where one dimension holds over half the squared norm",
            )
        )
    return blocks


def _alignment_section(
    out_dir: Path, inputs: ReportInputs, figures: dict[str, Path]
) -> list[Block]:
    main, control = inputs.alignment, inputs.control_alignment
    pairs = alignment_pairs(main) or alignment_pairs(control)
    if not pairs:
        return [Para(f"No alignment results: the layer sweep is {UNDEFINED} for this run.")]
    blocks: list[Block] = [
        Para(
            "Each panel is one metric against depth (embedding site first). Solid lines: the "
            "model, one per pool, with confidence bands where the metric has them; dashed: the "
            "same model with random weights (control); dotted horizontal: the lexical "
            "baseline (bags of token ids, no model). Gaps are undefined values."
            + ("" if control else " No random-weights control was run.")
        )
    ]
    if main and main.get("null"):
        blocks.append(Para(f"Null distribution: {fmt_value(main.get('null'))}.", note=True))
    blocks += _pool_meanings(main)
    if len(pairs) > MAX_PAIRS:
        blocks.append(
            Para(f"Showing the first {MAX_PAIRS} of {len(pairs)} language pairs.", note=True)
        )
    sites = alignment_sites(main, control)
    metrics = alignment_metrics(main, control)
    pools = alignment_pools(main, control)
    for pair in pairs[:MAX_PAIRS]:
        name = "alignment" if len(pairs) == 1 else f"alignment_{safe_name(f'{pair[0]}-{pair[1]}')}"
        fig = alignment_figure(main, control, pair)
        png, _ = save_figure(fig, out_dir, name)
        figures[name] = png
        if len(pairs) > 1:
            blocks.append(Heading(3, f"{pair[0]} vs {pair[1]}"))
        blocks.append(
            Image(png, f"Alignment against depth, {pair[0]} vs {pair[1]}", _caption(pair, main))
        )
        blocks += [Para(w, note=True) for w in _figure_notes(inputs.findings, pair)]
        tables: list[Block] = []
        for label, doc in (("model", main), ("random-weights control", control)):
            if not doc:
                continue
            for pool in pools:
                tables.append(_alignment_table(doc, sites, pair, metrics, pool, label))
        if tables:
            blocks.append(Details(f"Values at every site ({pair[0]} vs {pair[1]})", tables))
    return blocks


#: Warnings of ``findings.json`` that explain a shape of the curves; the report repeats them
#: under the figure.
_CURVE_WARNINGS = ("z is negative while P@1", "one dimension holds over half")


def _figure_notes(findings: Mapping[str, Any] | None, pair: tuple[str, str]) -> list[str]:
    """The findings' warnings that explain the curves of ``pair`` (or of every pair)."""
    out = []
    for w in (findings or {}).get("warnings") or []:
        w = str(w)
        other_pair = "/" in w.split(",", 1)[0] and not w.startswith(f"{pair[0]}/{pair[1]},")
        if any(k in w for k in _CURVE_WARNINGS) and not other_pair:
            out.append(w)
    return out


def _caption(pair: tuple[str, str], doc: Mapping[str, Any] | None) -> str:
    records = (doc or {}).get("records") or []
    n = next((r.get("n") for r in records if isinstance(r, Mapping) and r.get("n")), None)
    return f"{pair[0]} vs {pair[1]}" + (f", {n} pairs per site." if n else ".")


def _alignment_table(
    doc: Mapping[str, Any],
    sites: list[str],
    pair: tuple[str, str],
    metrics: list[str],
    pool: str,
    label: str,
) -> Table:
    series = {m: alignment_series(doc, sites, pair, m, pool) for m in metrics}
    rows: list[list[str | Cell]] = []
    for i, site in enumerate(sites):
        row: list[str | Cell] = [site]
        for m in metrics:
            v = series[m].value[i]
            row.append(
                Cell(fmt_value(float(v)))
                if np.isfinite(v)
                else Cell(UNDEFINED, title=series[m].reasons.get(site), undefined=True)
            )
        rows.append(row)
    lexical = {m: lexical_value(doc, pair, m, pool) for m in metrics}
    if any(v is not None for v in lexical.values()):
        rows.append(
            [
                "lexical (token ids, no model)",
                *(_value_cell(lexical[m], "not computed", inline_reason=False) for m in metrics),
            ]
        )
    return Table(
        ["site", *(METRIC_LABELS.get(m, m) for m in metrics)],
        rows,
        caption=f"{label}, {pool} pool",
    )


def _matrix_section(out_dir: Path, inputs: ReportInputs, figures: dict[str, Path]) -> list[Block]:
    """Heatmaps of each metric between every two languages, at a few sites (L >= 3 only)."""
    doc = inputs.alignment
    langs = list((doc or {}).get("languages") or [])
    metrics = matrix_metrics(doc)
    if doc is None or len(langs) < 3 or not metrics:
        return []
    sites = matrix_sites(alignment_sites(doc), inputs.matrix_sites)
    pools = alignment_pools(doc)
    pool = pools[0] if pools else "last"
    pivot = doc.get("pivot")
    blocks: list[Block] = [
        Para(
            f"{len(langs)} languages. Each heatmap compares every language (rows, x) with every "
            "other (columns, y) at one site; grey cells were not computed"
            + (f" (pivot {pivot}: only its row and column)" if pivot else "")
            + f". Pool {pool}; alignment.json holds every site and pool under 'matrices'."
        )
    ]
    if len(metrics) > MAX_MATRIX_METRICS:
        blocks.append(
            Para(f"Showing the first {MAX_MATRIX_METRICS} of {len(metrics)} metrics.", note=True)
        )
    for metric in metrics[:MAX_MATRIX_METRICS]:
        name = f"languages_{safe_name(metric)}"
        png, _ = save_figure(language_matrix_figure(doc, metric, pool, sites), out_dir, name)
        figures[name] = png
        label = MATRIX_LABELS.get(metric) or METRIC_LABELS.get(metric, metric)
        blocks.append(Image(png, f"{label} between languages", f"{label} at {', '.join(sites)}."))
    return blocks


def _pca_section(out_dir: Path, inputs: ReportInputs, figures: dict[str, Path]) -> list[Block]:
    if not inputs.pca:
        return [Para(f"No vectors were given for the PCA scatter: it is {UNDEFINED}.")]
    png, _ = save_figure(pca_figure(inputs.pca), out_dir, "pca")
    figures["pca"] = png
    sites = ", ".join(inputs.pca)
    return [
        Image(
            png,
            "PCA scatter of both languages",
            f"Sites: {sites}. Colour: language; marker: category. Both languages share one "
            "projection per site, so language clusters that sit apart mean language-specific "
            "directions dominate.",
        )
    ]


def _heatmap_section(out_dir: Path, inputs: ReportInputs, figures: dict[str, Path]) -> list[Block]:
    hm = inputs.heatmap
    if hm is None:
        return [Para(f"No vectors were given for the similarity heatmap: it is {UNDEFINED}.")]
    png, _ = save_figure(heatmap_figure(hm), out_dir, "heatmap")
    figures["heatmap"] = png
    grouped = " grouped by category (white lines mark the groups)" if hm.categories else ""
    return [
        Image(
            png,
            f"Cosine similarity heatmap at {hm.site}",
            f"Cosine similarity of every {hm.lang_x} item (rows) with every {hm.lang_y} item "
            f"(columns) at {hm.site}, {hm.pool} pool, rows and columns{grouped}. A bright "
            "diagonal is instance-level alignment; bright blocks are category-level alignment.",
        )
    ]


def _origin_section(origin: Mapping[str, Any] | None) -> list[Block]:
    if not origin:
        return [Para(f"No origin results: the origin study is {UNDEFINED} for this run.")]
    blocks: list[Block] = []
    facts = [
        f"model: {fmt_value(origin.get('model'))}",
        f"languages: {fmt_value(origin.get('languages'))}",
        f"pairs: {fmt_value(origin.get('n_pairs'))}",
        f"null: {fmt_value(origin.get('null'))}",
    ]
    blocks.append(Bullets(facts))
    blocks += _seed_keys(origin)
    blocks += _tokenizer_facts(origin)
    blocks += _decomposition(origin.get("decomposition"), "Decomposition of the model's z")
    control = origin.get("control")
    if isinstance(control, Mapping):
        blocks += _decomposition(
            control.get("decomposition"), "Decomposition of the random-weights control's z"
        )
    blocks += _last_tokens(origin)
    blocks += _token_classes(origin)
    blocks += _shared_tokens(origin)
    return blocks


def _seed_keys(origin: Mapping[str, Any]) -> list[Block]:
    undefined = _mapping(origin.get("undefined"))
    control = origin.get("control") if isinstance(origin.get("control"), Mapping) else None
    c_undefined = _mapping(_get(control, "undefined"))
    columns = ["key", "value"] + (["random-weights control"] if control else []) + ["meaning"]
    rows: list[list[str | Cell]] = []
    for key, meaning in SEED_KEYS.items():
        row: list[str | Cell] = [key, _seed_cell(origin, undefined, key)]
        if control is not None:
            row.append(_seed_cell(control, c_undefined, key))
        row.append(meaning)
        rows.append(row)
    return [
        Heading(3, "The seed study's keys"),
        Table(columns, rows),
    ]


def _seed_cell(doc: Mapping[str, Any], undefined: Mapping[str, Any], key: str) -> Cell:
    if key not in doc:
        return _value_cell(None, str(undefined.get(key) or "not in origin.json"))
    reason = undefined.get(key)
    return _value_cell(doc.get(key), str(reason) if reason else None)


def _tokenizer_facts(origin: Mapping[str, Any]) -> list[Block]:
    tok = _mapping(origin.get("tokenizer"))
    pos = _mapping(origin.get("positions"))
    adds_bos = tok.get("adds_bos")
    items = [
        f"tokenizer: {fmt_value(tok.get('name'))}",
        f"adds a BOS token: {fmt_value(adds_bos)}"
        + (f" ({fmt_value(tok.get('bos_token'))})" if adds_bos else ""),
    ]
    unk = tok.get("unk_rate")
    if isinstance(unk, Mapping):
        items += [f"unknown-token rate, {lang}: {fmt_value(r)}" for lang, r in unk.items()]
    else:
        items.append(f"unknown-token rate: {UNDEFINED}")
    has_pos = pos.get("has_additive_positions")
    items.append(f"additive position embeddings: {fmt_value(has_pos)}")
    items.append(f"embedding site captured: {fmt_value(pos.get('embed_site'))}")
    blocks: list[Block] = [Heading(3, "BOS token and position embeddings"), Bullets(items)]
    if adds_bos is False:
        blocks.append(
            Para(
                "The tokenizer adds no BOS token, so dropping the first token as 'BOS' would "
                "drop a real token; the mean pool here keeps every token.",
                note=True,
            )
        )
    if has_pos is True:
        blocks.append(
            Para(
                "Position embeddings are added at the embedding site, so equal positions in "
                "both languages contribute shared signal before any block runs.",
                note=True,
            )
        )
    return blocks


def _decomposition(rows_in: Any, title: str) -> list[Block]:
    if not isinstance(rows_in, list) or not rows_in:
        return [Heading(3, title), Para(f"The decomposition is {UNDEFINED} (not computed).")]
    entries = [r for r in rows_in if isinstance(r, Mapping)]
    cats: dict[str, None] = {}
    for r in entries:
        within = r.get("z_within_category")
        if isinstance(within, Mapping):
            cats.update(dict.fromkeys(str(c) for c in within))
    columns = ["site", *_DECOMPOSITION_COLUMNS, *(f"within category {c}" for c in cats)]
    rows: list[list[str | Cell]] = []
    notes: list[str] = []
    for r in entries:
        site = str(r.get("site", UNDEFINED))
        reasons = _mapping(r.get("reasons"))
        row: list[str | Cell] = [site]
        for key in _DECOMPOSITION_COLUMNS:
            row.append(_value_cell(r.get(key), _str_or_none(reasons.get(key)), inline_reason=False))
        within = _mapping(r.get("z_within_category"))
        for c in cats:
            reason = next(
                (
                    reasons[k]
                    for k in (f"z_within_category.{c}", f"z_within_category:{c}", c)
                    if k in reasons
                ),
                reasons.get("z_within_category"),
            )
            row.append(_value_cell(within.get(c), _str_or_none(reason), inline_reason=False))
        rows.append(row)
        notes += [f"{site}, {k}: {v}" for k, v in reasons.items()]
    legend = "; ".join(f"{k}: {v}" for k, v in _DECOMPOSITION_COLUMNS.items())
    blocks: list[Block] = [Heading(3, title), Table(columns, rows), Para(legend, note=True)]
    if notes:
        blocks += [Para("Why some values are undefined:", note=True), Bullets(notes)]
    return blocks


def _mapping(v: Any) -> Mapping[str, Any]:
    # A key that should hold a table but is missing or malformed reads as an empty one.
    return v if isinstance(v, Mapping) else {}


def _str_or_none(v: Any) -> str | None:
    return None if v is None else str(v)


def _last_tokens(origin: Mapping[str, Any]) -> list[Block]:
    table = origin.get("last_token_table")
    head = Heading(3, "Last tokens")
    if not isinstance(table, list) or not table:
        return [head, Para(f"The last-token table is {UNDEFINED} (not computed).")]
    entries = [r for r in table if isinstance(r, Mapping)]
    langs = [str(x) for x in origin.get("languages") or []]
    if not langs:
        langs = [str(k) for k in entries[0] if k not in ("identical", "count")] if entries else []
    rows: list[list[str | Cell]] = []
    for r in entries:
        # repr() shows whitespace and invisible characters in a token; None stays undefined.
        tokens: list[str | Cell] = [
            repr(r[lang]) if isinstance(r.get(lang), str) else _value_cell(r.get(lang), None)
            for lang in langs
        ]
        rows.append([*tokens, fmt_value(r.get("identical")), fmt_value(r.get("count"))])
    return [
        head,
        Table([*langs, "identical", "pairs"], rows),
        Para(
            "Identical last tokens have cosine 1 at the embedding site, so part of last-token "
            "alignment there is token identity.",
            note=True,
        ),
    ]


def _token_classes(origin: Mapping[str, Any]) -> list[Block]:
    counts = origin.get("token_classes")
    head = Heading(3, "Token classes")
    if not isinstance(counts, Mapping) or not counts:
        return [head, Para(f"Token-class counts are {UNDEFINED} (not computed).")]
    langs = [str(lang) for lang in counts]
    per_lang = {str(k): (v if isinstance(v, Mapping) else {}) for k, v in counts.items()}
    seen = {str(c) for v in per_lang.values() for c in v}
    classes = [c for c in TOKEN_CLASSES if c in seen] + sorted(seen - set(TOKEN_CLASSES))
    rows: list[list[str | Cell]] = [
        [c, *(fmt_value(per_lang[lang].get(c, 0)) for lang in langs)] for c in classes
    ]
    totals = [sum(_num(v) for v in per_lang[lang].values()) for lang in langs]
    rows.append(["total", *(fmt_value(t) for t in totals)])
    return [head, Table(["class", *langs], rows, caption="Tokens of each class, whole corpus")]


def _pool_meanings(alignment: Mapping[str, Any] | None) -> list[Block]:
    """What each pool of the sweep is (one meaning of ``last`` everywhere), and any legacy note."""
    info = _mapping(_get(alignment, "pool_info"))
    blocks: list[Block] = []
    if info:
        items = [f"{p}: {why}" for p, why in info.items() if why]
        if items:
            blocks += [Para("Pools:", note=True), Bullets(items)]
    note = _get(alignment, "pool_note")
    if note:
        blocks.append(Para(f"Run written by an older xlalign: {note}.", note=True))
    return blocks


def _num(v: Any) -> int | float:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else 0


def _shared_tokens(origin: Mapping[str, Any]) -> list[Block]:
    shared = origin.get("shared_tokens")
    head = Heading(3, "Shared tokens")
    if not isinstance(shared, Mapping) or not shared:
        return [head, Para(f"Shared-token analysis is {UNDEFINED} (not computed).")]
    cos = shared.get("embedding_cosine")
    note = shared.get("embedding_cosine_note")
    items = [
        f"pairs sharing at least one token: {fmt_value(shared.get('pairs_with_shared'))} "
        f"of {fmt_value(shared.get('n_pairs'))}",
        f"shared tokens, counted once per pair and summed over pairs: "
        f"{fmt_value(shared.get('total'))}",
        f"embedding cosine of a shared token across languages: {fmt_value(cos)}"
        + (f" ({note})" if note else ""),
    ]
    blocks: list[Block] = [head, Bullets(items)]
    by_class = shared.get("by_class")
    if isinstance(by_class, Mapping) and by_class:
        blocks.append(
            Table(
                ["class", "shared tokens"],
                [[str(c), fmt_value(n)] for c, n in by_class.items()],
                caption="Shared tokens by class",
            )
        )
    context = shared.get("context_cosine")
    if isinstance(context, Mapping) and context:
        blocks.append(
            Table(
                ["site", "mean cosine"],
                [[str(s), _value_cell(v, None)] for s, v in context.items()],
                caption="Cosine of a shared token's hidden state across languages, in context",
            )
        )
    return blocks


def _provenance_section(provenance: Mapping[str, Any]) -> list[Block]:
    if not provenance:
        return [Para(f"No provenance was recorded: it is {UNDEFINED}.")]
    rows: list[list[str | Cell]] = []
    for key, v in flatten(provenance):
        if isinstance(v, (list, tuple)) and not all(isinstance(x, (str, int, float)) for x in v):
            text = json.dumps(v, default=str)
        else:
            text = fmt_value(v, digits=6)
        rows.append([key, Cell(text, undefined=v is None)])
    return [Table(["item", "value"], rows)]
