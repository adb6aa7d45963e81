"""A faster dropout for CPU training, same distribution, same modules, same checkpoints.

On this CPU a third of a small ViT's training step was `aten::bernoulli_`: torch draws one
32-bit Mersenne-Twister number per element, serially. `FastDropout` draws one 64-bit number
per four elements and compares the low 15 bits of each 16-bit lane to a threshold, so `p` is
rounded to a multiple of 1/32768 (0.1 -> 0.100006; FlashAttention rounds it to 1/255). The
mask is built as bf16 ones and zeros with integer ops on the lanes: bool tensors, which a
comparison would give, are slow to multiply or convert on a CPU. The kept values are scaled
by the exact inverse of the rounded keep rate, in float arithmetic, and rounded once. A
scale rounded to bf16 first would shrink every bf16 activation (by 0.16% at p = 0.1). So the
layer is unbiased. The draws come from torch's global generator, so seeds and the resume
state cover them. On a GPU, or in eval mode, it is `nn.Dropout`. It has no parameters:
state_dict keys are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

LEVELS = 1 << 15  # the low 15 bits of a 16-bit lane
BF16_ONE = 0x3F80  # the bit pattern of 1.0 in bfloat16


def drop_threshold(p: float) -> int:
    """How many of the 32768 lane values drop an element: round(p * 32768)."""
    return round(p * LEVELS)


def keep_scale(p: float) -> float:
    """The exact inverse of the rounded keep rate: what kept values are multiplied by."""
    return LEVELS / (LEVELS - drop_threshold(p))


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """A bf16 tensor of ones (kept, rate 1 - drop_threshold(p) / LEVELS) and zeros."""
    return keep_masks([shape], p)[0]


def keep_masks(shapes: Sequence[Sequence[int]], p: float) -> list[torch.Tensor]:
    """`keep_mask` of each shape, from one draw: the same bits as one call per shape in turn,
    in fewer ops (the generator fills the draw's 64-bit words in order)."""
    sizes = [math.prod(shape) for shape in shapes]
    words = [(n + 3) // 4 for n in sizes]
    bits = torch.empty(sum(words), dtype=torch.int64).random_(-(2**63), None)
    lanes = bits.view(torch.int16)
    # (lane & 0x7FFF) is uniform on 0..32767 and at least the threshold where kept: 1 there,
    # 0 where dropped; times 1.0's bit pattern, the lanes read as bf16 ones and zeros
    lanes.bitwise_and_(LEVELS - 1).ge_(drop_threshold(p)).mul_(BF16_ONE)
    chunks = lanes.view(torch.bfloat16).split([4 * w for w in words])
    return [c[:n].view(shape) for c, n, shape in zip(chunks, sizes, shapes, strict=True)]


class FastDropout(nn.Dropout):
    """`nn.Dropout` whose CPU training mask is drawn 16 bits per element."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        if drop_threshold(self.p) >= LEVELS:  # p within 1/65536 of 1 drops every lane
            return x * 0
        kept = x * keep_mask(x.shape, self.p).to(x.dtype)
        return kept.mul_(keep_scale(self.p))


def set_fast_dropout(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Swap every `nn.Dropout` of `model` for `FastDropout` (enabled) or back (disabled)."""
    old, new = (nn.Dropout, FastDropout) if enabled else (FastDropout, nn.Dropout)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is old:
                swapped = new(child.p, child.inplace)
                swapped.train(child.training)
                setattr(parent, name, swapped)
    return model
