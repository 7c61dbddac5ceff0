"""The report's steering section: success against layer per alpha, the random control dashed.

Reads a parsed ``steer.json`` (see :mod:`xlalign.studies.steer`). The figure plots, per alpha,
the share of generations in the target language against the steered layer (solid, with its
bootstrap interval), the same for a random direction of the same norm (dashed) and the
unsteered model (grey line). The section adds the table and a few generations (escaped by the
template, as every string from the data).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from xlalign.report.figures import mpl_text, save_figure
from xlalign.report.template import (
    Block,
    Details,
    Heading,
    Image,
    Para,
    Table,
    to_html,
    to_markdown,
)


def _pct(share: Mapping[str, Any] | None) -> str:
    share = share or {}
    v = share.get("value")
    if not isinstance(v, (int, float)):
        return "undefined"
    lo, hi = share.get("low"), share.get("high")
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
        return f"{v:.0%} [{lo:.0%}, {hi:.0%}]"
    return f"{v:.0%}"


def _records(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in doc.get("records") or [] if r.get("layer") is not None]


def steer_figure(doc: Mapping[str, Any]) -> Figure:
    """Success (share in the target language) against layer, one colour per alpha."""
    fig = Figure(figsize=(7.8, 3.6), layout="constrained")
    ax = fig.subplots()
    recs = _records(doc)
    alphas = sorted({float(r["alpha"]) for r in recs})
    for k, a in enumerate(alphas):
        rows = sorted((r for r in recs if float(r["alpha"]) == a), key=lambda r: r["layer"])
        xs = np.array([r["layer"] for r in rows], dtype=float)
        ys = np.array([r["success"].get("value") or 0.0 for r in rows])
        lo = np.array([r["success"].get("low", y) for r, y in zip(rows, ys, strict=True)], float)
        hi = np.array([r["success"].get("high", y) for r, y in zip(rows, ys, strict=True)], float)
        color = f"C{k}"
        ax.plot(xs, ys, "o-", color=color, label=f"DiffMean, alpha {a:g}")
        ax.fill_between(xs, lo, hi, color=color, alpha=0.15, linewidth=0)
        cs = [r["control"]["success"].get("value") or 0.0 for r in rows]
        ax.plot(xs, cs, "s--", color=color, alpha=0.8, label=f"random direction, alpha {a:g}")
    base = next((r for r in doc.get("records") or [] if r.get("layer") is None), None)
    if base is not None and isinstance(base["success"].get("value"), (int, float)):
        ax.axhline(base["success"]["value"], color="grey", linewidth=1, label="unsteered")
    layers = sorted({int(r["layer"]) for r in recs})
    if 0 < len(layers) <= 40:
        ax.set_xticks(layers)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("steered block")
    ax.set_ylabel(mpl_text(f"share of generations in {doc.get('target')}"))
    ax.set_title(
        mpl_text(
            f"Steering {doc.get('source')} prompts to {doc.get('target')}: {doc.get('model')}"
        ),
        fontsize=10,
    )
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def steer_section(
    out_dir: Path, doc: Mapping[str, Any] | None, figures: dict[str, Path]
) -> list[Block]:
    """The report blocks of the steering study (figure ``steer``, table, examples); [] without."""
    if not doc or not doc.get("records"):
        return []
    png, _ = save_figure(steer_figure(doc), out_dir, "steer")
    figures["steer"] = png
    rows = doc.get("rows") or {}
    src, tgt = doc.get("source"), doc.get("target")
    blocks: list[Block] = [
        Para(
            f"DiffMean steering ({doc.get('pool')} pool): at each block the unit difference of "
            f"the {tgt} and {src} mean vectors, computed on {rows.get('direction')} rows, is "
            "added to the block's output at every position with strength alpha times the "
            "layer's mean last-token state norm, while the model generates greedily from "
            f"{rows.get('generated')} held-out {src} prompts. Control: a random direction of the "
            "same norm (three seeds) and the unsteered model. Language rule: "
            f"{doc.get('language_rule')}."
        ),
        Image(
            png,
            "Steering success against layer",
            f"Share of generations in {tgt} (95% bootstrap intervals over prompts); dashed: a "
            "random direction of the same norm; grey: unsteered.",
        ),
    ]
    for f in doc.get("findings") or []:
        blocks.append(Para(f"{f.get('statement')} ({f.get('verdict')})"))
    table = [
        [
            "none" if r.get("layer") is None else str(r.get("site")),
            f"{float(r.get('alpha') or 0):g}",
            _pct(r.get("success")),
            _pct((r.get("control") or {}).get("success")) if r.get("control") else "",
            _pct(r.get("stay")),
            _pct(r.get("content")),
            _pct(r.get("content_any")),
            str(r.get("n")),
            str(r.get("verdict") or "baseline"),
        ]
        for r in doc.get("records") or []
    ]
    blocks.append(
        Table(
            [
                "block",
                "alpha",
                f"in {tgt}",
                "random direction",
                f"in {src}",
                "all numbers kept",
                "a number kept",
                "n",
                "verdict",
            ],
            table,
            caption="Every layer and alpha",
        )
    )
    examples = doc.get("examples") or []
    if examples:
        best = doc.get("best") or {}
        blocks.append(
            Details(
                f"Generations at {best.get('site')}, alpha {float(best.get('alpha') or 0):g}",
                [
                    Table(
                        ["prompt", "unsteered", "steered", "random direction"],
                        [
                            [
                                str(e.get(k, ""))
                                for k in ("prompt", "unsteered", "steered", "random")
                            ]
                            for e in examples
                        ],
                    )
                ],
            )
        )
    for w in doc.get("warnings") or []:
        blocks.append(Para(f"Warning: {w}", note=True))
    return blocks


def write_steer_report(out_dir: Path, doc: Mapping[str, Any], title: str) -> dict[str, Path]:
    """``steer.html`` and ``steer.md`` (the section alone) and ``fig_steer.png``/``.svg``."""
    figures: dict[str, Path] = {}
    blocks: list[Block] = [Heading(2, "Steering the output language", "steer")]
    blocks += steer_section(out_dir, doc, figures)
    html_path = out_dir / "steer.html"
    md_path = out_dir / "steer.md"
    html_path.write_text(to_html(title, blocks), encoding="utf-8")
    md_path.write_text(to_markdown(title, blocks), encoding="utf-8")
    png = figures.get("steer")
    out = {"html": html_path, "md": md_path}
    if png is not None:
        out["figure_png"] = png
        out["figure_svg"] = png.with_suffix(".svg")
    return out
