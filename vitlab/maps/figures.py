"""PNG figures of position-embedding similarity and attention maps (matplotlib, Agg, no pyplot).

Figures are built on a `Figure` with an Agg canvas, never through pyplot, so rendering holds
no global state and needs no display; the caller decides the path (stages write atomically).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from vitlab.maps.rollout import upsample


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def position_mosaic(sim: np.ndarray, scale: int = 1) -> np.ndarray:
    """(rows, cols, rows, cols) -> one 2-D array of tiles (each cell `scale` pixels wide), with
    NaN one-pixel gaps between tiles."""
    rows, cols = sim.shape[:2]
    th, tw = rows * scale + 1, cols * scale + 1  # tile pitch, gap included
    out = np.full((rows * th - 1, cols * tw - 1), np.nan, dtype=np.float32)
    cell = np.ones((scale, scale), dtype=np.float32)
    for r in range(rows):
        for c in range(cols):
            out[r * th : r * th + th - 1, c * tw : c * tw + tw - 1] = np.kron(sim[r, c], cell)
    return out


def position_figure(sim: np.ndarray, path: str | os.PathLike[str], title: str) -> None:
    """ViT paper Fig. 7: tile (r, c) shows position (r, c)'s cosine similarity with every
    position; one colour scale (-1..1) for all tiles, rows and columns labelled 1-based."""
    rows, cols = sim.shape[:2]
    side = min(11.0, 3.0 + 0.35 * max(rows, cols))
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    scale = max(1, math.ceil(8 / max(rows, cols)))  # small grids: keep the gaps thin
    mosaic = position_mosaic(sim, scale)
    im = ax.imshow(mosaic, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    th, tw = rows * scale + 1, cols * scale + 1
    step = 1 if max(rows, cols) <= 16 else 2
    ax.set_xticks([c * tw + (tw - 2) / 2 for c in range(0, cols, step)])
    ax.set_xticklabels([str(c + 1) for c in range(0, cols, step)])
    ax.set_yticks([r * th + (th - 2) / 2 for r in range(0, rows, step)])
    ax.set_yticklabels([str(r + 1) for r in range(0, rows, step)])
    ax.tick_params(length=0, labelsize=8 if max(rows, cols) <= 16 else 6)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="cosine similarity")
    ax.set_title(title)
    fig.savefig(path, format="png", bbox_inches="tight")


def attention_figure(
    images: np.ndarray,
    maps: np.ndarray,
    path: str | os.PathLike[str],
    *,
    titles: Sequence[str],
    title: str,
    masks: np.ndarray | None = None,
    correct: Sequence[bool] | None = None,
    per_row: int = 4,
) -> None:
    """Each map upsampled (bilinear) to its image, scaled min-max, overlaid in `jet`; the object
    mask's outline in white; each panel titled (true/predicted labels: green right, red wrong)."""
    n = len(images)
    height, width = images.shape[1:3]
    ups = upsample(np.asarray(maps, dtype=np.float32), (height, width)).numpy()
    ncols = min(n, per_row)
    nrows = math.ceil(n / ncols)
    fig = _figure(2.4 * ncols + 0.9, 2.6 * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    norm = Normalize(0, 1)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        up = ups[i]
        lo, hi = float(up.min()), float(up.max())
        scaled = (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)
        ax.imshow(images[i], interpolation="nearest")
        ax.imshow(scaled, cmap="jet", norm=norm, alpha=0.5, interpolation="nearest")
        if masks is not None and masks[i].any():
            ax.contour(np.asarray(masks[i]) > 0, levels=[0.5], colors="white", linewidths=0.8)
        colour = "black" if correct is None else ("tab:green" if correct[i] else "tab:red")
        ax.set_title(titles[i], fontsize=8, color=colour)
    fig.colorbar(
        ScalarMappable(norm=norm, cmap="jet"),
        ax=axes.ravel().tolist(),
        fraction=0.03,
        pad=0.02,
        label="map (each image scaled min to max)",
    )
    fig.suptitle(title)
    fig.savefig(path, format="png", bbox_inches="tight")
