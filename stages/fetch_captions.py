"""Stage `fetch_captions`: the captioning data named by `captions.source`, as one folder.

synthetic: generated scenes (images, object masks, template captions) for train/val/test;
karpathy: a Karpathy-split JSON and its image folder, validated and resized to
captions.image_size. Either way the output is data/captions/{captions.json, images/, masks/},
written atomically (a bad input leaves no folder behind).

With a pretrained captioner (captions.model.arch catr_*) the originals instead: every photo of
captions.folder.path (source folder) or the Karpathy test split with its references, checked as
CATR reads them (unreadable ones counted and skipped, each said in a line) and copied unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

from stages._common import cli, load_params
from vitlab.captions import scenes, store
from vitlab.captions.karpathy import read_karpathy
from vitlab.core import config, contract
from vitlab.core.atomic import atomic_dir
from vitlab.core.errors import VitlabError
from vitlab.core.workers import per_core


def scene_config(c: config.Captions) -> scenes.SceneConfig:
    """captions.synthetic.scenes (+ captions.image_size) as a validated SceneConfig."""
    knobs = c.synthetic.scenes.model_dump(exclude_none=True)
    cfg = scenes.SceneConfig.from_dict({**knobs, "image_size": c.image_size})
    cfg.validate()
    return cfg


def fetch_originals(c: config.Captions, out: Path) -> str:
    """The photos CATR captions, copied into `out`; the summary of what was kept."""
    from vitlab.captions import photos  # checks photos as CATR reads them: imports torch

    if c.source == "folder":
        where, dataset = c.folder.path, Path(c.folder.path).name
        found = photos.folder_photos(Path(where))
    else:
        k = c.karpathy
        where, dataset = f"{k.json_path} test split", Path(k.json_path).stem
        found = photos.karpathy_test(read_karpathy(Path(k.json_path), Path(k.images)), k.limit)
    kept, skipped = photos.readable(found, c.catr.square)
    if not kept:
        raise VitlabError(
            f"{where}: none of its {len(found)} images can be captioned (e.g. {skipped[0]})"
        )
    for reason in skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    store.write_originals(out, kept, dataset, skipped)
    return f"{where}, {len(kept)} images, {len(skipped)} skipped (unreadable or too small)"


@cli
def main() -> None:
    c = load_params().captions
    source = c.source
    with atomic_dir(contract.CAPTION_DATA) as tmp:
        if c.catr_version is not None:
            counts = fetch_originals(c, tmp)
        elif source == "synthetic":
            s = c.synthetic
            workers = per_core()  # the files do not depend on how many
            counts = store.write_scenes(
                tmp, s.counts.model_dump(), scene_config(c), s.seed, workers=workers
            )
        else:
            k = c.karpathy
            items = read_karpathy(Path(k.json_path), Path(k.images))
            limit = k.limit
            if limit:
                kept, seen = [], dict.fromkeys(store.SPLITS, 0)
                for it in items:
                    seen[it.split] += 1
                    if seen[it.split] <= limit:
                        kept.append(it)
                items = kept
            for split in store.SPLITS:
                if not any(it.split == split for it in items):
                    raise VitlabError(f"{k.json_path}: the {split!r} split is empty")
            counts = store.write_resized(tmp, items, c.image_size, Path(k.json_path).stem)
    print(f"fetch_captions: {source}, {counts}")


if __name__ == "__main__":
    main()
