"""Logit-lens speed, side by side: xlalign's lens over stored vectors vs a naive per-prompt lens.

Run:  HF_HUB_OFFLINE=1 python benchmarks/bench_lens.py [--repeats 3] [--problems 200]

On the study's 200 problems in zh and en (400 prompts), with a Qwen2-architecture model of
d = 512, 8 blocks and Qwen2's 151,936-token vocabulary (random weights: speed does not depend
on them), every site (embed, L0..L7, final):

  (a) naive logit lens: one prompt at a time through the causal LM with
      ``output_hidden_states=True`` (its own logits included, as ``model(...)`` gives them),
      then per layer the final norm and the LM head on the last token, softmax, class mass,
      entropy and top 5 (what a per-prompt, per-layer lens written over transformers does)
  (b) ``xlalign.studies.lens.lens_study`` over the run's stored ``last`` vectors: no forward
      pass, one batched matmul per site (the decoder loaded once, before timing)
  (c) the same, including loading the model for its norm and head (``load_decoder``)

The run itself (extraction) is made once beforehand and not timed: it is shared with every
other study of the run. Prints the median of ``--repeats`` runs and the ratio (a)/(b).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

from xlalign.capture.engine import extract
from xlalign.data.problems import generate_problems
from xlalign.data.tokens import TOKEN_CLASSES, vocabulary_classes
from xlalign.models.testing import corpus_texts, train_byte_bpe
from xlalign.store.run import load_run
from xlalign.studies.lens import LensConfig, lens_study, load_decoder

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_extract import MODEL_SHAPE
from bench_extract import build_model as build_qwen


def build_model(folder: Path, tokenizer) -> Path:
    """bench_extract's model (:data:`MODEL_SHAPE`, seeded), saved with its tokenizer."""
    build_qwen(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@torch.no_grad()
def naive_lens(model, tokenizer, texts: list[str], codes: np.ndarray) -> int:
    """Per prompt, per layer: final norm + head on the last token; returns records made."""
    norm = model.model.norm
    head = model.lm_head
    classes = [np.flatnonzero(codes == k) for k in range(len(TOKEN_CLASSES))]
    made = 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        hidden = model(ids, output_hidden_states=True).hidden_states
        for i, h in enumerate(hidden):
            last = h[0, -1]
            logits = head(last if i == len(hidden) - 1 else norm(last))
            p = torch.softmax(logits, -1)
            _mass = [float(p[c].sum()) for c in classes]
            _entropy = float(torch.special.entr(p).sum())
            _top = torch.topk(p, 5)
            made += 1
    return made


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--problems", type=int, default=200)
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM

    corpus = generate_problems(args.problems, 42)
    tokenizer = train_byte_bpe(corpus_texts([corpus]))
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_model(Path(tmp) / "model", tokenizer)
        run = extract(
            str(folder), corpus, None, sites="all", pools="last", output=Path(tmp) / "run",
            progress=False, device="cpu",
        )  # fmt: skip
        run = load_run(run.path)
        n_prompts = run.n_rows * len(run.languages)
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        codes = vocabulary_classes(tokenizer, MODEL_SHAPE["vocab_size"])
        texts = [t for lang in run.languages for t in corpus.text(lang)]
        cfg = LensConfig(n_boot=200)

        t_naive = median_time(lambda: naive_lens(model, tokenizer, texts, codes), args.repeats)
        decoder = load_decoder(run)
        t_lens = median_time(lambda: lens_study(run, cfg, decoder=decoder), args.repeats)
        t_load = median_time(lambda: lens_study(run, cfg), args.repeats)

    print(
        f"machine: {platform.machine()} {platform.system()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, python {sys.version.split()[0]}"
    )
    print(
        f"{n_prompts} prompts x {len(run.sites)} sites, d = {MODEL_SHAPE['hidden_size']}, "
        f"vocabulary {MODEL_SHAPE['vocab_size']:,}; median of {args.repeats}"
    )
    print(f"(a) naive per-prompt, per-layer lens (forward passes): {t_naive:8.2f} s")
    print(f"(b) xlalign lens over stored vectors:                  {t_lens:8.2f} s")
    print(f"(c) (b) plus loading the norm and head:                {t_load:8.2f} s")
    print(f"ratio (a)/(b) = {t_naive / t_lens:.1f}x, (a)/(c) = {t_naive / t_load:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
