"""The attention-map extraction sizes its batch to the memory at hand, and says so."""

from __future__ import annotations

import psutil
import pytest
import torch

from vitlab.core.errors import VitlabError
from vitlab.maps.memory import GIB, SHARE, bytes_per_image, extraction_batch, fit_batch
from vitlab.maps.rollout import METHODS, attention_maps
from vitlab.vit.models import build_model

CPU = torch.device("cpu")


def micro(image_size: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("vitlab_micro_16", num_classes=5, image_size=image_size)


def saved_bytes(model: torch.nn.Module, images: int) -> int:
    """autograd's saved bytes (parameters excluded) of `images` images: the test's own count."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        attention_maps(model, torch.randn(images, 3, 32, 32), METHODS)
    return sum(seen.values())


def test_without_gradients_an_image_costs_its_attention_matrices():
    model = micro()
    layers, heads, tokens = 2, 2, 4 * 4 + 1
    scores = layers * heads * tokens**2 * 4
    assert bytes_per_image(model, ["rollout", "last_layer"], CPU) == scores


def test_gradient_rollout_adds_the_graph_and_the_count_scales_with_the_batch():
    model = micro()
    per_image = bytes_per_image(model, METHODS, CPU)
    scores = bytes_per_image(model, ["rollout"], CPU)
    assert per_image > 3 * scores  # the saved graph outweighs the matrices it ends in
    # eight images save eight times what one does (give or take the batch-independent bits)
    assert saved_bytes(model, 8) == pytest.approx(8 * (per_image - scores), rel=0.05)
    assert bytes_per_image(micro(64), METHODS, CPU) > 4 * per_image  # 65 tokens against 17


def test_the_batch_fits_a_share_of_the_free_memory():
    assert fit_batch(16, 2 * GIB, 10 * GIB, METHODS) == int(SHARE * 10 / 2)
    assert fit_batch(2, 2 * GIB, 10 * GIB, METHODS) == 2
    with pytest.raises(
        VitlabError, match=r"maps\.methods .* one image needs 2\.0 GiB.*grad_rollout"
    ):
        fit_batch(16, 2 * GIB, 2 * GIB, METHODS)


def test_a_batch_that_fits_is_kept_and_says_nothing():
    batch, line = extraction_batch(micro(), METHODS, 8, CPU)
    assert (batch, line) == (8, None)  # kilobytes an image on a machine with gigabytes free


def test_a_batch_too_large_for_this_machine_is_lowered_with_one_line():
    per_image = bytes_per_image(micro(), METHODS, CPU)
    huge = int(2 * psutil.virtual_memory().available // per_image)
    batch, line = extraction_batch(micro(), METHODS, huge, CPU)
    assert 1 <= batch < huge
    assert line.startswith(f"maps.batch_size {huge} needs ") and f"extracting {batch} " in line
