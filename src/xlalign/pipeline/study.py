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

import hashlib
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xlalign.corpus import ParallelCorpus, load_corpus
from xlalign.errors import RunError, XlalignError
from xlalign.lock import folder_lock
from xlalign.models import ModelOptions
from xlalign.store import (
    CONTROL_DIR,
    CORPUS_FILE,
    MANIFEST,
    Run,
    atomic_write_json,
    load_run,
    read_json,
)
from xlalign.studies.findings import summary_lines, write_findings
from xlalign.studies.layers import DEFAULT_METRICS, SweepConfig

STUDY_POOLS = ("last", "mean", "tokens")


# ---------------------------------------------------------------------------------------------
# runs on disk: reuse, resume or capture


def ensure_run(
    model: str,
    corpus: ParallelCorpus,
    output: Path,
    *,
    langs: list[str],
    sites: str = "all",
    pools: tuple[str, ...] = STUDY_POOLS,
    batch_size: int = 32,
    options: ModelOptions | None = None,
    progress: bool = True,
) -> tuple[Run, str]:
    """The run in ``output``: reused if complete and made from the same inputs, else captured.

    ``options`` says how to load the model (its ``random_init_seed`` makes the control's run).

    Returns the run and what happened: ``"reused"``, ``"resumed"`` or ``"captured"``. A complete
    run made from another model, corpus or control seed is an error (never silently mixed).
    """
    from xlalign.capture import extract

    opts = options or ModelOptions()
    state = "captured"
    manifest_path = output / MANIFEST
    if manifest_path.exists():
        old = read_json(manifest_path)
        if old.get("complete"):
            _check_reusable(
                old,
                output,
                model,
                corpus,
                langs,
                sites,
                pools,
                opts,
                content=_content_diffs(old, output, model, opts),
            )
            _save_corpus(corpus, output)
            return load_run(output), "reused"
        state = "resumed"
    run = extract(
        model, corpus, langs, sites=sites, pools=pools, batch_size=batch_size, output=output,
        resume=state == "resumed", options=opts, progress=progress,
    )  # fmt: skip
    _save_corpus(corpus, output)
    return run, state


def _check_reusable(
    old: Mapping[str, Any],
    output: Path,
    model: str,
    corpus: ParallelCorpus,
    langs: list[str],
    sites: str,
    pools: tuple[str, ...],
    options: ModelOptions,
    content: list[str] | None = None,
) -> None:
    """Raise unless the complete run in ``output`` was made from exactly these inputs.

    ``content``: what :func:`_content_diffs` found different (weights, tokenizer, dtype, device).
    """
    from xlalign.models import dtype_name
    from xlalign.sites import parse_sites

    revision, random_init_seed = options.revision, options.random_init_seed
    dtype = options.dtype
    if dtype is not None and not isinstance(dtype, str):
        dtype = dtype_name(dtype)

    diffs = list(content or [])
    if old.get("model") != model:
        diffs.append(f"model differs (run: {old.get('model')})")
    if revision is not None and old.get("revision") != revision:
        diffs.append(f"revision differs (run: {old.get('revision')})")
    if dtype is not None and old.get("dtype") != dtype and not any("dtype" in d for d in diffs):
        diffs.append(f"dtype differs (run: {old.get('dtype')})")
    if old.get("corpus_fingerprint") != corpus.fingerprint():
        diffs.append("the corpus differs")
    if list(old.get("languages", [])) != list(langs):
        diffs.append(f"languages differ (run: {','.join(old.get('languages', []))})")
    has_final = bool((old.get("modules") or {}).get("final_norm"))
    try:
        wanted = parse_sites(sites, int(old.get("n_layers", 0)), has_final)
    except XlalignError:
        wanted = None
    if wanted != list(old.get("sites", [])):
        diffs.append(f"sites differ (run: {','.join(old.get('sites', []))})")
    have = list(old.get("pools", []))
    note = None
    if "pool_semantics" not in old:  # an older run: its pools under today's names
        legacy = load_run(output)
        have, note = list(legacy.pools), legacy.pool_note
    missing = [p for p in pools if p not in have]
    if missing:
        diffs.append(f"pool(s) {', '.join(missing)} missing" + (f" ({note})" if note else ""))
    if old.get("random_init_seed") != random_init_seed:
        diffs.append(f"random_init_seed differs (run: {old.get('random_init_seed')})")
    if diffs:
        raise RunError(
            f"'{output}' holds a complete run made from other inputs ({'; '.join(diffs)}); "
            "use a new folder, or delete this one to capture again"
        )


def _content_diffs(
    old: Mapping[str, Any], output: Path, model: str, options: ModelOptions
) -> list[str]:
    """What differs, by content, between the model as it is now and the one the run was made from.

    The weight files' fingerprint (a local folder; a Hub id is pinned by its revision), the
    tokenizer's fingerprint (compared with the one recorded, or with the run's saved copy for
    runs made before it was recorded), the dtype it would load in and the device type. The
    same path holding other weights is not the same model.
    """
    from transformers import AutoTokenizer

    from xlalign.models import (
        dtype_name,
        resolve_device,
        resolve_dtype,
        tokenizer_fingerprint,
        weights_fingerprint,
    )

    device, dtype = options.device, options.dtype
    revision, trust_remote_code = options.revision, options.trust_remote_code
    diffs: list[str] = []
    local = Path(model).expanduser()
    if local.is_dir():
        now = weights_fingerprint(local)
        if now != old.get("weights_fingerprint"):
            diffs.append(
                f"the weights at {model} differ (fingerprint run: "
                f"{old.get('weights_fingerprint')}, now: {now})"
            )
    source = str(local) if local.is_dir() else model
    try:
        tok = AutoTokenizer.from_pretrained(
            source, revision=revision, trust_remote_code=trust_remote_code
        )
        tok_now: str | None = tokenizer_fingerprint(tok)
    except (OSError, ValueError):
        tok_now = None
    tok_run = old.get("tokenizer_fingerprint")
    if tok_run is None and (output / "tokenizer").is_dir():
        tok_run = tokenizer_fingerprint(AutoTokenizer.from_pretrained(output / "tokenizer"))
    if tok_now is not None and tok_run is not None and tok_now != tok_run:
        diffs.append(f"the tokenizer differs (fingerprint run: {tok_run}, now: {tok_now})")
    torch_device = resolve_device(device)
    want = dtype_name(resolve_dtype(dtype, torch_device))
    if old.get("dtype") is not None and old.get("dtype") != want:
        diffs.append(f"dtype differs (run: {old.get('dtype')}, now: {want})")
    run_dev = str(old.get("device") or "").split(":")[0]
    if run_dev and run_dev != torch_device.type:
        diffs.append(f"device differs (run: {run_dev}, now: {torch_device.type})")
    return diffs


def _save_corpus(corpus: ParallelCorpus, output: Path) -> None:
    """Keep the corpus beside the run, so later studies (the control) need no --data."""
    path = output / CORPUS_FILE
    if not path.exists():
        corpus.to_jsonl(path)


def run_corpus(run: Run) -> ParallelCorpus:
    """The corpus a run was made from, from its saved copy."""
    path = run.path / CORPUS_FILE
    if not path.exists():
        raise RunError(
            f"{run.path} has no saved corpus ({CORPUS_FILE}); pass --data with the corpus the "
            "run was extracted from"
        )
    return load_corpus(path, list(run.languages))


# ---------------------------------------------------------------------------------------------
# align with its controls


def run_align(
    run: Path, config: SweepConfig, output: Path | None = None, *, progress: bool = True
) -> tuple[dict[str, Any], list[str], dict[str, Path]]:
    """:func:`_run_align` holding the output folder's write lock (see :mod:`xlalign.lock`).

    Taking the lock first also refuses a read-only output folder before any computation.
    """
    with folder_lock(Path(output or run), "xlalign align"):
        return _run_align(run, config, output, progress=progress)


def _run_align(
    run: Path, config: SweepConfig, output: Path | None = None, *, progress: bool = True
) -> tuple[dict[str, Any], list[str], dict[str, Path]]:
    """Sweep a run, its random-weights control if it has one, and write ``findings.json``.

    The control is the complete run in ``RUN/control-random-init`` (as ``xlalign run``
    leaves it), swept with the same configuration; its ``alignment.json`` goes into its own
    folder. The lexical baseline is part of the sweep, so ``findings.json`` is always written
    (with verdict ``no-control`` where no control exists). Returns the model's sweep, the
    summary lines (from ``findings.json``) and the paths written.
    """
    from xlalign.studies.findings import findings_for_sweep
    from xlalign.studies.layers import layer_sweep, write_alignment

    loaded = load_run(run)
    result = layer_sweep(loaded, config, progress=progress)
    out = Path(output or run)
    paths = write_alignment(result, out)
    control_alignment = None
    note = None
    ctl_path = Path(run) / CONTROL_DIR
    if (ctl_path / MANIFEST).is_file():
        try:
            with folder_lock(ctl_path, "xlalign align"):  # its alignment.* is written there
                control = load_run(ctl_path)
                control_alignment = layer_sweep(control, config, progress=progress)
                for name, p in write_alignment(control_alignment, ctl_path).items():
                    paths[f"control_{name}"] = p
        except XlalignError as e:
            note = f"the random-weights control in {ctl_path} was not swept: {e}"
            control_alignment = None
    stratify = "category" if config.stratify is None and "category" in loaded.meta else None
    findings = findings_for_sweep(loaded, result, control_alignment, config, stratify=stratify)
    if note:
        findings["warnings"].append(note)
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

    Holds the folder's write lock throughout (see :mod:`xlalign.lock`).
    """
    folder = run if run is not None else output
    assert folder is not None
    with folder_lock(folder, "xlalign origin"):
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
        corpus = corpus or _corpus_for(loaded, data)
        control, _ = ensure_run(
            str(loaded.manifest["model"]), corpus, loaded.path / CONTROL_DIR,
            langs=list(loaded.languages), sites=",".join(loaded.sites), batch_size=batch_size,
            options=options.replace(random_init_seed=control_seed), progress=progress,
        )  # fmt: skip
        control_info = {"seed": control_seed}
    result = origin_study(
        loaded, cfg, control=control, control_info=control_info, cached_npz=cached_npz
    )
    path = loaded.path / "origin.json"
    atomic_write_json(path, result)
    # the lexical baseline is always there, so findings.json is always written
    findings = read_json(write_findings(findings_for_origin(result), loaded.path))
    return result, [*summarize(result), *summary_lines(findings)], path


def _corpus_for(run: Run, data: Path | None) -> ParallelCorpus:
    """The corpus ``run`` was made from: ``data`` if given, else the copy kept in the run."""
    if data is not None:
        return load_corpus(data, list(run.languages))
    return run_corpus(run)


# ---------------------------------------------------------------------------------------------
# the whole study


@dataclass(frozen=True)
class StudyConfig:
    """One study, end to end (every field is an ``xlalign run`` flag and a ``--config`` key)."""

    model: str = ""
    """Hub id or local folder of the model."""
    data: str | None = None
    """Parallel corpus file or folder, or a built-in corpus: hsk (or use ``problems``)."""
    data_n: int | None = None
    """With a built-in --data: use this many rows (hsk: drawn by level with --seed)."""
    problems: int | None = None
    """Use the study's generated problem set with this many problems instead of ``data``."""
    problems_seed: int = 42
    """Seed of the generated problem set."""
    langs: tuple[str, ...] = ()
    """Languages (default: all in the corpus; the origin study uses the first two)."""
    output: str = "runs/study"
    """Study folder."""
    sites: str = "all"
    """Sites to capture."""
    batch_size: int = 32
    """Prompts per forward pass."""
    device: str = "auto"
    """cpu, cuda or auto."""
    dtype: str | None = None
    """float32, bfloat16 or float16 (default: fp32 on CPU, bf16 on CUDA)."""
    revision: str | None = None
    """Hub revision of the model."""
    trust_remote_code: bool = False
    """Run the model repository's own code (off unless asked)."""
    metrics: tuple[str, ...] = DEFAULT_METRICS
    """Sweep metrics."""
    null: str = "exact"
    """Null of the z statistic: exact or monte-carlo."""
    n_perms: int = 1000
    """Monte Carlo permutations."""
    seed: int = 42
    """Seed of the null and the bootstrap."""
    stratify: str | None = None
    """Metadata column for a stratified null in the sweep."""
    center: bool = False
    """Remove each language's mean vector in the sweep."""
    standardize: bool = False
    """z-score each dimension over both languages' rows before the sweep (rogue dimensions)."""
    pivot: str | None = None
    """Compare each language with this one only."""
    n_boot: int = 200
    """Bootstrap resamples for confidence intervals."""
    backend: str = "auto"
    """Array library of the sweep's metrics: numpy, torch, or auto (torch where CUDA is present)."""
    control: str | None = "random-init"
    """random-init adds the random-weights control; none turns it off."""
    control_seed: int = 0
    """Seed of the random-weights control."""
    heatmap_site: str | None = None
    """Site of the similarity heatmap (default: the site with the highest mean-pool z)."""
    report: bool = True
    """Write report.html and report.md."""
    lens: bool = True
    """Run the logit-lens stage (causal LMs; encoders skip it with the reason)."""
    label: str | None = None
    """Name of the model in the report and summary (default: the model id or path)."""

    def __post_init__(self) -> None:
        if not self.model:
            raise XlalignError("--model is required (a Hub id or a local model folder)")
        if (self.data is None) == (self.problems is None):
            raise XlalignError("give exactly one of --data FILE and --problems N")
        if self.langs and len(self.langs) < 2:
            raise XlalignError(f"--langs needs at least two languages, got {','.join(self.langs)}")
        if self.problems is not None and self.problems < 15:
            raise XlalignError(
                f"--problems must be at least 15 (3 per category), got {self.problems}"
            )
        if self.control not in (None, "none", "random-init"):
            raise XlalignError(f"--control must be random-init or none, got '{self.control}'")
        if self.batch_size < 1:
            raise XlalignError(f"--batch-size must be at least 1, got {self.batch_size}")
        self.sweep_config()  # checks the sweep's options now, before any forward pass

    def model_options(self) -> ModelOptions:
        """How this study loads its model (the control adds its ``random_init_seed``)."""
        return ModelOptions(
            dtype=self.dtype, device=self.device, revision=self.revision,
            trust_remote_code=self.trust_remote_code,
        )  # fmt: skip

    def sweep_config(self) -> SweepConfig:
        """The layer sweep's part of this study."""
        return SweepConfig(
            metrics=self.metrics, null=self.null, n_perms=self.n_perms, seed=self.seed,
            stratify=self.stratify, center=self.center, pivot=self.pivot, n_boot=self.n_boot,
            standardize=self.standardize, backend=self.backend,
        )  # fmt: skip


CONFIG_FIELDS = {f for f in StudyConfig.__dataclass_fields__}


def config_from_mapping(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Validate a config file's keys and types; returns the values as StudyConfig kwargs."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(StudyConfig)
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in CONFIG_FIELDS:
            raise XlalignError(
                f"{source}: unknown key '{key}'; known keys: "
                f"{', '.join(sorted(f.name for f in dataclasses.fields(StudyConfig)))}"
            )
        out[name] = _coerce(value, hints[name], f"{source}: key '{key}'")
    return out


def _coerce(value: Any, hint: Any, where: str) -> Any:
    import types
    import typing

    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise XlalignError(f"{where} must be a list of strings, got {value!r}")
        return tuple(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise XlalignError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise XlalignError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise XlalignError(f"{where} must be a string, got {value!r}")
        return value
    return value


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML study config (top-level keys, or a ``[study]`` table)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    if not path.exists():
        raise XlalignError(f"--config {path}: no such file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise XlalignError(f"--config {path}: not valid TOML ({e})") from None
    if "study" in data and isinstance(data["study"], dict):
        data = data["study"]
    return config_from_mapping(data, str(path))


def config_to_toml(cfg: StudyConfig) -> str:
    """The resolved config as TOML that ``--config`` reads back (None values left out)."""
    import tomli_w

    # tomli-w writes any text TOML can hold (non-BMP characters included), escaped correctly.
    values = {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in asdict(cfg).items()
        if value is not None
    }
    header = "# resolved configuration of this study (xlalign run --config config.toml)\n"
    return header + tomli_w.dumps(values)


@dataclass
class StageClock:
    """Wall time per stage, printed as one progress line per stage."""

    say: Callable[[str], None]
    times: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str, total: int, index: int) -> Iterator[None]:
        self.say(f"[{index}/{total}] {name} ...")
        t0 = time.perf_counter()
        yield
        self.times[name] = round(time.perf_counter() - t0, 3)
        note = f" ({self.notes[name]})" if name in self.notes else ""
        self.say(f"[{index}/{total}] {name} done in {self.times[name]:.1f} s{note}")


def run_study(
    cfg: StudyConfig,
    *,
    command: list[str] | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """:func:`_run_study` holding the study folder's write lock (see :mod:`xlalign.lock`).

    The control's run inside it is locked by its own extraction, like any run.
    """
    with folder_lock(Path(cfg.output), "xlalign run"):
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
    from xlalign.problems import generate_problems
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
    n_stages = 6 if use_control else 5
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
            control, cstate = ensure_run(
                str(run.manifest["model"]), corpus, out / CONTROL_DIR,
                options=options.replace(random_init_seed=cfg.control_seed), **common,
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
        lens, lens_note = _lens_stage(run, control, cfg, progress)
        clock.notes["lens"] = lens_note
        if lens is not None:
            paths["lens"] = out / "lens.json"
    findings = study_findings(run, alignment, control_alignment, origin, sweep_cfg, cfg.label)
    paths["findings"] = write_findings(findings, out)
    findings = read_json(paths["findings"])  # the summary and report read the file alone
    summary = summary_lines(findings)
    summary += source_lines(run, cfg)
    (out / "config.toml").write_text(config_to_toml(cfg), encoding="utf-8")
    paths["config"] = out / "config.toml"
    with clock.stage("report", n_stages, k + 3):
        provenance = _provenance(run, control, corpus, cfg, command, clock, started)
        atomic_write_json(out / "provenance.json", provenance)
        paths["provenance"] = out / "provenance.json"
        if cfg.report:
            report = _write_report(
                out, cfg, run, alignment, control_alignment, origin, provenance, findings, lens
            )
            paths.update(report)
    provenance["wall_time_s"]["report"] = clock.times.get("report")
    provenance["wall_time_s"]["total"] = round(time.perf_counter() - started, 3)
    atomic_write_json(out / "provenance.json", provenance)
    return {"paths": paths, "summary": summary, "stages": dict(clock.times), "run": run}


def _lens_stage(
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


def study_corpus(data: str, n: int | None, seed: int, langs: list[str] | None) -> ParallelCorpus:
    """``--data``: a built-in corpus name (:data:`xlalign.corpora.BUILTIN`) or a file/folder."""
    from xlalign.corpora import BUILTIN, load_builtin

    if data in BUILTIN and not Path(data).exists():
        corpus = load_builtin(data, n, seed)
        return corpus.select(langs) if langs else corpus
    if n is not None:
        raise XlalignError(f"--data-n goes with a built-in --data ({', '.join(BUILTIN)})")
    return load_corpus(Path(data), langs)


def _corpus_licence(cfg: StudyConfig) -> dict[str, str] | None:
    from xlalign.corpora import LICENCES

    name = cfg.data if cfg.problems is None else "problems"
    return LICENCES.get(str(name)) if name and not Path(str(name)).exists() else None


def source_lines(run: Run, cfg: StudyConfig) -> list[str]:
    """Where the weights and the corpus came from, when a reader must know: a GGUF model's
    dequantization, a built-in corpus's licence and attribution."""
    lines = []
    checkpoint = run.manifest.get("checkpoint") or {}
    if checkpoint.get("format") == "gguf":
        lines.append(
            f"weights: {checkpoint.get('note')}; file {checkpoint.get('file')} "
            f"({checkpoint.get('quantization')}, sha256 {str(checkpoint.get('sha256'))[:12]}...)"
        )
    licence = _corpus_licence(cfg)
    if licence is not None and cfg.data is not None:
        lines.append(
            f"corpus: {licence['name']}; {licence['licence']}; by {licence['attribution']}"
        )
    return lines


def study_findings(
    run: Run,
    alignment: Mapping[str, Any],
    control_alignment: Mapping[str, Any] | None,
    origin: Mapping[str, Any] | None,
    sweep_cfg: SweepConfig,
    label: str | None = None,
) -> dict[str, Any]:
    """The study's ``findings.json``: the sweep's findings, plus the origin study's cautions."""
    from xlalign.studies.findings import findings_for_sweep

    stratify = "category" if sweep_cfg.stratify is None and "category" in run.meta else None
    findings = findings_for_sweep(
        run, alignment, control_alignment, sweep_cfg, label=label or run.manifest.get("model"),
        stratify=stratify,
    )  # fmt: skip
    unk = ((origin or {}).get("tokenizer") or {}).get("unk_rate") or {}
    for lang, rate in unk.items():
        if rate > 0.05:
            findings["warnings"].append(
                f"{rate:.0%} of {lang} tokens are unknown to this tokenizer; its numbers say "
                "little about that language"
            )
    return findings


def _file_sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tokenizer_fingerprint(run: Run) -> str | None:
    folder = run.path / "tokenizer"
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file():
            h.update(p.name.encode())
            h.update((_file_sha256(p) or "").encode())
    return h.hexdigest()


def _provenance(
    run: Run,
    control: Run | None,
    corpus: ParallelCorpus,
    cfg: StudyConfig,
    command: list[str] | None,
    clock: StageClock,
    started: float,
) -> dict[str, Any]:
    m = run.manifest
    return {
        "versions": m.get("versions"),
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()}",
        "model": {
            "id": m.get("model"),
            "revision": m.get("revision"),
            "commit_hash": m.get("commit_hash"),
            "weights_fingerprint": m.get("weights_fingerprint"),
            "checkpoint": m.get("checkpoint"),
            "architecture": m.get("architecture"),
            "dtype": m.get("dtype"),
            "device": m.get("device"),
        },
        "tokenizer": {
            "name": m.get("tokenizer_name"),
            "fingerprint": _tokenizer_fingerprint(run),
            "adds_bos": m.get("adds_bos"),
        },
        "corpus": {
            "source": corpus.source,
            "fingerprint": corpus.fingerprint(),
            "rows": len(corpus),
            "languages": list(corpus.languages),
            "licence": _corpus_licence(cfg),
        },
        "control": None
        if control is None
        else {"kind": "random-init", "seed": cfg.control_seed, "run": str(control.path)},
        "command": command if command is not None else sys.argv,
        "stages": dict(clock.notes),
        "wall_time_s": dict(clock.times),
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
    )
    return {f"report_{k}": v for k, v in build_report(out, inputs).items()}


def bundled_model_path() -> Path:
    """The folder of the real all-MiniLM-L6-v2 weights (named model ``minilm``)."""
    from xlalign.named_models import model_folder

    return model_folder("minilm")
