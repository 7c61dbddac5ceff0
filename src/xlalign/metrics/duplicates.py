"""Identical vectors: a site where many prompts share one vector says little about the model.

Pooling the last token at the embedding gives every prompt that ends in the same token the same
vector: the study's 200 problems end in 2 tokens in Chinese and 3 in English, so their 200
last-token vectors take 2 and 3 values there. Every metric at such a site measures which
prompts share a token: two models' embeddings of the same two tokens have linear CKA exactly 1,
of three tokens close to 1, whatever the models. A group of identical vectors weighs on the
metrics long before it is half the rows (a third of the rows sharing one vector, the rest all
different, already gives CKA ~0.8 between two unrelated random embeddings), so a site is flagged
by its largest group, or when its rows take at most half as many values as there are rows (7
vectors over 5,000 rows, none above a fifth of them). :func:`identical_groups` counts both, so
that the studies can name such sites instead of reporting them as findings.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from xlalign.errors import XlalignError
from xlalign.metrics._checks import Result

__all__ = [
    "DISTINCT_SHARE",
    "IDENTICAL_SHARE",
    "IdenticalGroups",
    "distinct_rows",
    "identical_groups",
]

#: A site whose largest group of identical vectors holds at least this share of the rows is
#: flagged ...
IDENTICAL_SHARE = 0.2

#: ... and so is one whose rows take at most this share of distinct values.
DISTINCT_SHARE = 0.5

_CHUNK = 4096  # rows read at a time: a memory-mapped array stays mapped


@dataclass(frozen=True)
class IdenticalGroups(Result):
    """``distinct`` vectors among ``n`` rows; ``largest_group`` rows share the commonest one;
    ``identical`` when ``largest_group >= IDENTICAL_SHARE * n`` or
    ``distinct <= DISTINCT_SHARE * n``, and some two rows are equal (``largest_group >= 2``)."""

    n: int
    distinct: int
    largest_group: int
    identical: bool


def identical_groups(x: Any) -> IdenticalGroups:
    """Count the distinct rows of ``x`` ``(n_rows, d)`` and the largest group of equal rows.

    Rows are compared bit for bit (``-0.0`` and ``0.0`` differ; a NaN row equals a NaN row with
    the same bits) through a 128-bit digest of each row, so memory stays ~32 bytes a row
    whatever ``d``.
    """
    a = np.asarray(x)
    if a.ndim != 2:
        raise XlalignError(f"expected a (n_rows, d_model) array, got shape {a.shape}")
    counts: Counter[bytes] = Counter()
    for start in range(0, a.shape[0], _CHUNK):
        block = np.ascontiguousarray(a[start : start + _CHUNK])
        counts.update(hashlib.blake2b(row, digest_size=16).digest() for row in block)
    n = int(a.shape[0])
    largest = max(counts.values(), default=0)
    return IdenticalGroups(
        n=n,
        distinct=len(counts),
        largest_group=largest,
        # a group is two rows at least: with 5 rows or fewer, one row is 20% of them
        identical=n > 1
        and largest >= 2
        and (largest >= IDENTICAL_SHARE * n or len(counts) <= DISTINCT_SHARE * n),
    )


def distinct_rows(x: Any) -> int:
    """The number of distinct rows of ``x`` (see :func:`identical_groups`)."""
    return identical_groups(x).distinct
