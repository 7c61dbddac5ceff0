"""Findings that survive their controls: ``findings.json``, its verdicts, headline and summary.

For each language pair, pool and headline metric (z, P@1 in both directions, linear CKA) a
finding holds the model's best site, the random-weights control and the model-free lexical
baseline at that same site, the site where the model gains most over the control, and a
verdict (:func:`verdict`). The console summary and the first section of the report are made
from this document alone (:func:`summary_lines`), so no line states a model's value without
its control beside it. Artifacts are named in ``warnings``: too few pairs, sites where one
dimension holds most of the vectors' squared norm (with the standardized values beside the raw
ones), and sites where the vectors take few distinct values because prompts share the pooled
token (``identical_vectors``; a finding at such a site carries ``"artifact":
"identical-vectors"``).

Shape (keys beyond these are additions)::

    {"headline": str,
     "findings": [{"pair": [x, y], "pool": str, "metric": str, "site": str,
                   "model": {"value", "ci_low", "ci_high"},
                   "control": {...} | null, "lexical": {...} | null,
                   "stratified": {...} | null, "verdict": str}],
     "warnings": [str]}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xlalign.errors import XlalignError
from xlalign.report.render import finding_notes
from xlalign.store.files import atomic_write_json
from xlalign.store.run import Run, check_control, load_run, weights_label
from xlalign.studies.layers import (
    CI_MAX_N,
    LEXICAL_SITE,
    STUDY_PRODUCTS,
    DedupedRun,
    StandardizedRun,
    SweepConfig,
    duplicate_prompts,
    layer_sweep,
)

#: Every verdict, from the strongest claim to the absence of a control.
VERDICTS = (
    "beyond-control",
    "matched-by-control",
    "matched-by-lexical",
    "below-control",
    "matched-by-null",
    "no-control",
)
#: A best site whose ``p_best_site`` exceeds this is no higher than the best of all sites with
#: the pairing scrambled: it cannot be ``beyond-control``.
BEST_SITE_ALPHA = 0.05
#: The metrics a finding is made for (all: higher is more aligned).
#: CKA is the debiased one; the biased ``cka`` gets findings too when the sweep computed it.
FINDING_METRICS = ("z", "p1_xy", "p1_yx", "cka_unbiased", "cka")
#: Above this many pairs the influential-pairs check is skipped (it holds n x n matrices).
INFLUENCE_MAX_N = 4096
#: Under this many pairs the summary and report say the numbers are not reliable.
SMALL_SAMPLE = 30
FINDINGS_FILE = "findings.json"

_LABELS = {
    "z": "z",
    "p1_xy": "P@1 x->y",
    "p1_yx": "P@1 y->x",
    "cka_unbiased": "CKA",
    "cka": "CKA (biased)",
}


# ---------------------------------------------------------------------------------------------
# the verdict


def _interval(rec: Mapping[str, Any] | None) -> tuple[float, float] | None:
    """``(low, high)`` of a value record; a missing bound is the value; None if no value."""
    if rec is None or rec.get("value") is None:
        return None
    v = float(rec["value"])
    lo, hi = rec.get("ci_low"), rec.get("ci_high")
    return (v if lo is None else float(lo), v if hi is None else float(hi))


def verdict(
    model: Mapping[str, Any],
    control: Mapping[str, Any] | None,
    lexical: Mapping[str, Any] | None,
    *,
    control_best: Mapping[str, Any] | None = None,
    below_everywhere: bool | None = None,
) -> str:
    """Return the verdict (one of :data:`VERDICTS`) of a model value against its controls.

    Each mapping has ``value``, ``ci_low`` and ``ci_high``; a None bound is replaced by the
    value (a point), and a control or lexical mapping whose value is None counts as absent.
    Intervals are closed: two intervals *overlap* when ``a_low <= b_high`` and
    ``b_low <= a_high``, and the model *lies above* another when ``model_low > other_high``
    (touching bounds are an overlap). Higher values must mean more alignment.

    ``model`` is the model's best site, ``control`` the control at that same site and
    ``control_best`` the control at *its* best site (like with like); ``below_everywhere``
    says whether the model lies below the control at every site compared. ``model`` may carry
    ``p_best_site`` (the share of scrambled pairings whose best site reaches the model's
    best). Checks, in order:

    1. ``below-control`` ("training lowers it"): ``below_everywhere``, with the intervals apart
       at the model's site too; when it is None (one site only), ``model_high < control_low``;
    2. ``matched-by-null``: the model's ``p_best_site`` exceeds :data:`BEST_SITE_ALPHA`: its
       best site is no higher than the best of all sites reaches with the pairing scrambled;
    3. ``matched-by-control``: a control is given and the model does not lie above it at that
       site (``model_low <= control_high``) or does not lie above the control's best;
    4. ``matched-by-lexical``: a lexical baseline is given and the model does not lie above it
       (it overlaps it or lies below it);
    5. ``no-control``: no control is given, at that site or at its best (the model lies above
       the lexical baseline, if any);
    6. ``beyond-control``: the model's best lies above the control at that site, above the
       control's own best, and above the lexical baseline.

    Raises:
        ValueError: the model's value is None.
    """
    m = _interval(model)
    if m is None:
        raise ValueError("verdict needs the model's value; got None")
    c = _interval(control)
    cb = _interval(control_best)
    lx = _interval(lexical)
    below_here = c is not None and m[1] < c[0]
    if below_here if below_everywhere is None else (below_everywhere and (c is None or below_here)):
        return "below-control"
    p_best = model.get("p_best_site")
    if p_best is not None and float(p_best) > BEST_SITE_ALPHA:
        return "matched-by-null"
    if (c is not None and m[0] <= c[1]) or (cb is not None and m[0] <= cb[1]):
        return "matched-by-control"
    if lx is not None and m[0] <= lx[1]:
        return "matched-by-lexical"
    if c is None and cb is None:
        return "no-control"
    return "beyond-control"


def compare_sites(
    model_idx: Mapping[tuple[Any, ...], Mapping[str, Any]],
    control_idx: Mapping[tuple[Any, ...], Mapping[str, Any]],
    key: tuple[str, str, str, str],
    sites: Sequence[str],
) -> dict[str, Any] | None:
    """Site by site, where the model's interval lies above / below the control's at the same
    site: ``{"above", "below", "compared", "above_sites", "below_sites"}`` (sites as ranges),
    or None when no site has both values. ``key`` is ``(x, y, pool, metric)``."""
    x, y, pool, metric = key
    above, below, compared = [], [], []
    for site in sites:
        m = _interval(model_idx.get((x, y, pool, site, metric)))
        c = _interval(control_idx.get((x, y, pool, site, metric)))
        if m is None or c is None:
            continue
        compared.append(site)
        if m[0] > c[1]:
            above.append(site)
        elif m[1] < c[0]:
            below.append(site)
    if not compared:
        return None
    return {
        "above": len(above),
        "below": len(below),
        "compared": len(compared),
        "above_sites": site_ranges(above, sites),
        "below_sites": site_ranges(below, sites),
    }


def _best(
    recs: Sequence[Mapping[str, Any] | None],
    flagged: set[tuple[str, str, str]],
    pool: str,
    pair: tuple[str, str],
) -> Mapping[str, Any] | None:
    """The record of highest value (first wins ties), passing over the sites flagged for
    identical vectors in either language of ``pair`` unless every site is one; None without a
    defined value."""
    defined = [r for r in recs if r is not None and r.get("value") is not None]
    clean = [r for r in defined if not _is_flagged(flagged, r["site"], pool, *pair)]
    return max(clean or defined, key=lambda r: float(r["value"])) if defined else None


# ---------------------------------------------------------------------------------------------
# building findings.json


def small_sample_warning(n: int | None, what: str = "pairs") -> str | None:
    """The warning for fewer than :data:`SMALL_SAMPLE` pairs (None when there are enough)."""
    if n is None or n >= SMALL_SAMPLE:
        return None
    return (
        f"only {n} {what} (under {SMALL_SAMPLE}): these numbers are not reliable; "
        "intervals are wide and a few pairs can move any value"
    )


def _outside_interval(findings: Sequence[Mapping[str, Any]]) -> list[str]:
    """A warning for every model value that lies outside its own interval.

    The sweep's intervals (jackknife, Wilson) contain their value; one that does not comes
    from an older sweep's pair bootstrap, which draws some pairs twice. For z, a scrambled pairing can then join a
    sentence to a copy of its own translation: the null's mean rises and the resampled z falls,
    so near perfect alignment the whole interval can lie below the value. For CKA a row drawn
    twice weighs twice in both Gram matrices, which tends to raise the resampled CKA, so the
    interval can lie above the value. Such an interval is not a band around the value.
    """
    why = {
        "z": "pairs drawn twice join the null and lower the resampled z",
        "cka": "rows drawn twice weigh twice in both Gram matrices and raise the resampled CKA",
    }
    out = []
    for f in findings:
        for role, whose in (("model", "the model's"), ("control", "the control's"),
                            ("lexical", "the lexical baseline's")):  # fmt: skip
            m = f.get(role) or {}
            lo, hi, v = m.get("ci_low"), m.get("ci_high"), m.get("value")
            tol = 1e-9 * max(1.0, abs(v)) if v is not None else 0.0  # float rounding is inside
            if v is None or lo is None or hi is None or lo - tol <= v <= hi + tol:
                continue
            x, y = f["pair"]
            side = "below" if hi < v else "above"
            reason = why.get(f["metric"], "the resampled statistic is biased")
            where = (
                f"{f['pool']} pool, {_LABELS[f['metric']]} at {f['site']}"
                if role != "lexical"  # the lexical baseline is the same under every pool
                else f"{_LABELS[f['metric']]} of the lexical baseline"
            )
            line = (
                f"{x}/{y}, {where}: {whose} bootstrap interval [{lo:.4g}, {hi:.4g}] lies {side} "
                f"its value {v:.4g} ({reason}); it is not a band around the value, and the "
                "verdict compares intervals biased alike"
            )
            if f["metric"] not in why:  # the sweep's own intervals contain their value
                line = (
                    f"{x}/{y}, {where}: {whose} interval [{lo:.4g}, {hi:.4g}] lies {side} its "
                    f"value {v:.4g}: the two come from different computations (a sweep of "
                    "other settings or another version?); align again"
                )
            if line not in out:
                out.append(line)
    return out


def _value(rec: Mapping[str, Any] | None, *, best: bool = True) -> dict[str, Any] | None:
    """A record's value and interval, with its permutation null where the sweep made one;
    ``p_best_site`` only for a best site (``best``): at a site picked for another reason (the
    control at the model's best site) it would answer a question nobody asked."""
    if rec is None or rec.get("value") is None:
        return None
    out = {"value": rec["value"], "ci_low": rec.get("ci_low"), "ci_high": rec.get("ci_high")}
    for key in ("p_value", "null_q95", "p_best_site") if best else ("p_value", "null_q95"):
        if rec.get(key) is not None:
            out[key] = rec[key]
    return out


def _index(doc: Mapping[str, Any] | None) -> dict[tuple[Any, ...], Mapping[str, Any]]:
    if not doc:
        return {}
    return {
        (r["x"], r["y"], r["pool"], r["site"], r["metric"]): r for r in doc.get("records") or []
    }


StratifiedFn = Callable[[tuple[str, str], str, str], "dict[str, Any] | None"]


def build_findings(
    alignment: Mapping[str, Any],
    control_alignment: Mapping[str, Any] | None = None,
    *,
    label: str | None = None,
    stratified: StratifiedFn | None = None,
    variant: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the ``findings.json`` document of a sweep (``alignment.json``) and its control.

    ``stratified(pair, pool, site)`` may give the z at that site under a null that permutes
    within categories (z findings only). ``variant`` is a sweep of the flagged sites in the
    other preprocessing (standardized when ``alignment`` is raw, raw when it is standardized);
    its z and CKA are shown beside the flagged sites' warnings.
    """
    model_idx, control_idx = _index(alignment), _index(control_alignment)
    sites = list(alignment.get("sites") or [])
    identical = identical_vectors(alignment.get("dominance") or [])
    flagged = {(e["site"], e["pool"], lang) for e in identical for lang in e["distinct"]}
    c_identical = identical_vectors((control_alignment or {}).get("dominance") or [])
    c_flagged = {(e["site"], e["pool"], lang) for e in c_identical for lang in e["distinct"]}
    n_pairs = next((r.get("n") for r in alignment.get("records") or [] if r.get("n")), None)
    findings: list[dict[str, Any]] = []
    warnings: list[str] = []
    for pair in [tuple(p) for p in alignment.get("pairs") or []]:
        x, y = str(pair[0]), str(pair[1])
        for pool in alignment.get("pools") or []:
            for metric in FINDING_METRICS:
                recs = [model_idx.get((x, y, pool, s, metric)) for s in sites]
                defined = [r for r in recs if r is not None and r.get("value") is not None]
                if not defined:
                    if any(r is not None for r in recs):
                        warnings.append(
                            f"{x}/{y}, {pool} pool: {_LABELS[metric]} is undefined at every site"
                        )
                    continue
                # sites of identical vectors measure shared tokens: chosen only if all are
                best = _best(recs, flagged, pool, (x, y))
                assert best is not None
                site = best["site"]
                model = _value(best)
                assert model is not None
                control = _value(control_idx.get((x, y, pool, site, metric)), best=False)
                c_recs = [control_idx.get((x, y, pool, s, metric)) for s in sites]
                c_best = _best(c_recs, c_flagged, pool, (x, y))
                control_best = None
                if c_best is not None:
                    control_best = {"site": c_best["site"], **(_value(c_best) or {})}
                counts = compare_sites(model_idx, control_idx, (x, y, pool, metric), sites)
                below_all = None if counts is None else counts["below"] == counts["compared"]
                lex_rec = model_idx.get((x, y, pool, LEXICAL_SITE, metric))
                lexical = _value(lex_rec, best=False)
                if lex_rec is not None and (lex_rec.get("detail") or {}).get("shared_tokens") == 0:
                    lexical = {**(lexical or _NO_VALUE), "no_shared_tokens": True}
                    msg = (
                        f"{x}/{y}: the two languages share no token (special tokens aside): the "
                        "lexical baseline gives no alignment (its z is undefined: every lexical "
                        "cosine between them is 0)"
                    )
                    if msg not in warnings:
                        warnings.append(msg)
                elif lex_rec is not None and lexical is None:
                    why = lex_rec.get("undefined_reason") or "undefined"
                    msg = f"{x}/{y}: the lexical baseline's {_LABELS[metric]} is undefined ({why})"
                    if msg not in warnings:
                        warnings.append(msg)
                strat = stratified((x, y), pool, site) if stratified and metric == "z" else None
                findings.append(
                    {
                        "pair": [x, y],
                        "pool": pool,
                        "metric": metric,
                        "site": site,
                        "model": model,
                        "control": control,
                        "lexical": lexical,
                        "stratified": strat,
                        "verdict": verdict(
                            model,
                            control,
                            lexical,
                            control_best=control_best,
                            below_everywhere=below_all,
                        ),
                        "control_best": control_best,
                        "sites_vs_control": counts,
                        "largest_gain": _largest_gain(
                            model_idx,
                            control_idx,
                            x,
                            y,
                            pool,
                            sites,
                            metric,
                            skip={s for s in sites if _is_flagged(flagged, s, pool, x, y)},
                        ),
                        "artifact": (
                            "identical-vectors" if _is_flagged(flagged, site, pool, x, y) else None
                        ),
                        "p_best_site": model.get("p_best_site"),
                        "n_sites": len(defined),
                        "n": best.get("n"),
                        "source": "alignment",
                    }
                )
    warnings += _outside_interval(findings)
    small = small_sample_warning(n_pairs)
    if small is not None:
        warnings.insert(0, small)
    if alignment.get("ci_skipped"):
        warnings.append(str(alignment["ci_skipped"]) + "; verdicts compare point values")
    elif not alignment.get("n_boot"):
        warnings.append("no confidence intervals (--n-boot 0): verdicts compare point values")
    if alignment.get("null_skipped"):
        warnings.append(
            f"{alignment['null_skipped']}: a best site without p_best_site is not corrected for "
            "having been picked among all sites"
        )
    elif alignment.get("null_perms") and (
        uncorrected := sorted(
            {
                f"{_LABELS[f['metric']]} ({f['pool']})"
                for f in findings
                if f["model"].get("p_best_site") is None
            }
        )
    ):
        why = "--null monte-carlo" if alignment.get("null") == "monte-carlo" else "no null made"
        if alignment.get("compat") == "platonic":
            why = "--compat platonic"
        warnings.append(
            f"no permutation null for {', '.join(uncorrected)} ({why}): those best sites are not "
            "corrected for having been picked among all sites"
        )
    elif not alignment.get("null_perms"):
        warnings.append(
            "no permutation null (--null-perms 0, or a sweep made before it): the best sites "
            "are not corrected for having been picked among all sites"
        )
    quality = alignment.get("corpus_quality") or {}
    warnings += [_quality_warning(issue, quality) for issue in quality.get("issues") or []]
    dominance = _dominance(alignment, variant)
    _mark_dominated(findings, dominance)
    warnings += _grouped_dominance(dominance, sites)
    warnings += _grouped_identical(identical, sites)
    warnings += _negative_z_with_retrieval(alignment, sites)
    if control_alignment is None:
        warnings.append("no random-weights control: no finding can be beyond-control")
    study = {
        "model": label or alignment.get("model"),
        "languages": alignment.get("languages"),
        "n_pairs": n_pairs,
        "null": alignment.get("null"),
        "null_perms": alignment.get("null_perms"),
        "standardize": bool(alignment.get("standardize")),
        "control": None if control_alignment is None else "random-init",
        "random_init_seed": alignment.get("random_init_seed"),
    }
    return {
        "headline": headline(findings, control_alignment is not None),
        "findings": findings,
        "warnings": warnings,
        "study": study,
        "dominance": dominance,
        "identical_vectors": identical,
        "corpus_quality": alignment.get("corpus_quality"),
        "verdict_rule": (
            "beyond-control: the model's best site beats the best site of scrambled pairings "
            f"(p_best_site <= {BEST_SITE_ALPHA}), and its interval there lies above the "
            "control's at that site, above the control's at the control's own best site, and "
            "above the lexical baseline's; matched-by-null: p_best_site above "
            f"{BEST_SITE_ALPHA}; below-control: the model lies below the control at every "
            "site; see docs/report.md"
        ),
    }


def _quality_warning(issue: Mapping[str, Any], quality: Mapping[str, Any]) -> str:
    """A corpus quality issue (:mod:`xlalign.data.quality`) as one warning line."""
    ids = list(issue.get("ids") or [])
    more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
    return (
        f"corpus {quality.get('source') or ''}: {issue.get('count', len(ids))} row(s) "
        f"{issue.get('detail')} (ids {', '.join(ids[:10])}{more}); every number includes them"
    )


def _largest_gain(
    model_idx: Mapping[tuple[Any, ...], Mapping[str, Any]],
    control_idx: Mapping[tuple[Any, ...], Mapping[str, Any]],
    x: str,
    y: str,
    pool: str,
    sites: Sequence[str],
    metric: str,
    skip: set[str] | None = None,
) -> dict[str, Any] | None:
    """The site where the model's value exceeds the control's by most (None without one),
    among the sites not in ``skip`` (sites of identical vectors) unless every site is there."""
    usable = [s for s in sites if s not in (skip or set())] or list(sites)
    best: dict[str, Any] | None = None
    for site in usable:
        m = model_idx.get((x, y, pool, site, metric))
        c = control_idx.get((x, y, pool, site, metric))
        if m is None or c is None or m.get("value") is None or c.get("value") is None:
            continue
        gain = float(m["value"]) - float(c["value"])
        if best is None or gain > best["gain"]:
            best = {"site": site, "gain": gain, "model": m["value"], "control": c["value"]}
    return best


def _dominance(
    alignment: Mapping[str, Any], variant: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """One entry per flagged site and pool: shares per language, raw and standardized z/CKA."""
    flagged: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for rec in alignment.get("dominance") or []:
        if rec.get("flagged"):
            flagged.setdefault((rec["site"], rec["pool"]), []).append(rec)
    main_idx, var_idx = _index(alignment), _index(variant)
    standardized = bool(alignment.get("standardize"))
    out = []
    for (site, pool), recs in flagged.items():
        shares = ", ".join(
            f"{r['lang']} dim {r['top_dims'][0]} holds {r['share']:.0%}" for r in recs
        )
        entry: dict[str, Any] = {"site": site, "pool": pool, "languages": list(recs)}
        values: list[str] = []
        for pair in [tuple(p) for p in alignment.get("pairs") or []]:
            for metric in ("z", "cka_unbiased", "cka"):
                key = (pair[0], pair[1], pool, site, metric)
                if key not in main_idx:
                    continue
                main = main_idx.get(key, {}).get("value")
                other = var_idx.get(key, {}).get("value")
                raw, std = (other, main) if standardized else (main, other)
                entry.setdefault("values", []).append(
                    {"pair": list(pair), "metric": metric, "raw": raw, "standardized": std}
                )
                values.append(
                    f"{pair[0]}/{pair[1]} {_LABELS[metric]} raw {_fmt(raw)}, "
                    f"standardized {_fmt(std)}"
                )
        entry["warning"] = (
            f"{site}, {pool} pool: one dimension holds over half the mean squared norm ({shares});"
            " cosine, CKA and k-NN there mostly measure that dimension"
            + (f" ({'; '.join(values)})" if values else "")
        )
        out.append(entry)
    return out


_NO_VALUE: dict[str, Any] = {"value": None, "ci_low": None, "ci_high": None}


def site_ranges(chosen: Sequence[str], order: Sequence[str]) -> str:
    """``chosen`` sites as runs of consecutive sites in ``order``: ``"embed-L2, L5, L9-L11"``."""
    pos = sorted({order.index(s) for s in chosen if s in order})
    extra = [s for s in chosen if s not in order]
    runs: list[str] = []
    start = prev = None
    for p in [*pos, None]:
        if p is not None and prev is not None and p == prev + 1:
            prev = p
            continue
        if start is not None and prev is not None:
            runs.append(order[start] if start == prev else f"{order[start]}-{order[prev]}")
        start = prev = p
    return ", ".join([*runs, *extra])


def _span(values: Sequence[float], pct: bool = True) -> str:
    lo, hi = min(values), max(values)
    f = (lambda v: f"{v:.0%}") if pct else (lambda v: f"{v:g}")
    return f(lo) if f(lo) == f(hi) else f"{f(lo)}-{f(hi)}"


def _mark_dominated(
    findings: Sequence[dict[str, Any]], dominance: Sequence[Mapping[str, Any]]
) -> None:
    """Give each finding at a site where one dimension dominates ``dominated``: the dimension
    and share per language, and the metric's raw and standardized values there."""
    by_site = {(d["site"], d["pool"]): d for d in dominance}
    for f in findings:
        d = by_site.get((f["site"], f["pool"]))
        langs = [r for r in (d or {}).get("languages") or [] if r["lang"] in f["pair"]]
        if d is None or not langs:  # flagged for another pair's languages only
            f["dominated"] = None
            continue
        value: Mapping[str, Any] = next(
            (v for v in d.get("values") or []
             if v["pair"] == list(f["pair"]) and v["metric"] == f["metric"]),
            {},
        )  # fmt: skip
        f["dominated"] = {
            "languages": {r["lang"]: {"dim": r["top_dims"][0], "share": r["share"]} for r in langs},
            "raw": value.get("raw"),
            "standardized": value.get("standardized"),
        }


def _grouped_dominance(dominance: Sequence[Mapping[str, Any]], order: Sequence[str]) -> list[str]:
    """One warning per pool for the sites where one dimension dominates, sites as ranges (each
    site's shares and raw/standardized values stay in ``dominance``)."""
    by_pool: dict[str, list[Mapping[str, Any]]] = {}
    for d in dominance:
        by_pool.setdefault(d["pool"], []).append(d)
    out = []
    for pool, entries in by_pool.items():
        dims: dict[tuple[str, int], list[float]] = {}
        for d in entries:
            for r in d["languages"]:
                dims.setdefault((r["lang"], int(r["top_dims"][0])), []).append(float(r["share"]))
        held = ", ".join(
            f"{lang} dim {dim} holds {_span(shares)} at {len(shares)} site(s)"
            for (lang, dim), shares in dims.items()
        )
        sites = [d["site"] for d in entries]
        out.append(
            f"{pool} pool, {site_ranges(sites, order)} ({len(sites)} of {len(order)} sites): one "
            f"dimension holds over half the mean squared norm ({held}); cosine, CKA and k-NN "
            "there mostly measure that dimension (raw and standardized z and CKA of each site: "
            "findings.json 'dominance' and the report)"
        )
    return out


def _grouped_identical(identical: Sequence[Mapping[str, Any]], order: Sequence[str]) -> list[str]:
    """One warning per pool for the sites where many prompts share one vector."""
    by_pool: dict[str, list[Mapping[str, Any]]] = {}
    for e in identical:
        by_pool.setdefault(e["pool"], []).append(e)
    out = []
    for pool, entries in by_pool.items():
        langs: dict[str, list[tuple[int, int]]] = {}
        for e in entries:
            for lang, distinct in e["distinct"].items():
                langs.setdefault(lang, []).append((distinct, e["largest_group"][lang]))
        counts = ", ".join(
            f"{lang}: {_span([c[0] for c in cs], pct=False)} distinct, up to "
            f"{max(c[1] for c in cs)} rows share one"
            for lang, cs in langs.items()
        )
        sites = [e["site"] for e in entries]
        out.append(
            f"{pool} pool, {site_ranges(sites, order)}: many prompts share one vector ({counts}): "
            "they share the token pooled there, so the metrics at these sites mostly measure "
            "which prompts share it, not what the model computed; findings skip these sites for "
            "these languages"
        )
    return out


#: P@1 this many times chance (1/n) beside a negative z gets the note of
#: :func:`_negative_z_with_retrieval`.
RETRIEVAL_OVER_CHANCE = 10


def _negative_z_with_retrieval(alignment: Mapping[str, Any], order: Sequence[str]) -> list[str]:
    """A note per pair and pool where z < 0 at sites whose P@1 is far above chance.

    z compares the matched cosines with every cosine of the matrix; P@1 ranks each sentence's
    candidates. When the cosine's scale varies from sentence to sentence, in opposite ways in
    the two languages (long sentences near everything in one, far from everything in the
    other), the matched cosines sit below the matrix's mean although each partner ranks first:
    a negative z then says the scales are anti-correlated, not that the pairs are unaligned.
    """
    idx = _index(alignment)
    out = []
    for pair in [tuple(p) for p in alignment.get("pairs") or []]:
        for pool in alignment.get("pools") or []:
            hits: list[str] = []
            ratios: list[float] = []
            for site in order:
                z = (idx.get((pair[0], pair[1], pool, site, "z")) or {}).get("value")
                if z is None or z >= 0:
                    continue
                for metric in ("p1_xy", "p1_yx"):
                    rec = idx.get((pair[0], pair[1], pool, site, metric)) or {}
                    p1, n = rec.get("value"), rec.get("n")
                    if p1 is not None and n and p1 * n >= RETRIEVAL_OVER_CHANCE:
                        hits.append(site)
                        ratios.append(p1 * n)
                        break
            if hits:
                lo, hi = min(ratios), max(ratios)
                times = f"{lo:.0f}" if round(lo) == round(hi) else f"{lo:.0f}-{hi:.0f}"
                out.append(
                    f"{pair[0]}/{pair[1]}, {pool} pool, {site_ranges(hits, order)}: z is negative "
                    f"while P@1 is {times}x "
                    "chance: partners still rank first among the candidates, but the matched "
                    "cosines lie below the mean of all cosines. That happens when the cosine's "
                    "level varies from sentence to sentence in opposite ways in the two "
                    "languages: z then measures that level, not the pairing (see P@1, and z "
                    "with --center or --standardize)"
                )
    return out


def identical_vectors(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per site and pool where a language's vectors are largely identical (the
    ``identical`` flag of the ``dominance`` records): the languages with their counts of
    distinct vectors and of the largest group, and a warning."""
    flagged: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for rec in records:
        if rec.get("identical"):
            flagged.setdefault((rec["site"], rec["pool"]), []).append(rec)
    out = []
    for (site, pool), recs in flagged.items():
        counts = ", ".join(
            f"{r['lang']}: {r['distinct']} distinct, {r['largest_group']} rows share one"
            for r in recs
        )
        out.append(
            {
                "site": site,
                "pool": pool,
                "distinct": {r["lang"]: r["distinct"] for r in recs},
                "largest_group": {r["lang"]: r["largest_group"] for r in recs},
                "warning": (
                    f"{site}, {pool} pool: many prompts share one vector ({counts}): they share "
                    "the token pooled there, so the metrics at this site mostly measure which "
                    "prompts share it, not what the model computed; findings skip this site "
                    "for these languages"
                ),
            }
        )
    return out


def _is_flagged(flagged: set[tuple[str, str, str]], site: str, pool: str, x: str, y: str) -> bool:
    return (site, pool, x) in flagged or (site, pool, y) in flagged


def _fmt(v: Any) -> str:
    if v is None:
        return "undefined"
    v = float(v)
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"


def _control_brief(f: Mapping[str, Any]) -> str:
    """`` (best 38.6 at L1; above at 15/26 sites)`` for a summary line."""
    parts = []
    cb = f.get("control_best")
    if cb and cb.get("value") is not None and cb.get("site") != f.get("site"):
        parts.append(f"best {_fmt_ci(cb)} at {cb['site']}")
    counts = f.get("sites_vs_control")
    if counts:
        parts.append(
            f"model above at {counts['above']}/{counts['compared']}, below at "
            f"{counts['below']}/{counts['compared']} sites"
        )
    return f" ({'; '.join(parts)})" if parts else ""


def _flags(f: Mapping[str, Any]) -> str:
    """The summary line's artifact marks of a finding."""
    notes = finding_notes(f)
    return f" [{'; '.join(notes)}]" if notes else ""


def _fmt_ci(d: Mapping[str, Any] | None) -> str:
    if d is not None and d.get("no_shared_tokens") and d.get("value") is None:
        return "no shared tokens"
    if d is None:
        return "none"
    text = _fmt(d["value"])
    if d.get("ci_low") is not None and d.get("ci_high") is not None:
        text += f" [{_fmt(d['ci_low'])}, {_fmt(d['ci_high'])}]"
    if d.get("p_best_site") is not None:
        text += f" (p best site {_fmt_p(d['p_best_site'])})"
    return text


def _fmt_p(p: float) -> str:
    """A permutation p-value: ``0.001``, ``0.04``, ``0.37``."""
    return f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


_PHRASES = {
    "beyond-control": "above the random-weights control and the lexical baseline",
    "matched-by-control": "matched by the random-weights control: alignment that needs no training",
    "matched-by-lexical": "matched by the lexical baseline: the bag of token ids alone gives "
    "as much",
    "matched-by-null": "no higher than the best site reaches with the pairing scrambled: "
    "picking the best of all sites explains it",
    "below-control": "below the random-weights control: training lowers it",
    "no-control": "no random-weights control to compare with",
}


def _lexical_text(lex: Mapping[str, Any] | None) -> str:
    if lex is not None and lex.get("no_shared_tokens") and lex.get("value") is None:
        return "lexical: no shared tokens"
    return f"lexical {_fmt(None if lex is None else lex['value'])}"


def control_context(f: Mapping[str, Any]) -> str:
    """``, control's best 38.6 at L1, model above it at 15 of 26 sites``: the control's own
    best site and the site-by-site count of a finding, where it has them."""
    out = ""
    cb = f.get("control_best")
    if cb and cb.get("value") is not None and cb.get("site") != f.get("site"):
        out += f", control's best {_fmt(cb['value'])} at {cb['site']}"
    counts = f.get("sites_vs_control")
    if counts:
        out += (
            f", model above it at {counts['above']} and below at {counts['below']} of "
            f"{counts['compared']} sites"
        )
    return out


def phrase(f: Mapping[str, Any]) -> str:
    """What a finding's verdict means, in words that match its lexical baseline."""
    lex = f.get("lexical")
    counts = f.get("sites_vs_control")
    if f["verdict"] == "below-control" and counts:
        return "below the random-weights control at every site: training lowers it"
    cb = f.get("control_best")
    if f["verdict"] == "matched-by-control" and cb and cb.get("site") != f.get("site"):
        m_lo = f["model"].get("ci_low", f["model"]["value"])
        if m_lo is None:
            m_lo = f["model"]["value"]
        c_hi = cb["value"] if cb.get("ci_high") is None else cb["ci_high"]
        if cb.get("value") is not None and m_lo <= c_hi:
            return (
                "not above the random-weights control's best site: random weights reach as "
                "much without training"
            )
    none_shared = lex is not None and lex.get("no_shared_tokens") and lex.get("value") is None
    if f["verdict"] == "beyond-control":
        if none_shared:
            return (
                "above the random-weights control; the lexical baseline gives no alignment "
                "(the languages share no token)"
            )
        if lex is None or lex.get("value") is None:
            return "above the random-weights control (no lexical baseline to compare with)"
    if f["verdict"] == "no-control" and none_shared:
        return "no random-weights control to compare with; the lexical baseline gives no alignment"
    return _PHRASES[f["verdict"]]


def _dominated_text(f: Mapping[str, Any]) -> str:
    dom = f.get("dominated")
    if not dom:
        return ""
    held = ", ".join(
        f"{lang} dim {d['dim']} holds {d['share']:.0%}" for lang, d in dom["languages"].items()
    )
    std = dom.get("standardized")
    label = _LABELS.get(f["metric"], f["metric"])
    return f" [one dimension dominates there: {held}; standardized {label} {_fmt(std)}]"


def headline(findings: Sequence[Mapping[str, Any]], has_control: bool = True) -> str:
    """One sentence: each pool's peak z of the first pair, with its verdict and controls."""
    zs = [f for f in findings if f["metric"] == "z"]
    if not zs:
        return "no z value was defined at any site: no finding (see alignment.json for reasons)"
    first = zs[0]["pair"]
    zs = [f for f in zs if f["pair"] == first]
    # a finding at a site of identical vectors (every site was one) measures shared tokens
    beyond = sum(f["verdict"] == "beyond-control" and not f.get("artifact") for f in zs)
    lead = (
        f"{first[0]}/{first[1]}: "
        + (
            f"{beyond} of {len(zs)} pool(s) beyond-control"
            if beyond
            else "no z survives its controls"
            if has_control
            else "no control was run"
        )
        + ". "
    )
    parts = []
    for f in zs:
        ctl = f["control"]
        lex = f["lexical"]
        ctl_text = (
            "no control run"
            if not has_control
            else f"control {_fmt(None if ctl is None else ctl['value'])} at {f['site']}"
            + control_context(f)
        )
        artifact = " (identical vectors: shared tokens)" if f.get("artifact") else ""
        rests = ""
        if f.get("influential"):
            inf = f["influential"]
            rests = f" [the verdict rests on {inf['k']} of {inf['of']} pairs: see warnings]"
        p_best = f["model"].get("p_best_site")
        best_of = (
            f" (best of {f.get('n_sites') or '?'} sites, p {_fmt_p(p_best)})"
            if p_best is not None
            else ""
        )
        parts.append(
            f"{f['pool']}-pool z {_fmt(f['model']['value'])} at {f['site']}{best_of}{artifact} is "
            f"{f['verdict']} ({ctl_text}, {_lexical_text(lex)}): {phrase(f)}"
            f"{_dominated_text(f)}{rests}"
        )
    return lead + "; ".join(parts)


def summary_lines(
    doc: Mapping[str, Any], max_pairs: int = 6, *, per_finding: bool = True
) -> list[str]:
    """The console summary, made from a ``findings.json`` document alone.

    The study, the headline, one line per finding (``per_finding``; the report shows them as
    a table instead) and the warnings.
    """
    study = doc.get("study") or {}
    langs = study.get("languages") or []
    lines = []
    if study:
        lines.append(
            f"model {study.get('model')}{weights_label(study)}, {'/'.join(langs)}, "
            f"{study.get('n_pairs')} pairs, "
            f"null {study.get('null')}"
            + (", standardized dimensions" if study.get("standardize") else "")
        )
    lines.append(str(doc.get("headline", "")))
    pairs: list[list[str]] = []
    for f in doc.get("findings") or []:
        if f["pair"] not in pairs:
            pairs.append(f["pair"])
    for pair in pairs[:max_pairs] if per_finding else []:
        for f in (g for g in doc["findings"] if g["pair"] == pair):
            src = " (origin study)" if f.get("source") == "origin" else ""
            lines.append(
                f"  {pair[0]}/{pair[1]} {f['pool']:<6} {_LABELS.get(f['metric'], f['metric']):<9}"
                f" {_fmt_ci(f['model'])} at {f['site']}; control {_fmt_ci(f['control'])}"
                f"{_control_brief(f)}; lexical {_fmt_ci(f['lexical'])} -> {f['verdict']}{src}"
                f"{_flags(f)}"
            )
    if per_finding and len(pairs) > max_pairs:
        lines.append(f"  ... and {len(pairs) - max_pairs} more pairs in findings.json")
    lines += [f"warning: {w}" for w in doc.get("warnings") or []]
    return lines


# ---------------------------------------------------------------------------------------------
# from a run


def findings_for_sweep(
    run: Run,
    alignment: Mapping[str, Any],
    control_alignment: Mapping[str, Any] | None,
    config: SweepConfig,
    *,
    label: str | None = None,
    stratify: str | None = None,
    control: Run | None = None,
) -> dict[str, Any]:
    """:func:`build_findings` for a run's sweep, computing what it needs from the run.

    Each finding with a control is checked for influential pairs (:func:`check_influence`):
    ``control`` is the control's run (default: the run ``control_alignment`` names, if it
    can be read).

    With ``stratify`` (a metadata column, e.g. ``category``) each z finding gets the exact-null
    z at its site under a null permuting only within that column (no interval). Where a site
    is flagged for a dominant dimension, the flagged sites are swept again (z and CKA) in the
    other preprocessing, so the report shows raw and standardized values side by side.
    """
    from xlalign.metrics import matched_vs_scrambled_z

    strat_fn: StratifiedFn | None = None
    if stratify is not None and stratify in run.meta:
        labels = list(run.meta[stratify])
        view: Any = (
            StandardizedRun(run, list(alignment["languages"])) if config.standardize else run
        )

        def _strat(pair: tuple[str, str], pool: str, site: str) -> dict[str, Any] | None:
            xa = np.asarray(view.array(pair[0], site, pool))
            ya = np.asarray(view.array(pair[1], site, pool))
            try:
                res = matched_vs_scrambled_z(
                    xa, ya, strata=labels, center=config.center, products=STUDY_PRODUCTS
                )
            except XlalignError as e:  # an undefined z is reported, not raised
                return {"value": None, "ci_low": None, "ci_high": None, "reason": str(e)}
            return {
                "value": res.z,
                "ci_low": None,
                "ci_high": None,
                "strata": stratify,
                "null": "exact, permuting within each group",
                "reason": res.undefined_reason,
            }

        strat_fn = _strat

    flagged = sorted(
        {r["site"] for r in alignment.get("dominance") or [] if r.get("flagged")},
        key=list(run.sites).index,
    )
    variant = None
    if flagged:
        metrics = tuple(m for m in ("z", "cka_unbiased", "cka") if m in config.metrics) or ("z",)
        variant = layer_sweep(
            run,
            dataclasses.replace(
                config,
                null_perms=0,
                standardize=not config.standardize,
                sites=tuple(flagged),
                metrics=metrics,
                lexical=False,
                n_boot=0,
                langs=tuple(alignment["languages"]),
                pools=tuple(alignment["pools"]),
            ),
            progress=False,
        )
    doc = build_findings(
        alignment, control_alignment, label=label, stratified=strat_fn, variant=variant
    )
    if control is None and control_alignment is not None and control_alignment.get("run"):
        try:
            control = load_run(str(control_alignment["run"]))
            check_control(run, control)
        except XlalignError:
            control = None  # not this run's control: no check rather than a wrong one
    if control is not None and list(control.ids) == list(run.ids):
        langs = list(alignment.get("languages") or run.languages)
        doc["warnings"] += check_influence(doc["findings"], run, control, config, langs)
        # the headline names a z finding that rests on a few pairs
        doc["headline"] = headline(doc["findings"], control_alignment is not None)
    return doc


def check_influence(
    findings: Sequence[dict[str, Any]],
    run: Run,
    control: Run,
    config: SweepConfig,
    langs: Sequence[str] | None = None,
) -> list[str]:
    """Add ``influential`` to each sweep finding with a control (None when no few pairs decide
    it; see :mod:`xlalign.studies.influence`) and return one warning per finding that rests
    on at most 2% of its pairs."""
    from xlalign.metrics import linear_cka, matched_vs_scrambled_z, retrieval_scores
    from xlalign.studies.influence import INFLUENCE_METRICS, influential_pairs

    checkable = [
        f
        for f in findings
        if f.get("source", "alignment") == "alignment"
        and f.get("control") is not None
        and f["metric"] in INFLUENCE_METRICS
    ]
    if not checkable:
        return []
    if run.n_rows > INFLUENCE_MAX_N:
        return [
            f"influential-pairs check skipped: {run.n_rows} pairs > {INFLUENCE_MAX_N} (it holds "
            "n x n matrices)"
        ]
    if config.compat != "exact":
        return [f"influential-pairs check skipped: --compat {config.compat}"]
    langs = list(langs or run.languages)  # --standardize: over the languages swept
    # the sweep's own view: a repeated prompt holds one vector (ties, whatever the batch)
    views: list[Any] = [DedupedRun(r, duplicate_prompts(r, langs)) for r in (run, control)]
    if config.standardize:
        views = [StandardizedRun(r, langs) for r in views]
    labels = np.asarray(run.meta[config.stratify]) if config.stratify else None

    def value_of(metric: str) -> Callable[[np.ndarray, np.ndarray, np.ndarray], float | None]:
        def value(x: np.ndarray, y: np.ndarray, keep: np.ndarray) -> float | None:
            xs, ys = x[keep], y[keep]
            try:
                if metric == "z":
                    return matched_vs_scrambled_z(
                        xs, ys, method=config.null, n_perms=config.n_perms, seed=config.seed,
                        strata=None if labels is None else labels[keep], center=config.center,
                        products=STUDY_PRODUCTS,
                    ).z  # fmt: skip
                if metric in ("cka", "cka_unbiased"):
                    return linear_cka(xs, ys, unbiased=metric == "cka_unbiased").cka
                return float(getattr(retrieval_scores(xs, ys), metric))
            except XlalignError:
                return None

        return value

    out = []
    for f in checkable:
        (x, y), site, pool = f["pair"], f["site"], f["pool"]
        model = tuple(np.asarray(views[0].array(lang, site, pool), np.float64) for lang in (x, y))
        ctl = tuple(np.asarray(views[1].array(lang, site, pool), np.float64) for lang in (x, y))
        res = influential_pairs(f["metric"], model, ctl, value_of(f["metric"]), run.ids)  # type: ignore[arg-type]
        f["influential"] = res
        if res is None:
            continue
        shown = ", ".join(res["ids"][:10]) + (" ..." if len(res["ids"]) > 10 else "")
        moves = "falls to or below" if res["direction"] == "below" else "rises above"
        out.append(
            f"{x}/{y}, {pool} pool, {_LABELS[f['metric']]} at {site}: removing {res['k']} of "
            f"{res['of']} pairs (ids {shown}) moves the model from {_fmt(res['model']['before'])} "
            f"to {_fmt(res['model']['after'])}, and it {moves} the control "
            f"({_fmt(res['control']['before'])} -> {_fmt(res['control']['after'])}): which of "
            f"the two is higher, and so the verdict '{f['verdict']}', rests on these pairs"
        )
    return out


#: The origin study's z keys that make findings, by the pool they measure.
_ORIGIN_POOLS = {"mean": "z_mean_full", "last": "z_last"}


def findings_for_origin(
    origin: Mapping[str, Any],
    *,
    run: Run | None = None,
    control: Run | None = None,
    alignment: Mapping[str, Any] | None = None,
    n_boot: int = 200,
    seed: int = 42,
    level: float = 0.95,
) -> dict[str, Any]:
    """The ``findings.json`` document of an origin study (``origin.json``): z only.

    For the mean pool and the last token (the origin study's meaning: the last non-special
    token where the tokenizer appends one), the model's best site of the decomposition, the
    control's z there, the lexical baseline's z and the within-category z.

    The verdict rule is the sweep's (:func:`verdict`, on intervals): given the ``run`` (and
    its ``control``), the model's and the control's z get the sweep's interval (the exact
    jackknife, at ``level``) computed on the run's vectors of that pool and site, when those
    give the origin study's z (else it stays a point); the lexical baseline's z takes its
    interval from the sweep's ``alignment`` when that holds the same value, and the model's
    best site takes the sweep's ``p_best_site`` there. A warning names every value left
    without an interval.
    """
    lx, ly = (str(v) for v in origin["languages"])
    ctl = origin.get("control") or None
    ctl_rows = {r["site"]: r for r in (ctl or {}).get("decomposition") or []}
    lex = origin.get("lexical") or {}
    lexical = None if lex.get("z") is None else {"value": lex["z"], "ci_low": None, "ci_high": None}
    findings: list[dict[str, Any]] = []
    warnings: list[str] = []
    n = origin.get("n_pairs")
    small = small_sample_warning(n if isinstance(n, int) else None)
    if small is not None:
        warnings.insert(0, small)
    if ctl is None:
        warnings.append("no random-weights control: no finding can be beyond-control")
    identical = {
        site
        for groups in (origin.get("identical_last_token") or {}).values()
        for site, g in groups.items()
        if g.get("identical")
    }
    for pool, key in _ORIGIN_POOLS.items():
        rows = [r for r in origin.get("decomposition") or [] if r.get(key) is not None]
        if not rows:
            continue
        flagged = identical if pool == "last" else set()
        # sites of identical vectors measure shared tokens: chosen only if all are
        rows = [r for r in rows if r["site"] not in flagged] or rows
        best = max(rows, key=lambda r: float(r[key]))
        model = {"value": best[key], "ci_low": None, "ci_high": None}
        c_row = ctl_rows.get(best["site"])
        ctl_value = (
            None
            if c_row is None or c_row.get(key) is None
            else {"value": c_row[key], "ci_low": None, "ci_high": None}
        )
        strat = None
        if pool == "last" and best.get("z_stratified") is not None:
            strat = {"value": best["z_stratified"], "ci_low": None, "ci_high": None}
        lex_here = None if lexical is None else dict(lexical)
        if run is not None:
            model = _with_interval(model, run, (lx, ly), pool, best["site"], n_boot, seed, level)
        if control is not None and c_row is not None and ctl_value is not None:
            ctl_value = _with_interval(
                ctl_value, control, (lx, ly), pool, best["site"], n_boot, seed, level
            )
        if lex_here is not None and alignment is not None:
            rec = _index(alignment).get((lx, ly, pool, LEXICAL_SITE, "z"))
            if rec is not None and _same(rec.get("value"), lex_here["value"]):
                lex_here = _value(rec, best=False)
        if alignment is not None:  # the sweep's best-site correction, where it holds this z
            rec = _index(alignment).get((lx, ly, pool, best["site"], "z"))
            if (
                rec is not None
                and rec.get("p_best_site") is not None
                and _same(rec.get("value"), model["value"])
            ):
                model = {**model, "p_best_site": rec["p_best_site"]}
        control_best, counts = _origin_control(origin, key, ctl_rows, flagged)
        gains = [
            (float(r[key]) - float(ctl_rows[r["site"]][key]), r)
            for r in rows
            if r["site"] in ctl_rows and ctl_rows[r["site"]].get(key) is not None
        ]
        gain = max(gains, key=lambda g: g[0], default=None)
        findings.append(
            {
                "pair": [lx, ly],
                "pool": pool,
                "metric": "z",
                "site": best["site"],
                "model": model,
                "control": ctl_value,
                "lexical": lex_here,
                "stratified": strat,
                "verdict": verdict(
                    model,
                    ctl_value,
                    lex_here,
                    control_best=control_best,
                    below_everywhere=None
                    if counts is None
                    else counts["below"] == counts["compared"],
                ),
                "control_best": control_best,
                "sites_vs_control": counts,
                "largest_gain": None
                if gain is None
                else {
                    "site": gain[1]["site"],
                    "gain": gain[0],
                    "model": gain[1][key],
                    "control": ctl_rows[gain[1]["site"]][key],
                },
                "artifact": "identical-vectors" if best["site"] in flagged else None,
                "p_best_site": model.get("p_best_site"),
                "n_sites": len(rows),
                "n": n,
                "source": "origin",
            }
        )
    points = [
        f"{f['pool']} pool {role}"
        for f in findings
        for role in ("model", "control", "lexical")
        if f[role] is not None and f[role].get("ci_low") is None
    ]
    if points:
        warnings.append(
            f"no interval for the origin study's z ({', '.join(points)}): those verdicts "
            "compare point values"
        )
    study = {
        "model": origin.get("model"),
        "languages": [lx, ly],
        "n_pairs": n,
        "null": (origin.get("null") or {}).get("method"),
        "standardize": False,
        "control": None if ctl is None else "random-init",
    }
    return {
        "headline": headline(findings, ctl is not None),
        "findings": findings,
        "warnings": warnings,
        "study": study,
        "dominance": [],
        "identical_vectors": [],
    }


def _origin_control(
    origin: Mapping[str, Any],
    key: str,
    ctl_rows: Mapping[str, Mapping[str, Any]],
    flagged: set[str],
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The control's best site of one origin z (passing over ``flagged`` sites unless all
    are) and the site-by-site count of model against control (point values)."""
    order = [r["site"] for r in origin.get("decomposition") or []]
    c_rows = [r for r in ctl_rows.values() if r.get(key) is not None]
    pick = [r for r in c_rows if r["site"] not in flagged] or c_rows
    best = max(pick, key=lambda r: float(r[key]), default=None)
    control_best = (
        None
        if best is None
        else {"site": best["site"], "value": best[key], "ci_low": None, "ci_high": None}
    )
    above, below, compared = [], [], []
    for r in origin.get("decomposition") or []:
        c = ctl_rows.get(r["site"], {}).get(key)
        if r.get(key) is None or c is None:
            continue
        compared.append(r["site"])
        if r[key] > c:
            above.append(r["site"])
        elif r[key] < c:
            below.append(r["site"])
    counts = (
        None
        if not compared
        else {
            "above": len(above),
            "below": len(below),
            "compared": len(compared),
            "above_sites": site_ranges(above, order),
            "below_sites": site_ranges(below, order),
        }
    )
    return control_best, counts


def _same(a: Any, b: Any) -> bool:
    """Two values of one statistic, equal to float rounding."""
    if a is None or b is None:
        return False
    return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))


def _with_interval(
    rec: dict[str, Any],
    run: Run,
    pair: tuple[str, str],
    pool: str,
    site: str,
    n_boot: int,
    seed: int,
    level: float,
) -> dict[str, Any]:
    """``rec`` with the sweep's interval of z (:meth:`Pair.interval`: the exact jackknife) on
    the run's ``pool`` vectors at ``site``, if those give ``rec``'s value; else ``rec``
    unchanged. ``seed`` is unused: the interval has no resamples."""
    from xlalign.metrics import matched_vs_scrambled_z
    from xlalign.metrics.pairwise import Side

    if n_boot < 1 or pool not in run.pools or site not in run.sites or run.n_rows > CI_MAX_N:
        return rec  # above CI_MAX_N the sweep has no intervals either
    try:
        x = np.asarray(run.array(pair[0], site, pool))
        y = np.asarray(run.array(pair[1], site, pool))
        if not _same(matched_vs_scrambled_z(x, y, products=STUDY_PRODUCTS).z, rec["value"]):
            return rec
        ci = Side(x, "x").pair_with(Side(y, "y")).interval("z", float(rec["value"]), level)
    except XlalignError:
        return rec
    return {**rec, "ci_low": ci.low, "ci_high": ci.high}


def merge_findings(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """``new`` with the findings of ``old`` that came from another study kept after its own.

    ``align`` (source ``alignment``) and ``origin`` (source ``origin``) write into the same
    folder; each replaces only its own part. The headline, study and dominance entries come
    from the sweep when it has run, else from the origin study.
    """
    # a document without findings is a sweep's (nothing defined): it replaces the sweep's part
    sources = {f.get("source") for f in new.get("findings") or []} or {"alignment"}
    parts = dict((old or {}).get("parts") or {})
    for src in sources:
        parts[str(src)] = {
            k: new.get(k)
            for k in ("headline", "warnings", "study", "dominance", "identical_vectors", "inputs")
        }
    # a finding without a source predates the field: it came from the sweep
    kept = [
        f for f in (old or {}).get("findings") or [] if f.get("source", "alignment") not in sources
    ]
    lead = parts.get("alignment") or next(iter(parts.values()))
    warnings: list[str] = []
    for part in parts.values():
        warnings += [w for w in part.get("warnings") or [] if w not in warnings]
    headline_part = lead
    controlled = [src for src, part in parts.items() if (part.get("study") or {}).get("control")]
    if controlled and not (lead.get("study") or {}).get("control"):
        # the sweep ran before the control existed: its headline would say there is none
        headline_part = parts[controlled[0]]
        warnings = [w for w in warnings if not w.startswith("no random-weights control")]
        warnings.append(
            "the sweep's findings (xlalign align) were made without the random-weights control "
            f"that the {', '.join(controlled)} study has since added: run xlalign align on this "
            "folder again to compare the sweep with it; the headline is the "
            f"{controlled[0]} study's"
        )
    return {
        **{k: v for k, v in new.items() if k not in ("findings", "warnings")},
        "headline": headline_part.get("headline"),
        "findings": [*(new.get("findings") or []), *kept],
        "warnings": warnings,
        "study": lead.get("study"),
        "dominance": lead.get("dominance") or [],
        "identical_vectors": lead.get("identical_vectors") or [],
        "parts": parts,
    }


def write_findings(doc: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write ``findings.json`` into ``out_dir``, keeping another study's part; returns its path.

    See :func:`merge_findings`: the sweep and the origin study each replace only their own
    findings in a folder's ``findings.json``.
    """
    import json

    path = Path(out_dir) / FINDINGS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None  # an unreadable old file is replaced, not merged
    atomic_write_json(path, merge_findings(old if isinstance(old, dict) else None, doc))
    return path
