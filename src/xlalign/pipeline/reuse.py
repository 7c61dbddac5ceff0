"""Reusing stored activations: a study folder's run is captured once, and reused only when model, tokenizer and corpus match."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xlalign.data.corpus import ParallelCorpus, load_corpus
from xlalign.data.quality import CorpusQualityWarning
from xlalign.errors import RunError, XlalignError
from xlalign.models.hub import hub_commit
from xlalign.models.loading import ModelOptions, resolve_source
from xlalign.store.files import CONTROL_DIR, CORPUS_FILE, MANIFEST, atomic_write_json, read_manifest
from xlalign.store.lock import folder_lock
from xlalign.store.run import Run, check_control, load_run, model_source

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
    compat: str = "exact",
) -> tuple[Run, str]:
    """The run in ``output``: reused if complete and made from the same inputs, else captured.

    ``options`` says how to load the model (its ``random_init_seed`` makes the control's run).

    Returns the run and what happened: ``"reused"``, ``"resumed"`` or ``"captured"``. A complete
    run made from another model, corpus or control seed is an error (never silently mixed).
    """
    from xlalign.capture.engine import extract

    opts = options or ModelOptions()
    state = "captured"
    manifest_path = output / MANIFEST
    if manifest_path.exists():
        old = read_manifest(manifest_path)  # a foreign or damaged one: one clear line
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
        resume=state == "resumed", options=opts, progress=progress, compat=compat,
    )  # fmt: skip
    _save_corpus(corpus, output)
    return run, state


def ensure_control(
    run: Run,
    corpus: ParallelCorpus,
    seed: int,
    *,
    options: ModelOptions | None = None,
    sites: str | None = None,
    batch_size: int = 32,
    progress: bool = True,
    pools: tuple[str, ...] | None = None,
) -> tuple[Run, str]:
    """The random-weights control of ``run``, in ``run/control-random-init``.

    Made from the run's own corpus, languages and model (with weights drawn from ``seed``), and
    recording the run it belongs to (``control_of`` in its manifest); a control found there is
    reused only when it belongs to ``run`` (:func:`~xlalign.store.run.check_control`), else the
    error names the difference. Returns the control and ``"reused"``, ``"resumed"`` or
    ``"captured"``.
    """
    if corpus.fingerprint() != run.manifest.get("corpus_fingerprint"):
        raise RunError(
            f"the corpus given is not the one the run in '{run.path}' was made from, so a "
            "control made from it would control another study; leave out --data (the run "
            "keeps its corpus) or pass the run's own corpus"
        )
    folder = run.path / CONTROL_DIR
    # what changes the vectors comes from the run, whatever the caller's own defaults
    m = run.manifest
    opts = (options or ModelOptions()).replace(
        random_init_seed=seed, dtype=m.get("dtype") or None, revision=m.get("revision")
    )
    with warnings.catch_warnings():  # the run's own extraction named the corpus's problems
        warnings.simplefilter("ignore", CorpusQualityWarning)
        control, state = ensure_run(
            model_source(m), corpus, folder, langs=list(run.languages),
            sites=sites or ",".join(run.sites), batch_size=batch_size, options=opts,
            progress=progress, compat=str(m.get("compat") or "exact"),
            **({} if pools is None else {"pools": pools}),
        )  # fmt: skip
    check_control(run, control)
    if "control_of" not in control.manifest:
        with folder_lock(folder, "xlalign (recording the control's run)"):
            manifest = read_manifest(folder / MANIFEST)
            manifest["control_of"] = {
                "model": run.manifest.get("model"),
                "model_key": run.manifest.get("model_key"),
                "corpus_fingerprint": run.manifest.get("corpus_fingerprint"),
            }
            atomic_write_json(folder / MANIFEST, manifest)
        control = load_run(folder)
    return control, state


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
    from xlalign.models.device import dtype_name
    from xlalign.store.sites import parse_sites

    revision, random_init_seed = options.revision, options.random_init_seed
    dtype = options.dtype
    if dtype is not None and not isinstance(dtype, str):
        dtype = dtype_name(dtype)

    diffs = list(content or [])
    if old.get("model") != model:
        diffs.append(f"model differs (run: {old.get('model')})")
    if revision is not None and revision not in (old.get("revision"), old.get("commit_hash")):
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

    from xlalign.models.device import dtype_name, resolve_device, resolve_dtype
    from xlalign.models.fingerprints import same_weights, tokenizer_fingerprint

    device, dtype = options.device, options.dtype
    revision, trust_remote_code = options.revision, options.trust_remote_code
    diffs: list[str] = []
    # a named model or a GGUF file is its local folder: its weights and tokenizer are read
    # there, never asked of the Hub (only a Hub id is)
    local = resolve_source(model)[0]
    if local.is_dir():
        equal, now = same_weights(old.get("weights_fingerprint"), local)
        if not equal:
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
    if not local.is_dir():  # after the tokenizer, whose download updates the cache's refs
        commit_now = hub_commit(model, revision)  # from the local cache, no Hub request
        commit_run = old.get("commit_hash")
        if commit_now is not None and commit_run is not None and commit_now != commit_run:
            diffs.append(
                f"the Hub model moved: the run was made from commit {commit_run}, and "
                f"{revision or 'main'} is now commit {commit_now} (pass --revision "
                f"{commit_run} to reuse the run)"
            )
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


def corpus_for(run: Run, data: Path | None) -> ParallelCorpus:
    """The corpus ``run`` was made from: ``data`` if given, else the copy kept in the run."""
    if data is not None:
        return load_corpus(data, list(run.languages))
    return run_corpus(run)
