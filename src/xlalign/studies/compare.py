"""Models side by side on one corpus: curves on relative depth, model-to-model similarity, findings.

``compare([run_a, run_b, ...])`` takes run folders (``xlalign extract``) or study folders
(``xlalign run``: the run itself, its ``alignment.json`` and the random-weights control in
``control-random-init/``) and returns a :class:`CompareResult` whose fields are the keys of
``compare.json``:

- ``corpus``: what was compared. The runs must share the corpus: equal corpus fingerprints, or
  else rows with the same id and the same texts in every shared language, found from the corpus
  each run saved (``corpus.jsonl``, or its source file when that still has the fingerprint).
  Only those rows are compared, and the note says so; no shared row is an error.
- ``curves``: every metric of each run's layer sweep (and its control's, and the lexical
  baseline where the sweep has one) against relative depth: ``embed`` at 0, block ``i`` of
  ``n`` at ``(i + 1) / n``, so the last block (and ``final``, after the last norm) sits at 1.
- ``similarity``: for every two runs, language and pool, linear CKA (with its permutation null
  where cheap) and mutual k-NN between each site of model A and each site of model B on the
  same prompts (:func:`xlalign.metrics.linear_cka_matrix`, :func:`~xlalign.metrics.mutual_knn_matrix`).
- ``findings``: per run, language pair, pool and metric, the site where the model gains most
  over its control, with the verdict rules of ``findings.json`` (beyond-control,
  matched-by-control, matched-by-lexical, matched-by-null, below-control, no-control; the
  site's ``p_best_site`` from the run's sweep); ``ranking`` orders the runs by that gain.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from xlalign.data.corpus import ParallelCorpus, load_corpus
from xlalign.data.lexical import LEXICAL_SITE
from xlalign.errors import RunError, XlalignError
from xlalign.metrics import linear_cka_matrix, mutual_knn_matrix
from xlalign.metrics.duplicates import IdenticalGroups, identical_groups
from xlalign.store.files import (
    CONTROL_DIR,
    CORPUS_FILE,
    TOKEN_POOL,
    atomic_write_json,
    read_json,
)
from xlalign.store.lock import LOCK_FILE, folder_lock, reading
from xlalign.store.run import Run, check_finite, load_control, load_run
from xlalign.store.sites import EMBED, FINAL
from xlalign.studies.findings import FINDING_METRICS, small_sample_warning, verdict
from xlalign.studies.layers import SweepConfig, layer_sweep

FORMAT = "xlalign.compare"
ALIGNMENT_FILE = "alignment.json"


@dataclass(frozen=True)
class CompareConfig:
    """What ``xlalign compare`` computes (each field is the flag of the same name)."""

    k: int = 10
    """Neighbours of mutual k-NN."""
    n_perms: int = 100
    """Row permutations of the CKA null (0: none); skipped where it is not cheap."""
    seed: int = 0
    """Seed of the CKA null's permutations."""
    pools: tuple[str, ...] | None = None
    """Pools to compare (default: every vector pool all runs have)."""
    langs: tuple[str, ...] | None = None
    """Languages to compare (default: every language all runs have)."""
    sweep: SweepConfig | None = None
    """Sweep settings for runs without ``alignment.json`` (default: those of a run that has one)."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise XlalignError(f"--k must be at least 1, got {self.k}")
        if self.n_perms < 0:
            raise XlalignError(f"--n-perms must be >= 0, got {self.n_perms}")
        if self.seed < 0:
            raise XlalignError(f"--seed must be 0 or more, got {self.seed}")


@dataclass
class CompareResult:
    """The comparison: the same fields as ``compare.json`` (``paths``: the files written)."""

    format: str
    headline: str
    summary: list[str]
    warnings: list[str]
    runs: list[dict[str, Any]]
    corpus: dict[str, Any]
    curves: list[dict[str, Any]]
    similarity: list[dict[str, Any]]
    findings: list[dict[str, Any]]
    ranking: list[dict[str, Any]]
    settings: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (every field but ``paths``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "paths"}


# ---------------------------------------------------------------------------------------------
# depth


def relative_depth(site: str, n_layers: int) -> float | None:
    """``embed`` -> 0, ``L{i}`` -> ``(i + 1) / n_layers``, ``final`` -> 1; other sites None."""
    if site == EMBED:
        return 0.0
    if site == FINAL:
        return 1.0
    m = re.fullmatch(r"L(\d+)", site)
    if m is None or n_layers < 1:
        return None
    return (int(m.group(1)) + 1) / n_layers


# ---------------------------------------------------------------------------------------------
# opening the runs


@dataclass
class _Model:
    label: str
    given: str
    run: Run
    control: Run | None
    alignment: dict[str, Any] | None = None
    control_alignment: dict[str, Any] | None = None
    sweep_source: str = ""
    rows: np.ndarray | None = None
    #: (lang, site, pool) -> identical vectors on the shared rows (:func:`_count_identical`)
    identical: dict[tuple[str, str, str], IdenticalGroups] = field(default_factory=dict)


class _RowView(Run):
    """A run restricted to some rows (the ids shared with the other runs), in the given order."""

    def __init__(self, run: Run, rows: np.ndarray) -> None:
        manifest = dict(run.manifest)
        manifest["ids"] = [run.ids[i] for i in rows]
        manifest["n_rows"] = len(rows)
        super().__init__(run.path, manifest)
        self._base = run
        self._rows = rows

    @property
    def meta(self) -> dict[str, list[Any]]:
        return {k: [v[i] for i in self._rows] for k, v in self._base.meta.items()}

    def array(self, lang: str, site: str, pool: str, *, mmap: bool = True) -> np.ndarray:
        return np.asarray(self._base.array(lang, site, pool))[self._rows]

    def token_ids(self, lang: str) -> list[np.ndarray]:
        ids = self._base.token_ids(lang)
        return [ids[i] for i in self._rows]

    def special_tokens_mask(self, lang: str) -> list[np.ndarray]:
        masks = self._base.special_tokens_mask(lang)
        return [masks[i] for i in self._rows]


def _labels(
    given: Sequence[str], labels: Sequence[str] | Mapping[str, str] | None, runs: list[Run]
) -> list[str]:
    """One unique label per run: the user's, else the model's short name."""
    out: list[str | None] = [None] * len(given)
    if isinstance(labels, Mapping):
        for key, name in labels.items():
            i = _label_index(str(key), given)
            if out[i] is not None:  # the run's letter and its path, both labelled
                raise XlalignError(
                    f"--label: run {given[i]} labelled twice ('{out[i]}' and '{name}'): give "
                    "one per run"
                )
            out[i] = str(name)
    elif labels is not None:
        if len(labels) != len(given):
            raise XlalignError(
                f"labels: {len(labels)} given for {len(given)} runs; give one per run"
            )
        out = [str(x) for x in labels]
    final: list[str] = []
    for i, run in enumerate(runs):
        name = out[i] or Path(str(run.manifest.get("model") or run.path)).name or str(run.path)
        if out[i] is None and run.manifest.get("random_init_seed") is not None:
            name += " (random-init)"
        base, k = name, 2
        while name in final:  # the same run twice, or two runs of one model
            name, k = f"{base} #{k}", k + 1
        final.append(name)
    return final


def _label_index(key: str, given: Sequence[str]) -> int:
    for i, g in enumerate(given):
        if key == g or Path(key).resolve() == Path(g).resolve():
            return i
    if len(key) == 1 and "A" <= key.upper() <= "Z" and ord(key.upper()) - 65 < len(given):
        return ord(key.upper()) - 65
    raise XlalignError(
        f"--label {key}=...: '{key}' is not one of the runs ({', '.join(given)}) nor a run "
        f"letter (A..{chr(64 + len(given))})"
    )


def parse_labels(items: Sequence[str]) -> dict[str, str]:
    """``["A=Qwen 0.5B", "runs/g=Gemma"]`` -> ``{"A": "Qwen 0.5B", "runs/g": "Gemma"}``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, name = item.partition("=")
        if not sep or not key.strip() or not name.strip():
            raise XlalignError(
                f"--label '{item}': write RUN=NAME, with RUN a run as given or its letter (A, B...)"
            )
        if key.strip() in out:
            raise XlalignError(
                f"--label for '{key.strip()}' given twice ('{out[key.strip()]}' and "
                f"'{name.strip()}'): give one per run"
            )
        out[key.strip()] = name.strip()
    return out


# ---------------------------------------------------------------------------------------------
# the shared corpus


def _saved_corpus(run: Run) -> ParallelCorpus | None:
    """The corpus ``run`` was made from, when a copy with its fingerprint can be found."""
    want = run.manifest.get("corpus_fingerprint")
    candidates = [run.path / CORPUS_FILE]
    source = run.manifest.get("corpus_source")
    if source and not str(source).startswith("<"):
        candidates.append(Path(str(source)))
    for path in candidates:
        if not path.exists():
            continue
        try:
            corpus = load_corpus(path, list(run.languages))
        except XlalignError:
            continue
        if want is None or corpus.fingerprint() == want or path.name == CORPUS_FILE:
            return corpus
    return None


def shared_rows(models: Sequence[_Model], langs: Sequence[str]) -> dict[str, Any]:
    """Find the rows every run has (same id, same texts); sets each model's ``rows``.

    Returns the ``corpus`` section of ``compare.json``.
    """
    first = models[0]
    prints = {m.label: m.run.manifest.get("corpus_fingerprint") for m in models}
    n_ids = {m.label: m.run.n_rows for m in models}
    same = len(set(prints.values())) == 1 and None not in prints.values()
    same = same and all(m.run.ids == first.run.ids for m in models)
    if same:
        for m in models:
            m.rows = np.arange(m.run.n_rows)
        return {
            "shared": "all",
            "n_rows": first.run.n_rows,
            "n_rows_per_run": n_ids,
            "ids": list(first.run.ids),
            "fingerprints": prints,
            "languages": list(langs),
            "note": None,
        }
    corpora: dict[str, ParallelCorpus] = {}
    for m in models:
        c = _saved_corpus(m.run)
        if c is None:
            every = " and ".join(o.given for o in models)  # each named once, as given
            raise RunError(
                f"runs {every} were made from different corpora (corpus "
                f"fingerprints differ) and {m.given} keeps no copy of its corpus ({CORPUS_FILE}) "
                "to find the rows they share; compare runs made from one corpus"
            )
        corpora[m.label] = c
    index = {label: {i: k for k, i in enumerate(c.ids)} for label, c in corpora.items()}
    base = corpora[first.label]
    common: list[str] = []
    differ: list[str] = []
    for row_id in base.ids:
        if not all(row_id in index[label] for label in corpora):
            continue
        texts = [
            tuple(c.text(lang)[index[label][row_id]] for lang in langs)
            for label, c in corpora.items()
        ]
        if all(t == texts[0] for t in texts):
            common.append(row_id)
        else:
            differ.append(row_id)
    names = ", ".join(m.given for m in models)
    if not common:
        detail = (
            f"{len(differ)} ids are shared but their texts differ (e.g. '{differ[0]}')"
            if differ
            else "no id is shared"
        )
        raise RunError(
            f"runs {names} were made from different corpora: {detail}; compare runs made from "
            "one corpus"
        )
    if len(common) < 3:
        raise RunError(
            f"runs {names} share only {len(common)} rows (same id and texts); the metrics need "
            "at least 3"
        )
    for m in models:
        pos = {row_id: k for k, row_id in enumerate(m.run.ids)}
        m.rows = np.array([pos[i] for i in common], dtype=np.int64)
    counts = ", ".join(f"{n} in {label}" for label, n in n_ids.items())
    note = f"the runs share {len(common)} rows (same id and texts), of {counts}; only those are compared"
    if differ:
        note += f"; {len(differ)} shared ids have other texts and are left out (e.g. '{differ[0]}')"
    return {
        "shared": "intersection",
        "n_rows": len(common),
        "n_rows_per_run": n_ids,
        "ids": common,
        "fingerprints": prints,
        "languages": list(langs),
        "ids_with_other_texts": differ,
        "note": note,
    }


# ---------------------------------------------------------------------------------------------
# sweeps


def _stored_alignment(path: Path) -> dict[str, Any] | None:
    p = path / ALIGNMENT_FILE
    if not p.exists():
        return None
    try:
        doc = read_json(p)
    except ValueError as e:
        raise RunError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("records"), list):
        raise RunError(f"{p}: not an alignment.json (no 'records' list)")
    return doc


def _sweep_config(stored: Sequence[dict[str, Any] | None], cfg: CompareConfig) -> SweepConfig:
    if cfg.sweep is not None:
        return cfg.sweep
    doc = next((d for d in stored if d), None)
    if doc is None:
        return SweepConfig()
    base = SweepConfig()

    def get(key: str) -> Any:
        v = doc.get(key)
        return getattr(base, key) if v is None else v

    return SweepConfig(
        metrics=tuple(get("metrics")), null=str(get("null")), n_perms=int(get("n_perms")),
        seed=int(get("seed")), stratify=doc.get("stratify"), center=bool(get("center")),
        n_boot=int(get("n_boot")), ci_level=float(get("ci_level")),
        standardize=bool(get("standardize")), compat=str(get("compat")),
        null_perms=int(doc.get("null_perms") or 0),
    )  # fmt: skip


#: The settings of a sweep that change its values: stored sweeps are used side by side only
#: when these agree (a centred control beside an uncentred model would read as a verdict).
VALUE_SETTINGS = ("null", "seed", "stratify", "center", "standardize", "compat", "n_boot",
                  "ci_level", "null_perms", "ci_method")  # fmt: skip


def settings_differ(doc: Mapping[str, Any], cfg: SweepConfig) -> list[str]:
    """How a stored sweep's value settings differ from ``cfg``'s (``center: True, not False``);
    a setting the document predates is taken at its default."""
    base = SweepConfig()
    out = []
    for key in VALUE_SETTINGS:
        stored = doc.get(key)
        if key == "ci_method":  # intervals made before the jackknife: made again
            if cfg.n_boot and stored is None and doc.get("n_boot"):
                out.append("ci_method: pair bootstrap, not jackknife/Wilson")
            continue
        if key == "null_perms" and stored is None:
            stored = 0  # sweeps made before the permutation nulls had none
        stored = getattr(base, key) if stored is None and key != "stratify" else stored
        if stored != getattr(cfg, key):
            out.append(f"{key}: {stored!r}, not {getattr(cfg, key)!r}")
    if cfg.null == "monte-carlo" and doc.get("n_perms") not in (None, cfg.n_perms):
        out.append(f"n_perms: {doc.get('n_perms')!r}, not {cfg.n_perms!r}")
    return out


def _load_sweeps(
    models: Sequence[_Model],
    cfg: CompareConfig,
    partial: bool,
    progress: bool,
    say: Callable[[str], None],
) -> SweepConfig:
    """Each model's and control's sweep: the stored ``alignment.json``, or computed now."""
    stored: list[dict[str, Any] | None] = []
    for m in models:
        m.alignment = _stored_alignment(m.run.path)
        if m.control is not None:
            m.control_alignment = _stored_alignment(m.control.path)
        stored += [m.alignment, m.control_alignment]
        if partial:  # stored sweeps cover other rows: keep their settings, not their values
            m.alignment = m.control_alignment = None
    sweep_cfg = _sweep_config(stored, cfg)
    resweep: set[str] = set()
    for m in models:  # a stored sweep of other settings is swept again, and said
        for which in ("model", "control"):
            doc = m.alignment if which == "model" else m.control_alignment
            differ = [] if doc is None else settings_differ(doc, sweep_cfg)
            owner = m.run if which == "model" else m.control
            recorded = None if doc is None else doc.get("run_fingerprint")
            if owner is not None and recorded not in (None, owner.fingerprint):
                # a sweep of arrays extracted since (or of another run): never beside these
                differ.append(f"run fingerprint: {recorded}, not {owner.fingerprint}")
            if differ:
                path = (m.run if which == "model" else m.control).path / ALIGNMENT_FILE  # type: ignore[union-attr]
                say(
                    f"{path} was swept with other settings ({'; '.join(differ)}): sweeping "
                    f"{m.label} ({which}) again, so every sweep compared has the same settings"
                )
                if which == "model":
                    m.alignment = None
                    resweep.add(m.label)
                else:
                    m.control_alignment = None
    for m in models:
        assert m.rows is not None
        for which, run in (("model", m.run), ("control", m.control)):
            if run is None:
                continue
            have = m.alignment if which == "model" else m.control_alignment
            if have is not None:
                continue
            view = _RowView(run, m.rows) if partial else run
            why = "on the shared rows" if partial else f"{run.path} has no {ALIGNMENT_FILE}"
            say(f"sweeping {m.label} ({which}): {why}")
            doc = layer_sweep(view, sweep_cfg, progress=progress)
            if which == "model":
                m.alignment = doc
            else:
                m.control_alignment = doc
        m.sweep_source = (
            "computed on the shared rows" if partial else
            "computed again (its alignment.json has other settings)" if m.label in resweep else
            f"{ALIGNMENT_FILE} of the run" if (m.run.path / ALIGNMENT_FILE).exists() else
            "computed (the run has no alignment.json)"
        )  # fmt: skip
    return sweep_cfg


def _curves(m: _Model) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    n_layers = m.run.n_layers
    for kind, doc in (("model", m.alignment), ("control", m.control_alignment)):
        for r in (doc or {}).get("records") or []:
            lexical = r.get("site") == LEXICAL_SITE
            if lexical and kind == "control":
                continue  # model-free: the model's sweep already holds it
            out.append(
                {
                    "label": m.label,
                    "kind": "lexical" if lexical else kind,
                    "pair": [r.get("x"), r.get("y")],
                    "pool": r.get("pool"),
                    "metric": r.get("metric"),
                    "site": r.get("site"),
                    "relative_depth": None
                    if lexical
                    else relative_depth(str(r.get("site")), n_layers),
                    "value": r.get("value"),
                    "ci_low": r.get("ci_low"),
                    "ci_high": r.get("ci_high"),
                    "undefined_reason": r.get("undefined_reason"),
                }
            )
    return out


# ---------------------------------------------------------------------------------------------
# model-to-model similarity


def _fin(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _similarity(
    a: _Model, b: _Model, langs: Sequence[str], pools: Sequence[str], cfg: CompareConfig, bar: Any
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """``(records, null notes, artifact notes)`` of every site pair of ``a`` and ``b``."""
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    artifacts: list[str] = []
    assert a.rows is not None and b.rows is not None
    sa, sb = list(a.run.sites), list(b.run.sites)
    for lang in langs:
        for pool in pools:
            xs = [np.asarray(a.run.array(lang, s, pool))[a.rows] for s in sa]
            ys = [np.asarray(b.run.array(lang, s, pool))[b.rows] for s in sb]
            base = {"a": a.label, "b": b.label, "lang": lang, "pool": pool}
            ga = [a.identical[(lang, s, pool)] for s in sa]
            gb = [b.identical[(lang, s, pool)] for s in sb]
            for m, sites, groups in ((a, sa, ga), (b, sb, gb)):
                few = [f"{s} ({g.largest_group} share one of {g.distinct} distinct)"
                       for s, g in zip(sites, groups, strict=True) if g.identical]  # fmt: skip
                if few:
                    artifacts.append(
                        f"{m.label}, {lang}, {pool} pool: of the {len(a.rows)} vectors, many "
                        f"are identical at {', '.join(few)}: prompts share the token pooled "
                        "there, so similarity with those sites mostly measures which prompts "
                        "share it (two models' vectors of the same two tokens have CKA 1); "
                        "those cells carry artifact 'identical-vectors'"
                    )
            ta, tb = token_label_cka(a, lang, xs), token_label_cka(b, lang, ys)
            cka = linear_cka_matrix(xs, ys, n_perms=cfg.n_perms, seed=cfg.seed)
            if cka.null_reason and cfg.n_perms > 0:
                notes.append(f"{a.label} vs {b.label}, {lang}, {pool}: {cka.null_reason}")
            try:
                knn = mutual_knn_matrix(xs, ys, k=cfg.k)
                knn_why = None
            except XlalignError as e:
                knn, knn_why = None, str(e)
            for i, site_a in enumerate(sa):
                for j, site_b in enumerate(sb):
                    where = {
                        "site_a": site_a,
                        "site_b": site_b,
                        "relative_depth_a": relative_depth(site_a, a.run.n_layers),
                        "relative_depth_b": relative_depth(site_b, b.run.n_layers),
                        "n": cka.n,
                        "distinct_a": ga[i].distinct,
                        "distinct_b": gb[j].distinct,
                        "artifact": (
                            "identical-vectors" if ga[i].identical or gb[j].identical else None
                        ),
                    }
                    rec = {**base, "metric": "cka", **where, "value": _fin(cka.value[i, j])}
                    rec["undefined_reason"] = cka.reasons.get((i, j))
                    rec["token_label_a"], rec["token_label_b"] = ta[i], tb[j]
                    rec["above_token_label"] = _above(_fin(cka.value[i, j]), ta[i], tb[j])
                    if cka.p_value is not None:
                        assert cka.null_mean is not None and cka.null_std is not None
                        rec.update(
                            null_mean=_fin(cka.null_mean[i, j]),
                            null_std=_fin(cka.null_std[i, j]),
                            p_value=_fin(cka.p_value[i, j]),
                            n_perms=cka.n_perms,
                        )
                    records.append(rec)
                    value = None if knn is None else _fin(knn.value[i, j])
                    records.append(
                        {**base, "metric": "mutual_knn", **where, "value": value, "k": cfg.k,
                         "undefined_reason": knn_why}
                    )  # fmt: skip
            bar.update(1)
    return records, notes, artifacts


def last_token_labels(m: _Model, lang: str) -> np.ndarray | None:
    """Each shared row's last non-special token id in ``lang`` (the token pool ``last``
    reads), ``(n_shared,)`` int64; None for a run without token files."""
    assert m.rows is not None
    try:
        ids, special = m.run.token_ids(lang), m.run.special_tokens_mask(lang)
    except (OSError, XlalignError):
        return None
    out = []
    for t, sp in zip(ids, special, strict=True):
        kept = np.asarray(t)[~np.asarray(sp, dtype=bool)]
        out.append(int(kept[-1]) if kept.size else -1)
    return np.asarray(out, dtype=np.int64)[m.rows]


def token_label_cka(m: _Model, lang: str, xs: Sequence[np.ndarray]) -> list[float | None]:
    """The token-label baseline of each site: linear CKA of the site's vectors with the one-hot
    of each prompt's last token (:func:`last_token_labels`). Two models whose vectors both
    mostly say which token ends the prompt reach a high CKA with each other for that alone (on
    the study's problems, Qwen's and Gemma's reach 0.997 and 0.995 with it); a cross-model
    cell means more only where it lies above both models' baselines."""
    labels = last_token_labels(m, lang)
    if labels is None:
        return [None] * len(xs)
    _, codes = np.unique(labels, return_inverse=True)
    return [label_cka(x, codes) for x in xs]


def label_cka(x: np.ndarray, codes: np.ndarray) -> float | None:
    """Biased linear CKA of ``x (n, d)`` with the one-hot of ``codes (n,)``, without building
    the one-hot: with ``x`` centred, ``Xc^T Y`` holds each class's sum of rows, and the one-hot
    Gram's centred Frobenius norm follows from the class counts. None when it is undefined
    (one class, or constant rows)."""
    xc = np.asarray(x, dtype=np.float64)
    xc = xc - xc.mean(axis=0)
    n = xc.shape[0]
    k = int(codes.max()) + 1
    sums = np.zeros((k, xc.shape[1]))
    np.add.at(sums, codes, xc)
    counts = np.bincount(codes, minlength=k).astype(np.float64)
    cross = float((sums * sums).sum())
    xx = float(np.linalg.norm(xc.T @ xc))
    c2 = float((counts**2).sum())
    yy2 = c2 - 2.0 * float((counts**3).sum()) / n + c2 * c2 / n**2
    if xx <= 0 or yy2 <= 0:
        return None
    return _fin(cross / (xx * np.sqrt(yy2)))


def _above(value: float | None, *baselines: float | None) -> bool | None:
    """Whether a cross-model CKA lies above both models' token-label baselines (None when
    it or a baseline is undefined)."""
    if value is None or any(b is None for b in baselines):
        return None
    return value > max(b for b in baselines if b is not None)


# ---------------------------------------------------------------------------------------------
# findings


def _point(r: Mapping[str, Any] | None, *, p_best: bool = False) -> dict[str, Any] | None:
    """A record's value and interval; with ``p_best`` also its ``p_best_site`` (the share of
    scrambled pairings whose best site reaches it: valid whichever rule picked the site)."""
    if r is None or r.get("value") is None:
        return None
    out = {"value": r["value"], "ci_low": r.get("ci_low"), "ci_high": r.get("ci_high")}
    if p_best and r.get("p_best_site") is not None:
        out["p_best_site"] = r["p_best_site"]
    return out


def _findings(models: Sequence[_Model]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    findings: list[dict[str, Any]] = []
    for m in models:
        recs = (m.alignment or {}).get("records") or []
        ctrl = {
            (tuple(r["pair"]), r["pool"], r["metric"], r["site"]): r
            for r in _curves(m)
            if r["kind"] == "control"
        }
        by_key: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
        lexical: dict[tuple[Any, ...], Mapping[str, Any]] = {}
        for r in recs:
            if r.get("metric") not in FINDING_METRICS or r.get("value") is None:
                continue
            key = ((r["x"], r["y"]), r["pool"], r["metric"])
            if r.get("site") == LEXICAL_SITE:
                lexical[key] = r
            else:
                by_key.setdefault(key, []).append(r)
        for key, rows in by_key.items():
            pair, pool, metric = key
            # sites of identical vectors measure shared tokens: chosen only if all are
            clean = [r for r in rows if not _identical_at(m, pair, r["site"], pool)] or rows
            best = max(clean, key=lambda r: float(r["value"]))
            gains = [(g, r) for r in clean if (g := _gain(r, ctrl, key)) is not None]
            at = max(gains, key=lambda gr: gr[0])[1] if gains else best
            c = ctrl.get((pair, pool, metric, at["site"]))
            model_pt, control_pt = _point(at, p_best=True), _point(c)
            lexical_pt = _point(lexical.get(key))
            assert model_pt is not None
            findings.append(
                {
                    "label": m.label,
                    "pair": list(pair),
                    "pool": pool,
                    "metric": metric,
                    "site": at["site"],
                    "relative_depth": relative_depth(str(at["site"]), m.run.n_layers),
                    "model": model_pt,
                    "control": control_pt,
                    "lexical": lexical_pt,
                    "gain_over_control": _gain(at, ctrl, key),
                    "best_site": best["site"],
                    "best_relative_depth": relative_depth(str(best["site"]), m.run.n_layers),
                    "best_value": best["value"],
                    "verdict": verdict(model_pt, control_pt, lexical_pt),
                    "artifact": (
                        "identical-vectors" if _identical_at(m, pair, at["site"], pool) else None
                    ),
                }
            )
    return findings, _ranking(findings)


def _identical_at(m: _Model, pair: tuple[str, ...], site: str, pool: str) -> bool:
    """Whether either language's vectors at ``site`` are largely identical."""
    return any(
        g.identical for lang in pair if (g := m.identical.get((lang, site, pool))) is not None
    )


def _count_identical(m: _Model, langs: Sequence[str], pools: Sequence[str]) -> None:
    """Fill ``m.identical`` from the arrays on the shared rows (not from the stored sweep, which
    may predate the count)."""
    assert m.rows is not None
    for lang in langs:
        for pool in pools:
            for site in m.run.sites:
                m.identical[(lang, site, pool)] = identical_groups(
                    np.asarray(m.run.array(lang, site, pool))[m.rows]
                )


def _gain(
    r: Mapping[str, Any], ctrl: Mapping[tuple[Any, ...], Mapping[str, Any]], key: tuple[Any, ...]
) -> float | None:
    """The model's value minus its control's at the record's site (None without a control)."""
    c = ctrl.get((*key, r["site"]))
    if c is None or c.get("value") is None:
        return None
    return float(r["value"]) - float(c["value"])


def _ranking(findings: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per pair, pool and metric: the runs ordered by how far they align beyond their control."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for f in findings:
        groups.setdefault((tuple(f["pair"]), f["pool"], f["metric"]), []).append(f)
    out = []
    for (pair, pool, metric), fs in groups.items():

        def beyond(f: Mapping[str, Any]) -> bool:
            # a site of identical vectors measures shared tokens: it cannot make a leader
            return f["verdict"] == "beyond-control" and not f.get("artifact")

        def key(f: Mapping[str, Any]) -> tuple[int, float]:
            g = f["gain_over_control"]
            return (int(beyond(f)), -math.inf if g is None else g)

        ordered = sorted(fs, key=key, reverse=True)
        top = ordered[0]
        leader = top["label"] if beyond(top) else None
        out.append(
            {
                "pair": list(pair),
                "pool": pool,
                "metric": metric,
                "order": [f["label"] for f in ordered],
                "leader": leader,
                "statement": _statement(pair, pool, metric, ordered, leader),
            }
        )
    return out


def _fmt(v: Any) -> str:
    return "undefined" if v is None else f"{float(v):.3g}"


def _statement(
    pair: tuple[str, str],
    pool: str,
    metric: str,
    ordered: Sequence[Mapping[str, Any]],
    leader: str | None,
) -> str:
    parts = []
    for f in ordered:
        ctl = f["control"]
        at = f"{f['site']}, depth {_fmt(f['relative_depth'])}"
        if ctl is None:
            parts.append(f"{f['label']} {metric} {_fmt(f['model']['value'])} at {at} (no control)")
        else:
            artifact = ", identical vectors: shared tokens" if f.get("artifact") else ""
            parts.append(
                f"{f['label']} {metric} {_fmt(f['model']['value'])} vs control "
                f"{_fmt(ctl['value'])} at {at} ({f['verdict']}{artifact})"
            )
    head = (
        f"{leader} aligns {pair[0]}/{pair[1]} most beyond its control"
        if leader
        else f"no run aligns {pair[0]}/{pair[1]} beyond its control"
    )
    return f"{head} ({pool} pool, {metric}): " + "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# the whole comparison


def compare(
    runs: Sequence[str | Path],
    labels: Sequence[str] | Mapping[str, str] | None = None,
    output: str | Path | None = None,
    *,
    config: CompareConfig | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> CompareResult:
    """Compare two or more runs on their shared corpus; with ``output``, write the report.

    ``runs``: run or study folders. ``labels``: one name per run, or ``{run or letter: name}``
    (``{"A": "Qwen 0.5B"}``). Writes ``compare.json``, ``report.html`` and ``report.md`` (and
    figures) into ``output`` when given.
    """

    cfg = config or CompareConfig()
    given = [str(r) for r in runs]
    if len(given) < 2:
        raise XlalignError(f"compare needs at least two runs, got {len(given)}")
    if output is None:
        with reading():  # every run compared stays read-locked until the end
            return _compare(given, labels, None, cfg, progress, say)
    _check_output(Path(output))
    with (
        reading(),
        folder_lock(Path(output), "xlalign compare"),
    ):  # one comparison writes a folder at once
        return _compare(given, labels, Path(output), cfg, progress, say)


def _compare(
    given: list[str],
    labels: Sequence[str] | Mapping[str, str] | None,
    output: Path | None,
    cfg: CompareConfig,
    progress: bool,
    say: Callable[[str], None],
) -> CompareResult:
    """:func:`compare` once its output folder (if any) is checked and locked."""
    from tqdm.auto import tqdm

    opened = [load_run(p) for p in given]
    names = _labels(given, labels, opened)
    models = [
        _Model(label=lab, given=g, run=r, control=load_control(r))
        for lab, g, r in zip(names, given, opened, strict=True)
    ]
    langs = _common("language", cfg.langs, [m.run.languages for m in models], given)
    if len(langs) < 2:
        raise RunError(
            f"the runs share {len(langs)} language(s) ({', '.join(langs) or 'none'}); a "
            "comparison needs two"
        )
    orders = [[lang for lang in m.run.languages if lang in langs] for m in models]
    if any(order != orders[0] for order in orders[1:]):
        listing = "; ".join(f"{m.given}: {','.join(m.run.languages)}" for m in models)
        raise RunError(
            f"the runs order their languages differently ({listing}), so their language pairs "
            "do not match (x/y, P@1 x->y); extract them with the same --langs order"
        )
    vector_pools = [tuple(p for p in m.run.pools if p != TOKEN_POOL) for m in models]
    pools = _common("pool", cfg.pools, vector_pools, given)
    if not pools:
        raise RunError(
            "the runs share no pooled vectors (pools); extract them with one pool in common"
        )
    corpus = shared_rows(models, langs)
    for m in models:  # a non-finite row is named with its run and site, before any sweep
        for run in (m.run, m.control):
            for lang, site, pool in itertools.product(
                langs, () if run is None else run.sites, pools
            ):
                if run is not None:
                    check_finite(run, lang, site, pool)
    partial = corpus["shared"] == "intersection"
    if partial:
        say(f"note: {corpus['note']}")
    sweep_cfg = _load_sweeps(models, cfg, partial, progress, say)
    warnings: list[str] = []
    small = small_sample_warning(corpus["n_rows"], "shared pairs")
    if small is not None:
        warnings.append(small)
    for m in models:
        if m.control is None:
            warnings.append(
                f"{m.label} has no random-weights control ({m.given}/{CONTROL_DIR}): its findings "
                "say no-control (run `xlalign run ... --control random-init`)"
            )
    nulls = {(d or {}).get("null") for m in models for d in (m.alignment,)}
    if len(nulls) > 1:
        named = sorted(str(n) if n else "not recorded" for n in nulls)  # a fixed order
        warnings.append(f"the runs' sweeps use different nulls ({', '.join(named)})")
    curves = [c for m in models for c in _curves(m)]
    pairs = [(a, b) for i, a in enumerate(models) for b in models[i + 1 :]]
    total = len(pairs) * len(langs) * len(pools)
    bar = tqdm(total=total, desc="compare", unit="matrix", disable=not progress)
    similarity: list[dict[str, Any]] = []
    for m in models:
        _count_identical(m, langs, pools)
    for a, b in pairs:
        recs, notes, artifacts = _similarity(a, b, langs, pools, cfg, bar)
        similarity += recs
        warnings += notes[:1]  # the same reason repeats for every language and pool
        warnings += [w for w in artifacts if w not in warnings]
    bar.close()
    findings, ranking = _findings(models)
    headline, summary = _summary(models, corpus, ranking)
    result = CompareResult(
        format=FORMAT,
        headline=headline,
        summary=summary,
        warnings=warnings,
        runs=[_run_entry(m) for m in models],
        corpus=corpus,
        curves=curves,
        similarity=similarity,
        findings=findings,
        ranking=ranking,
        settings={
            "k": cfg.k,
            "n_perms": cfg.n_perms,
            "seed": cfg.seed,
            "languages": list(langs),
            "pools": list(pools),
            "sweep": {
                "metrics": list(sweep_cfg.metrics),
                "null": sweep_cfg.null,
                "n_boot": sweep_cfg.n_boot,
                "seed": sweep_cfg.seed,
            },
            "relative_depth": "embed 0, block i of n at (i + 1) / n, final 1",
        },
    )
    if output is not None:
        result.paths = write_compare(result, Path(output))
    return result


def _common(
    kind: str, asked: Sequence[str] | None, have: Sequence[Sequence[str]], given: Sequence[str]
) -> list[str]:
    shared = [x for x in have[0] if all(x in h for h in have[1:])]
    if asked is None:
        return shared
    for x in asked:
        for g, h in zip(given, have, strict=True):
            if x not in h:
                raise RunError(f"{kind} '{x}' not in run {g}: it has {', '.join(h)}")
    return list(asked)


def _run_entry(m: _Model) -> dict[str, Any]:
    man = m.run.manifest
    return {
        "label": m.label,
        "path": str(m.run.path),
        "model": man.get("model"),
        "architecture": man.get("architecture"),
        "n_layers": m.run.n_layers,
        "d_model": m.run.d_model,
        "sites": list(m.run.sites),
        "relative_depths": {s: relative_depth(s, m.run.n_layers) for s in m.run.sites},
        "control": None if m.control is None else str(m.control.path),
        "sweep": m.sweep_source,
    }


def _summary(
    models: Sequence[_Model], corpus: Mapping[str, Any], ranking: Sequence[Mapping[str, Any]]
) -> tuple[str, list[str]]:
    names = ", ".join(
        f"{m.label} ({m.run.manifest.get('architecture')}, {m.run.n_layers} layers)" for m in models
    )
    lines = [f"{len(models)} runs: {names}; {corpus['n_rows']} shared pairs"]
    if corpus.get("note"):
        lines.append(f"corpus: {corpus['note']}")
    z_first = sorted(ranking, key=lambda r: (FINDING_METRICS.index(r["metric"]), r["pool"]))
    statements = [r["statement"] for r in z_first if r["metric"] == "z"] or [
        r["statement"] for r in z_first[:2]
    ]
    if not statements:
        return "no finding: the sweeps hold none of z, P@1 or CKA with a value", lines
    return statements[0], lines + statements[1:]


def _check_output(out: Path) -> None:
    """Refuse an output that is a file, or a non-empty folder holding no earlier comparison."""
    if out.exists() and not out.is_dir():
        raise XlalignError(f"output '{out}' exists and is not a folder")
    entries = [e for e in out.iterdir() if e.name != LOCK_FILE] if out.is_dir() else []
    if entries and not (out / "compare.json").exists():
        raise XlalignError(
            f"output folder '{out}' is not empty and holds no comparison (no compare.json); "
            "choose a new or empty folder"
        )


def write_compare(result: CompareResult, out: Path) -> dict[str, Path]:
    """Write ``compare.json`` and the report into ``out``; returns the paths."""
    from xlalign.report.compare import build_compare_report

    _check_output(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = result.to_dict()
    atomic_write_json(out / "compare.json", doc)
    paths = {"json": out / "compare.json"}
    paths.update(build_compare_report(out, doc))
    return paths
