"""What ``xlalign run`` and ``xlalign demo`` orchestrate: capture, the studies and the report.

- :mod:`~xlalign.pipeline.study`: :func:`run_study`, the whole study in one call.
- :mod:`~xlalign.pipeline.config`: :class:`StudyConfig` and ``--config study.toml``.
- :mod:`~xlalign.pipeline.reuse`: stored activations reused only when model, tokenizer and
  corpus match.
- :mod:`~xlalign.pipeline.stages`: align, origin and lens on a run and its control.
- :mod:`~xlalign.pipeline.provenance`: ``provenance.json`` and wall time per stage.
- :mod:`~xlalign.pipeline.demo`: ``xlalign demo``.

Not a study: it calls the studies (:mod:`xlalign.studies`) and the report; only the CLI is
above it.
"""

from xlalign.pipeline.config import (
    CONFIG_FIELDS,
    StudyConfig,
    config_from_mapping,
    config_to_toml,
    load_config_file,
    study_corpus,
)
from xlalign.pipeline.provenance import StageClock, source_lines
from xlalign.pipeline.reuse import STUDY_POOLS, ensure_run, run_corpus
from xlalign.pipeline.stages import run_align, run_origin, study_findings
from xlalign.pipeline.study import bundled_model_path, run_study

__all__ = [
    "CONFIG_FIELDS",
    "STUDY_POOLS",
    "StageClock",
    "StudyConfig",
    "bundled_model_path",
    "config_from_mapping",
    "config_to_toml",
    "ensure_run",
    "load_config_file",
    "run_align",
    "run_corpus",
    "run_origin",
    "run_study",
    "source_lines",
    "study_corpus",
    "study_findings",
]
