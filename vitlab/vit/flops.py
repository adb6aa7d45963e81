"""Analytic FLOPs of a pytorch_pretrained_vit model, for utilisation against a matmul peak.

Counts multiply-adds of the matmuls (x2 FLOPs each), which is where a ViT spends its time:
patch embedding, q/k/v/out projections, attention scores and mixing, the MLP, and the head.
Training costs three forward passes (forward, and two matmuls per weight in backward).
"""

from __future__ import annotations

from pytorch_pretrained_vit import ViT


def forward_flops(model: ViT, image_size: int) -> int:
    """FLOPs of one image's forward pass."""
    patch = model.patch_embedding.kernel_size[0]
    dim = model.patch_embedding.out_channels
    channels = model.patch_embedding.in_channels
    tokens = (image_size // patch) ** 2 + (1 if hasattr(model, "class_token") else 0)
    blocks = model.transformer.blocks
    ff = blocks[0].pwff.fc1.out_features
    embed = 2 * (tokens - 1) * channels * patch * patch * dim
    per_block = (
        2 * tokens * dim * 3 * dim  # q, k, v
        + 2 * tokens * tokens * dim * 2  # scores q @ k^T and mixing scores @ v
        + 2 * tokens * dim * dim  # output projection
        + 2 * tokens * dim * ff * 2  # MLP
    )
    head = 2 * dim * model.fc.out_features
    return embed + len(blocks) * per_block + head


def train_flops(model: ViT, image_size: int) -> int:
    """FLOPs of one image's training step (forward + backward = 3x forward)."""
    return 3 * forward_flops(model, image_size)
