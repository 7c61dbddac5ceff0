"""Opening the run folder's writer: a new run, a resumed one, or one rank's share of a data-parallel launch."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np

from xlalign.capture.config import ExtractConfig
from xlalign.capture.distributed import (
    Group,
    LaunchEnv,
    assign_batches,
    run_on_main,
)
from xlalign.capture.manifest import resume_diffs
from xlalign.data.corpus import ParallelCorpus
from xlalign.errors import RunError
from xlalign.models.loading import LoadedModel
from xlalign.store.files import (
    CORPUS_FILE,
    MANIFEST,
    PROGRESS_DIR,
    read_json,
    read_manifest,
)
from xlalign.store.folders import clear_folder, prepare_folder
from xlalign.store.writer import RunWriter, TokenData, rank_sessions, read_progress


def run_is_complete(output: Path) -> bool:
    try:
        return bool(read_manifest(output / MANIFEST).get("complete"))
    except (OSError, ValueError, RunError):
        return False


def launch_finished(output: Path, env: LaunchEnv, launch_id: str | None) -> bool:
    """Whether every rank of this launch has recorded its finished session."""
    finished = {
        s.get("rank")
        for s in rank_sessions(output)
        if s.get("launch") == launch_id and s.get("finished")
    }
    return finished >= set(range(env.world_size))


def all_recorded(output: Path, batches: dict[str, list[np.ndarray]]) -> bool:
    """Whether every batch of every language is in some progress file of the run."""
    done = read_progress(output)
    return all(set(range(len(b))) <= set(done.get(lang, ())) for lang, b in batches.items())


def open_writer_ranked(
    group: Group,
    output: Path,
    manifest: dict[str, Any],
    config: ExtractConfig,
    corpus: ParallelCorpus,
    tokens: dict[str, TokenData],
    loaded: LoadedModel,
    batches: dict[str, list[np.ndarray]],
) -> tuple[RunWriter, dict[str, set[int]], str]:
    """One rank's writer on the shared run folder, the batches it runs, and the launch's id.

    Rank 0 creates the folder (or checks the run it resumes, exactly as a single process would)
    while the others wait; then every rank opens the same array files. The batches already done
    are rank 0's reading of the progress files, broadcast, so every rank deals from one list.
    """
    env = group.env
    progress_path = output / PROGRESS_DIR / f"{env.tag}.json"
    opened = run_on_main(
        group, lambda: open_writer(output, manifest, config, corpus, tokens, loaded,
                                    progress_path)
    )  # fmt: skip
    done, launch_id = group.broadcast(
        ({lang: sorted(d) for lang, d in opened.done.items()}, uuid.uuid4().hex)
        if env.is_main
        else None
    )
    writer: RunWriter = (
        opened if env.is_main else RunWriter.reopen(output, read_json(output / MANIFEST),
                                                    progress_path)
    )  # fmt: skip
    writer.done = {lang: set(done.get(lang, ())) for lang in writer.languages}
    return writer, assign_batches(batches, writer.done, env, config.shard_by), launch_id


def open_writer(
    output: Path,
    manifest: dict[str, Any],
    config: ExtractConfig,
    corpus: ParallelCorpus,
    tokens: dict[str, TokenData],
    loaded: LoadedModel,
    progress_path: Path | None = None,
) -> RunWriter:
    existing = output / MANIFEST
    old = read_manifest(existing) if config.resume and existing.exists() else None
    if old is not None and old.get("laid_out") is False:
        # Killed (or out of disk) while laying the folder out: nothing was captured yet, so
        # laying it out again is the whole of resuming it.
        clear_folder(output)
        old = None
    if old is not None:
        if old.get("complete"):
            raise RunError(
                f"'{output}' already holds a complete run; nothing to resume "
                "(pass --overwrite to capture it again)"
            )
        diffs = resume_diffs(old, manifest)
        if diffs:
            raise RunError(
                f"cannot resume '{output}': " + "; ".join(diffs)
                + " (use the same flags, or --overwrite to start again)"
            )  # fmt: skip
        writer = RunWriter.reopen(output, old, progress_path)
        if not (output / CORPUS_FILE).exists():  # killed right after the layout
            corpus.to_jsonl(output / CORPUS_FILE)
        return writer
    prepare_folder(output, config.overwrite)
    meta = {"ids": list(corpus.ids), "columns": {k: list(v) for k, v in corpus.meta.items()}}
    writer = RunWriter.create(output, manifest, meta, tokens, loaded.tokenizer, progress_path)
    # after the manifest, so a kill here leaves a folder that resumes; later studies (the
    # random-init control, origin without --data) read the texts from it
    corpus.to_jsonl(output / CORPUS_FILE)
    return writer
