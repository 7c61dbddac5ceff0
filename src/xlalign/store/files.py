"""The files of a run folder: their names, where each array lives, and JSON written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from xlalign.errors import RunError

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

#: What xlalign writes at the top of a run or study folder: the run itself and the outputs of
#: the studies, the report and the control beside it. ``--overwrite`` deletes these and nothing
#: else (see :func:`xlalign.store.folders.prepare_folder`).
OWN_FILES = frozenset(
    {
        MANIFEST,
        META,
        CORPUS_FILE,
        PROGRESS,
        "alignment.json",
        "alignment.csv",
        "alignment.png",
        "alignment.svg",
        "origin.json",
        "findings.json",
        "lens.json",
        "neurons.json",
        "steer.json",
        "steer.html",
        "steer.md",
        "config.toml",
        "provenance.json",
        "report.html",
        "report.md",
    }
)
#: ``neurons/``: the neuron study's selected neurons (:mod:`xlalign.studies.neurons`).
OWN_FOLDERS = frozenset(
    {PROGRESS_DIR, TOKENIZER_DIR, ARRAYS_DIR, TOKENS_DIR, CONTROL_DIR, "neurons"}
)
#: Figures of the report: ``fig_<name>.png`` and ``fig_<name>.svg``.
FIGURE_PREFIX = "fig_"
FIGURE_SUFFIXES = (".png", ".svg")


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
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        _name_the_file(e, path, tmp)
        raise


def _name_the_file(e: BaseException, path: Path, tmp: str) -> None:
    """A write that failed naming no file (``write`` on a full disk) or the removed temporary
    one: name ``path``, the file it was writing."""
    if isinstance(e, OSError) and e.filename in (None, tmp):
        e.filename = str(path)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; swapped in when the block succeeds, removed
    when it fails (a full disk leaves the old file, or none, and no temporary file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        _name_the_file(e, path, tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


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


def is_own_entry(name: str, is_dir: bool) -> bool:
    """Whether an entry at the top of a run or study folder is one xlalign writes there."""
    if is_dir:
        return name in OWN_FOLDERS
    if name in OWN_FILES or is_own_temp(name):
        return True
    return name.startswith(FIGURE_PREFIX) and name.endswith(FIGURE_SUFFIXES)


def is_own_temp(name: str) -> bool:
    """Whether a file name is the temporary file of an interrupted write of one of xlalign's.

    ``.<own name>.<random>.tmp`` (:func:`atomic_write_json`), ``.alignment.csv.tmp`` and
    ``<own name>.tmp`` (``corpus.jsonl.tmp``): never a user's ``.notes.tmp``.
    """
    if not name.endswith(".tmp"):
        return False
    if name[: -len(".tmp")] in OWN_FILES:
        return True
    inner = name[1:] if name.startswith(".") else ""
    return any(inner.startswith(own + ".") for own in OWN_FILES)


def read_manifest(path: Path) -> dict[str, Any]:
    """The run manifest at ``path``; a :class:`RunError` naming the file when it is not one.

    A manifest is xlalign's when it is a JSON object whose ``format`` is :data:`FORMAT` and whose
    ``format_version`` is an integer: a ``manifest.json`` that some other tool wrote is never
    read (nor deleted) as a run.
    """
    try:
        manifest = read_json(path)
    except json.JSONDecodeError as e:
        raise RunError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); it is not "
            "a run xlalign can read: move it away or choose another folder"
        ) from None
    except UnicodeDecodeError:
        raise RunError(f"{path}: not UTF-8 text, so not a run manifest xlalign wrote") from None
    if not isinstance(manifest, dict):
        raise RunError(
            f"{path}: a JSON {type(manifest).__name__}, not an xlalign run manifest (a JSON "
            "object); move it away or choose another folder"
        )
    version = manifest.get("format_version")
    if (
        manifest.get("format") != FORMAT
        or not isinstance(version, int)
        or isinstance(version, bool)
    ):
        raise RunError(
            f'{path}: not an xlalign run manifest (xlalign\'s carry "format": "{FORMAT}" and '
            "an integer format_version); xlalign neither reads nor deletes this folder: choose "
            "another one"
        )
    return manifest


def array_path(root: Path, lang: str, site: str, pool: str) -> Path:
    """``arrays/<lang>/<site>/<pool>.npy`` under ``root``."""
    return root / ARRAYS_DIR / lang / site / f"{pool}.npy"


def token_paths(root: Path, lang: str) -> tuple[Path, Path, Path]:
    """``(ids, offsets, special)`` files of ``lang`` under ``root``."""
    base = root / TOKENS_DIR
    return base / f"{lang}.ids.npy", base / f"{lang}.offsets.npy", base / f"{lang}.special.npy"
