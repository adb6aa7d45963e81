"""Attention with FastDropout on its probabilities as one autograd node: the CPU training path
for short rows.

On a CPU, SDPA has no dropout, so attention blocks that train with dropout run
pytorch_pretrained_vit's explicit forward: a matmul, a division, a softmax, a FastDropout (about
ten small ops of its own) and a second matmul, each recorded by autograd. CPU autocast runs that
softmax in bf16, and torch's bf16 softmax kernels are slow on short rows: at 17 tokens (B_32's
mirror at 64 px) 140 us forward and 210 us backward against 75 and 13 us in fp32. There the
ops also cost more to dispatch and record than to compute. `DroppedAttention` computes the
same attention with the softmax in fp32, as CUDA's autocast runs it, and half the ops in one
node:
- the scores are divided by sqrt(head width) in the input dtype;
- the softmax runs in fp32;
- the kept probabilities are scaled in fp32 and rounded once to the input dtype;
- backward mirrors it: the dropout's scale and mask and the softmax's backward in fp32,
  rounded once, then divided by sqrt(head width).
The keep mask comes from `keep_mask`, drawn from torch's global generator as FastDropout draws
it. So with the same seed its output and gradients are, bit for bit, those of the explicit
forward with an fp32 softmax; without autocast, those of the stock path.

Measured on a 2-core CPU (forward and backward of one block's attention, then whole bf16
training steps):
- 17 tokens: 919 -> 597 us; B_32's mirror steps 6-9% faster;
- 65 tokens (B_16's and L_16's mirrors): 3,788 -> 3,836 us; steps 5-15% slower, since the
  bf16 kernels are as fast there and the fp32 copies cost more.
So `fused_attention` takes this path only for rows of at most `SHORT_ROWS` tokens.
"""

from __future__ import annotations

import math

import torch

from vitlab.vit.dropout import keep_mask, keep_scale

SHORT_ROWS = 32  # tokens: faster measured at 17, slower at 65; in between not measured


class DroppedAttention(torch.autograd.Function):
    """FastDropout(softmax(q k^T / sqrt(w)) in fp32) v, for (B, H, S, w) heads q, k, v."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
        b, h, s, w = q.shape
        scale = keep_scale(p)
        with torch.autocast(q.device.type, enabled=False):
            q, k, v = (t.reshape(b * h, s, w) for t in (q, k, v))
            scores = torch.bmm(q, k.transpose(1, 2)).div_(math.sqrt(w))
            probs = torch.softmax(scores.float(), -1)
            keep = keep_mask(probs.shape, p)
            dropped = probs.mul(scale).mul_(keep).to(q.dtype)
            out = torch.bmm(dropped, v)
        ctx.save_for_backward(q, k, v, probs, keep, dropped)
        ctx.keep_scale, ctx.root_w = scale, math.sqrt(w)
        return out.view(b, h, s, w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        q, k, v, probs, keep, dropped = ctx.saved_tensors
        shape = grad.shape
        grad = grad.reshape(q.shape)
        grad_v = torch.bmm(dropped.transpose(1, 2), grad)
        grad_probs = torch.bmm(grad, v.transpose(1, 2)).float().mul_(ctx.keep_scale).mul_(keep)
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, torch.float32)
        grad_scores = grad_scores.to(q.dtype).div_(ctx.root_w)
        grad_q = torch.bmm(grad_scores, k)
        grad_k = torch.bmm(grad_scores.transpose(1, 2), q)
        return grad_q.view(shape), grad_k.view(shape), grad_v.view(shape), None


def dropped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
    """Attention of (B, H, S, w) heads with FastDropout(p) on the probabilities, as one node."""
    return DroppedAttention.apply(q, k, v, p)
