"""The report's language-neuron section: neurons per layer, and the ablation against its control.

Reads a parsed ``neurons.json`` (see :mod:`xlalign.studies.neurons`). Left: how many neurons
LAPE assigns to each language in each layer. Right: the change in mean token NLL on each
language's held-out prompts when each language's neurons are ablated, beside the same for as
many random neurons of the same layers (the control).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from xlalign.report.figures import mpl_text, save_figure
from xlalign.report.template import Block, Details, Image, Para, Table


def _fmt(v: Any, digits: int = 3) -> str:
    return f"{float(v):.{digits}f}" if isinstance(v, (int, float)) else "undefined"


def _jaccard(doc: Mapping[str, Any], lang: str) -> str:
    st = (doc.get("stability") or {}).get(lang) or {}
    return f"{_fmt(st.get('jaccard'), 2)} ({_fmt(st.get('jaccard_chance'), 3)})"


def _delta(rec: Mapping[str, Any] | None) -> Mapping[str, Any]:
    d = (rec or {}).get("delta_nll")
    return d if isinstance(d, Mapping) else {}


def ablation_table(doc: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """``(ablated, evaluated)`` -> the language set's change and the random controls' changes."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in doc.get("ablation") or []:
        if r.get("kind") not in ("language", "random"):
            continue
        cell = out.setdefault((str(r["ablated"]), str(r["evaluated"])), {"controls": []})
        value = _delta(r).get("value")
        if r["kind"] == "language":
            cell.update(_delta(r))
        elif isinstance(value, (int, float)):
            cell["controls"].append(float(value))
    return out


def neurons_figure(doc: Mapping[str, Any]) -> Figure:
    """Neurons per layer per language, and the ablation matrix with its random control."""
    langs = [str(x) for x in doc.get("languages") or []]
    n_layers = int(doc.get("n_layers") or 0)
    cells = ablation_table(doc)
    fig = Figure(figsize=(10.5, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
    xs = np.arange(n_layers)
    per = {
        (r.get("lang"), r.get("layer")): r.get("n_selected") or 0 for r in doc.get("records") or []
    }
    width = 0.8 / max(1, len(langs))
    for k, lang in enumerate(langs):
        ys = [per.get((lang, layer), 0) for layer in range(n_layers)]
        left.bar(xs + (k - (len(langs) - 1) / 2) * width, ys, width, label=mpl_text(lang))
    if n_layers <= 40:
        left.set_xticks(xs)
    left.set_xlabel("layer")
    left.set_ylabel("neurons assigned")
    left.set_title("LAPE neurons per layer", fontsize=10)
    left.legend(fontsize=8, frameon=False)
    if cells:
        groups = np.arange(len(langs))
        bw = 0.8 / max(1, len(langs))
        for j, evaluated in enumerate(langs):
            pos = groups + (j - (len(langs) - 1) / 2) * bw
            vals = [cells.get((a, evaluated), {}).get("value") for a in langs]
            heights = np.array([v if isinstance(v, (int, float)) else np.nan for v in vals], float)
            lo = [cells.get((a, evaluated), {}).get("ci_low") for a in langs]
            hi = [cells.get((a, evaluated), {}).get("ci_high") for a in langs]
            err = None
            if all(isinstance(v, (int, float)) for v in [*lo, *hi]):
                err = np.array([heights - np.array(lo, float), np.array(hi, float) - heights])
                err = np.clip(err, 0.0, None)  # a percentile interval may sit beside its point
            right.bar(pos, heights, bw, yerr=err, capsize=2, label=mpl_text(f"on {evaluated}"))
            ctl = [max(cells.get((a, evaluated), {}).get("controls") or [np.nan]) for a in langs]
            right.scatter(
                pos, ctl, marker="D", s=22, color="black", zorder=3,
                label="largest random control" if j == 0 else None,
            )  # fmt: skip
        right.axhline(0, color="grey", linewidth=0.8)
        right.set_xticks(groups)
        right.set_xticklabels([mpl_text(f"{a} neurons") for a in langs])
        right.set_ylabel("change in mean token NLL (nats)")
        right.set_title("Ablating each language's neurons", fontsize=10)
        right.legend(fontsize=8, frameon=False)
    else:
        right.axis("off")
        right.text(0.5, 0.5, "no ablation", ha="center", va="center")
    return fig


def neurons_section(
    out_dir: Path, doc: Mapping[str, Any] | None, figures: dict[str, Path]
) -> list[Block]:
    """The report blocks of the neuron study (figure ``neurons``, tables); [] without one."""
    if not doc or not doc.get("languages"):
        return []
    png, _ = save_figure(neurons_figure(doc), out_dir, "neurons")
    figures["neurons"] = png
    th = doc.get("thresholds") or {}
    st = doc.get("settings") or {}
    rows = doc.get("rows") or {}
    blocks: list[Block] = [
        Para(
            "Language-specific neurons by LAPE (Tang et al., ACL 2024): for every feed-forward "
            f"neuron ({(doc.get('activation') or {}).get('module')}), the share of each "
            "language's tokens on which it is positive; candidates exceed the "
            f"{_fmt(st.get('filter_rate'), 2)} quantile ({_fmt(th.get('filter_value'))}) in some "
            f"language; the {th.get('n_top')} of lowest entropy across languages are selected "
            f"({th.get('n_selected')} passed the filter among them) and each is assigned to the "
            f"languages above the {_fmt(st.get('activation_bar'), 2)} quantile "
            f"({_fmt(th.get('activation_bar_value'))}). Selected on {rows.get('selection')} rows; "
            f"the ablation is measured on {rows.get('evaluated')} held-out rows."
        ),
        Image(
            png,
            "Language-specific neurons and their ablation",
            "Right: change in mean token NLL of each language's held-out prompts when a "
            "language's neurons are zeroed (95% bootstrap intervals over prompts); black diamonds: "
            "the largest change among the random-neuron controls (as many neurons, same layers).",
        ),
    ]
    findings = doc.get("findings") or []
    if findings:
        blocks.append(
            Table(
                [
                    "language",
                    "neurons",
                    "NLL change on own prompts",
                    "random control (max)",
                    "halves' Jaccard (random sets)",
                    "verdict",
                ],
                [
                    [
                        str(f.get("lang")),
                        str(f.get("n_selected")),
                        f"{_fmt((f.get('model') or {}).get('value'))} "
                        f"[{_fmt((f.get('model') or {}).get('ci_low'))}, "
                        f"{_fmt((f.get('model') or {}).get('ci_high'))}]",
                        _fmt((f.get("control") or {}).get("value")),
                        _jaccard(doc, str(f.get("lang"))),
                        str(f.get("verdict")),
                    ]
                    for f in findings
                ],
                caption="One finding per language",
            )
        )
    warnings: Sequence[str] = doc.get("warnings") or []
    for w in warnings:
        blocks.append(Para(f"Warning: {w}", note=True))
    cells = ablation_table(doc)
    if cells:
        table_rows: list[list[str]] = [
            [a, e, _fmt(c.get("value")), f"[{_fmt(c.get('ci_low'))}, {_fmt(c.get('ci_high'))}]",
             ", ".join(_fmt(v) for v in c.get("controls") or []) or "none"]
            for (a, e), c in sorted(cells.items())
        ]  # fmt: skip
        blocks.append(
            Details(
                "Every ablation",
                [
                    Table(
                        ["neurons of", "evaluated on", "NLL change", "95% CI", "random controls"],
                        table_rows,
                    )
                ],
            )
        )
    return blocks
