"""How to run, resolved once from `runtime:`: device, precision, attention and dropout paths."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from vitlab.core import config
from vitlab.core.allocator import keep_freed_memory
from vitlab.vit.device import amp_dtype, resolve_device


@dataclass(frozen=True)
class Runtime:
    """How to run, not what to compute. `amp`, `fused_attention` and `fast_dropout` still move
    the training numbers a little (precision, the order of the dropout draws), so the train
    stage lists them as params."""

    device: torch.device
    amp: torch.dtype | None
    fused_attention: bool
    fast_dropout: bool
    workers: int
    eval_batch_size: int
    progress: bool


def resolve(r: config.Runtime) -> Runtime:
    """runtime.* as a Runtime, with torch's CPU threads set when runtime.threads asks, and
    malloc keeping freed blocks for the next step (vitlab.core.allocator)."""
    device = resolve_device(r.device)
    keep_freed_memory()
    if r.threads:
        torch.set_num_threads(r.threads)
    return Runtime(
        device=device,
        amp=amp_dtype(r.amp, device),
        fused_attention=r.fused_attention,
        fast_dropout=r.fast_dropout,
        workers=min(r.workers, os.cpu_count() or 1),  # never more loaders than cores
        eval_batch_size=r.eval_batch_size,
        progress=r.progress,
    )
