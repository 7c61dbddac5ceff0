"""xlalign: layer-by-layer cross-lingual alignment of transformer hidden states."""

from xlalign.capture import extract
from xlalign.corpus import ParallelCorpus, load_corpus
from xlalign.errors import XlalignError
from xlalign.problems import generate_problems
from xlalign.store import load_run

__version__ = "0.1.0"

__all__ = [
    "ParallelCorpus",
    "XlalignError",
    "__version__",
    "extract",
    "generate_problems",
    "load_corpus",
    "load_run",
]
