"""Batch augmentation with plain torch ops (no torchvision): runs on whatever device holds x.

One affine warp per image covers random zoom, shift and horizontal flip, the augmentations
that keep an object's coat intact. Parameters are drawn for a whole (global) batch from a
seeded CPU generator, then applied to the rows a process holds, so the same seed gives the
same augmentation on any device and on any number of data-parallel ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_affine(
    n: int,
    generator: torch.Generator,
    *,
    scale: tuple[float, float] = (1.0, 1.0),
    translate: float = 0.0,
    flip: bool = True,
) -> torch.Tensor:
    """(n, 2, 3) affine matrices in `F.affine_grid`'s convention: zoom, shift, flip."""
    s = torch.empty(n).uniform_(scale[0], scale[1], generator=generator)
    t = torch.empty(n, 2).uniform_(-translate, translate, generator=generator) * 2
    f = torch.ones(n)
    if flip:
        f = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = f / s
    theta[:, 1, 1] = 1 / s
    theta[:, :, 2] = t
    return theta


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Apply per-image affine matrices to a float batch (B, C, H, W).

    Pure flips (the default recipe) take an exact, cheap path; anything else resamples with
    `grid_sample` (bilinear, reflected borders).
    """
    theta = theta.to(x.device, x.dtype)
    flips = theta[:, 0, 0]
    if bool(
        (theta[:, :, 2] == 0).all() and (theta[:, 1, 1] == 1).all() and (flips.abs() == 1).all()
    ):
        return torch.where((flips < 0).view(-1, 1, 1, 1), x.flip(-1), x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
