"""What the position embeddings learned: cosine similarity of every patch position with every other.

The ViT paper's Fig. 7: for patch position (r, c), a grid-shaped tile of its embedding's cosine
similarity with each position; learned embeddings show row/column structure and locality.
The CLS token's embedding has no position and is left out.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vitlab.maps.rollout import grid_shape


def patch_position_embeddings(model: torch.nn.Module) -> torch.Tensor:
    """(rows * cols, D) position embeddings of the patch tokens, row-major, without CLS."""
    rows, cols = grid_shape(model)
    pos = model.positional_embedding.pos_embedding.detach()[0]
    return pos[pos.shape[0] - rows * cols :].float().cpu()


def position_similarity(embeddings: torch.Tensor | np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(rows, cols, rows, cols) cosine similarities: [r, c] is position (r, c)'s tile.

    `embeddings` is (rows * cols, D) in row-major patch order (how the model flattens patches).
    """
    e = torch.as_tensor(embeddings)
    rows, cols = grid
    if e.dim() != 2 or e.shape[0] != rows * cols:
        raise ValueError(f"embeddings {tuple(e.shape)} do not fit a {rows}x{cols} grid")
    unit = F.normalize(e.double(), dim=1)
    sim = (unit @ unit.T).clamp(-1, 1)
    return sim.reshape(rows, cols, rows, cols).float().numpy()


def model_position_similarity(model: torch.nn.Module) -> np.ndarray:
    """`position_similarity` of a model's own patch position embeddings, on its own grid."""
    return position_similarity(patch_position_embeddings(model), grid_shape(model))
