"""The stages after capture, each on the run and its control: the sweep and its findings (``xlalign align``), the origin study (``xlalign origin``) and the logit lens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from xlalign.data.corpus import ParallelCorpus, load_corpus
from xlalign.errors import RunError, XlalignError
from xlalign.models.loading import LoadedModel, ModelOptions
from xlalign.pipeline.config import StudyConfig
from xlalign.pipeline.reuse import corpus_for, ensure_control, ensure_run
from xlalign.store.files import CONTROL_DIR, MANIFEST, atomic_write_json, json_safe, read_json
from xlalign.store.lock import busy_message, folder_lock, holder, reading
from xlalign.store.run import Run, check_control, load_run
from xlalign.studies.findings import summary_lines, write_findings
from xlalign.studies.layers import SweepConfig
from xlalign.studies.neurons import NeuronsConfig
from xlalign.studies.provenance import ALIGNMENT, stale_sweep, sweep_inputs

# ---------------------------------------------------------------------------------------------
# align with its controls


def run_align(
    run: Path, config: SweepConfig, output: Path | None = None, *, progress: bool = True
) -> tuple[dict[str, Any], list[str], dict[str, Path]]:
    """:func:`_run_align` holding the output folder's write lock (see :mod:`xlalign.store.lock`).

    Taking the lock first also refuses a read-only output folder before any computation.
    """
    with reading(), folder_lock(Path(output or run), "xlalign align"):
        return _run_align(run, config, output, progress=progress)


def _run_align(
    run: Path, config: SweepConfig, output: Path | None = None, *, progress: bool = True
) -> tuple[dict[str, Any], list[str], dict[str, Path]]:
    """Sweep a run, its random-weights control if it has one, and write ``findings.json``.

    The control is the complete run in ``RUN/control-random-init`` (as ``xlalign run``
    leaves it), checked to belong to the run (:func:`~xlalign.store.run.check_control`: a
    control of another corpus or model is an error) and swept with the same configuration; its
    ``alignment.json`` goes into ``OUTPUT/control-random-init`` (the run's own control folder
    when ``output`` is the run), so nothing is written outside ``output``. A control that
    another process is writing, or that cannot be read, is an error, never a sweep without it.
    The lexical baseline is part of the sweep, so ``findings.json`` is always written
    (with verdict ``no-control`` where no control exists). Returns the model's sweep, the
    summary lines (from ``findings.json``) and the paths written.
    """
    from xlalign.studies.findings import findings_for_sweep
    from xlalign.studies.layers import layer_sweep, write_alignment

    loaded = load_run(run)
    ctl_path = Path(run) / CONTROL_DIR
    control = None
    if (ctl_path / MANIFEST).exists():  # refused before anything is written
        busy = holder(ctl_path)
        if busy is not None:
            raise RunError(
                busy_message(ctl_path, busy) + "; run align again once it is done (a sweep "
                "without its control would read as having none)"
            )
        try:
            control = load_run(ctl_path)
        except XlalignError as e:
            raise RunError(
                f"the random-weights control in {ctl_path} cannot be swept ({e}); resume or "
                "delete it (a sweep without its control would read as having none)"
            ) from None
        check_control(loaded, control)
    result = layer_sweep(loaded, config, progress=progress)
    out = Path(output or run)
    paths = write_alignment(result, out)
    control_alignment = None
    note = None
    ctl_out = out / CONTROL_DIR  # the run's own control folder when out is the run
    if control is not None:
        with folder_lock(ctl_out, "xlalign align"):  # its alignment.* is written there
            control_alignment = layer_sweep(control, config, progress=progress)
            for name, p in write_alignment(control_alignment, ctl_out).items():
                paths[f"control_{name}"] = p
    stratify = "category" if config.stratify is None and "category" in loaded.meta else None
    findings = findings_for_sweep(
        loaded, result, control_alignment, config, stratify=stratify, control=control
    )
    if note:
        findings["warnings"].append(note)
    findings["inputs"] = sweep_inputs(
        paths["json"], ctl_out / ALIGNMENT if control_alignment is not None else None
    )
    paths["findings"] = write_findings(findings, out)
    return result, summary_lines(read_json(paths["findings"])), paths


# ---------------------------------------------------------------------------------------------
# origin in one step


def run_origin(
    *,
    run: Path | None,
    model: str | None,
    data: Path | None,
    output: Path | None,
    **kwargs: Any,
) -> tuple[dict[str, Any], list[str], Path]:
    """Run the origin study on a run folder (or extract one first); write ``origin.json``.

    Holds the folder's write lock throughout (see :mod:`xlalign.store.lock`).
    """
    folder = run if run is not None else output
    assert folder is not None
    with reading(), folder_lock(folder, "xlalign origin"):
        return _run_origin(run=run, model=model, data=data, output=output, **kwargs)


def _run_origin(
    *,
    run: Path | None,
    model: str | None,
    data: Path | None,
    output: Path | None,
    sites: str = "all",
    batch_size: int = 32,
    device: str = "auto",
    dtype: str | None = None,
    config: Any = None,
    control_seed: int | None = None,
    cached_npz: Path | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], list[str], Path]:
    """Run the origin study on a run folder (or extract one first); write ``origin.json``."""
    from xlalign.studies.findings import findings_for_origin
    from xlalign.studies.origin import OriginConfig, origin_study, summarize

    cfg = config or OriginConfig()
    options = ModelOptions(device=device, dtype=dtype)
    if run is not None:
        loaded = load_run(run)
        corpus = None
    else:
        assert model is not None and data is not None and output is not None
        langs = list(cfg.langs) if cfg.langs else None
        corpus = load_corpus(data, langs)
        loaded, _ = ensure_run(
            model, corpus, output, langs=list(corpus.languages), sites=sites,
            batch_size=batch_size, options=options, progress=progress,
        )  # fmt: skip
    control = None
    control_info = None
    if control_seed is not None:
        corpus = corpus or corpus_for(loaded, data)
        control, _ = ensure_control(
            loaded, corpus, control_seed, options=options, batch_size=batch_size,
            progress=progress,
        )  # fmt: skip
        control_info = {"seed": control_seed}
    result = origin_study(
        loaded, cfg, control=control, control_info=control_info, cached_npz=cached_npz
    )
    path = loaded.path / "origin.json"
    atomic_write_json(path, result)
    # the lexical baseline is always there, so findings.json is always written
    sweep_path = loaded.path / "alignment.json"
    sweep = read_json(sweep_path) if sweep_path.is_file() else None
    if sweep is not None and stale_sweep(sweep, loaded) is not None:
        sweep = None  # a sweep of arrays extracted since: not read beside this origin study
    if control is None and (loaded.path / CONTROL_DIR / MANIFEST).is_file():
        try:  # a control made before: its z gets an interval too
            control = load_run(loaded.path / CONTROL_DIR)
            check_control(loaded, control)
        except XlalignError:
            control = None
    doc = findings_for_origin(result, run=loaded, control=control, alignment=sweep)
    doc["inputs"] = sweep_inputs(sweep_path if sweep is not None else None, None)
    findings = read_json(write_findings(doc, loaded.path))
    return result, [*summarize(result), *summary_lines(findings)], path


# ---------------------------------------------------------------------------------------------
# the study's lens and findings


def lens_stage(
    run: Run, control: Run | None, cfg: StudyConfig, progress: bool
) -> tuple[dict[str, Any] | None, str]:
    """The logit lens of a causal LM's run (and its control) -> ``(lens.json doc, note)``.

    Encoders have no LM head: the stage is skipped and the note says so.
    """
    from xlalign.studies.lens import (
        LensConfig,
        control_reference,
        lens_study,
        write_lens,
    )

    if not cfg.lens:
        return None, "skipped: not asked for (lens = false)"
    if not run.manifest.get("is_causal_lm"):
        arch = run.manifest.get("architecture") or "the model"
        return None, f"skipped: {arch} is not a causal LM, no LM head to decode through"
    if "last" not in run.pools:
        return None, "skipped: the run has no last pool"
    lcfg = LensConfig(n_boot=max(1, cfg.n_boot), seed=cfg.seed, device=cfg.device)
    doc = lens_study(run, lcfg, progress=progress)
    if control is not None:
        control_doc = lens_study(control, lcfg, progress=progress)
        write_lens(control_doc, control.path)
        doc["control"] = control_reference(control_doc)
    write_lens(doc, run.path)
    return doc, "computed"


def study_findings(
    run: Run,
    alignment: Mapping[str, Any],
    control_alignment: Mapping[str, Any] | None,
    origin: Mapping[str, Any] | None,
    sweep_cfg: SweepConfig,
    label: str | None = None,
    control: Run | None = None,
) -> dict[str, Any]:
    """The study's ``findings.json``: the sweep's findings, plus the origin study's cautions."""
    from xlalign.studies.findings import findings_for_sweep

    stratify = "category" if sweep_cfg.stratify is None and "category" in run.meta else None
    findings = findings_for_sweep(
        run, alignment, control_alignment, sweep_cfg, label=label or run.manifest.get("model"),
        stratify=stratify, control=control,
    )  # fmt: skip
    unk = ((origin or {}).get("tokenizer") or {}).get("unk_rate") or {}
    for lang, rate in unk.items():
        if rate > 0.05:
            findings["warnings"].append(
                f"{rate:.0%} of {lang} tokens are unknown to this tokenizer; its numbers say "
                "little about that language"
            )
    return findings


# ---------------------------------------------------------------------------------------------
# language-specific neurons


def neurons_stage(
    run: Run, corpus: ParallelCorpus, cfg: StudyConfig, progress: bool
) -> tuple[dict[str, Any] | None, str]:
    """The neuron study of the run's model, into the run folder -> ``(neurons.json doc, note)``.

    Decoders only (the ablation measures next-token NLL); a model whose MLP the study does not
    know is skipped with the reason.
    """
    from xlalign.models.architecture import mlp_activations
    from xlalign.models.loading import load_model
    from xlalign.studies.neurons import NEURONS_FILE, neuron_study, write_neurons

    if not cfg.neurons:
        return None, "skipped: not asked for (neurons = false)"
    if not run.manifest.get("is_causal_lm"):
        arch = run.manifest.get("architecture") or "the model"
        return None, f"skipped: {arch} is not a causal LM (the ablation measures next-token NLL)"
    ncfg = cfg.neurons_config()
    source = {
        "model_key": run.manifest.get("model_key"),
        "corpus_fingerprint": run.manifest.get("corpus_fingerprint"),
        "languages": list(run.languages),
        "settings": ncfg.to_json(),
    }
    stored = run.path / NEURONS_FILE
    if stored.is_file():  # the same run and settings: no forward pass runs twice
        try:
            old = read_json(stored)
        except ValueError:
            old = None
        if isinstance(old, dict) and old.get("source") == json_safe(source):
            return old, "reused"
    loaded = load_model(cfg.model, cfg.model_options())
    try:
        mlp_activations(loaded.adapter)
        doc, sel = neuron_study(loaded, corpus, list(run.languages), ncfg, progress=progress)
    except XlalignError as e:
        return None, f"skipped: {e}"
    doc["source"] = source
    write_neurons(doc, sel, run.path)
    return read_json(stored), "computed"


# ---------------------------------------------------------------------------------------------
# steering the output language


def steer_stage(run: Run, cfg: StudyConfig, progress: bool) -> tuple[dict[str, Any] | None, str]:
    """The steering study of the run's model, into the run folder -> ``(steer.json doc, note)``.

    Only when asked (``--steer FROM:TO``); an encoder's run is skipped with the reason. A
    ``steer.json`` of the same run and settings is reused.
    """
    from xlalign.studies.steer import STEER_FILE, steer_study, write_steer

    scfg = cfg.steer_config()
    if scfg is None:
        return None, "skipped: not asked for (--steer FROM:TO)"
    if not run.manifest.get("is_causal_lm"):
        arch = run.manifest.get("architecture") or "the model"
        return None, f"skipped: {arch} is not a causal LM (steering generates text)"
    key = {
        "model_key": run.manifest.get("model_key"),
        "corpus_fingerprint": run.manifest.get("corpus_fingerprint"),
        "settings": scfg.to_json(),
    }
    stored = run.path / STEER_FILE
    if stored.is_file():  # the same run and settings: no generation runs twice
        try:
            old = read_json(stored)
        except ValueError:
            old = None
        if isinstance(old, dict) and old.get("reuse_key") == json_safe(key):
            return old, "reused"
    doc = steer_study(run, scfg, progress=progress)
    doc["reuse_key"] = key
    write_steer(doc, run.path)
    return read_json(stored), "computed"


def run_neurons(
    model: str | LoadedModel,
    corpus: ParallelCorpus,
    langs: Sequence[str] | None = None,
    output: str | Path | None = None,
    config: NeuronsConfig | None = None,
    *,
    options: ModelOptions | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], list[str], dict[str, Path]]:
    """``xlalign neurons``: the neuron study of ``model`` on ``corpus``, written into ``output``.

    Writes ``neurons.json``, ``neurons/<lang>.npy``, ``neurons/activation_probs.npy`` and the
    figure ``fig_neurons.png``/``.svg`` (holding the folder's write lock). Returns the document,
    the summary lines and the paths written.
    """
    from xlalign.models.loading import load_model
    from xlalign.report.figures import save_figure
    from xlalign.report.neurons import neurons_figure
    from xlalign.studies.neurons import neuron_study, summary_lines, write_neurons

    lang_list = list(langs) if langs else list(corpus.languages)
    for lang in lang_list:
        corpus.text(lang)  # a clear error naming the corpus's languages
    out = Path(output) if output is not None else None
    lock = folder_lock(out, "xlalign neurons") if out is not None else nullcontext()
    with lock:
        loaded = model if isinstance(model, LoadedModel) else load_model(model, options)
        doc, sel = neuron_study(loaded, corpus, lang_list, config, progress=progress)
        paths: dict[str, Path] = {}
        if out is not None:
            paths = write_neurons(doc, sel, out)
            png, svg = save_figure(neurons_figure(doc), out, "neurons")
            paths.update(figure_png=png, figure_svg=svg)
    return doc, summary_lines(doc), paths


def neurons(
    model: str | LoadedModel,
    corpus: ParallelCorpus | str | Path,
    langs: Sequence[str] | None = None,
    output: str | Path | None = None,
    config: NeuronsConfig | None = None,
    *,
    options: ModelOptions | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """``xlalign.neurons(...)``: the neuron study's ``neurons.json`` document (see
    :mod:`xlalign.studies.neurons`); with ``output``, also written there with its figure.

    ``corpus``: a :class:`~xlalign.data.corpus.ParallelCorpus` or a file/folder for
    :func:`~xlalign.data.corpus.load_corpus`.
    """
    if not isinstance(corpus, ParallelCorpus):
        corpus = load_corpus(corpus, list(langs) if langs else None)
    doc, _lines, _paths = run_neurons(
        model, corpus, langs, output, config, options=options, progress=progress
    )
    return doc
