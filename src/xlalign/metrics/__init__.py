"""Alignment metrics: pure functions on paired arrays (row i of x pairs with row i of y).

No torch, no I/O, no printing; sums and moments in float64; every function returns a small
frozen dataclass with ``to_dict()``. Bad input raises :class:`xlalign.errors.XlalignError`.
Definitions, formulas and when to use which: ``docs/metrics.md``.
"""

from xlalign.metrics.bootstrap import CI, bootstrap_ci, cka_ci, p1_ci, z_ci
from xlalign.metrics.duplicates import distinct_rows, identical_groups
from xlalign.metrics.nulls import NULL_METRICS, CalibratedResult, calibrated
from xlalign.metrics.permutation import (
    DEGENERATE_STD,
    ZResult,
    draw_permutations,
    matched_vs_scrambled_z,
    matched_vs_scrambled_z_sweep,
    null_samples,
)
from xlalign.metrics.retrieval import (
    RetrievalResult,
    XsimResult,
    retrieval_hits,
    retrieval_scores,
    xsim_error,
)
from xlalign.metrics.separation import CohenResult, cohen_d_pc1, pca_subspace_z
from xlalign.metrics.similarity import (
    COMPAT_MODES,
    CkaResult,
    CknnaResult,
    HubResult,
    KnnResult,
    SiteMatrix,
    SvccaResult,
    cknna,
    cycle_knn,
    edit_distance_knn,
    lcs_knn,
    linear_cka,
    linear_cka_matrix,
    mutual_knn,
    mutual_knn_matrix,
    platonic_clamp,
    platonic_threshold,
    prepare_features,
    semantic_hub_score,
    svcca,
)

__all__ = [
    "CI",
    "COMPAT_MODES",
    "DEGENERATE_STD",
    "NULL_METRICS",
    "CalibratedResult",
    "CkaResult",
    "CknnaResult",
    "CohenResult",
    "HubResult",
    "KnnResult",
    "RetrievalResult",
    "SiteMatrix",
    "SvccaResult",
    "XsimResult",
    "ZResult",
    "bootstrap_ci",
    "calibrated",
    "cka_ci",
    "cknna",
    "cohen_d_pc1",
    "cycle_knn",
    "distinct_rows",
    "draw_permutations",
    "edit_distance_knn",
    "identical_groups",
    "lcs_knn",
    "linear_cka",
    "linear_cka_matrix",
    "matched_vs_scrambled_z",
    "matched_vs_scrambled_z_sweep",
    "mutual_knn",
    "mutual_knn_matrix",
    "null_samples",
    "p1_ci",
    "pca_subspace_z",
    "platonic_clamp",
    "platonic_threshold",
    "prepare_features",
    "retrieval_hits",
    "retrieval_scores",
    "semantic_hub_score",
    "svcca",
    "xsim_error",
    "z_ci",
]
