"""Steering the output language with DiffMean directions, against random directions.

DiffMean (the strongest simple method in CLaS-Bench, Gurgurov et al. 2026; Schut, Gal and
Farquhar, ICML 2025, steer with such vectors): at the site ``L{l}`` (block ``l``'s output) the
direction from language ``a`` to language ``b`` is the difference of the means of the run's
stored vectors, ``mean(run[b, L{l}, pool][rows]) - mean(run[a, L{l}, pool][rows])``, over the
*direction rows*. It is used as a unit vector ``u``.

**Rows.** The corpus rows are split at random (seeded): a share ``heldout`` (0.5) is held out
and never enters a direction; the rest compute it. Generation runs on the first
``max_prompts`` held-out rows (random order, so a random subset), prompted in the source
language with the token ids the run stored (trailing special tokens left off).

**Steering.** During generation a forward hook on block ``l`` adds ``alpha * s_l * u`` to the
block's output at every position (prompt and generated tokens, with the KV cache). ``s_l`` is
the layer's scale: the mean L2 norm of the source language's last-token states at ``L{l}`` over
the direction rows (one position's state, the size of what the hook adds to; the ``pool``'s
own vectors when the run has no ``last`` pool). So ``alpha`` is in units of the layer's typical
state norm, comparable across layers. Generation is greedy (``max_new_tokens``), batched with
left padding; every (prompt, layer, vector) is one row of a batch, so rows of different layers
and vectors share a forward pass (the hook adds zero to the rows it does not steer).

**What is measured**, per layer and alpha, over the generated text (stopped at EOS):

- ``success``: the share of generations in the target language; ``stay``: in the source;
- ``content``: the share that still hold every number of the prompt (its whole numbers as
  digits, e.g. ``6719`` and ``15``), over the prompts that have numbers (the study's problems
  all do); ``None`` where none has. ``content_any``: the share that hold at least one of them
  (a dozen greedy tokens rarely restate a whole problem, so ``content`` is low unsteered too:
  read both against the unsteered row).

**How the language is decided** (:func:`script_of`): the text is cut into units, each CJK
character one unit and each run of other letters one unit (a word); digits, punctuation and
spaces are no units. Each unit is classed by :func:`xlalign.data.tokens.classify_text`
(``cjk``, ``latin`` or ``other``). The text's script is the class of more than half of its units;
``none`` without units (digits only, empty), ``mixed`` when no class has a majority. A language
is known by its script (:data:`SCRIPTS`: zh, ja, ko are ``cjk``; en, de, fr, ... ``latin``), so
source and target must differ in script.

**Control.** The same added norm along a random unit direction (Gaussian, normalised), three
seeds per layer; the held-out prompts are dealt out over the seeds in turn (prompt ``i`` gets
seed ``i mod 3``), so the control costs what the steering costs. And alpha = 0: the model
unsteered, on the same prompts. Intervals: percentile bootstrap over prompts of each share.
A record's verdict is ``beyond-control`` when its success interval's lower end exceeds both the
random control's success and the unsteered success, else ``matched-by-control``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xlalign.data.tokens import classify_text, is_cjk
from xlalign.errors import RunError, XlalignError
from xlalign.metrics.bootstrap import mean_ci
from xlalign.models.architecture import ModelAdapter
from xlalign.models.loading import LoadedModel
from xlalign.store.files import atomic_write_json
from xlalign.store.lock import folder_lock
from xlalign.store.run import Run, load_run, weights_label
from xlalign.store.sites import layer_site
from xlalign.studies.findings import small_sample_warning

FORMAT = "xlalign.steer"
STEER_FILE = "steer.json"
#: The script each language is written in, as :func:`script_of` tells them apart.
SCRIPTS: dict[str, str] = {
    **dict.fromkeys(("zh", "ja", "ko", "yue"), "cjk"),
    **dict.fromkeys(
        ("en", "de", "fr", "es", "it", "pt", "nl", "sv", "da", "no", "fi", "pl", "cs", "tr",
         "id", "ms", "vi", "ro", "hu", "sw"),
        "latin",
    ),
}  # fmt: skip
#: Verdicts of a (layer, alpha) record.
VERDICTS = ("beyond-control", "matched-by-control")


@dataclass(frozen=True)
class SteerConfig:
    """The steering study's settings; each field is a flag of ``xlalign steer``."""

    source: str = "en"
    """Language of the prompts (``--from``)."""
    target: str = "zh"
    """Language steered towards (``--to``)."""
    layers: tuple[int, ...] | None = None
    """Blocks steered (default: every fourth block, 0, 4, 8, ...)."""
    alphas: tuple[float, ...] = (0.25, 0.5)
    """Strengths, in units of the layer's mean state norm (see the module doc)."""
    max_new_tokens: int = 12
    """Tokens generated per prompt (greedy)."""
    pool: str = "mean"
    """Stored vectors the direction is computed from: mean or last."""
    heldout: float = 0.5
    """Share of the corpus rows held out from the direction (prompts are drawn from them)."""
    max_prompts: int = 24
    """At most this many held-out prompts are generated from."""
    seed: int = 0
    """Seed of the row split and the bootstrap."""
    control_seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of the random directions (the prompts are dealt out over them)."""
    n_boot: int = 1000
    """Bootstrap resamples of the prompts."""
    batch_size: int = 32
    """Rows per generate call."""
    n_examples: int = 3
    """Generations kept as examples for the report."""
    device: str = "cpu"
    """Where the model runs: cpu, cuda or auto."""
    model: str | None = None
    """The run's model at a new place (checked against the run's fingerprint)."""

    def __post_init__(self) -> None:
        for flag, lang in (("--from", self.source), ("--to", self.target)):
            if lang not in SCRIPTS:
                raise XlalignError(
                    f"{flag} {lang!r}: steering tells languages apart by script and knows "
                    f"{', '.join(sorted(SCRIPTS))}"
                )
        if SCRIPTS[self.source] == SCRIPTS[self.target]:
            raise XlalignError(
                f"--from {self.source} and --to {self.target} are both written in "
                f"{SCRIPTS[self.source]} script: the language check cannot tell them apart"
            )
        if not self.alphas or any(not np.isfinite(a) or a < 0 for a in self.alphas):
            raise XlalignError(f"--alphas must be finite numbers >= 0, got {list(self.alphas)}")
        if not any(a > 0 for a in self.alphas):
            raise XlalignError("--alphas needs one value above 0 (alpha 0 is always measured)")
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise XlalignError(f"--layers must be block indices >= 0, got {list(self.layers)}")
        if self.pool not in ("mean", "last"):
            raise XlalignError(f"--pool must be mean or last, got {self.pool!r}")
        if self.max_new_tokens < 1:
            raise XlalignError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if not 0 < self.heldout < 1:
            raise XlalignError(f"--heldout must be between 0 and 1, got {self.heldout!r}")
        if self.max_prompts < 1:
            raise XlalignError(f"--max-prompts must be at least 1, got {self.max_prompts}")
        if self.batch_size < 1:
            raise XlalignError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.n_boot < 1:
            raise XlalignError(f"--n-boot must be at least 1, got {self.n_boot}")
        if not self.control_seeds:
            raise XlalignError("the control needs at least one random-direction seed")
        if self.seed < 0 or any(s < 0 for s in self.control_seeds):
            raise XlalignError("seeds must be 0 or more")

    def to_json(self) -> dict[str, Any]:
        """The settings as ``steer.json`` records them."""
        d = asdict(self)
        for k in ("layers", "alphas", "control_seeds"):
            d[k] = None if d[k] is None else list(d[k])
        return d


# ---------------------------------------------------------------------------------------------
# the language of a text

_LETTERS = re.compile(r"[^\W\d_]+")


def script_units(text: str) -> list[str]:
    """The classes of the text's units: each CJK character, each run of other letters.

    Each unit is classed by :func:`~xlalign.data.tokens.classify_text` (``cjk``, ``latin``
    or ``other``); digits, punctuation and spaces make no unit.
    """
    out: list[str] = []
    for run in _LETTERS.findall(text):
        rest = ""
        for c in run:
            if is_cjk(c):
                if rest:
                    out.append(classify_text(rest))
                    rest = ""
                out.append("cjk")
            else:
                rest += c
        if rest:
            out.append(classify_text(rest))
    return out


def script_of(text: str) -> str:
    """``cjk``, ``latin`` or ``other`` when that class holds more than half of the text's
    units (:func:`script_units`); ``none`` without units, ``mixed`` without a majority."""
    units = script_units(text)
    if not units:
        return "none"
    classes, counts = np.unique(units, return_counts=True)
    k = int(np.argmax(counts))
    return str(classes[k]) if counts[k] * 2 > len(units) else "mixed"


def language_of(text: str, langs: Sequence[str]) -> str:
    """The one of ``langs`` whose script (:data:`SCRIPTS`) the text is in, else its script
    (``none``, ``mixed``, or a script none of ``langs`` is written in)."""
    script = script_of(text)
    for lang in langs:
        if SCRIPTS.get(lang) == script:
            return lang
    return script


_NUMBER = re.compile(r"\d+")


def numbers_of(text: str) -> list[str]:
    """The whole numbers written in digits in ``text``, in order (``'C(5, 1)'`` -> 5, 1)."""
    return _NUMBER.findall(text)


def keeps_numbers(numbers: Sequence[str], text: str, *, every: bool = True) -> bool:
    """True when every one of ``numbers`` (``every=False``: at least one) appears in ``text``
    as a whole number."""
    found = set(_NUMBER.findall(text))
    return (all if every else any)(n in found for n in numbers)


# ---------------------------------------------------------------------------------------------
# directions and the hook


def diffmean(
    run: Run, source: str, target: str, site: str, pool: str, rows: np.ndarray
) -> np.ndarray:
    """``(d_model,)`` float64: mean of ``target``'s minus mean of ``source``'s vectors on ``rows``."""
    a = np.asarray(run.array(source, site, pool), dtype=np.float64)[rows]
    b = np.asarray(run.array(target, site, pool), dtype=np.float64)[rows]
    return b.mean(axis=0) - a.mean(axis=0)


def layer_scale(run: Run, source: str, site: str, pool: str, rows: np.ndarray) -> float:
    """The mean L2 norm of ``source``'s last-token states at ``site`` on ``rows`` (``pool``'s
    vectors when the run has no ``last`` pool): what ``alpha = 1`` adds."""
    use = "last" if "last" in run.pools else pool
    x = np.asarray(run.array(source, site, use), dtype=np.float64)[rows]
    return float(np.linalg.norm(x, axis=1).mean())


def random_direction(d_model: int, seed: int, layer: int) -> np.ndarray:
    """``(d_model,)`` float64 unit vector, Gaussian then normalised; one per (seed, layer)."""
    v = np.random.default_rng([seed, layer]).standard_normal(d_model)
    return v / np.linalg.norm(v)


def _add(vec: torch.Tensor) -> Any:
    def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return output + vec.to(output.device, output.dtype)
        first = output[0] + vec.to(output[0].device, output[0].dtype)
        return (first, *output[1:])

    return hook


@contextmanager
def steering(
    adapter: ModelAdapter, vectors: Mapping[int, np.ndarray | torch.Tensor]
) -> Iterator[None]:
    """Add ``vectors[l]`` to block ``l``'s output at every position, meanwhile.

    A vector is ``(d_model,)`` (every row) or ``(batch, d_model)`` (one per row of the batch).
    """
    handles = []
    try:
        for layer, v in vectors.items():
            t = torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v)
            t = t[:, None, :] if t.dim() == 2 else t  # (B, 1, d): one per row, every position
            handles.append(adapter.blocks[int(layer)].register_forward_hook(_add(t)))
        yield
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------------------------
# generation


def _eos_ids(loaded: LoadedModel) -> list[int]:
    tok = loaded.tokenizer
    ids = {tok.eos_token_id}
    gen = getattr(loaded.model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    ids |= set(extra) if isinstance(extra, (list, tuple)) else {extra}
    return sorted(int(i) for i in ids if i is not None)


def generate(
    loaded: LoadedModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    layers: Sequence[int] | None = None,
    vectors: np.ndarray | None = None,
    batch_size: int = 32,
    bar: Any = None,
) -> list[list[int]]:
    """Greedy continuations of ``prompts`` (token ids), each cut at its first EOS.

    Row ``i`` is steered at block ``layers[i]`` by ``vectors[i]`` ``(d_model,)`` (layer -1: not
    steered). Rows are sorted by length and batched with left padding (KV cache on).
    """
    from transformers import GenerationConfig

    n = len(prompts)
    lay = np.full(n, -1, dtype=np.int64) if layers is None else np.asarray(layers, dtype=np.int64)
    vec = None if vectors is None else np.asarray(vectors, dtype=np.float32)
    tok = loaded.tokenizer
    eos = _eos_ids(loaded)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad,
        eos_token_id=eos, bos_token_id=None,
    )  # fmt: skip
    order = sorted(range(n), key=lambda i: (len(prompts[i]), i))
    out: list[list[int]] = [[] for _ in range(n)]
    model: Any = loaded.model  # generate() is the transformers model's, untyped here
    device = next(model.parameters()).device
    with torch.inference_mode():
        for lo in range(0, n, batch_size):
            idx = order[lo : lo + batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for b, i in enumerate(idx):
                p = torch.as_tensor(np.asarray(prompts[i], dtype=np.int64))
                ids[b, width - len(p) :] = p
                mask[b, width - len(p) :] = 1
            steer: dict[int, torch.Tensor] = {}
            if vec is not None:
                for layer in sorted({int(lay[i]) for i in idx} - {-1}):
                    v = torch.zeros((len(idx), vec.shape[1]), dtype=torch.float32)
                    for b, i in enumerate(idx):
                        if lay[i] == layer:
                            v[b] = torch.from_numpy(vec[i])
                    steer[layer] = v.to(device)
            with steering(loaded.adapter, steer):
                gen = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device),
                    generation_config=config,
                )  # fmt: skip
            for b, i in enumerate(idx):
                new = gen[b, width:].tolist()
                cut = next((k for k, t in enumerate(new) if t in eos), len(new))
                out[i] = new[:cut]
            if bar is not None:
                bar.update(len(idx))
    return out


# ---------------------------------------------------------------------------------------------
# the study


def split_rows(n_rows: int, heldout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(direction rows sorted, held-out rows in random order)``; seeded."""
    order = np.random.default_rng(seed).permutation(n_rows)
    n_held = max(1, round(n_rows * heldout))
    held, rest = order[:n_held], order[n_held:]
    if len(rest) < 1:
        raise XlalignError(
            f"{n_rows} rows with --heldout {heldout} leave none for the direction: use more "
            "rows or a smaller --heldout"
        )
    return np.sort(rest), held


def default_layers(n_layers: int) -> list[int]:
    """Every fourth block: 0, 4, 8, ..."""
    return list(range(0, n_layers, 4))


def check_layers(run: Run, layers: Sequence[int]) -> list[int]:
    """``layers`` sorted and unique, each a block of the run's model with its site stored."""
    n = run.n_layers
    for layer in layers:
        if not 0 <= layer < n:
            raise XlalignError(
                f"--layers: block {layer} out of range: the run's model has {n} blocks (0..{n - 1})"
            )
        if layer_site(layer) not in run.sites:
            raise XlalignError(
                f"--layers: block {layer}'s output ({layer_site(layer)}) is not stored in the run "
                "(extract with --sites all)"
            )
    return sorted(set(int(x) for x in layers))


def _share(values: np.ndarray, cfg: SteerConfig) -> dict[str, Any]:
    if values.size == 0:
        return {"value": None, "low": None, "high": None, "n": 0}
    ci = mean_ci(values.astype(np.float64), cfg.n_boot, cfg.seed)
    return {"value": ci.point, "low": ci.low, "high": ci.high, "n": int(values.size)}


def _measure(
    texts: Sequence[str], numbers: Sequence[Sequence[str]], cfg: SteerConfig
) -> dict[str, Any]:
    langs = [language_of(t, (cfg.source, cfg.target)) for t in texts]
    success = np.array([x == cfg.target for x in langs], dtype=float)
    stay = np.array([x == cfg.source for x in langs], dtype=float)
    pairs = [(t, ns) for t, ns in zip(texts, numbers, strict=True) if ns]
    content = np.array([keeps_numbers(ns, t) for t, ns in pairs], dtype=float)
    content_any = np.array([keeps_numbers(ns, t, every=False) for t, ns in pairs], dtype=float)
    return {
        "success": _share(success, cfg),
        "stay": _share(stay, cfg),
        "content": _share(content, cfg),
        "content_any": _share(content_any, cfg),
        "n": len(texts),
        "languages": {
            k: int(v) for k, v in zip(*np.unique(langs, return_counts=True), strict=True)
        },
    }


def steer_study(
    run: Run,
    config: SteerConfig | None = None,
    *,
    loaded: LoadedModel | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The whole study on ``run`` (its model loaded unless ``loaded`` is given): ``steer.json``.

    Keys: ``records`` (one per layer and alpha, the alpha-0 baseline first, each with its
    control), ``directions`` (per layer: the DiffMean norm and the layer's scale),
    ``findings``, ``best``, ``examples``, ``rows`` (how they were split), ``settings``.
    """
    cfg = config or SteerConfig()
    if not run.manifest.get("is_causal_lm"):
        raise RunError(
            f"run '{run.path}' is of {run.manifest.get('architecture') or 'a model'} "
            f"({run.manifest.get('model')}), not a causal language model: steering needs one "
            "that generates"
        )
    for flag, lang in (("--from", cfg.source), ("--to", cfg.target)):
        if lang not in run.languages:
            raise XlalignError(f"{flag} {lang}: not in the run: it has {', '.join(run.languages)}")
    if cfg.pool not in run.pools:
        raise XlalignError(f"--pool {cfg.pool}: not in the run: it has {', '.join(run.pools)}")
    layers = check_layers(
        run, cfg.layers if cfg.layers is not None else default_layers(run.n_layers)
    )
    dir_rows, held = split_rows(run.n_rows, cfg.heldout, cfg.seed)
    eval_rows = held[: cfg.max_prompts]
    if loaded is None:
        from xlalign.studies.lens import load_run_model

        loaded = load_run_model(run, cfg.device, model=cfg.model, purpose="steering")
    tok = loaded.tokenizer
    ids = run.token_ids(cfg.source)
    special = run.special_tokens_mask(cfg.source)
    prompts: list[list[int]] = []
    for r in eval_rows.tolist():
        p, s = ids[r].tolist(), special[r].tolist()
        while len(p) > 1 and s[-1]:  # generation continues the text, not after its EOS
            p, s = p[:-1], s[:-1]
        prompts.append(p)
    texts = [str(tok.decode(p, skip_special_tokens=True)) for p in prompts]
    numbers = [numbers_of(t) for t in texts]
    n_p, d = len(prompts), run.d_model

    directions: list[dict[str, Any]] = []
    all_prompts: list[list[int]] = list(prompts)
    all_layers: list[int] = [-1] * n_p
    all_vecs: list[np.ndarray] = [np.zeros(d)] * n_p
    slots: list[tuple[int, float, str]] = []  # (layer, alpha, kind) per block of n_p rows
    alphas = [a for a in dict.fromkeys(cfg.alphas) if a > 0]
    seeds = list(cfg.control_seeds)
    for layer in layers:
        site = layer_site(layer)
        raw = diffmean(run, cfg.source, cfg.target, site, cfg.pool, dir_rows)
        norm = float(np.linalg.norm(raw))
        if norm == 0:
            raise XlalignError(
                f"{site}: the {cfg.source} and {cfg.target} means are equal; no direction"
            )
        unit = raw / norm
        scale = layer_scale(run, cfg.source, site, cfg.pool, dir_rows)
        directions.append({"layer": layer, "site": site, "diffmean_norm": norm, "scale": scale})
        randoms = {s: random_direction(d, s, layer) for s in seeds}
        for a in alphas:
            slots.append((layer, a, "diffmean"))
            all_prompts += prompts
            all_layers += [layer] * n_p
            all_vecs += [a * scale * unit] * n_p
            slots.append((layer, a, "random"))
            all_prompts += prompts
            all_layers += [layer] * n_p
            all_vecs += [a * scale * randoms[seeds[i % len(seeds)]] for i in range(n_p)]

    started = time.perf_counter()
    bar = _bar(len(all_prompts), progress)
    try:
        out = generate(
            loaded, all_prompts, cfg.max_new_tokens, layers=all_layers,
            vectors=np.stack(all_vecs), batch_size=cfg.batch_size, bar=bar,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    gen_s = time.perf_counter() - started
    decoded = [str(tok.decode(g, skip_special_tokens=True)) for g in out]
    by_slot: dict[tuple[Any, float, str], list[str]] = {("base", 0.0, "none"): decoded[:n_p]}
    for k, slot in enumerate(slots):
        by_slot[slot] = decoded[(k + 1) * n_p : (k + 2) * n_p]

    base_texts = by_slot[("base", 0.0, "none")]
    base = _measure(base_texts, numbers, cfg)
    records: list[dict[str, Any]] = [
        {"layer": None, "site": None, "alpha": 0.0, "added_norm": 0.0, "direction": "none", **base}
    ]
    scales = {r["layer"]: r["scale"] for r in directions}
    for layer in layers:
        for a in alphas:
            steered = _measure(by_slot[(layer, a, "diffmean")], numbers, cfg)
            ctl_texts = by_slot[(layer, a, "random")]
            control = _measure(ctl_texts, numbers, cfg)
            control["direction"] = "random"
            control["seeds"] = seeds
            control["success_by_seed"] = {
                str(s): float(np.mean([language_of(ctl_texts[i], (cfg.source, cfg.target)) == cfg.target
                                       for i in range(n_p) if i % len(seeds) == j]))
                if any(i % len(seeds) == j for i in range(n_p)) else None
                for j, s in enumerate(seeds)
            }  # fmt: skip
            rec = {
                "layer": layer,
                "site": layer_site(layer),
                "alpha": a,
                "added_norm": a * scales[layer],
                "direction": "diffmean",
                **steered,
                "control": control,
                "alpha0": {"success": base["success"]["value"]},
            }
            rec["verdict"], rec["statement"] = _verdict(rec, cfg)
            records.append(rec)
    steered_recs = [r for r in records if r["layer"] is not None]
    best = max(
        steered_recs,
        key=lambda r: (r["success"]["value"] or 0.0, r["content"]["value"] or 0.0, -r["alpha"]),
    )
    examples = [
        {
            "row": run.ids[int(eval_rows[i])],
            "prompt": texts[i],
            "unsteered": base_texts[i],
            "steered": by_slot[(best["layer"], best["alpha"], "diffmean")][i],
            "random": by_slot[(best["layer"], best["alpha"], "random")][i],
        }
        for i in range(min(cfg.n_examples, n_p))
    ]
    warnings = []
    small = small_sample_warning(n_p, "held-out prompts")
    if small is not None:
        warnings.append(small)
    beyond = [r for r in steered_recs if r["verdict"] == "beyond-control"]
    m = run.manifest
    return {
        "format": FORMAT,
        "model": m.get("model"),
        "random_init_seed": m.get("random_init_seed"),
        "run": str(run.path),
        "source": cfg.source,
        "target": cfg.target,
        "pool": cfg.pool,
        "layers": layers,
        "alphas": alphas,
        "settings": cfg.to_json(),
        "rows": {
            "n_rows": run.n_rows,
            "direction": len(dir_rows),
            "heldout": len(held),
            "generated": n_p,
            "prompt_ids": [run.ids[int(r)] for r in eval_rows],
            "split": f"seeded permutation (seed {cfg.seed}): {len(held)} rows held out, "
            f"the other {len(dir_rows)} compute the directions; the first {n_p} held-out "
            "rows are the prompts",
        },
        "language_rule": "each CJK character and each run of other letters is one unit, classed "
        "cjk/latin/other; the text's script is the class of more than half of its units "
        "(none: no letters; mixed: no majority); a language is known by its script",
        "directions": directions,
        "records": records,
        "best": {k: best[k] for k in ("layer", "site", "alpha", "success", "content", "verdict")}
        | {"control_success": best["control"]["success"]},
        "findings": [
            {
                "kind": "steering",
                "verdict": "beyond-control" if beyond else "matched-by-control",
                "statement": _headline(cfg, best, base, len(beyond), len(steered_recs)),
            }
        ],
        "examples": examples,
        "warnings": warnings,
        "timings": {"generate_s": round(gen_s, 3), "n_generations": len(all_prompts)},
    }


def _pct(share: Mapping[str, Any]) -> str:
    v, lo, hi = share.get("value"), share.get("low"), share.get("high")
    if v is None:
        return "undefined"
    if lo is None or hi is None:
        return f"{v:.0%}"
    return f"{v:.0%} [{lo:.0%}, {hi:.0%}]"


def _verdict(rec: Mapping[str, Any], cfg: SteerConfig) -> tuple[str, str]:
    low = rec["success"]["low"]
    low = rec["success"]["value"] if low is None else low
    ctl = rec["control"]["success"]["value"] or 0.0
    base = rec["alpha0"]["success"] or 0.0
    verdict = "beyond-control" if low is not None and low > max(ctl, base) else "matched-by-control"
    statement = (
        f"{rec['site']} alpha {rec['alpha']:g}: {cfg.source}->{cfg.target} success "
        f"{_pct(rec['success'])} against a random direction of the same norm {ctl:.0%} and "
        f"unsteered {base:.0%} -> {verdict}"
    )
    return verdict, statement


def _headline(
    cfg: SteerConfig, best: Mapping[str, Any], base: Mapping[str, Any], k: int, n: int
) -> str:
    return (
        f"steering {cfg.source}->{cfg.target} (DiffMean, {cfg.pool} pool): best {best['site']} "
        f"alpha {best['alpha']:g}, success {_pct(best['success'])}, content "
        f"{_pct(best['content'])}; random direction {_pct(best['control']['success'])}, "
        f"unsteered {_pct(base['success'])}; {k} of {n} layer x alpha settings beyond control"
    )


def _bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="steer", unit="generation", dynamic_ncols=True)


def summary_lines(doc: Mapping[str, Any]) -> list[str]:
    """The console summary: the headline, then one line per layer and alpha."""
    lines = [f"{f['statement']}" for f in doc.get("findings") or []]
    for r in doc.get("records") or []:
        if r.get("layer") is None:
            lines.append(
                f"  unsteered: {doc['target']} {_pct(r['success'])}, {doc['source']} "
                f"{_pct(r['stay'])}, numbers kept: all {_pct(r['content'])}, one "
                f"{_pct(r['content_any'])}"
            )
            continue
        lines.append(
            f"  {r['site']} alpha {r['alpha']:g}: {doc['target']} {_pct(r['success'])} "
            f"(random {_pct(r['control']['success'])}), {doc['source']} {_pct(r['stay'])}, "
            f"numbers kept: all {_pct(r['content'])}, one {_pct(r['content_any'])} -> "
            f"{r['verdict']}"
        )
    lines += [f"warning: {w}" for w in doc.get("warnings") or []]
    return lines


def write_steer(doc: Mapping[str, Any], folder: Path) -> dict[str, Path]:
    """``steer.json``, its figure ``fig_steer.png``/``.svg`` and ``steer.html``/``steer.md``."""
    from xlalign.report.steer import write_steer_report

    folder = Path(folder)
    path = folder / STEER_FILE
    atomic_write_json(path, doc)
    return {
        "json": path,
        **write_steer_report(folder, doc, f"steering: {doc.get('model')}{weights_label(doc)}"),
    }


def run_steer(
    path: str | Path, config: SteerConfig | None = None, *, progress: bool = True
) -> tuple[dict[str, Any], list[str], dict[str, Path]]:
    """``xlalign steer``: the study of the run at ``path``, written into the run folder.

    Holds the folder's write lock. Returns the document, the summary lines and the paths.
    """
    with folder_lock(Path(path), "xlalign steer"):
        run = load_run(path)
        doc = steer_study(run, config, progress=progress)
        paths = write_steer(doc, run.path)
    return doc, summary_lines(doc), paths


def steer(
    run: str | Path | Run,
    config: SteerConfig | None = None,
    *,
    loaded: LoadedModel | None = None,
    write: bool = True,
    progress: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """``xlalign.steer(run, source="en", target="zh", ...)``: the ``steer.json`` document.

    ``settings`` are :class:`SteerConfig` fields (used when ``config`` is None); with
    ``write``, the document, figure and report section are written into the run folder.
    """
    cfg = config or SteerConfig(**settings)
    folder = run.path if isinstance(run, Run) else Path(run)
    with folder_lock(folder, "xlalign steer"):
        opened = run if isinstance(run, Run) else load_run(folder)
        doc = steer_study(opened, cfg, loaded=loaded, progress=progress)
        if write:
            write_steer(doc, opened.path)
    return doc
