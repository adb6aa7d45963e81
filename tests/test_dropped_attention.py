"""DroppedAttention: the explicit attention with an fp32 softmax and FastDropout, as one node."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitlab.vit.dropout import FastDropout, set_fast_dropout
from vitlab.vit.dropped_attention import SHORT_ROWS, dropped_attention
from vitlab.vit.fused_attention import set_fused_attention
from vitlab.vit.models import build_model

B, H, S, W = 8, 4, 17, 16


def _attention_and_grads(attend, dtype: torch.dtype):
    """Output and input gradients of `attend(q, k, v)`, inputs and the mask's seed fixed."""
    torch.manual_seed(0)
    inputs = [torch.randn(B, S, H * W).to(dtype).requires_grad_() for _ in range(3)]
    grad = torch.randn(B, H, S, W).to(dtype)
    torch.manual_seed(1)
    out = attend(*(t.view(B, S, H, W).transpose(1, 2) for t in inputs))
    out.backward(grad)
    return out, [t.grad for t in inputs]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_it_is_the_explicit_attention_with_an_fp32_softmax_bit_for_bit(dtype):
    drop = FastDropout(0.1).train()

    def explicit(q, k, v):
        scores = q @ k.transpose(-2, -1) / math.sqrt(W)
        return drop(F.softmax(scores.float(), dim=-1)).to(dtype) @ v

    out, grads = _attention_and_grads(lambda q, k, v: dropped_attention(q, k, v, 0.1), dtype)
    want, want_grads = _attention_and_grads(explicit, dtype)
    assert (out == 0).float().mean() < 0.01  # the mask drops probabilities, not outputs
    assert torch.equal(out, want)
    for got, expected in zip(grads, want_grads, strict=True):
        assert torch.equal(got, expected)


def _training_step(model: torch.nn.Module, amp: bool) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 37, (4,))
    torch.manual_seed(1)
    with torch.autocast("cpu", torch.bfloat16, enabled=amp):
        logits = model(x)
    F.cross_entropy(logits.float(), y).backward()
    return logits, {name: p.grad for name, p in model.named_parameters()}


def _model(fused: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("vitlab_micro_16", num_classes=37, image_size=32).train()  # 17 tokens
    torch.nn.init.normal_(model.fc.weight, std=0.02)  # a zero head would hide every difference
    return set_fused_attention(set_fast_dropout(model), fused)


def _nodes(logits: torch.Tensor) -> set[str]:
    seen, todo, names = set(), [logits.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(next_node for next_node, _ in node.next_functions)
    return names


def test_a_short_row_fp32_training_step_is_the_stock_one_bit_for_bit():
    logits, grads = _training_step(_model(fused=True), amp=False)
    assert "DroppedAttentionBackward" in _nodes(logits)
    stock_logits, stock_grads = _training_step(_model(fused=False), amp=False)
    assert torch.equal(logits, stock_logits)
    assert all(torch.equal(grads[name], stock_grads[name]) for name in grads)


def test_it_runs_only_for_cpu_training_with_fast_dropout_on_short_rows():
    assert 17 <= SHORT_ROWS < 65
    logits, _ = _training_step(_model(fused=True), amp=True)
    assert "DroppedAttentionBackward" in _nodes(logits)
    torch_dropout = set_fast_dropout(_model(fused=True), False)
    assert "DroppedAttentionBackward" not in _nodes(_training_step(torch_dropout, amp=True)[0])
    torch.manual_seed(0)
    long_rows = build_model("vitlab_micro_16", num_classes=37, image_size=64).train()  # 65
    set_fused_attention(set_fast_dropout(long_rows))
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", torch.bfloat16):
        assert "DroppedAttentionBackward" not in _nodes(long_rows(x))
