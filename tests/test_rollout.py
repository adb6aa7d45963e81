"""Attention maps from a model's own scores: rollout against the paper, rows, gradients, grids."""

from __future__ import annotations

import pytest
import torch

from vitlab.core.errors import VitlabError
from vitlab.maps.rollout import (
    HEAD_FUSIONS,
    METHODS,
    add_residual,
    attention_maps,
    check_methods,
    fuse_heads,
    grid_shape,
    rollout_matrix,
)
from vitlab.vit.fused_attention import explicit_attention, is_fused, set_fused_attention
from vitlab.vit.models import build_model


def tiny(image_size: int = 48, arch: str = "vitlab_micro_16", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=5, image_size=image_size)
    torch.nn.init.normal_(model.fc.weight, std=0.5)  # a zero head has zero gradients
    return model.eval()


def scores_of(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad(), explicit_attention(model):
        model(x)
    return [blk.attn.scores.clone() for blk in model.transformer.blocks]


def paper_rollout(scores: list[torch.Tensor], b: int) -> list[list[float]]:
    """Abnar & Zuidema eq.: A_l = 0.5 W_att + 0.5 I, rows renormalised; A~_l = A_l A~_(l-1).

    Written with explicit loops on Python floats, independent of the library's tensor code.
    (0.5 W + 0.5 I has row sums 1 already; the renormalisation is the library's general form.)
    """
    rollout = None
    for attn in scores:
        heads, s = attn.shape[1], attn.shape[2]
        a = [
            [sum(attn[b, h, i, j].item() for h in range(heads)) / heads for j in range(s)]
            for i in range(s)
        ]
        for i in range(s):
            a[i][i] += 1.0
            row = sum(a[i])
            a[i] = [v / row for v in a[i]]
        if rollout is None:
            rollout = a
        else:
            rollout = [
                [sum(a[i][k] * rollout[k][j] for k in range(s)) for j in range(s)] for i in range(s)
            ]
    return rollout


def test_rollout_equals_the_papers_formula_written_with_loops():
    model = tiny()
    x = torch.randn(2, 3, 48, 48)
    scores = scores_of(model, x)
    assert len(scores) == 2 and scores[0].shape == (2, 2, 37, 37)
    maps, _ = attention_maps(model, x, ["rollout"])
    assert maps["rollout"].shape == (2, 6, 6)
    for b in range(2):
        direct = torch.tensor(paper_rollout(scores, b))
        expected = direct[0, 1:].reshape(6, 6).float()
        torch.testing.assert_close(maps["rollout"][b], expected, rtol=1e-5, atol=1e-7)
    # the comparison is sharp: the layers in the wrong order give another map
    swapped = rollout_matrix(scores[::-1])[:, 0, 1:].reshape(2, 6, 6)
    assert (swapped - maps["rollout"]).abs().max() > 1e-4


def test_rows_are_renormalised_not_columns():
    # Hand-checked: A + I = [[1.6, .2], [.3, 1.3]], row sums 1.8 and 1.6
    a = torch.tensor([[[0.6, 0.2], [0.3, 0.3]]])
    expected = torch.tensor([[[1.6 / 1.8, 0.2 / 1.8], [0.3 / 1.6, 1.3 / 1.6]]])
    torch.testing.assert_close(add_residual(a), expected)
    # Heads fused by their mean keep softmax rows (sum 1), so every row of A + I sums to 2 and
    # either axis divides by 2; fused by max, rows differ, and only rows may be normalised.
    model = tiny()
    scores = scores_of(model, torch.randn(3, 3, 48, 48))
    for attn in scores:
        fused = fuse_heads(attn, "max")
        assert (fused.sum(-1).amax() - fused.sum(-1).amin()) > 1e-2  # rows differ: a real test
        torch.testing.assert_close(add_residual(fused).sum(-1), torch.ones(3, 37))
    for fusion in HEAD_FUSIONS:
        torch.testing.assert_close(rollout_matrix(scores, fusion).sum(-1), torch.ones(3, 37))

    # jacobgil/vit-explain's line, `a / a.sum(dim=-1)` on one (S, S) matrix, divides column j by
    # row j's sum; the same checks catch it.
    def vit_explain(fused: torch.Tensor) -> torch.Tensor:
        a = fused + torch.eye(fused.shape[-1])
        return a / a.sum(dim=-1)

    assert not torch.allclose(vit_explain(a[0]), expected[0])
    buggy = vit_explain(fuse_heads(scores[0], "max")[0])
    assert (buggy.sum(-1) - 1).abs().max() > 1e-3


def chefer_direct(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Chefer et al. 2021 (Generic attention-model explainability), with `scores.retain_grad()`
    on the stock path and the rule R <- R + mean_h((grad * A)^+) R written with loops."""
    with explicit_attention(model):
        logits = model(x)
        scores = [blk.attn.scores for blk in model.transformer.blocks]
        for s in scores:
            s.retain_grad()
        logits.gather(1, target.view(-1, 1)).sum().backward()
    model.zero_grad(set_to_none=True)
    b, heads, s, _ = scores[0].shape
    out = torch.zeros(b, s - 1)
    for n in range(b):
        r = [[1.0 if i == j else 0.0 for j in range(s)] for i in range(s)]
        for attn in scores:
            cam = [
                [
                    sum(
                        max(0.0, (attn.grad[n, h, i, j] * attn[n, h, i, j]).item())
                        for h in range(heads)
                    )
                    / heads
                    for j in range(s)
                ]
                for i in range(s)
            ]
            r = [
                [r[i][j] + sum(cam[i][k] * r[k][j] for k in range(s)) for j in range(s)]
                for i in range(s)
            ]
        out[n] = torch.tensor(r[0][1:])
    return out


def test_grad_rollout_equals_chefers_rule_and_depends_on_the_class():
    model = tiny(image_size=32)
    x = torch.randn(2, 3, 32, 32)
    maps, logits = attention_maps(model, x, ["grad_rollout"])
    pred = logits.argmax(1)
    expected = chefer_direct(model, x, pred).reshape(2, 4, 4)
    torch.testing.assert_close(maps["grad_rollout"], expected, rtol=1e-4, atol=1e-6)
    other = (pred + 1) % 5
    for_other, _ = attention_maps(model, x, ["grad_rollout"], target=other)
    torch.testing.assert_close(
        for_other["grad_rollout"],
        chefer_direct(model, x, other).reshape(2, 4, 4),
        rtol=1e-4,
        atol=1e-6,
    )
    assert (for_other["grad_rollout"] - maps["grad_rollout"]).abs().max() > 1e-4


def test_last_layer_is_the_cls_row_averaged_over_heads():
    model = tiny()
    x = torch.randn(2, 3, 48, 48)
    last = scores_of(model, x)[-1]
    maps, _ = attention_maps(model, x, ["last_layer"])
    torch.testing.assert_close(maps["last_layer"], last.mean(1)[:, 0, 1:].reshape(2, 6, 6))


def test_batched_maps_equal_one_image_at_a_time():
    model = tiny()
    x = torch.randn(5, 3, 48, 48)
    together, logits = attention_maps(model, x)
    for i in range(5):
        alone, lg = attention_maps(model, x[i : i + 1])
        torch.testing.assert_close(lg, logits[i : i + 1], rtol=1e-5, atol=1e-6)
        for m in METHODS:
            torch.testing.assert_close(alone[m], together[m][i : i + 1], rtol=1e-5, atol=1e-7)


def test_maps_read_in_eval_mode_leave_the_model_as_it_was():
    model = tiny().train()
    set_fused_attention(model)
    x = torch.randn(3, 3, 48, 48)
    maps, logits = attention_maps(model, x)
    assert model.training and is_fused(model)  # mode and fused path restored
    assert all(p.grad is None for p in model.parameters())  # no gradients left on the weights
    assert all(blk.attn.scores is None for blk in model.transformer.blocks)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x), rtol=1e-5, atol=1e-5)  # eval, no dropout
    again, _ = attention_maps(model, x)
    for m in METHODS:
        torch.testing.assert_close(again[m], maps[m])  # deterministic: dropout was off


@pytest.mark.parametrize(
    ("arch", "size", "grid"),
    [
        ("vitlab_micro_16", 32, (4, 4)),
        ("vitlab_micro_32", 32, (2, 2)),
        ("vitlab_micro_16", 80, (10, 10)),
        ("vitlab_B_16", 64, (8, 8)),
        ("B_32_imagenet1k", 384, (12, 12)),
        ("vitlab_micro_16", 192, (24, 24)),  # the 24x24 grid of B_16/L_16 at 384 px
    ],
)
def test_the_grid_comes_from_the_model(arch, size, grid):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=37, image_size=size)
    assert grid_shape(model) == grid
    maps, logits = attention_maps(model, torch.randn(1, 3, size, size))
    assert logits.shape == (1, 37)
    for m in METHODS:
        assert maps[m].shape == (1, *grid)
        assert torch.isfinite(maps[m]).all() and (maps[m] >= 0).all()
    del model


def test_unknown_method_or_head_fusion_is_one_clear_error():
    with pytest.raises(VitlabError, match=r"maps.methods: .*'saliency'.*last_layer, rollout"):
        check_methods(["rollout", "saliency"])
    with pytest.raises(VitlabError, match=r"maps.head_fusion: 'median' is unknown.*mean, max"):
        rollout_matrix([torch.full((1, 2, 3, 3), 1 / 3)], "median")


def test_rollout_of_uniform_attention_is_uniform_over_patches():
    # Uniform attention in every layer: by symmetry every patch gets the same rollout weight.
    s, layers = 17, 3
    uniform = torch.full((1, 2, s, s), 1.0 / s)
    r = rollout_matrix([uniform] * layers)
    patches = r[0, 0, 1:]
    torch.testing.assert_close(patches, torch.full_like(patches, patches[0].item()))
