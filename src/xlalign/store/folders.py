"""Preparing an output folder: refusing one in use or holding a run, clearing what a run wrote."""

from __future__ import annotations

import shutil
from pathlib import Path

from xlalign.errors import RunError
from xlalign.store.files import CONTROL_DIR, MANIFEST, is_own_entry, is_own_temp, read_manifest
from xlalign.store.lock import LOCK_FILE, PROBE_PREFIX, busy_message, holder


def prepare_folder(path: Path, overwrite: bool, *, check_only: bool = False) -> None:
    """Make sure ``path`` can take a new run: absent, empty, or an old run (with overwrite).

    Deletes only what xlalign wrote: a folder is a run when its ``manifest.json`` is xlalign's
    (:func:`~xlalign.store.files.read_manifest`), and ``overwrite`` refuses while it holds
    anything xlalign never writes there (named in the error). ``check_only`` raises the same
    errors but deletes nothing.
    """
    if not path.exists():
        return
    if not path.is_dir():
        raise RunError(f"output '{path}' exists and is not a folder")
    entries = [p for p in path.iterdir() if not _is_bookkeeping(p.name, p.is_dir())]
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
    read_manifest(manifest)  # a manifest some other tool wrote: never read, never deleted
    if not overwrite:
        state = "a complete" if _is_complete(path) else "an incomplete"
        hint = "" if _is_complete(path) else " or --resume to continue it"
        raise RunError(f"'{path}' already holds {state} run; pass --overwrite to replace it{hint}")
    if check_only:
        _refuse_foreign(path, "--overwrite")
    else:
        clear_folder(path, "--overwrite")


def _refuse_foreign(path: Path, what: str) -> None:
    """Raise before ``what`` deletes anything if ``path`` holds what xlalign never writes there,
    or if another process is writing its control's folder."""
    control = path / CONTROL_DIR
    info = holder(control) if control.is_dir() else None
    if info is not None:
        raise RunError(busy_message(control, info) + f"; {what} would delete what it writes")
    foreign = foreign_entries(path)
    if foreign:
        shown = ", ".join(str(p.relative_to(path)) for p in foreign[:5])
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise RunError(
            f"{what} deletes only what xlalign wrote, and '{path}' also holds {shown}{more}, "
            "which xlalign never writes there; move them away or choose another folder"
        )


def foreign_entries(path: Path) -> list[Path]:
    """What a run or study folder holds that xlalign never writes there, sorted.

    The control's folder (``control-random-init/``) is a run folder too: its own foreign
    entries count, and so does a manifest in it that xlalign did not write.
    """
    found: list[Path] = []
    for entry in sorted(path.iterdir()):
        is_dir = entry.is_dir() and not entry.is_symlink()
        if _is_bookkeeping(entry.name, is_dir):
            continue
        if not is_own_entry(entry.name, is_dir):
            found.append(entry)
        elif is_dir and entry.name == CONTROL_DIR:
            if (entry / MANIFEST).exists():
                try:
                    read_manifest(entry / MANIFEST)
                except RunError:
                    found.append(entry / MANIFEST)
                    continue
            found.extend(foreign_entries(entry))
    return found


def _is_bookkeeping(name: str, is_dir: bool = False) -> bool:
    """The lock file, the writability probe of another process's :func:`~xlalign.store.lock.acquire`
    (rank 0 of a launch may be probing while another rank checks the folder) and the temporary
    files of an interrupted write of xlalign's own (:func:`~xlalign.store.files.is_own_temp`):
    not a run's data. A folder is never bookkeeping."""
    return name == LOCK_FILE or (
        not is_dir and (name.startswith(PROBE_PREFIX) or is_own_temp(name))
    )


def clear_folder(path: Path, what: str = "deleting it") -> None:
    """Delete what xlalign writes in the run folder ``path``, and nothing else.

    Refuses (:class:`RunError` naming them) while ``path`` holds anything xlalign never writes
    there, or while another process writes its control's folder; its lock file stays (held by
    this process meanwhile).
    """
    _refuse_foreign(path, what)
    for entry in path.iterdir():
        is_dir = entry.is_dir() and not entry.is_symlink()
        if entry.name == LOCK_FILE or not (
            _is_bookkeeping(entry.name, is_dir) or is_own_entry(entry.name, is_dir)
        ):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _is_complete(path: Path) -> bool:
    try:
        return bool(read_manifest(path / MANIFEST).get("complete", False))
    except (OSError, RunError):
        return False
