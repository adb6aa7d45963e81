"""A fused attention path for pytorch_pretrained_vit models, same weights and same outputs.

The stock `MultiHeadedSelfAttention` builds the (B, H, S, S) score matrix with an explicit
softmax (in the scores' dtype: bf16 under CPU autocast) and keeps it in `.scores`. For
training we swap in `F.scaled_dot_product_attention` (flash / memory-efficient kernels on a
GPU), which never materialises the scores. One exception: SDPA's CPU kernels have no
dropout, so CPU training with attention dropout would fall back to SDPA's math path and
torch's serial Bernoulli. There the stock forward runs, dropping through the block's own
dropout module; with `FastDropout`s (`runtime.fast_dropout`) the whole block trains as one
autograd node (`vitlab.vit.block_node`), on short rows with an fp32 softmax. Parameter names,
state_dict keys and checkpoints are untouched; the swap is per module instance, and
`explicit_attention` switches back for figures.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from pytorch_pretrained_vit.transformer import Block, MultiHeadedSelfAttention

from vitlab.vit.block_node import block_node, takes_node


def _fused_forward(self: MultiHeadedSelfAttention, x: torch.Tensor, mask=None) -> torch.Tensor:
    dropout = self.drop.p if self.training else 0.0
    if dropout > 0 and x.device.type == "cpu":  # SDPA has no CPU dropout: the stock forward
        out = MultiHeadedSelfAttention.forward(self, x, mask)
        self.scores = None
        return out
    b, s, d = x.shape
    h = self.n_heads
    q, k, v = (
        p(x).view(b, s, h, d // h).transpose(1, 2) for p in (self.proj_q, self.proj_k, self.proj_v)
    )
    self.scores = None
    attn_mask = None if mask is None else mask[:, None, None, :].bool()
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
    return out.transpose(1, 2).reshape(b, s, d)


def _block_forward(self: Block, x: torch.Tensor, mask=None) -> torch.Tensor:
    if takes_node(self, x, mask):
        return block_node(self, x)
    return Block.forward(self, x, mask)


def _attention_modules(model: torch.nn.Module) -> list[MultiHeadedSelfAttention]:
    return [m for m in model.modules() if isinstance(m, MultiHeadedSelfAttention)]


def set_fused_attention(model: torch.nn.Module, enabled: bool = True) -> torch.nn.Module:
    """Use SDPA (enabled) or the stock explicit softmax (disabled) in every attention block;
    enabled, blocks that train on a CPU with FastDropout run as one node (block_node)."""
    for m in model.modules():
        forward = _swapped_forward(m)
        if forward is None:
            continue
        if enabled:
            m.forward = types.MethodType(forward, m)
        elif "forward" in m.__dict__:
            del m.forward
    return model


def _swapped_forward(m: torch.nn.Module) -> Callable | None:
    if isinstance(m, MultiHeadedSelfAttention):
        return _fused_forward
    return _block_forward if isinstance(m, Block) else None


def is_fused(model: torch.nn.Module) -> bool:
    """Whether `model`'s attention blocks use the fused path."""
    mods = _attention_modules(model)
    return bool(mods) and all("forward" in m.__dict__ for m in mods)


@contextlib.contextmanager
def attention_path(model: torch.nn.Module, *, fused: bool) -> Iterator[torch.nn.Module]:
    """Temporarily use SDPA (`fused`) or the stock explicit softmax in every block."""
    was_fused = is_fused(model)
    set_fused_attention(model, fused)
    try:
        yield model
    finally:
        set_fused_attention(model, was_fused)


def explicit_attention(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """The stock path, so each block's `.scores` holds its attention map (figures)."""
    return attention_path(model, fused=False)


def fused_attention(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """SDPA in every block: how the study scores every checkpoint."""
    return attention_path(model, fused=True)
