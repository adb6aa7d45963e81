"""Pointing game and energy inside the mask: hand-built cases, and a model trained in the test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitlab.maps.grounding import grounding_scores, image_scores
from vitlab.maps.rollout import METHODS, attention_maps
from vitlab.report import score_columns
from vitlab.vit.fused_attention import set_fused_attention
from vitlab.vit.models import build_model


def test_pointing_is_a_hit_only_when_the_maximum_is_inside_the_mask():
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[:, 1:3, 1:3] = 1  # a 2x2 object in the middle: area 4/16
    maps = np.zeros((2, 4, 4), np.float32)  # same size as the mask: upsampling is the identity
    maps[0, 2, 2] = 1.0  # peak on the object
    maps[1, 0, 3] = 1.0  # peak in a corner
    s = image_scores(maps, masks)
    np.testing.assert_array_equal(s["pointing"], [1.0, 0.0])
    np.testing.assert_allclose(s["area"], [0.25, 0.25])
    scores = grounding_scores(maps, masks)
    assert scores["pointing"] == 0.5 and scores["pointing_uniform"] == 0.25 and scores["n"] == 2


def test_energy_is_the_share_of_mass_inside_the_mask():
    masks = np.zeros((1, 4, 4), np.uint8)
    masks[0, :2, :] = 1  # top half
    maps = np.ones((1, 4, 4), np.float32)
    maps[0, :2, :] = 3.0  # 3 * 8 inside, 1 * 8 outside
    assert image_scores(maps, masks)["energy"][0] == pytest.approx(24 / 32)
    maps[0, 3, 3] = -5.0  # negative values are clipped: they are not "anti-mass"
    assert image_scores(maps, masks)["energy"][0] == pytest.approx(24 / 31)


def test_a_constant_map_scores_exactly_the_uniform_baseline_and_empty_masks_are_skipped():
    rng = np.random.default_rng(0)
    masks = (rng.uniform(size=(6, 32, 32)) < rng.uniform(0.05, 0.5, size=(6, 1, 1))).astype(
        np.uint8
    )
    masks[5] = 0  # no object: not scored
    for value in (0.0, 0.7):  # all-zero and all-equal maps carry no location
        scores = grounding_scores(np.full((6, 4, 4), value, np.float32), masks, chunk=4)
        assert scores["n"] == 5
        assert scores["pointing_uniform"] == pytest.approx(masks[:5].mean(), abs=1e-6)
        assert scores["energy_uniform"] == scores["pointing_uniform"]
        assert scores["pointing"] == pytest.approx(scores["pointing_uniform"], abs=1e-6)
        assert scores["energy"] == pytest.approx(scores["energy_uniform"], abs=1e-6)


def test_maps_are_upsampled_to_the_mask_before_scoring():
    # a 2x2 map on a 4x4 mask: the top-left patch holds the object
    masks = np.zeros((1, 4, 4), np.uint8)
    masks[0, :2, :2] = 1
    maps = np.array([[[1.0, 0.0], [0.0, 0.0]]], np.float32)
    s = image_scores(maps, masks)
    assert s["pointing"][0] == 1.0
    assert 0.5 < s["energy"][0] < 1.0  # bilinear: most, not all, of the mass on the patch


def test_score_columns_name_each_method():
    scores = {
        "best_epoch": {
            m: {"pointing": 0.9, "energy": 0.5, "pointing_uniform": 0.2, "energy_uniform": 0.2,
                "n": 10}
            for m in ("rollout", "last_layer")
        }
    }  # fmt: skip
    cols = score_columns(scores)
    assert cols == {
        "best_epoch": {
            "pointing_rollout": 0.9,
            "energy_rollout": 0.5,
            "pointing_last_layer": 0.9,
            "energy_last_layer": 0.5,
            "pointing_uniform": 0.2,
            "energy_uniform": 0.2,
        }
    }


COLOURS = torch.tensor([[1.0, -0.6, -0.6], [-0.6, 1.0, -0.6], [-0.6, -0.6, 1.0], [1.0, 1.0, -0.6]])


def planted(n: int, seed: int, size: int = 32, side: int = 12) -> tuple:
    """Noise, a grey 6 px distractor, and a 12 px square whose colour IS the class."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(n, 3, size, size, generator=g)
    masks = torch.zeros(n, size, size, dtype=torch.uint8)
    y = torch.randint(0, len(COLOURS), (n,), generator=g)
    for i in range(n):
        r, c = torch.randint(0, size - side + 1, (2,), generator=g).tolist()
        patch = COLOURS[y[i]][:, None, None] + 0.1 * torch.randn(3, side, side, generator=g)
        x[i, :, r : r + side, c : c + side] = patch
        masks[i, r : r + side, c : c + side] = 1
        for _ in range(20):
            r2, c2 = torch.randint(0, size - 6 + 1, (2,), generator=g).tolist()
            if not masks[i, r2 : r2 + 6, c2 : c2 + 6].any():
                x[i, :, r2 : r2 + 6, c2 : c2 + 6] = torch.rand(1, generator=g) * 1.6 - 0.8
                break
    return x, y, masks.numpy()


def test_maps_of_a_model_trained_here_land_on_the_planted_object():
    torch.manual_seed(0)
    x, y, _ = planted(2048, seed=0)
    x_test, y_test, masks = planted(256, seed=100)
    model = build_model("vitlab_micro_16", num_classes=4, image_size=32, dropout=0.0)
    set_fused_attention(model)  # trained on the fast path, mapped on the explicit one
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        idx = torch.randint(0, len(x), (64,))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    maps, logits = attention_maps(model, x_test)
    assert (logits.argmax(1) == y_test).float().mean() > 0.95
    for method in METHODS:
        s = grounding_scores(maps[method], masks)
        assert s["pointing_uniform"] == pytest.approx(144 / 1024)
        # measured about 0.8-0.88 (uniform 0.14) over seeds 0-2
        assert s["pointing"] > 0.6, (method, s)
        assert s["energy"] > 1.8 * s["energy_uniform"], (method, s)
    # a map that ignores the image (the same map for every image) is no better than uniform
    blind = grounding_scores(maps["rollout"].mean(0, keepdim=True).expand(256, -1, -1), masks)
    assert blind["pointing"] < 0.35
