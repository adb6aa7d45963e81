"""How many images the attention-map extraction can take at once in the memory at hand.

Gradient rollout keeps every layer's graph: autograd's saved tensors plus a gradient for each
attention matrix: 1.8 GiB an image for L_16 at 384 px. A batch that does not fit is killed
by the kernel with no message of its own. So the stage sizes its batch first. It runs one
image and counts the bytes that image adds: autograd's saved tensors (parameters excluded),
plus its attention matrices, kept or differentiated. It then takes as many images as fit in a
share of the memory free on the device. The batch size changes no map.
"""

from __future__ import annotations

from collections.abc import Sequence

import psutil
import torch

from vitlab.core.errors import VitlabError
from vitlab.maps.rollout import attention_maps, check_methods, grid_shape

SHARE = 0.7  # of the free memory: room for transient tensors the count does not see
GIB = 2**30


def free_bytes(device: torch.device) -> int:
    """Memory free for new tensors on `device`: the GPU's free memory, or the host's available."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def bytes_per_image(model: torch.nn.Module, methods: Sequence[str], device: torch.device) -> int:
    """Bytes one image adds to `attention_maps` with `methods`, counted on one image."""
    methods = check_methods(methods)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    rows, cols = grid_shape(model)
    patch_h, patch_w = model.patch_embedding.kernel_size
    x = torch.zeros(1, 3, rows * patch_h, cols * patch_w, device=device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        attention_maps(model, x, methods)
    tokens = rows * cols + 1
    blocks = model.transformer.blocks
    element = next(model.parameters()).element_size()
    scores = sum(blk.attn.n_heads for blk in blocks) * tokens**2 * element
    return sum(saved.values()) + scores


def fit_batch(requested: int, per_image: int, free: int, methods: Sequence[str]) -> int:
    """The largest batch up to `requested` whose maps fit in SHARE of `free` bytes.

    Raises a one-line error when not even one image fits.
    """
    fits = int(SHARE * free // per_image)
    if fits < 1:
        raise VitlabError(
            f"maps.methods {list(methods)}: one image needs {per_image / GIB:.1f} GiB, and "
            f"{SHARE:.0%} of the {free / GIB:.1f} GiB free is less; drop grad_rollout from "
            "maps.methods (it keeps every layer's graph) or run on a device with more memory"
        )
    return min(requested, fits)


def extraction_batch(
    model: torch.nn.Module, methods: Sequence[str], requested: int, device: torch.device
) -> tuple[int, str | None]:
    """(batch size to extract maps with, a line saying why it is below `requested` or None)."""
    per_image = bytes_per_image(model, methods, device)
    free = free_bytes(device)
    batch = fit_batch(requested, per_image, free, methods)
    if batch == requested:
        return batch, None
    return batch, (
        f"maps.batch_size {requested} needs {requested * per_image / GIB:.1f} GiB "
        f"({per_image / GIB:.2f} GiB an image), {free / GIB:.1f} GiB is free: extracting "
        f"{batch} images at a time (the maps do not depend on it)"
    )
