"""The study's report: figures (PNG and SVG), a self-contained ``report.html`` and ``report.md``.

Usage::

    from xlalign.report import ReportInputs, build_report

    paths = build_report(run_dir, ReportInputs(title="zh/en", alignment=..., origin=...))
    paths["html"]  # run_dir / "report.html"
"""

from __future__ import annotations

from xlalign.report.figures import HeatmapInput, PcaInput, category_order, cosine_matrix, pca_2d
from xlalign.report.render import SEED_KEYS, ReportInputs, build_report, fmt_value

__all__ = [
    "SEED_KEYS",
    "HeatmapInput",
    "PcaInput",
    "ReportInputs",
    "build_report",
    "category_order",
    "cosine_matrix",
    "fmt_value",
    "pca_2d",
]
