"""The report's logit-lens section: "latent language against depth" and its tables.

Reads a parsed ``lens.json`` (see :mod:`xlalign.studies.lens`): the model's per-site summaries
and, under ``control``, the random-weights control's. One panel per prompt language shows the
mean probability mass of each token class against depth (bands: bootstrap CIs), the control
dashed; with answer columns a second row shows the probability of each language's answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from xlalign.report.figures import mpl_text, save_figure
from xlalign.report.template import Block, Cell, Details, Image, Para, Table

#: Classes always drawn; any other class is drawn once its mean mass reaches this much.
ALWAYS_DRAWN = ("latin", "cjk")
MIN_DRAWN_MASS = 0.05
_CLASS_COLOURS = {
    "latin": "C0", "cjk": "C3", "digit": "C2", "punct": "C1", "space": "C7",
    "special": "C4", "partial": "C5", "other": "C8",
}  # fmt: skip


def _summaries(doc: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    rows = (doc or {}).get("summaries") or []
    return [r for r in rows if isinstance(r, Mapping)]


def _series(
    rows: Sequence[Mapping[str, Any]], lang: str, sites: Sequence[str], *keys: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, low, high)`` over ``sites`` of ``row[keys...]`` for ``lang`` (NaN where absent)."""
    by_site = {r.get("site"): r for r in rows if r.get("lang") == lang}
    out = np.full((3, len(sites)), np.nan)
    for i, site in enumerate(sites):
        v: Any = by_site.get(site)
        for k in keys:
            v = v.get(k) if isinstance(v, Mapping) else None
        if isinstance(v, Mapping):
            for j, name in enumerate(("mean", "low", "high")):
                x = v.get(name)
                out[j, i] = float(x) if isinstance(x, (int, float)) else np.nan
    return out[0], out[1], out[2]


def drawn_classes(doc: Mapping[str, Any], control: Mapping[str, Any] | None) -> list[str]:
    """Classes in the figure: latin and cjk, and any other reaching :data:`MIN_DRAWN_MASS`."""
    classes = [str(c) for c in doc.get("classes") or []]
    peak: dict[str, float] = {}
    for r in [*_summaries(doc), *_summaries(control)]:
        for c, v in (r.get("class_mass") or {}).items():
            mean = v.get("mean") if isinstance(v, Mapping) else None
            if isinstance(mean, (int, float)):
                peak[c] = max(peak.get(c, 0.0), float(mean))
    return [c for c in classes if c in ALWAYS_DRAWN or peak.get(c, 0.0) >= MIN_DRAWN_MASS]


def answer_label(doc: Mapping[str, Any], lang: str, answer: str) -> str:
    """``en answer (in the prompt: a copy scores too)`` for the figure, tables and summary."""
    role = (((doc.get("answers") or {}).get("roles") or {}).get(lang) or {}).get(answer)
    words = {
        "target": "the prompt's answer",
        "in the prompt": "in the prompt: copying it scores too",
        "not in the prompt": "not in the prompt: latent",
    }
    return f"{answer} answer" + (f" ({words[role]})" if role in words else "")


def lens_figure(doc: Mapping[str, Any], control: Mapping[str, Any] | None = None) -> Figure:
    """Latent language against depth: one panel per prompt language (see the module doc)."""
    sites = [str(s) for s in doc.get("sites") or []]
    langs = [str(x) for x in doc.get("languages") or []]
    answers = [str(a) for a in ((doc.get("answers") or {}).get("languages") or [])]
    classes = drawn_classes(doc, control)
    nrows = 2 if answers else 1
    ncols = max(1, len(langs))
    width = 4.2 if len(sites) <= 14 else 5.4
    fig = Figure(figsize=(width * ncols, 3.0 * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey="row")
    xs = np.arange(len(sites))
    main_rows, ctrl_rows = _summaries(doc), _summaries(control)
    panels: list[tuple[int, list[tuple[str, tuple[str, ...], str]]]] = [
        (0, [(c, ("class_mass", c), _CLASS_COLOURS.get(c, "C9")) for c in classes])
    ]
    if answers:
        panels.append(
            (1, [(f"{a} answer", ("answer_prob", a), f"C{k % 10}") for k, a in enumerate(answers)])
        )
    for row, series in panels:
        for col, lang in enumerate(langs):
            ax = axes[row][col]
            for label, keys, colour in series:
                if keys[0] == "answer_prob":  # its role differs from one prompt language to another
                    label = answer_label(doc, lang, keys[1])
                mean, low, high = _series(main_rows, lang, sites, *keys)
                band = np.isfinite(low) & np.isfinite(high)
                if band.any():
                    ax.fill_between(
                        xs, np.where(band, low, 0), np.where(band, high, 0), where=band,
                        color=colour, alpha=0.2, linewidth=0,
                    )  # fmt: skip
                ax.plot(xs, mean, "-o", color=colour, markersize=3, linewidth=1.5, label=label)
                ctrl, _, _ = _series(ctrl_rows, lang, sites, *keys)
                if np.isfinite(ctrl).any():
                    ax.plot(xs, ctrl, "--", color=colour, linewidth=1.1, alpha=0.9)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xticks(xs)
            ax.set_xticklabels([mpl_text(s) for s in sites], rotation=90, fontsize=7)
            title = f"{lang} prompts" if row == 0 else f"{lang} prompts: answer probability"
            ax.set_title(mpl_text(title), fontsize=10)
            if col == 0:
                ax.set_ylabel("mean probability mass" if row == 0 else "P(first answer token)")
            if col == ncols - 1 or row == 1:
                ax.legend(fontsize=7, loc="upper left", frameon=False)
    note = " Dashed: random-weights control." if ctrl_rows else " No random-weights control."
    fig.suptitle(mpl_text("Latent language against depth (logit lens)." + note), fontsize=10)
    return fig


def _fmt(v: Any, digits: int = 3) -> str:
    return f"{float(v):.{digits}f}" if isinstance(v, (int, float)) else "undefined"


def lens_section(
    out_dir: Path, doc: Mapping[str, Any] | None, figures: dict[str, Path]
) -> list[Block]:
    """The report blocks of the lens (figure ``lens``, per-language tables); [] without one."""
    if not doc or not _summaries(doc):
        return []
    control = doc.get("control") if isinstance(doc.get("control"), Mapping) else None
    png, _ = save_figure(lens_figure(doc, control), out_dir, "lens")
    figures["lens"] = png
    share = doc.get("vocab_share") or {}
    blocks: list[Block] = [
        Para(
            "Each site's last-token state decoded through the model's own final norm and LM "
            "head (the logit lens; Wendler et al. 2024, 'Do Llamas Work in English?'): the "
            "probability the decoded distribution puts on each class of tokens, averaged over "
            "prompts, per prompt language. A middle-layer peak of latin mass on non-English "
            "prompts is the 'latent English' of Wendler et al. Model-free baseline (uniform over "
            f"the vocabulary): latin {_fmt(share.get('latin'))}, cjk {_fmt(share.get('cjk'))}."
        ),
        Image(
            png,
            "Latent language against depth",
            "Solid: the model, with 95% bootstrap bands over prompts; dashed: the same "
            "architecture with random weights."
            + ("" if control else " No random-weights control was run."),
        ),
    ]
    notes = doc.get("decoding") or {}
    if isinstance(notes, Mapping) and "final" in notes:
        blocks.append(
            Para(
                f"Site final: {notes['final']}; every other site: "
                "final norm, then LM head (the last block's raw output decodes to the model's "
                "own next-token distribution).",
                note=True,
            )
        )
    answers = (doc.get("answers") or {}).get("languages") or []
    tables: list[Block] = []
    ctrl_by = {(r.get("site"), r.get("lang")): r for r in _summaries(control)}
    for lang in doc.get("languages") or []:
        rows: list[list[str | Cell]] = []
        for r in _summaries(doc):
            if r.get("lang") != lang:
                continue
            cm = r.get("class_mass") or {}
            c = ctrl_by.get((r.get("site"), lang))
            cc = (c or {}).get("class_mass") or {}
            mode = r.get("top1_mode") or {}
            row: list[str | Cell] = [
                str(r.get("site")),
                _fmt((cm.get("latin") or {}).get("mean")),
                _fmt((cm.get("cjk") or {}).get("mean")),
                _fmt((r.get("entropy") or {}).get("mean"), 2),
                f"{mode.get('text')!r} ({_fmt(mode.get('share'), 2)})" if mode else "undefined",
            ]
            for a in answers:
                row.append(_fmt(((r.get("answer_prob") or {}).get(a) or {}).get("mean"), 4))
            if control:
                row += [
                    _fmt((cc.get("latin") or {}).get("mean")),
                    _fmt((cc.get("cjk") or {}).get("mean")),
                ]
            rows.append(row)
        columns = ["site", "latin", "cjk", "entropy (nats)", "commonest top-1 (share)"]
        columns += [f"P({answer_label(doc, lang, a)})" for a in answers]
        if control:
            columns += ["control latin", "control cjk"]
        tables.append(Table(columns, rows, caption=f"{lang} prompts, mean over prompts"))
    if tables:
        blocks.append(Details("Values at every site", tables))
    return blocks
