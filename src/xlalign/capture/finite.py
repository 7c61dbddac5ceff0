"""The inf/NaN guard: a batch with a non-finite vector stops the run, naming site, prompt, token and pools."""

from __future__ import annotations

from typing import Any

import numpy as np

from xlalign.capture.batching import Batch
from xlalign.capture.hooks import SiteCapture
from xlalign.capture.pooling import PoolPlan
from xlalign.data.corpus import ParallelCorpus
from xlalign.errors import XlalignError
from xlalign.models.device import dtype_name
from xlalign.models.loading import LoadedModel


def nonfinite_inputs(
    capture: SiteCapture, kwargs: dict[str, Any], plan: PoolPlan
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per site, which real tokens' hidden states hold NaN/inf: the batch run once more.

    Only after a batch came out non-finite, so healthy runs pay nothing. Pooling is one matmul,
    which spreads a single token's NaN (``0 x NaN``) into every pool; these masks say which
    pools really read it.
    """
    capture.diagnose, capture.bad_tokens = True, {}
    try:
        capture.run(kwargs, plan)
        return dict(capture.bad_tokens)
    finally:
        capture.diagnose = False


def pools_reading(plan: PoolPlan, vector_pools: list[str], b: int, bad: np.ndarray) -> list[str]:
    """The pools of batch row ``b`` whose inputs include a token marked in ``bad`` ``(T,)``."""
    weights = plan.weights[b].cpu().numpy()  # (P, T)
    names = [name for p, name in enumerate(vector_pools) if (weights[p][bad] != 0).any()]
    return names + (["tokens"] if plan.want_tokens and bad.any() else [])


def check_finite(
    pooled: np.ndarray,
    token_vecs: list[np.ndarray] | None,
    batch: Batch,
    sites: list[str],
    vector_pools: list[str],
    lang: str,
    corpus: ParallelCorpus,
    loaded: LoadedModel,
    bad_inputs: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    plan: PoolPlan | None = None,
) -> None:
    """Stop the run at the first inf/NaN, naming site, language, prompt id and the pools it reaches.

    With ``bad_inputs`` (from :func:`nonfinite_inputs`) and ``plan``, the pools named are those
    whose inputs hold the non-finite value, and the token position is given.
    """
    if bad_inputs is not None and plan is not None:
        for site in sites:
            if site not in bad_inputs or not bad_inputs[site][0].any():
                continue
            bad_mask, nan_mask = bad_inputs[site]
            row = int(np.argwhere(bad_mask)[0][0])
            positions = np.flatnonzero(bad_mask[row])
            real_pos = np.cumsum(plan.real[row].cpu().numpy()) - 1
            tokens = ", ".join(str(int(real_pos[t])) for t in positions[:5])
            more = f" and {len(positions) - 5} more" if len(positions) > 5 else ""
            kind = "NaN" if nan_mask[row].any() else "inf"
            reached = pools_reading(plan, vector_pools, row, bad_mask[row])
            raise XlalignError(
                f"non-finite values ({kind}) at site {site}, language {lang}, prompt id "
                f"{corpus.ids[int(batch.rows[row])]}, token(s) {tokens}{more} (pool(s) "
                f"{', '.join(reached) or 'none'} read them; dtype {dtype_name(loaded.dtype)}); "
                "the run stopped and stays incomplete. Some models overflow in float16 (Qwen2 "
                "among them): rerun with --dtype float32 or --dtype bfloat16 and --overwrite"
            )
    bad: tuple[int, int, str] | None = None  # (site index, batch row, pool)
    if not np.isfinite(pooled).all():
        s, b, p = (int(x) for x in np.argwhere(~np.isfinite(pooled))[0][:3])
        bad = (s, b, vector_pools[p])
    if token_vecs is not None:
        for s, vecs in enumerate(token_vecs):
            if bad is not None and bad[0] <= s:
                break
            if not np.isfinite(vecs).all():
                flat = int(np.argwhere(~np.isfinite(vecs))[0][0])
                lengths = batch.attention_mask.sum(dim=1).numpy()
                b = int(np.searchsorted(np.cumsum(lengths), flat, side="right"))
                bad = (s, b, "tokens")
                break
    if bad is None:
        return
    s, b, pool_name = bad
    vec = pooled[s, b] if pool_name != "tokens" else np.array([np.nan])
    kind = "NaN" if np.isnan(vec).any() else "inf"
    raise XlalignError(
        f"non-finite values ({kind}) at site {sites[s]}, language {lang}, prompt id "
        f"{corpus.ids[int(batch.rows[b])]} (pool {pool_name}, dtype {dtype_name(loaded.dtype)}); "
        "the run stopped and stays incomplete. Some models overflow in float16 (Qwen2 among "
        "them): rerun with --dtype float32 or --dtype bfloat16 and --overwrite"
    )
