"""The utilisation a training step could reach if only its matrix products took time.

A step's utilisation is its model FLOPs over its time, as a share of the measured matmul peak.
A small model falls short of the peak for two reasons: its products are too small to run at
the peak, and everything else (norms, softmax, dropout, casts, the optimizer) takes time too.
This separates the two. It records every matrix product one step runs, forward and backward,
with the shapes, strides and dtypes autocast gave them, then replays those products alone,
back to back. The step's FLOPs over that replay time is a ceiling: no change to the work
between the products can take the step past it. Only larger products can.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
PRODUCTS = {
    aten.mm.default,
    aten.addmm.default,
    aten.bmm.default,
    aten.baddbmm.default,
    aten.convolution.default,
    aten.convolution_backward.default,
}


class _Spec:
    """A tensor argument's layout, to be rebuilt with random values."""

    def __init__(self, t: torch.Tensor) -> None:
        self.shape, self.stride = tuple(t.shape), t.stride()
        self.dtype, self.device = t.dtype, t.device

    def build(self) -> torch.Tensor:
        extent = 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True) if n)
        base = torch.randn(extent, dtype=self.dtype, device=self.device)
        return base.as_strided(self.shape, self.stride)


class _Recorder(TorchDispatchMode):
    """Runs every op as usual and notes each matrix product with its argument layouts."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, list, dict]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in PRODUCTS:
            spec = [_Spec(a) if isinstance(a, torch.Tensor) else a for a in args]
            self.calls.append((func, spec, dict(kwargs)))
        return func(*args, **kwargs)


def record_products(step: Callable[[], None]) -> list[tuple[Any, list, dict]]:
    """The matrix products of one call of `step` (a whole training step)."""
    recorder = _Recorder()
    with recorder:
        step()
    return recorder.calls


def matmul_flops(calls: list[tuple[Any, list, dict]]) -> int:
    """FLOPs of the recorded mm/addmm/bmm/baddbmm calls (2 per multiply-add; convolutions
    are not counted)."""
    total = 0
    for func, args, _ in calls:
        a, b = (args[0], args[1]) if func in (aten.mm.default, aten.bmm.default) else args[1:3]
        if func in (aten.mm.default, aten.addmm.default):
            total += 2 * a.shape[0] * a.shape[1] * b.shape[1]
        elif func in (aten.bmm.default, aten.baddbmm.default):
            total += 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
    return total


def products_seconds(
    calls: list[tuple[Any, list, dict]], device: torch.device, rounds: int = 7
) -> float:
    """Seconds the recorded products take alone, back to back: the best of `rounds` replays.

    The best, like the peak it is compared with: load from elsewhere only ever slows a replay.
    """
    replay = [
        (func, [a.build() if isinstance(a, _Spec) else a for a in args], kwargs)
        for func, args, kwargs in calls
    ]
    times = []
    for _ in range(rounds + 1):  # the first replay warms the kernels up and is not counted
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for func, args, kwargs in replay:
            func(*args, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times[1:])
