"""Batch augmentation with plain torch ops (no torchvision): runs on whatever device holds x.

One affine warp per image covers random scale (zoom), translation and horizontal flip, the
augmentations that keep an object's coat intact; `grid_sample` does it for the whole batch at
once, on the GPU when there is one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_affine(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    scale: tuple[float, float] = (0.85, 1.15),
    translate: float = 0.1,
    flip: bool = True,
) -> torch.Tensor:
    """Warp each image of a float batch (B, C, H, W) by its own random zoom/shift/flip.

    Random numbers come from `generator` (on the CPU), so a seeded generator gives the same
    augmentation on any device.
    """
    b = x.shape[0]
    s = torch.empty(b).uniform_(scale[0], scale[1], generator=generator)
    t = torch.empty(b, 2).uniform_(-translate, translate, generator=generator) * 2
    f = torch.ones(b)
    if flip:
        f = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = f / s
    theta[:, 1, 1] = 1 / s
    theta[:, :, 2] = t
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
