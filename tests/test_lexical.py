"""The lexical baseline's bag-of-ids vectors against a brute force from their definition."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xlalign.data.lexical import LEXICAL_SITE, MAX_ENTRIES, bag_of_ids, n_entries

_prompt = st.lists(st.integers(0, 12), min_size=0, max_size=6)


@st.composite
def _langs(draw):
    n_langs = draw(st.integers(1, 3))
    n_rows = draw(st.integers(1, 5))
    ids = [[draw(_prompt) for _ in range(n_rows)] for _ in range(n_langs)]
    special = [[[draw(st.booleans()) for _ in row] for row in rows] for rows in ids]
    return ids, special


def _brute(ids, special):
    """Counter of kept ids per prompt; columns: every id kept anywhere, ascending; L2 rows."""
    kept = [
        [Counter(t for t, s in zip(row, mask, strict=True) if not s) for row, mask in zip(rows, masks, strict=True)]
        for rows, masks in zip(ids, special, strict=True)
    ]  # fmt: skip
    vocab = sorted({t for rows in kept for c in rows for t in c})
    out = []
    for rows in kept:
        m = np.array([[float(c[t]) for t in vocab] for c in rows]).reshape(len(rows), len(vocab))
        for i in range(len(m)):
            norm = np.sqrt(sum(v * v for v in m[i]))
            if norm > 0:
                m[i] = m[i] / norm
        out.append(m)
    return out, vocab


@settings(max_examples=200, deadline=None)
@given(_langs(), st.booleans())
def test_bag_of_ids_counts_kept_tokens_in_one_column_space(case, with_special):
    ids, special = case
    if not with_special:
        special = [[[False] * len(row) for row in rows] for rows in ids]
    arrays = [[np.asarray(r, dtype=np.int64) for r in rows] for rows in ids]
    masks = [[np.asarray(m, dtype=bool) for m in rows] for rows in special]
    got = bag_of_ids(arrays, masks if with_special else None)
    want, _ = _brute(ids, special)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.float64 and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-15)
    # the cosine between two languages' prompts is the overlap of their kept-token counts
    if len(got) > 1:
        np.testing.assert_allclose(got[0] @ got[1].T, want[0] @ want[1].T, atol=1e-12)
    # n_entries bounds the arrays: rows times distinct ids (special ones included)
    distinct = len({t for rows in ids for row in rows for t in row})
    rows = sum(len(r) for r in ids)
    assert n_entries(arrays) == rows * distinct
    assert all(g.size <= n_entries(arrays) for g in got)


def test_a_prompt_of_special_tokens_only_is_a_zero_row_and_the_others_unit():
    ids = [[np.array([5, 7, 7]), np.array([1, 2])], [np.array([7, 9]), np.array([2])]]
    special = [[np.array([0, 0, 0], bool), np.array([1, 1], bool)],
               [np.array([0, 0], bool), np.array([0], bool)]]  # fmt: skip
    x, y = bag_of_ids(ids, special)
    # columns: ids 2, 5, 7, 9 (1 is only ever special)
    np.testing.assert_allclose(x, [[0, 1 / np.sqrt(5), 2 / np.sqrt(5), 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(y, [[0, 0, 1 / np.sqrt(2), 1 / np.sqrt(2)], [1, 0, 0, 0]])
    assert n_entries([[], []]) == 0
    assert LEXICAL_SITE == "lexical" and MAX_ENTRIES > 10**6


def test_masks_given_as_0_1_integers_mean_the_same_as_booleans():
    """A mask read as integers (0/1, e.g. from a uint8 file) must not be bit-flipped (``~1``
    is -2, a fancy index): it is read as booleans."""
    ids = [[np.array([3, 4, 5]), np.array([6])], [np.array([4, 6]), np.array([3, 3])]]
    as_bool = [[np.array([1, 0, 0], bool), np.array([0], bool)],
               [np.array([0, 1], bool), np.array([0, 0], bool)]]  # fmt: skip
    as_int = [[m.astype(np.uint8) for m in rows] for rows in as_bool]
    want, _ = _brute(
        [[r.tolist() for r in rows] for rows in ids],
        [[m.tolist() for m in rows] for rows in as_bool],
    )
    for got in (bag_of_ids(ids, as_bool), bag_of_ids(ids, as_int)):
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-12)


def test_no_rows_and_mismatched_masks():
    got = bag_of_ids([[], []])
    assert [g.shape for g in got] == [(0, 0), (0, 0)]
    ids = [[np.array([1, 2]), np.array([3])]]
    with pytest.raises(ValueError):  # one mask for two prompts
        bag_of_ids(ids, [[np.array([False, False])]])
