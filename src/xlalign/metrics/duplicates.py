"""Identical vectors: a site where many prompts share one vector says nothing about the model.

Pooling the last token at the embedding gives every prompt that ends in the same token the same
vector (the study's 200 problems end in two tokens per language, so 200 vectors take 2 values).
Every metric there then measures which prompts share a token: two models' embeddings of the
same two tokens have linear CKA 1, whatever the models. :func:`distinct_rows` counts the
distinct vectors so that the studies can name such sites instead of reporting them as findings.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xlalign.errors import XlalignError

__all__ = ["FEW_DISTINCT_SHARE", "distinct_rows", "few_distinct"]

#: A site whose vectors take at most this share of distinct values (of the rows) is flagged.
FEW_DISTINCT_SHARE = 0.5

_CHUNK = 4096  # rows read at a time: a memory-mapped array stays mapped


def distinct_rows(x: Any) -> int:
    """The number of distinct rows of ``x`` ``(n_rows, d)``, bit for bit (``-0.0`` and ``0.0``
    count as different values; a NaN row equals a NaN row with the same bits)."""
    a = np.asarray(x)
    if a.ndim != 2:
        raise XlalignError(f"expected a (n_rows, d_model) array, got shape {a.shape}")
    seen: set[bytes] = set()
    for start in range(0, a.shape[0], _CHUNK):
        block = np.ascontiguousarray(a[start : start + _CHUNK])
        seen.update(row.tobytes() for row in block)
    return len(seen)


def few_distinct(distinct: int, n: int) -> bool:
    """Whether ``distinct`` values among ``n`` rows are few enough to flag the site."""
    return n > 1 and distinct <= FEW_DISTINCT_SHARE * n
