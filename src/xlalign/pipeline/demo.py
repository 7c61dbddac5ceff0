"""``xlalign demo``: the study's question answered on a real model, offline.

Two studies into one folder, each with the random-weights control:

- ``problems/``: the study's 200 zh/en problems (templated, five categories);
- ``hsk/``: HSK graded zh/en sentence pairs (real, untemplated text), unless ``hsk_pairs`` is 0.

``answer.md`` then answers the study's question ("where does the free z at the first block
come from?") from the two ``origin.json`` files: last-token z after the first block against
the embedding, the same numbers for the random-init control, the z with identical last tokens
removed, and the within-template (per-category) null.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlalign.errors import XlalignError

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
    origins = {
        name: json.loads((out / name / "origin.json").read_text(encoding="utf-8"))
        for name in studies
    }
    text = answer(origins, label)
    path = out / "answer.md"
    path.write_text(text, encoding="utf-8")
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


def _site(origin: Mapping[str, Any], site: str) -> Mapping[str, Any]:
    return next((r for r in origin.get("decomposition", []) if r["site"] == site), {})


def answer(origins: Mapping[str, Mapping[str, Any]], label: str) -> str:
    """The study's question answered from ``origin.json`` contents (markdown)."""
    lines = [
        f"{ANSWER_TITLE} ({label})",
        "",
        "Last-token z of matched zh/en pairs against the scrambled null (exact permutation "
        "moments). L0 = output of the first block; embed = its input.",
        "",
        "| corpus | pairs | z embed | z after block 0 | control embed | control L0 "
        "| L0 z, identical last tokens removed (n) | L0 z, within-template null |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, o in origins.items():
        ctl = o.get("control") or {}
        l0 = _site(o, "L0")
        lines.append(
            f"| {name} | {o['n_pairs']} | {_f(o.get('z_raw_embed_last_token'))} "
            f"| {_f(o.get('z_l0_output_last_token'))} "
            f"| {_f(ctl.get('z_raw_embed_last_token'))} | {_f(ctl.get('z_l0_output_last_token'))} "
            f"| {_f(l0.get('z_last_nonidentical'))} ({l0.get('n_last_nonidentical', '?')}) "
            f"| {_f(l0.get('z_stratified'))} |"
        )
    lines.append("")
    lines += _verdict(origins)
    lines += [
        "",
        "Each study's full report (all sites, P@1, CKA, the lexical and token decompositions) "
        "is in its folder: " + ", ".join(f"{n}/report.html" for n in origins) + ".",
        "",
    ]
    return "\n".join(lines)


def _verdict(origins: Mapping[str, Mapping[str, Any]]) -> list[str]:
    out = []
    for name, o in origins.items():
        z_emb, z_l0 = o.get("z_raw_embed_last_token"), o.get("z_l0_output_last_token")
        ctl = o.get("control") or {}
        c_l0 = ctl.get("z_l0_output_last_token")
        l0 = _site(o, "L0")
        parts = [f"- **{name}**:"]
        if z_emb is not None and z_l0 is not None:
            share = z_emb / z_l0 if z_l0 > 0 else None
            parts.append(
                f"the embedding alone gives z = {_f(z_emb)}, the first block's output {_f(z_l0)}"
                + (f" (the embedding carries {share:.0%} of it)." if share is not None else ".")
            )
        groups = {lang: d["embed"] for lang, d in (o.get("identical_last_token") or {}).items()}
        if any(g["identical"] for g in groups.values()):
            counts = " and ".join(f"{g['distinct']} in {lang}" for lang, g in groups.items())
            parts.append(
                f"At the embedding the {o['n_pairs']} last-token vectors take only {counts} "
                "distinct values (the prompts end in a few tokens), so z there measures which "
                "pairs end in corresponding tokens, not what the text means."
            )
        if c_l0 is not None and z_l0 is not None:
            if z_l0 > 0 and c_l0 >= 0.8 * z_l0:
                parts.append(
                    f"The random-weights control reaches {_f(c_l0)} at L0: most of this "
                    "alignment needs no training (token identity and template structure)."
                )
            else:
                parts.append(
                    f"The random-weights control reaches {_f(c_l0)} at L0, so training adds "
                    f"{_f(z_l0 - c_l0)} over an untrained network of the same shape."
                )
        nonid, strat = l0.get("z_last_nonidentical"), l0.get("z_stratified")
        if nonid is not None:
            parts.append(
                f"Without pairs whose last tokens are identical, L0 z = {_f(nonid)} "
                f"({l0.get('n_last_nonidentical')} pairs)."
            )
        if strat is not None:
            parts.append(
                f"Permuting only within a template category, L0 z = {_f(strat)}: what is left "
                "once the template is matched is instance-level alignment."
            )
        out.append(" ".join(parts))
    return out
