"""Device and mixed-precision choices, resolved once from parameters."""

from __future__ import annotations

import contextlib

import torch

from vitlab.errors import VitlabError


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when present, else cpu; anything else must exist on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VitlabError(f"runtime.device: {name!r} asked for but no GPU is visible; use auto")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise VitlabError(f"runtime.device: {name!r} is not a device ({e}); use auto") from e


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """`auto` -> bf16 on cuda, fp32 elsewhere; `bf16` forces it; `fp32` never."""
    if amp not in ("auto", "bf16", "fp32"):
        raise VitlabError(f"runtime.amp: {amp!r} is unknown; use auto, bf16 or fp32")
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast for `dtype`, or a no-op for full precision."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
