"""Pool names and what each means, as a run folder records them (``pools``, ``pool_semantics``, ``pool_info``).

The pooling itself, on the device, is :mod:`xlalign.capture.pooling`.
"""

from __future__ import annotations

from collections.abc import Sequence

from xlalign.errors import XlalignError

#: Pools that give one vector per prompt.
VECTOR_POOLS = ("last", "mean", "first", "weighted", "eos")
#: All pools; ``tokens`` keeps every real token's vector.
POOLS = (*VECTOR_POOLS, "tokens")

#: Version of the pool definitions, stored in each run's manifest as ``pool_semantics``.
#: 2: ``last`` is the last non-special token and ``eos`` the appended special token. Before it
#: (no key in the manifest), ``last`` was the last real token, special or not.
POOL_SEMANTICS = 2

POOL_DESCRIPTIONS = {
    "last": "hidden state of the last real token that is not a special token "
    "(the token before [SEP] or an appended EOS; the last token where none is appended)",
    "eos": "hidden state of the final special token the tokenizer appends ([SEP], </s>)",
    "mean": "mean over real tokens that are not special tokens (tokenizer's special-tokens mask)",
    "first": "hidden state of the first real (non-padding) token",
    "weighted": "MEXA position-weighted mean: sum_t t*m_t*h_t / sum_t t*m_t, t 1-based",
    "tokens": "every real token's hidden state, flat, with per-prompt offsets",
}


def parse_pools(spec: str | Sequence[str]) -> list[str]:
    """Pools named by ``spec`` (``"last,mean"``), in the order given, duplicates removed."""
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    items = [s for s in items if s]
    if not items:
        raise XlalignError(f"no pools given: choose from {', '.join(POOLS)}")
    out: list[str] = []
    for item in items:
        if item not in POOLS:
            raise XlalignError(f"pool '{item}' unknown: choose from {', '.join(POOLS)}")
        if item not in out:
            out.append(item)
    return out


#: ``pool_info`` text of ``weighted`` with absolute positions.
WEIGHTED_ABSOLUTE_DESCRIPTION = (
    "MEXA position-weighted mean as MEXA's code computes it: t is the 1-based position in the "
    "padded batch (attention_mask * arange(1..T)); equal to 'weighted' with right padding"
)
