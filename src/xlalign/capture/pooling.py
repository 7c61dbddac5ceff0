"""Pooling a padded batch of hidden states into one vector per prompt, on the device.

Pools (``B`` prompts, ``T`` padded positions, ``d`` hidden size):

- ``last``: the last real token that is not a special token: for a decoder whose tokenizer
  appends nothing (GPT-2, Qwen2, Llama) the last token; for an encoder the token before
  ``[SEP]``; where a tokenizer appends an EOS, the token before it. One meaning for every model
  (a prompt made only of special tokens falls back to its last real token).
- ``eos``: the final special token a tokenizer appends (``[SEP]``, ``</s>``); only for
  tokenizers that append one to every prompt (:func:`check_eos` refuses the others).
- ``first``: the first real token ([CLS] for BERT-style tokenizers, the first text token for
  Qwen2-style ones that add no BOS).
- ``mean``: the mean over real tokens that are not special tokens; special tokens come from the
  tokenizer's ``special_tokens_mask``, never from their position.
- ``weighted``: MEXA's position-weighted mean (Kargaran et al. 2024, cisnlp/MEXA):
  ``sum_t t*m_t*h_t / sum_t t*m_t`` with ``t`` the 1-based position among real tokens and
  ``m`` the attention mask. MEXA's ``embed_extractor`` uses the absolute position in the padded
  batch (``attention_mask * arange(1..T)``): the same with right padding or none, different with
  left padding, where it depends on how long the batch's longest prompt is.
  ``weighted_positions="absolute"`` (``xlalign extract --compat mexa``) reproduces that.
- ``tokens``: every real token's vector (special tokens included), stored flat.

Every pool reads only real positions: padding is zeroed with ``where`` before any sum, because
a padded row may hold NaN or garbage and ``0 * NaN`` is NaN. Every vector pool is a weighted sum
over tokens (one-hot weights for ``first``, ``last`` and ``eos``), so all pools of a site come from one
batched float32 matmul where float32 matmuls are exact (CPU, or CUDA with TF32 off); elsewhere
``first``/``last``/``eos`` are gathers and the means elementwise sums, so TF32/bf16 matmul
settings cannot round them. Either way the one-token pools are bit-exact copies of the hidden
state.

Run folders record :data:`~xlalign.store.pools.POOL_SEMANTICS` in their manifest (``pool_semantics``). Runs written
before it (no such key) stored as ``last`` the last real token, special or not; the store reads
them with that meaning named (see :func:`xlalign.store.load_run`), never as today's ``last``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from xlalign.errors import XlalignError

# the pool names, as a run folder records them; here too, where the pools are computed
from xlalign.store.pools import (
    POOL_DESCRIPTIONS,
    POOL_SEMANTICS,
    POOLS,
    VECTOR_POOLS,
    WEIGHTED_ABSOLUTE_DESCRIPTION,
    parse_pools,
)

__all__ = [
    "POOLS",
    "POOL_DESCRIPTIONS",
    "POOL_SEMANTICS",
    "VECTOR_POOLS",
    "WEIGHTED_ABSOLUTE_DESCRIPTION",
    "WEIGHTED_POSITIONS",
    "PoolPlan",
    "check_eos",
    "make_plan",
    "parse_pools",
    "pool",
]


@dataclass
class PoolPlan:
    """Everything pooling needs for one batch, on one device.

    ``weights``: ``(B, P, T)`` float32, one row per vector pool in ``vector_pools`` order, such
    that pool ``p`` of prompt ``b`` is ``sum_t weights[b, p, t] * h[b, t]`` (one-hot rows for
    ``first``, ``last`` and ``eos``); ``first_idx``/``last_idx``/``eos_idx``: ``(B,)``
    positions (``last_idx`` the last non-special real token, ``eos_idx`` the last real token);
    ``real``: ``(B, T)`` bool.
    """

    vector_pools: tuple[str, ...]
    real: torch.Tensor
    first_idx: torch.Tensor
    last_idx: torch.Tensor
    eos_idx: torch.Tensor
    weights: torch.Tensor
    want_tokens: bool

    def to(self, device: torch.device) -> PoolPlan:
        if self.real.device == device:
            return self
        return PoolPlan(
            self.vector_pools,
            self.real.to(device),
            self.first_idx.to(device),
            self.last_idx.to(device),
            self.eos_idx.to(device),
            self.weights.to(device),
            self.want_tokens,
        )


#: How ``weighted`` counts positions: among real tokens, or in the padded batch (MEXA's code).
WEIGHTED_POSITIONS = ("real", "absolute")


def make_plan(
    attention_mask: torch.Tensor,
    special_mask: torch.Tensor,
    pools: Sequence[str],
    weighted_positions: str = "real",
) -> PoolPlan:
    """A :class:`PoolPlan` from a ``(B, T)`` attention mask and special-tokens mask.

    Nothing assumes where the padding is: first/last come from the mask itself, so left and
    right padding give the same vectors. The one exception is ``weighted_positions="absolute"``,
    MEXA's weights ``attention_mask * arange(1..T)``, which shift with left padding. With
    ``eos`` among ``pools`` every prompt must end in a special token (an :class:`XlalignError`
    otherwise; :func:`check_eos` says which prompt).
    """
    if weighted_positions not in WEIGHTED_POSITIONS:
        raise XlalignError(
            f"weighted_positions must be one of {', '.join(WEIGHTED_POSITIONS)}, "
            f"got {weighted_positions!r}"
        )
    real = attention_mask.bool()
    rank = torch.cumsum(real.long(), dim=1) * real  # 1-based position among real tokens, 0 = pad
    lengths = rank.max(dim=1).values
    if bool((lengths == 0).any()):
        raise XlalignError("a prompt has no tokens at all; empty texts cannot be captured")
    first_idx = (rank == 1).long().argmax(dim=1)
    eos_idx = (rank == lengths[:, None]).long().argmax(dim=1)
    content = real & ~special_mask.bool()
    crank = torch.cumsum(content.long(), dim=1) * content  # rank among non-special real tokens
    n_content = crank.max(dim=1).values
    last_content = (crank == n_content[:, None]) & content
    # A prompt made only of special tokens has no content token: its last real token stands in.
    last_idx = torch.where(n_content > 0, last_content.long().argmax(dim=1), eos_idx)
    vector_pools = tuple(p for p in pools if p in VECTOR_POOLS)
    if "eos" in vector_pools:
        ends_special = special_mask.bool().gather(1, eos_idx[:, None]).squeeze(1)
        if not bool(ends_special.all()):
            raise XlalignError(
                "pool 'eos' needs a special token at the end of every prompt, and this "
                "tokenizer appends none; use pool 'last'"
            )
    index = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    rows = []
    for name in vector_pools:
        if name == "first":
            rows.append((rank == 1).float())
        elif name == "last":
            rows.append((index[None, :] == last_idx[:, None]).float())
        elif name == "eos":
            rows.append((rank == lengths[:, None]).float())
        elif name == "mean":
            keep = (real & ~special_mask.bool()).float()
            # A prompt made only of special tokens gets a zero vector, reported as zero-norm.
            rows.append(keep / keep.sum(dim=1, keepdim=True).clamp(min=1.0))
        else:
            if weighted_positions == "absolute":
                positions = torch.arange(1, real.shape[1] + 1, device=real.device)
                t = (positions[None, :] * real).float()
            else:
                t = rank.float()
            rows.append(t / t.sum(dim=1, keepdim=True))
    b, n = attention_mask.shape
    weights = torch.stack(rows, dim=1) if rows else torch.zeros(b, 0, n)
    return PoolPlan(
        vector_pools=vector_pools,
        real=real,
        first_idx=first_idx,
        last_idx=last_idx,
        eos_idx=eos_idx,
        weights=weights,
        want_tokens="tokens" in pools,
    )


def _matmul_is_exact_fp32(device: torch.device) -> bool:
    """Whether a float32 matmul on ``device`` really runs in float32 (no TF32/bf16 shortcuts)."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    if device.type == "cuda":
        return not torch.backends.cuda.matmul.allow_tf32
    return device.type == "cpu"


def pool(hidden: torch.Tensor, plan: PoolPlan) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pool ``hidden`` ``(B, T, d)`` -> ``((B, P, d) float32, (n_real, d) float32 or None)``.

    ``P`` follows ``plan.vector_pools``; token vectors come row by row, each row's real tokens
    in order.
    """
    plan = plan.to(hidden.device)
    b, _, d = hidden.shape
    tokens = hidden[plan.real].float() if plan.want_tokens else None
    if not plan.vector_pools:
        return hidden.new_zeros((b, 0, d), dtype=torch.float32), tokens
    zeroed = torch.where(plan.real[..., None], hidden, 0).float()
    if _matmul_is_exact_fp32(hidden.device):
        # One batched matmul gives every pool of the site: (B, P, T) @ (B, T, d). With exact
        # float32 products and finite inputs, the one-hot rows copy first/last/eos bit for bit.
        return torch.bmm(plan.weights, zeroed), tokens
    rows = torch.arange(b, device=hidden.device)
    out = []
    for k, name in enumerate(plan.vector_pools):
        if name == "first":
            out.append(zeroed[rows, plan.first_idx])
        elif name == "last":
            out.append(zeroed[rows, plan.last_idx])
        elif name == "eos":
            out.append(zeroed[rows, plan.eos_idx])
        else:
            out.append((zeroed * plan.weights[:, k, :, None]).sum(dim=1))
    return torch.stack(out, dim=1), tokens


def check_eos(special_rows: Sequence[Any], ids: Sequence[str], lang: str) -> None:
    """Raise unless every prompt ends in a special token (what pool ``eos`` reads).

    ``special_rows`` holds each prompt's special-tokens mask, ``ids`` the prompts' ids.
    """
    for i, row in enumerate(special_rows):
        if len(row) and not bool(row[-1]):
            raise XlalignError(
                f"pool 'eos' asked for, but prompt id {ids[i]} ({lang}) does not end in a "
                "special token: this tokenizer appends no EOS/[SEP]. Pool 'last' (the last "
                "non-special token) is the prompt's final token here"
            )
