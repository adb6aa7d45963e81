"""Stage `render_attention@<M>`: attention maps of each variant, drawn and scored against masks.

For every variant in maps.variants and every method in maps.methods, over the whole
maps.split: pointing game and energy inside the object mask, beside a uniform map's values
(reports/figures/<M>/scores.json, {variant: {method: {pointing, energy, pointing_uniform,
energy_uniform, n}}}). For the images maps.images of that split: one figure per (method,
variant) with the maps overlaid, true and predicted labels in the panel titles, and the raw
(n, rows, cols) maps beside it (reports/figures/<M>/attention/attention_<method>_<variant>.*),
plus attention/drawn.json (indices, labels, predictions, checkpoints).
"""

from __future__ import annotations

import numpy as np

from stages._common import cli, load_params, model_argument, section
from stages._model import PREPARED, build, runtime
from stages.render_positions import FIGURES, variant_checkpoints
from vitlab.atomic import atomic_dir, write_json
from vitlab.data import load_meta, load_split
from vitlab.errors import VitlabError
from vitlab.figures import attention_figure
from vitlab.grounding import grounding_scores
from vitlab.models import load_checkpoint
from vitlab.rollout import HEAD_FUSIONS, check_methods, grid_shape, split_maps

LABELS = {
    "last_layer": "last-layer CLS attention (mean over heads)",
    "rollout": "attention rollout",
    "grad_rollout": "gradient-weighted rollout (predicted class)",
}


def check_indices(indices: object, size: int, split: str) -> list[int]:
    """maps.images as a list of valid indices into the split, or a one-line error."""
    if (
        not isinstance(indices, list)
        or not indices
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices)
    ):
        raise VitlabError(
            f"maps.images must be a non-empty list of image indices (got {indices!r})"
        )
    bad = [i for i in indices if not 0 <= i < size]
    if bad:
        raise VitlabError(
            f"maps.images: {bad} out of range for the {split} split ({size} images, 0..{size - 1})"
        )
    return indices


@cli
def main() -> None:
    key = model_argument(__doc__)
    params = load_params()
    cfg = section(params, "maps")
    rt = runtime(params)
    methods = check_methods(cfg.get("methods") or [])
    fusion = cfg.get("head_fusion", "mean")
    if fusion not in HEAD_FUSIONS:
        raise VitlabError(
            f"maps.head_fusion: {fusion!r} is unknown; choose from {', '.join(HEAD_FUSIONS)}"
        )
    batch = cfg.get("batch_size", 64)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise VitlabError(f"maps.batch_size must be a positive integer (got {batch!r})")
    split_name = cfg.get("split")
    if split_name not in ("train", "val", "test"):
        raise VitlabError(f"maps.split: {split_name!r} is not a split; use test or val")
    split = load_split(PREPARED, split_name)
    classes = load_meta(PREPARED)["classes"]
    indices = check_indices(cfg.get("images"), len(split), split_name)
    table = variant_checkpoints(key, cfg.get("variants"), "maps.variants")
    model = build(params, key, pretrained=False).to(rt.device)
    images = np.asarray(split.images[indices])
    masks = np.asarray(split.masks[indices])
    labels = split.labels[indices]
    drawn = {
        "model": key,
        "split": split_name,
        "indices": indices,
        "labels": [classes[t] for t in labels],
        "grid": list(grid_shape(model)),
        "methods": methods,
        "head_fusion": fusion,
        "variants": {},
    }
    scores: dict = {}
    with atomic_dir(FIGURES / key / "attention") as tmp:
        for name, (_, epochs, path) in table.items():
            load_checkpoint(model, path)
            maps, logits = split_maps(
                model,
                split,
                methods,
                batch_size=batch,
                device=rt.device,
                head_fusion=fusion,
            )
            pred = logits.argmax(1)
            scores[name] = {m: grounding_scores(maps[m], split.masks) for m in methods}
            shown = pred[indices]
            titles = [
                f"true: {classes[t]}\npred: {classes[p]}"
                for t, p in zip(labels, shown, strict=True)
            ]
            for m in methods:
                np.save(tmp / f"attention_{m}_{name}.npy", maps[m][indices])
                attention_figure(
                    images,
                    maps[m][indices],
                    tmp / f"attention_{m}_{name}.png",
                    titles=titles,
                    title=f"{key} {name}: {LABELS[m]}",
                    masks=masks,
                    correct=(shown == labels).tolist(),
                )
            drawn["variants"][name] = {
                "checkpoint": str(path),
                "epochs": epochs,
                "predicted": [classes[p] for p in shown],
                "accuracy": round(float((pred == split.labels).mean()), 6),
            }
            first = next(iter(scores[name].values()))
            if first["n"]:
                line = "  ".join(
                    f"{m} {s['pointing']:.3f}/{s['energy']:.3f}" for m, s in scores[name].items()
                )
                line += f"  (uniform {first['pointing_uniform']:.3f}, n={first['n']})"
            else:
                line = f"no object masks in the {split_name} split: not scored"
            print(f"render_attention@{key}: {name:12s} pointing/energy  {line}")
        write_json(tmp / "drawn.json", drawn)
    write_json(FIGURES / key / "scores.json", scores)


if __name__ == "__main__":
    main()
