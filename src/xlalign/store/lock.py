"""One writer per folder, and no writer while a command reads: OS file locks on ``.xlalign.lock``.

Every command that writes into a run or study folder (``extract`` and its ``--resume`` and
``--overwrite``, ``align``, ``origin``, ``lens``, ``run``, ``compare``, rank 0 of a data-parallel
launch) holds the **exclusive** lock (:func:`folder_lock`) on it for as long as it writes. Every
command that reads a run holds a **shared** lock on it for as long as the command runs: the CLI
opens a :func:`reading` scope around each command, and :func:`xlalign.store.load_run` inside
such a scope takes the shared lock of the folder it opens (:func:`share`), released when the
scope ends. So a writer is refused while any command reads the folder, and a reader is refused
while a writer holds it: ``lens RUN`` beside ``extract --overwrite RUN`` cannot mix two models'
outputs, whichever starts first.

The lock is ``fcntl.flock`` on a file in the folder, so the kernel releases it when the holder
exits, however it exits (``kill -9`` included): a killed writer or reader never leaves a stale
lock. A refused writer is told the holder's PID, host and command (the writer writes them into
the lock file; readers, which may not be able to write, are named from ``/proc/locks``).

One process shares one descriptor per folder: it may take a folder again (the locks count),
reads the folders it writes freely, and a folder it reads is converted to the exclusive lock when
it starts writing there (refused while another process reads it). :func:`load_run` outside a
:func:`reading` scope only checks that no other process is writing the folder.

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
from contextlib import contextmanager, suppress
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
_mutex = threading.RLock()
_warned_unsupported = False
#: The open :func:`reading` scopes, innermost last: the folders each one shares.
_scopes: list[list[Path]] = []
#: Every folder this process took the write lock on, in order (the CLI names the last one when
#: a write fails without naming its file).
written: list[Path] = []


@dataclass
class _Held:
    fd: int
    count: int  # exclusive holds
    created_folder: bool
    shared: int = 0  # shared holds (the descriptor holds LOCK_SH while count is 0)


def _key(path: Path) -> Path:
    return Path(os.path.abspath(path))


def holds(path: str | Path) -> bool:
    """Whether this process holds the exclusive (write) lock on ``path``."""
    held = _held.get(_key(Path(path)))
    return held is not None and held.count > 0


def holds_shared(path: str | Path) -> bool:
    """Whether this process holds ``path`` at all, for reading or writing."""
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

    None also when this process is the writer, when the folder has no lock file, and when other
    processes only read it (see :func:`readers`).
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


def readers(path: str | Path) -> list[dict[str, Any]]:
    """``{"pid", "command"}`` of each other process of this host holding ``path`` for reading.

    Read from ``/proc/locks`` (Linux); empty where it is not there. The command is the
    process's command line, shortened.
    """
    try:
        st = os.stat(Path(path) / LOCK_FILE)
        text = Path("/proc/locks").read_text(encoding="ascii")
    except OSError:
        return []
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    found: list[dict[str, Any]] = []
    for line in text.splitlines():
        parts = line.split()
        if "->" in parts or len(parts) < 6 or parts[1] != "FLOCK" or parts[5] != dev:
            continue
        pid = int(parts[4]) if parts[4].isdigit() else None
        if parts[3] != "READ" or pid is None or pid == os.getpid():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            command = " ".join(a.decode("utf-8", "replace") for a in argv if a)
        except OSError:
            command = ""
        if len(command) > 120:
            command = command[:117] + "..."
        found.append({"pid": pid, "command": command})
    return found


def busy_message(path: Path, info: dict[str, Any] | None) -> str:
    """The sentence that says ``path`` is being written by ``info``'s process."""
    return f"'{path}' is being written by {_describe(info)}"


def read_message(path: Path, found: list[dict[str, Any]]) -> str:
    """The sentence that says ``path`` is being read by the processes ``found``."""
    if not found:
        return f"'{path}' is being read by another process"
    who = "; ".join(
        f"PID {r['pid']} on host {platform.node()}" + (f" ({r['command']})" if r["command"] else "")
        for r in found[:3]
    )
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return f"'{path}' is being read by {who}{more}"


def _refused(path: Path, lock_path: Path) -> RunError:
    """The error of a writer refused on ``path``: the writer that holds it, or its readers."""
    readers_only = False
    try:  # a shared lock granted now means only readers hold the folder
        fd = os.open(lock_path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            readers_only = True
        finally:
            os.close(fd)
    except OSError:
        pass
    if readers_only:
        return RunError(
            read_message(path, readers(path)) + "; it cannot be written while a command reads "
            "it: wait for that command to finish, stop it, or choose another output folder"
        )
    return RunError(
        busy_message(path, _read_info(lock_path)) + "; one writer per folder: wait for it to "
        "finish, stop it, or choose another output folder"
    )


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


def _write_info(fd: int, what: str | None) -> None:
    info = {
        "pid": os.getpid(),
        "host": platform.node(),
        "command": what or " ".join(["xlalign", *sys.argv[1:3]]),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)


def acquire(path: str | Path, what: str | None = None) -> None:
    """Take the write lock on folder ``path`` (created if absent); :class:`RunError` if taken.

    The error names the holder's PID, host and command, or the processes reading the folder.
    A read-only folder is an error here too, before any computation. A folder this process
    reads (:func:`share`) is converted to the write lock. Pair every call with :func:`release`.
    """
    path = Path(path)
    key = _key(path)
    with _mutex:
        held = _held.get(key)
        if held is not None and held.count > 0:
            held.count += 1
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
        if held is not None:  # read by this process so far: convert its descriptor
            _upgrade(path, lock_path, held)
        else:
            fd = _lock_fd(path, lock_path)
            held = _held[key] = _Held(fd, 0, created)
        held.count = 1
        written.append(path)
        try:
            _write_info(held.fd, what)
        except OSError as e:  # a full disk: said now, before any work
            release(path)
            raise _writable_error(path, e) from None


def _upgrade(path: Path, lock_path: Path, held: _Held) -> None:
    """Convert ``held``'s shared lock to the exclusive one, or raise (keeping the shared one).

    Linux drops the shared lock before it tries the exclusive one, so a refused conversion takes
    the shared lock again (granted: the processes that refused it only read).
    """
    if fcntl is None or held.fd < 0:
        return
    try:
        fcntl.flock(held.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        error = _refused(path, lock_path)
        with suppress(OSError):
            fcntl.flock(held.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        raise error from None


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
                    raise _refused(path, lock_path) from None
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
        if _same_file(lock_path, fd):
            return fd
        os.close(fd)
        path.mkdir(parents=True, exist_ok=True)


def _same_file(lock_path: Path, fd: int) -> bool:
    try:
        return os.stat(lock_path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def release(path: str | Path) -> None:
    """Give back one hold of the write lock on ``path`` (the last one unlocks it).

    A folder this hold created and left empty (the work failed before writing anything) is
    removed again, so a failed command leaves nothing behind. A folder this process also reads
    keeps its shared lock.
    """
    path = Path(path)
    key = _key(path)
    with _mutex:
        held = _held.get(key)
        if held is None or held.count == 0:
            return
        held.count -= 1
        if held.count > 0:
            return
        with suppress(OSError):
            os.ftruncate(held.fd, 0)
        if held.shared > 0:  # still read by this process
            if fcntl is not None:
                with suppress(OSError):
                    fcntl.flock(held.fd, fcntl.LOCK_SH)  # a downgrade never waits
            return
        del _held[key]
        try:
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


# ---------------------------------------------------------------------------------------------
# readers


def share(path: str | Path, why: str = "") -> bool:
    """Take the shared (read) lock on the existing folder ``path``; False where there is none.

    :class:`RunError` while another process writes the folder, naming it (then ``why``). A
    folder without a lock file gets one; where none can be made (a read-only folder, where no
    one can write either) or where the file system has no locks, nothing is held and False is
    returned. Pair a True with :func:`unshare`.
    """
    path = Path(path)
    key = _key(path)
    with _mutex:
        held = _held.get(key)
        if held is not None:
            held.shared += 1
            return True
        if fcntl is None or not path.is_dir():
            return False
        lock_path = path / LOCK_FILE
        while True:
            try:
                fd = _open_for_sharing(lock_path)
            except OSError:
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunError(
                        busy_message(path, _read_info(lock_path)) + (f"; {why}" if why else "")
                    ) from None
                return False  # no locks on this file system
            if _same_file(lock_path, fd):
                break
            os.close(fd)  # the folder's writer gave it up and removed it
            if not path.is_dir():
                return False
        _held[key] = _Held(fd, 0, False, shared=1)
    return True


def _open_for_sharing(lock_path: Path) -> int:
    """The lock file opened for writing where it may be (a reader of its folder may start
    writing there), else for reading; created where absent and possible."""
    try:
        return os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        return os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # not ours to write, or a read-only file system: a shared lock still holds
        return os.open(lock_path, os.O_RDONLY)


def unshare(path: str | Path) -> None:
    """Give back one shared hold of ``path`` (the last one, with no write hold, unlocks it)."""
    key = _key(Path(path))
    with _mutex:
        held = _held.get(key)
        if held is None or held.shared == 0:
            return
        held.shared -= 1
        if held.shared == 0 and held.count == 0:
            del _held[key]
            os.close(held.fd)


@contextmanager
def reading() -> Iterator[None]:
    """A scope in which every run :func:`xlalign.store.load_run` opens stays read-locked.

    The CLI runs each command in one; a library user reading runs that other processes may
    overwrite opens one too (``with xlalign.store.lock.reading(): ...``). The shared locks
    taken inside are given back when the scope ends.
    """
    scope: list[Path] = []
    with _mutex:
        _scopes.append(scope)
    try:
        yield
    finally:
        with _mutex:
            del _scopes[next(i for i, s in enumerate(_scopes) if s is scope)]  # by identity
            for path in reversed(scope):
                unshare(path)


def hold_for_reading(path: str | Path, why: str = "") -> None:
    """Inside a :func:`reading` scope, share ``path`` until the scope ends; outside one, only
    refuse a folder another process is writing. Raises :class:`RunError` naming the writer."""
    path = Path(path)
    with _mutex:
        scope = _scopes[-1] if _scopes else None
        if scope is not None:
            if share(path, why):
                scope.append(path)
            return
    info = holder(path)
    if info is not None:
        raise RunError(busy_message(path, info) + (f"; {why}" if why else ""))
