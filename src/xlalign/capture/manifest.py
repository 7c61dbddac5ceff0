"""The manifest of a run being captured: what was captured, how and from what, and what must match to resume."""

from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from xlalign.capture.batching import pad_id_of
from xlalign.capture.config import ExtractConfig
from xlalign.data.corpus import ParallelCorpus
from xlalign.data.quality import check_corpus
from xlalign.models.device import device_map_summary, dtype_name
from xlalign.models.fingerprints import state_dict_fingerprint, tokenizer_fingerprint
from xlalign.models.loading import LoadedModel
from xlalign.store.files import (
    FORMAT,
    FORMAT_VERSION,
)
from xlalign.store.pools import (
    POOL_DESCRIPTIONS,
    POOL_SEMANTICS,
    WEIGHTED_ABSOLUTE_DESCRIPTION,
)
from xlalign.store.sites import EMBED, FINAL
from xlalign.store.writer import TokenData

#: Manifest entries that must match for ``resume=True`` to continue a run.
RESUME_KEYS = (
    "model_key",
    "random_init_seed",
    "dtype",
    "corpus_fingerprint",
    "languages",
    "sites",
    "pools",
    "batch_size",
    "padding_side",
    "pool_semantics",
    "compat",
)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:  # as xlalign.__version__ (a lower stage does not import the package's top)
        xlalign_version = version("xlalign")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        xlalign_version = "0+unknown"
    import transformers

    return {
        "xlalign": xlalign_version,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _site_info(loaded: LoadedModel, site: str) -> dict[str, str]:
    paths = loaded.adapter.paths
    blocks = paths.get("blocks") or "blocks"
    if site == EMBED:
        extra = []
        if loaded.adapter.has_additive_positions:
            extra.append(f"plus absolute positions ({paths.get('positions')})")
        what = f"embedding output ({paths.get('embedding')}"
        what += f", {', '.join(extra)})" if extra else ")"
        return {
            "module": f"{blocks}.0",
            "hook": "forward_pre_hook (input)",
            "description": f"input to the first block = {what}; output_hidden_states[0]",
        }
    if site == FINAL:
        return {
            "module": str(paths.get("final_norm")),
            "hook": "forward_hook (output)",
            "description": "output of the final norm = output_hidden_states[-1]",
        }
    i = int(site[1:])
    return {
        "module": f"{blocks}.{i}",
        "hook": "forward_hook (output)",
        "description": f"raw output of block {i} (before any final norm)",
    }


def build_manifest(
    loaded: LoadedModel,
    corpus: ParallelCorpus,
    langs: list[str],
    sites: list[str],
    pools: list[str],
    config: ExtractConfig,
    tokens: dict[str, TokenData],
    batches: dict[str, list[np.ndarray]],
) -> dict[str, Any]:
    tok = loaded.tokenizer
    # What resume and reuse compare: the weights' content, not the path they were read from.
    weights = loaded.weights_fingerprint
    if weights is None:  # an in-memory model or a Hub download: hash the tensors themselves
        try:
            weights = state_dict_fingerprint(loaded.model)
        except (RuntimeError, NotImplementedError):  # weights offloaded to "meta" by device_map
            weights = None
    model_key = weights or f"{loaded.model_id}@{loaded.revision or 'default'}"
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "complete": False,
        "created": utc_now(),
        "model": loaded.model_id,
        "model_path": loaded.model_path,
        "revision": loaded.revision,
        "commit_hash": loaded.commit_hash,
        "weights_fingerprint": weights,
        "checkpoint": loaded.checkpoint,
        "model_key": model_key,
        "architecture": type(loaded.model).__name__,
        "family": loaded.family,
        "is_causal_lm": loaded.is_causal_lm,
        "n_layers": loaded.n_layers,
        "d_model": loaded.d_model,
        "dtype": dtype_name(loaded.dtype),
        "device": str(loaded.device),
        "device_map": loaded.device_map,
        "hf_device_map": device_map_summary(loaded.model),
        "random_init_seed": loaded.random_init_seed,
        "weights": "trained"
        if loaded.random_init_seed is None
        else f"random-init (seed {loaded.random_init_seed}): the architecture with fresh "
        "random weights, not the trained model",
        "has_additive_positions": loaded.adapter.has_additive_positions,
        "modules": dict(loaded.adapter.paths),
        # the name the user gave, not the folder it resolved to (the tokenizer comes with it)
        "tokenizer_name": loaded.model_id
        if loaded.model_id != "<memory>"
        else getattr(tok, "name_or_path", None) or loaded.model_id,
        "tokenizer_class": type(tok).__name__,
        "tokenizer_fingerprint": tokenizer_fingerprint(tok),
        "adds_bos": loaded.adds_bos,
        "bos_token": loaded.bos_token,
        "adds_eos": loaded.adds_eos,
        "pad_token_id": pad_id_of(tok),
        "sites": sites,
        "site_info": {s: _site_info(loaded, s) for s in sites},
        "pools": pools,
        "pool_semantics": POOL_SEMANTICS,
        "pool_info": {p: _pool_description(p, config.compat) for p in pools},
        "compat": config.compat,
        "languages": langs,
        "n_rows": len(corpus),
        "ids": list(corpus.ids),
        "meta_columns": list(corpus.meta),
        "corpus_source": corpus.source,
        "corpus_fingerprint": corpus.fingerprint(),
        # rows that are not translations (placeholders, copies, wrong script...), by id
        "corpus_quality": check_corpus(corpus, langs).to_json(),
        "padding_side": config.padding_side,
        "batch_size": config.batch_size,
        "n_batches": {lang: len(b) for lang, b in batches.items()},
        "n_tokens": {lang: int(t.offsets[-1]) for lang, t in tokens.items()},
        "versions": _versions(),
        "platform": {"machine": platform.machine(), "system": platform.system()},
        "command": sys.argv if sys.argv and sys.argv[0] else None,
        "sessions": [],
    }


def weighted_positions(compat: str) -> str:
    return "absolute" if compat == "mexa" else "real"


def _pool_description(pool_name: str, compat: str) -> str:
    if pool_name == "weighted" and compat == "mexa":
        return WEIGHTED_ABSOLUTE_DESCRIPTION
    return POOL_DESCRIPTIONS[pool_name]


#: How :func:`resume_diffs` names a manifest key that differs.
_KEY_NAMES = {
    "model_key": "the weights' fingerprint; ",
    "tokenizer_fingerprint": "the tokenizer's content; ",
    "pool_semantics": "what pool 'last' means: since version 2 the last non-special token, "
    "so a run written before cannot be continued, only captured again with --overwrite; ",
}


def resume_diffs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between the run on disk (``old`` manifest) and this extraction's.

    The weights' and tokenizer's fingerprints (content, not path), dtype, device type, corpus
    and every capture option in :data:`RESUME_KEYS`. A run written before tokenizer
    fingerprints were recorded is not refused for lacking one.
    """
    defaults = {"compat": "exact"}  # runs written before a key existed hold its default

    def was(key: str) -> Any:
        return old.get(key, defaults.get(key))

    diffs = [
        f"{key} differs ({_KEY_NAMES.get(key, '')}run: {was(key)!r}, now: {new.get(key)!r})"
        for key in (*RESUME_KEYS, "tokenizer_fingerprint")
        if was(key) != new.get(key)
        and not (key == "tokenizer_fingerprint" and old.get(key) is None)
    ]
    old_dev, new_dev = (str(m.get("device") or "").split(":")[0] for m in (old, new))
    if old_dev and new_dev and old_dev != new_dev:
        diffs.append(f"device differs (run: {old_dev}, now: {new_dev})")
    return diffs
