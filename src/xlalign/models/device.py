"""Devices and dtypes: ``--device auto`` and ``--dtype`` resolved, and where a spread model takes its input."""

from __future__ import annotations

import torch
from torch import nn

from xlalign.errors import XlalignError
from xlalign.models.architecture import ModelAdapter

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


# ---------------------------------------------------------------------------------------------
# devices and dtypes


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else as torch reads it."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as e:
        raise XlalignError(f"unknown device '{device}': use cpu, cuda, cuda:N or auto") from e
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise XlalignError(f"device '{device}' asked for, but CUDA is not available here")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The dtype to load in: as asked, else float32 on CPU and bfloat16 on CUDA."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise XlalignError(f"dtype {dtype} not supported: use one of {', '.join(DTYPES)}")
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise XlalignError(f"unknown dtype '{dtype}': use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


def input_device(adapter: ModelAdapter, fallback: torch.device) -> torch.device:
    """The device the model's inputs go to: where the embedding runs.

    With a device map, Accelerate may keep the embedding's weights on the ``meta`` device (CPU
    or disk offload) and move them in at each call; its hook names the execution device then.
    """
    hook = getattr(adapter.embedding, "_hf_hook", None)
    executes_on = getattr(hook, "execution_device", None)
    if executes_on is not None:
        return torch.device(
            executes_on if not isinstance(executes_on, int) else f"cuda:{executes_on}"
        )
    weight = next(adapter.embedding.parameters(), None)
    if weight is None or weight.device.type == "meta":
        return fallback
    return weight.device


def device_map_summary(model: nn.Module) -> dict[str, str] | None:
    """``model.hf_device_map`` as ``{module: device}`` strings (None without a device map)."""
    mapping = getattr(model, "hf_device_map", None)
    if not isinstance(mapping, dict):
        return None
    return {str(k): str(v) for k, v in mapping.items()}
