"""A pytorch_pretrained_vit `Block` as one autograd node: the CPU training path with dropout.

A small ViT's CPU training step costs more in dispatching and recording its ops than in
computing them: B_32's mirror at 64 px has 17 tokens of width 64, and a step at batch 64 ran
about 3,400 ATen calls, each of them microseconds, against about 6 ms of matrix products.
Under autocast every linear layer also casts its input and weight, and autograd records each
op as a node with its own backward. `BlockNode` runs a whole block (two layer norms, the
q/k/v, output and MLP projections, attention, GELU, the three dropouts, two residual adds)
as one node: the same ops in the same dtypes, cast once each, and a hand-written backward of
ATen's own backward kernels in reverse order.

Its numbers are those of the per-op block with FastDropout, bit for bit:
- the dtypes are autocast's (layer norms and residual stream in fp32, products, GELU and
  dropouts in the autocast dtype), or the input's without autocast;
- one exception, on rows of at most `SHORT_ROWS` tokens: the softmax runs in fp32 and the
  kept probabilities are scaled in fp32 and rounded once. CPU autocast runs the stock softmax
  in bf16, and torch's bf16 softmax kernels are slow on short rows (at 17 tokens 140 us
  forward and 210 us backward, against 75 and 13 us in fp32); at 65 tokens they are as fast,
  and fp32 probabilities made steps 5-15% slower;
- the dropout masks come from `keep_mask`, drawn from torch's global generator in the order
  the per-op block draws them (attention probabilities, then the two residual branches);
- the gradient of the block's input sums its contributions in autograd's order.
So on longer rows, and on any row without autocast, it is the stock block, bit for bit.

Measured on a 2-core CPU, whole bf16 training steps, medians of interleaved rounds in one
process against the per-op block: B_32's mirror (17 tokens; the per-op block with its
attention alone as one fp32-softmax node) 1.04-1.09x faster in five runs at batch 64 and 32;
B_16's (65 tokens) 1.01-1.04x in three; L_16's 1.01x.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pytorch_pretrained_vit.transformer import Block, MultiHeadedSelfAttention
from torch import nn

from vitlab.vit.dropout import LEVELS, FastDropout, drop_threshold, keep_mask, keep_scale

SHORT_ROWS = 32  # tokens: an fp32 softmax measured faster at 17, slower at 65; between, unknown
aten = torch.ops.aten


def _softmax_dtype(tokens: int, dtype: torch.dtype) -> torch.dtype:
    """fp32 (or wider) on short rows, where the bf16 kernels are slow; else the stock one's."""
    return torch.promote_types(dtype, torch.float32) if tokens <= SHORT_ROWS else dtype


def _dropout(x: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FastDropout's training forward: (kept and scaled x, its keep mask)."""
    keep = keep_mask(x.shape, p).to(x.dtype)
    return (x * keep).mul_(keep_scale(p)), keep


def _linear_backward(
    grad: torch.Tensor, a: torch.Tensor, w: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of `a @ w.t() + bias`: input (in grad's dtype), weight and bias (in the
    parameter's dtype, as autocast's cast back gives them)."""
    return grad @ w, (grad.t() @ a).to(weight.dtype), grad.sum(0).to(weight.dtype)


class BlockNode(torch.autograd.Function):
    """x + drop(proj(attn(norm1(x)))), then + drop(fc2(gelu(fc1(norm2(.))))), as one node."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, block: Block, *params: torch.Tensor) -> torch.Tensor:
        n1w, n1b, wq, bq, wk, bk, wv, bv, wp, bp, n2w, n2b, w1, b1, w2, b2 = params
        b, s, d = x.shape
        heads = block.attn.n_heads
        width = d // heads
        dt = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        p_attn, p = block.attn.drop.p, block.drop.p
        eps1, eps2 = block.norm1.eps, block.norm2.eps
        with torch.autocast("cpu", enabled=False):
            x = x.reshape(b * s, d)
            ln1, mean1, rstd1 = aten.native_layer_norm(x, [d], n1w, n1b, eps1)
            a1 = ln1.to(dt)
            w3 = [w.to(dt) for w in (wq, wk, wv)]
            q, k, v = (
                torch.addmm(bias.to(dt), a1, w.t())
                .view(b, s, heads, width)
                .transpose(1, 2)
                .reshape(b * heads, s, width)
                for w, bias in zip(w3, (bq, bk, bv), strict=True)
            )
            scores = torch.bmm(q, k.transpose(1, 2)).div_(math.sqrt(width))
            probs = torch.softmax(scores.to(_softmax_dtype(s, dt)), -1)
            keep_attn = keep_mask(probs.shape, p_attn)
            dropped = probs.mul(keep_scale(p_attn)).mul_(keep_attn).to(dt)
            heads_out = torch.bmm(dropped, v).view(b, heads, s, width).transpose(1, 2)
            o = heads_out.reshape(b * s, d)
            wpc = wp.to(dt)
            h1, keep1 = _dropout(torch.addmm(bp.to(dt), o, wpc.t()), p)
            x1 = x + h1
            ln2, mean2, rstd2 = aten.native_layer_norm(x1, [d], n2w, n2b, eps2)
            a2 = ln2.to(dt)
            w1c, w2c = w1.to(dt), w2.to(dt)
            f = torch.addmm(b1.to(dt), a2, w1c.t())
            g = F.gelu(f)
            h2, keep2 = _dropout(torch.addmm(b2.to(dt), g, w2c.t()), p)
            out = x1 + h2
        ctx.save_for_backward(
            *params, x, mean1, rstd1, a1, *w3, q, k, v, probs, keep_attn, dropped, o, wpc,
            keep1, x1, mean2, rstd2, a2, w1c, f, g, w2c, keep2,
        )  # fmt: skip
        ctx.sizes = b, s, d, heads, width
        ctx.scales = keep_scale(p_attn), keep_scale(p)
        return out.view(b, s, d)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        n1w, n1b, wq, bq, wk, bk, wv, bv, wp, bp, n2w, n2b, w1, b1, w2, b2 = saved[:16]
        (x, mean1, rstd1, a1, wqc, wkc, wvc, q, k, v, probs, keep_attn, dropped, o, wpc,
         keep1, x1, mean2, rstd2, a2, w1c, f, g, w2c, keep2) = saved[16:]  # fmt: skip
        b, s, d, heads, width = ctx.sizes
        scale_attn, scale = ctx.scales
        grad = grad.reshape(b * s, d)
        # the MLP branch: its dropout, fc2, GELU, fc1, norm2; then the residual
        gy2 = (grad.to(a2.dtype) * keep2).mul_(scale)
        gg, gw2, gb2 = _linear_backward(gy2, g, w2c, w2)
        gf = aten.gelu_backward(gg, f)
        ga2, gw1, gb1 = _linear_backward(gf, a2, w1c, w1)
        gx1, gn2w, gn2b = aten.native_layer_norm_backward(
            ga2.to(x1.dtype), x1, [d], mean2, rstd2, n2w, n2b, [True, True, True]
        )
        gx1 = gx1 + grad
        # the attention branch: its dropout, the output projection, attention, q/k/v, norm1
        gy = (gx1.to(a1.dtype) * keep1).mul_(scale)
        go, gwp, gbp = _linear_backward(gy, o, wpc, wp)
        go = go.view(b, s, heads, width).transpose(1, 2).reshape(b * heads, s, width)
        gv = torch.bmm(dropped.transpose(1, 2), go)
        gprobs = torch.bmm(go, v.transpose(1, 2)).to(probs.dtype).mul_(scale_attn).mul_(keep_attn)
        gscores = torch._softmax_backward_data(gprobs, probs, -1, probs.dtype)
        gscores = gscores.to(q.dtype).div_(math.sqrt(width))
        gq, gk = torch.bmm(gscores, k), torch.bmm(gscores.transpose(1, 2), q)
        grads = []
        for gh, w, weight in ((gq, wqc, wq), (gk, wkc, wk), (gv, wvc, wv)):
            gh = gh.view(b, heads, s, width).transpose(1, 2).reshape(b * s, d)
            grads.append(_linear_backward(gh, a1, w, weight))
        (gaq, gwq, gbq), (gak, gwk, gbk), (gav, gwv, gbv) = grads
        ga1 = gav.to(x.dtype) + gak.to(x.dtype) + gaq.to(x.dtype)  # autograd's order
        gx, gn1w, gn1b = aten.native_layer_norm_backward(
            ga1, x, [d], mean1, rstd1, n1w, n1b, [True, True, True]
        )
        gx = gx + gx1
        param_grads = (gn1w, gn1b, gwq, gbq, gwk, gbk, gwv, gbv, gwp, gbp, gn2w, gn2b)
        return gx.view(b, s, d), None, *param_grads, gw1, gb1, gw2, gb2


def _fast_dropout_p(drop: nn.Module) -> bool:
    return type(drop) is FastDropout and 0 < drop_threshold(drop.p) < LEVELS


def takes_node(block: Block, x: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether `block` trains through `BlockNode`: CPU training with FastDropout (0 < p < 1),
    no padding mask, the library's own layers and no hooks on them (a hook would not fire
    inside the node)."""
    attn = block.attn
    return (
        block.training
        and mask is None
        and x.device.type == "cpu"
        and _fast_dropout_p(block.drop)
        and _fast_dropout_p(attn.drop)
        and type(attn) is MultiHeadedSelfAttention
        and all(type(m) is nn.Linear for m in _linears(block))
        and type(block.norm1) is type(block.norm2) is nn.LayerNorm
        and not any(_hooked(m) for m in block.modules())
    )


def _linears(block: Block) -> tuple[nn.Linear, ...]:
    attn, pwff = block.attn, block.pwff
    return attn.proj_q, attn.proj_k, attn.proj_v, block.proj, pwff.fc1, pwff.fc2


def _hooked(m: nn.Module) -> bool:
    return bool(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
    )


def block_node(block: Block, x: torch.Tensor) -> torch.Tensor:
    """`block`'s training forward as one node (see `takes_node` for when it applies)."""
    q, k, v = block.attn.proj_q, block.attn.proj_k, block.attn.proj_v
    params = (
        block.norm1.weight, block.norm1.bias, q.weight, q.bias, k.weight, k.bias,
        v.weight, v.bias, block.proj.weight, block.proj.bias,
        block.norm2.weight, block.norm2.bias,
        block.pwff.fc1.weight, block.pwff.fc1.bias, block.pwff.fc2.weight, block.pwff.fc2.bias,
    )  # fmt: skip
    return BlockNode.apply(x, block, *params)
