"""What goes in: parallel corpora, the built-in corpora, the study's problems and token classes.

- :mod:`~xlalign.data.corpus`: :class:`ParallelCorpus` and :func:`load_corpus` (JSONL, CSV/TSV,
  a folder of ``<lang>.txt``), every bad row named by file and line.
- :mod:`~xlalign.data.corpora`: built-in corpora (``--data hsk``) and the logit lens's
  word-translation task.
- :mod:`~xlalign.data.problems`: the original study's 200 zh/en problems, byte for byte.
- :mod:`~xlalign.data.tokens`: token classes (``cjk``, ``latin``, ``digit``...) by decoded text.
- :mod:`~xlalign.data.lexical`: the model-free lexical baseline (a prompt as a bag of token ids).

The bottom layer: it imports nothing of xlalign but :mod:`xlalign.errors`.
"""

from xlalign.data import corpora, corpus, lexical, problems, tokens
from xlalign.data.corpora import BUILTIN, hsk, load_builtin, translate_words
from xlalign.data.corpus import ParallelCorpus, SkippedRow, load_corpus, load_hf_dataset
from xlalign.data.problems import CATEGORIES, Problem, generate_problems
from xlalign.data.tokens import TOKEN_CLASSES, TokenClassifier

__all__ = [
    "BUILTIN",
    "CATEGORIES",
    "TOKEN_CLASSES",
    "ParallelCorpus",
    "Problem",
    "SkippedRow",
    "TokenClassifier",
    "corpora",
    "corpus",
    "generate_problems",
    "hsk",
    "lexical",
    "load_builtin",
    "load_corpus",
    "load_hf_dataset",
    "problems",
    "tokens",
    "translate_words",
]
