"""Stage `render_positions@<M>`: position-embedding similarity of chosen variants (ViT Fig. 7).

Writes reports/figures/<M>/positions/positions_<variant>.png and, beside each, the raw
(rows, cols, rows, cols) cosine-similarity array as positions_<variant>.npy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages._common import cli, load_params, model_argument, section
from stages._model import build
from stages.evaluate import variants
from vitlab.atomic import atomic_dir
from vitlab.errors import VitlabError
from vitlab.figures import position_figure
from vitlab.models import load_checkpoint
from vitlab.positions import model_position_similarity

FIGURES = Path("reports/figures")


def variant_checkpoints(model: str, names: list[str], param: str) -> dict[str, tuple]:
    """{variant: (kind, epochs, checkpoint)} for the names a params list asks for, in order."""
    table = variants(model)
    known = [v for v in table if not v.startswith("epoch_")]
    if not isinstance(names, list) or not names:
        raise VitlabError(f"{param} must be a non-empty list of variants from {', '.join(known)}")
    unknown = [v for v in names if v not in table]
    if unknown:
        raise VitlabError(f"{param}: unknown variant(s) {unknown}; choose from {', '.join(known)}")
    return {v: table[v] for v in names}


@cli
def main() -> None:
    key = model_argument(__doc__)
    params = load_params()
    cfg = section(params, "maps")
    table = variant_checkpoints(key, cfg.get("position_variants"), "maps.position_variants")
    model = build(params, key, pretrained=False)
    with atomic_dir(FIGURES / key / "positions") as tmp:
        for name, (_, epochs, path) in table.items():
            load_checkpoint(model, path)
            sim = model_position_similarity(model)
            np.save(tmp / f"positions_{name}.npy", sim)
            epochs_text = ",".join(str(e) for e in epochs)
            position_figure(
                sim,
                tmp / f"positions_{name}.png",
                title=f"{key} {name} (epochs {epochs_text}): position embedding similarity",
            )
            print(f"render_positions@{key}: {name} grid {sim.shape[0]}x{sim.shape[1]}")


if __name__ == "__main__":
    main()
