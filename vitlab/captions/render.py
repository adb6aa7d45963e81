"""Words-to-patches figures: the image, its generated caption, one panel per generated token.

Each panel overlays the token's cross-attention map, upsampled bilinearly from the patch grid
to the image, on the image, and is titled with the token and its id (the <end> token
included), as the reference's CATR figure does. One colour scale per panel: a map's own
maximum, since each row is a distribution over patches.
"""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def upsample(maps: np.ndarray, size: int) -> np.ndarray:
    """(T, g, g) patch maps -> (T, size, size), bilinear (what the panels show)."""
    t = torch.from_numpy(np.asarray(maps, np.float32))[:, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()


def caption_figure(
    image: np.ndarray,
    labels: list[str],
    maps: np.ndarray,
    caption: str,
    reference: str | None = None,
    columns: int = 6,
) -> matplotlib.figure.Figure:
    """A figure: the image with its caption, then one overlay panel per token label/map."""
    n = len(labels) + 1
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.2 * rows + 0.6))
    axes = np.atleast_1d(axes).ravel()
    up = upsample(maps, image.shape[0])
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=8)
    for ax, label, m in zip(axes[1:], labels, up, strict=False):
        ax.imshow(image)
        ax.imshow(m, cmap="jet", alpha=0.5, vmin=0.0, vmax=max(float(m.max()), 1e-8))
        ax.set_title(label, fontsize=8)
    for ax in axes:
        ax.axis("off")
    title = f"generated: {caption}"
    if reference is not None:
        title += f"\nreference: {reference}"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig: matplotlib.figure.Figure, path: str | os.PathLike[str]) -> None:
    """Write a PNG and close the figure (call inside an atomic output)."""
    fig.savefig(path, dpi=100)
    plt.close(fig)
