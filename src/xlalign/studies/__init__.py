"""The analyses, each on a run folder: one module per study.

- :mod:`~xlalign.studies.layers`: the layer sweep (every metric at every site, with intervals
  and the lexical baseline) and ``alignment.json``.
- :mod:`~xlalign.studies.origin`: where the alignment after the first block comes from.
- :mod:`~xlalign.studies.findings`: each headline with its verdict against the controls.
- :mod:`~xlalign.studies.lens`: the logit lens by language.
- :mod:`~xlalign.studies.compare`: two models (or a model and its control) side by side.

A new study gets its own module here. Studies read runs (:mod:`xlalign.store`) and compute with
:mod:`xlalign.metrics`; they never orchestrate (that is :mod:`xlalign.pipeline`).
"""
