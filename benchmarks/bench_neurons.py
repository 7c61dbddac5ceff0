"""The neuron study's counting pass against a bare forward over the same batches.

Run:  HF_HUB_OFFLINE=1 python benchmarks/bench_neurons.py [--repeats 3] [--quick]
      [--model qwen2.5-0.5b] [--hsk 500]

Side by side, interleaved, on the same prompts and the same batches (length-sorted, batch 32):

  (c) a bare batched forward of the base model: no hooks, no LM head (bench_extract's (c))
  (n) xlalign's counting pass (:func:`xlalign.studies.neurons.count_activations`): the same
      forward with a hook on every block's feed-forward activation counting positive values of
      real tokens on the device

Prints the median of ``--repeats`` runs and the ratio (n)/(c), which the study is held to
(<= 1.3). Default model: bench_extract's synthetic Qwen2 (d = 512, 8 blocks, 151,936-token
vocabulary) on the study's 200 problems; ``--model`` a real one, ``--hsk N`` N HSK pairs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

from xlalign.capture.batching import tokenize
from xlalign.data.problems import generate_problems
from xlalign.models.loading import load_model, wrap_model
from xlalign.models.testing import corpus_texts, train_byte_bpe
from xlalign.studies.neurons import count_activations

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_extract import (
    BATCH_SIZE,
    LANGS,
    _cpu_name,
    bare_forward,
    build_model,
    prepared_batches,
    timed,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="40 problems, 1 repeat (smoke test)")
    parser.add_argument("--model", default=None, help="a real model (named, folder or .gguf)")
    parser.add_argument("--hsk", type=int, default=None, help="N HSK pairs instead of problems")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats

    if args.hsk is not None:
        from xlalign.data.corpora import hsk

        corpus = hsk(args.hsk)
    else:
        corpus = generate_problems(40 if args.quick else 200, seed=42)
    if args.model is None:
        tokenizer = train_byte_bpe(corpus_texts([generate_problems(200, seed=42)]))
        loaded = wrap_model(build_model(tokenizer), tokenizer, model_id="bench/qwen2-d512-l8")
    else:
        loaded = load_model(args.model, device="cpu", dtype="float32")
    batches = prepared_batches(loaded, corpus)
    tokens = {lang: tokenize(loaded.tokenizer, corpus.text(lang)) for lang in LANGS}
    rows = [np.arange(len(corpus))]
    times = timed(
        {
            "(c) bare forward": lambda: bare_forward(loaded, batches),
            "(n) counting pass": lambda: count_activations(
                loaded, tokens, rows, batch_size=BATCH_SIZE
            ),
        },
        repeats,
        set(),
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    n_tokens = sum(int(t.offsets[-1]) for t in tokens.values())
    print(f"machine: {_cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(
        f"model: {loaded.model_id} ({loaded.n_layers} blocks, d = {loaded.d_model}); "
        f"{len(LANGS) * len(corpus)} prompts, {n_tokens} tokens, batch {BATCH_SIZE}"
    )
    for label, t in med.items():
        runs = ", ".join(f"{x:.2f}" for x in times[label])
        print(f"  {label:<20} {t:8.2f} s  (runs: {runs})")
    ratio = med["(n) counting pass"] / med["(c) bare forward"]
    print(f"  (n)/(c) = {ratio:.3f}  (target <= 1.3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
