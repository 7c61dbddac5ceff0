"""Content fingerprints of weights and tokenizers: what resume and reuse compare, never a path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xlalign.models.gguf import cached_file_sha256

__all__ = [
    "cached_file_sha256",
    "same_weights",
    "sampled_weights_fingerprint",
    "state_dict_fingerprint",
    "tokenizer_fingerprint",
    "weights_fingerprint",
]

#: The files besides the weights whose every byte decides an activation (or the next token).
CONFIG_FILES = ("config.json", "generation_config.json")


def weights_fingerprint(folder: Path) -> str | None:
    """SHA-256 over every byte of a local folder's weight files and its ``config.json`` /
    ``generation_config.json`` (names, sizes and each file's SHA-256), or None when it holds
    no weights.

    An edit anywhere in a multi-GB file, or a changed ``rms_norm_eps`` or ``hidden_act``,
    changes it. Each file is read once at disk speed; its hash is then cached by absolute path,
    size, mtime and inode (:func:`cached_file_sha256`), so later calls cost a ``stat``.
    """
    files = sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin")])
    if not files:
        return None
    files += [folder / name for name in CONFIG_FILES if (folder / name).is_file()]
    h = hashlib.sha256()
    for path in files:
        h.update(f"{path.name}\0{path.stat().st_size}\0{cached_file_sha256(path)}\0".encode())
    return "sha256:" + h.hexdigest()


def same_weights(recorded: str | None, folder: Path) -> tuple[bool, str | None]:
    """``(equal, fingerprint now)`` of a folder against a run's recorded fingerprint. A run
    made before full hashing recorded a sampled one (``sha256-sampled:``); it is compared with
    the sampled fingerprint of the folder now, so such runs stay reusable."""
    if recorded is not None and recorded.startswith("sha256-sampled:"):
        now = sampled_weights_fingerprint(folder)
    else:
        now = weights_fingerprint(folder)
    return now == recorded, now


def sampled_weights_fingerprint(folder: Path, sample_bytes: int = 1 << 20) -> str | None:
    """The fingerprint runs recorded before full hashing: a sampled SHA-256 of a local
    folder's weight files, or None when it holds none.

    Hashes each ``*.safetensors`` / ``*.bin`` file's name and size, its first ``sample_bytes``
    (for safetensors that includes the header with every tensor's name, shape and offset) and
    its last ``sample_bytes``. Cheap on multi-GB checkpoints, and any re-save changes it.
    """
    files = sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin")])
    if not files:
        return None
    h = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        h.update(f"{path.name}\0{size}\0".encode())
        with path.open("rb") as f:
            h.update(f.read(sample_bytes))
            if size > sample_bytes:
                f.seek(max(sample_bytes, size - sample_bytes))
                h.update(f.read(sample_bytes))
    return "sha256-sampled:" + h.hexdigest()


def state_dict_fingerprint(model: nn.Module, sample: int = 4096) -> str:
    """A sampled SHA-256 of an in-memory model's weights (for models with no folder).

    Hashes every state-dict entry's name, shape and dtype, and its first, middle and last
    ``sample`` values: a different architecture or different weights change it.
    """
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach()
        h.update(f"{name}\0{tuple(t.shape)}\0{t.dtype}\0".encode())
        flat = t.reshape(-1)
        n = flat.numel()
        mid = max(0, n // 2 - sample // 2)
        for part in (flat[:sample], flat[mid : mid + sample], flat[max(0, n - sample) :]):
            h.update(part.to("cpu", torch.float32).numpy().tobytes())
    return "sha256-state-dict:" + h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of what decides a tokenizer's ids: its class, vocabulary, rules and special tokens.

    For fast tokenizers the serialized backend (``tokenizer.json``: vocabulary, merges,
    normalizer, pre-tokenizer, post-processor); else the vocabulary. Equal for a tokenizer and
    its ``save_pretrained`` copy, so a run's saved tokenizer can be compared with a model's.
    """
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.removesuffix("Fast").encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        h.update(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    special = {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())}
    h.update(json.dumps(special, sort_keys=True, ensure_ascii=False).encode())
    return "sha256:" + h.hexdigest()
