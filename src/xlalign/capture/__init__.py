"""Capture: hidden states read at every requested site in one forward pass, pooled on the device.

- :mod:`~xlalign.capture.engine`: :func:`extract`, the run from corpus to run folder.
- :mod:`~xlalign.capture.config`: :class:`ExtractConfig`, the flags of ``xlalign extract``.
- :mod:`~xlalign.capture.batching`: tokenising once, length-sorted batches, positions that
  follow the mask.
- :mod:`~xlalign.capture.hooks`: the hooks that read and pool each site and stop the pass.
- :mod:`~xlalign.capture.pooling`: the pools (``last``, ``mean``...) as one weighted sum.
- :mod:`~xlalign.capture.finite`: the inf/NaN guard.
- :mod:`~xlalign.capture.manifest`: what a run records, and what must match to resume.
- :mod:`~xlalign.capture.writer`: opening the run folder's writer (new, resumed, one rank's).
- :mod:`~xlalign.capture.distributed`: ``torchrun``/``accelerate launch`` ranks.

Above :mod:`xlalign.models`, :mod:`xlalign.store` and :mod:`xlalign.data`; below the studies.
"""

from xlalign.capture import distributed, pooling
from xlalign.capture.batching import (
    Batch,
    forward_kwargs,
    forward_params,
    make_batch,
    pad_id_of,
    plan_batches,
    tokenize,
)
from xlalign.capture.config import EXTRACT_COMPAT, PADDING_SIDES, ExtractConfig
from xlalign.capture.engine import ZeroNormWarning, extract
from xlalign.capture.hooks import SiteCapture, to_numpy
from xlalign.capture.manifest import RESUME_KEYS, resume_diffs

__all__ = [
    "EXTRACT_COMPAT",
    "PADDING_SIDES",
    "RESUME_KEYS",
    "Batch",
    "ExtractConfig",
    "SiteCapture",
    "ZeroNormWarning",
    "distributed",
    "extract",
    "forward_kwargs",
    "forward_params",
    "make_batch",
    "pad_id_of",
    "plan_batches",
    "pooling",
    "resume_diffs",
    "to_numpy",
    "tokenize",
]
