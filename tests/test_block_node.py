"""BlockNode: a whole ViT block as one autograd node for CPU training with FastDropout, bit for
bit the per-op block (on short rows with an fp32 softmax)."""

from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn.functional as F

from vitlab.vit.block_node import SHORT_ROWS
from vitlab.vit.dropout import set_fast_dropout
from vitlab.vit.fused_attention import set_fused_attention
from vitlab.vit.models import build_model

NODE = "BlockNodeBackward"


def _explicit_fp32_softmax(self, x: torch.Tensor, mask=None) -> torch.Tensor:
    """pytorch_pretrained_vit's attention forward, op for op, with its softmax in fp32."""
    b, s, d = x.shape
    q, k, v = (
        p(x).view(b, s, self.n_heads, -1).transpose(1, 2)
        for p in (self.proj_q, self.proj_k, self.proj_v)
    )
    scores = q @ k.transpose(-2, -1) / math.sqrt(k.size(-1))
    probs = self.drop(F.softmax(scores.float(), dim=-1)).to(v.dtype)
    return (probs @ v).transpose(1, 2).reshape(b, s, d)


def _model(path: str, image_size: int = 32) -> torch.nn.Module:
    """vitlab_micro_16 (17 tokens at 32 px) with FastDropout: `node` (the fused path), `stock`
    (the library's forward) or `per_op` (stock blocks, attention with an fp32 softmax)."""
    torch.manual_seed(0)
    model = build_model("vitlab_micro_16", num_classes=37, image_size=image_size).train()
    torch.nn.init.normal_(model.fc.weight, std=0.5)  # a zero head would hide every difference
    set_fast_dropout(model)
    if path == "node":
        set_fused_attention(model)
    if path == "per_op":
        for block in model.transformer.blocks:
            block.attn.forward = types.MethodType(_explicit_fp32_softmax, block.attn)
    return model


def _training_steps(model: torch.nn.Module, amp: bool, steps: int = 2) -> tuple[list, dict]:
    """Logits of each step and the parameters and gradients after `steps` AdamW steps."""
    torch.manual_seed(0)
    size = model.image_size
    x, y = torch.randn(8, 3, size, size), torch.randint(0, 37, (8,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(1)
    logits = []
    for _ in range(steps):
        with torch.autocast("cpu", torch.bfloat16, enabled=amp):
            logits.append(model(x))
        opt.zero_grad()
        F.cross_entropy(logits[-1].float(), y).backward()
        opt.step()
    state = {n: p.detach() for n, p in model.named_parameters()}
    state |= {f"{n}.grad": p.grad for n, p in model.named_parameters()}
    return logits, state


def _nodes(logits: torch.Tensor) -> list[str]:
    seen, todo, names = set(), [logits.grad_fn], []
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        todo.extend(next_node for next_node, _ in node.next_functions)
    return names


def _assert_same(got: tuple[list, dict], want: tuple[list, dict]) -> None:
    for a, b in zip(got[0], want[0], strict=True):
        assert torch.equal(a, b)
    assert got[1].keys() == want[1].keys()
    different = [name for name in got[1] if not torch.equal(got[1][name], want[1][name])]
    assert not different


@pytest.mark.parametrize(
    ("amp", "reference"), [(True, "per_op"), (False, "per_op"), (False, "stock")]
)
def test_training_steps_are_the_per_op_blocks_bit_for_bit(amp, reference):
    node = _model("node")
    got = _training_steps(node, amp)
    assert _nodes(got[0][-1]).count(NODE) == len(node.transformer.blocks)
    assert all(g.abs().sum() > 0 for n, g in got[1].items() if n.endswith(".grad"))
    _assert_same(got, _training_steps(_model(reference), amp))


def test_long_rows_keep_the_stock_softmax_and_are_the_stock_blocks_bit_for_bit():
    assert 17 <= SHORT_ROWS < 65
    node = _model("node", image_size=64)  # 65 tokens
    got = _training_steps(node, amp=True)
    assert _nodes(got[0][-1]).count(NODE) == len(node.transformer.blocks)
    _assert_same(got, _training_steps(_model("stock", image_size=64), amp=True))


def test_it_runs_only_for_cpu_training_with_fast_dropout():
    x = torch.randn(2, 3, 32, 32)
    assert NODE in _nodes(_model("node")(x))
    assert NODE not in _nodes(set_fast_dropout(_model("node"), False)(x))  # torch's dropout
    assert NODE not in _nodes(_model("node").eval()(x))
    assert NODE not in _nodes(set_fused_attention(_model("node"), False)(x))
    model = _model("node")
    model.transformer.blocks[0].drop = torch.nn.Dropout(0.1)  # one block's own: torch's
    assert _nodes(model(x)).count(NODE) == len(model.transformer.blocks) - 1


def test_a_hooked_block_runs_op_by_op_so_its_hooks_fire():
    model, seen = _model("node"), []
    model.transformer.blocks[0].pwff.fc1.register_forward_hook(lambda *_: seen.append(1))
    names = _nodes(model(torch.randn(2, 3, 32, 32)))
    assert seen == [1]
    assert names.count(NODE) == len(model.transformer.blocks) - 1
