"""The logit lens by language: what each layer's last-token state would predict, by token class.

Wendler et al. 2024, "Do Llamas Work in English? On the Latent Language of Multilingual
Transformers" (code: github.com/epfl-dlab/llm-latent-language), decode every layer's
last-token state through the model's final norm and unembedding (nostalgebraist's "logit
lens") and find that for non-English prompts the middle layers put their probability on the
English word; the output language wins only in the last layers. This module measures that on a
run's stored vectors, for every site, language and prompt:

- ``class_mass``: the probability mass on tokens of each class of :mod:`xlalign.data.tokens`
  (``cjk``, ``latin``, ``digit``, ``punct``, ``space``, ``special``, ``partial``, ``other``);
- ``entropy`` of the decoded distribution (nats);
- ``top``: the ``top_k`` tokens with their probabilities;
- with answer columns (``answer_<lang>`` in the corpus, e.g. ``answer_zh``, ``answer_en``):
  ``answer_prob`` and ``answer_rank`` of the first token of each language's answer.

How a site is decoded (``logits = head(norm(h))``):

- ``embed`` and ``L0`` .. ``L{n-1}`` hold raw residual-stream states: the final norm is applied,
  then the LM head. At ``L{n-1}`` this is exactly the model's own next-token distribution.
- ``final`` is already the output of the final norm: only the LM head is applied (applying the
  norm twice would change the distribution). Its decoding equals that of ``L{n-1}``.

Nothing runs the model: the norm and the head (the model's own modules, loaded from the run's
model) are applied to the stored ``last`` vectors, one batched matmul per site (in row chunks
that bound memory for large vocabularies). The random-weights control is decoded through its
own (random) norm and head; the model-free baseline is a uniform distribution over the
vocabulary, whose class mass is each class's share of the vocabulary (``vocab_share``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xlalign.data.tokens import TOKEN_CLASSES, decode_token, vocabulary_classes
from xlalign.errors import RunError, XlalignError
from xlalign.models.fingerprints import same_weights
from xlalign.models.loading import (
    LensModules,
    LoadedModel,
    lens_modules,
    load_model,
    resolve_source,
)
from xlalign.report.lens import answer_label
from xlalign.store.files import CONTROL_DIR, MANIFEST, atomic_write_json
from xlalign.store.lock import folder_lock, reading
from xlalign.store.run import (
    Run,
    check_finite,
    load_control,
    load_run,
    model_source,
    weights_label,
)
from xlalign.store.sites import FINAL

LENS_FILE = "lens.json"
#: Corpus metadata columns ``answer_<lang>`` hold the expected answer of a prompt in ``<lang>``.
ANSWER_PREFIX = "answer_"
#: Logits computed per matmul at most (rows x vocabulary): bounds memory on 150k vocabularies.
CHUNK_ELEMENTS = 1 << 25


@dataclass(frozen=True)
class LensConfig:
    """Options of the lens study (the fields mirror ``xlalign lens``'s flags)."""

    pool: str = "last"
    """Pooled vectors to decode (the lens reads the state that predicts the next token)."""
    sites: tuple[str, ...] | None = None
    """Sites to decode (default: every site of the run)."""
    langs: tuple[str, ...] | None = None
    """Prompt languages (default: every language of the run)."""
    top_k: int = 5
    """Tokens kept per prompt and site, with their probabilities."""
    n_boot: int = 200
    """Bootstrap resamples (over prompts) for the confidence intervals of the means."""
    seed: int = 42
    """Seed of the bootstrap."""
    level: float = 0.95
    """Confidence level of the intervals."""
    device: str = "cpu"
    """Where the norm and head run: cpu, cuda or auto."""
    model: str | None = None
    """The model to decode through, when it moved since the run (checked by fingerprint)."""

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise XlalignError(f"--top-k must be at least 1, got {self.top_k}")
        if self.n_boot < 1:
            raise XlalignError(f"--n-boot must be at least 1, got {self.n_boot}")
        if self.seed < 0:
            raise XlalignError(f"--seed must be 0 or more, got {self.seed}")
        if not 0 < self.level < 1:
            raise XlalignError(f"the confidence level must be in (0, 1), got {self.level}")


# ---------------------------------------------------------------------------------------------
# decoding


@dataclass
class SiteDecoding:
    """The lens at one site for ``n`` prompts (arrays, float64 where they are probabilities).

    ``class_mass`` ``(n, n_classes)``; ``entropy`` ``(n,)``; ``top_ids``/``top_probs``
    ``(n, top_k)``; ``answer_prob``/``answer_rank`` ``(n, n_answers)`` (NaN / -1 where a row has
    no answer in that language).
    """

    class_mass: np.ndarray
    entropy: np.ndarray
    top_ids: np.ndarray
    top_probs: np.ndarray
    answer_prob: np.ndarray
    answer_rank: np.ndarray


class LensDecoder:
    """Applies a model's final norm and LM head to stored hidden states, in float32.

    ``class_codes`` ``(vocab,)`` gives each vocabulary id's index into :data:`TOKEN_CLASSES`
    (see :func:`xlalign.data.tokens.vocabulary_classes`).
    """

    def __init__(
        self, modules: LensModules, class_codes: np.ndarray, device: str | torch.device = "cpu"
    ) -> None:
        self.device = torch.device(device)
        self.norm = (
            copy.deepcopy(modules.final_norm).float().to(self.device).eval()
            if modules.final_norm is not None
            else None
        )
        self.head = copy.deepcopy(modules.head).float().to(self.device).eval()
        self.logit_scale = modules.logit_scale
        self.softcap = modules.softcap
        self.vocab_size = modules.vocab_size
        if len(class_codes) != self.vocab_size:
            raise XlalignError(
                f"{len(class_codes)} token classes for an unembedding of {self.vocab_size} rows"
            )
        codes = torch.as_tensor(np.asarray(class_codes, dtype=np.int64), device=self.device)
        self.onehot = torch.nn.functional.one_hot(codes, len(TOKEN_CLASSES)).float()

    @torch.no_grad()
    def logits(self, hidden: np.ndarray | torch.Tensor, *, normed: bool) -> torch.Tensor:
        """``(n, vocab)`` float32 logits of ``hidden`` ``(n, d_model)``.

        ``normed``: the states are already after the final norm (site ``final``), so the norm
        is not applied again.
        """
        h = torch.as_tensor(np.asarray(hidden, dtype=np.float32), device=self.device)
        if not normed and self.norm is not None:
            h = self.norm(h)
        out = self.head(h).float()
        if self.logit_scale is not None:
            out = out * self.logit_scale
        if self.softcap is not None:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out

    @torch.no_grad()
    def decode(
        self,
        hidden: np.ndarray,
        *,
        normed: bool,
        top_k: int = 5,
        answer_ids: np.ndarray | None = None,
    ) -> SiteDecoding:
        """The lens quantities of ``hidden`` ``(n, d_model)`` (see :class:`SiteDecoding`).

        ``answer_ids`` ``(n, n_answers)`` int: the token whose probability and rank to report
        per row, -1 for none. Rows go through the head in chunks of at most
        :data:`CHUNK_ELEMENTS` logits, one matmul each.
        """
        n = len(hidden)
        answers = (
            np.full((n, 0), -1, dtype=np.int64)
            if answer_ids is None
            else np.asarray(answer_ids, dtype=np.int64)
        )
        k = min(top_k, self.vocab_size)
        step = max(1, CHUNK_ELEMENTS // self.vocab_size)
        parts: list[tuple[np.ndarray, ...]] = []
        for lo in range(0, n, step):
            logits = self.logits(hidden[lo : lo + step], normed=normed)
            logp = torch.log_softmax(logits, dim=-1)
            p = logp.exp()
            mass = p @ self.onehot
            entropy = torch.special.entr(p).sum(dim=-1)
            top_p, top_i = torch.topk(p, k, dim=-1)
            ans = torch.as_tensor(answers[lo : lo + step], device=self.device)
            have = ans >= 0
            safe = ans.clamp(min=0)
            ans_p = torch.where(have, p.gather(1, safe), torch.nan)
            ans_logit = logits.gather(1, safe)
            # rank 1 = the most probable token; ties count in the answer's favour
            greater = (logits[:, None, :] > ans_logit[:, :, None]).sum(dim=-1) + 1
            ans_rank = torch.where(have, greater, -1)
            parts.append(
                tuple(t.cpu().numpy() for t in (mass, entropy, top_i, top_p, ans_p, ans_rank))
            )
        if not parts:
            empty = np.zeros((0, len(TOKEN_CLASSES)))
            return SiteDecoding(
                empty, np.zeros(0), np.zeros((0, k), np.int64), np.zeros((0, k)),
                np.zeros((0, answers.shape[1])), np.zeros((0, answers.shape[1]), np.int64),
            )  # fmt: skip
        cols = [np.concatenate([p[j] for p in parts]) for j in range(6)]
        return SiteDecoding(
            class_mass=cols[0].astype(np.float64),
            entropy=cols[1].astype(np.float64),
            top_ids=cols[2].astype(np.int64),
            top_probs=cols[3].astype(np.float64),
            answer_prob=cols[4].astype(np.float64),
            answer_rank=cols[5].astype(np.int64),
        )


def load_run_model(
    run: Run, device: str = "cpu", *, model: str | None = None, purpose: str = "the logit lens"
) -> LoadedModel:
    """The causal LM a run was made from, checked to be the model the run saw.

    Loads ``manifest["model"]`` (or ``model``, a moved copy) with the run's revision, dtype and
    random-init seed, and checks the weights' fingerprint and the hidden size. ``purpose``
    names what needs the model in the error for a run of an encoder.
    """
    m = run.manifest
    if not m.get("is_causal_lm"):
        need = (
            "it has no LM head for the logit lens to decode through"
            if purpose == "the logit lens"
            else f"{purpose} needs one"
        )
        raise RunError(
            f"run '{run.path}' is of {m.get('architecture') or 'a model'} "
            f"({m.get('model')}), not a causal language model: {need}"
        )
    loaded = load_model(
        model_source(m, model),
        dtype=m.get("dtype"),
        device=device,
        revision=m.get("revision"),
        random_init_seed=m.get("random_init_seed"),
    )
    fp = m.get("weights_fingerprint")
    local = resolve_source(model_source(m, model))[0]  # a named model or GGUF file: its folder
    changed = (
        not same_weights(fp, local)[0]
        if fp and fp.startswith("sha256-sampled:") and local.is_dir()
        else bool(fp and loaded.weights_fingerprint and fp != loaded.weights_fingerprint)
    )
    if changed:
        raise RunError(
            f"the weights at '{m['model']}' changed since run '{run.path}' was made "
            "(weights fingerprint differs); extract the run again"
        )
    if loaded.d_model != run.d_model:
        raise RunError(
            f"model '{m['model']}' has hidden size {loaded.d_model}, run '{run.path}' holds "
            f"vectors of size {run.d_model}: not the run's model"
        )
    return loaded


def load_decoder(
    run: Run, device: str = "cpu", *, tokenizer: Any = None, model: str | None = None
) -> LensDecoder:
    """The :class:`LensDecoder` of the model a run was made from (its control: same seed).

    Loads the run's model (:func:`load_run_model`: same revision, dtype and random-init seed,
    checked against the run's fingerprint and hidden size) and keeps its final norm and LM head.
    """
    loaded = load_run_model(run, device, model=model)
    modules = lens_modules(loaded)
    tok = tokenizer if tokenizer is not None else run.tokenizer()
    codes = vocabulary_classes(tok, modules.vocab_size)
    decoder = LensDecoder(modules, codes, device=loaded.device)
    del loaded
    return decoder


# ---------------------------------------------------------------------------------------------
# answers


def answer_columns(run: Run) -> dict[str, list[Any]]:
    """``{lang: answers}`` from the run's ``answer_<lang>`` metadata columns, in row order."""
    return {
        name[len(ANSWER_PREFIX) :]: list(values)
        for name, values in run.meta.items()
        if name.startswith(ANSWER_PREFIX) and len(name) > len(ANSWER_PREFIX)
    }


#: What an answer's probability measures in a prompt: the prompt's own answer, or another
#: language's word that the prompt holds (copying it is one way to score), or one it does not
#: hold (only the model's own representation can raise it: the latent language).
ROLES = ("target", "in the prompt", "not in the prompt")


def answer_roles(
    run: Run,
    langs: Sequence[str],
    answers: Mapping[str, Sequence[Any]],
    tokenizer: Any,
) -> dict[str, Any]:
    """``{"in_prompt": {lang: {a: share}}, "roles": {lang: {a: role}}}``: for the prompts of
    each language, the share whose text (decoded from the run's token ids, special tokens
    left out) holds answer ``a``'s text, and its role (:data:`ROLES`): ``target`` when ``a``
    is the prompt's language, else ``in the prompt`` when most prompts hold it
    (translate-words: the source word, so its probability mixes in copying), else ``not in
    the prompt`` (cloze-words: the latent language). Texts, not token ids, are compared: a
    SentencePiece tokenizer gives a word alone another token than after a quote."""
    in_prompt: dict[str, dict[str, float | None]] = {}
    roles: dict[str, dict[str, str]] = {}
    for lang in langs:
        try:
            prompts = [
                str(tokenizer.decode(t, skip_special_tokens=True)) for t in run.token_ids(lang)
            ]
        except (OSError, RunError):
            continue
        in_prompt[lang], roles[lang] = {}, {}
        for a, texts in answers.items():
            rows = [(p, str(t)) for p, t in zip(prompts, texts, strict=True) if t]
            share = float(np.mean([t in p for p, t in rows])) if rows else None
            in_prompt[lang][a] = share
            roles[lang][a] = (
                "target"
                if a == lang
                else "in the prompt"
                if share is not None and share >= 0.5
                else "not in the prompt"
            )
    return {"in_prompt": in_prompt, "roles": roles}


def answer_token_ids(tokenizer: Any, answers: Mapping[str, Sequence[Any]]) -> np.ndarray:
    """``(n_rows, n_answer_langs)`` int64: first token id of each answer, -1 where none.

    The answer is tokenised on its own, without special tokens, as written in the column (a
    prompt that expects a space before its answer needs the space in the column).
    """
    langs = list(answers)
    n = len(next(iter(answers.values()))) if answers else 0
    out = np.full((n, len(langs)), -1, dtype=np.int64)
    for j, lang in enumerate(langs):
        for i, text in enumerate(answers[lang]):
            if not isinstance(text, str) or not text:
                continue
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if ids:
                out[i, j] = int(ids[0])
    return out


# ---------------------------------------------------------------------------------------------
# the study


def _g(x: float) -> float | None:
    """Seven significant digits (float32 precision) for JSON; NaN -> None."""
    return None if not np.isfinite(x) else float(f"{float(x):.7g}")


def mean_ci(
    values: np.ndarray, n_boot: int, seed: int, level: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, low, high)`` over axis 0 of ``values`` ``(n, m)``: percentile bootstrap.

    One draw of ``n_boot x n`` row indices (``np.random.default_rng(seed)``) serves every
    column, so the intervals of the classes come from the same resamples.
    """
    n = len(values)
    mean = values.mean(axis=0)
    if n < 2:
        return mean, mean.copy(), mean.copy()
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    boots = values[idx].mean(axis=1)
    low, high = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return mean, low, high


def lens_study(
    run: Run,
    config: LensConfig | None = None,
    *,
    decoder: LensDecoder | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The lens of every site, language and prompt of ``run``: the ``lens.json`` document.

    Keys: ``model``, ``pool``, ``sites``, ``languages``, ``n_rows``, ``classes``,
    ``vocab_share`` (the model-free baseline), ``decoding`` (how each site was decoded),
    ``answers`` (answer languages and token ids, or None), ``records`` (one per site, language
    and prompt) and ``summaries`` (one per site and language: mean class mass, entropy and
    answer probability with bootstrap CIs, and the commonest top-1 token).
    """
    cfg = config or LensConfig()
    if cfg.pool not in run.pools:
        raise RunError(
            f"pool '{cfg.pool}' not in run '{run.path}': it has {', '.join(run.pools)}; the "
            "lens decodes the last-token state (extract with --pool last)"
        )
    sites = list(cfg.sites) if cfg.sites else list(run.sites)
    langs = list(cfg.langs) if cfg.langs else list(run.languages)
    for site in sites:
        run._check(langs[0], site, cfg.pool)
    for lang in langs:
        run._check(lang, sites[0], cfg.pool)
    tokenizer = run.tokenizer()
    dec = (
        decoder
        if decoder is not None
        else load_decoder(run, cfg.device, tokenizer=tokenizer, model=cfg.model)
    )
    answers = answer_columns(run)
    answer_langs = list(answers)
    ans_ids = answer_token_ids(tokenizer, answers) if answers else None
    class_share = np.bincount(
        np.argmax(dec.onehot.cpu().numpy(), axis=1), minlength=len(TOKEN_CLASSES)
    ) / float(dec.vocab_size)

    records: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    ids = run.ids
    n = run.n_rows
    texts: dict[int, str] = {}

    def text_of(token_id: int) -> str:
        if token_id not in texts:
            texts[token_id] = decode_token(tokenizer, token_id) if token_id < len(tokenizer) else ""
        return texts[token_id]

    bar = _bar(len(sites), progress)
    for site in sites:
        normed = site == FINAL
        arrays = [np.asarray(run.array(lang, site, cfg.pool)) for lang in langs]
        for lang, arr in zip(langs, arrays, strict=True):  # a NaN row is named, never averaged
            check_finite(run, lang, site, cfg.pool, arr)
        stacked = np.concatenate(arrays)
        tiled = None if ans_ids is None else np.tile(ans_ids, (len(langs), 1))
        d = dec.decode(stacked, normed=normed, top_k=cfg.top_k, answer_ids=tiled)
        for j, lang in enumerate(langs):
            rows = slice(j * n, (j + 1) * n)
            part = SiteDecoding(
                d.class_mass[rows], d.entropy[rows], d.top_ids[rows], d.top_probs[rows],
                d.answer_prob[rows], d.answer_rank[rows],
            )  # fmt: skip
            records += _records(site, lang, ids, part, answer_langs)
            summaries.append(_summary(site, lang, part, answer_langs, cfg, text_of))
        bar(1)
    bar(0, close=True)
    m = run.manifest
    return {
        "model": m.get("model"),
        "random_init_seed": m.get("random_init_seed"),
        "run": str(run.path),
        "run_fingerprint": run.fingerprint,
        "pool": cfg.pool,
        "sites": sites,
        "languages": langs,
        "n_rows": n,
        "classes": list(TOKEN_CLASSES),
        "vocab_rows": dec.vocab_size,
        "tokenizer_size": len(tokenizer),
        "vocab_share": {c: _g(v) for c, v in zip(TOKEN_CLASSES, class_share, strict=True)},
        "decoding": {site: _decoding_note(site, dec) for site in sites},
        "answers": None
        if ans_ids is None
        else {
            "languages": answer_langs,
            "rows_with_answer": {
                a: int((ans_ids[:, k] >= 0).sum()) for k, a in enumerate(answer_langs)
            },
            "token_ids": {a: ans_ids[:, k].tolist() for k, a in enumerate(answer_langs)},
            "note": "first token of each answer, tokenised alone without special tokens",
            **answer_roles(run, langs, answers, tokenizer),
        },
        "entropy_unit": "nats",
        "bootstrap": {"n_boot": cfg.n_boot, "seed": cfg.seed, "level": cfg.level},
        "records": records,
        "summaries": summaries,
    }


def _decoding_note(site: str, dec: LensDecoder) -> str:
    if site == FINAL:
        return "LM head only: the site is the final norm's output already"
    if dec.norm is None:
        return "LM head only: the model has no final norm"
    return "final norm, then LM head"


def _records(
    site: str,
    lang: str,
    ids: Sequence[str],
    part: SiteDecoding,
    answer_langs: Sequence[str],
) -> list[dict[str, Any]]:
    out = []
    for i, row_id in enumerate(ids):
        rec: dict[str, Any] = {
            "site": site,
            "lang": lang,
            "id": row_id,
            "class_mass": {
                c: _g(v) for c, v in zip(TOKEN_CLASSES, part.class_mass[i], strict=True)
            },
            "entropy": _g(part.entropy[i]),
            "top": [
                [int(t), _g(p)] for t, p in zip(part.top_ids[i], part.top_probs[i], strict=True)
            ],
        }
        if answer_langs:
            have = part.answer_rank[i] >= 0
            rec["answer_prob"] = {
                a: _g(part.answer_prob[i, k]) for k, a in enumerate(answer_langs) if have[k]
            }
            rec["answer_rank"] = {
                a: int(part.answer_rank[i, k]) for k, a in enumerate(answer_langs) if have[k]
            }
        out.append(rec)
    return out


def _summary(
    site: str,
    lang: str,
    part: SiteDecoding,
    answer_langs: Sequence[str],
    cfg: LensConfig,
    text_of: Callable[[int], str],
) -> dict[str, Any]:
    n = len(part.entropy)
    mean, low, high = mean_ci(
        np.column_stack([part.class_mass, part.entropy]), cfg.n_boot, cfg.seed, cfg.level
    )
    k = len(TOKEN_CLASSES)
    mode = None
    if n:
        values, counts = np.unique(part.top_ids[:, 0], return_counts=True)
        j = int(np.argmax(counts))
        top = int(values[j])
        mode = {"id": top, "text": text_of(top), "share": _g(counts[j] / n)}
    out: dict[str, Any] = {
        "site": site,
        "lang": lang,
        "n": n,
        "class_mass": {
            c: {"mean": _g(mean[j]), "low": _g(low[j]), "high": _g(high[j])}
            for j, c in enumerate(TOKEN_CLASSES)
        },
        "entropy": {"mean": _g(mean[k]), "low": _g(low[k]), "high": _g(high[k])},
        "top1_mode": mode,
    }
    if answer_langs:
        probs: dict[str, Any] = {}
        ranks: dict[str, Any] = {}
        for j, a in enumerate(answer_langs):
            have = part.answer_rank[:, j] >= 0
            if not have.any():
                probs[a] = ranks[a] = None
                continue
            m, lo, hi = mean_ci(part.answer_prob[have, j][:, None], cfg.n_boot, cfg.seed, cfg.level)
            probs[a] = {"mean": _g(m[0]), "low": _g(lo[0]), "high": _g(hi[0]), "n": int(have.sum())}
            r = part.answer_rank[have, j]
            ranks[a] = {
                "median": _g(float(np.median(r))),
                "top1_share": _g(float((r == 1).mean())),
            }
        out["answer_prob"] = probs
        out["answer_rank"] = ranks
    return out


def _bar(total: int, enabled: bool) -> Callable[..., None]:
    if not enabled:
        return lambda *a, **k: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="lens", unit="site", leave=False)

    def step(k: int, close: bool = False) -> None:
        if k:
            bar.update(k)
        if close:
            bar.close()

    return step


# ---------------------------------------------------------------------------------------------
# summary lines and the one-call entry point


def summarize(doc: Mapping[str, Any]) -> list[str]:
    """A few lines a person reads first: where latin and cjk mass peak, per prompt language."""
    lines = [
        f"logit lens of {doc.get('model')}{weights_label(doc)} ({doc.get('pool')} pool, "
        f"{len(doc['sites'])} sites, "
        f"{doc.get('n_rows')} prompts per language)"
    ]
    by_lang: dict[str, list[Mapping[str, Any]]] = {}
    for s in doc["summaries"]:
        by_lang.setdefault(s["lang"], []).append(s)
    for lang, rows in by_lang.items():
        parts = []
        for cls in ("latin", "cjk"):
            best = max(rows, key=lambda r: r["class_mass"][cls]["mean"] or 0.0)
            parts.append(
                f"{cls} mass peaks at {best['class_mass'][cls]['mean']:.2f} at {best['site']}"
            )
        last = rows[-1]
        parts.append(
            f"at {last['site']}: latin {last['class_mass']['latin']['mean']:.2f}, "
            f"cjk {last['class_mass']['cjk']['mean']:.2f}"
        )
        lines.append(f"{lang} prompts: " + "; ".join(parts))
        for a in (doc.get("answers") or {}).get("languages", []):
            found = [(r["site"], (r.get("answer_prob") or {}).get(a)) for r in rows]
            vals: list[tuple[str, float]] = [(s, float(v["mean"])) for s, v in found if v]
            if vals:
                site, v = max(vals, key=lambda t: t[1])
                lines.append(f"  P({answer_label(doc, lang, a)}) peaks at {v:.3f} at {site}")
    ctl = doc.get("control")
    if isinstance(ctl, Mapping) and ctl.get("summaries"):
        top = max(
            (max(r["class_mass"][c]["mean"] or 0.0 for c in ("latin", "cjk")))
            for r in ctl["summaries"]
        )
        lines.append(
            f"random-weights control: latin/cjk mass at most {top:.2f} at any site "
            f"(vocabulary share: latin {doc['vocab_share']['latin']:.2f}, "
            f"cjk {doc['vocab_share']['cjk']:.2f})"
        )
    else:
        lines.append("no random-weights control for the lens")
    return lines


def write_lens(doc: Mapping[str, Any], folder: Path) -> Path:
    """Write ``doc`` as ``folder/lens.json`` (atomically); returns the path."""
    path = Path(folder) / LENS_FILE
    atomic_write_json(path, doc)
    return path


def run_lens(
    path: str | Path,
    config: LensConfig | None = None,
    *,
    control: bool = True,
    progress: bool = True,
) -> tuple[dict[str, Any], list[str], Path]:
    """Lens of the run at ``path`` (and of its random-init control, when the folder has one).

    Writes ``lens.json`` into the run folder (with the control's summaries under
    ``control``) and the control's own ``lens.json`` into its folder. Returns the document,
    the summary lines and the path written. Holds each folder's write lock while it reads and
    writes there (another process's ``extract --overwrite`` is refused meanwhile, and vice versa).
    """
    with reading(), folder_lock(Path(path), "xlalign lens"):
        run = load_run(path)
        doc = lens_study(run, config, progress=progress)
        control_path = run.path / CONTROL_DIR
        if control and (control_path / MANIFEST).exists():
            with folder_lock(control_path, "xlalign lens"):
                control_run = load_control(run)  # a control of another study: refused, named
                assert control_run is not None
                control_doc = lens_study(control_run, config, progress=progress)
                write_lens(control_doc, control_run.path)
            doc["control"] = control_reference(control_doc)
        out = write_lens(doc, run.path)
    return doc, summarize(doc), out


def control_reference(control_doc: Mapping[str, Any]) -> dict[str, Any]:
    """What the model's ``lens.json`` keeps of its control's: seed, folder and summaries."""
    return {
        "kind": "random-init",
        "seed": control_doc.get("random_init_seed"),
        "run": control_doc.get("run"),
        "summaries": control_doc["summaries"],
    }
