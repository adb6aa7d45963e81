"""Stage `fetch_captions`: the captioning data named by `captions.source`, as one folder.

synthetic: generated scenes (images, object masks, template captions) for train/val/test;
karpathy: a Karpathy-split JSON and its image folder, validated and resized to
captions.image_size. Either way the output is data/captions/{captions.json, images/, masks/},
written atomically (a bad input leaves no folder behind).
"""

from __future__ import annotations

from pathlib import Path

from stages._captions import DATA, captions_section
from stages._common import cli, load_params
from vitlab.atomic import atomic_dir
from vitlab.captions import scenes, store
from vitlab.captions.karpathy import read_karpathy
from vitlab.errors import VitlabError

SOURCES = ("synthetic", "karpathy")


def scene_config(p: dict) -> scenes.SceneConfig:
    """captions.synthetic.scenes (+ captions.image_size) as a validated SceneConfig."""
    cfg = scenes.SceneConfig.from_dict(
        {**p["synthetic"].get("scenes", {}), "image_size": p["image_size"]}
    )
    cfg.validate()
    return cfg


@cli
def main() -> None:
    p = captions_section(load_params(), "fetch_captions")
    source = p.get("source")
    if source not in SOURCES:
        raise VitlabError(f"captions.source: {source!r} is unknown; use one of {SOURCES}")
    if source not in p:
        raise VitlabError(
            f"params.yaml: captions.{source} is missing (captions.source is {source})"
        )
    with atomic_dir(DATA) as tmp:
        if source == "synthetic":
            s = p["synthetic"]
            cfg = scene_config(p)
            counts = {split: int(s["counts"][split]) for split in store.SPLITS}
            for split, n in counts.items():
                if n < 1:
                    raise VitlabError(f"captions.synthetic.counts.{split} must be >= 1 (got {n})")
            generated = {
                split: scenes.generate(cfg, int(s["seed"]), split, 0, n)
                for split, n in counts.items()
            }
            counts = store.write_scenes(tmp, generated, cfg, int(s["seed"]))
        else:
            k = p["karpathy"]
            items = read_karpathy(Path(k["json"]), Path(k["images"]))
            limit = int(k.get("limit", 0))
            if limit:
                kept, seen = [], dict.fromkeys(store.SPLITS, 0)
                for it in items:
                    seen[it.split] += 1
                    if seen[it.split] <= limit:
                        kept.append(it)
                items = kept
            for split in store.SPLITS:
                if not any(it.split == split for it in items):
                    raise VitlabError(f"{k['json']}: the {split!r} split is empty")
            counts = store.write_resized(tmp, items, int(p["image_size"]), Path(k["json"]).stem)
    print(f"fetch_captions: {source}, {counts}")


if __name__ == "__main__":
    main()
