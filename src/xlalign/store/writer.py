"""Writing a run folder: arrays filled by corpus row as batches finish, progress recorded for resume."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xlalign.errors import RunError, XlalignError
from xlalign.store.files import (
    MANIFEST,
    META,
    PROGRESS,
    PROGRESS_DIR,
    TOKEN_POOL,
    TOKENIZER_DIR,
    array_path,
    atomic_write_json,
    json_safe,
    read_json,
    token_paths,
)
from xlalign.store.pools import VECTOR_POOLS
from xlalign.store.space import check_free_space, reserve_space

#: Default seconds between flushes of a run being written (see :meth:`RunWriter.mark_done`).
FLUSH_INTERVAL_S = 10.0


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
        #: data-parallel launch ``progress/rank-<r>-of-<n>.json`` (see :mod:`xlalign.capture.distributed`)
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
