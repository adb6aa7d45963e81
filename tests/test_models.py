"""The model factory: small and released architectures, weights files, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pytorch_pretrained_vit import ViT

from vitlab.core.errors import VitlabError
from vitlab.vit.fused_attention import explicit_attention, set_fused_attention
from vitlab.vit.models import build_model, load_checkpoint

RELEASED = {"B_16_imagenet1k": 577, "B_32_imagenet1k": 145, "L_16_imagenet1k": 577}


def test_unknown_architecture_names_the_choices():
    with pytest.raises(VitlabError, match=r"unknown model architecture 'B_99'.*B_16_imagenet1k"):
        build_model("B_99", num_classes=37, image_size=384)


def test_image_size_must_be_a_multiple_of_the_patch():
    with pytest.raises(VitlabError, match="not a positive multiple of .* patch size 32"):
        build_model("B_32_imagenet1k", num_classes=37, image_size=400)


def test_pretrained_without_weights_is_an_error_not_a_random_init(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(VitlabError, match=r"pretrained weights for B_32_imagenet1k not found at"):
        build_model("B_32_imagenet1k", num_classes=37, image_size=384, pretrained=True)


@pytest.mark.parametrize("arch", sorted(RELEASED))
def test_released_architecture_builds_at_384_and_takes_a_training_step(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=37, image_size=384)
    assert model.positional_embedding.pos_embedding.shape[1] == RELEASED[arch]
    assert model.fc.out_features == 37
    set_fused_attention(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9)
    x, y = torch.randn(1, 3, 384, 384), torch.tensor([3])
    before = model.transformer.blocks[0].attn.proj_q.weight.detach().clone()
    for _ in range(2):  # the head starts at zero, so the body moves from the second step on
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    assert not torch.equal(before, model.transformer.blocks[0].attn.proj_q.weight)


@pytest.mark.parametrize("arch", sorted(RELEASED))
def test_a_file_in_the_released_layout_loads_with_a_new_head(arch, tmp_path, monkeypatch):
    # The released files are ViT(<name>) state_dicts with a 1000-way head (no pre-logits).
    torch.manual_seed(1)
    released = ViT(arch, pretrained=False).state_dict()
    released["fc.weight"].normal_()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(released, hub / f"{arch}.pth")  # the hub cache, as torch.hub would leave it
    model = build_model(arch, num_classes=37, image_size=384, pretrained=True)
    state = model.state_dict()
    for key in ("patch_embedding.weight", "transformer.blocks.0.attn.proj_q.weight", "norm.weight"):
        assert torch.equal(state[key], released[key])
    assert torch.count_nonzero(state["fc.weight"]) == 0  # a fresh 37-way head, not the 1000-way one
    del released, state, model


def test_position_embeddings_are_resized_for_another_image_size(tmp_path):
    released = ViT("B_32_imagenet1k", pretrained=False).state_dict()
    path = tmp_path / "B_32.pth"
    torch.save(released, path)
    model = build_model(
        "B_32_imagenet1k", num_classes=37, image_size=224, pretrained=True, weights=path
    )
    got = model.positional_embedding.pos_embedding.detach()
    assert got.shape == (1, 50, 768)
    assert torch.equal(model.class_token, released["class_token"])
    old = released["positional_embedding.pos_embedding"]  # (1, 1 + 12 * 12, 768) at 384 px
    assert torch.equal(got[0, 0], old[0, 0])  # the class token's position is kept as released
    grid = old[0, 1:].reshape(12, 12, 768).permute(2, 0, 1)[None]  # the released 12 x 12 grid
    want = F.interpolate(grid, size=(7, 7), mode="bilinear", align_corners=True)
    torch.testing.assert_close(got[0, 1:], want[0].permute(1, 2, 0).reshape(49, 768))


def test_checkpoint_with_other_keys_or_shapes_is_refused(tmp_path):
    model = build_model("vitlab_micro_16", num_classes=8, image_size=32)
    other = build_model("vitlab_micro_32", num_classes=8, image_size=32).state_dict()
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(
        VitlabError, match=r"other.pt: patch_embedding.weight has shape \(32, 3, 16, 16\)"
    ):
        load_checkpoint(model, tmp_path / "other.pt")
    partial = model.state_dict()
    partial.pop("norm.bias")
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(VitlabError, match=r"partial.pt: keys differ .*norm.bias"):
        load_checkpoint(model, tmp_path / "partial.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(VitlabError, match="corrupt.pt is not a readable checkpoint"):
        load_checkpoint(model, tmp_path / "corrupt.pt")
    with pytest.raises(VitlabError, match="missing.pt is missing"):
        load_checkpoint(model, tmp_path / "missing.pt")


def test_fused_attention_gives_the_stock_outputs_and_keeps_the_keys():
    torch.manual_seed(0)
    model = build_model("vitlab_B_16", num_classes=37, image_size=64).eval()
    x = torch.randn(4, 3, 64, 64)
    keys = list(model.state_dict())
    stock = model(x)
    set_fused_attention(model)
    torch.testing.assert_close(model(x), stock, rtol=1e-4, atol=1e-5)
    assert list(model.state_dict()) == keys
    assert model.transformer.blocks[0].attn.scores is None
    with explicit_attention(model):
        model(x)
        assert model.transformer.blocks[0].attn.scores.shape == (4, 4, 65, 65)


def test_released_weights_are_fetched_into_the_hub_cache_when_a_url_is_named(tmp_path, monkeypatch):
    import functools
    import http.server
    import threading

    from vitlab.core.config import Model
    from vitlab.core.download import md5sum
    from vitlab.vit.models import fetch_weights

    served = tmp_path / "www"
    served.mkdir()
    torch.save(ViT("vitlab_micro_16", pretrained=False).state_dict(), served / "w.pth")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = f"http://127.0.0.1:{server.server_address[1]}/w.pth"
    try:
        m = {"arch": "vitlab_micro_16", "pretrained": True, "weights": "", "weights_url": url}
        with pytest.raises(VitlabError, match="md5"):
            fetch_weights(Model(**m, weights_md5="0" * 32))
        assert not (tmp_path / "torch/hub/checkpoints/vitlab_micro_16.pth").exists()
        fetch_weights(Model(**m, weights_md5=md5sum(served / "w.pth")))
        model = build_model("vitlab_micro_16", num_classes=8, image_size=32, pretrained=True)
        assert torch.equal(model.class_token, torch.load(served / "w.pth")["class_token"])
    finally:
        server.shutdown()
