"""Device and mixed-precision choices, resolved once from parameters."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import torch

from vitlab.core.errors import VitlabError


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


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has bf16 instructions (avx512_bf16 / AMX on x86, bf16 on Arm).

    Without them bf16 autocast is emulated and slower than fp32; with them it measured 1.1-1.6x
    faster for the default models (benchmarks/throughput.py). Read from the Linux flags, so
    the choice is the same on every run on one machine.
    """
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16|bf16)\b", text) is not None


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """`auto` -> bf16 on cuda and on CPUs with bf16 instructions, else fp32; `bf16` forces
    it; `fp32` never."""
    if amp not in ("auto", "bf16", "fp32"):
        raise VitlabError(f"runtime.amp: {amp!r} is unknown; use auto, bf16 or fp32")
    if amp == "bf16":
        return torch.bfloat16
    if amp == "auto" and (device.type == "cuda" or cpu_has_native_bf16()):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast for `dtype`, or a no-op for full precision."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
