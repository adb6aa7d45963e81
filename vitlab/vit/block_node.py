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
- the three dropout masks come from one `keep_masks` draw on torch's global generator: the
  bits of the per-op block's three `keep_mask` draws, in its order (attention probabilities,
  then the two residual branches);
- the gradient of the block's input sums its contributions in autograd's order.
So on longer rows, and on any row without autocast, it is the stock block, bit for bit.

Measured on a 2-core CPU, bf16, batch 64, interleaved rounds in one process:
- B_32's mirror (17 tokens), whole training steps against the per-op block with its attention
  alone as one fp32-softmax node: 1.03-1.07x by the median of 25 rounds, 1.05-1.07x by the
  minimum, in three runs; vitlab over HF transformers' bf16 ViT went from 1.26-1.34x to
  1.35-1.38x in the same runs;
- B_16's (65 tokens; the stock block's bits): one block's forward and backward 3-4% faster,
  whole steps within this machine's noise (0.95-1.04x).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pytorch_pretrained_vit.transformer import Block, MultiHeadedSelfAttention
from torch import nn

from vitlab.vit.dropout import LEVELS, FastDropout, drop_threshold, keep_masks, keep_scale

SHORT_ROWS = 32  # tokens: an fp32 softmax measured faster at 17, slower at 65; between, unknown
aten = torch.ops.aten


def _softmax_dtype(tokens: int, dtype: torch.dtype) -> torch.dtype:
    """fp32 (or wider) on short rows, where the bf16 kernels are slow; else the stock one's."""
    return torch.promote_types(dtype, torch.float32) if tokens <= SHORT_ROWS else dtype


def _linear_backward(
    grad: torch.Tensor, a: torch.Tensor, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of `a @ w.t() + bias` for input, weight and bias, all in grad's dtype."""
    return grad @ w, grad.t() @ a, grad.sum(0)


def _heads(t: torch.Tensor, b: int, s: int, heads: int) -> torch.Tensor:
    """(b * s, d) rows -> (b * heads, s, width) heads, contiguous for bmm."""
    return t.view(b, s, heads, -1).transpose(1, 2).reshape(b * heads, s, -1)


def _rows(t: torch.Tensor, b: int, heads: int) -> torch.Tensor:
    """(b * heads, s, width) heads -> (b * s, d) rows."""
    _, s, width = t.shape
    return t.view(b, heads, s, width).transpose(1, 2).reshape(b * s, heads * width)


class BlockNode(torch.autograd.Function):
    """x + drop(proj(attn(norm1(x)))), then + drop(fc2(gelu(fc1(norm2(.))))), as one node.

    q, k and v come from one product with the three weights stacked (each output element sums
    the same terms in the same order, so the bits are those of three products); their input
    gradients stay three products, summed in fp32 as autograd sums them.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, block: Block, *params: torch.Tensor) -> torch.Tensor:
        n1w, n1b, wq, bq, wk, bk, wv, bv, wp, bp, n2w, n2b, w1, b1, w2, b2 = params
        b, s, d = x.shape
        heads = block.attn.n_heads
        dt = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        p, scale = block.drop.p, keep_scale(block.drop.p)
        with torch.autocast("cpu", enabled=False):
            # the three masks in the per-op block's order, from one draw
            keep_attn, keep1, keep2 = keep_masks([(b * heads, s, s), (b * s, d), (b * s, d)], p)
            x = x.reshape(b * s, d)
            ln1, mean1, rstd1 = aten.native_layer_norm(x, [d], n1w, n1b, block.norm1.eps)
            a1 = ln1.to(dt)
            wqkv = torch.cat((wq, wk, wv)).to(dt)
            qkv = torch.addmm(torch.cat((bq, bk, bv)).to(dt), a1, wqkv.t())
            q, k, v = (_heads(t, b, s, heads) for t in qkv.split(d, 1))
            scores = torch.bmm(q, k.transpose(1, 2)).div_(math.sqrt(q.shape[-1]))
            probs = torch.softmax(scores.to(_softmax_dtype(s, dt)), -1)
            dropped = probs.mul(scale).mul_(keep_attn).to(dt)
            o = _rows(torch.bmm(dropped, v), b, heads)
            wpc = wp.to(dt)
            x1 = x + (torch.addmm(bp.to(dt), o, wpc.t()) * keep1.to(dt)).mul_(scale)
            ln2, mean2, rstd2 = aten.native_layer_norm(x1, [d], n2w, n2b, block.norm2.eps)
            a2 = ln2.to(dt)
            w1c, w2c = w1.to(dt), w2.to(dt)
            f = torch.addmm(b1.to(dt), a2, w1c.t())
            g = F.gelu(f)
            out = x1 + (torch.addmm(b2.to(dt), g, w2c.t()) * keep2.to(dt)).mul_(scale)
        ctx.save_for_backward(
            n1w, n1b, n2w, n2b, x, mean1, rstd1, a1, wqkv, q, k, v, probs, keep_attn,
            dropped, o, wpc, keep1, x1, mean2, rstd2, a2, w1c, f, g, w2c, keep2,
        )  # fmt: skip
        ctx.heads, ctx.scale, ctx.dtypes = heads, scale, [t.dtype for t in params]
        return out.view(b, s, d)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (n1w, n1b, n2w, n2b, x, mean1, rstd1, a1, wqkv, q, k, v, probs, keep_attn, dropped, o,
         wpc, keep1, x1, mean2, rstd2, a2, w1c, f, g, w2c, keep2) = ctx.saved_tensors  # fmt: skip
        b, s, d = grad.shape
        heads, scale, dt = ctx.heads, ctx.scale, a1.dtype
        grad = grad.reshape(b * s, d)
        # the MLP branch: its dropout, fc2, GELU, fc1, norm2; then the residual
        gy2 = (grad.to(dt) * keep2).mul_(scale)
        gg, gw2, gb2 = _linear_backward(gy2, g, w2c)
        gf = aten.gelu_backward(gg, f)
        ga2, gw1, gb1 = _linear_backward(gf, a2, w1c)
        gx1, gn2w, gn2b = aten.native_layer_norm_backward(
            ga2.to(x1.dtype), x1, [d], mean2, rstd2, n2w, n2b, [True, True, True]
        )
        gx1 = gx1 + grad
        # the attention branch: its dropout, the output projection, attention, q/k/v, norm1
        gy = (gx1.to(dt) * keep1).mul_(scale)
        go, gwp, gbp = _linear_backward(gy, o, wpc)
        go = _heads(go, b, s, heads)
        gv = torch.bmm(dropped.transpose(1, 2), go)
        gprobs = torch.bmm(go, v.transpose(1, 2)).to(probs.dtype).mul_(scale).mul_(keep_attn)
        gscores = torch._softmax_backward_data(gprobs, probs, -1, probs.dtype)
        gscores = gscores.to(dt).div_(math.sqrt(q.shape[-1]))
        gq, gk = torch.bmm(gscores, k), torch.bmm(gscores.transpose(1, 2), q)
        gqkv = torch.cat([_rows(t, b, heads) for t in (gq, gk, gv)], 1)
        gwqkv, gbqkv = gqkv.t() @ a1, gqkv.sum(0)
        gaq, gak, gav = (
            (t @ w).to(x.dtype) for t, w in zip(gqkv.split(d, 1), wqkv.split(d), strict=True)
        )
        gx, gn1w, gn1b = aten.native_layer_norm_backward(
            gav + gak + gaq, x, [d], mean1, rstd1, n1w, n1b, [True, True, True]
        )  # autograd's order of the three sums
        gx = gx + gx1
        grads = (
            gn1w, gn1b, *_interleave(gwqkv.split(d), gbqkv.split(d)), gwp, gbp, gn2w, gn2b,
            gw1, gb1, gw2, gb2,
        )  # fmt: skip
        return (
            gx.view(b, s, d),
            None,
            *(t.to(dtype) for t, dtype in zip(grads, ctx.dtypes, strict=True)),
        )


def _interleave(
    weights: tuple[torch.Tensor, ...], biases: tuple[torch.Tensor, ...]
) -> list[torch.Tensor]:
    return [t for pair in zip(weights, biases, strict=True) for t in pair]


def _fast_dropout_in_use(drop: nn.Module) -> bool:
    return type(drop) is FastDropout and 0 < drop_threshold(drop.p) < LEVELS


def takes_node(block: Block, x: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether `block` trains through `BlockNode`: CPU training with FastDropout (one p,
    0 < p < 1), no padding mask, the library's own layers and no hooks on them (a hook would
    not fire inside the node)."""
    attn = block.attn
    return (
        block.training
        and mask is None
        and x.device.type == "cpu"
        and _fast_dropout_in_use(block.drop)
        and type(attn.drop) is FastDropout
        and attn.drop.p == block.drop.p
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
