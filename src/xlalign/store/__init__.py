"""Run folders: captured arrays as ``.npy`` files beside a JSON manifest (see docs/store.md).

Layout of a run folder::

    manifest.json                      what was captured, how, from what; "complete" last
    meta.json                          ids and per-row corpus columns (e.g. category)
    corpus.jsonl                       the corpus itself (the control re-runs it; no --data)
    progress.json                      batches done per language (for --resume)
    progress/rank-<r>-of-<n>.json      the same per rank of a data-parallel launch
    tokenizer/                         the tokenizer, saved, so tokens decode offline
    tokens/<lang>.ids.npy              int32   (total_tokens,)   every prompt's ids, flat
    tokens/<lang>.offsets.npy          int64   (n_rows + 1,)     row i is ids[off[i]:off[i+1]]
    tokens/<lang>.special.npy          bool    (total_tokens,)   tokenizer's special-tokens mask
    arrays/<lang>/<site>/<pool>.npy    float32 (n_rows, d_model) one vector per prompt
    arrays/<lang>/<site>/tokens.npy    float32 (total_tokens, d_model), same offsets

Rows are in corpus order whatever order the prompts ran in. Every file is a plain ``.npy``:
``np.load(path, allow_pickle=False)`` reads it, ``mmap_mode="r"`` maps it.

The modules: :mod:`~xlalign.store.files` (names and atomic JSON), :mod:`~xlalign.store.writer`
(writing as batches finish), :mod:`~xlalign.store.run` (reading), :mod:`~xlalign.store.folders`
(preparing an output folder), :mod:`~xlalign.store.lock` (one writer per folder),
:mod:`~xlalign.store.space` (disk space), :mod:`~xlalign.store.sites` and
:mod:`~xlalign.store.pools` (the names of sites and pools a run is indexed by) and
:mod:`~xlalign.store.synthetic` (synthetic runs for scale tests and benchmarks).

Imports only :mod:`xlalign.errors` of xlalign.
"""

from xlalign.store import lock, pools, sites
from xlalign.store.files import (
    ARRAYS_DIR,
    CONTROL_DIR,
    CORPUS_FILE,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    META,
    PROGRESS,
    PROGRESS_DIR,
    TOKEN_POOL,
    TOKENIZER_DIR,
    TOKENS_DIR,
    array_path,
    atomic_write_json,
    json_safe,
    read_json,
    token_paths,
)
from xlalign.store.folders import clear_folder, prepare_folder
from xlalign.store.lock import LOCK_FILE, PROBE_PREFIX, busy_message, folder_lock, holder
from xlalign.store.pools import POOL_DESCRIPTIONS, POOL_SEMANTICS, POOLS, VECTOR_POOLS, parse_pools
from xlalign.store.run import LegacyPools, Run, export_npz, legacy_pools, load_run
from xlalign.store.sites import EMBED, FINAL, describe_sites, parse_sites
from xlalign.store.space import DISK_FULL_ERRNOS, check_free_space, disk_full_error, reserve_space
from xlalign.store.writer import (
    FLUSH_INTERVAL_S,
    RunWriter,
    TokenData,
    progress_files,
    rank_sessions,
    read_progress,
)

__all__ = [
    "ARRAYS_DIR",
    "CONTROL_DIR",
    "CORPUS_FILE",
    "DISK_FULL_ERRNOS",
    "EMBED",
    "FINAL",
    "FLUSH_INTERVAL_S",
    "FORMAT",
    "FORMAT_VERSION",
    "LOCK_FILE",
    "MANIFEST",
    "META",
    "POOLS",
    "POOL_DESCRIPTIONS",
    "POOL_SEMANTICS",
    "PROBE_PREFIX",
    "PROGRESS",
    "PROGRESS_DIR",
    "TOKENIZER_DIR",
    "TOKENS_DIR",
    "TOKEN_POOL",
    "VECTOR_POOLS",
    "LegacyPools",
    "Run",
    "RunWriter",
    "TokenData",
    "array_path",
    "atomic_write_json",
    "busy_message",
    "check_free_space",
    "clear_folder",
    "describe_sites",
    "disk_full_error",
    "export_npz",
    "folder_lock",
    "holder",
    "json_safe",
    "legacy_pools",
    "load_run",
    "lock",
    "parse_pools",
    "parse_sites",
    "pools",
    "prepare_folder",
    "progress_files",
    "rank_sessions",
    "read_json",
    "read_progress",
    "reserve_space",
    "sites",
    "token_paths",
]
