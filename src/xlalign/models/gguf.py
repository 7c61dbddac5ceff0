"""GGUF checkpoints as models: dequantize once with transformers, cache as safetensors.

Transformers reads a GGUF file itself (``from_pretrained(folder, gguf_file=name)``, with the
``gguf`` package installed) and dequantizes every tensor to torch. That takes about a minute
for a 0.5B model on two cores, so the result is saved once as a plain safetensors folder in
the cache (:func:`cache_dir`), keyed by the GGUF file's SHA-256; later loads read that folder
and take seconds. The weights are then exactly the dequantized values of the quantized file:
close to, but not the same as, the original full-precision checkpoint.

Layout of one cache entry, ``<cache>/gguf/<sha256>/``: ``config.json``, ``model.safetensors``,
the tokenizer files, and ``xlalign-gguf.json`` (:class:`GgufInfo`), written last, so a folder
without it is an interrupted conversion and is redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xlalign.errors import XlalignError

#: Environment variable that overrides the cache folder.
CACHE_ENV = "XLALIGN_CACHE"
INFO_FILE = "xlalign-gguf.json"
GGUF_INSTALL = "pip install gguf (or pip install 'xlalign[qwen]')"


def cache_dir() -> Path:
    """``$XLALIGN_CACHE``, else ``$XDG_CACHE_HOME/xlalign``, else ``~/.cache/xlalign``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "xlalign"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


#: Where the hashes of files already read are kept, under the cache folder.
HASH_CACHE = "file-hashes.json"


def cached_file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, from the cache when the file's absolute path, size, mtime
    and inode are those it was hashed with (else hashed again and the cache updated). The
    cache is ``file-hashes.json`` in the xlalign cache folder; an unreadable or unwritable
    cache only costs the hashing."""
    st = path.stat()
    key = str(path.resolve())
    stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
    cache_path = cache_dir() / HASH_CACHE
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8"))
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(key)
    if isinstance(entry, dict) and entry.get("stat") == stamp and entry.get("sha256"):
        return str(entry["sha256"])
    digest = file_sha256(path)
    # entries of files that are gone (test folders, deleted models) are dropped
    cache = {k: v for k, v in cache.items() if Path(k).exists()}
    cache[key] = {"stat": stamp, "sha256": digest}
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(f"{cache_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache), encoding="utf-8")
        tmp.replace(cache_path)
    except OSError:
        pass
    return digest


@dataclass(frozen=True)
class GgufInfo:
    """What a run records about a model that came from a GGUF file."""

    file: str
    """The GGUF file as given (or, for a named model, the packages it was assembled from)."""
    sha256: str
    """SHA-256 of the GGUF file's bytes."""
    quantization: str
    """The file's declared type (``general.file_type``, e.g. ``Q4_K_M``)."""
    tensor_types: dict[str, int]
    """How many tensors the file stores in each GGML type (``Q4_K``: 120, ``F32``: 121...)."""
    dequantized_to: str
    """The safetensors folder the dequantized weights were saved in."""
    dequantize_s: float | None = None
    """Seconds the one-time dequantization took."""
    note: str = ""
    """What the weights are, for the report."""
    files: dict[str, str] = field(default_factory=dict)
    """SHA-256 of each file of the dequantized folder, checked whenever the cache is used."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def find_gguf(path: Path) -> Path | None:
    """The GGUF file ``path`` names: itself, or the one ``.gguf`` in a folder; None if neither.

    A folder with a ``config.json`` is an ordinary model folder; a folder with several GGUF
    files is an error naming them.
    """
    if path.is_file():
        return path if path.suffix.lower() == ".gguf" else None
    if not path.is_dir() or (path / "config.json").exists():
        return None
    found = sorted(p for p in path.iterdir() if p.suffix.lower() == ".gguf")
    if len(found) > 1:
        raise XlalignError(
            f"model folder '{path}' holds {len(found)} GGUF files "
            f"({', '.join(p.name for p in found)}); give the one to load"
        )
    return found[0] if found else None


def read_gguf_types(path: Path) -> tuple[str, dict[str, int]]:
    """``(file type, {tensor type: count})`` from a GGUF file's header."""
    gguf = _import_gguf()
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as e:
        raise XlalignError(f"'{path}' is not a readable GGUF file: {e}") from None
    counts: dict[str, int] = {}
    for t in reader.tensors:
        name = gguf.GGMLQuantizationType(int(t.tensor_type)).name
        counts[name] = counts.get(name, 0) + 1
    field = reader.fields.get("general.file_type")
    declared = None
    if field is not None:
        value = int(field.parts[field.data[0]][0])
        try:
            declared = gguf.LlamaFileType(value).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            declared = f"file_type {value}"
    if declared is None:  # no declared type: the commonest tensor type among the matrices
        declared = max(counts, key=lambda k: counts[k]) if counts else "unknown"
    return declared, counts


#: GGML tensor types that hold plain floats (no quantization).
FLOAT_TYPES = frozenset({"F32", "F16", "BF16", "F64"})


def _note(counts: dict[str, int]) -> str:
    quantized = sorted(t for t in counts if t not in FLOAT_TYPES)
    if not quantized:
        return "weights converted to float32 from a GGUF file of unquantized floats"
    return (
        f"weights dequantized to float32 from a quantized GGUF file ({', '.join(quantized)}): "
        "they are the quantized model's weights, not the original full-precision ones"
    )


def _import_gguf() -> Any:
    try:
        import gguf  # type: ignore[import-untyped]
    except ImportError:
        raise XlalignError(f"reading GGUF files needs the gguf package: {GGUF_INSTALL}") from None
    return gguf


def folder_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file of a dequantized folder but its info file (stat-cached)."""
    return {
        p.name: cached_file_sha256(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != INFO_FILE
    }


def cached(sha256: str, say: Any = None) -> tuple[Path, GgufInfo] | None:
    """The cached dequantized folder of the GGUF file with this SHA-256, if there is one whose
    files still have the SHA-256 recorded when it was made.

    A folder whose files differ (flipped bytes, a file missing or added) is moved aside and
    None returned, so the caller dequantizes again, with a message saying why. A folder made
    before the hashes were recorded gets them now (trust on first use). Hashes are cached by
    path, size, mtime and inode, so only the first check reads the files.
    """
    say = say or (lambda msg: print(msg, file=sys.stderr))
    folder = cache_dir() / "gguf" / sha256
    info_path = folder / INFO_FILE
    if not info_path.exists():
        return None
    info = GgufInfo(**json.loads(info_path.read_text(encoding="utf-8")))
    now = folder_hashes(folder)
    if not info.files:
        info = GgufInfo(**{**info.to_json(), "files": now})
        atomic_write_text(info_path, json.dumps(info.to_json(), indent=2))
        return folder, info
    if now != info.files:
        bad = sorted(k for k in {*now, *info.files} if now.get(k) != info.files.get(k))
        aside = folder.with_name(f"{folder.name}.corrupt{os.getpid()}")
        folder.replace(aside)
        shutil.rmtree(aside, ignore_errors=True)
        say(
            f"xlalign: the dequantized cache {folder} no longer matches what was written "
            f"({', '.join(bad)} differ from their recorded SHA-256): dequantizing again"
        )
        return None
    return folder, info


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def dequantized_folder(
    path: Path, *, sha256: str | None = None, label: str | None = None, say: Any = None
) -> tuple[Path, GgufInfo]:
    """The cached safetensors folder of GGUF file ``path``, made now if not cached yet.

    ``sha256`` (if already known, e.g. verified while assembling chunks) saves hashing the
    file again. Returns the folder and the :class:`GgufInfo` recorded beside it.
    """
    say = say or (lambda msg: print(msg, file=sys.stderr))
    digest = sha256 or file_sha256(path)
    hit = cached(digest, say)
    if hit is not None:
        return hit
    folder = cache_dir() / "gguf" / digest
    _import_gguf()
    quantization, counts = read_gguf_types(path)
    say(
        f"xlalign: dequantizing {label or path.name} ({quantization}) once; "
        f"the float32 copy is cached in {folder}"
    )
    t0 = time.perf_counter()
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _dequantize(path, tmp)
        info = GgufInfo(
            file=label or str(path),
            sha256=digest,
            quantization=quantization,
            tensor_types=counts,
            dequantized_to=str(folder),
            dequantize_s=round(time.perf_counter() - t0, 2),
            note=_note(counts),
        )
        (tmp / INFO_FILE).write_text(json.dumps(info.to_json(), indent=2), encoding="utf-8")
        if folder.exists():  # another process finished first: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp.replace(folder)
            # the hashes every later use checks (read once, here, and stat-cached)
            info = GgufInfo(**{**info.to_json(), "files": folder_hashes(folder)})
            atomic_write_text(folder / INFO_FILE, json.dumps(info.to_json(), indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"xlalign: dequantized in {info.dequantize_s:.0f} s")
    return folder, info


def _dequantize(path: Path, out: Path) -> None:
    """Load ``path`` through transformers' GGUF reader and save plain safetensors to ``out``."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from xlalign.models.architecture import is_causal_lm_config

    folder, name = str(path.parent), path.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        auto = AutoModelForCausalLM if is_causal_lm_config(config) else AutoModel
        quantized = auto.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, OSError, KeyError, RuntimeError) as e:
        raise XlalignError(f"transformers cannot load GGUF file '{path}': {e}") from None
    state = quantized.state_dict()
    # save_pretrained refuses a model that carries a quantization_config: build a plain model
    # from the cleaned config (on the meta device: no second random init) and move the
    # dequantized tensors into it.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    del quantized
    with torch.device("meta"):
        plain = auto.from_config(config, dtype=torch.float32)
    plain.load_state_dict(state, strict=True, assign=True)
    if getattr(config, "tie_word_embeddings", False) and hasattr(plain, "tie_weights"):
        plain.tie_weights()
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
