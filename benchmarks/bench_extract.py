"""Extraction speed, side by side, on a CPU Qwen2-architecture model with a 151,936-token vocabulary.

Run:  HF_HUB_OFFLINE=1 python benchmarks/bench_extract.py [--repeats 3] [--quick]
      [--model qwen2.5-0.5b]   (a real model instead: a named model, folder or .gguf file)

Compares, on the study's 200 problems in zh and en (400 prompts):

  (a) seed-style loop: one prompt per pass through the full causal LM (LM head included),
      forward hooks on the embedding, every block and the final norm, copy to CPU per prompt,
      pool last/mean in numpy (what seed/embedding_alignment.py does, for all sites)
  (b) xlalign.extract of all sites, pools last and mean, batch 32 (written to disk)
  (c) a bare batched forward of the same batches through the same base model: no hooks, no
      capture, no LM head (the floor for any capture of all sites)
  (d) xlalign.extract of embed,L0 only (the early stop at work)
  (e) nnsight and TransformerLens (TransformerBridge) capturing the same sites on the same
      batches, when installed (``pip install 'xlalign[bench]'``)

Prints the median of ``--repeats`` runs per method and the ratios the capture engine is held to:
(b)/(c) <= 1.15, (a)/(b) >= 10, (b)/(d) >= n_layers / 2.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

import xlalign
from xlalign.capture.batching import (
    forward_kwargs,
    forward_params,
    make_batch,
    plan_batches,
    tokenize,
)
from xlalign.data.corpus import ParallelCorpus
from xlalign.data.problems import generate_problems
from xlalign.models.loading import LoadedModel, load_model, wrap_model
from xlalign.models.testing import corpus_texts, train_byte_bpe

#: The benchmark model: Qwen2 architecture, d = 512, 8 blocks, Qwen2's 151,936-token vocabulary.
MODEL_SHAPE = dict(
    vocab_size=151_936,
    hidden_size=512,
    intermediate_size=1408,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=512,
    tie_word_embeddings=True,
)
BATCH_SIZE = 32
LANGS = ("zh", "en")


def build_model(tokenizer: Any) -> Any:
    """A randomly initialised Qwen2ForCausalLM of :data:`MODEL_SHAPE` (seeded)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        **MODEL_SHAPE,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


# ---------------------------------------------------------------------------------------------
# the methods


def seed_loop(model: Any, tokenizer: Any, corpus: ParallelCorpus) -> dict[str, np.ndarray]:
    """(a) One prompt per forward through the full LM, hooks copy each site to CPU numpy."""
    base = model.model
    modules = [("embed", base.embed_tokens)]
    modules += [(f"L{i}", layer) for i, layer in enumerate(base.layers)]
    modules += [("final", base.norm)]
    captured: dict[str, np.ndarray] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(module: Any, args: Any, output: Any) -> None:
            h = output if isinstance(output, torch.Tensor) else output[0]
            captured[name] = h.detach().cpu().squeeze(0).float().numpy()  # (seq_len, d)

        return hook

    handles = [m.register_forward_hook(keep(name)) for name, m in modules]
    n, d = len(corpus), base.config.hidden_size
    out = {
        f"{lang}_{name}_{pool}": np.zeros((n, d), np.float32)
        for lang in LANGS
        for name, _ in modules
        for pool in ("last", "mean")
    }
    try:
        for lang in LANGS:
            for i, text in enumerate(corpus.text(lang)):
                inputs = tokenizer(text, return_tensors="pt")
                with torch.no_grad():
                    model(**inputs)
                for name, h in captured.items():
                    out[f"{lang}_{name}_last"][i] = h[-1]
                    out[f"{lang}_{name}_mean"][i] = h.mean(axis=0)
                captured.clear()
    finally:
        for handle in handles:
            handle.remove()
    return out


def prepared_batches(loaded: LoadedModel, corpus: ParallelCorpus) -> list[dict[str, Any]]:
    """The forward arguments of exactly the batches extract runs (same sort, same padding)."""
    params = forward_params(loaded)
    pad = loaded.tokenizer.pad_token_id
    out = []
    for lang in LANGS:
        tokens = tokenize(loaded.tokenizer, corpus.text(lang))
        for rows in plan_batches(tokens.lengths, BATCH_SIZE):
            batch = make_batch(tokens, rows, padding_side="right", pad_id=pad)
            out.append(forward_kwargs(loaded, batch, "right", params))
    return out


def bare_forward(loaded: LoadedModel, batches: list[dict[str, Any]]) -> None:
    """(c) The base model over the batches: no hooks, no pooling, no LM head, nothing kept."""
    with torch.inference_mode():
        for kwargs in batches:
            loaded.adapter.base(**kwargs)


def run_extract(loaded: LoadedModel, corpus: ParallelCorpus, sites: str, root: Path) -> Any:
    """(b)/(d) xlalign.extract into a new folder under ``root`` (deleting is not extracting)."""
    out = Path(tempfile.mkdtemp(dir=root)) / "run"
    return xlalign.extract(
        loaded, corpus, list(LANGS), sites=sites, pools=("last", "mean"), batch_size=BATCH_SIZE,
        output=out, progress=False,
    )  # fmt: skip


def _pool_torch(h: torch.Tensor, mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """last/mean of a right-padded ``(B, T, d)`` batch, on the CPU."""
    lengths = mask.sum(1)
    last = h[torch.arange(h.shape[0]), lengths - 1]
    m = mask[..., None].to(h.dtype)
    mean = (h * m).sum(1) / lengths[:, None]
    return last.float().numpy(), mean.float().numpy()


def nnsight_capture(
    model: Any, tokenizer: Any, batches: list[dict[str, Any]]
) -> Callable[[], None]:
    """(e) nnsight: one trace per batch saving every site, pooled after the trace."""
    from nnsight import LanguageModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = LanguageModel(model, tokenizer=tokenizer)
    n_layers = model.config.num_hidden_layers

    def trace(kwargs: dict[str, Any]) -> list[Any]:
        saved = []
        inputs = {"input_ids": kwargs["input_ids"], "attention_mask": kwargs["attention_mask"]}
        with lm.trace(inputs):
            saved.append(lm.model.embed_tokens.output.save())
            for i in range(n_layers):
                saved.append(lm.model.layers[i].output.save())
            saved.append(lm.model.norm.output.save())
        return saved

    def run() -> None:
        with torch.inference_mode():
            for kwargs in batches:
                for h in trace(kwargs):
                    h = h if isinstance(h, torch.Tensor) else h[0]
                    _pool_torch(h.cpu(), kwargs["attention_mask"])

    return run


def transformer_lens_capture(
    model: Any, tokenizer: Any, batches: list[dict[str, Any]], config_dir: Path
) -> Callable[[], None]:
    """(e) TransformerLens 4 TransformerBridge: run_with_cache of every site per batch."""
    from transformer_lens.model_bridge import TransformerBridge

    model.config.save_pretrained(config_dir)  # the bridge reads the config from a path
    tokenizer.save_pretrained(config_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers(
            str(config_dir), hf_model=model, tokenizer=tokenizer, device="cpu"
        )
    n_layers = model.config.num_hidden_layers
    names = ["hook_embed", *(f"blocks.{i}.hook_out" for i in range(n_layers)), "ln_final.hook_out"]

    def run() -> None:
        with torch.inference_mode():
            for kwargs in batches:
                _, cache = bridge.run_with_cache(
                    kwargs["input_ids"], attention_mask=kwargs["attention_mask"], names_filter=names
                )
                for name in names:
                    _pool_torch(cache[name].cpu(), kwargs["attention_mask"])

    return run


# ---------------------------------------------------------------------------------------------
# timing and report


def timed(
    methods: dict[str, Callable[[], Any]], repeats: int, no_warmup: set[str]
) -> dict[str, list[float]]:
    """Wall-clock seconds of ``repeats`` calls of each method, interleaved round-robin.

    Interleaving spreads any background load on the machine over all methods alike, so the
    ratios stay fair. Each method gets one untimed warm-up call first (except ``no_warmup``).
    """
    for label, fn in methods.items():
        if label not in no_warmup:
            fn()
    times: dict[str, list[float]] = {label: [] for label in methods}
    for _ in range(repeats):
        for label, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
    return times


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="40 problems, 1 repeat (smoke test)")
    parser.add_argument("--skip-seed", action="store_true", help="leave out (a), the slow one")
    parser.add_argument(
        "--model",
        default=None,
        help="a real model (named, folder or .gguf) instead of the synthetic one",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats

    problems = generate_problems(200, seed=42)
    corpus = problems
    if args.quick:
        n = 40
        corpus = ParallelCorpus(
            problems.ids[:n], {k: v[:n] for k, v in problems.texts.items()},
            {k: v[:n] for k, v in problems.meta.items()}, source="problems[:40]",
        )  # fmt: skip
    if args.model is None:
        tokenizer = train_byte_bpe(corpus_texts([problems]))
        model = build_model(tokenizer)
        loaded = wrap_model(model, tokenizer, model_id="bench/qwen2-d512-l8-v151936")
        shape = MODEL_SHAPE
    else:
        loaded = load_model(args.model, device="cpu", dtype="float32")
        model, tokenizer = loaded.model, loaded.tokenizer
        cfg = model.config
        shape = dict(
            hidden_size=cfg.hidden_size, num_hidden_layers=loaded.n_layers,
            intermediate_size=cfg.intermediate_size, vocab_size=cfg.vocab_size,
        )  # fmt: skip
    n_prompts = len(LANGS) * len(corpus)
    n_tokens = sum(
        len(ids) for lang in LANGS for ids in tokenizer(list(corpus.text(lang)))["input_ids"]
    )
    n_params = sum(p.numel() for p in model.parameters())

    print(
        f"xlalign {xlalign.__version__}, torch {torch.__version__}, Python {platform.python_version()}"
    )
    print(f"CPU: {_cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    print(
        f"model: {args.model or 'synthetic'} {type(model).__name__}, d={shape['hidden_size']}, "
        f"{shape['num_hidden_layers']} blocks, ffn {shape['intermediate_size']}, "
        f"vocab {shape['vocab_size']:,}, {n_params / 1e6:.0f}M parameters, float32"
    )
    print(f"data: {len(corpus)} problems x {len(LANGS)} languages = {n_prompts} prompts, "
          f"{n_tokens} tokens; batch size {BATCH_SIZE}; median of {repeats}")  # fmt: skip
    print()

    notes: dict[str, str] = {}
    seed_label = "(a) seed-style loop, 1 prompt/pass"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        batches = prepared_batches(loaded, corpus)
        methods: dict[str, Callable[[], Any]] = {
            "(c) bare batched forward, no capture": lambda: bare_forward(loaded, batches),
            "(b) xlalign extract, all sites": lambda: run_extract(loaded, corpus, "all", root),
            "(d) xlalign extract, embed,L0": lambda: run_extract(loaded, corpus, "embed,L0", root),
        }
        if not args.skip_seed:
            methods[seed_label] = lambda: seed_loop(model, tokenizer, corpus)
        peers: dict[str, Callable[[], Callable[[], None]]] = {
            "(e) nnsight, same sites and batches": lambda: nnsight_capture(
                model, tokenizer, batches
            ),
            "(e) TransformerLens bridge, same": lambda: transformer_lens_capture(
                model, tokenizer, batches, root / "tl-config"
            ),
        }
        for label, factory in peers.items():
            try:
                fn = factory()
                fn()  # one batch loop now, so a failing peer is skipped, not fatal
            except ImportError as e:
                notes[label] = f"skipped: not installed ({e.name or e})"
                continue
            except Exception as e:  # a peer library failing must not hide our figures
                notes[label] = f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
                continue
            methods[label] = fn
        results = timed(methods, repeats, no_warmup={seed_label, *peers})

        if not args.skip_seed:  # the two captures agree (a sanity check, not a timing)
            seed = seed_loop(model, tokenizer, corpus)
            run = run_extract(loaded, corpus, "all", root)
            worst = max(
                float(np.abs(run[lang, site, "last"] - seed[f"{lang}_{site}_last"]).max()
                      / np.abs(seed[f"{lang}_{site}_last"]).max())
                for lang in LANGS for site in run.sites
            )  # fmt: skip
            notes[seed_label] = f"max rel. diff of last-token vectors vs (b): {worst:.1e}"

    med = {k: statistics.median(v) for k, v in results.items()}
    b = med["(b) xlalign extract, all sites"]
    print(
        f"{'method':<40} {'median s':>9} {'min s':>7} {'max s':>7} {'prompts/s':>10} {'x (b)':>7}"
    )
    for label in sorted(set(results) | set(notes), key=lambda s: s[:3]):
        if label in med:
            t = results[label]
            print(
                f"{label:<40} {med[label]:>9.2f} {min(t):>7.2f} {max(t):>7.2f} "
                f"{n_prompts / med[label]:>10.0f} {med[label] / b:>7.2f}"
                + (f"   {notes[label]}" if label in notes else "")
            )
        else:
            print(f"{label:<40} {notes[label]}")
    print()
    c = med["(c) bare batched forward, no capture"]
    d = med["(d) xlalign extract, embed,L0"]
    half_layers = shape["num_hidden_layers"] / 2
    checks = [("(b)/(c)", b / c, "<=", 1.15)]
    if "(a) seed-style loop, 1 prompt/pass" in med:
        checks.append(("(a)/(b)", med["(a) seed-style loop, 1 prompt/pass"] / b, ">=", 10.0))
    checks.append(("(b)/(d)", b / d, ">=", half_layers))
    for label in med:
        if label.startswith("(e)"):
            checks.append((f"{label.split(',')[0]} / (b)", med[label] / b, ">=", 4.0))
    for name, value, op, target in checks:
        ok = value <= target if op == "<=" else value >= target
        print(f"{name:<34} {value:>7.2f}  target {op} {target:<5}  {'met' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
