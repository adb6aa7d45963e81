"""Does a map point at the object? Pointing game and energy inside the mask, beside a uniform map.

Peers trust attention maps by eye; these two numbers check them against ground-truth masks
(synthetic masks, Oxford-IIIT Pet trimaps). Per image, the patch-grid map is upsampled
bilinearly to the mask's size (the same upsampling the figures draw) and clipped at 0:

- pointing: 1 if the map's maximum pixel lies inside the mask, else 0 (Zhang et al. 2016,
  without a tolerance margin; the first maximum on ties).
- energy: the share of the map's mass inside the mask, sum(map * mask) / sum(map).
- a uniform map has no maximum: its pointing is the expected hit rate of a randomly placed
  maximum, i.e. the mask's area fraction, and its energy is the area fraction too. A constant
  map (all mass equal, or all zero) is scored exactly like the uniform map.

Images whose mask is empty are skipped; `n` counts the images scored.
"""

from __future__ import annotations

import numpy as np
import torch

from vitlab.maps.rollout import upsample

SCORE_KEYS = ("pointing", "energy", "pointing_uniform", "energy_uniform", "n")


def image_scores(maps: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray) -> dict:
    """Per-image arrays: pointing (0/1 or the area for a constant map), energy, area fraction,
    and `valid` (mask not empty), for maps (N, rows, cols) and masks (N, H, W) with 1 = object."""
    mask = torch.tensor(np.asarray(masks), dtype=torch.float32)  # a copy: masks may be mmapped
    if mask.dim() != 3 or len(mask) != len(maps):
        raise ValueError(f"masks {tuple(mask.shape)} do not match maps {tuple(np.shape(maps))}")
    mask = (mask > 0).float()
    grid = torch.as_tensor(maps).float().clamp(min=0).flatten(1)
    constant = grid.amax(1) == grid.amin(1)  # decided on the grid: interpolation adds rounding
    up = upsample(maps, tuple(mask.shape[1:])).clamp(min=0).flatten(1)
    mask = mask.flatten(1)
    area = mask.mean(1)
    total = up.sum(1)
    hit = mask.gather(1, up.argmax(1, keepdim=True))[:, 0]
    energy = (up * mask).sum(1) / total.clamp(min=1e-30)
    return {
        "pointing": torch.where(constant, area, hit).numpy(),
        "energy": torch.where(constant, area, energy).numpy(),
        "area": area.numpy(),
        "valid": (area > 0).numpy(),
    }


def grounding_scores(
    maps: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray, *, chunk: int = 256
) -> dict:
    """{pointing, energy, pointing_uniform, energy_uniform, n}: means over the images with a
    non-empty mask, computed `chunk` images at a time (masks may be a memory map)."""
    parts = [
        image_scores(maps[i : i + chunk], np.asarray(masks[i : i + chunk]))
        for i in range(0, len(maps), chunk)
    ]
    per = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    valid = per.get("valid", np.zeros(0, bool))
    n = int(valid.sum())
    if n == 0:
        return {"pointing": None, "energy": None, "pointing_uniform": None,
                "energy_uniform": None, "n": 0}  # fmt: skip
    uniform = round(float(per["area"][valid].mean()), 6)
    return {
        "pointing": round(float(per["pointing"][valid].mean()), 6),
        "energy": round(float(per["energy"][valid].mean()), 6),
        "pointing_uniform": uniform,
        "energy_uniform": uniform,
        "n": n,
    }
