"""A faster dropout for CPU training, same distribution, same modules, same checkpoints.

On this CPU a third of a small ViT's training step is `aten::bernoulli_`: torch draws one
32-bit Mersenne-Twister number per element, serially. `FastDropout` draws one 64-bit number
per four elements and compares each 16-bit lane to a threshold, so `p` is rounded to a
multiple of 1/65536 (0.1 -> 0.100006; FlashAttention rounds it to 1/255) and the kept values
are scaled by the exact inverse of the rounded keep rate, which keeps the layer unbiased. The
draws come from torch's global generator, so seeds and the resume state cover them. On a GPU,
or in eval mode, it is `nn.Dropout`. It has no parameters: state_dict keys are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

LEVELS = 1 << 16  # one 16-bit lane per element


def drop_threshold(p: float) -> int:
    """How many of the 65536 lane values drop an element: round(p * 65536)."""
    return round(p * LEVELS)


class FastDropout(nn.Dropout):
    """`nn.Dropout` whose CPU training mask is drawn 16 bits per element."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        if self.p >= 1:
            return x * 0
        drop = drop_threshold(self.p)
        bits = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
        lanes = bits.view(torch.int16)[: x.numel()].view(x.shape)  # uniform on -32768..32767
        scale = LEVELS / (LEVELS - drop)
        return x * ((lanes >= drop - LEVELS // 2) * scale).to(x.dtype)


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
