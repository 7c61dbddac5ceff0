"""Forward hooks that read and pool every requested site in one pass, ending it at the deepest."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from xlalign.capture.pooling import PoolPlan, pool
from xlalign.errors import XlalignError
from xlalign.models.loading import LoadedModel
from xlalign.store.sites import EMBED, FINAL


class _StopForward(Exception):
    """Raised by the deepest site's hook to end the forward pass early (caught in capture)."""


# ---------------------------------------------------------------------------------------------
# hooks


class SiteCapture:
    """Hooks that pool each requested site during a forward pass of ``loaded``'s base model.

    Use as a context manager (hooks are removed on exit) and call :meth:`run` per batch;
    it returns ``{site: (pooled (B, P, d) float32, tokens (n_real, d) float32 | None)}`` with
    tensors still on the device they were computed on.
    """

    def __init__(self, loaded: LoadedModel, sites: Sequence[str]) -> None:
        self.loaded = loaded
        self.sites = list(sites)
        self.deepest = self.sites[-1]
        self._handles: list[Any] = []
        self._plan: PoolPlan | None = None
        self._results: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        #: when set, :meth:`run` also records per site which real tokens' hidden states hold
        #: NaN/inf: ``{site: (bad (B, T) bool, nan (B, T) bool)}`` (see :func:`~xlalign.capture.finite.nonfinite_inputs`)
        self.diagnose = False
        self.bad_tokens: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __enter__(self) -> SiteCapture:
        adapter = self.loaded.adapter
        for site in self.sites:
            if site == EMBED:
                handle = adapter.blocks[0].register_forward_pre_hook(
                    self._pre_hook(site), with_kwargs=True
                )
            elif site == FINAL:
                if adapter.final_norm is None:
                    raise XlalignError("site 'final' asked for, but the model has no final norm")
                handle = adapter.final_norm.register_forward_hook(self._hook(site))
            else:
                handle = adapter.blocks[int(site[1:])].register_forward_hook(self._hook(site))
            self._handles.append(handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _record(self, site: str, hidden: Any) -> None:
        if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
            shape = getattr(hidden, "shape", type(hidden).__name__)
            raise XlalignError(
                f"site {site}: expected a (batch, tokens, d_model) tensor, got {shape}"
            )
        assert self._plan is not None
        if self.diagnose:
            real = self._plan.real.to(hidden.device)
            bad = ~torch.isfinite(hidden.detach()).all(dim=-1) & real
            nan = torch.isnan(hidden.detach()).any(dim=-1) & real
            self.bad_tokens[site] = (bad.cpu().numpy(), nan.cpu().numpy())
        self._results[site] = pool(hidden.detach(), self._plan)
        if site == self.deepest:
            raise _StopForward

    def _pre_hook(self, site: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self._record(site, args[0] if args else kwargs.get("hidden_states"))

        return hook

    def _hook(self, site: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            # transformers 5 blocks return a tensor; older versions and other models a tuple.
            self._record(site, output if isinstance(output, torch.Tensor) else output[0])

        return hook

    def run(
        self, kwargs: dict[str, Any], plan: PoolPlan
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """One forward pass; the pooled vectors of every site."""
        self._plan = plan
        self._results = {}
        try:
            self.loaded.adapter.base(**kwargs)
        except _StopForward:
            pass
        finally:
            self._plan = None
        missing = [s for s in self.sites if s not in self._results]
        if missing:
            raise XlalignError(
                f"the forward pass never reached site(s) {', '.join(missing)}; the model's "
                "blocks may not be called the way the adapter expects"
            )
        return self._results


def to_numpy(
    results: dict[str, tuple[torch.Tensor, torch.Tensor | None]], sites: Sequence[str]
) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """Move pooled results to the CPU: ``(n_sites, B, P, d)`` and per-site token arrays."""
    pooled = [results[s][0] for s in sites]
    if len({t.device for t in pooled}) == 1:
        stacked = torch.stack(pooled).cpu().numpy()  # one transfer per batch
    else:  # a model spread over devices (device_map)
        stacked = np.stack([t.cpu().numpy() for t in pooled])
    tokens = [results[s][1] for s in sites]
    if tokens[0] is None:
        return stacked, None
    return stacked, [t.cpu().numpy() for t in tokens if t is not None]
