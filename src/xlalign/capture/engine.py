"""The capture engine: batched, exact hidden-state extraction into a resumable run folder.

:func:`extract` tokenises every prompt once, sorts each language's prompts by length (longest
first, so an out-of-memory batch fails at once and padding is minimal), and runs one forward
pass of the *base* model per batch (no LM head: hidden states never need logits). Hooks on the
requested sites pool the batch on the device in float32 and keep only the pooled vectors; the
hook of the deepest requested site raises a private exception that ends the forward pass, so
``embed,L0`` of a 36-layer model runs one block. Rows are written into memory-mapped ``.npy``
files by corpus index as each batch finishes (see :mod:`xlalign.store`), so a killed run
resumes where it stopped and produces the same arrays as one that never stopped.

Exactness under padding: position ids follow the attention mask (``cumsum(mask) - 1``), so a
left-padded prompt sees the positions it would see alone; pools read real tokens only.

Data parallel: under ``torchrun`` or ``accelerate launch`` (``WORLD_SIZE > 1``) every process
runs :func:`extract` with the same arguments; the batches are dealt round-robin over the ranks
and each writes its rows into the one run folder (see :mod:`xlalign.capture.distributed`).
"""

from __future__ import annotations

import platform
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xlalign.capture.batching import (
    forward_kwargs,
    forward_params,
    make_batch,
    pad_id_of,
    plan_batches,
    tokenize,
)
from xlalign.capture.config import ExtractConfig
from xlalign.capture.distributed import (
    Group,
    LaunchEnv,
    launch_env,
    rank_device,
    rank_max_memory,
    wait_until,
)
from xlalign.capture.finite import check_finite, nonfinite_inputs
from xlalign.capture.hooks import SiteCapture, to_numpy
from xlalign.capture.manifest import build_manifest, utc_now, weighted_positions
from xlalign.capture.pooling import check_eos, make_plan
from xlalign.capture.writer import (
    all_recorded,
    launch_finished,
    open_writer,
    open_writer_ranked,
    run_is_complete,
)
from xlalign.data.corpus import ParallelCorpus, load_corpus
from xlalign.data.quality import CorpusQualityWarning, check_corpus
from xlalign.errors import XlalignError, XlalignWarning
from xlalign.models.loading import LoadedModel, ModelOptions, load_model
from xlalign.store import lock
from xlalign.store.files import (
    MANIFEST,
    PROGRESS_DIR,
)
from xlalign.store.folders import prepare_folder
from xlalign.store.pools import (
    parse_pools,
)
from xlalign.store.run import Run, load_run
from xlalign.store.sites import parse_sites
from xlalign.store.space import DISK_FULL_ERRNOS, disk_full_error
from xlalign.store.writer import RunWriter, TokenData, rank_sessions


class ZeroNormWarning(XlalignWarning):
    """Some captured vectors have norm 0 (listed in the manifest); cosines with them are undefined."""


# ---------------------------------------------------------------------------------------------
# the run


def extract(
    model: str | LoadedModel,
    corpus: ParallelCorpus | str | Path,
    langs: Sequence[str] | str | None = None,
    sites: str | Sequence[str] = "all",
    pools: str | Sequence[str] = ("last", "mean"),
    batch_size: int = 32,
    output: str | Path = "runs/extract",
    resume: bool = False,
    overwrite: bool = False,
    padding_side: str = "right",
    options: ModelOptions | None = None,
    progress: bool = True,
    shard_by: str = "batch",
    compat: str = "exact",
    **load_options: Any,
) -> Run:
    """Capture ``sites`` x ``pools`` hidden states of every prompt of ``corpus`` into ``output``.

    ``model`` is a Hub id, a local folder or a :class:`~xlalign.models.LoadedModel` (then the
    loading arguments are ignored). ``corpus`` is a :class:`ParallelCorpus` or a file/folder
    for :func:`~xlalign.data.corpus.load_corpus`; ``langs`` picks its languages (default: all).
    Returns the finished :class:`~xlalign.store.Run`, whose ``run[lang, site, pool]`` is an
    ``(n_rows, d_model)`` float32 array in corpus order.

    A folder holding a complete run is refused unless ``overwrite``; ``resume`` continues an
    incomplete one after checking that model, corpus, sites, pools, batch size and padding side
    match, and gives arrays identical to an uninterrupted run.

    ``options`` (:class:`~xlalign.models.ModelOptions`) says how to load the model; keyword
    arguments named like its fields (``dtype=``, ``device=``, ``random_init_seed=``...) override
    it. Its ``device_map`` (``"auto"``), ``max_memory`` and ``offload_folder`` load a model too
    large for one device with Accelerate (see :func:`~xlalign.models.load_model`). Started by
    ``torchrun``/``accelerate launch`` with ``WORLD_SIZE > 1``, every rank calls this with the
    same arguments and gets the same finished run; ``shard_by`` says how work is dealt (see
    :func:`~xlalign.capture.distributed.assign_batches`).
    """
    started = time.perf_counter()
    opts = options or ModelOptions()
    if load_options:
        opts = opts.replace(**load_options)
    config = ExtractConfig(
        sites, pools, batch_size, padding_side, resume, overwrite, shard_by, compat
    )
    output = Path(output)
    env = launch_env()

    lang_list = _lang_list(langs)
    if not isinstance(corpus, ParallelCorpus):
        corpus = load_corpus(corpus, lang_list)
    if lang_list is None:
        lang_list = list(corpus.languages)
    for lang in lang_list:
        corpus.text(lang)  # a clear error naming the languages the corpus has
    if env.is_main:  # rows that are not translations, named before any time is spent
        for line in check_corpus(corpus, lang_list).warnings():
            warnings.warn(CorpusQualityWarning(line), stacklevel=2)
    pool_list = parse_pools(config.pools)

    # One writer per folder: rank 0 holds the lock for its whole launch (the other ranks write
    # only the rows rank 0 deals them, and their own progress files), a second writer is refused.
    if env.is_main:
        lock.acquire(output, "xlalign extract" + (" --resume" if resume else ""))
    try:
        if not resume:  # refuse before spending time on loading the model
            prepare_folder(output, overwrite, check_only=True)

        # The rendezvous comes after every rank's read-only check above, so no rank can still be
        # looking at a folder that rank 0 is about to replace (--overwrite).
        group = Group(env) if env.distributed else None
        try:
            return _extract(
                model, corpus, lang_list, pool_list, config, output, env, group, started, opts,
                progress=progress,
            )  # fmt: skip
        except OSError as e:
            if e.errno in DISK_FULL_ERRNOS:  # a progress record or token file: run resumable
                raise disk_full_error(Path(e.filename or output), None, output) from None
            raise
        finally:
            if group is not None:
                group.close()
    finally:
        if env.is_main:
            lock.release(output)


def _extract(
    model: str | LoadedModel,
    corpus: ParallelCorpus,
    lang_list: list[str],
    pool_list: list[str],
    config: ExtractConfig,
    output: Path,
    env: LaunchEnv,
    group: Group | None,
    started: float,
    options: ModelOptions,
    *,
    progress: bool,
) -> Run:
    """:func:`extract` once the corpus is loaded and (with several ranks) the group formed."""
    t0 = time.perf_counter()
    if isinstance(model, LoadedModel):
        loaded = model
        seed = options.random_init_seed
        if seed is not None and loaded.random_init_seed != seed:
            raise XlalignError(
                "random_init_seed given with an already loaded model; pass it to load_model"
            )
    else:
        if options.device_map is not None and env.distributed:
            options = options.replace(max_memory=rank_max_memory(env, options.max_memory))
            if options.offload_folder is not None:  # ranks on one host must not share files
                options = options.replace(offload_folder=Path(options.offload_folder) / env.tag)
        if isinstance(options.device, str):
            options = options.replace(device=rank_device(env, options.device))
        with _hf_progress_bars(progress and env.is_main):
            loaded = load_model(model, options)
    load_s = time.perf_counter() - t0
    adapter = loaded.adapter
    site_list = parse_sites(config.sites, adapter.n_layers, adapter.final_norm is not None)

    t0 = time.perf_counter()
    tokens = {lang: tokenize(loaded.tokenizer, corpus.text(lang)) for lang in lang_list}
    _check_lengths(loaded, tokens, corpus)
    if "eos" in pool_list:
        for lang, data in tokens.items():
            check_eos([data.row(i)[1] for i in range(len(data.lengths))], corpus.ids, lang)
    batches = {lang: plan_batches(tokens[lang].lengths, config.batch_size) for lang in lang_list}
    tokenize_s = time.perf_counter() - t0

    manifest = build_manifest(
        loaded, corpus, lang_list, site_list, pool_list, config, tokens, batches
    )
    mine: dict[str, set[int]] | None = None
    launch_id = None
    if group is None:
        writer = open_writer(output, manifest, config, corpus, tokens, loaded)
    else:
        writer, mine, launch_id = open_writer_ranked(group, output, manifest, config, corpus,
                                                      tokens, loaded, batches)  # fmt: skip

    session: dict[str, Any] = {
        "started": utc_now(),
        "load_s": round(load_s, 4),
        "tokenize_s": round(tokenize_s, 4),
        "device": str(loaded.device),
    }
    # Recorded before capturing, so a killed session still shows in the resumed run's history.
    if group is None:
        writer.manifest.setdefault("sessions", []).append(session)
        writer.write_manifest()
    else:  # only rank 0 writes the manifest; a rank keeps its sessions in its progress file
        session.update(
            rank=env.rank, world_size=env.world_size, host=platform.node(), launch=launch_id
        )
        writer.progress_extra.setdefault("sessions", []).append(session)
        writer.record_progress()
    t0 = time.perf_counter()
    n_done = _capture(loaded, corpus, writer, tokens, batches, site_list, config,
                      progress and env.is_main, mine)  # fmt: skip
    capture_s = time.perf_counter() - t0
    session.update(capture_s=round(capture_s, 4), prompts=n_done)
    session["prompts_per_s"] = round(n_done / capture_s, 2) if capture_s > 0 else None

    if group is not None:
        session["total_s"] = round(time.perf_counter() - started, 4)
        session["finished"] = True  # rank 0 waits for this on every rank, not just the batches
        writer.flush()
        writer.record_progress()
        if not env.is_main:
            writer.close()
            # Rank 0 marks the run complete once every rank's batches are recorded.
            wait_until(
                lambda: run_is_complete(output) and lock.holder(output) is None,
                f"rank 0 to finish {output}",
            )
            return load_run(output)
        wait_until(
            lambda: all_recorded(output, batches) and launch_finished(output, env, launch_id),
            f"every rank to finish its batches in {output}",
        )
        writer.manifest["sessions"] = [*writer.manifest.get("sessions", []), *rank_sessions(output)]
        writer.manifest["data_parallel"] = {
            "world_size": env.world_size,
            "shard_by": config.shard_by,
            "wall_s": round(time.perf_counter() - started, 4),
        }
    elif (output / PROGRESS_DIR).is_dir():  # one process finishing a data-parallel run
        merged = [*writer.manifest["sessions"], *rank_sessions(output)]
        writer.manifest["sessions"] = sorted(merged, key=lambda s: str(s.get("started", "")))

    zero, n_zero = writer.zero_norm_vectors(corpus.ids)
    sessions = writer.manifest["sessions"]
    total_s = time.perf_counter() - started
    session["total_s"] = round(total_s, 4)
    capture_total = sum(s.get("capture_s", 0.0) for s in sessions)
    # prompts whose capture time is known (a killed session records none)
    timed = sum(s.get("prompts", 0) for s in sessions)
    n_prompts = len(lang_list) * len(corpus)
    writer.finish(
        {
            "finished": utc_now(),
            "sessions": sessions,
            "timings": {
                "load_s": session["load_s"],
                "tokenize_s": session["tokenize_s"],
                "capture_s": round(capture_total, 4),
                "total_s": round(sum(s.get("total_s", 0.0) for s in sessions), 4),
                "prompts": n_prompts,
                "prompts_per_s": round(timed / capture_total, 2) if capture_total else None,
            },
            "zero_norm_vectors": zero,
            "n_zero_norm_vectors": n_zero,
        }
    )
    if n_zero:
        first = zero[0]
        warnings.warn(
            ZeroNormWarning(
                f"{n_zero} captured vector(s) have norm 0 (first: site {first['site']}, "
                f"language {first['lang']}, pool {first['pool']}, id {first['id']}); they are "
                f"listed under zero_norm_vectors in {output / MANIFEST}"
            ),
            stacklevel=3,
        )
    return load_run(output)


@contextmanager
def _hf_progress_bars(enabled: bool) -> Iterator[None]:
    """Silence transformers' own "Loading weights" bars when progress is off."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled and not enabled:
            hf_logging.enable_progress_bar()


def _lang_list(langs: Sequence[str] | str | None) -> list[str] | None:
    if langs is None:
        return None
    items = [s.strip() for s in langs.split(",")] if isinstance(langs, str) else list(langs)
    items = [s for s in items if s]
    if not items:
        raise XlalignError("no languages given: use e.g. --langs zh,en")
    dup = sorted({x for x in items if items.count(x) > 1})
    if dup:
        raise XlalignError(f"language(s) {', '.join(dup)} given more than once")
    return items


def _check_lengths(
    loaded: LoadedModel, tokens: dict[str, TokenData], corpus: ParallelCorpus
) -> None:
    limit = loaded.max_positions
    for lang, data in tokens.items():
        lengths = data.lengths
        if (lengths == 0).any():
            i = int(np.argmin(lengths))
            raise XlalignError(f"prompt id {corpus.ids[i]} ({lang}) tokenises to no tokens at all")
        if limit is not None and lengths.max(initial=0) > limit:
            i = int(np.argmax(lengths))
            raise XlalignError(
                f"prompt id {corpus.ids[i]} ({lang}) has {int(lengths[i])} tokens; "
                f"{loaded.model_id} takes at most {limit}"
            )


def _capture(
    loaded: LoadedModel,
    corpus: ParallelCorpus,
    writer: RunWriter,
    tokens: dict[str, TokenData],
    batches: dict[str, list[np.ndarray]],
    sites: list[str],
    config: ExtractConfig,
    progress: bool,
    only: dict[str, set[int]] | None = None,
) -> int:
    """Run every batch not yet done (of ``only``, if given); returns the prompts captured."""
    from tqdm.auto import tqdm

    if only is None:
        total = sum(len(tokens[lang].lengths) for lang in batches)
        already = sum(
            len(b) for lang, bs in batches.items() for i, b in enumerate(bs)
            if i in writer.done[lang]
        )  # fmt: skip
    else:  # one rank of a data-parallel launch: its own share
        total = sum(len(batches[lang][i]) for lang in batches for i in only[lang])
        already = 0
    pad_id = pad_id_of(loaded.tokenizer)
    adapter = loaded.adapter
    pools = list(writer.manifest["pools"])
    params = forward_params(loaded)
    n_done = 0
    bar = tqdm(
        total=total, initial=already, unit="prompt", desc="extract", disable=not progress,
        dynamic_ncols=True, file=sys.stderr,
    )  # fmt: skip
    try:
        with torch.inference_mode(), SiteCapture(loaded, sites) as capture:
            for lang, lang_batches in batches.items():
                bar.set_postfix_str(lang)
                for index, rows in enumerate(lang_batches):
                    if index in writer.done[lang] or (only is not None and index not in only[lang]):
                        continue
                    batch = make_batch(
                        tokens[lang],
                        rows,
                        padding_side=config.padding_side,
                        pad_id=pad_id,
                        position_offset=adapter.position_offset,
                        pad_position=adapter.pad_position,
                    )
                    plan = make_plan(
                        batch.attention_mask,
                        batch.special,
                        pools,
                        weighted_positions(config.compat),
                    )
                    kwargs = forward_kwargs(loaded, batch, config.padding_side, params)
                    results = capture.run(kwargs, plan)
                    pooled, token_vecs = to_numpy(results, sites)
                    bad_inputs = None
                    if not np.isfinite(pooled).all() or (
                        token_vecs is not None and not all(np.isfinite(v).all() for v in token_vecs)
                    ):
                        bad_inputs = nonfinite_inputs(capture, kwargs, plan)
                    check_finite(pooled, token_vecs, batch, sites, writer.pools, lang, corpus,
                                  loaded, bad_inputs, plan)  # fmt: skip
                    writer.write_batch(lang, batch.rows, pooled, token_vecs)
                    writer.mark_done(lang, index)
                    n_done += len(rows)
                    bar.update(len(rows))
    finally:
        bar.close()
        writer.flush()  # keep every finished batch, also when a batch fails (inf/NaN guard)
    return n_done
