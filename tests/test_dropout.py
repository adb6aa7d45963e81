"""The fast CPU dropout: Bernoulli(p) on every lane, unbiased, seeded, and swappable in place."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vitlab.vit.device import amp_dtype, cpu_has_native_bf16
from vitlab.vit.dropout import (
    LEVELS,
    FastDropout,
    drop_threshold,
    keep_mask,
    keep_masks,
    set_fast_dropout,
)
from vitlab.vit.fused_attention import set_fused_attention
from vitlab.vit.models import build_model


def test_eval_mode_and_p_zero_are_the_identity():
    x = torch.randn(4, 5)
    assert torch.equal(FastDropout(0.1).eval()(x), x)
    assert torch.equal(FastDropout(0.0).train()(x), x)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_every_lane_drops_at_the_rounded_rate_and_the_mean_is_kept(p):
    torch.manual_seed(0)
    x = torch.ones(1 << 21)
    y = FastDropout(p).train()(x)
    rate = drop_threshold(p) / LEVELS
    assert abs(rate - p) <= 0.5 / LEVELS
    dropped = y == 0
    # each of the four 16-bit lanes of one 64-bit draw is its own fair coin
    for lane in range(4):
        assert dropped[lane::4].float().mean().item() == pytest.approx(rate, abs=3e-3)
    assert torch.allclose(y[~dropped], torch.full_like(y[~dropped], 1 / (1 - rate)))
    assert y.mean().item() == pytest.approx(1.0, abs=3e-3)


def test_bf16_activations_are_scaled_by_the_exact_keep_rate_then_rounded_once():
    """A bf16-rounded scale (1.109375 for 1/0.9) would shrink every kept value by 0.16%."""
    torch.manual_seed(0)
    x = torch.rand(1 << 20).bfloat16() + 1  # many mantissas: rounding errors average out
    y = FastDropout(0.1).train()(x)
    kept = y != 0
    assert y.dtype == torch.bfloat16
    ratio = (y[kept].float() / x[kept].float()).mean().item()
    assert ratio == pytest.approx(LEVELS / (LEVELS - drop_threshold(0.1)), rel=1e-4)


def test_masks_follow_the_seed_and_odd_shapes_work():
    x = torch.randn(3, 7, 5)
    torch.manual_seed(1)
    a = FastDropout(0.3).train()(x)
    torch.manual_seed(1)
    b = FastDropout(0.3).train()(x)
    c = FastDropout(0.3).train()(x)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(FastDropout(1.0).train()(x), torch.zeros_like(x))
    assert torch.equal(FastDropout(0.99999).train()(x), torch.zeros_like(x))  # rounds to 1


def _lane_masks(shapes: list[tuple[int, ...]], p: float) -> list[torch.Tensor]:
    """The masks' definition, shape by shape: one 64-bit draw per four 16-bit lanes, a lane
    kept where its low 15 bits reach the threshold."""
    masks = []
    for shape in shapes:
        n = math.prod(shape)
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
        lanes = bits.view(torch.int16)[:n].int() & (LEVELS - 1)
        masks.append((lanes >= drop_threshold(p)).to(torch.bfloat16).view(shape))
    return masks


def test_one_draw_of_several_masks_is_one_draw_per_mask_in_turn():
    shapes = [(256, 17, 17), (1088, 64), (3, 5), (7,)]  # odd sizes leave words part used
    results = []
    for draw in (
        lambda: keep_masks(shapes, 0.1),
        lambda: [keep_mask(torch.Size(shape), 0.1) for shape in shapes],
        lambda: _lane_masks(shapes, 0.1),
    ):
        torch.manual_seed(0)
        results.append((draw(), torch.rand(3)))  # and where the generator went on from
    for masks, after in results[:2]:
        want, want_after = results[2]
        assert [m.shape for m in masks] == [torch.Size(s) for s in shapes]
        assert all(torch.equal(a, b) for a, b in zip(masks, want, strict=True))
        assert torch.equal(after, want_after)


def test_the_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(0)
    x = torch.randn(1000, requires_grad=True)
    y = FastDropout(0.2).train()(x)
    y.sum().backward()
    kept = y.detach() != 0
    scale = LEVELS / (LEVELS - drop_threshold(0.2))
    torch.testing.assert_close(x.grad, kept.float() * scale)


def test_the_swap_keeps_the_keys_and_the_training_flag_and_goes_back():
    model = build_model("vitlab_micro_16", num_classes=4, image_size=32).eval()
    keys = list(model.state_dict())
    n_dropouts = sum(type(m) is nn.Dropout for m in model.modules())
    set_fast_dropout(model)
    fast = [m for m in model.modules() if isinstance(m, FastDropout)]
    assert len(fast) == n_dropouts > 0 and all(not m.training for m in fast)
    assert list(model.state_dict()) == keys
    set_fast_dropout(model, False)
    assert not any(isinstance(m, FastDropout) for m in model.modules())


def test_fused_training_forward_draws_the_same_masks_as_the_stock_one():
    """On CPU with dropout the fused path computes explicit scores: same function, same draws."""
    torch.manual_seed(0)
    model = set_fast_dropout(build_model("vitlab_micro_16", num_classes=4, image_size=32))
    torch.nn.init.normal_(model.fc.weight, std=0.02)
    model.train()
    x = torch.randn(3, 3, 32, 32)
    torch.manual_seed(5)
    stock = model(x)
    set_fused_attention(model)
    torch.manual_seed(5)
    fused = model(x)
    torch.testing.assert_close(fused, stock, rtol=1e-5, atol=1e-5)
    torch.manual_seed(6)
    assert not torch.allclose(model(x), stock)  # dropout is really on


def test_cpu_bf16_is_read_from_the_flags(tmp_path):
    with_bf16, without = tmp_path / "a", tmp_path / "b"
    with_bf16.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    without.write_text("flags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert cpu_has_native_bf16(with_bf16) and not cpu_has_native_bf16(without)
    assert not cpu_has_native_bf16(tmp_path / "missing")
    expected = torch.bfloat16 if cpu_has_native_bf16() else None
    assert amp_dtype("auto", torch.device("cpu")) is expected
    assert amp_dtype("fp32", torch.device("cpu")) is None
