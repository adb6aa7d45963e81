"""Position-embedding similarity: hand-built embeddings with a known pattern, and the figure."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
import torch

from vitlab.maps.figures import position_figure, position_mosaic
from vitlab.maps.positions import model_position_similarity, position_similarity
from vitlab.vit.models import build_model


def row_col_embedding(rows: int, cols: int, dim: int | None = None) -> torch.Tensor:
    """Position (r, c) = [one-hot(r), one-hot(c)] (zero-padded to dim), row-major."""
    dim = dim or rows + cols
    e = torch.zeros(rows * cols, dim)
    for r in range(rows):
        for c in range(cols):
            e[r * cols + c, r] = 1.0
            e[r * cols + c, rows + c] = 1.0
    return e


def known_pattern(rows: int, cols: int) -> np.ndarray:
    """cos([1_r, 1_c], [1_r', 1_c']) = ([r == r'] + [c == c']) / 2."""
    out = np.zeros((rows, cols, rows, cols), dtype=np.float32)
    for r in range(rows):
        for c in range(cols):
            for r2 in range(rows):
                for c2 in range(cols):
                    out[r, c, r2, c2] = ((r == r2) + (c == c2)) / 2
    return out


def test_row_column_one_hot_embedding_gives_its_known_pattern():
    rows, cols = 3, 5  # not square: a row/column mix-up cannot pass
    sim = position_similarity(row_col_embedding(rows, cols), (rows, cols))
    assert sim.shape == (3, 5, 3, 5)
    np.testing.assert_allclose(sim, known_pattern(rows, cols), atol=1e-6)
    # tile (1, 2): 1 at itself, 0.5 along row 1 and column 2, 0 elsewhere
    assert sim[1, 2, 1, 2] == pytest.approx(1.0)
    assert sim[1, 2, 1, 0] == pytest.approx(0.5) and sim[1, 2, 0, 2] == pytest.approx(0.5)
    assert sim[1, 2, 0, 0] == pytest.approx(0.0)


def test_similarity_is_cosine_so_scale_does_not_matter_and_opposites_are_minus_one():
    e = row_col_embedding(2, 2) * torch.tensor([[1.0], [3.0], [0.5], [7.0]])
    np.testing.assert_allclose(position_similarity(e, (2, 2)), known_pattern(2, 2), atol=1e-6)
    flipped = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert position_similarity(flipped, (1, 2))[0, 0, 0, 1] == pytest.approx(-1.0)


def test_a_models_own_embeddings_are_read_without_the_cls_token():
    torch.manual_seed(0)
    model = build_model("vitlab_micro_16", num_classes=4, image_size=32)  # 4x4 grid, dim 32
    with torch.no_grad():
        pos = model.positional_embedding.pos_embedding
        pos[0, 1:] = row_col_embedding(4, 4, dim=pos.shape[-1])
        pos[0, 0] = torch.randn(pos.shape[-1]) * 10  # CLS: must not appear anywhere
    np.testing.assert_allclose(model_position_similarity(model), known_pattern(4, 4), atol=1e-6)


def test_mosaic_places_each_tile_at_its_row_and_column():
    rng = np.random.default_rng(0)
    sim = rng.uniform(-1, 1, size=(3, 3, 3, 3)).astype(np.float32)
    m = position_mosaic(sim)
    assert m.shape == (3 * 4 - 1, 3 * 4 - 1)
    for r in range(3):
        for c in range(3):
            np.testing.assert_array_equal(m[r * 4 : r * 4 + 3, c * 4 : c * 4 + 3], sim[r, c])
    assert np.isnan(m[3]).all() and np.isnan(m[:, 7]).all()  # the gaps between tiles
    big = position_mosaic(sim, scale=2)  # each cell 2x2 pixels, still one-pixel gaps
    assert big.shape == (3 * 7 - 1, 3 * 7 - 1)
    np.testing.assert_array_equal(big[7:13:2, 14:20:2], sim[1, 2])
    np.testing.assert_array_equal(big[8:14:2, 15:21:2], sim[1, 2])
    assert np.isnan(big[6]).all() and np.isnan(big[:, 13]).all()


def test_position_figure_writes_a_png(tmp_path):
    sim = known_pattern(4, 4)
    path = tmp_path / "positions.png"
    position_figure(sim, path, title="hand-built")
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert image[..., :3].std() > 0.05  # not blank
