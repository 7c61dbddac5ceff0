"""Preparing an output folder: refusing one in use or holding a run, clearing what a run wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from xlalign.errors import RunError
from xlalign.store.files import MANIFEST, read_json
from xlalign.store.lock import LOCK_FILE, PROBE_PREFIX, busy_message, holder


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
    """The lock file, the writability probe of another process's :func:`~xlalign.store.lock.acquire`
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
