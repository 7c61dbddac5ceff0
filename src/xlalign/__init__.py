"""xlalign: layer-by-layer cross-lingual alignment of transformer hidden states."""

from xlalign.corpus import ParallelCorpus, load_corpus
from xlalign.errors import XlalignError
from xlalign.problems import generate_problems

__version__ = "0.1.0"

__all__ = ["ParallelCorpus", "XlalignError", "__version__", "generate_problems", "load_corpus"]
