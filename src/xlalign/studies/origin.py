"""Where the "free" alignment comes from: the study's embedding-origin analysis, made complete.

The original script asks how much of the cross-lingual alignment seen after the first block is
already in the raw token embeddings. This module answers it from a run folder, for any model,
and fixes what the script got wrong:

- mean pooling drops only the tokenizer's special tokens (the script dropped position 0 as a
  "BOS" that Qwen2.5 never adds, losing the first real token);
- tokens are classed by their decoded text, so Chinese tokens are found;
- every analysis uses all pairs, not the first 50;
- the shared-vs-language-specific decomposition the script announced is computed, at every site;
- the PCA results are saved; undefined z values (a null with zero spread) are stored as null
  with the reason, never as a number.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xlalign.data.tokens import TOKEN_CLASSES, TokenClassifier
from xlalign.errors import RunError, XlalignError
from xlalign.metrics import (
    ZResult,
    cohen_d_pc1,
    identical_groups,
    matched_vs_scrambled_z,
    pca_subspace_z,
)
from xlalign.store.run import Run
from xlalign.studies.layers import STUDY_PRODUCTS

#: The study's result keys that hold a z value.
SEED_Z_KEYS = (
    "z_raw_embed_last_token",
    "z_raw_embed_mean_no_bos",
    "z_l0_output_last_token",
    "z_l0_cached",
)
PCA_KS = (2, 5, 10)
REQUIRED_SITES = ("embed", "L0")
REQUIRED_POOLS = ("last", "mean")
EXTRACT_HINT = "xlalign extract ... --sites embed,L0,all --pool last,mean,tokens"
EMBEDDING_COSINE_NOTE = (
    "A token id shared by both sides of a pair looks up the same embedding row, so its "
    "embedding-level cosine is 1 by construction; it is stated, not measured. Additive position "
    "embeddings (where the model has them) make the embed-site vectors differ; "
    "context_cosine['embed'] measures that."
)


@dataclass(frozen=True)
class OriginConfig:
    """How the origin study measures z (the same statistic as the layer sweep)."""

    null: str = "exact"
    """``exact`` (closed form over all permutations) or ``monte-carlo`` (the study's null)."""
    n_perms: int = 1000
    """Monte Carlo draws (``--null monte-carlo`` with 1000 draws, seed 42, is the study's)."""
    seed: int = 42
    """Seed of the Monte Carlo null."""
    stratify: str | None = "category"
    """Metadata column for the within-category and stratified analyses (skipped if absent)."""
    langs: tuple[str, str] | None = None
    """The two languages to compare; default the run's first two."""

    def __post_init__(self) -> None:
        if self.null not in ("exact", "monte-carlo"):
            raise XlalignError(f"--null must be 'exact' or 'monte-carlo', got {self.null!r}")
        if self.n_perms < 2:
            raise XlalignError(f"--n-perms must be at least 2, got {self.n_perms}")


# ---------------------------------------------------------------------------------------------
# checks


def check_origin_run(run: Run) -> None:
    """Raise a RunError naming what the run lacks for the origin study and how to extract it."""
    missing = [f"site '{s}'" for s in REQUIRED_SITES if s not in run.sites]
    # pool 'last' can be picked from token vectors (a run written before its meaning changed)
    missing += [
        f"pool '{p}'" for p in REQUIRED_POOLS
        if p not in run.pools and not (p == "last" and "tokens" in run.pools)
    ]  # fmt: skip
    if len(run.languages) < 2:
        missing.append("a second language")
    if not (run.path / "tokens").is_dir():
        missing.append("token ids")
    if missing:
        note = f" ({run.pool_note})" if run.pool_note and "pool 'last'" in missing else ""
        raise RunError(
            f"{run.path}: the origin study needs {', '.join(missing)}; the run has sites "
            f"{', '.join(run.sites)} and pools {', '.join(run.pools)}{note}. Extract with: "
            f"{EXTRACT_HINT}"
        )


# ---------------------------------------------------------------------------------------------
# the statistic, tolerant of pairs that cannot be scored


def _z(
    x: np.ndarray,
    y: np.ndarray,
    cfg: OriginConfig,
    strata: Sequence[Any] | None = None,
    ids: Sequence[str] | None = None,
) -> Z:
    """z of rows ``x``/``y``; ``ids``: their corpus ids, named where a row makes z undefined."""
    try:
        res = matched_vs_scrambled_z(
            x, y, method=cfg.null, n_perms=cfg.n_perms, seed=cfg.seed, strata=strata,
            products=STUDY_PRODUCTS,
        )  # fmt: skip
    except XlalignError as e:
        return Z(None, _naming_rows(str(e), x, y, ids), None, len(x))
    return Z(res.z, res.undefined_reason, res, res.n)


def _naming_rows(reason: str, x: np.ndarray, y: np.ndarray, ids: Sequence[str] | None) -> str:
    """``reason`` plus the corpus ids of the rows that are zero or non-finite in ``x`` or ``y``.

    The metrics name rows by their index in the arrays they were given, which for a subset
    (identical last tokens removed, one category) is not the corpus row.
    """
    if ids is None or len(ids) != len(x):
        return reason
    bad = np.zeros(len(x), dtype=bool)
    for a in (np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)):
        finite = np.isfinite(a).all(axis=1)
        bad |= ~finite | (np.abs(np.where(np.isfinite(a), a, 0.0)).max(axis=1, initial=0.0) == 0)
    rows = np.flatnonzero(bad)
    if rows.size == 0:
        return reason
    shown = ", ".join(str(ids[i]) for i in rows[:5])
    more = f" and {rows.size - 5} more" if rows.size > 5 else ""
    return f"{reason} (corpus ids of those rows: {shown}{more})"


@dataclass(frozen=True)
class Z:
    """A z value (None when undefined, with the reason) and the full result behind it."""

    value: float | None
    reason: str | None
    result: ZResult | None
    n: int

    def detail(self) -> dict[str, Any]:
        if self.result is not None:
            return self.result.to_dict()
        return {"z": None, "n": self.n, "undefined_reason": self.reason}


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


# ---------------------------------------------------------------------------------------------
# tokens


@dataclass
class _Tokens:
    """One language's prompts: ids, special mask, and where each prompt's last token is.

    The last token is the last non-special one, as pool ``last`` defines it (BERT-style prompts
    end in [SEP], which would make every pair's "last token" identical); a prompt of special
    tokens only falls back to its final token.
    """

    ids: list[np.ndarray]
    special: list[np.ndarray]

    @property
    def last_pos(self) -> np.ndarray:
        out = []
        for sp in self.special:
            real = np.flatnonzero(~sp)
            out.append(int(real[-1]) if real.size else len(sp) - 1)
        return np.array(out, dtype=np.int64)

    @property
    def last(self) -> np.ndarray:
        return np.array([int(r[p]) for r, p in zip(self.ids, self.last_pos, strict=True)])

    @property
    def ends_special(self) -> bool:
        return any(bool(sp[-1]) for sp in self.special if sp.size)


class _LastVectors:
    """Pool ``last`` vectors of a run at a site: stored, or picked from its token vectors.

    A run written before pool ``last`` meant the last non-special token may not offer it (see
    :func:`xlalign.store.legacy_pools`); its token vectors, where kept, still give it exactly.
    """

    def __init__(self, run: Run, tokens: Mapping[str, _Tokens]) -> None:
        self.run, self.tokens = run, tokens

    def __call__(self, lang: str, site: str) -> np.ndarray:
        if "last" in self.run.pools:
            return np.asarray(self.run.array(lang, site, "last"))
        vecs = self.run.token_vectors(lang, site)
        return np.stack([v[p] for v, p in zip(vecs, self.tokens[lang].last_pos, strict=True)])


def _load_tokens(run: Run, langs: Sequence[str]) -> tuple[dict[str, _Tokens], str]:
    """Every language's tokens, and a note saying which token "last" means in this run."""
    tokens = {lang: _Tokens(run.token_ids(lang), run.special_tokens_mask(lang)) for lang in langs}
    if not any(t.ends_special for t in tokens.values()):
        note = "the last token of each prompt (pool last; the tokenizer appends no special token)"
    else:
        note = (
            "the last non-special token of each prompt (pool last; the tokenizer appends a "
            "special token, e.g. [SEP], which is pool eos)"
        )
    if "last" not in run.pools:
        note += "; picked from the run's token vectors"
    return tokens, note


def _shared_masks(tx: _Tokens, ty: _Tokens) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per pair, masks of the non-special positions whose id occurs on the other side too."""
    mx, my = [], []
    for ix, sx, iy, sy in zip(tx.ids, tx.special, ty.ids, ty.special, strict=True):
        shared = set(ix[~sx].tolist()) & set(iy[~sy].tolist())
        mx.append(np.isin(ix, list(shared)) & ~sx)
        my.append(np.isin(iy, list(shared)) & ~sy)
    return mx, my


def _masked_means(
    vectors: Sequence[np.ndarray], masks: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """``(n_kept, d)`` float64 means over masked positions, and the kept row indices."""
    rows, out = [], []
    for i, (v, m) in enumerate(zip(vectors, masks, strict=True)):
        if m.any():
            rows.append(i)
            out.append(np.asarray(v, dtype=np.float64)[m].mean(axis=0))
    d = vectors[0].shape[1] if vectors else 0
    return (np.stack(out) if out else np.zeros((0, d))), np.array(rows, dtype=np.int64)


def _context_cosine(
    vx: Sequence[np.ndarray], vy: Sequence[np.ndarray], tx: _Tokens, ty: _Tokens
) -> float | None:
    """Mean cosine between every occurrence of a shared token on one side and on the other."""
    total, count = 0.0, 0
    for ax, ay, ix, sx, iy, sy in zip(vx, vy, tx.ids, tx.special, ty.ids, ty.special, strict=True):
        shared = set(ix[~sx].tolist()) & set(iy[~sy].tolist())
        if not shared:
            continue
        ux = _unit(np.asarray(ax, dtype=np.float64))
        uy = _unit(np.asarray(ay, dtype=np.float64))
        for tid in shared:
            jx = np.flatnonzero((ix == tid) & ~sx)
            jy = np.flatnonzero((iy == tid) & ~sy)
            c = ux[jx] @ uy[jy].T
            total += float(c.sum())
            count += c.size
    return total / count if count else None


def _unit(a: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=-1, keepdims=True)
    return a / np.where(norms == 0, 1.0, norms)


# ---------------------------------------------------------------------------------------------
# the study


def origin_study(
    run: Run,
    config: OriginConfig | None = None,
    *,
    control: Run | None = None,
    control_info: Mapping[str, Any] | None = None,
    cached_npz: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The origin findings of ``run`` as a JSON-ready dict (the contents of ``origin.json``).

    ``control`` is a run of the same architecture and tokenizer with freshly initialised weights
    (``xlalign extract --control random-init``); its z values are reported beside the trained
    model's. ``cached_npz`` is an optional ``all_layers_lasttok.npz`` (keys ``<lang>_L0``) whose
    L0 last-token z is reported as ``z_l0_cached``, as the study did; without it the run's own
    stored L0 is used.
    """
    cfg = config or OriginConfig()
    check_origin_run(run)
    lx, ly = cfg.langs or (run.languages[0], run.languages[1])
    for lang in (lx, ly):
        if lang not in run.languages:
            raise RunError(f"language '{lang}' not in run: it has {', '.join(run.languages)}")
    say = progress or (lambda _msg: None)
    tokenizer = run.tokenizer()
    classifier = TokenClassifier(tokenizer)
    tokens, last_note = _load_tokens(run, (lx, ly))
    strata = _strata(run, cfg)

    say("seed keys")
    out: dict[str, Any] = {
        "model": run.manifest.get("model"),
        "run": str(run.path),
        "run_fingerprint": run.fingerprint,
        "control_fingerprint": None if control is None else control.fingerprint,
        "languages": [lx, ly],
        "n_pairs": run.n_rows,
        "null": {
            "method": cfg.null,
            "n_perms": cfg.n_perms if cfg.null == "monte-carlo" else None,
            "seed": cfg.seed if cfg.null == "monte-carlo" else None,
        },
    }
    out["last_token"] = last_note
    out.update(_seed_keys(run, lx, ly, cfg, cached_npz, _LastVectors(run, tokens)))
    out["tokenizer"] = {
        "name": run.manifest.get("tokenizer_name"),
        "adds_bos": bool(run.manifest.get("adds_bos", False)),
        "bos_token": run.manifest.get("bos_token"),
        "unk_token": getattr(tokenizer, "unk_token", None),
        "unk_rate": {
            lang: _unk_rate(tokens[lang], getattr(tokenizer, "unk_token_id", None))
            for lang in (lx, ly)
        },
    }
    out["positions"] = {
        "has_additive_positions": bool(run.manifest.get("has_additive_positions", False)),
        "embed_site": _site_description(run, "embed"),
    }
    say("token classes")
    out["token_classes"] = {lang: classifier.counts(tokens[lang].ids) for lang in (lx, ly)}
    say("shared tokens")
    out["shared_tokens"] = _shared_tokens(run, lx, ly, tokens, classifier)
    say("decomposition")
    out["decomposition"] = [
        _decompose(run, site, lx, ly, tokens, strata, cfg) for site in run.sites
    ]
    out["last_token_table"] = _last_token_table(lx, ly, tokens, classifier)
    out["lexical"] = _lexical(tokens[lx], tokens[ly], cfg)
    out["control"] = None
    if control is not None:
        say("random-weights control")
        check_origin_run(control)
        ctl_tokens, _ = _load_tokens(control, (lx, ly))
        ctl: dict[str, Any] = {"kind": "random-init", **dict(control_info or {})}
        ctl["run"] = str(control.path)
        ctl.update(_seed_keys(control, lx, ly, cfg, None, _LastVectors(control, ctl_tokens)))
        ctl["decomposition"] = [
            _decompose(control, site, lx, ly, ctl_tokens, strata, cfg) for site in control.sites
        ]
        out["control"] = ctl
    return out


def _lexical(tx: _Tokens, ty: _Tokens, cfg: OriginConfig) -> dict[str, Any]:
    """z of the model-free lexical baseline (bags of token ids), on the study's null."""
    from xlalign.data.lexical import bag_of_ids

    x, y = bag_of_ids([tx.ids, ty.ids], [tx.special, ty.special])
    z = _z(x, y, cfg)
    return {
        "z": _finite(z.value),
        "undefined_reason": z.reason,
        "features": "bag of token ids (special tokens left out), L2-normalised",
        "detail": z.detail(),
    }


def _strata(run: Run, cfg: OriginConfig) -> list[Any] | None:
    if cfg.stratify is None:
        return None
    meta = run.meta
    if cfg.stratify not in meta:
        if cfg.stratify == "category":
            return None  # the default column is optional
        raise RunError(
            f"--stratify column '{cfg.stratify}' not in run: it has "
            f"{', '.join(meta) or 'no metadata columns'}"
        )
    return list(meta[cfg.stratify])


def _site_description(run: Run, site: str) -> str | None:
    info = run.manifest.get("site_info") or run.manifest.get("site_descriptions") or {}
    entry = info.get(site) if isinstance(info, dict) else None
    if isinstance(entry, dict):
        return entry.get("description") or entry.get("what")
    return entry


def _unk_rate(tok: _Tokens, unk_id: int | None) -> float:
    total = sum(len(r) for r in tok.ids)
    if unk_id is None or total == 0:
        return 0.0
    return sum(int((r == unk_id).sum()) for r in tok.ids) / total


def _seed_keys(
    run: Run,
    lx: str,
    ly: str,
    cfg: OriginConfig,
    cached_npz: str | Path | None,
    last: _LastVectors,
) -> dict[str, Any]:
    """The study's keys, plus norm ratio and PCA-k z, with the full result behind each z."""
    emb_last_x, emb_last_y = last(lx, "embed"), last(ly, "embed")
    l0_last_x, l0_last_y = last(lx, "L0"), last(ly, "L0")
    zs: dict[str, Z] = {
        "z_raw_embed_last_token": _z(emb_last_x, emb_last_y, cfg),
        "z_raw_embed_mean_no_bos": _z(
            run.array(lx, "embed", "mean"), run.array(ly, "embed", "mean"), cfg
        ),
        "z_l0_output_last_token": _z(l0_last_x, l0_last_y, cfg),
    }
    if cached_npz is not None:
        with np.load(cached_npz, allow_pickle=False) as npz:
            keys = (f"{lx}_L0", f"{ly}_L0")
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise XlalignError(
                    f"{cached_npz}: missing key(s) {', '.join(missing)}; it has "
                    f"{', '.join(sorted(npz.files)[:12])}"
                )
            zs["z_l0_cached"] = _z(npz[keys[0]], npz[keys[1]], cfg)
        cached_source = str(cached_npz)
    else:
        zs["z_l0_cached"] = zs["z_l0_output_last_token"]
        cached_source = "run's stored L0 last-token vectors"
    for k in PCA_KS:
        try:
            res = pca_subspace_z(
                emb_last_x, emb_last_y, k, method=cfg.null, n_perms=cfg.n_perms, seed=cfg.seed
            )
            zs[f"z_pca_{k}"] = Z(res.z, res.undefined_reason, res, res.n)
        except XlalignError as e:
            zs[f"z_pca_{k}"] = Z(None, str(e), None, run.n_rows)

    out: dict[str, Any] = {key: _finite(z.value) for key, z in zs.items()}
    a, b = zs["z_l0_output_last_token"].value, zs["z_raw_embed_last_token"].value
    out["delta_l0_minus_embed"] = None if a is None or b is None else float(a - b)
    undefined = {key: z.reason for key, z in zs.items() if z.value is None}
    if out["delta_l0_minus_embed"] is None:
        undefined["delta_l0_minus_embed"] = "a z it is the difference of is undefined"
    try:
        cohen = cohen_d_pc1(emb_last_x, emb_last_y)
        out["embedding_pca_varexp"] = [float(v) for v in cohen.explained_variance_ratio[:10]]
        out["embedding_cohen_d_pc0"] = _finite(cohen.d)
    except XlalignError as e:
        out["embedding_pca_varexp"], out["embedding_cohen_d_pc0"] = None, None
        undefined["embedding_cohen_d_pc0"] = str(e)
    norms = {
        lang: {
            site: float(np.linalg.norm(np.asarray(last(lang, site), np.float64), axis=1).mean())
            for site in ("embed", "L0")
        }
        for lang in (lx, ly)
    }
    out["norm_ratio_l0_over_embed"] = (
        norms[lx]["L0"] / norms[lx]["embed"] if norms[lx]["embed"] > 0 else None
    )
    out["norms_last_token"] = norms
    # prompts ending in the same token share its embedding: z there measures shared tokens
    out["identical_last_token"] = {
        lang: {site: identical_groups(last(lang, site)).to_dict() for site in ("embed", "L0")}
        for lang in (lx, ly)
    }
    out["z_l0_cached_source"] = cached_source
    out["undefined"] = undefined
    out["z_details"] = {key: z.detail() for key, z in zs.items()}
    return out


def _shared_tokens(
    run: Run, lx: str, ly: str, tokens: Mapping[str, _Tokens], classifier: TokenClassifier
) -> dict[str, Any]:
    tx, ty = tokens[lx], tokens[ly]
    by_class = dict.fromkeys(TOKEN_CLASSES, 0)
    pairs_with, total = 0, 0
    for ix, sx, iy, sy in zip(tx.ids, tx.special, ty.ids, ty.special, strict=True):
        shared = set(ix[~sx].tolist()) & set(iy[~sy].tolist())
        pairs_with += bool(shared)
        total += len(shared)
        for tid in shared:
            by_class[classifier(tid)[1]] += 1
    context: dict[str, float | None] = {}
    if "tokens" in run.pools:
        for site in run.sites:
            context[site] = _context_cosine(
                run.token_vectors(lx, site), run.token_vectors(ly, site), tx, ty
            )
    return {
        "pairs_with_shared": pairs_with,
        "n_pairs": len(tx.ids),
        "total": total,
        "by_class": by_class,
        "embedding_cosine": 1.0,
        "embedding_cosine_note": EMBEDDING_COSINE_NOTE,
        "context_cosine": context,
        "context_cosine_note": (
            "mean cosine, at each site, between every occurrence of a shared token id in the "
            "two prompts of a pair (all occurrence pairs, all pairs)"
            if context
            else "needs token vectors: extract with --pool tokens"
        ),
    }


def _decompose(
    run: Run,
    site: str,
    lx: str,
    ly: str,
    tokens: Mapping[str, _Tokens],
    strata: Sequence[Any] | None,
    cfg: OriginConfig,
) -> dict[str, Any]:
    """Every z of the decomposition at one site; None with a reason where undefined."""
    tx, ty = tokens[lx], tokens[ly]
    zs: dict[str, Z] = {}
    ns: dict[str, int] = {}
    last = _LastVectors(run, tokens)
    last_x, last_y = last(lx, site), last(ly, site)
    ids = np.asarray(run.ids, dtype=object)
    zs["z_mean_full"] = _z(
        run.array(lx, site, "mean"), run.array(ly, site, "mean"), cfg, ids=list(ids)
    )
    zs["z_last"] = _z(last_x, last_y, cfg, ids=list(ids))
    keep = np.flatnonzero(tx.last != ty.last)
    ns["n_last_nonidentical"] = int(keep.size)
    zs["z_last_nonidentical"] = _z(
        np.asarray(last_x)[keep], np.asarray(last_y)[keep], cfg, ids=list(ids[keep])
    )
    reasons: dict[str, str] = {}
    if "tokens" in run.pools:
        vx, vy = run.token_vectors(lx, site), run.token_vectors(ly, site)
        mx, my = _shared_masks(tx, ty)
        for key, (ax, ay) in {
            "z_mean_shared": (mx, my),
            "z_mean_nonshared": (
                [~m & ~s for m, s in zip(mx, tx.special, strict=True)],
                [~m & ~s for m, s in zip(my, ty.special, strict=True)],
            ),
        }.items():
            xs, rows_x = _masked_means(vx, ax)
            ys, rows_y = _masked_means(vy, ay)
            rows = np.intersect1d(rows_x, rows_y)
            ns["n_" + key[2:]] = int(rows.size)
            zs[key] = _z(
                xs[np.searchsorted(rows_x, rows)], ys[np.searchsorted(rows_y, rows)], cfg,
                ids=list(ids[rows]),
            )  # fmt: skip
    else:
        for key in ("z_mean_shared", "z_mean_nonshared"):
            reasons[key] = "needs token vectors: extract with --pool tokens"
    within: dict[str, float | None] = {}
    if strata is not None:
        zs["z_stratified"] = _z(last_x, last_y, cfg, strata=strata)
        labels = np.asarray([str(s) for s in strata])
        for cat in sorted(set(labels.tolist()), key=_natural):
            idx = np.flatnonzero(labels == cat)
            z = _z(np.asarray(last_x)[idx], np.asarray(last_y)[idx], cfg, ids=list(ids[idx]))
            within[cat] = _finite(z.value)
            if z.value is None:
                reasons[f"z_within_category[{cat}]"] = z.reason or "undefined"
    else:
        reasons["z_stratified"] = "no category column to stratify by"
    rec: dict[str, Any] = {"site": site}
    for key in (
        "z_mean_full",
        "z_mean_shared",
        "z_mean_nonshared",
        "z_last",
        "z_last_nonidentical",
        "z_stratified",
    ):
        zk = zs.get(key)
        rec[key] = None if zk is None else _finite(zk.value)
        if zk is not None and zk.value is None:
            reasons[key] = zk.reason or "undefined"
    rec["z_within_category"] = within
    rec.update(ns)
    rec["reasons"] = reasons
    rec["details"] = {key: z.detail() for key, z in zs.items()}
    return rec


def _natural(label: str) -> tuple[int, Any]:
    return (0, int(label)) if label.lstrip("-").isdigit() else (1, label)


def _last_token_table(
    lx: str, ly: str, tokens: Mapping[str, _Tokens], classifier: TokenClassifier
) -> list[dict[str, Any]]:
    counts = Counter(zip(tokens[lx].last.tolist(), tokens[ly].last.tolist(), strict=True))
    return [
        {
            lx: classifier(a)[0],
            ly: classifier(b)[0],
            f"{lx}_id": a,
            f"{ly}_id": b,
            "identical": a == b,
            "count": n,
        }
        for (a, b), n in counts.most_common()
    ]


# ---------------------------------------------------------------------------------------------
# summary


def _fmt(v: Any) -> str:
    if v is None:
        return "undefined"
    if isinstance(v, float):
        return f"{v:+.2f}" if abs(v) < 1000 else f"{v:.3g}"
    return str(v)


def summarize(origin: Mapping[str, Any]) -> list[str]:
    """Human-readable lines summarising an origin result."""
    lx, ly = origin["languages"]
    tok = origin["tokenizer"]
    ctl = origin.get("control") or {}
    null = origin["null"]
    null_desc = null["method"] + (
        f" ({null['n_perms']} draws, seed {null['seed']})"
        if null["method"] == "monte-carlo"
        else ""
    )
    lines = [
        f"origin study: {origin.get('model')}  {lx}/{ly}, {origin['n_pairs']} pairs, null {null_desc}",
        f"tokenizer adds BOS: {'yes (' + str(tok['bos_token']) + ')' if tok['adds_bos'] else 'no'}"
        f"; additive position embeddings at embed: "
        f"{'yes' if origin['positions']['has_additive_positions'] else 'no'}",
    ]
    if origin.get("last_token"):
        lines.append(f"last-token analyses use {origin['last_token']}")
    unk = {k: v for k, v in tok.get("unk_rate", {}).items() if v}
    if unk:
        lines.append(
            "unknown-token rate: "
            + ", ".join(f"{k} {v:.0%}" for k, v in unk.items())
            + " (the tokenizer cannot represent much of this text)"
        )
    for key in (*SEED_Z_KEYS, "delta_l0_minus_embed", "z_pca_2", "z_pca_5", "z_pca_10"):
        row = f"  {key:<26} {_fmt(origin.get(key)):>9}"
        if ctl:
            row += f"   random-init control {_fmt(ctl.get(key)):>9}"
        else:
            row += "   random-init control   not run"
        if origin.get(key) is None and key in origin.get("undefined", {}):
            row += f"   ({origin['undefined'][key]})"
        lines.append(row)
    lines.append(
        f"  embedding Cohen's d on PC1 {_fmt(origin.get('embedding_cohen_d_pc0'))}; "
        f"L0/embed norm ratio {_fmt(origin.get('norm_ratio_l0_over_embed'))}"
    )
    classes = origin["token_classes"]
    for lang in (lx, ly):
        nonzero = {k: v for k, v in classes[lang].items() if v}
        lines.append(f"  tokens {lang}: " + ", ".join(f"{k} {v}" for k, v in nonzero.items()))
    shared = origin["shared_tokens"]
    lines.append(
        f"  shared tokens: {shared['total']} in {shared['pairs_with_shared']}/{shared['n_pairs']} "
        "pairs (" + ", ".join(f"{k} {v}" for k, v in shared["by_class"].items() if v) + ")"
    )
    lines.append("  last tokens: " + "; ".join(
        f"{r[lx]!r}/{r[ly]!r} x{r['count']}{' (identical)' if r['identical'] else ''}"
        for r in origin["last_token_table"][:5]
    ))  # fmt: skip
    lines.append("  site     mean  shared  nonshd    last  last≠  strat")
    for rec in origin["decomposition"]:
        lines.append(
            f"  {rec['site']:<6}"
            + "".join(
                f" {_fmt(rec.get(k)):>7}"
                for k in (
                    "z_mean_full",
                    "z_mean_shared",
                    "z_mean_nonshared",
                    "z_last",
                    "z_last_nonidentical",
                    "z_stratified",
                )
            )
        )
    return lines
