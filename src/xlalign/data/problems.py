"""The study's problem set: parallel Chinese/English arithmetic word problems.

Five templated categories, ``n // 5`` problems each, drawn from ``random.Random(seed)`` in the
order the original study's ``generate_problems`` draws them, then shuffled with the same
generator. The texts, categories and order are byte-for-byte those of the study, so results
can be compared with it directly.

Category templates (``a``, ``b``, ... are random integers):

====  ===============================================  ==========================================
cat   zh                                               en
====  ===============================================  ==========================================
0     ``计算 a + b 的值。`` or ``计算 a × b 的值。``   ``Calculate a + b.`` / ``Calculate a × b.``
1     ``求组合数 C(n, k) 的值。``                      ``Find the value of C(n, k).``
2     ``a 除以 b 的余数是多少?``                       ``What is the remainder when a is ...?``
3     ``一个长方形的长为 w,宽为 h,求其面积。``        ``A rectangle has length w and width h. ...``
4     ``等差数列首项为 a1,公差为 d,求前 n 项之和。``   ``An arithmetic sequence has first term ...``
====  ===============================================  ==========================================

Category 2 ends in the same ASCII ``?`` in both languages; the others end in ``。`` vs ``.``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from xlalign.data.corpus import ParallelCorpus

Problem = tuple[str, str]  # (zh, en)


def _arithmetic(rng: random.Random) -> Problem:
    a, b = rng.randint(10, 999), rng.randint(10, 999)
    sign = "+" if rng.choice(["plus", "times"]) == "plus" else "×"
    return f"计算 {a} {sign} {b} 的值。", f"Calculate {a} {sign} {b}."


def _combination(rng: random.Random) -> Problem:
    n = rng.randint(5, 20)
    k = rng.randint(1, min(n - 1, 8))
    return f"求组合数 C({n}, {k}) 的值。", f"Find the value of C({n}, {k})."


def _remainder(rng: random.Random) -> Problem:
    a, b = rng.randint(50, 9999), rng.randint(3, 37)
    return f"{a} 除以 {b} 的余数是多少?", f"What is the remainder when {a} is divided by {b}?"


def _rectangle(rng: random.Random) -> Problem:
    w, h = rng.randint(2, 50), rng.randint(2, 50)
    return (
        f"一个长方形的长为 {w},宽为 {h},求其面积。",
        f"A rectangle has length {w} and width {h}. Find its area.",
    )


def _arithmetic_series(rng: random.Random) -> Problem:
    a1, d, n_terms = rng.randint(1, 20), rng.randint(1, 10), rng.randint(5, 30)
    return (
        f"等差数列首项为 {a1},公差为 {d},求前 {n_terms} 项之和。",
        f"An arithmetic sequence has first term {a1} and common difference {d}. "
        f"Find the sum of the first {n_terms} terms.",
    )


#: Category index -> template, in the order the study draws them.
CATEGORIES: tuple[Callable[[random.Random], Problem], ...] = (
    _arithmetic,
    _combination,
    _remainder,
    _rectangle,
    _arithmetic_series,
)


def generate_problems(n: int = 200, seed: int | float | str | bytes | None = 42) -> ParallelCorpus:
    """The study's ``n``-problem set as a corpus with ``zh``, ``en`` and ``category`` columns.

    Like the study, it makes ``n // 5`` problems per category (so ``5 * (n // 5)`` in all) and
    shuffles them; row ids are the positions after the shuffle, ``"0"`` .. ``"N-1"``.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an integer, got {type(n).__name__}")
    rng = random.Random(seed)
    per_category = n // 5
    rows: list[tuple[str, str, int]] = []
    for category, template in enumerate(CATEGORIES):
        for _ in range(per_category):
            zh, en = template(rng)
            rows.append((zh, en, category))
    rng.shuffle(rows)
    return ParallelCorpus(
        ids=tuple(str(i) for i in range(len(rows))),
        texts={"zh": tuple(r[0] for r in rows), "en": tuple(r[1] for r in rows)},
        meta={"category": tuple(r[2] for r in rows)},
        source=f"problems(n={n}, seed={seed!r})",
    )
