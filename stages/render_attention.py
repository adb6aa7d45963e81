"""Stage `render_attention@<M>`: attention maps of each variant, drawn and scored against masks.

For every variant in maps.variants and every method in maps.methods, over the whole
maps.split: pointing game and energy inside the object mask, beside a uniform map's values
(reports/figures/<M>/scores.json, {variant: {method: {pointing, energy, pointing_uniform,
energy_uniform, n}}}). For the images maps.images of that split: one figure per (method,
variant) with the maps overlaid, true and predicted labels in the panel titles; beside each,
the maps exactly as scored and drawn (n, H, W at image resolution) and on the patch grid;
attention/manifest.json says what each file shows. Maps are extracted maps.batch_size images
at a time, or fewer when free memory cannot hold that many (vitlab.maps.memory): one line says
so, and the maps are the same.
"""

from __future__ import annotations

import numpy as np

from stages._common import cli, load_params, model_argument
from vitlab.core import contract
from vitlab.core.atomic import atomic_dir, write_json
from vitlab.core.errors import VitlabError
from vitlab.maps.figures import attention_figure
from vitlab.maps.grounding import grounding_scores
from vitlab.maps.memory import extraction_batch
from vitlab.maps.rollout import grid_shape, split_maps, upsample
from vitlab.prepared import load_meta, load_split
from vitlab.vit import runtime
from vitlab.vit.models import build_for, load_checkpoint


@cli
def main() -> None:
    params = load_params()
    key = model_argument(__doc__, params)
    cfg = params.maps
    rt = runtime.resolve(params.runtime)
    split = load_split(contract.PREPARED, cfg.split)
    meta = load_meta(contract.PREPARED)
    classes = meta["classes"]
    indices = [i for i in cfg.images if i < len(split)]
    if not indices:
        raise VitlabError(
            f"maps.images {cfg.images}: none is inside the {cfg.split} split "
            f"({len(split)} images, 0..{len(split) - 1})"
        )
    if len(indices) < len(cfg.images):
        left_out = sorted(set(cfg.images) - set(indices))
        print(f"render_attention@{key}: maps.images {left_out} are beyond the {cfg.split} "
              f"split's {len(split)} images: not drawn")  # fmt: skip
    table = contract.variants(key)
    model = build_for(
        params.models[key], num_classes=len(classes), image_size=meta["image_size"]
    ).to(rt.device)
    batch_size, lowered = extraction_batch(model, cfg.methods, cfg.batch_size, rt.device)
    if lowered:
        print(f"render_attention@{key}: {lowered}")
    images, masks = np.asarray(split.images[indices]), np.asarray(split.masks[indices])
    labels = split.labels[indices]
    size = tuple(images.shape[1:3])
    scores: dict = {}
    drawn: list[contract.Figure] = []
    with atomic_dir(contract.attention_dir(key)) as tmp:
        for name in cfg.variants:
            v = table[name]
            load_checkpoint(model, v.checkpoint)
            maps, logits = split_maps(model, split, cfg.methods, batch_size=batch_size,
                                      device=rt.device, head_fusion=cfg.head_fusion)  # fmt: skip
            scores[name] = {m: grounding_scores(maps[m], split.masks) for m in cfg.methods}
            shown = logits.argmax(1)[indices]
            titles = [f"true: {classes[t]}\npred: {classes[p]}"
                      for t, p in zip(labels, shown, strict=True)]  # fmt: skip
            for m in cfg.methods:
                stem = f"attention_{m}_{name}"
                on_image = upsample(maps[m][indices], size).numpy()
                np.save(tmp / f"{stem}.npy", on_image)
                np.save(tmp / f"{stem}_grid.npy", np.asarray(maps[m][indices]))
                title = f"{key} {name}: {contract.MAP_METHODS[m]}"
                attention_figure(images, maps[m][indices], tmp / f"{stem}.png", titles=titles,
                                 title=title, masks=masks,
                                 correct=(shown == labels).tolist())  # fmt: skip
                drawn.append(contract.Figure(
                    png=f"{stem}.png", maps=f"{stem}.npy", group="attention", title=title,
                    variant=name, method=m, epochs=v.epochs, split=cfg.split,
                    images=tuple(indices),
                    info={"grid": f"{stem}_grid.npy", "grid_shape": list(grid_shape(model)),
                          "labels": [classes[t] for t in labels],
                          "predicted": [classes[p] for p in shown],
                          "checkpoint": str(v.checkpoint), "head_fusion": cfg.head_fusion,
                          "scores": scores[name][m]},
                ))  # fmt: skip
            first = next(iter(scores[name].values()))
            if first["n"]:
                line = "  ".join(
                    f"{m} {s['pointing']:.3f}/{s['energy']:.3f}" for m, s in scores[name].items()
                )
                line += f"  (uniform {first['pointing_uniform']:.3f}, n={first['n']})"
            else:
                line = f"no object masks in the {cfg.split} split: not scored"
            print(f"render_attention@{key}: {name:12s} pointing/energy  {line}")
        contract.write_manifest(tmp, drawn, model=key, stage=f"render_attention@{key}")
    write_json(contract.map_scores(key), scores)


if __name__ == "__main__":
    main()
