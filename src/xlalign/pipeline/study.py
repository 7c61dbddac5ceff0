"""The whole study in one call: extract -> align -> origin -> report, reusing what is on disk.

A study folder holds the trained model's run (the store), the random-weights control's run in
``control-random-init/``, and the study's outputs beside them: ``alignment.json``,
``origin.json``, ``findings.json`` (what survives the controls; the console summary and the
report's first section are made from it), ``report.html``, ``report.md``, figures,
``config.toml`` (the resolved
configuration) and ``provenance.json``. Running the same study again on the same folder reuses
the stored activations: no forward pass runs twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from xlalign.errors import XlalignError
from xlalign.pipeline.config import StudyConfig, config_to_toml, study_corpus
from xlalign.pipeline.provenance import StageClock, build_provenance, source_lines
from xlalign.pipeline.reuse import ensure_control, ensure_run
from xlalign.pipeline.stages import lens_stage, neurons_stage, steer_stage, study_findings
from xlalign.store.files import atomic_write_json, atomic_write_text, read_json
from xlalign.store.lock import folder_lock, reading
from xlalign.store.run import Run
from xlalign.studies.findings import summary_lines, write_findings
from xlalign.studies.provenance import ALIGNMENT, sweep_inputs


def run_study(
    cfg: StudyConfig,
    *,
    command: list[str] | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """:func:`_run_study` holding the study folder's write lock (see :mod:`xlalign.store.lock`).

    The control's run inside it is locked by its own extraction, like any run.
    """
    with reading(), folder_lock(Path(cfg.output), "xlalign run"):
        return _run_study(cfg, command=command, progress=progress, say=say)


def _run_study(
    cfg: StudyConfig,
    *,
    command: list[str] | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run extract -> align -> origin -> report into ``cfg.output``; returns what was written.

    The returned dict has ``paths`` (name -> file), ``summary`` (lines) and ``stages``
    (what each stage did and how long it took).
    """
    from xlalign.data.problems import generate_problems
    from xlalign.studies.layers import layer_sweep, write_alignment
    from xlalign.studies.origin import OriginConfig, origin_study

    started = time.perf_counter()
    out = Path(cfg.output)
    langs = list(cfg.langs) or None
    if cfg.problems is not None:
        corpus = generate_problems(cfg.problems, cfg.problems_seed)
        if langs:
            corpus = corpus.select(langs)
    else:
        corpus = study_corpus(str(cfg.data), cfg.data_n, cfg.seed, langs)
    langs = list(corpus.languages)
    use_control = cfg.control == "random-init"
    n_stages = (7 if use_control else 6) + (cfg.steer is not None)
    steer_cfg = cfg.steer_config()
    if steer_cfg is not None:  # refused before any forward pass
        for lang in (steer_cfg.source, steer_cfg.target):
            if lang not in langs:
                raise XlalignError(
                    f"--steer {cfg.steer}: {lang} is not a language of the study "
                    f"({', '.join(langs)})"
                )
    clock = StageClock(say)
    options = cfg.model_options()
    common: dict[str, Any] = dict(
        langs=langs, sites=cfg.sites, batch_size=cfg.batch_size, progress=progress,
    )  # fmt: skip
    with clock.stage("extract", n_stages, 1):
        run, state = ensure_run(cfg.model, corpus, out, options=options, **common)
        clock.notes["extract"] = state
    control = None
    if use_control:
        with clock.stage("extract control (random-init)", n_stages, 2):
            control, cstate = ensure_control(
                run, corpus, cfg.control_seed, options=options, sites=cfg.sites,
                batch_size=cfg.batch_size, progress=progress,
            )  # fmt: skip
            clock.notes["extract control (random-init)"] = cstate
    sweep_cfg = cfg.sweep_config()
    k = 3 if use_control else 2
    with clock.stage("align", n_stages, k):
        alignment = layer_sweep(run, sweep_cfg, progress=progress)
        paths = {f"alignment_{n}": p for n, p in write_alignment(alignment, out).items()}
        control_alignment = None
        if control is not None:
            control_alignment = layer_sweep(control, sweep_cfg, progress=progress)
            paths.update(
                {
                    f"control_alignment_{n}": p
                    for n, p in write_alignment(control_alignment, control.path).items()
                }
            )
    with clock.stage("origin", n_stages, k + 1):
        category = "category" if "category" in run.meta else None
        ocfg = OriginConfig(
            null=cfg.null, n_perms=cfg.n_perms, seed=cfg.seed, stratify=category,
            langs=(langs[0], langs[1]),
        )  # fmt: skip
        origin = origin_study(
            run, ocfg, control=control,
            control_info={"seed": cfg.control_seed} if control is not None else None,
        )  # fmt: skip
        atomic_write_json(out / "origin.json", origin)
        paths["origin"] = out / "origin.json"
    with clock.stage("lens", n_stages, k + 2):
        lens, lens_note = lens_stage(run, control, cfg, progress)
        clock.notes["lens"] = lens_note
        if lens is not None:
            paths["lens"] = out / "lens.json"
    with clock.stage("neurons", n_stages, k + 3):
        neurons, neurons_note = neurons_stage(run, corpus, cfg, progress)
        clock.notes["neurons"] = neurons_note
        if neurons is not None:
            paths["neurons"] = out / "neurons.json"
    steer = None
    if steer_cfg is not None:
        k += 1
        with clock.stage("steer", n_stages, k + 3):
            steer, steer_note = steer_stage(run, cfg, progress)
            clock.notes["steer"] = steer_note
            if steer is not None:
                paths["steer"] = out / "steer.json"
    findings = study_findings(
        run, alignment, control_alignment, origin, sweep_cfg, cfg.label, control
    )
    findings["inputs"] = sweep_inputs(
        out / ALIGNMENT, control.path / ALIGNMENT if control is not None else None
    )
    paths["findings"] = write_findings(findings, out)
    findings = read_json(paths["findings"])  # the summary and report read the file alone
    summary = summary_lines(findings)
    summary += source_lines(run, cfg)
    atomic_write_text(out / "config.toml", config_to_toml(cfg))
    paths["config"] = out / "config.toml"
    with clock.stage("report", n_stages, k + 4):
        provenance = build_provenance(run, control, corpus, cfg, command, clock, started)
        atomic_write_json(out / "provenance.json", provenance)
        paths["provenance"] = out / "provenance.json"
        if cfg.report:
            report = _write_report(
                out,
                cfg,
                run,
                alignment,
                control_alignment,
                origin,
                provenance,
                findings,
                lens,
                neurons,
                steer,
            )
            paths.update(report)
    provenance["wall_time_s"]["report"] = clock.times.get("report")
    provenance["wall_time_s"]["total"] = round(time.perf_counter() - started, 3)
    atomic_write_json(out / "provenance.json", provenance)
    return {
        "paths": paths,
        "summary": summary,
        "neurons": [f"neurons: {f['statement']}" for f in (neurons or {}).get("findings") or []]
        + [f"steer: {f['statement']}" for f in (steer or {}).get("findings") or []],
        "stages": dict(clock.times),
        "run": run,
    }


def _best_site(alignment: Mapping[str, Any], pool: str) -> str | None:
    recs = [
        r
        for r in alignment["records"]
        if r["metric"] == "z"
        and r["pool"] == pool
        and r["value"] is not None
        and r["site"] in alignment["sites"]
    ]
    return max(recs, key=lambda r: r["value"])["site"] if recs else None


def _write_report(
    out: Path,
    cfg: StudyConfig,
    run: Run,
    alignment: dict[str, Any],
    control_alignment: dict[str, Any] | None,
    origin: dict[str, Any],
    provenance: dict[str, Any],
    findings: dict[str, Any],
    lens: dict[str, Any] | None = None,
    neurons: dict[str, Any] | None = None,
    steer: dict[str, Any] | None = None,
) -> dict[str, Path]:
    from xlalign.report import HeatmapInput, PcaInput, ReportInputs, build_report

    lx, ly = origin["languages"]
    pool = "mean" if "mean" in run.pools else run.pools[0]
    categories = run.meta.get("category")
    deepest = run.sites[-1]
    pca_sites = [s for s in ("embed", "L0", deepest) if s in run.sites]
    pca = {
        site: PcaInput(
            x=np.asarray(run.array(lx, site, pool)),
            y=np.asarray(run.array(ly, site, pool)),
            lang_x=lx,
            lang_y=ly,
            categories=categories,
        )
        for site in dict.fromkeys(pca_sites)
    }
    hm_site = cfg.heatmap_site or _best_site(alignment, pool) or "L0"
    if hm_site not in run.sites:
        raise XlalignError(f"--heatmap-site '{hm_site}' not in run: it has {', '.join(run.sites)}")
    heatmap = HeatmapInput(
        x=np.asarray(run.array(lx, hm_site, pool)),
        y=np.asarray(run.array(ly, hm_site, pool)),
        site=hm_site,
        pool=pool,
        lang_x=lx,
        lang_y=ly,
        categories=categories,
    )
    inputs = ReportInputs(
        title=f"xlalign: {cfg.label or run.manifest.get('model')} ({lx}/{ly})",
        alignment=alignment,
        control_alignment=control_alignment,
        origin=origin,
        pca=pca,
        heatmap=heatmap,
        provenance=provenance,
        summary_lines=[*summary_lines(findings, per_finding=False), *source_lines(run, cfg)],
        findings=findings,
        lens=lens,
        neurons=neurons,
        steer=steer,
    )
    return {f"report_{k}": v for k, v in build_report(out, inputs).items()}


def bundled_model_path() -> Path:
    """The folder of the real all-MiniLM-L6-v2 weights (named model ``minilm``)."""
    from xlalign.models.named import model_folder

    return model_folder("minilm")
