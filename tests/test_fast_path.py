"""The fast training path: same outputs, same checkpoints, honest FLOP counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pytorch_pretrained_vit import ViT
from torch.utils.flop_counter import FlopCounterMode

from vitlab.vit.flops import forward_flops, train_flops
from vitlab.vit.fused_attention import set_fused_attention
from vitlab.vit.models import build_model


@pytest.mark.parametrize(("arch", "size"), [("vitlab_B_16", 64), ("B_16_imagenet1k", 384)])
def test_fused_eval_outputs_equal_the_stock_forward(arch, size):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=37, image_size=size).eval()
    torch.nn.init.normal_(model.fc.weight, std=0.02)  # a zero head would hide every difference
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        stock = model(x)
        set_fused_attention(model)
        fused = model(x)
    torch.testing.assert_close(fused, stock, rtol=1e-4, atol=1e-4)


def test_a_checkpoint_trained_on_the_fast_path_loads_into_the_stock_vit(tmp_path):
    torch.manual_seed(0)
    model = set_fused_attention(build_model("vitlab_B_16", num_classes=37, image_size=64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(8, 3, 64, 64), torch.randint(0, 37, (8,))
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(model.state_dict(), tmp_path / "fast.pt")
    stock = ViT(
        "vitlab_B_16", pretrained=False, num_classes=37, image_size=64
    )  # the library itself
    stock.load_state_dict(torch.load(tmp_path / "fast.pt", weights_only=True), strict=True)
    model.eval(), stock.eval()
    with torch.no_grad():
        torch.testing.assert_close(stock(x), set_fused_attention(model, False)(x))


@pytest.mark.parametrize(
    ("arch", "size"), [("vitlab_B_16", 64), ("vitlab_B_32", 64), ("B_32_imagenet1k", 384)]
)
def test_analytic_flops_match_torch_flop_counter(arch, size):
    model = build_model(arch, num_classes=37, image_size=size).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    assert forward_flops(model, size) == pytest.approx(counter.get_total_flops(), rel=0.01)
    assert train_flops(model, size) == 3 * forward_flops(model, size)
