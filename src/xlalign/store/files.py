"""The files of a run folder: their names, where each array lives, and JSON written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

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
