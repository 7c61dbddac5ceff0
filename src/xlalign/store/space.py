"""Disk space: checked and reserved before writing, and a full disk named as such (the run stays resumable)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from xlalign.errors import RunError

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
