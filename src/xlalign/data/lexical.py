"""The model-free lexical baseline: each prompt as an L2-normalised bag of its token ids.

Scored with the same metrics and the same null as a model's hidden states, it is what
"alignment from shared digits, names and punctuation alone" looks like: two prompts that
share token ids (under the run's tokenizer) get a positive cosine without any model.

Special tokens the tokenizer adds ([CLS], [SEP], BOS/EOS) are left out: they are the same in
every prompt, so they would add one constant direction to every vector and say nothing about
the text. A prompt made only of special tokens gets a zero vector, which the metrics refuse
with a message naming its row (the baseline is then undefined, with that reason).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Site name of the lexical baseline's records in ``alignment.json`` (their ``depth`` is null).
LEXICAL_SITE = "lexical"
#: Above this many matrix entries (rows x distinct ids, both languages together) the dense
#: bag-of-ids arrays are not built; the baseline is recorded as undefined with the reason.
MAX_ENTRIES = 200_000_000


def bag_of_ids(
    ids: Sequence[Sequence[np.ndarray]],
    special: Sequence[Sequence[np.ndarray]] | None = None,
) -> list[np.ndarray]:
    """Each language's ``(n_rows, n_ids)`` float64 bag-of-ids vectors, rows L2-normalised.

    ``ids[k][i]`` holds the token ids of prompt ``i`` in language ``k`` and ``special[k][i]``
    the matching special-token mask (True: left out). Every language shares one column space:
    column ``j`` counts the ``j``-th smallest id that occurs anywhere in ``ids``, so a cosine
    between languages is the overlap of their token counts. Zero rows (no kept token) stay zero.
    """
    kept: list[list[np.ndarray]] = []
    for k, rows in enumerate(ids):
        masks = special[k] if special is not None else [None] * len(rows)
        kept.append(
            [
                np.asarray(r, dtype=np.int64)[~np.asarray(m, dtype=bool)]
                if m is not None
                else np.asarray(r, dtype=np.int64)
                for r, m in zip(rows, masks, strict=True)
            ]
        )
    flat = [r for rows in kept for r in rows]
    vocab = np.unique(np.concatenate(flat)) if flat else np.zeros(0, dtype=np.int64)
    out = []
    for rows in kept:
        m = np.zeros((len(rows), vocab.size), dtype=np.float64)
        for i, r in enumerate(rows):
            if r.size:
                cols, counts = np.unique(np.searchsorted(vocab, r), return_counts=True)
                m[i, cols] = counts
        norms = np.linalg.norm(m, axis=1, keepdims=True)
        out.append(m / np.where(norms == 0, 1.0, norms))
    return out


def n_entries(ids: Sequence[Sequence[np.ndarray]]) -> int:
    """Entries the dense arrays of :func:`bag_of_ids` would hold (an upper bound)."""
    rows = sum(len(r) for r in ids)
    flat = [np.asarray(r) for rs in ids for r in rs]
    distinct = np.unique(np.concatenate(flat)).size if flat else 0
    return rows * int(distinct)
