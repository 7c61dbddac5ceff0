"""Language-specific neurons (LAPE) and the ablation test that checks them against random ones.

The selection is LAPE (Tang et al., ACL 2024, "Language-Specific Neurons: The Key to
Multilingual Capabilities in Large Language Models"; code RUCAIBox/Language-Specific-Neurons).
For every layer ``l``, feed-forward neuron ``i`` and language ``k``:

- ``p[l, i, k]``: the share of language ``k``'s real tokens (padding and special tokens left
  out) on which the neuron's activation is positive: the output of the activation function
  (:func:`~xlalign.models.architecture.mlp_activations`; ``act(gate_proj(x))`` in a gated MLP,
  as LAPE's code counts it);
- ``q[l, i, k] = p[l, i, k] / sum_k p[l, i, k]`` (0 where the neuron never fires) and the
  entropy ``H[l, i] = -sum_k q log q`` (natural log);
- **filter** (``filter_rate``, 0.95): a neuron stays a candidate only if some language's ``p``
  exceeds the ``filter_rate`` quantile of all ``p`` values (the ``round(N * filter_rate)``-th
  smallest of the ``N = layers x neurons x languages`` values, as ``torch.kthvalue`` in LAPE's
  code);
- **selection** (``top_rate``, 0.01 as in the paper): the ``round(layers x neurons x top_rate)``
  candidates of lowest entropy (filtered neurons are never selected, so fewer may be);
- **assignment** (``activation_bar``, 0.95): a selected neuron belongs to every language whose
  ``p`` exceeds the ``activation_bar`` quantile of all ``p`` values (the code's second 95%
  threshold; the paper describes one threshold only).

Stability: the selection rows are split at random (seeded) into two halves, LAPE runs on each,
and each language's two sets are compared by their Jaccard overlap.

The causal test (causal LMs only): each language's set is ablated (its activations set to 0
in every forward pass, which zeroes the matching columns of the down projection's input) and
the mean token negative log-likelihood (NLL) of held-out prompts of every language is measured,
beside the unablated model; the control ablates as many random neurons drawn from the same
layers (per layer the same count, never the set's own neurons), one draw per control seed.
Intervals: a paired bootstrap over held-out prompts of the token-weighted NLL change.

Counting runs the base model once per batch (no LM head), accumulating per-neuron counts on the
device; nothing of size tokens x neurons is kept.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xlalign.capture.batching import (
    Batch,
    forward_kwargs,
    forward_params,
    make_batch,
    pad_id_of,
    plan_batches,
    tokenize,
)
from xlalign.data.corpus import ParallelCorpus
from xlalign.errors import XlalignError
from xlalign.models.architecture import MlpActivations, mlp_activations
from xlalign.models.loading import LoadedModel
from xlalign.store.files import atomic_write_json
from xlalign.store.writer import TokenData
from xlalign.studies.findings import small_sample_warning

FORMAT = "xlalign.neurons"
NEURONS_FILE = "neurons.json"
#: Folder of the selected neurons: ``neurons/<lang>.npy``, int64 ``(n, 2)`` rows of
#: ``(layer, neuron)``, and ``neurons/activation_probs.npy`` (float32 ``(layers, neurons, langs)``).
NEURONS_DIR = "neurons"
#: Verdicts of a language's neurons (see :func:`ablation_findings`).
VERDICTS = (
    "beyond-control",
    "matched-by-control",
    "not-language-specific",
    "no-neurons",
    "no-ablation",
)


@dataclass(frozen=True)
class NeuronsConfig:
    """The neuron study's settings; each field is a flag of ``xlalign neurons``."""

    filter_rate: float = 0.95
    """Quantile of all activation probabilities a candidate must exceed in some language."""
    top_rate: float = 0.01
    """Share of all neurons selected, lowest entropy first (paper: 0.01)."""
    activation_bar: float = 0.95
    """Quantile of all activation probabilities a selected neuron must exceed in a language."""
    heldout: float = 0.5
    """Share of the corpus rows held out from selection for the ablation's perplexity."""
    max_eval: int | None = None
    """At most this many held-out prompts per language in the ablation, drawn at random (None:
    all; ``xlalign run``'s stage uses 100)."""
    seed: int = 0
    """Seed of the held-out split, the selection halves and the bootstrap."""
    control_seeds: tuple[int, ...] = (0, 1, 2)
    """One random-neuron control per seed."""
    n_boot: int = 1000
    """Bootstrap resamples of the held-out prompts (0: no intervals)."""
    batch_size: int = 16
    """Prompts per forward pass."""
    ablate: bool = True
    """Run the causal test (causal LMs only)."""

    def __post_init__(self) -> None:
        for name, top in (("filter_rate", 1.0), ("top_rate", None), ("activation_bar", 1.0)):
            v = getattr(self, name)
            # a quantile of 1 is the largest value, which nothing exceeds
            ok = isinstance(v, (int, float)) and 0 < v <= 1 and (top is None or v < top)
            if not ok:
                span = "(0, 1]" if top is None else "(0, 1)"
                raise XlalignError(f"--{name.replace('_', '-')} must be in {span}, got {v!r}")
        if not 0 < self.heldout < 1:
            raise XlalignError(f"--heldout must be between 0 and 1, got {self.heldout!r}")
        if self.max_eval is not None and self.max_eval < 1:
            raise XlalignError(f"--max-eval must be at least 1, got {self.max_eval}")
        if self.batch_size < 1:
            raise XlalignError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.n_boot < 0:
            raise XlalignError(f"--n-boot must be 0 or more, got {self.n_boot}")
        if self.seed < 0 or any(s < 0 for s in self.control_seeds):
            raise XlalignError("seeds must be 0 or more")
        if self.ablate and not self.control_seeds:
            raise XlalignError("the ablation needs at least one control seed (--control-seeds)")

    def to_json(self) -> dict[str, Any]:
        """The settings as ``neurons.json`` records them (and as reuse compares them)."""
        return {**asdict(self), "control_seeds": list(self.control_seeds)}


# ---------------------------------------------------------------------------------------------
# counting


@dataclass
class ActivationCounts:
    """How often each neuron fired, per language: the input of :func:`lape`."""

    counts: np.ndarray
    """``(layers, neurons, languages)`` int64: tokens on which the activation was positive."""
    tokens: np.ndarray
    """``(languages,)`` int64: real tokens counted per language."""
    languages: tuple[str, ...]

    def __add__(self, other: ActivationCounts) -> ActivationCounts:
        return ActivationCounts(
            self.counts + other.counts, self.tokens + other.tokens, self.languages
        )


def _right_padded(loaded: LoadedModel, data: TokenData, rows: np.ndarray) -> Batch:
    """``rows`` of ``data`` as one right-padded batch, positions following the mask."""
    return make_batch(
        data, rows, padding_side="right", pad_id=pad_id_of(loaded.tokenizer),
        position_offset=loaded.adapter.position_offset, pad_position=loaded.adapter.pad_position,
    )  # fmt: skip


def real_token_mask(attention_mask: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` bool: positions that are real tokens and not special tokens."""
    return attention_mask.bool() & ~special.bool()


def count_activations(
    loaded: LoadedModel,
    tokens: Mapping[str, TokenData],
    rows: Sequence[np.ndarray],
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> list[ActivationCounts]:
    """Positive-activation counts of every neuron, one :class:`ActivationCounts` per row group.

    ``tokens``: each language's tokenised corpus; ``rows[g]``: the corpus rows of group ``g``
    (disjoint). One forward pass of the base model per batch over the union of the groups; the
    counts of each group accumulate on the device.
    """
    acts = mlp_activations(loaded.adapter)
    langs = tuple(tokens)
    n_groups = len(rows)
    n_rows = len(next(iter(tokens.values())).lengths)
    group_of = np.full(n_rows, -1, dtype=np.int64)
    for g, r in enumerate(rows):
        group_of[np.asarray(r, dtype=np.int64)] = g
    chosen = np.flatnonzero(group_of >= 0)
    device = loaded.device
    state: dict[str, Any] = {}
    counts: list[torch.Tensor | None] = [None] * len(acts.modules)

    def hook_for(layer: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any, out: torch.Tensor) -> None:
            pos = (out > 0) & state["mask"].to(out.device)[..., None]  # (B, T, n)
            per_row = pos.sum(dim=1, dtype=torch.int64)  # (B, n)
            if counts[layer] is None:
                counts[layer] = torch.zeros(
                    (n_groups, len(langs), out.shape[-1]), dtype=torch.int64, device=out.device
                )
            target = counts[layer]
            assert target is not None
            target[:, state["lang"]].index_add_(0, state["groups"].to(out.device), per_row)

        return hook

    n_tokens = np.zeros((n_groups, len(langs)), dtype=np.int64)
    total = sum(len(chosen) for _ in langs)
    bar = _bar(total, "neurons", progress)
    handles = [m.register_forward_hook(hook_for(i)) for i, m in enumerate(acts.modules)]
    params = forward_params(loaded)
    try:
        with torch.inference_mode():
            for k, lang in enumerate(langs):
                data = tokens[lang]
                for idx in plan_batches(data.lengths[chosen], batch_size):
                    batch_rows = chosen[idx]
                    batch = _right_padded(loaded, data, batch_rows)
                    mask = real_token_mask(batch.attention_mask, batch.special)
                    groups = torch.from_numpy(group_of[batch_rows])
                    state.update(mask=mask.to(device), lang=k, groups=groups.to(device))
                    loaded.adapter.base(**forward_kwargs(loaded, batch, "right", params))
                    np.add.at(n_tokens[:, k], group_of[batch_rows], mask.sum(dim=1).numpy())
                    bar.update(len(batch_rows))
    finally:
        for h in handles:
            h.remove()
        bar.close()
    if any(c is None for c in counts):
        raise XlalignError(
            f"the forward pass never reached the feed-forward activation ({acts.path}) of "
            "every block"
        )
    # per layer on its own device where a model is spread over several
    stacked = torch.stack([c.cpu() for c in counts if c is not None]).numpy()  # (L, G, K, n)
    return [
        ActivationCounts(
            np.ascontiguousarray(stacked[:, g].transpose(0, 2, 1)), n_tokens[g].copy(), langs
        )
        for g in range(n_groups)
    ]


# ---------------------------------------------------------------------------------------------
# LAPE selection


@dataclass
class Selection:
    """The neurons LAPE selects, with the probabilities and thresholds behind them."""

    probs: np.ndarray
    """``(layers, neurons, languages)`` activation probabilities ``p``."""
    entropy: np.ndarray
    """``(layers, neurons)``; ``inf`` for neurons the filter removed."""
    filter_value: float
    bar_value: float
    n_top: int
    selected: np.ndarray
    """``(n, 2)`` int64 ``(layer, neuron)`` of the selected neurons, lowest entropy first."""
    members: dict[str, np.ndarray]
    """Per language, the ``(layer, neuron)`` rows of :attr:`selected` assigned to it (sorted)."""


def kth_smallest(values: np.ndarray, rate: float) -> float:
    """The ``round(len(values) * rate)``-th smallest value (1-based, at least the first)."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    k = min(max(1, round(flat.size * rate)), flat.size)
    return float(np.partition(flat, k - 1)[k - 1])


def lape(counts: ActivationCounts, config: NeuronsConfig | None = None) -> Selection:
    """LAPE's selection from activation counts (formulas in the module doc), in float64."""
    cfg = config or NeuronsConfig()
    tokens = counts.tokens.astype(np.float64)
    if (tokens <= 0).any():
        empty = [lang for lang, n in zip(counts.languages, tokens, strict=True) if n <= 0]
        raise XlalignError(f"no real tokens counted for {', '.join(empty)}")
    probs = counts.counts.astype(np.float64) / tokens
    total = probs.sum(axis=-1, keepdims=True)
    normed = np.divide(probs, total, out=np.zeros_like(probs), where=total > 0)
    logs = np.log(normed, out=np.zeros_like(normed), where=normed > 0)
    entropy = -(normed * logs).sum(axis=-1)
    filter_value = kth_smallest(probs, cfg.filter_rate)
    entropy[~(probs > filter_value).any(axis=-1)] = np.inf
    n_top = round(entropy.size * cfg.top_rate)
    order = np.argsort(entropy.ravel(), kind="stable")[:n_top]
    order = order[np.isfinite(entropy.ravel()[order])]
    n_neurons = entropy.shape[1]
    selected = np.stack([order // n_neurons, order % n_neurons], axis=1).astype(np.int64)
    bar_value = kth_smallest(probs, cfg.activation_bar)
    members: dict[str, np.ndarray] = {}
    for k, lang in enumerate(counts.languages):
        mine = selected[probs[selected[:, 0], selected[:, 1], k] > bar_value]
        members[lang] = mine[np.lexsort((mine[:, 1], mine[:, 0]))] if len(mine) else mine
    return Selection(probs, entropy, filter_value, bar_value, n_top, selected, members)


def jaccard(a: np.ndarray, b: np.ndarray) -> float | None:
    """``|A & B| / |A | B|`` of two sets of ``(layer, neuron)`` rows; None when both are empty."""
    sa = {tuple(r) for r in np.asarray(a).tolist()}
    sb = {tuple(r) for r in np.asarray(b).tolist()}
    union = sa | sb
    return len(sa & sb) / len(union) if union else None


def chance_jaccard(a: int, b: int, n: int) -> float | None:
    """The Jaccard overlap two random sets of ``a`` and ``b`` of ``n`` neurons have, to first
    order: the expected intersection ``a b / n`` over the union it leaves (None when both are
    empty). The baseline beside the halves' overlap."""
    if a + b == 0:
        return None
    inter = a * b / n
    return inter / (a + b - inter)


# ---------------------------------------------------------------------------------------------
# ablation


@contextmanager
def ablated(acts: MlpActivations, neurons: np.ndarray | None) -> Iterator[None]:
    """Zero the activations of ``neurons`` (``(n, 2)`` rows of ``(layer, neuron)``) meanwhile."""
    handles = []
    if neurons is not None and len(neurons):
        by_layer: dict[int, list[int]] = {}
        for layer, i in np.asarray(neurons).tolist():
            by_layer.setdefault(int(layer), []).append(int(i))
        for layer, idx in by_layer.items():
            index = torch.tensor(sorted(idx), dtype=torch.long)

            def hook(module: torch.nn.Module, args: Any, out: torch.Tensor, index=index) -> Any:
                out = out.clone()
                out[..., index.to(out.device)] = 0
                return out

            handles.append(acts.modules[layer].register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def token_nll(
    loaded: LoadedModel,
    data: TokenData,
    rows: np.ndarray,
    *,
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the summed negative log-likelihood of its tokens, and how many were predicted.

    A token is predicted when it and the token before it are real and it is not a special
    token; logits in float32.
    """
    model = loaded.model
    nll = np.zeros(len(rows), dtype=np.float64)
    count = np.zeros(len(rows), dtype=np.int64)
    params = forward_params(loaded)
    at = {int(r): k for k, r in enumerate(rows)}
    with torch.inference_mode():
        for idx in plan_batches(data.lengths[rows], batch_size):
            batch_rows = np.asarray(rows)[idx]
            batch = _right_padded(loaded, data, batch_rows)
            kwargs = forward_kwargs(loaded, batch, "right", params)
            logits = model(**kwargs).logits
            real = batch.attention_mask.bool().to(logits.device)
            target = batch.input_ids.to(logits.device)[:, 1:]
            keep = real[:, 1:] & real[:, :-1] & ~batch.special.to(logits.device)[:, 1:]
            sums = np.zeros(len(batch_rows))
            for b in range(len(batch_rows)):  # one row's float32 log-softmax at a time
                logp = torch.log_softmax(logits[b, :-1].float(), dim=-1)
                picked = -logp.gather(-1, target[b, :, None])[:, 0]
                sums[b] = float(torch.where(keep[b], picked, 0.0).double().sum())
            ns = keep.sum(dim=1).cpu().numpy()
            for b, r in enumerate(batch_rows.tolist()):
                nll[at[r]], count[at[r]] = sums[b], ns[b]
    return nll, count


def random_like(
    neurons: np.ndarray, n_neurons: int, seed: int, exclude: np.ndarray | None = None
) -> np.ndarray:
    """As many random neurons as ``neurons`` holds in each layer, drawn from that layer.

    Never one of ``exclude``'s; ``(n, 2)`` rows of ``(layer, neuron)``, sorted.
    """
    rng = np.random.default_rng(seed)
    taken = {tuple(r) for r in np.asarray(exclude if exclude is not None else []).tolist()}
    out: list[tuple[int, int]] = []
    if not len(neurons):
        return np.zeros((0, 2), dtype=np.int64)
    layers, per = np.unique(np.asarray(neurons)[:, 0], return_counts=True)
    for layer, k in zip(layers.tolist(), per.tolist(), strict=True):
        free = np.array([i for i in range(n_neurons) if (int(layer), i) not in taken])
        if len(free) < k:
            raise XlalignError(f"layer {layer} has too few other neurons for a random control")
        out += [(int(layer), int(i)) for i in np.sort(rng.choice(free, size=int(k), replace=False))]
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def paired_delta(
    base: tuple[np.ndarray, np.ndarray],
    changed: tuple[np.ndarray, np.ndarray],
    n_boot: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, Any]:
    """Token-weighted mean NLL change ``sum(changed - base) / sum(tokens)`` with a bootstrap CI.

    Resamples prompts (rows) with replacement, the same rows for both; percentile interval.
    """
    nll0, n0 = base
    nll1, n1 = changed
    if not np.array_equal(n0, n1):
        raise XlalignError("the ablated and unablated passes predicted different tokens")
    total = n0.sum()
    if total == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "undefined_reason": "no tokens"}
    diff = nll1 - nll0
    value = float(diff.sum() / total)
    low = high = None
    if n_boot > 0 and len(diff) > 1:
        rng = np.random.default_rng(seed)
        draws = np.empty(n_boot)
        for b in range(n_boot):
            pick = rng.integers(0, len(diff), len(diff))
            t = n0[pick].sum()
            draws[b] = diff[pick].sum() / t if t else np.nan
        draws = draws[np.isfinite(draws)]
        alpha = (1 - level) / 2
        low, high = (float(np.quantile(draws, q)) for q in (alpha, 1 - alpha))
    return {"value": value, "ci_low": low, "ci_high": high}


# ---------------------------------------------------------------------------------------------
# the study


def split_rows(n_rows: int, heldout: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(selection half a, selection half b, held-out)`` row indices; seeded.

    The halves are sorted; the held-out rows are in random order, so any prefix of them (the
    ``max_eval`` evaluated) is a random subset. Raises when a part would be empty.
    """
    order = np.random.default_rng(seed).permutation(n_rows)
    n_held = max(1, round(n_rows * heldout))
    held, sel = order[:n_held], order[n_held:]
    half = len(sel) // 2
    if half < 1 or n_held < 1:
        raise XlalignError(
            f"{n_rows} rows with --heldout {heldout} leave {len(sel)} for selection; each "
            "selection half needs a row: use more rows or a smaller --heldout"
        )
    return np.sort(sel[:half]), np.sort(sel[half:]), held


def neuron_study(
    loaded: LoadedModel,
    corpus: ParallelCorpus,
    langs: Sequence[str],
    config: NeuronsConfig | None = None,
    *,
    progress: bool = False,
) -> tuple[dict[str, Any], Selection]:
    """The whole study on a loaded model: counts, LAPE, halves' stability, ablation, findings.

    Returns the ``neurons.json`` document and the selection on all selection rows.
    """
    cfg = config or NeuronsConfig()
    langs = list(langs)
    if len(langs) < 2:
        raise XlalignError(f"the neuron study compares languages: give two or more, got {langs}")
    if len(corpus) < 4:
        raise XlalignError(f"the neuron study needs at least 4 rows, the corpus has {len(corpus)}")
    acts = mlp_activations(loaded.adapter)
    started = time.perf_counter()
    tokens = {lang: tokenize(loaded.tokenizer, corpus.text(lang)) for lang in langs}
    half_a, half_b, held = split_rows(len(corpus), cfg.heldout, cfg.seed)
    count_a, count_b = count_activations(
        loaded, tokens, [half_a, half_b], batch_size=cfg.batch_size, progress=progress
    )
    count_s = time.perf_counter() - started
    counts = count_a + count_b
    sel = lape(counts, cfg)
    sel_a, sel_b = lape(count_a, cfg), lape(count_b, cfg)
    n_layers, n_neurons = sel.entropy.shape
    records = []
    for lang in langs:
        for layer in range(n_layers):
            records.append(
                {
                    "layer": layer,
                    "lang": lang,
                    "n_selected": int((sel.members[lang][:, 0] == layer).sum()),
                    "jaccard_halves": jaccard(
                        sel_a.members[lang][sel_a.members[lang][:, 0] == layer],
                        sel_b.members[lang][sel_b.members[lang][:, 0] == layer],
                    ),
                }
            )
    stability = {
        lang: {
            "jaccard": jaccard(sel_a.members[lang], sel_b.members[lang]),
            "jaccard_chance": chance_jaccard(
                len(sel_a.members[lang]), len(sel_b.members[lang]), n_layers * n_neurons
            ),
            "n_half_a": len(sel_a.members[lang]),
            "n_half_b": len(sel_b.members[lang]),
        }
        for lang in langs
    }
    warnings: list[str] = []
    ablation: list[dict[str, Any]] = []
    eval_rows = np.sort(held if cfg.max_eval is None else held[: cfg.max_eval])
    note = None
    ablate_s = 0.0
    if cfg.ablate and not loaded.is_causal_lm:
        note = f"no ablation: {type(loaded.model).__name__} is not a causal LM (no NLL to measure)"
    elif cfg.ablate:
        t0 = time.perf_counter()
        ablation = _ablation(loaded, acts, tokens, langs, sel, eval_rows, n_neurons, cfg, progress)
        ablate_s = time.perf_counter() - t0
        small = small_sample_warning(len(eval_rows), "held-out prompts per language")
        if small is not None:
            warnings.append(small)
    else:
        note = "no ablation: not asked for"
    findings = ablation_findings(langs, sel, ablation, note)
    for lang in langs:
        j = stability[lang]["jaccard"]
        if j is not None and j < 0.5:
            warnings.append(
                f"{lang}: the two halves' sets overlap little (Jaccard {j:.2f}): the selection "
                "depends on the sample as much as on the model"
            )
    doc = {
        "format": FORMAT,
        "model": loaded.model_id,
        "languages": langs,
        "n_layers": n_layers,
        "n_neurons": n_neurons,
        "activation": {"module": acts.path, "gated": acts.gated},
        "settings": cfg.to_json(),
        "rows": {
            "selection": len(half_a) + len(half_b),
            "half_a": len(half_a),
            "half_b": len(half_b),
            "heldout": len(held),
            "evaluated": len(eval_rows),
            "heldout_ids": [corpus.ids[int(i)] for i in eval_rows],
        },
        "n_tokens": dict(zip(langs, counts.tokens.tolist(), strict=True)),
        "thresholds": {
            "filter_value": sel.filter_value,
            "activation_bar_value": sel.bar_value,
            "n_top": sel.n_top,
            "n_candidates": int(np.isfinite(sel.entropy).sum()),
            "n_selected": len(sel.selected),
        },
        "selected": {lang: len(sel.members[lang]) for lang in langs},
        "records": records,
        "stability": stability,
        "ablation": ablation,
        "findings": findings,
        "headline": _headline(findings),
        "warnings": warnings,
        "timings": {"count_s": round(count_s, 3), "ablation_s": round(ablate_s, 3)},
    }
    return doc, sel


def _ablation(
    loaded: LoadedModel,
    acts: MlpActivations,
    tokens: Mapping[str, TokenData],
    langs: list[str],
    sel: Selection,
    rows: np.ndarray,
    n_neurons: int,
    cfg: NeuronsConfig,
    progress: bool,
) -> list[dict[str, Any]]:
    """NLL of every language's held-out prompts: unablated, each set ablated, random controls."""
    sets: list[tuple[str, str, int | None, np.ndarray | None]] = [("none", "none", None, None)]
    for lang in langs:
        mine = sel.members[lang]
        if len(mine):  # an empty set ablates nothing: its verdict is no-neurons
            sets.append((lang, "language", None, mine))
            for s in cfg.control_seeds:
                sets.append((lang, "random", s, random_like(mine, n_neurons, s, exclude=mine)))
    bar = _bar(len(sets) * len(langs) * len(rows), "ablation", progress)
    base: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    out = []
    try:
        for ablated_lang, kind, seed, neurons in sets:
            for lang in langs:
                with ablated(acts, neurons):
                    result = token_nll(loaded, tokens[lang], rows, batch_size=cfg.batch_size)
                bar.update(len(rows))
                if kind == "none":
                    base[lang] = result
                n_tok = int(result[1].sum())
                mean = float(result[0].sum() / n_tok) if n_tok else None
                rec: dict[str, Any] = {
                    "ablated": ablated_lang,
                    "kind": kind,
                    "seed": seed,
                    "n_ablated": 0 if neurons is None else len(neurons),
                    "evaluated": lang,
                    "n_prompts": len(rows),
                    "n_tokens": n_tok,
                    "nll": mean,
                    "ppl": math.exp(mean) if mean is not None and mean < 700 else None,
                }
                if kind != "none":
                    rec["delta_nll"] = paired_delta(base[lang], result, cfg.n_boot, cfg.seed)
                out.append(rec)
    finally:
        bar.close()
    return out


def ablation_findings(
    langs: Sequence[str],
    sel: Selection,
    ablation: Sequence[Mapping[str, Any]],
    note: str | None = None,
) -> list[dict[str, Any]]:
    """One finding per language: does ablating its neurons hurt it, and beyond random ones?

    ``delta`` is the NLL change on the language's own held-out prompts. Verdicts, in order:
    ``no-neurons`` (none selected), ``no-ablation`` (no causal test ran, or no token of the
    language's held-out prompts was predicted), ``matched-by-control``
    (the interval's lower end does not exceed the largest random-neuron control's change),
    ``not-language-specific`` (ablating them raises another language's NLL as much or more),
    ``beyond-control`` (neither).
    """
    by = {(r["ablated"], r["kind"], r.get("seed"), r["evaluated"]): r for r in ablation}
    findings = []
    for lang in langs:
        n = len(sel.members[lang])
        own = (by.get((lang, "language", None, lang)) or {}).get("delta_nll") or {}
        others = {
            o: ((by.get((lang, "language", None, o)) or {}).get("delta_nll") or {}).get("value")
            for o in langs
            if o != lang
        }
        controls: list[float] = [
            float(v)
            for (a, kind, _s, ev), r in by.items()
            if a == lang and kind == "random" and ev == lang
            and (v := (r.get("delta_nll") or {}).get("value")) is not None
        ]  # fmt: skip
        raw = own.get("value")
        value = float(raw) if isinstance(raw, (int, float)) else None
        if n == 0:
            verdict = "no-neurons"
            why = "LAPE selected no neuron for it"
        elif not ablation or value is None:
            verdict = "no-ablation"
            why = note or "its held-out prompts have no predicted token"
        else:
            low = float(own["ci_low"]) if own.get("ci_low") is not None else value
            top = max(controls) if controls else None
            worst_other = max((float(v) for v in others.values() if v is not None), default=None)
            if top is None or low <= top:
                verdict = "matched-by-control"
                why = (
                    f"ablating as many random neurons of the same layers raises {lang} NLL by up to "
                    f"{_f(top)}, against {_f(value)} [{_f(own.get('ci_low'))}, "
                    f"{_f(own.get('ci_high'))}]"
                )
            elif worst_other is not None and worst_other >= value:
                verdict = "not-language-specific"
                why = f"ablating them raises another language's NLL as much ({_f(worst_other)})"
            else:
                verdict = "beyond-control"
                why = (
                    f"{lang} NLL rises by {_f(value)} [{_f(own.get('ci_low'))}, "
                    f"{_f(own.get('ci_high'))}], above every random control (at most {_f(top)}) "
                    "and above the other languages"
                )
        findings.append(
            {
                "lang": lang,
                "metric": "delta_nll",
                "n_selected": n,
                "model": own or None,
                "control": {"value": max(controls) if controls else None, "values": controls},
                "others": others,
                "verdict": verdict,
                "statement": f"{lang} neurons ({n}): {why} -> {verdict}",
            }
        )
    return findings


def _headline(findings: Sequence[Mapping[str, Any]]) -> str:
    parts = [f"{f['lang']} {f['verdict']}" for f in findings]
    return "language-specific neurons, ablation against random neurons: " + ", ".join(parts)


def _f(v: Any) -> str:
    return f"{float(v):.3f}" if isinstance(v, (int, float)) else "undefined"


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="prompt", disable=not enabled, dynamic_ncols=True)


def write_neurons(doc: Mapping[str, Any], sel: Selection, out: Path) -> dict[str, Path]:
    """``neurons.json``, ``neurons/<lang>.npy`` and ``neurons/activation_probs.npy`` in ``out``."""
    folder = out / NEURONS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for lang, rows in sel.members.items():
        path = folder / f"{lang}.npy"
        np.save(path, np.asarray(rows, dtype=np.int64).reshape(-1, 2), allow_pickle=False)
        paths[f"neurons_{lang}"] = path
    probs = folder / "activation_probs.npy"
    np.save(probs, sel.probs.astype(np.float32), allow_pickle=False)
    paths["activation_probs"] = probs
    files = {lang: f"{NEURONS_DIR}/{lang}.npy" for lang in sel.members}
    full = {**doc, "files": {**files, "activation_probs": f"{NEURONS_DIR}/activation_probs.npy"}}
    atomic_write_json(out / NEURONS_FILE, full)
    paths["json"] = out / NEURONS_FILE
    return paths


def summary_lines(doc: Mapping[str, Any]) -> list[str]:
    """The console summary: the headline, selected counts, halves' overlap, each finding."""
    lines = [str(doc.get("headline"))]
    stab = doc.get("stability") or {}
    for lang in doc.get("languages") or []:
        j = (stab.get(lang) or {}).get("jaccard")
        chance = (stab.get(lang) or {}).get("jaccard_chance")
        lines.append(
            f"  {lang}: {(doc.get('selected') or {}).get(lang, 0)} neurons; halves' Jaccard "
            + (f"{_f(j)} (random sets of these sizes: {_f(chance)})" if j is not None
               else "undefined (both empty)")
        )  # fmt: skip
    lines += [f"  {f['statement']}" for f in doc.get("findings") or []]
    lines += [f"warning: {w}" for w in doc.get("warnings") or []]
    return lines
