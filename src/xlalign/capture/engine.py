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
and each writes its rows into the one run folder (see :mod:`xlalign.distributed`).
"""

from __future__ import annotations

import inspect
import platform
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xlalign import lock
from xlalign.corpus import ParallelCorpus, load_corpus
from xlalign.distributed import (
    SHARD_BY,
    Group,
    LaunchEnv,
    assign_batches,
    launch_env,
    rank_device,
    rank_max_memory,
    run_on_main,
    wait_until,
)
from xlalign.errors import RunError, XlalignError
from xlalign.models import (
    LoadedModel,
    ModelOptions,
    device_map_summary,
    dtype_name,
    load_model,
    state_dict_fingerprint,
    tokenizer_fingerprint,
)
from xlalign.pooling import (
    POOL_DESCRIPTIONS,
    POOL_SEMANTICS,
    WEIGHTED_ABSOLUTE_DESCRIPTION,
    PoolPlan,
    check_eos,
    make_plan,
    parse_pools,
    pool,
)
from xlalign.sites import EMBED, FINAL, parse_sites
from xlalign.store import (
    CORPUS_FILE,
    DISK_FULL_ERRNOS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    PROGRESS_DIR,
    Run,
    RunWriter,
    TokenData,
    clear_folder,
    disk_full_error,
    load_run,
    prepare_folder,
    rank_sessions,
    read_json,
    read_progress,
)

PADDING_SIDES = ("right", "left")

#: Manifest entries that must match for ``resume=True`` to continue a run.
RESUME_KEYS = (
    "model_key",
    "random_init_seed",
    "dtype",
    "corpus_fingerprint",
    "languages",
    "sites",
    "pools",
    "batch_size",
    "padding_side",
    "pool_semantics",
    "compat",
)

#: ``compat`` of an extraction: ``exact`` or ``mexa`` (``weighted`` pool on absolute positions).
EXTRACT_COMPAT = ("exact", "mexa")


class ZeroNormWarning(UserWarning):
    """Some captured vectors have norm 0 (listed in the manifest); cosines with them are undefined."""


class _StopForward(Exception):
    """Raised by the deepest site's hook to end the forward pass early (caught in capture)."""


@dataclass(frozen=True)
class ExtractConfig:
    """How to run one extraction; the fields mirror ``xlalign extract``'s flags."""

    sites: str | Sequence[str] = "all"
    """Sites to capture: embed, L<i>, L<i>-L<j>, final, all (comma-separated)."""
    pools: str | Sequence[str] = ("last", "mean")
    """Pools: last, mean, first, weighted, eos, tokens (comma-separated)."""
    batch_size: int = 32
    """Prompts per forward pass."""
    padding_side: str = "right"
    """Where padding goes in a batch: right or left (results are the same)."""
    resume: bool = False
    """Continue an incomplete run in the output folder."""
    overwrite: bool = False
    """Replace a run already in the output folder."""
    shard_by: str = "batch"
    """Data-parallel launches: deal out batches, or whole languages (one writer per file)."""
    compat: str = "exact"
    """mexa: the weighted pool counts positions in the padded batch, as MEXA's code does."""

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise XlalignError(f"--batch-size must be an integer, got {self.batch_size!r}")
        if self.batch_size < 1:
            raise XlalignError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.padding_side not in PADDING_SIDES:
            raise XlalignError(f"--padding-side must be left or right, got '{self.padding_side}'")
        if self.shard_by not in SHARD_BY:
            raise XlalignError(
                f"--shard-by must be one of {', '.join(SHARD_BY)}, got '{self.shard_by}'"
            )
        if self.compat not in EXTRACT_COMPAT:
            raise XlalignError(
                f"--compat must be one of {', '.join(EXTRACT_COMPAT)} for extract, "
                f"got '{self.compat}'"
            )
        if self.resume and self.overwrite:
            raise XlalignError(
                "--resume and --overwrite conflict: --resume continues the run in the output "
                "folder, --overwrite deletes it"
            )


# ---------------------------------------------------------------------------------------------
# tokenisation and batching


def tokenize(tokenizer: Any, texts: Sequence[str]) -> TokenData:
    """Tokenise ``texts`` with the tokenizer's special tokens; flat ids, offsets, special mask."""
    enc = tokenizer(
        list(texts),
        add_special_tokens=True,
        return_special_tokens_mask=True,
        return_attention_mask=False,
        padding=False,
        truncation=False,
    )
    ids_rows: list[list[int]] = enc["input_ids"]
    special_rows: list[list[int]] = enc["special_tokens_mask"]
    lengths = np.array([len(r) for r in ids_rows], dtype=np.int64)
    offsets = np.zeros(len(ids_rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.fromiter((t for r in ids_rows for t in r), dtype=np.int64, count=int(offsets[-1]))
    special = np.fromiter(
        (bool(t) for r in special_rows for t in r), dtype=bool, count=int(offsets[-1])
    )
    return TokenData(ids.astype(np.int32), offsets, special)


def plan_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices per batch: longest prompts first, ties in corpus order.

    Sorting by length keeps padding small; longest-first makes a batch that does not fit in
    memory fail at the start, not at the end. Deterministic, so a resumed run rebuilds the same
    batches.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_id_of(tokenizer: Any) -> int:
    """The id used to fill padding (its value never reaches a pooled vector)."""
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


@dataclass
class Batch:
    """One padded batch on the CPU: ``(B, T)`` tensors and the corpus rows they hold."""

    rows: np.ndarray
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    special: torch.Tensor


def make_batch(
    tokens: TokenData,
    rows: np.ndarray,
    *,
    padding_side: str,
    pad_id: int,
    position_offset: int = 0,
    pad_position: int = 0,
) -> Batch:
    """Pad ``rows`` of ``tokens`` into a :class:`Batch`; positions follow the mask.

    ``position_ids = cumsum(mask) - 1 + position_offset`` on real tokens (RoBERTa/XLM-R count
    from ``pad_token_id + 1``) and ``pad_position`` on padding, so each prompt sees the
    positions it would see alone whichever side the padding is on.
    """
    lengths = tokens.lengths[rows]
    b, t = len(rows), int(lengths.max())
    ids = np.full((b, t), pad_id, dtype=np.int64)
    mask = np.zeros((b, t), dtype=np.int64)
    special = np.zeros((b, t), dtype=bool)
    for k, r in enumerate(rows):
        row_ids, row_special = tokens.row(int(r))
        n = len(row_ids)
        sl = slice(0, n) if padding_side == "right" else slice(t - n, t)
        ids[k, sl] = row_ids
        mask[k, sl] = 1
        special[k, sl] = row_special
    positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1 + position_offset, pad_position)
    return Batch(
        rows=np.asarray(rows),
        input_ids=torch.from_numpy(ids),
        attention_mask=torch.from_numpy(mask),
        position_ids=torch.from_numpy(positions),
        special=torch.from_numpy(special),
    )


def forward_params(loaded: LoadedModel) -> frozenset[str]:
    """Names of the arguments the base model's forward takes (looked up once per run)."""
    return frozenset(inspect.signature(loaded.adapter.base.forward).parameters)


def forward_kwargs(
    loaded: LoadedModel, batch: Batch, padding_side: str, params: frozenset[str] | None = None
) -> dict[str, Any]:
    """Keyword arguments for one forward pass of the base model over ``batch``."""
    if params is None:
        params = forward_params(loaded)
    device = loaded.device
    kwargs: dict[str, Any] = {
        "input_ids": batch.input_ids.to(device),
        "attention_mask": batch.attention_mask.to(device),
    }
    if "position_ids" in params:
        kwargs["position_ids"] = batch.position_ids.to(device)
    elif padding_side == "left":
        raise XlalignError(
            f"{type(loaded.adapter.base).__name__}.forward takes no position_ids, so left "
            "padding would shift positions; use --padding-side right"
        )
    if "use_cache" in params:
        kwargs["use_cache"] = False  # a KV cache is pure overhead for one pass
    return kwargs


# ---------------------------------------------------------------------------------------------
# hooks


class SiteCapture:
    """Hooks that pool each requested site during a forward pass of ``loaded``'s base model.

    Use as a context manager (hooks are removed on exit) and call :meth:`run` per batch;
    it returns ``{site: (pooled (B, P, d) float32, tokens (n_real, d) float32 | None)}`` with
    tensors still on the device they were computed on.
    """

    def __init__(self, loaded: LoadedModel, sites: Sequence[str]) -> None:
        self.loaded = loaded
        self.sites = list(sites)
        self.deepest = self.sites[-1]
        self._handles: list[Any] = []
        self._plan: PoolPlan | None = None
        self._results: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        #: when set, :meth:`run` also records per site which real tokens' hidden states hold
        #: NaN/inf: ``{site: (bad (B, T) bool, nan (B, T) bool)}`` (see :func:`_nonfinite_inputs`)
        self.diagnose = False
        self.bad_tokens: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __enter__(self) -> SiteCapture:
        adapter = self.loaded.adapter
        for site in self.sites:
            if site == EMBED:
                handle = adapter.blocks[0].register_forward_pre_hook(
                    self._pre_hook(site), with_kwargs=True
                )
            elif site == FINAL:
                if adapter.final_norm is None:
                    raise XlalignError("site 'final' asked for, but the model has no final norm")
                handle = adapter.final_norm.register_forward_hook(self._hook(site))
            else:
                handle = adapter.blocks[int(site[1:])].register_forward_hook(self._hook(site))
            self._handles.append(handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _record(self, site: str, hidden: Any) -> None:
        if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
            shape = getattr(hidden, "shape", type(hidden).__name__)
            raise XlalignError(
                f"site {site}: expected a (batch, tokens, d_model) tensor, got {shape}"
            )
        assert self._plan is not None
        if self.diagnose:
            real = self._plan.real.to(hidden.device)
            bad = ~torch.isfinite(hidden.detach()).all(dim=-1) & real
            nan = torch.isnan(hidden.detach()).any(dim=-1) & real
            self.bad_tokens[site] = (bad.cpu().numpy(), nan.cpu().numpy())
        self._results[site] = pool(hidden.detach(), self._plan)
        if site == self.deepest:
            raise _StopForward

    def _pre_hook(self, site: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self._record(site, args[0] if args else kwargs.get("hidden_states"))

        return hook

    def _hook(self, site: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            # transformers 5 blocks return a tensor; older versions and other models a tuple.
            self._record(site, output if isinstance(output, torch.Tensor) else output[0])

        return hook

    def run(
        self, kwargs: dict[str, Any], plan: PoolPlan
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """One forward pass; the pooled vectors of every site."""
        self._plan = plan
        self._results = {}
        try:
            self.loaded.adapter.base(**kwargs)
        except _StopForward:
            pass
        finally:
            self._plan = None
        missing = [s for s in self.sites if s not in self._results]
        if missing:
            raise XlalignError(
                f"the forward pass never reached site(s) {', '.join(missing)}; the model's "
                "blocks may not be called the way the adapter expects"
            )
        return self._results


def to_numpy(
    results: dict[str, tuple[torch.Tensor, torch.Tensor | None]], sites: Sequence[str]
) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """Move pooled results to the CPU: ``(n_sites, B, P, d)`` and per-site token arrays."""
    pooled = [results[s][0] for s in sites]
    if len({t.device for t in pooled}) == 1:
        stacked = torch.stack(pooled).cpu().numpy()  # one transfer per batch
    else:  # a model spread over devices (device_map)
        stacked = np.stack([t.cpu().numpy() for t in pooled])
    tokens = [results[s][1] for s in sites]
    if tokens[0] is None:
        return stacked, None
    return stacked, [t.cpu().numpy() for t in tokens if t is not None]


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
    for :func:`~xlalign.corpus.load_corpus`; ``langs`` picks its languages (default: all).
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
    :func:`~xlalign.distributed.assign_batches`).
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

    manifest = _manifest(loaded, corpus, lang_list, site_list, pool_list, config, tokens, batches)
    mine: dict[str, set[int]] | None = None
    launch_id = None
    if group is None:
        writer = _open_writer(output, manifest, config, corpus, tokens, loaded)
    else:
        writer, mine, launch_id = _open_writer_ranked(group, output, manifest, config, corpus,
                                                      tokens, loaded, batches)  # fmt: skip

    session: dict[str, Any] = {
        "started": _now(),
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
                lambda: _complete(output) and lock.holder(output) is None,
                f"rank 0 to finish {output}",
            )
            return load_run(output)
        wait_until(
            lambda: _all_recorded(output, batches) and _launch_finished(output, env, launch_id),
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
            "finished": _now(),
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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _versions() -> dict[str, str]:
    import transformers

    from xlalign import __version__

    return {
        "xlalign": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _site_info(loaded: LoadedModel, site: str) -> dict[str, str]:
    paths = loaded.adapter.paths
    blocks = paths.get("blocks") or "blocks"
    if site == EMBED:
        extra = []
        if loaded.adapter.has_additive_positions:
            extra.append(f"plus absolute positions ({paths.get('positions')})")
        what = f"embedding output ({paths.get('embedding')}"
        what += f", {', '.join(extra)})" if extra else ")"
        return {
            "module": f"{blocks}.0",
            "hook": "forward_pre_hook (input)",
            "description": f"input to the first block = {what}; output_hidden_states[0]",
        }
    if site == FINAL:
        return {
            "module": str(paths.get("final_norm")),
            "hook": "forward_hook (output)",
            "description": "output of the final norm = output_hidden_states[-1]",
        }
    i = int(site[1:])
    return {
        "module": f"{blocks}.{i}",
        "hook": "forward_hook (output)",
        "description": f"raw output of block {i} (before any final norm)",
    }


def _manifest(
    loaded: LoadedModel,
    corpus: ParallelCorpus,
    langs: list[str],
    sites: list[str],
    pools: list[str],
    config: ExtractConfig,
    tokens: dict[str, TokenData],
    batches: dict[str, list[np.ndarray]],
) -> dict[str, Any]:
    tok = loaded.tokenizer
    # What resume and reuse compare: the weights' content, not the path they were read from.
    weights = loaded.weights_fingerprint
    if weights is None:  # an in-memory model or a Hub download: hash the tensors themselves
        try:
            weights = state_dict_fingerprint(loaded.model)
        except (RuntimeError, NotImplementedError):  # weights offloaded to "meta" by device_map
            weights = None
    model_key = weights or f"{loaded.model_id}@{loaded.revision or 'default'}"
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "complete": False,
        "created": _now(),
        "model": loaded.model_id,
        "revision": loaded.revision,
        "commit_hash": loaded.commit_hash,
        "weights_fingerprint": weights,
        "checkpoint": loaded.checkpoint,
        "model_key": model_key,
        "architecture": type(loaded.model).__name__,
        "family": loaded.family,
        "is_causal_lm": loaded.is_causal_lm,
        "n_layers": loaded.n_layers,
        "d_model": loaded.d_model,
        "dtype": dtype_name(loaded.dtype),
        "device": str(loaded.device),
        "device_map": loaded.device_map,
        "hf_device_map": device_map_summary(loaded.model),
        "random_init_seed": loaded.random_init_seed,
        "has_additive_positions": loaded.adapter.has_additive_positions,
        "modules": dict(loaded.adapter.paths),
        # the name the user gave, not the folder it resolved to (the tokenizer comes with it)
        "tokenizer_name": loaded.model_id
        if loaded.model_id != "<memory>"
        else getattr(tok, "name_or_path", None) or loaded.model_id,
        "tokenizer_class": type(tok).__name__,
        "tokenizer_fingerprint": tokenizer_fingerprint(tok),
        "adds_bos": loaded.adds_bos,
        "bos_token": loaded.bos_token,
        "adds_eos": loaded.adds_eos,
        "pad_token_id": pad_id_of(tok),
        "sites": sites,
        "site_info": {s: _site_info(loaded, s) for s in sites},
        "pools": pools,
        "pool_semantics": POOL_SEMANTICS,
        "pool_info": {p: _pool_description(p, config.compat) for p in pools},
        "compat": config.compat,
        "languages": langs,
        "n_rows": len(corpus),
        "ids": list(corpus.ids),
        "meta_columns": list(corpus.meta),
        "corpus_source": corpus.source,
        "corpus_fingerprint": corpus.fingerprint(),
        "padding_side": config.padding_side,
        "batch_size": config.batch_size,
        "n_batches": {lang: len(b) for lang, b in batches.items()},
        "n_tokens": {lang: int(t.offsets[-1]) for lang, t in tokens.items()},
        "versions": _versions(),
        "platform": {"machine": platform.machine(), "system": platform.system()},
        "command": sys.argv if sys.argv and sys.argv[0] else None,
        "sessions": [],
    }


def _weighted(compat: str) -> str:
    return "absolute" if compat == "mexa" else "real"


def _pool_description(pool_name: str, compat: str) -> str:
    if pool_name == "weighted" and compat == "mexa":
        return WEIGHTED_ABSOLUTE_DESCRIPTION
    return POOL_DESCRIPTIONS[pool_name]


def _complete(output: Path) -> bool:
    try:
        return bool(read_json(output / MANIFEST).get("complete"))
    except (OSError, ValueError):
        return False


def _launch_finished(output: Path, env: LaunchEnv, launch_id: str | None) -> bool:
    """Whether every rank of this launch has recorded its finished session."""
    finished = {
        s.get("rank")
        for s in rank_sessions(output)
        if s.get("launch") == launch_id and s.get("finished")
    }
    return finished >= set(range(env.world_size))


def _all_recorded(output: Path, batches: dict[str, list[np.ndarray]]) -> bool:
    """Whether every batch of every language is in some progress file of the run."""
    done = read_progress(output)
    return all(set(range(len(b))) <= set(done.get(lang, ())) for lang, b in batches.items())


def _open_writer_ranked(
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
        group, lambda: _open_writer(output, manifest, config, corpus, tokens, loaded,
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


def _open_writer(
    output: Path,
    manifest: dict[str, Any],
    config: ExtractConfig,
    corpus: ParallelCorpus,
    tokens: dict[str, TokenData],
    loaded: LoadedModel,
    progress_path: Path | None = None,
) -> RunWriter:
    existing = output / MANIFEST
    old = read_json(existing) if config.resume and existing.exists() else None
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


#: How :func:`resume_diffs` names a manifest key that differs.
_KEY_NAMES = {
    "model_key": "the weights' fingerprint; ",
    "tokenizer_fingerprint": "the tokenizer's content; ",
    "pool_semantics": "what pool 'last' means: since version 2 the last non-special token, "
    "so a run written before cannot be continued, only captured again with --overwrite; ",
}


def resume_diffs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between the run on disk (``old`` manifest) and this extraction's.

    The weights' and tokenizer's fingerprints (content, not path), dtype, device type, corpus
    and every capture option in :data:`RESUME_KEYS`. A run written before tokenizer
    fingerprints were recorded is not refused for lacking one.
    """
    defaults = {"compat": "exact"}  # runs written before a key existed hold its default

    def was(key: str) -> Any:
        return old.get(key, defaults.get(key))

    diffs = [
        f"{key} differs ({_KEY_NAMES.get(key, '')}run: {was(key)!r}, now: {new.get(key)!r})"
        for key in (*RESUME_KEYS, "tokenizer_fingerprint")
        if was(key) != new.get(key)
        and not (key == "tokenizer_fingerprint" and old.get(key) is None)
    ]
    old_dev, new_dev = (str(m.get("device") or "").split(":")[0] for m in (old, new))
    if old_dev and new_dev and old_dev != new_dev:
        diffs.append(f"device differs (run: {old_dev}, now: {new_dev})")
    return diffs


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
                        batch.attention_mask, batch.special, pools, _weighted(config.compat)
                    )
                    kwargs = forward_kwargs(loaded, batch, config.padding_side, params)
                    results = capture.run(kwargs, plan)
                    pooled, token_vecs = to_numpy(results, sites)
                    bad_inputs = None
                    if not np.isfinite(pooled).all() or (
                        token_vecs is not None and not all(np.isfinite(v).all() for v in token_vecs)
                    ):
                        bad_inputs = _nonfinite_inputs(capture, kwargs, plan)
                    _check_finite(pooled, token_vecs, batch, sites, writer.pools, lang, corpus,
                                  loaded, bad_inputs, plan)  # fmt: skip
                    writer.write_batch(lang, batch.rows, pooled, token_vecs)
                    writer.mark_done(lang, index)
                    n_done += len(rows)
                    bar.update(len(rows))
    finally:
        bar.close()
        writer.flush()  # keep every finished batch, also when a batch fails (inf/NaN guard)
    return n_done


def _nonfinite_inputs(
    capture: SiteCapture, kwargs: dict[str, Any], plan: PoolPlan
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per site, which real tokens' hidden states hold NaN/inf: the batch run once more.

    Only after a batch came out non-finite, so healthy runs pay nothing. Pooling is one matmul,
    which spreads a single token's NaN (``0 x NaN``) into every pool; these masks say which
    pools really read it.
    """
    capture.diagnose, capture.bad_tokens = True, {}
    try:
        capture.run(kwargs, plan)
        return dict(capture.bad_tokens)
    finally:
        capture.diagnose = False


def _pools_reading(plan: PoolPlan, vector_pools: list[str], b: int, bad: np.ndarray) -> list[str]:
    """The pools of batch row ``b`` whose inputs include a token marked in ``bad`` ``(T,)``."""
    weights = plan.weights[b].cpu().numpy()  # (P, T)
    names = [name for p, name in enumerate(vector_pools) if (weights[p][bad] != 0).any()]
    return names + (["tokens"] if plan.want_tokens and bad.any() else [])


def _check_finite(
    pooled: np.ndarray,
    token_vecs: list[np.ndarray] | None,
    batch: Batch,
    sites: list[str],
    vector_pools: list[str],
    lang: str,
    corpus: ParallelCorpus,
    loaded: LoadedModel,
    bad_inputs: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    plan: PoolPlan | None = None,
) -> None:
    """Stop the run at the first inf/NaN, naming site, language, prompt id and the pools it reaches.

    With ``bad_inputs`` (from :func:`_nonfinite_inputs`) and ``plan``, the pools named are those
    whose inputs hold the non-finite value, and the token position is given.
    """
    if bad_inputs is not None and plan is not None:
        for site in sites:
            if site not in bad_inputs or not bad_inputs[site][0].any():
                continue
            bad_mask, nan_mask = bad_inputs[site]
            row = int(np.argwhere(bad_mask)[0][0])
            positions = np.flatnonzero(bad_mask[row])
            real_pos = np.cumsum(plan.real[row].cpu().numpy()) - 1
            tokens = ", ".join(str(int(real_pos[t])) for t in positions[:5])
            more = f" and {len(positions) - 5} more" if len(positions) > 5 else ""
            kind = "NaN" if nan_mask[row].any() else "inf"
            reached = _pools_reading(plan, vector_pools, row, bad_mask[row])
            raise XlalignError(
                f"non-finite values ({kind}) at site {site}, language {lang}, prompt id "
                f"{corpus.ids[int(batch.rows[row])]}, token(s) {tokens}{more} (pool(s) "
                f"{', '.join(reached) or 'none'} read them; dtype {dtype_name(loaded.dtype)}); "
                "the run stopped and stays incomplete. Some models overflow in float16 (Qwen2 "
                "among them): rerun with --dtype float32 or --dtype bfloat16 and --overwrite"
            )
    bad: tuple[int, int, str] | None = None  # (site index, batch row, pool)
    if not np.isfinite(pooled).all():
        s, b, p = (int(x) for x in np.argwhere(~np.isfinite(pooled))[0][:3])
        bad = (s, b, vector_pools[p])
    if token_vecs is not None:
        for s, vecs in enumerate(token_vecs):
            if bad is not None and bad[0] <= s:
                break
            if not np.isfinite(vecs).all():
                flat = int(np.argwhere(~np.isfinite(vecs))[0][0])
                lengths = batch.attention_mask.sum(dim=1).numpy()
                b = int(np.searchsorted(np.cumsum(lengths), flat, side="right"))
                bad = (s, b, "tokens")
                break
    if bad is None:
        return
    s, b, pool_name = bad
    vec = pooled[s, b] if pool_name != "tokens" else np.array([np.nan])
    kind = "NaN" if np.isnan(vec).any() else "inf"
    raise XlalignError(
        f"non-finite values ({kind}) at site {sites[s]}, language {lang}, prompt id "
        f"{corpus.ids[int(batch.rows[b])]} (pool {pool_name}, dtype {dtype_name(loaded.dtype)}); "
        "the run stopped and stays incomplete. Some models overflow in float16 (Qwen2 among "
        "them): rerun with --dtype float32 or --dtype bfloat16 and --overwrite"
    )
