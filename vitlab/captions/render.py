"""Words-to-patches figures: the image, its generated caption, one panel per generated token.

Each panel overlays the token's cross-attention map, upsampled bilinearly from the patch grid
to the image, on the image, and is titled with the token and its id (the <end> token
included), as the reference's CATR figure does. One colour scale per panel: a map's own
maximum, since each row is a distribution over patches.
"""

from __future__ import annotations

import math
import os
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def upsample(maps: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """(T, gh, gw) patch maps -> (T, h, w) for size (h, w) (an int: square), bilinear (what
    the panels show)."""
    hw = (size, size) if isinstance(size, int) else size
    t = torch.from_numpy(np.asarray(maps, np.float32))[:, None]
    return F.interpolate(t, size=hw, mode="bilinear", align_corners=False)[:, 0].numpy()


def caption_figure(
    image: np.ndarray,
    labels: list[str],
    maps: np.ndarray,
    caption: str,
    reference: str | None = None,
    columns: int = 6,
    extent: tuple[int, int] | None = None,
) -> matplotlib.figure.Figure:
    """A figure: the image with its caption, then one overlay panel per token label/map.

    The maps cover the image, or with `extent` (h, w) a larger input whose top-left part the
    image is (a padded input): they are upsampled to it and cut to the image.
    """
    n = len(labels) + 1
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.2 * rows + 0.6))
    axes = np.atleast_1d(axes).ravel()
    h, w = image.shape[:2]
    up = upsample(maps, extent or (h, w))[:, :h, :w]
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=8)
    for ax, label, m in zip(axes[1:], labels, up, strict=False):
        ax.imshow(image)
        ax.imshow(m, cmap="jet", alpha=0.5, vmin=0.0, vmax=max(float(m.max()), 1e-8))
        ax.set_title(label, fontsize=8)
    for ax in axes:
        ax.axis("off")
    lines = [f"generated: {caption}"]
    if reference is not None:
        lines.append(f"reference: {reference}")
    width = 20 * columns  # characters of 9 pt text that fit across the figure
    title = fig.suptitle("\n".join(textwrap.fill(line, width) for line in lines), fontsize=9)
    fig.tight_layout()
    _clear_title(fig, title, axes[:columns])
    return fig


def _clear_title(fig: matplotlib.figure.Figure, title, top_row) -> None:
    """Lower the panels when a long (wrapped) title would overlap the top row of a tall figure,
    which tight_layout leaves to the title's default place."""
    renderer = fig.canvas.get_renderer()
    panels_top = max(ax.get_tightbbox(renderer).y1 for ax in top_row)
    overlap = panels_top - title.get_window_extent(renderer).y0
    if overlap > 0:
        pad = 0.1 * fig.dpi
        fig.subplots_adjust(top=fig.subplotpars.top - (overlap + pad) / fig.bbox.height)


def save_figure(fig: matplotlib.figure.Figure, path: str | os.PathLike[str]) -> None:
    """Write a PNG and close the figure (call inside an atomic output)."""
    fig.savefig(path, dpi=100)
    plt.close(fig)
