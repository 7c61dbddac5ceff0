"""One writer per folder: an OS file lock on ``.xlalign.lock`` inside every folder xlalign writes.

Every command that writes into a run or study folder (``extract`` and its ``--resume`` and
``--overwrite``, ``align``, ``origin``, ``run``, rank 0 of a data-parallel launch) holds
:func:`folder_lock` on it for as long as it writes. The lock is ``fcntl.flock`` on a file in the
folder, so the kernel releases it when the holder exits, however it exits (``kill -9``
included): a killed writer never leaves a stale lock. A second writer is refused with the
holder's PID, host and command, which the holder writes into the lock file.

Readers (:func:`xlalign.store.load_run`) ask :func:`holder` whether another process is writing
the folder and then refuse to present it as complete. A process that holds a folder may take it
again (the lock counts), and reads its own folders freely.

``flock`` is advisory and per open file: it works on local file systems and on NFSv4 (where the
kernel maps it to a byte-range lock); on file systems without locking the lock is a no-op and
:func:`folder_lock` says so once on stderr.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlalign.errors import RunError

try:
    import fcntl
except ImportError:  # Windows: no flock; the lock is a no-op there
    fcntl = None  # type: ignore[assignment]

#: Name of the lock file in a locked folder; it also marks the folder as xlalign's.
LOCK_FILE = ".xlalign.lock"

#: Prefix of the short-lived file :func:`acquire` creates to test that a folder is writable.
PROBE_PREFIX = ".xlalign-write-test."

_held: dict[Path, _Held] = {}
_mutex = threading.Lock()
_warned_unsupported = False


@dataclass
class _Held:
    fd: int
    count: int
    created_folder: bool


def _key(path: Path) -> Path:
    return Path(os.path.abspath(path))


def holds(path: str | Path) -> bool:
    """Whether this process holds the lock on ``path``."""
    return _key(Path(path)) in _held


def _describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process (it has not written its PID yet)"
    since = info.get("since")
    what = info.get("command") or "xlalign"
    return (
        f"PID {info.get('pid')} on host {info.get('host')} ({what}"
        + (f", since {since}" if since else "")
        + ")"
    )


def _read_info(lock_path: Path) -> dict[str, Any] | None:
    for _ in range(20):  # the holder writes its line right after locking
        try:
            text = lock_path.read_text(encoding="utf-8").strip()
        except OSError:
            return None
        if text:
            try:
                info = json.loads(text)
                return info if isinstance(info, dict) else None
            except json.JSONDecodeError:
                pass
        time.sleep(0.01)
    return None


def holder(path: str | Path) -> dict[str, Any] | None:
    """``{"pid", "host", "command", "since"}`` of another process writing ``path``, else None.

    None also when this process is the writer, or when the folder has no lock file.
    """
    path = Path(path)
    if holds(path) or fcntl is None:
        return None
    lock_path = path / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return _read_info(lock_path) or {}
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def busy_message(path: Path, info: dict[str, Any] | None) -> str:
    """The sentence that says ``path`` is being written by ``info``'s process."""
    return f"'{path}' is being written by {_describe(info)}"


def _writable_error(path: Path, e: OSError) -> RunError:
    reason = {
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
    }.get(e.errno or 0, e.strerror or str(e))
    return RunError(f"cannot write into output folder '{path}': {reason}")


def _probe_writable(path: Path) -> None:
    """Create and delete a file in ``path``: a read-only folder fails here, before any work."""
    probe = path / f"{PROBE_PREFIX}{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise _writable_error(path, e) from None


def acquire(path: str | Path, what: str | None = None) -> None:
    """Take the write lock on folder ``path`` (created if absent); :class:`RunError` if taken.

    The error names the holder's PID, host and command. A read-only folder is an error here too,
    before any computation. Pair every call with :func:`release`.
    """
    path = Path(path)
    key = _key(path)
    with _mutex:
        if key in _held:
            _held[key].count += 1
            return
        created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _writable_error(path, e) from None
        if not path.is_dir():
            raise RunError(f"output '{path}' exists and is not a folder")
        _probe_writable(path)
        lock_path = path / LOCK_FILE
        fd = _lock_fd(path, lock_path)
        info = {
            "pid": os.getpid(),
            "host": platform.node(),
            "command": what or " ".join(["xlalign", *sys.argv[1:3]]),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        _held[key] = _Held(fd, 1, created)


def _lock_fd(path: Path, lock_path: Path) -> int:
    """An open descriptor of ``lock_path`` holding the exclusive flock (RunError if taken)."""
    global _warned_unsupported
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise _writable_error(path, e) from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    info = _read_info(lock_path)
                    raise RunError(
                        busy_message(path, info) + "; one writer per folder: wait for it to "
                        "finish, stop it, or choose another output folder"
                    ) from None
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    if not _warned_unsupported:
                        print(
                            f"xlalign: warning: {path}: the file system does not support "
                            "locks; nothing stops two writers on this folder",
                            file=sys.stderr,
                        )
                        _warned_unsupported = True
                    return os.open(lock_path, os.O_RDWR)
                raise
        # A holder that gave up an empty folder unlinks the file before unlocking: if the name
        # no longer leads to the inode locked here, lock the file that is there now.
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
        path.mkdir(parents=True, exist_ok=True)


def release(path: str | Path) -> None:
    """Give back one hold of the lock on ``path`` (the last one unlocks it).

    A folder this hold created and left empty (the work failed before writing anything) is
    removed again, so a failed command leaves nothing behind.
    """
    path = Path(path)
    key = _key(path)
    with _mutex:
        held = _held.get(key)
        if held is None:
            return
        held.count -= 1
        if held.count > 0:
            return
        del _held[key]
        try:
            os.ftruncate(held.fd, 0)
            if held.created_folder:
                try:
                    entries = [p.name for p in path.iterdir()]
                except OSError:
                    entries = []
                if entries == [LOCK_FILE]:
                    (path / LOCK_FILE).unlink(missing_ok=True)
                    path.rmdir()
        except OSError:
            pass
        finally:
            os.close(held.fd)  # closing the descriptor drops the flock


@contextmanager
def folder_lock(path: str | Path, what: str | None = None) -> Iterator[Path]:
    """Hold the write lock on folder ``path`` for the ``with`` block; yields the path.

    ``what`` is the command recorded for anyone refused (default: ``xlalign <subcommand>``).
    """
    path = Path(path)
    acquire(path, what)
    try:
        yield path
    finally:
        release(path)
