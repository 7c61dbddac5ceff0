"""xlalign: layer-by-layer cross-lingual alignment of transformer hidden states."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xlalign import corpora
from xlalign.corpus import ParallelCorpus, load_corpus
from xlalign.errors import XlalignError
from xlalign.problems import generate_problems

if TYPE_CHECKING:
    from xlalign.capture import extract
    from xlalign.store import load_run
    from xlalign.studies.compare import compare

__version__ = "0.1.0"

__all__ = [
    "ParallelCorpus",
    "XlalignError",
    "__version__",
    "compare",
    "corpora",
    "extract",
    "generate_problems",
    "load_corpus",
    "load_run",
]


def __getattr__(name: str) -> Any:
    # torch loads only when capture is used, so `xlalign --help` and the metrics stay quick
    if name == "extract":
        from xlalign.capture import extract

        return extract
    if name == "load_run":
        from xlalign.store import load_run

        return load_run
    if name == "compare":
        from xlalign.studies.compare import compare

        return compare
    raise AttributeError(f"module 'xlalign' has no attribute {name!r}")
