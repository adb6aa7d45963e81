"""Stage `render_positions@<M>`: position-embedding similarity of chosen variants (ViT Fig. 7).

Writes reports/figures/<M>/positions/positions_<variant>.png, beside each the raw
(rows, cols, rows, cols) cosine-similarity array it draws (.npy), and manifest.json.
"""

from __future__ import annotations

import numpy as np

from stages._common import cli, load_params, model_argument
from vitlab.core import contract
from vitlab.core.atomic import atomic_dir
from vitlab.maps.figures import position_figure
from vitlab.maps.positions import model_position_similarity
from vitlab.prepared import load_meta
from vitlab.vit.models import build_for, load_checkpoint


@cli
def main() -> None:
    params = load_params()
    key = model_argument(__doc__, params)
    table = contract.variants(key)
    meta = load_meta(contract.PREPARED)
    model = build_for(
        params.models[key], num_classes=len(meta["classes"]), image_size=meta["image_size"]
    )
    drawn = []
    with atomic_dir(contract.positions_dir(key)) as tmp:
        for name in params.maps.position_variants:
            v = table[name]
            load_checkpoint(model, v.checkpoint)
            sim = model_position_similarity(model)
            stem = f"positions_{name}"
            np.save(tmp / f"{stem}.npy", sim)
            epochs = ",".join(str(e) for e in v.epochs)
            title = f"{key} {name} (epochs {epochs}): position embedding similarity"
            position_figure(sim, tmp / f"{stem}.png", title=title)
            drawn.append(
                contract.Figure(
                    png=f"{stem}.png",
                    maps=f"{stem}.npy",
                    group="positions",
                    title=title,
                    variant=name,
                    epochs=v.epochs,
                )  # fmt: skip
            )
            print(f"render_positions@{key}: {name} grid {sim.shape[0]}x{sim.shape[1]}")
        contract.write_manifest(tmp, drawn, model=key, stage=f"render_positions@{key}")


if __name__ == "__main__":
    main()
