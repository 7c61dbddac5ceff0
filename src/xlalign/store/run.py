"""Reading a run folder: :func:`load_run` checks it is complete and of a format this version
reads, and :class:`Run` maps its arrays (``run[lang, site, pool]``); runs written before pool
semantics 2 are read with their old meaning named (:func:`legacy_pools`); :func:`export_npz`
writes the study's npz layout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xlalign.errors import RunError
from xlalign.store.files import (
    CONTROL_DIR,
    FORMAT_VERSION,
    MANIFEST,
    META,
    TOKEN_POOL,
    TOKENIZER_DIR,
    array_path,
    read_json,
    read_manifest,
    token_paths,
)
from xlalign.store.lock import hold_for_reading
from xlalign.store.pools import POOL_SEMANTICS
from xlalign.store.sites import describe_sites
from xlalign.store.writer import read_progress

# ---------------------------------------------------------------------------------------------
# reading


#: The manifest keys :attr:`Run.fingerprint` digests.
FINGERPRINT_KEYS = ("created", "model", "model_key", "weights_fingerprint", "random_init_seed",
                    "tokenizer_fingerprint", "corpus_fingerprint", "dtype", "device", "languages",
                    "sites", "pools", "ids", "pool_semantics", "compat")  # fmt: skip


@dataclass
class Run:
    """A run folder opened for reading: arrays by ``(lang, site, pool)``.

    ``run.array("zh", "L0", "last")`` and ``run["zh", "L0", "last"]`` give the
    ``(n_rows, d_model)`` float32 array (memory-mapped, read-only), rows in corpus order.
    """

    path: Path
    manifest: dict[str, Any]
    _meta: dict[str, Any] | None = field(default=None, repr=False)
    #: A run written before ``pool_semantics``: how its pools are read (see :func:`load_run`).
    legacy: LegacyPools | None = field(default=None, repr=False)

    # -- what is in the run

    @property
    def fingerprint(self) -> str:
        """A digest of what identifies the run's arrays, from its manifest alone (no array is
        read): when it was created, the weights, tokenizer and corpus fingerprints, dtype,
        device, languages, sites, pools and row ids. Every output derived from the run records
        it, so an output of an earlier extraction (``--overwrite``) is told from one of this."""
        doc = {k: self.manifest.get(k) for k in FINGERPRINT_KEYS}
        text = json.dumps(doc, sort_keys=True, default=str, ensure_ascii=True)
        return "run-sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete", False))

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(self.manifest["languages"])

    @property
    def sites(self) -> tuple[str, ...]:
        """Captured sites, ordered by depth (``embed``, ``L0``, ..., ``final``)."""
        return tuple(self.manifest["sites"])

    @property
    def pools(self) -> tuple[str, ...]:
        """Captured pools, ``tokens`` included when token vectors were kept.

        For a run written before ``pool_semantics`` these are the pools under today's names
        (its stored ``last`` may read as ``eos``, or not at all; see :attr:`pool_note`).
        """
        if self.legacy is not None:
            return self.legacy.pools
        return tuple(self.manifest["pools"])

    @property
    def pool_note(self) -> str | None:
        """For a run written before ``pool_semantics``, how its stored pools are read."""
        return self.legacy.note if self.legacy is not None else None

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self.manifest["ids"])

    @property
    def n_rows(self) -> int:
        return int(self.manifest["n_rows"])

    @property
    def d_model(self) -> int:
        return int(self.manifest["d_model"])

    @property
    def n_layers(self) -> int:
        return int(self.manifest["n_layers"])

    @property
    def meta(self) -> dict[str, list[Any]]:
        """Per-row corpus columns (e.g. ``category``), column -> list in row order."""
        if self._meta is None:
            p = self.path / META
            self._meta = read_json(p) if p.exists() else {}
        return dict(self._meta.get("columns", {}))

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return (
            f"Run({str(self.path)!r}, {self.manifest.get('model')!r}, {state}, "
            f"langs={','.join(self.languages)}, sites={describe_sites(self.sites)}, "
            f"pools={','.join(self.pools)}, n_rows={self.n_rows})"
        )

    # -- arrays

    def _check(self, lang: str, site: str, pool: str | None) -> None:
        if lang not in self.languages:
            raise RunError(f"language '{lang}' not in run: it has {', '.join(self.languages)}")
        if site not in self.sites:
            raise RunError(f"site '{site}' not in run: it has {describe_sites(self.sites)}")
        if pool is not None and pool not in self.pools:
            if self.legacy is not None and pool in self.legacy.refused:
                raise RunError(self.legacy.refused[pool])
            raise RunError(f"pool '{pool}' not in run: it has {', '.join(self.pools)}")

    def array(self, lang: str, site: str, pool: str, *, mmap: bool = True) -> np.ndarray:
        """``(n_rows, d_model)`` float32 vectors of ``lang`` at ``site`` pooled by ``pool``."""
        self._check(lang, site, pool)
        if pool == TOKEN_POOL:
            raise RunError(
                "pool 'tokens' holds one vector per token: use run.token_vectors(lang, site)"
            )
        stored = self.legacy.files.get(pool, pool) if self.legacy is not None else pool
        return np.load(
            array_path(self.path, lang, site, stored),
            mmap_mode="r" if mmap else None,
            allow_pickle=False,
        )

    def __getitem__(self, key: tuple[str, str, str]) -> np.ndarray:
        if not (isinstance(key, tuple) and len(key) == 3):
            raise KeyError(f"index a run with (lang, site, pool), got {key!r}")
        return self.array(*key)

    def keys(self) -> Iterator[tuple[str, str, str]]:
        """Every ``(lang, site, pool)`` with one vector per prompt."""
        for lang in self.languages:
            for site in self.sites:
                for pool in self.pools:
                    if pool != TOKEN_POOL:
                        yield lang, site, pool

    def __iter__(self) -> Iterator[tuple[str, str, str]]:
        return self.keys()

    def __contains__(self, key: object) -> bool:
        return key in set(self.keys())

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())

    def _tokens(self, lang: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if lang not in self.languages:
            raise RunError(f"language '{lang}' not in run: it has {', '.join(self.languages)}")
        ids_p, off_p, spec_p = token_paths(self.path, lang)
        return (
            np.load(ids_p, allow_pickle=False),
            np.load(off_p, allow_pickle=False),
            np.load(spec_p, allow_pickle=False),
        )

    def offsets(self, lang: str) -> np.ndarray:
        """``(n_rows + 1,)`` int64: row ``i``'s tokens are ``[off[i], off[i+1])``."""
        return self._tokens(lang)[1]

    def lengths(self, lang: str) -> np.ndarray:
        """Tokens per prompt, ``(n_rows,)`` int64 (special tokens included)."""
        return np.diff(self.offsets(lang))

    def token_ids(self, lang: str) -> list[np.ndarray]:
        """Each prompt's token ids as the model saw them (int32), in corpus order."""
        ids, offsets, _ = self._tokens(lang)
        return [ids[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]

    def special_tokens_mask(self, lang: str) -> list[np.ndarray]:
        """Per prompt, a bool array marking the tokenizer's special tokens."""
        _, offsets, special = self._tokens(lang)
        return [special[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]

    def token_vectors(self, lang: str, site: str) -> list[np.ndarray]:
        """Per prompt, its tokens' vectors ``(len_i, d_model)`` float32 (pool ``tokens``)."""
        self._check(lang, site, None)
        if TOKEN_POOL not in self.pools:
            raise RunError(
                f"run has no token vectors (pools: {', '.join(self.pools)}); "
                "extract with --pool tokens to keep them"
            )
        flat = np.load(
            array_path(self.path, lang, site, TOKEN_POOL), mmap_mode="r", allow_pickle=False
        )
        offsets = self.offsets(lang)
        return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]

    def tokenizer(self) -> Any:
        """The run's tokenizer: the copy saved in the run, else loaded by the model id."""
        from transformers import AutoTokenizer

        saved = self.path / TOKENIZER_DIR
        if saved.is_dir():
            return AutoTokenizer.from_pretrained(saved)
        return AutoTokenizer.from_pretrained(
            self.manifest["model"], revision=self.manifest.get("revision")
        )


def model_source(manifest: Mapping[str, Any], override: str | None = None) -> str:
    """What to load a run's model from again: ``override`` (a command's ``--model``, for a
    moved copy), else the absolute path recorded at extraction when the model was a local
    folder or file, else the name it was given (a named model or a Hub id).

    Raises:
        RunError: the recorded local model is not there any more (never falls back to the
            relative name, which from another working directory names another model).
    """
    if override is not None:
        return override
    path = manifest.get("model_path")
    if path is None:
        return str(manifest.get("model"))
    if not Path(str(path)).exists():
        raise RunError(
            f"the run's model {path} is not there any more (moved or deleted); pass --model "
            "with its new place (its weights are checked against the run's fingerprint)"
        )
    return str(path)


def weights_label(manifest: Mapping[str, Any]) -> str:
    """`` (random weights, seed 3)`` for a run of random-init weights, ``""`` for trained ones:
    every summary and title of such a run carries it."""
    seed = manifest.get("random_init_seed")
    return "" if seed is None else f" (random weights, seed {seed})"


def load_run(path: str | Path, *, allow_incomplete: bool = False) -> Run:
    """Open the run folder at ``path``.

    An incomplete run (killed, or still running) is an error saying how to resume it, unless
    ``allow_incomplete``.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        what = "does not exist" if not path.exists() else f"has no {MANIFEST}"
        raise RunError(f"run folder '{path}' {what}")
    manifest = read_manifest(manifest_path)  # another tool's folder gets no lock file
    if not allow_incomplete:  # the shared lock (inside a reading scope, until it ends: see
        # xlalign.store.lock), then the manifest again: no writer can change it from here on
        hold_for_reading(path, "it reads as complete only once that writer is done")
        manifest = read_manifest(manifest_path)
    for key in ("format_version", "pool_semantics"):
        if not isinstance(manifest.get(key, 0), int) or isinstance(manifest.get(key), bool):
            raise RunError(f"{manifest_path}: {key} must be an integer, got {manifest[key]!r}")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise RunError(
            f"{manifest_path}: format version {manifest['format_version']} is newer than this "
            f"xlalign reads ({FORMAT_VERSION}); upgrade xlalign"
        )
    run = Run(path, manifest)
    if "pool_semantics" not in manifest:
        run.legacy = legacy_pools(run)
    elif int(manifest["pool_semantics"]) > POOL_SEMANTICS:
        raise RunError(
            f"{manifest_path}: pool_semantics {manifest['pool_semantics']} is newer than this "
            f"xlalign reads ({POOL_SEMANTICS}); upgrade xlalign"
        )
    if not run.complete and not allow_incomplete:
        done = sum(len(v) for v in read_progress(path).values())
        total = sum(int(v) for v in manifest.get("n_batches", {}).values())
        raise RunError(
            f"run '{path}' is incomplete ({done} of {total} batches done): resume it with "
            f"`xlalign extract ... --resume -o {path}` (the same flags as before) or "
            "xlalign.extract(..., resume=True)"
        )
    return run


@dataclass(frozen=True)
class LegacyPools:
    """How a run written before ``pool_semantics`` is read under today's pool names.

    Such runs stored as ``last`` the last real token, special or not. ``pools``: the pools it
    is read as; ``files``: pool name -> stored file name where they differ; ``refused``: pool
    name -> the error given when it is asked for; ``note``: one sentence for people.
    """

    pools: tuple[str, ...]
    files: dict[str, str]
    refused: dict[str, str]
    note: str


def legacy_pools(run: Run) -> LegacyPools:
    """Today's reading of ``run``, written before pool ``last`` meant the last non-special token.

    Its stored ``last`` is the prompt's final token. Where no prompt ends in a special token,
    that is today's ``last``; where every prompt does, it is today's ``eos``, and ``last`` is
    refused; where some do, it is neither and both are refused. Never reinterpreted silently.
    """
    stored = tuple(run.manifest["pools"])
    if "last" not in stored:
        return LegacyPools(stored, {}, {}, "written before pool_semantics; it has no pool 'last'")
    ends = []
    for lang in run.languages:
        _, offsets, special = run._tokens(lang)
        if len(offsets) > 1:
            ends.append(special[offsets[1:] - 1])
    ends_special = np.concatenate(ends) if ends else np.zeros(0, dtype=bool)
    again = (
        f"extract it again with this xlalign (`xlalign extract ... --overwrite -o {run.path}`) "
        "for pool 'last', the last non-special token"
    )
    old = f"run '{run.path}' was written by an older xlalign, whose pool 'last' was the final token"
    if not ends_special.any():
        return LegacyPools(
            stored, {}, {},
            f"{old}; no prompt of this run ends in a special token, so that is today's 'last' "
            "(the last non-special token)",
        )  # fmt: skip
    if ends_special.all():
        pools = tuple("eos" if p == "last" else p for p in stored)
        return LegacyPools(
            pools, {"eos": "last"},
            {"last": f"{old}, here the special token the tokenizer appends ([SEP]/EOS); it is "
                     f"read as pool 'eos'. Today's pool 'last' is not in this run: {again}"},
            f"{old}, here the appended special token: its stored 'last' vectors are read as "
            f"pool 'eos'; {again}",
        )  # fmt: skip
    pools = tuple(p for p in stored if p != "last")
    message = (
        f"{old}: a special token for {int(ends_special.sum())} of {ends_special.size} prompts "
        f"and a text token for the others, which is neither 'last' nor 'eos' today; {again}"
    )
    return LegacyPools(pools, {}, {"last": message, "eos": message}, message)


def export_npz(
    run: Run | str | Path,
    output: str | Path,
    *,
    pool: str = "last",
    sites: Sequence[str] | None = None,
    langs: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``pool`` vectors as one ``.npz`` with keys ``<lang>_<site>`` (``zh_L0``, ``en_embed``).

    The study's ``all_layers_lasttok.npz`` format; written with ``np.savez`` (no pickles),
    through a temporary file. An existing ``output`` is replaced only with ``overwrite`` (a
    folder never). Returns the path written.
    """
    output = Path(output)
    if output.is_dir():
        raise RunError(f"-o '{output}' is a folder; give the .npz file to write")
    if output.exists() and not overwrite:
        raise RunError(f"'{output}' exists; pass --overwrite to replace it")
    if not isinstance(run, Run):
        run = load_run(run)
    if pool == TOKEN_POOL:
        raise RunError("pool 'tokens' has no fixed shape per prompt; export a vector pool")
    if pool not in run.pools:
        run._check(run.languages[0], run.sites[0], pool)  # names why (a legacy run's 'last')
    chosen_sites = list(sites) if sites is not None else list(run.sites)
    chosen_langs = list(langs) if langs is not None else list(run.languages)
    arrays = {
        f"{lang}_{site}": np.asarray(run.array(lang, site, pool))
        for lang in chosen_langs
        for site in chosen_sites
    }
    made = [p for p in (output.parent, *output.parent.parents) if not p.exists()]
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    try:
        with os.fdopen(fd, "wb") as f:  # a file object keeps numpy from appending ".npz"
            np.savez(f, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, output)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        for folder in made:  # the folders made for it go again: a failure leaves nothing
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(e, OSError) and e.filename in (None, tmp):
            e.filename = str(output)  # a full disk names the file being written
        raise
    return output


def check_finite(run: Run, lang: str, site: str, pool: str, x: np.ndarray | None = None) -> None:
    """:class:`RunError` naming the run, the file and the first rows (with their ids) where
    ``run[lang, site, pool]`` (or ``x``, already read from it) holds NaN or inf.

    Extraction refuses such vectors, so one here was written into the file after (or by a
    tool other than) xlalign; no study averages it away silently."""
    x = np.asarray(run.array(lang, site, pool) if x is None else x)
    finite = np.isfinite(x).all(axis=tuple(range(1, x.ndim))) if x.ndim > 1 else np.isfinite(x)
    if bool(finite.all()):
        return
    bad = np.flatnonzero(~finite)
    shown = ", ".join(f"{int(i)} (id {run.ids[int(i)]!r})" for i in bad[:3])
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    raise RunError(
        f"run '{run.path}': {lang}, site {site}, pool {pool} holds NaN or inf in row {shown}"
        f"{more}; extraction never writes such vectors, so the file was changed since: extract "
        "the run again"
    )


#: Manifest entries on which a random-weights control must agree with the run it controls:
#: the corpus (its digest and languages), the model's name and shape, and the settings that
#: change the vectors (dtype, the weighted pool's compat). Sites and pools may differ: a site the
#: control lacks just has no control value.
CONTROL_KEYS = (
    "corpus_fingerprint",
    "languages",
    "model",
    "architecture",
    "n_layers",
    "d_model",
    "dtype",
    "compat",
)


def control_mismatches(run: Mapping[str, Any], control: Mapping[str, Any]) -> list[str]:
    """How the ``control`` manifest fails to belong to the ``run`` manifest (empty: it does).

    Checks :data:`CONTROL_KEYS`, that the control's weights are random (``random_init_seed``
    set) and, where the control records the run it was made for (``control_of``), that record.
    """
    defaults = {"compat": "exact"}  # runs written before a key existed hold its default
    out = []
    same_place = run.get("model_path") is not None and run.get("model_path") == control.get(
        "model_path"
    )  # one local model, named relatively in one and by its absolute path in the other
    for key in CONTROL_KEYS:
        mine, theirs = run.get(key, defaults.get(key)), control.get(key, defaults.get(key))
        if key == "model" and same_place:
            continue
        if mine != theirs:
            what = "the corpus" if key == "corpus_fingerprint" else key
            out.append(f"{what} differs (run: {mine!r}, control: {theirs!r})")
    tok_run, tok_ctl = run.get("tokenizer_fingerprint"), control.get("tokenizer_fingerprint")
    if tok_run is not None and tok_ctl is not None and tok_run != tok_ctl:
        out.append("the tokenizer differs")
    if control.get("random_init_seed") is None:
        out.append("its weights are not random (no random_init_seed): it is not a control")
    made_for = control.get("control_of")
    if isinstance(made_for, Mapping):
        for key in ("corpus_fingerprint", "model"):
            if key in made_for and made_for[key] != run.get(key):
                out.append(f"it was made for another run ({key} {made_for[key]!r})")
    return out


def check_control(run: Run, control: Run) -> None:
    """Raise unless ``control`` is a random-weights control of ``run`` (see :func:`control_mismatches`)."""
    diffs = control_mismatches(run.manifest, control.manifest)
    if diffs:
        raise RunError(
            f"the control in '{control.path}' does not belong to the run in '{run.path}': "
            + "; ".join(diffs)
            + f" (delete {control.path} and run the study again to rebuild it)"
        )


def load_control(run: Run) -> Run | None:
    """The random-weights control in ``run/control-random-init``, checked to belong to ``run``
    (:func:`check_control`); None where the run has none."""
    folder = run.path / CONTROL_DIR
    if not (folder / MANIFEST).exists():
        return None
    control = load_run(folder)
    check_control(run, control)
    return control
