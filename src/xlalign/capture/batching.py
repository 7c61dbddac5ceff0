"""Tokenising a corpus once and cutting it into padded batches whose positions follow the mask."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from xlalign.errors import XlalignError
from xlalign.models.loading import LoadedModel
from xlalign.store.writer import TokenData

# ---------------------------------------------------------------------------------------------
# tokenisation and batching


def tokenize(tokenizer: Any, texts: Sequence[str]) -> TokenData:
    """Tokenise ``texts`` with the tokenizer's special tokens; flat ids, offsets, special mask."""
    enc = tokenizer(
        list(texts),
        add_special_tokens=True,
        return_special_tokens_mask=True,
        return_attention_mask=False,
        padding=False,
        truncation=False,
    )
    ids_rows: list[list[int]] = enc["input_ids"]
    special_rows: list[list[int]] = enc["special_tokens_mask"]
    lengths = np.array([len(r) for r in ids_rows], dtype=np.int64)
    offsets = np.zeros(len(ids_rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.fromiter((t for r in ids_rows for t in r), dtype=np.int64, count=int(offsets[-1]))
    special = np.fromiter(
        (bool(t) for r in special_rows for t in r), dtype=bool, count=int(offsets[-1])
    )
    return TokenData(ids.astype(np.int32), offsets, special)


def plan_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices per batch: longest prompts first, ties in corpus order.

    Sorting by length keeps padding small; longest-first makes a batch that does not fit in
    memory fail at the start, not at the end. Deterministic, so a resumed run rebuilds the same
    batches.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_id_of(tokenizer: Any) -> int:
    """The id used to fill padding (its value never reaches a pooled vector)."""
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


@dataclass
class Batch:
    """One padded batch on the CPU: ``(B, T)`` tensors and the corpus rows they hold."""

    rows: np.ndarray
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    special: torch.Tensor


def make_batch(
    tokens: TokenData,
    rows: np.ndarray,
    *,
    padding_side: str,
    pad_id: int,
    position_offset: int = 0,
    pad_position: int = 0,
) -> Batch:
    """Pad ``rows`` of ``tokens`` into a :class:`Batch`; positions follow the mask.

    ``position_ids = cumsum(mask) - 1 + position_offset`` on real tokens (RoBERTa/XLM-R count
    from ``pad_token_id + 1``) and ``pad_position`` on padding, so each prompt sees the
    positions it would see alone whichever side the padding is on.
    """
    lengths = tokens.lengths[rows]
    b, t = len(rows), int(lengths.max())
    ids = np.full((b, t), pad_id, dtype=np.int64)
    mask = np.zeros((b, t), dtype=np.int64)
    special = np.zeros((b, t), dtype=bool)
    for k, r in enumerate(rows):
        row_ids, row_special = tokens.row(int(r))
        n = len(row_ids)
        sl = slice(0, n) if padding_side == "right" else slice(t - n, t)
        ids[k, sl] = row_ids
        mask[k, sl] = 1
        special[k, sl] = row_special
    positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1 + position_offset, pad_position)
    return Batch(
        rows=np.asarray(rows),
        input_ids=torch.from_numpy(ids),
        attention_mask=torch.from_numpy(mask),
        position_ids=torch.from_numpy(positions),
        special=torch.from_numpy(special),
    )


def forward_params(loaded: LoadedModel) -> frozenset[str]:
    """Names of the arguments the base model's forward takes (looked up once per run)."""
    return frozenset(inspect.signature(loaded.adapter.base.forward).parameters)


def forward_kwargs(
    loaded: LoadedModel, batch: Batch, padding_side: str, params: frozenset[str] | None = None
) -> dict[str, Any]:
    """Keyword arguments for one forward pass of the base model over ``batch``."""
    if params is None:
        params = forward_params(loaded)
    device = loaded.device
    kwargs: dict[str, Any] = {
        "input_ids": batch.input_ids.to(device),
        "attention_mask": batch.attention_mask.to(device),
    }
    if "position_ids" in params:
        kwargs["position_ids"] = batch.position_ids.to(device)
    elif padding_side == "left":
        raise XlalignError(
            f"{type(loaded.adapter.base).__name__}.forward takes no position_ids, so left "
            "padding would shift positions; use --padding-side right"
        )
    if "use_cache" in params:
        kwargs["use_cache"] = False  # a KV cache is pure overhead for one pass
    return kwargs
