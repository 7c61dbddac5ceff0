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
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xlalign.errors import RunError, XlalignError
from xlalign.lock import LOCK_FILE, PROBE_PREFIX, busy_message, holder
from xlalign.pooling import POOL_SEMANTICS, VECTOR_POOLS
from xlalign.sites import describe_sites

FORMAT = "xlalign.run"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: A study folder's random-init control run (``xlalign run --control random-init``).
CONTROL_DIR = "control-random-init"
#: The corpus a run was made from, kept beside it by extract, so later commands need no --data.
CORPUS_FILE = "corpus.jsonl"
META = "meta.json"
PROGRESS = "progress.json"
#: Per-rank progress records of a data-parallel launch: ``progress/rank-<r>-of-<n>.json``.
PROGRESS_DIR = "progress"
TOKENIZER_DIR = "tokenizer"
ARRAYS_DIR = "arrays"
TOKENS_DIR = "tokens"
TOKEN_POOL = "tokens"
#: Default seconds between flushes of a run being written (see :meth:`RunWriter.mark_done`).
FLUSH_INTERVAL_S = 10.0


# ---------------------------------------------------------------------------------------------
# small file helpers


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` so that readers see the old file or the new, never half.

    The text goes to a temporary file in the same folder, is flushed and fsynced, and then
    ``os.replace`` swaps it in (atomic on POSIX and Windows).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=1, default=_json_default)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None, so the JSON written is valid.

    (``json.dump`` would write bare ``NaN``, which is not JSON; a corpus built in memory may
    hold a NaN category.)
    """
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, np.floating) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def read_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def array_path(root: Path, lang: str, site: str, pool: str) -> Path:
    """``arrays/<lang>/<site>/<pool>.npy`` under ``root``."""
    return root / ARRAYS_DIR / lang / site / f"{pool}.npy"


def token_paths(root: Path, lang: str) -> tuple[Path, Path, Path]:
    """``(ids, offsets, special)`` files of ``lang`` under ``root``."""
    base = root / TOKENS_DIR
    return base / f"{lang}.ids.npy", base / f"{lang}.offsets.npy", base / f"{lang}.special.npy"


def _save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary file and ``os.replace`` (no half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.save(f, array, allow_pickle=False)
    os.replace(tmp, path)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def disk_full_error(path: Path, needed: int | None, run: Path | None = None) -> RunError:
    """The error for a full disk: the file, the bytes it needs, and how to go on."""
    need = f" (needs {_size(needed)})" if needed else ""
    try:
        free = shutil.disk_usage(path if path.exists() else path.parent).free
        have = f", {_size(free)} free"
    except OSError:
        have = ""
    where = run or path
    return RunError(
        f"no space left on the device for {path}{need}{have}; free some space, then run the "
        f"same command with --resume to continue the run in {where}"
    )


def check_free_space(path: Path, needed: int) -> None:
    """Raise the disk-full :class:`RunError` now if ``path``'s file system lacks ``needed`` bytes."""
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return
    if needed > free:
        raise disk_full_error(path, needed)


def reserve_space(file: Path, nbytes: int, run: Path | None = None) -> None:
    """Allocate ``nbytes`` of disk blocks for ``file`` (``posix_fallocate``), or raise RunError.

    After this, writing through a memory map of the file cannot fail for lack of space. File
    systems without ``fallocate`` are left as they are (glibc emulates it where it can).
    """
    if nbytes <= 0 or not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(file, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as e:
        if e.errno in DISK_FULL_ERRNOS:
            raise disk_full_error(file, nbytes, run) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


def _check_name(kind: str, value: str) -> None:
    # Names become folder names; a '/' or '..' would escape the run folder.
    if not value or "/" in value or "\\" in value or value in (".", "..") or "\0" in value:
        raise XlalignError(f"{kind} '{value}' cannot be used as a folder name in a run")


# ---------------------------------------------------------------------------------------------
# writing


@dataclass
class TokenData:
    """One language's tokenised prompts in corpus order.

    ``ids``: int32 ``(total_tokens,)``; ``offsets``: int64 ``(n_rows + 1,)``;
    ``special``: bool ``(total_tokens,)``.
    """

    ids: np.ndarray
    offsets: np.ndarray
    special: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per prompt, ``(n_rows,)``."""
        return np.diff(self.offsets)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.ids[lo:hi], self.special[lo:hi]


class RunWriter:
    """Writes a run as it is produced: arrays by row index, then the progress record.

    Crash safety rests on order: a batch's rows go into the memory-mapped ``.npy`` files, the
    maps are flushed, and only then is the batch added to ``progress.json`` (atomically). A
    batch that is not in the progress record is recomputed on resume, so a kill at any point
    loses at most the batch in flight. ``manifest.json`` says ``"complete": true`` only once
    every batch is done and everything is flushed.
    """

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        token_lengths: Mapping[str, int],
        progress_path: Path | None = None,
    ) -> None:
        self.path = path
        #: where this writer records its batches: ``progress.json``, or for one rank of a
        #: data-parallel launch ``progress/rank-<r>-of-<n>.json`` (see :mod:`xlalign.distributed`)
        self.progress_path = progress_path or path / PROGRESS
        #: extra entries of the progress record (a rank keeps its sessions there)
        self.progress_extra: dict[str, Any] = {}
        self.manifest = manifest
        self.languages: list[str] = list(manifest["languages"])
        self.sites: list[str] = list(manifest["sites"])
        self.pools: list[str] = [p for p in manifest["pools"] if p in VECTOR_POOLS]
        self.want_tokens = TOKEN_POOL in manifest["pools"]
        self.n_rows: int = int(manifest["n_rows"])
        self.d_model: int = int(manifest["d_model"])
        self.token_lengths = dict(token_lengths)
        self.done: dict[str, set[int]] = {lang: set() for lang in self.languages}
        self._maps: dict[tuple[str, str, str], np.memmap] = {}
        self._offsets: dict[str, np.ndarray] = {}
        self._pending: list[tuple[str, int]] = []
        self._dirty: set[tuple[str, str, str]] = set()
        self._last_flush = time.monotonic()
        #: seconds between flushes of arrays + progress record (see :meth:`mark_done`)
        self.flush_interval_s = FLUSH_INTERVAL_S

    # -- creating and reopening

    @classmethod
    def create(
        cls,
        path: Path,
        manifest: dict[str, Any],
        meta: Mapping[str, Any],
        tokens: Mapping[str, TokenData],
        tokenizer: Any = None,
        progress_path: Path | None = None,
    ) -> RunWriter:
        """Lay out a new run in ``path`` (empty or absent): manifest, token files, empty arrays.

        The manifest comes first (atomically, ``"laid_out": false``), so a kill at any moment
        leaves a folder that ``--resume`` and ``--overwrite`` recognise; it says
        ``"laid_out": true`` once every file exists. The disk space of every array is reserved
        before it is mapped (see :func:`reserve_space`): a full disk is a :class:`RunError`
        naming the file and the bytes it needs, never a ``SIGBUS`` in the middle of a batch.
        """
        for lang in manifest["languages"]:
            _check_name("language", lang)
        path.mkdir(parents=True, exist_ok=True)
        lengths = {lang: int(t.offsets[-1]) for lang, t in tokens.items()}
        writer = cls(path, manifest, lengths, progress_path)
        check_free_space(path, writer.array_bytes())
        manifest["laid_out"] = False
        atomic_write_json(path / MANIFEST, manifest)
        for lang, data in tokens.items():
            ids_p, off_p, spec_p = token_paths(path, lang)
            _save_npy(ids_p, data.ids.astype(np.int32, copy=False))
            _save_npy(off_p, data.offsets.astype(np.int64, copy=False))
            _save_npy(spec_p, data.special.astype(bool, copy=False))
        atomic_write_json(path / META, json_safe(dict(meta)))
        if tokenizer is not None:
            tokenizer.save_pretrained(path / TOKENIZER_DIR)
        writer._open_arrays(create=True)
        writer._write_progress()
        manifest["laid_out"] = True
        atomic_write_json(path / MANIFEST, manifest)
        return writer

    def array_bytes(self) -> int:
        """Bytes the run's array files take on disk once laid out (headers included)."""
        per_row = self.d_model * 4
        n_vec = len(self.languages) * len(self.sites) * len(self.pools)
        total = n_vec * (self.n_rows * per_row + 128)
        if self.want_tokens:
            total += len(self.sites) * sum(n * per_row + 128 for n in self.token_lengths.values())
        return total

    @classmethod
    def reopen(
        cls, path: Path, manifest: dict[str, Any], progress_path: Path | None = None
    ) -> RunWriter:
        """Open an incomplete run for resuming; reads which batches are done.

        Done means recorded in any progress file of the run (``progress.json`` and every
        rank's), so a run begun by one launch can be finished by another of any size.
        """
        lengths = {}
        for lang in manifest["languages"]:
            offsets = np.load(token_paths(path, lang)[1], allow_pickle=False)
            lengths[lang] = int(offsets[-1])
        writer = cls(path, manifest, lengths, progress_path)
        progress = read_progress(path)
        for lang, batches in progress.items():
            if lang in writer.done:
                writer.done[lang] = set(int(b) for b in batches)
        if writer.progress_path.exists():  # keep this rank's earlier sessions
            old = read_json(writer.progress_path)
            writer.progress_extra = {k: v for k, v in old.items() if k != "done"}
        writer._open_arrays(create=False)
        return writer

    def _open_arrays(self, create: bool) -> None:
        mode = "w+" if create else "r+"
        for lang in self.languages:
            for site in self.sites:
                for pool in self.pools:
                    p = array_path(self.path, lang, site, pool)
                    self._maps[(lang, site, pool)] = self._open(p, mode, self.n_rows)
                if self.want_tokens:
                    p = array_path(self.path, lang, site, TOKEN_POOL)
                    n = max(self.token_lengths[lang], 0)
                    self._maps[(lang, site, TOKEN_POOL)] = self._open(p, mode, n)
            self._offsets[lang] = np.load(token_paths(self.path, lang)[1], allow_pickle=False)

    def _open(self, p: Path, mode: str, n: int) -> np.memmap:
        if mode == "w+":
            p.parent.mkdir(parents=True, exist_ok=True)
            # Fresh files are zeros; rows fill in by index as batches finish. The blocks are
            # reserved before the map is used: a write into a page the disk cannot hold would
            # kill the process with SIGBUS.
            mm = np.lib.format.open_memmap(p, mode="w+", dtype=np.float32, shape=(n, self.d_model))
            reserve_space(p, p.stat().st_size, self.path)
            return mm
        if not p.exists():
            raise RunError(f"{self.path}: array file {p.relative_to(self.path)} is missing")
        reserve_space(p, p.stat().st_size, self.path)  # an earlier session may have run out
        mm = np.lib.format.open_memmap(p, mode="r+")
        if mm.shape != (n, self.d_model) or mm.dtype != np.float32:
            raise RunError(
                f"{p}: shape {mm.shape} {mm.dtype}, expected ({n}, {self.d_model}) float32"
            )
        return mm

    # -- writing batches

    def write_batch(
        self,
        lang: str,
        rows: np.ndarray,
        pooled: np.ndarray,
        tokens: Sequence[np.ndarray] | None,
    ) -> None:
        """Store one batch: ``pooled`` ``(n_sites, B, n_pools, d)``; ``tokens[s]`` ``(n_real, d)``.

        ``rows`` ``(B,)`` are corpus row indices; token vectors of row ``rows[b]`` come in order
        after those of ``rows[:b]`` and land at that row's offsets.
        """
        for s, site in enumerate(self.sites):
            for p, name in enumerate(self.pools):
                self._maps[(lang, site, name)][rows] = pooled[s, :, p, :]
                self._dirty.add((lang, site, name))
        if self.want_tokens and tokens is not None:
            offsets = self._offsets[lang]
            for s, site in enumerate(self.sites):
                target = self._maps[(lang, site, TOKEN_POOL)]
                start = 0
                for r in rows:
                    lo, hi = int(offsets[r]), int(offsets[r + 1])
                    target[lo:hi] = tokens[s][start : start + hi - lo]
                    start += hi - lo
                self._dirty.add((lang, site, TOKEN_POOL))

    def mark_done(self, lang: str, batch: int) -> None:
        """Note ``batch`` as written; it reaches ``progress.json`` at the next :meth:`flush`.

        A flush costs one ``msync`` per array file (a disk barrier each, milliseconds apiece);
        doing it every batch would cost more than the model on small models. Flushing every
        ``flush_interval_s`` seconds bounds what a kill can lose to that much work, which
        resume recomputes identically.
        """
        self._pending.append((lang, batch))
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        """Make written rows durable, then record the batches written since the last flush.

        The order is what makes resume safe: a batch is in ``progress.json`` only once its
        rows are on disk. Array files are synced in parallel threads, so their disk barriers
        overlap (``msync`` releases the GIL).
        """
        dirty = [self._maps[key] for key in sorted(self._dirty)]
        if len(dirty) > 1:
            with ThreadPoolExecutor(max_workers=min(16, len(dirty))) as pool:
                list(pool.map(lambda mm: mm.flush(), dirty))
        elif dirty:
            dirty[0].flush()
        self._dirty.clear()
        if self._pending:
            for lang, batch in self._pending:
                self.done[lang].add(batch)
            self._pending.clear()
            self._write_progress()
        self._last_flush = time.monotonic()

    def record_progress(self) -> None:
        """Write the progress record now (batches flushed so far, and ``progress_extra``)."""
        self._write_progress()

    def _write_progress(self) -> None:
        record = {"done": {k: sorted(v) for k, v in self.done.items()}, **self.progress_extra}
        atomic_write_json(self.progress_path, record)

    def close(self) -> None:
        """Flush and record everything written, and release the memory maps."""
        self.flush()
        self._maps.clear()

    def zero_norm_vectors(self, ids: Sequence[str], limit: int = 1000) -> tuple[list[dict], int]:
        """``([{site, lang, pool, id[, token]}...], count)``: stored vectors whose norm is 0."""
        found: list[dict[str, Any]] = []
        count = 0
        tiny = np.finfo(np.float32).tiny
        for (lang, site, pool), mm in self._maps.items():
            chunk = 65536
            for lo in range(0, mm.shape[0], chunk):
                block = np.asarray(mm[lo : lo + chunk])
                zero = np.flatnonzero(np.sqrt((block.astype(np.float64) ** 2).sum(1)) < tiny)
                count += len(zero)
                for z in zero[: max(0, limit - len(found))]:
                    index = lo + int(z)
                    entry: dict[str, Any] = {"site": site, "lang": lang, "pool": pool}
                    if pool == TOKEN_POOL:
                        offsets = self._offsets[lang]
                        row = int(np.searchsorted(offsets, index, side="right")) - 1
                        entry.update(id=ids[row], token=index - int(offsets[row]))
                    else:
                        entry["id"] = ids[index]
                    found.append(entry)
        return found, count

    def write_manifest(self) -> None:
        """Write the manifest as it stands (atomically); ``complete`` stays as it is."""
        atomic_write_json(self.path / MANIFEST, self.manifest)

    def finish(self, updates: Mapping[str, Any]) -> dict[str, Any]:
        """Flush everything and write the manifest with ``"complete": true``; returns it."""
        self.close()
        token_files = [p for lang in self.languages for p in token_paths(self.path, lang)]
        with ThreadPoolExecutor(max_workers=min(16, len(token_files))) as pool:
            list(pool.map(_fsync_file, token_files))
        self.manifest.update(updates)
        self.manifest["complete"] = True
        atomic_write_json(self.path / MANIFEST, self.manifest)
        return self.manifest


def progress_files(path: Path) -> list[Path]:
    """Every progress record of the run at ``path``: ``progress.json`` and each rank's."""
    files = [path / PROGRESS] if (path / PROGRESS).exists() else []
    return files + sorted((path / PROGRESS_DIR).glob("rank-*.json"))


def read_progress(path: Path) -> dict[str, list[int]]:
    """Batches recorded done per language in the run at ``path`` (empty when none).

    The union over every progress file: a data-parallel launch records each rank's batches in
    its own file (see :data:`PROGRESS_DIR`).
    """
    done: dict[str, set[int]] = {}
    for p in progress_files(path):
        try:
            data = read_json(p)
        except (OSError, json.JSONDecodeError):
            continue  # written atomically; unreadable only while being replaced on some FS
        for k, v in data.get("done", {}).items():
            done.setdefault(str(k), set()).update(int(b) for b in v)
    return {k: sorted(v) for k, v in done.items()}


def rank_sessions(path: Path) -> list[dict[str, Any]]:
    """The sessions every rank of every data-parallel launch recorded in its progress file."""
    sessions: list[dict[str, Any]] = []
    for p in sorted((path / PROGRESS_DIR).glob("rank-*.json")):
        try:
            sessions += list(read_json(p).get("sessions", []))
        except (OSError, json.JSONDecodeError):
            continue
    return sessions


def prepare_folder(path: Path, overwrite: bool, *, check_only: bool = False) -> None:
    """Make sure ``path`` can take a new run: absent, empty, or an old run (with overwrite).

    Refuses to delete a folder that does not hold a run, whatever ``overwrite`` says;
    ``check_only`` raises the same errors but deletes nothing.
    """
    if not path.exists():
        return
    if not path.is_dir():
        raise RunError(f"output '{path}' exists and is not a folder")
    entries = [p for p in path.iterdir() if not _is_bookkeeping(p.name)]
    if not entries:
        return
    info = holder(path)
    if info is not None:
        raise RunError(busy_message(path, info) + "; one writer per folder")
    manifest = path / MANIFEST
    if not manifest.exists():
        raise RunError(
            f"output folder '{path}' is not empty and holds no run (no {MANIFEST}); "
            "choose a new or empty folder"
        )
    if not overwrite:
        state = "a complete" if _is_complete(path) else "an incomplete"
        hint = "" if _is_complete(path) else " or --resume to continue it"
        raise RunError(f"'{path}' already holds {state} run; pass --overwrite to replace it{hint}")
    if not check_only:
        clear_folder(path)


def _is_bookkeeping(name: str) -> bool:
    """The lock file, the writability probe of another process's :func:`~xlalign.lock.acquire`
    (rank 0 of a launch may be probing while another rank checks the folder) and the temporary
    files of an interrupted atomic write: not a run's data."""
    return (
        name == LOCK_FILE
        or name.startswith(PROBE_PREFIX)
        or (name.startswith(".") and name.endswith(".tmp"))
    )


def clear_folder(path: Path) -> None:
    """Delete everything in ``path`` except its lock file (held by this process meanwhile)."""
    for entry in path.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _is_complete(path: Path) -> bool:
    try:
        return bool(read_json(path / MANIFEST).get("complete", False))
    except (OSError, json.JSONDecodeError):
        return False


# ---------------------------------------------------------------------------------------------
# reading


@dataclass
class Run:
    """A run folder opened for reading: arrays by ``(lang, site, pool)``.

    ``run.array("zh", "L0", "last")`` and ``run["zh", "L0", "last"]`` give the
    ``(n_rows, d_model)`` float32 array (memory-mapped, read-only), rows in corpus order.
    """

    path: Path
    manifest: dict[str, Any]
    _meta: dict[str, Any] | None = field(default=None, repr=False)
    #: A run written before ``pool_semantics``: how its pools are read (see :func:`load_run`).
    legacy: LegacyPools | None = field(default=None, repr=False)

    # -- what is in the run

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete", False))

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(self.manifest["languages"])

    @property
    def sites(self) -> tuple[str, ...]:
        """Captured sites, ordered by depth (``embed``, ``L0``, ..., ``final``)."""
        return tuple(self.manifest["sites"])

    @property
    def pools(self) -> tuple[str, ...]:
        """Captured pools, ``tokens`` included when token vectors were kept.

        For a run written before ``pool_semantics`` these are the pools under today's names
        (its stored ``last`` may read as ``eos``, or not at all; see :attr:`pool_note`).
        """
        if self.legacy is not None:
            return self.legacy.pools
        return tuple(self.manifest["pools"])

    @property
    def pool_note(self) -> str | None:
        """For a run written before ``pool_semantics``, how its stored pools are read."""
        return self.legacy.note if self.legacy is not None else None

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self.manifest["ids"])

    @property
    def n_rows(self) -> int:
        return int(self.manifest["n_rows"])

    @property
    def d_model(self) -> int:
        return int(self.manifest["d_model"])

    @property
    def n_layers(self) -> int:
        return int(self.manifest["n_layers"])

    @property
    def meta(self) -> dict[str, list[Any]]:
        """Per-row corpus columns (e.g. ``category``), column -> list in row order."""
        if self._meta is None:
            p = self.path / META
            self._meta = read_json(p) if p.exists() else {}
        return dict(self._meta.get("columns", {}))

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return (
            f"Run({str(self.path)!r}, {self.manifest.get('model')!r}, {state}, "
            f"langs={','.join(self.languages)}, sites={describe_sites(self.sites)}, "
            f"pools={','.join(self.pools)}, n_rows={self.n_rows})"
        )

    # -- arrays

    def _check(self, lang: str, site: str, pool: str | None) -> None:
        if lang not in self.languages:
            raise RunError(f"language '{lang}' not in run: it has {', '.join(self.languages)}")
        if site not in self.sites:
            raise RunError(f"site '{site}' not in run: it has {describe_sites(self.sites)}")
        if pool is not None and pool not in self.pools:
            if self.legacy is not None and pool in self.legacy.refused:
                raise RunError(self.legacy.refused[pool])
            raise RunError(f"pool '{pool}' not in run: it has {', '.join(self.pools)}")

    def array(self, lang: str, site: str, pool: str, *, mmap: bool = True) -> np.ndarray:
        """``(n_rows, d_model)`` float32 vectors of ``lang`` at ``site`` pooled by ``pool``."""
        self._check(lang, site, pool)
        if pool == TOKEN_POOL:
            raise RunError(
                "pool 'tokens' holds one vector per token: use run.token_vectors(lang, site)"
            )
        stored = self.legacy.files.get(pool, pool) if self.legacy is not None else pool
        return np.load(
            array_path(self.path, lang, site, stored),
            mmap_mode="r" if mmap else None,
            allow_pickle=False,
        )

    def __getitem__(self, key: tuple[str, str, str]) -> np.ndarray:
        if not (isinstance(key, tuple) and len(key) == 3):
            raise KeyError(f"index a run with (lang, site, pool), got {key!r}")
        return self.array(*key)

    def keys(self) -> Iterator[tuple[str, str, str]]:
        """Every ``(lang, site, pool)`` with one vector per prompt."""
        for lang in self.languages:
            for site in self.sites:
                for pool in self.pools:
                    if pool != TOKEN_POOL:
                        yield lang, site, pool

    def __iter__(self) -> Iterator[tuple[str, str, str]]:
        return self.keys()

    def __contains__(self, key: object) -> bool:
        return key in set(self.keys())

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())

    def _tokens(self, lang: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if lang not in self.languages:
            raise RunError(f"language '{lang}' not in run: it has {', '.join(self.languages)}")
        ids_p, off_p, spec_p = token_paths(self.path, lang)
        return (
            np.load(ids_p, allow_pickle=False),
            np.load(off_p, allow_pickle=False),
            np.load(spec_p, allow_pickle=False),
        )

    def offsets(self, lang: str) -> np.ndarray:
        """``(n_rows + 1,)`` int64: row ``i``'s tokens are ``[off[i], off[i+1])``."""
        return self._tokens(lang)[1]

    def lengths(self, lang: str) -> np.ndarray:
        """Tokens per prompt, ``(n_rows,)`` int64 (special tokens included)."""
        return np.diff(self.offsets(lang))

    def token_ids(self, lang: str) -> list[np.ndarray]:
        """Each prompt's token ids as the model saw them (int32), in corpus order."""
        ids, offsets, _ = self._tokens(lang)
        return [ids[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]

    def special_tokens_mask(self, lang: str) -> list[np.ndarray]:
        """Per prompt, a bool array marking the tokenizer's special tokens."""
        _, offsets, special = self._tokens(lang)
        return [special[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]

    def token_vectors(self, lang: str, site: str) -> list[np.ndarray]:
        """Per prompt, its tokens' vectors ``(len_i, d_model)`` float32 (pool ``tokens``)."""
        self._check(lang, site, None)
        if TOKEN_POOL not in self.pools:
            raise RunError(
                f"run has no token vectors (pools: {', '.join(self.pools)}); "
                "extract with --pool tokens to keep them"
            )
        flat = np.load(
            array_path(self.path, lang, site, TOKEN_POOL), mmap_mode="r", allow_pickle=False
        )
        offsets = self.offsets(lang)
        return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]

    def tokenizer(self) -> Any:
        """The run's tokenizer: the copy saved in the run, else loaded by the model id."""
        from transformers import AutoTokenizer

        saved = self.path / TOKENIZER_DIR
        if saved.is_dir():
            return AutoTokenizer.from_pretrained(saved)
        return AutoTokenizer.from_pretrained(
            self.manifest["model"], revision=self.manifest.get("revision")
        )


def load_run(path: str | Path, *, allow_incomplete: bool = False) -> Run:
    """Open the run folder at ``path``.

    An incomplete run (killed, or still running) is an error saying how to resume it, unless
    ``allow_incomplete``.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        what = "does not exist" if not path.exists() else f"has no {MANIFEST}"
        raise RunError(f"run folder '{path}' {what}")
    try:
        manifest = read_json(manifest_path)
    except json.JSONDecodeError as e:
        raise RunError(f"{manifest_path}: not valid JSON ({e.msg})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RunError(f"{manifest_path}: not an xlalign run manifest")
    for key in ("format_version", "pool_semantics"):
        if not isinstance(manifest.get(key, 0), int) or isinstance(manifest.get(key), bool):
            raise RunError(f"{manifest_path}: {key} must be an integer, got {manifest[key]!r}")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise RunError(
            f"{manifest_path}: format version {manifest['format_version']} is newer than this "
            f"xlalign reads ({FORMAT_VERSION}); upgrade xlalign"
        )
    run = Run(path, manifest)
    writer = holder(path)
    if writer is not None and not allow_incomplete:
        raise RunError(
            busy_message(path, writer) + "; it reads as complete only once that writer is done"
        )
    if "pool_semantics" not in manifest:
        run.legacy = legacy_pools(run)
    elif int(manifest["pool_semantics"]) > POOL_SEMANTICS:
        raise RunError(
            f"{manifest_path}: pool_semantics {manifest['pool_semantics']} is newer than this "
            f"xlalign reads ({POOL_SEMANTICS}); upgrade xlalign"
        )
    if not run.complete and not allow_incomplete:
        done = sum(len(v) for v in read_progress(path).values())
        total = sum(int(v) for v in manifest.get("n_batches", {}).values())
        raise RunError(
            f"run '{path}' is incomplete ({done} of {total} batches done): resume it with "
            f"`xlalign extract ... --resume -o {path}` (the same flags as before) or "
            "xlalign.extract(..., resume=True)"
        )
    return run


@dataclass(frozen=True)
class LegacyPools:
    """How a run written before ``pool_semantics`` is read under today's pool names.

    Such runs stored as ``last`` the last real token, special or not. ``pools``: the pools it
    is read as; ``files``: pool name -> stored file name where they differ; ``refused``: pool
    name -> the error given when it is asked for; ``note``: one sentence for people.
    """

    pools: tuple[str, ...]
    files: dict[str, str]
    refused: dict[str, str]
    note: str


def legacy_pools(run: Run) -> LegacyPools:
    """Today's reading of ``run``, written before pool ``last`` meant the last non-special token.

    Its stored ``last`` is the prompt's final token. Where no prompt ends in a special token,
    that is today's ``last``; where every prompt does, it is today's ``eos``, and ``last`` is
    refused; where some do, it is neither and both are refused. Never reinterpreted silently.
    """
    stored = tuple(run.manifest["pools"])
    if "last" not in stored:
        return LegacyPools(stored, {}, {}, "written before pool_semantics; it has no pool 'last'")
    ends = []
    for lang in run.languages:
        _, offsets, special = run._tokens(lang)
        if len(offsets) > 1:
            ends.append(special[offsets[1:] - 1])
    ends_special = np.concatenate(ends) if ends else np.zeros(0, dtype=bool)
    again = (
        f"extract it again with this xlalign (`xlalign extract ... --overwrite -o {run.path}`) "
        "for pool 'last', the last non-special token"
    )
    old = f"run '{run.path}' was written by an older xlalign, whose pool 'last' was the final token"
    if not ends_special.any():
        return LegacyPools(
            stored, {}, {},
            f"{old}; no prompt of this run ends in a special token, so that is today's 'last' "
            "(the last non-special token)",
        )  # fmt: skip
    if ends_special.all():
        pools = tuple("eos" if p == "last" else p for p in stored)
        return LegacyPools(
            pools, {"eos": "last"},
            {"last": f"{old}, here the special token the tokenizer appends ([SEP]/EOS); it is "
                     f"read as pool 'eos'. Today's pool 'last' is not in this run: {again}"},
            f"{old}, here the appended special token: its stored 'last' vectors are read as "
            f"pool 'eos'; {again}",
        )  # fmt: skip
    pools = tuple(p for p in stored if p != "last")
    message = (
        f"{old}: a special token for {int(ends_special.sum())} of {ends_special.size} prompts "
        f"and a text token for the others, which is neither 'last' nor 'eos' today; {again}"
    )
    return LegacyPools(pools, {}, {"last": message, "eos": message}, message)


def export_npz(
    run: Run | str | Path,
    output: str | Path,
    *,
    pool: str = "last",
    sites: Sequence[str] | None = None,
    langs: Sequence[str] | None = None,
) -> Path:
    """Write ``pool`` vectors as one ``.npz`` with keys ``<lang>_<site>`` (``zh_L0``, ``en_embed``).

    The study's ``all_layers_lasttok.npz`` format; written with ``np.savez`` (no pickles),
    through a temporary file. Returns the path written.
    """
    if not isinstance(run, Run):
        run = load_run(run)
    if pool == TOKEN_POOL:
        raise RunError("pool 'tokens' has no fixed shape per prompt; export a vector pool")
    if pool not in run.pools:
        run._check(run.languages[0], run.sites[0], pool)  # names why (a legacy run's 'last')
    chosen_sites = list(sites) if sites is not None else list(run.sites)
    chosen_langs = list(langs) if langs is not None else list(run.languages)
    arrays = {
        f"{lang}_{site}": np.asarray(run.array(lang, site, pool))
        for lang in chosen_langs
        for site in chosen_sites
    }
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    with tmp.open("wb") as f:  # a file object keeps numpy from appending ".npz" to the name
        np.savez(f, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, output)
    return output
