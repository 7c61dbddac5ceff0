"""Influential pairs: does a verdict rest on a handful of rows?

A finding compares the model's value with the random-weights control's at one site. If
removing a few pairs (at most :data:`MAX_SHARE` of them) moves the model's value past the
control's, the verdict rests on those pairs, and they are usually not what the corpus is about:
untranslated placeholders, duplicates, one-token prompts. Like a dominant dimension, that is an
artifact to be named, never averaged away.

How the pairs are found (:func:`influential_pairs`):

1. **Leave-one-out, exactly and cheaply.** For z (the exact permutation null over all
   permutations, Hoeffding's moments), P@1 (ties are misses) and linear CKA (biased, Gram
   form), the value without pair ``i`` is computed for every ``i`` from ``n x n`` matrices
   built once (:func:`loo_values`; tests compare each with a brute-force recomputation). The
   z's leave-one-out ignores ``--center`` and ``--stratify`` (the ranking only; step 3 uses
   them).
2. **Groups.** Leave-one-out misses rows that only matter together: nine copies of one
   placeholder move nothing when one goes and everything when all go. Pairs whose vectors are
   near-duplicates (:func:`duplicate_groups`: centred cosine at least 0.995 in either
   language) are also tried as one candidate, exactly.
3. **Ranking.** Each candidate's effect on the gap ``model - control`` (both without it), per
   pair removed; the candidates that close the gap fastest come first, while they fit in
   ``floor(MAX_SHARE * n)`` pairs (the gap's sign decides the direction).
4. **Checked exactly.** The chosen pairs are removed from both the model's and the control's
   vectors and the metric is recomputed by the same public function the sweep uses; if that
   flips the comparison, the shortest prefix of candidates that flips it is reported with the
   ids, else nothing. The search is greedy: None means no such set was found, not that none
   exists; the corpus checks (:mod:`xlalign.data.quality`) name suspicious rows
   independently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xlalign.errors import XlalignError
from xlalign.metrics.jackknife import competitors, loo_cka, loo_cka_unbiased, loo_p1, loo_z
from xlalign.metrics.similarity import linear_cka

__all__ = [
    "INFLUENCE_METRICS",
    "MAX_SHARE",
    "NEAR_DUPLICATE",
    "duplicate_groups",
    "influential_pairs",
    "loo_values",
]

#: At most this share of the pairs may be removed (2%: 4 of 200, 10 of 500).
MAX_SHARE = 0.02
#: Metrics the check knows.
INFLUENCE_METRICS = ("z", "p1_xy", "p1_yx", "cka", "cka_unbiased")

Metric = Callable[[np.ndarray, np.ndarray, np.ndarray], float | None]


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.where(norms == 0, 1.0, norms)


def loo_values(metric: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The metric without pair ``i``, for every ``i``: ``(n,)`` float64 (NaN where undefined).

    ``z``: matched-vs-scrambled z with the exact null over all permutations of ``n - 1``
    pairs (no centring, no strata); ``p1_xy``/``p1_yx``: P@1 by cosine, ties (within
    ``TIE_TOL``, as the sweep) are misses; ``cka``: biased linear CKA; ``cka_unbiased``: debiased.
    """
    return _loo(metric, x, y)[0]


def _loo(metric: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """``(leave-one-out values, the value on all n pairs by the same formula)``.

    Both are computed from centred matrices: CKA is unchanged by centring the columns of x
    and y, and z by adding a constant to a row or a column of the cosine matrix; centring
    first keeps a large shared offset (a massive activation) from swamping float64.
    """
    if metric in ("cka", "cka_unbiased"):
        xa, ya = np.asarray(x, np.float64), np.asarray(y, np.float64)
        xa, ya = xa - xa.mean(axis=0), ya - ya.mean(axis=0)
        if metric == "cka_unbiased":
            full = linear_cka(xa, ya, unbiased=True).cka
            loo = loo_cka_unbiased(xa @ xa.T, ya @ ya.T)
            return loo, float("nan") if full is None else float(full)
        return loo_cka(xa @ xa.T, ya @ ya.T), _full_cka(xa, ya)
    c = _unit(x) @ _unit(y).T
    if metric == "z":
        c = c - c.mean(axis=1, keepdims=True) - c.mean(axis=0, keepdims=True) + c.mean()
        return loo_z(c), _full_z(c)
    if metric in ("p1_xy", "p1_yx"):
        s = c if metric == "p1_xy" else c.T
        return loo_p1(s), float((competitors(s).sum(1) == 0).mean())
    raise XlalignError(f"no leave-one-out for metric '{metric}': known {INFLUENCE_METRICS}")


def _full_z(c: np.ndarray) -> float:
    n = c.shape[0]
    d = c - c.mean(axis=1, keepdims=True) - c.mean(axis=0, keepdims=True) + c.mean()
    var = (d * d).sum() / (n - 1)
    return float((np.trace(c) - c.sum() / n) / np.sqrt(var)) if var > 0 else float("nan")


def _full_cka(x: np.ndarray, y: np.ndarray) -> float:
    kk, ll = np.linalg.norm(x.T @ x), np.linalg.norm(y.T @ y)
    return float(np.linalg.norm(x.T @ y) ** 2 / (kk * ll)) if kk > 0 and ll > 0 else float("nan")


#: Rows whose centred vectors have at least this cosine are tried together (near-duplicates).
NEAR_DUPLICATE = 0.995


def duplicate_groups(
    *arrays: np.ndarray, near: float = NEAR_DUPLICATE, max_size: int | None = None
) -> list[list[int]]:
    """Groups (of two or more rows, at most ``max_size``) of near-duplicate pairs: rows joined
    when their vectors, centred on the column means and unit-normalised, have cosine at least
    ``near`` in any of ``arrays`` (connected components). The same prompt captured in two
    batches differs by float rounding, a repeated placeholder gives one vector, and numbered
    placeholders (``placeholder-p1``, ``-p2``) nearly one; centring first keeps a direction
    every vector shares (a dominant dimension) from joining everything."""
    n = len(arrays[0])
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a in arrays:
        a = np.asarray(a, dtype=np.float64)
        u = _unit(a - a.mean(axis=0))
        close = np.argwhere(np.triu(u @ u.T, k=1) >= near)
        for i, j in close:
            parent[find(int(i))] = find(int(j))
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return [g for g in groups.values() if 1 < len(g) <= (max_size or n)]


def influential_pairs(
    metric: str,
    model: tuple[np.ndarray, np.ndarray],
    control: tuple[np.ndarray, np.ndarray],
    value: Metric,
    ids: Sequence[str],
    *,
    max_share: float = MAX_SHARE,
) -> dict[str, Any] | None:
    """The fewest pairs (at most ``max_share`` of them) whose removal flips the comparison of
    the model's value with the control's, or None when no such set is found.

    ``model`` and ``control`` are the ``(x, y)`` vectors of the site; ``value(x, y, keep)`` is
    the metric on the rows ``keep`` (a boolean mask), as the sweep computes it. The result:
    ``{"k", "of", "ids", "model": {"before", "after"}, "control": {"before", "after"},
    "direction"}``, ``direction`` ``"below"`` (the model falls to or below the control) or
    ``"above"`` (it rises above it).

    Candidates are single pairs, ranked by their exact leave-one-out effect on the gap, and
    groups of near-duplicate pairs (:func:`duplicate_groups`: a placeholder
    repeated nine times moves nothing when one copy goes, everything when all go), ranked by
    their exact leave-group-out effect per pair. Candidates are taken best first while they
    fit in the budget; if removing all of them flips the comparison, the shortest prefix that
    does is reported.
    """
    n = len(ids)
    k_max = int(max_share * n)
    if k_max < 1:
        return None
    everything = np.ones(n, dtype=bool)
    m0, c0 = value(*model, everything), value(*control, everything)
    if m0 is None or c0 is None:
        return None
    ahead = m0 > c0
    sign = 1.0 if ahead else -1.0  # a candidate's score: how far it moves the gap the right way

    def gap_without(rows: Sequence[int]) -> float | None:
        keep = everything.copy()
        keep[list(rows)] = False
        m, c = value(*model, keep), value(*control, keep)
        return None if m is None or c is None else m - c

    (loo_m, full_m), (loo_c, full_c) = _loo(metric, *model), _loo(metric, *control)
    # a single pair's effect by the leave-one-out formula (against its own full value: the
    # formula leaves out --center, strata and a Monte Carlo null); a group's exactly
    loo = (loo_m - full_m) - (loo_c - full_c)
    units: list[tuple[float, list[int]]] = [
        (sign * float(g), [i]) for i, g in enumerate(loo) if np.isfinite(g)
    ]
    for group in duplicate_groups(*model, max_size=k_max):
        g = gap_without(group)
        if g is not None:
            units.append((sign * (g - (m0 - c0)) / len(group), group))
    # most negative first: closes the gap fastest per pair; a unit that widens it never helps
    units = sorted((u for u in units if u[0] < 0), key=lambda u: u[0])
    chosen: list[list[int]] = []
    taken: set[int] = set()
    for _score, rows in units:
        if taken & set(rows):
            continue
        if len(taken) + len(rows) > k_max:
            continue
        chosen.append(rows)
        taken.update(rows)
        if len(taken) == k_max:
            break

    def flipped(upto: int) -> tuple[bool, list[int], float | None, float | None]:
        rows = [i for unit in chosen[:upto] for i in unit]
        keep = everything.copy()
        keep[rows] = False
        m, c = value(*model, keep), value(*control, keep)
        if m is None or c is None:
            return False, rows, m, c
        return (m <= c) if ahead else (m > c), rows, m, c

    if not chosen or not flipped(len(chosen))[0]:
        return None
    for upto in range(1, len(chosen) + 1):
        ok, rows, m, c = flipped(upto)
        if ok:
            return {
                "k": len(rows),
                "of": n,
                "max_removed": k_max,
                "ids": [str(ids[i]) for i in rows],
                "model": {"before": m0, "after": m},
                "control": {"before": c0, "after": c},
                "direction": "below" if ahead else "above",
            }
    return None
