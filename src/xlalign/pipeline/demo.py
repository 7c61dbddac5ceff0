"""``xlalign demo``: the study's question answered on a real model, offline.

Two studies into one folder, each with the random-weights control:

- ``problems/``: the study's 200 zh/en problems (templated, five categories);
- ``hsk/``: HSK graded zh/en sentence pairs (real, untemplated text), unless ``hsk_pairs`` is 0.

``answer.md`` then answers the study's question ("where does the free z at the first block
come from?") from each study's ``findings.json`` and sweeps, like the reports: last-token z
at the embedding and after the first block beside the random-weights control and the lexical
baseline, with intervals and verdicts; the sites where the model lies above its control; the
z with identical last tokens removed and under the within-template (per-category) null; the
headline, findings and warnings.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlalign.errors import RunError, XlalignError
from xlalign.store.files import atomic_write_text
from xlalign.studies.provenance import study_problems

#: Default model of the demo, and HSK pairs per model when not given.
DEFAULT_MODEL = "qwen2.5-0.5b"
DEFAULT_HSK_PAIRS = {"qwen2.5-0.5b": 500, "gemma-3-270m": 500, "minilm": 0}
LABELS = {
    "qwen2.5-0.5b": "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, dequantized)",
    "gemma-3-270m": "Gemma 3 270M (Q4_K_M GGUF, dequantized)",
    "minilm": "all-MiniLM-L6-v2 (bundled, English-centric)",
}


#: The first line of every ``answer.md`` the demo writes (it replaces only such a file).
ANSWER_TITLE = "# Where does the free z at the first block come from?"


@dataclass(frozen=True)
class DemoConfig:
    """What ``xlalign demo`` runs."""

    model: str = DEFAULT_MODEL
    """A named model (qwen2.5-0.5b, gemma-3-270m, minilm) or any --model value."""
    output: str = "runs/demo"
    """Folder for the two studies and answer.md."""
    problems: int = 200
    """Number of the study's problems."""
    hsk_pairs: int | None = None
    """HSK pairs (default: 500, 0 for minilm; 0 skips the HSK study)."""
    batch_size: int = 32
    """Prompts per forward pass."""

    def __post_init__(self) -> None:
        if self.hsk_pairs is not None and self.hsk_pairs < 0:
            raise XlalignError(f"--hsk must be 0 or more, got {self.hsk_pairs}")
        close = difflib.get_close_matches(self.model, list(LABELS), n=1, cutoff=0.75)
        hub_id = "/" in self.model  # a Hub id is never a misspelt demo model
        local = Path(self.model).expanduser().exists()
        if self.model not in LABELS and close and not hub_id and not local:
            raise XlalignError(
                f"--model '{self.model}' is not one of the demo's models "
                f"({', '.join(LABELS)}): did you mean {close[0]}?"
            )

    @property
    def n_hsk(self) -> int:
        if self.hsk_pairs is not None:
            return self.hsk_pairs
        return DEFAULT_HSK_PAIRS.get(self.model, 500)


def run_demo(
    cfg: DemoConfig,
    *,
    command: list[str] | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo's studies into ``cfg.output``; returns ``{"studies": {...}, "answer": path}``."""
    out = Path(cfg.output)
    label = LABELS.get(cfg.model, cfg.model)
    # the neuron stage (a model pass per language and 18 ablated passes) would double the
    # demo's time on a CPU: `xlalign run` and `xlalign neurons` run it
    common = dict(model=cfg.model, langs=("zh", "en"), device="cpu", control="random-init",
                  batch_size=cfg.batch_size, neurons=False)  # fmt: skip
    studies: dict[str, dict[str, Any]] = {}
    answer_path = out / "answer.md"
    if answer_path.exists() and not answer_path.read_text(encoding="utf-8").startswith(
        ANSWER_TITLE
    ):
        raise XlalignError(
            f"{answer_path} exists and is not a demo answer (it does not start with "
            f"'{ANSWER_TITLE}'); the demo would overwrite it: choose another -o"
        )
    try:
        _run_studies(cfg, out, label, common, studies, command, progress, say)
    except XlalignError as e:
        loaded = (out / "problems" / "manifest.json").exists()  # failed after the model loaded
        if loaded or cfg.model in LABELS or Path(cfg.model).expanduser().exists():
            raise
        raise XlalignError(
            f"{e} (the demo's own models: {', '.join(LABELS)}; or give a local model folder, "
            "a GGUF file or a Hub id)"
        ) from None
    text = answer({name: StudyDocs.read(out / name) for name in studies}, label)
    path = out / "answer.md"
    atomic_write_text(path, text)
    return {"studies": studies, "answer": path, "text": text}


def _run_studies(
    cfg: DemoConfig,
    out: Path,
    label: str,
    common: dict[str, Any],
    studies: dict[str, dict[str, Any]],
    command: list[str] | None,
    progress: bool,
    say: Callable[[str], None],
) -> None:
    """The demo's two studies, into ``studies``."""
    from xlalign.pipeline.config import StudyConfig
    from xlalign.pipeline.study import run_study

    say(f"== study 1: the study's {cfg.problems} problems on {label}")
    studies["problems"] = run_study(
        StudyConfig(problems=cfg.problems, output=str(out / "problems"), label=label, **common),  # type: ignore[arg-type]
        command=command, progress=progress, say=say,
    )  # fmt: skip
    if cfg.n_hsk:
        say(f"== study 2: {cfg.n_hsk} HSK sentence pairs on {label}")
        studies["hsk"] = run_study(
            # the HSK study answers the origin question on real text; the logit lens (the
            # problems study has it) would triple its time on a 150k vocabulary
            StudyConfig(data="hsk", data_n=cfg.n_hsk, output=str(out / "hsk"), label=label,
                        lens=False, **common),  # type: ignore[arg-type]
            command=command, progress=progress, say=say,
        )  # fmt: skip


def _f(v: Any) -> str:
    return "undefined" if v is None else f"{v:.1f}"


def _ci(rec: Mapping[str, Any] | None) -> str:
    """A value with its interval: ``14.1 [12.9, 15.0]`` (``none`` without a value)."""
    if not rec or rec.get("value") is None:
        return "none"
    v, lo, hi = rec["value"], rec.get("ci_low"), rec.get("ci_high")
    digits = 1 if abs(v) >= 10 else 2 if abs(v) >= 1 else 3
    text = f"{v:.{digits}f}"
    if lo is not None and hi is not None:
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text


def _record(doc: Mapping[str, Any] | None, pair: list[str], pool: str, site: str,
            metric: str = "z") -> Mapping[str, Any] | None:  # fmt: skip
    for r in (doc or {}).get("records") or []:
        if (r["x"], r["y"], r["pool"], r["site"], r["metric"]) == (*pair, pool, site, metric):
            return r
    return None


@dataclass(frozen=True)
class StudyDocs:
    """What the answer reads of one study folder: its ``findings.json``, the sweeps of the
    model (``alignment.json``) and of its control, and ``origin.json``."""

    findings: Mapping[str, Any]
    alignment: Mapping[str, Any]
    control_alignment: Mapping[str, Any] | None
    origin: Mapping[str, Any]

    @classmethod
    def read(cls, folder: Path) -> StudyDocs:
        """The documents of ``folder``; :class:`RunError` naming each disagreement between them
        (:func:`~xlalign.studies.provenance.study_problems`): a study left half-rewritten is
        never answered from."""
        problems = study_problems(folder)
        if problems:
            raise RunError(
                f"the outputs in {folder} do not belong together: {'; '.join(problems)}; run "
                "`xlalign run` (or `xlalign align`) on it again"
            )

        def load(path: Path) -> Any:
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

        return cls(
            findings=load(folder / "findings.json") or {},
            alignment=load(folder / "alignment.json") or {},
            control_alignment=load(folder / "control-random-init" / "alignment.json"),
            origin=load(folder / "origin.json") or {},
        )


#: What the first block's verdict says, in the words of the study's question.
_FIRST_BLOCK = {
    "below-control": "training lowers it: random weights of the same shape align the pairs "
    "more than the trained model does at the first block",
    "matched-by-control": "random weights of the same shape give as much: the first block's "
    "alignment needs no training (token identity and the text's structure carry it)",
    "matched-by-lexical": "the lexical baseline (shared tokens alone) gives as much",
    "matched-by-null": "scrambled pairings reach as much: the pairs carry no alignment there",
    "beyond-control": "the trained model lies above random weights and the lexical baseline: "
    "training adds alignment at the first block",
    "no-control": "no random-weights control was run",
}


def answer(studies: Mapping[str, StudyDocs], label: str) -> str:
    """The study's question answered from each study's ``findings.json`` and sweeps (markdown).

    Every value is stated beside the random-weights control and the lexical baseline, with
    the verdict of :func:`xlalign.studies.findings.verdict` (the reports' rule); no ratio of
    z-scores. Per corpus: the last-token z at the embedding and after the first block (L0),
    model and control, with intervals; the count of sites where the model lies above its
    control; the origin study's z with identical last tokens removed and under the
    within-template null; the study's headline, its findings and its (grouped) warnings.
    """
    lines = [
        f"{ANSWER_TITLE} ({label})",
        "",
        "Matched zh/en pairs against the scrambled null (matched-vs-scrambled z, exact "
        "permutation moments), beside a random-weights control (same architecture, fresh "
        "weights) and a model-free lexical baseline (bag of token ids). L0 = output of the "
        "first block; embed = its input. Intervals: 95%, exact jackknife for z and CKA, Wilson "
        "for P@1. p best site: the share of scrambled pairings (the sweep's permutation null) whose "
        "best site reaches the model's best, which corrects it for having been picked among "
        "all sites. Verdicts as in the "
        "reports: beyond-control only when the model's best site beats the scrambled "
        "pairings' best and its interval lies above the control's and the lexical baseline's.",
        "",
    ]
    for name, docs in studies.items():
        lines += _study_section(name, docs)
    lines += [
        "Each study's full report (all sites, P@1, CKA, the lexical and token decompositions) "
        "is in its folder: " + ", ".join(f"{n}/report.html" for n in studies) + ".",
        "",
    ]
    return "\n".join(lines)


def _study_section(name: str, docs: StudyDocs) -> list[str]:
    from xlalign.report.render import finding_notes
    from xlalign.studies.findings import phrase, verdict

    f_doc, align, ctl = docs.findings, docs.alignment, docs.control_alignment
    study = f_doc.get("study") or {}
    pair = list((align.get("pairs") or [["zh", "en"]])[0])
    pool = "last" if "last" in (align.get("pools") or []) else (align.get("pools") or ["mean"])[0]
    out = [f"## {name}: {study.get('n_pairs')} pairs", ""]
    rows = []
    for site in ("embed", "L0"):
        m, c = _record(align, pair, pool, site), _record(ctl, pair, pool, site)
        lex = _record(align, pair, pool, "lexical")
        if m is None or m.get("value") is None:
            continue
        rows.append((site, m, c, lex))
    if rows:
        out += [
            f"| {pool}-token z | trained model | random weights | lexical baseline | verdict |",
            "|---|---|---|---|---|",
        ]
        for site, m, c, lex in rows:
            v = verdict(_fixed(m), c, lex if lex and lex.get("value") is not None else None)
            out.append(f"| {site} | {_ci(m)} | {_ci(c)} | {_lex(lex)} | {v} |")
        out.append("")
    l0 = next((r for r in rows if r[0] == "L0"), None)
    said: list[str] = []
    if l0 is not None:
        _site, m, c, lex = l0
        v = verdict(_fixed(m), c, lex if lex and lex.get("value") is not None else None)
        said.append(f"After the first block the trained model's z is {_ci(m)}; {_FIRST_BLOCK[v]}.")
        if c is not None and c.get("value") is not None and m["value"] < c["value"]:
            said.append(
                f"Random weights reach {_ci(c)} there: the trained model is "
                f"{c['value'] - m['value']:.1f} below them."
            )
    above, total = _sites_above(align, ctl, pair, pool)
    if total:
        said.append(
            f"Over all {total} sites, the trained model's {pool}-token z lies above the "
            f"control's (intervals apart) at {above}."
        )
    said += _token_notes(docs.origin, pool)
    out += [" ".join(said), ""] if said else []
    if f_doc.get("headline"):
        out += [f"**Across all sites:** {f_doc['headline']}", ""]
    findings = [f for f in f_doc.get("findings") or [] if f.get("source") != "origin"]
    if findings:
        out += [
            "| pool | metric | model's best site | control there | control's best site "
            "| model vs control, site by site | lexical | verdict | notes |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for f in findings:
            notes = finding_notes(f)
            cb, counts = f.get("control_best"), f.get("sites_vs_control")
            best = (
                f"{_ci(cb)}{_p_best(cb)} at {cb['site']}"
                if cb and cb.get("value") is not None
                else "none"
            )
            vs = (
                f"above at {counts['above']}, below at {counts['below']} of {counts['compared']}"
                if counts
                else "none"
            )
            out.append(
                f"| {f['pool']} | {_LABELS.get(f['metric'], f['metric'])} | "
                f"{_ci(f['model'])}{_p_best(f['model'])} at {f['site']} | {_ci(f['control'])} | "
                f"{best} | {vs} | "
                f"{_lex(f.get('lexical'))} | {f['verdict']}: {phrase(f)} | "
                f"{'; '.join(notes)} |"
            )
        out.append("")
    warnings = f_doc.get("warnings") or []
    if warnings:
        out += [f"Warnings ({len(warnings)}, from findings.json):", ""]
        out += [f"- {w}" for w in warnings]
        out.append("")
    return out


_LABELS = {
    "z": "z",
    "p1_xy": "P@1 zh->en",
    "p1_yx": "P@1 en->zh",
    "cka_unbiased": "CKA (debiased)",
    "cka": "CKA (biased)",
}


def _p_best(rec: Mapping[str, Any] | None) -> str:
    """`` (p best site 0.001)`` where the sweep made a permutation null."""
    p = (rec or {}).get("p_best_site")
    return "" if p is None else f" (p best site {p:.3f})"


def _fixed(rec: Mapping[str, Any]) -> dict[str, Any]:
    """A record of a site named in advance (embed, L0): tested by its own permutation
    p-value, not by the best-of-all-sites one (it was not picked for being the best)."""
    return {**rec, "p_best_site": rec.get("p_value")}


def _lex(rec: Mapping[str, Any] | None) -> str:
    if rec and rec.get("no_shared_tokens") and rec.get("value") is None:
        return "no shared tokens (no alignment)"
    if rec and rec.get("value") is None and "no shared tokens" in str(rec.get("undefined_reason")):
        return "no shared tokens (no alignment)"
    return _ci(rec)


def _sites_above(
    align: Mapping[str, Any], ctl: Mapping[str, Any] | None, pair: list[str], pool: str
) -> tuple[str, int]:
    """``("k of n sites", n)``: sites where the model's z interval lies above the control's."""
    if not ctl:
        return "", 0
    sites = list(align.get("sites") or [])
    above = []
    for site in sites:
        m, c = _record(align, pair, pool, site), _record(ctl, pair, pool, site)
        if not m or not c or m.get("value") is None or c.get("value") is None:
            continue
        m_lo = m["value"] if m.get("ci_low") is None else m["ci_low"]
        c_hi = c["value"] if c.get("ci_high") is None else c["ci_high"]
        if m_lo > c_hi:
            above.append(site)
    if not above:
        return "none of them", len(sites)
    from xlalign.studies.findings import site_ranges

    return f"{len(above)} of them ({site_ranges(above, sites)})", len(sites)


def _token_notes(origin: Mapping[str, Any], pool: str) -> list[str]:
    """What the origin study adds at the first block: identical last tokens and templates."""
    out = []
    groups = {lang: d["embed"] for lang, d in (origin.get("identical_last_token") or {}).items()
              if "embed" in d}  # fmt: skip
    if any(g["identical"] for g in groups.values()):
        counts = " and ".join(f"{g['distinct']} in {lang}" for lang, g in groups.items())
        out.append(
            f"At the embedding the {origin.get('n_pairs')} last-token vectors take only {counts} "
            "distinct values (the prompts end in a few tokens), so z there measures which "
            "pairs end in corresponding tokens, not what the text means."
        )
    l0: Mapping[str, Any] = next(
        (r for r in origin.get("decomposition", []) if r["site"] == "L0"), {}
    )
    nonid, strat = l0.get("z_last_nonidentical"), l0.get("z_stratified")
    ctl_l0: Mapping[str, Any] = next(
        (r for r in (origin.get("control") or {}).get("decomposition", []) if r["site"] == "L0"),
        {},
    )
    if nonid is not None and l0.get("n_last_nonidentical") != origin.get("n_pairs"):
        c_nonid = ctl_l0.get("z_last_nonidentical")
        out.append(
            f"Without the pairs whose last tokens are identical ({l0.get('n_last_nonidentical')} "
            f"pairs left), L0 z = {_f(nonid)}"
            + (f" (random weights: {_f(c_nonid)})." if c_nonid is not None else ".")
        )
    if strat is not None:
        c_strat = ctl_l0.get("z_stratified")
        out.append(
            f"Permuting only within a template category, L0 z = {_f(strat)}"
            + (f" (random weights: {_f(c_strat)})" if c_strat is not None else "")
            + ": what is left once the template is matched is instance-level alignment "
            "(no interval: the origin study's point values)."
        )
    return out
