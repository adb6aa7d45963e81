"""Attention maps of a pytorch_pretrained_vit ViT, read from the model's own attention scores.

All methods come from one eval-mode forward pass on the stock explicit-softmax path
(`explicit_attention`), where every block keeps `attn.scores` (B, H, S, S), token 0 = CLS:

- `last_layer`: the last block's CLS -> patch attention averaged over heads (what peers draw).
- `rollout` (Abnar & Zuidema 2020): per layer fuse the heads, add the identity for the residual
  path, renormalise each ROW to sum 1, multiply the layers (first layer rightmost), read the CLS
  row over the patch tokens. (jacobgil/vit-explain divides by the column sums instead.)
- `grad_rollout` (Chefer, Gur & Wolf 2021, "Generic Attention-model Explainability", ICCV):
  class-specific: per layer A_bar = mean over heads of (dy_c/dA * A) clipped at 0, then
  R <- R + A_bar @ R from R = I; read R's CLS row. c is the predicted class unless given.

The patch grid comes from the model (image size // patch size), never from a constant, so the
same code serves the 8x8 CPU default and 24x24 grids at 384 px.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vitlab.core.errors import VitlabError
from vitlab.prepared import Split, batches, normalize
from vitlab.vit.fused_attention import explicit_attention

METHODS = ("last_layer", "rollout", "grad_rollout")
HEAD_FUSIONS = ("mean", "max", "min")


def check_methods(methods: Sequence[str]) -> list[str]:
    """The methods as a list, or a one-line error naming the parameter and the choices."""
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise VitlabError(
            f"maps.methods: {unknown or methods!r} is not a list of known methods; "
            f"choose from {', '.join(METHODS)}"
        )
    return methods


def grid_shape(model: torch.nn.Module) -> tuple[int, int]:
    """(rows, cols) of the model's patch grid, from its image size and patch-embedding stride."""
    size = model.image_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    fh, fw = model.patch_embedding.kernel_size
    grid = (h // fh, w // fw)
    tokens = model.positional_embedding.pos_embedding.shape[1]
    if tokens != grid[0] * grid[1] + 1:
        raise VitlabError(
            f"model has {tokens} tokens, expected {grid[0]}x{grid[1]} patches + CLS; "
            "only CLS-token ViTs are supported"
        )
    return grid


def fuse_heads(attn: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """(B, H, S, S) -> (B, S, S) by the mean (the paper), max or min over heads."""
    if how == "mean":
        return attn.mean(1)
    if how == "max":
        return attn.amax(1)
    if how == "min":
        return attn.amin(1)
    raise VitlabError(
        f"maps.head_fusion: {how!r} is unknown; choose from {', '.join(HEAD_FUSIONS)}"
    )


def add_residual(attn: torch.Tensor) -> torch.Tensor:
    """(A + I) with each ROW renormalised to sum 1 (keepdim, so row i is divided by its sum)."""
    a = attn + torch.eye(attn.shape[-1], dtype=attn.dtype, device=attn.device)
    return a / a.sum(dim=-1, keepdim=True)


def rollout_matrix(attentions: Sequence[torch.Tensor], head_fusion: str = "mean") -> torch.Tensor:
    """Abnar & Zuidema's rollout (B, S, S): prod_l add_residual(fuse(A_l)), last layer leftmost."""
    result = None
    for attn in attentions:
        a = add_residual(fuse_heads(attn.float(), head_fusion))
        result = a if result is None else a @ result
    if result is None:
        raise VitlabError("the model has no attention layers")
    return result


def grad_rollout_matrix(
    attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Chefer et al.'s relevance (B, S, S): R = I; R += mean_h((grad * A)^+) @ R, layer by layer."""
    b, _, s, _ = attentions[0].shape
    r = torch.eye(s, device=attentions[0].device).expand(b, s, s).clone()
    for attn, grad in zip(attentions, gradients, strict=True):
        cam = (grad.float() * attn.float()).clamp(min=0).mean(1)
        r = r + cam @ r
    return r


def cls_to_patches(matrix: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The CLS row over the patch tokens of (B, S, S) or (B, H, S, S; heads averaged) matrices,
    reshaped to (B, rows, cols)."""
    if matrix.dim() == 4:
        matrix = matrix.mean(1)
    return matrix[:, 0, 1:].reshape(matrix.shape[0], *grid)


def attention_maps(
    model: torch.nn.Module,
    images: torch.Tensor,
    methods: Sequence[str] = METHODS,
    *,
    head_fusion: str = "mean",
    target: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Maps {method: (B, rows, cols)} and logits (B, C) for a batch of normalised images.

    One forward pass in eval mode on the explicit-scores path; `grad_rollout` adds one backward
    pass to the attention scores only (torch.autograd.grad on the kept `.scores` tensors, which
    is what `scores.retain_grad()` would give, without touching the parameters' `.grad`).
    Images in a batch are independent (LayerNorm is per token), so batching changes nothing.
    """
    methods = check_methods(methods)
    grid = grid_shape(model)
    blocks = [blk.attn for blk in model.transformer.blocks]
    need_grad = "grad_rollout" in methods
    was_training = model.training
    model.eval()
    try:
        with explicit_attention(model), torch.set_grad_enabled(need_grad):
            x = images.detach().requires_grad_(need_grad)  # a graph even if weights are frozen
            logits = model(x)
            attns = [blk.scores for blk in blocks]
            maps: dict[str, torch.Tensor] = {}
            if need_grad:
                cls = logits.argmax(1) if target is None else torch.as_tensor(target)
                picked = logits.gather(1, cls.to(logits.device).view(-1, 1)).sum()
                grads = torch.autograd.grad(picked, attns)
                relevance = grad_rollout_matrix([a.detach() for a in attns], grads)
                maps["grad_rollout"] = cls_to_patches(relevance, grid)
            attns = [a.detach() for a in attns]
            if "last_layer" in methods:
                maps["last_layer"] = cls_to_patches(attns[-1].float(), grid)
            if "rollout" in methods:
                maps["rollout"] = cls_to_patches(rollout_matrix(attns, head_fusion), grid)
    finally:
        for blk in blocks:
            blk.scores = None  # free the (B, H, S, S) tensors and their graph
        model.train(was_training)
    return {m: maps[m].detach() for m in methods}, logits.detach()


def split_maps(
    model: torch.nn.Module,
    split: Split,
    methods: Sequence[str] = METHODS,
    *,
    batch_size: int,
    device: torch.device,
    head_fusion: str = "mean",
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Maps {method: (N, rows, cols) float32} and logits (N, C) for a whole split, batched."""
    methods = check_methods(methods)
    if batch_size < 1:
        raise VitlabError(f"maps.batch_size must be >= 1 (got {batch_size})")
    out: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    logits = []
    for x, _ in batches(split, batch_size, shuffle=False):
        maps, lg = attention_maps(model, normalize(x.to(device)), methods, head_fusion=head_fusion)
        for m in methods:
            out[m].append(maps[m].float().cpu().numpy())
        logits.append(lg.float().cpu().numpy())
    return {m: np.concatenate(v) for m, v in out.items()}, np.concatenate(logits)


def upsample(maps: torch.Tensor | np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(N, rows, cols) -> (N, H, W), bilinear (align_corners=False); one function, so the map
    drawn on an image is the map scored against its mask."""
    t = torch.as_tensor(maps).float()
    return F.interpolate(t[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
