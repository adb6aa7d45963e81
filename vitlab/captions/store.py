"""The prepared caption folder: the contract between fetch_captions and the later stages.

Whatever the source, `fetch_captions` leaves one folder holding `captions.json` (Karpathy
format plus vitlab's extensions, see karpathy.py) and the images, already at the captioner's
size, under images/<split>/ (masks of generated scenes under masks/<split>/). For generated
scenes, captions.json also records the generator (`"generator": {"seed", "config"}`) so
training can draw more scenes of exactly the same kind.

For a pretrained captioner (CATR) the folder holds the originals instead, byte for byte (CATR
does its own resizing): images/<name><suffix>, and a captions.json of format `originals`
listing each one's key and references (none for a folder of photos) and the skipped files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from vitlab.captions.karpathy import CaptionedImage, read_karpathy
from vitlab.captions.scenes import SceneConfig, generate
from vitlab.core.atomic import write_json
from vitlab.core.errors import VitlabError
from vitlab.core.generated import PNG_OPTIONS
from vitlab.core.workers import run_jobs, split_range

if TYPE_CHECKING:  # both import torch, which writing generated scenes does not need
    from vitlab.captions.dataset import CaptionSet
    from vitlab.captions.photos import Photo

CAPTIONS_FILE = "captions.json"
SPLITS = ("train", "val", "test")
ORIGINALS = "originals"  # the captions.json format of a pretrained captioner's images


def _write_scene_range(job: tuple) -> list[tuple[list[str], str, list[int]]]:
    root, cfg, seed, split, lo, hi = job
    written = []
    for i, s in enumerate(generate(cfg, seed, split, lo, hi - lo), start=lo):
        name = f"{i:05d}.png"
        Image.fromarray(s.image).save(root / "images" / split / name, **PNG_OPTIONS)
        Image.fromarray(s.mask).save(root / "masks" / split / name, **PNG_OPTIONS)
        written.append((s.tokens, s.caption, s.token_objects))
    return written


def write_scenes(
    root: str | os.PathLike[str],
    counts: dict[str, int],
    cfg: SceneConfig,
    seed: int,
    *,
    workers: int = 1,
) -> dict[str, int]:
    """Generate scenes 0..n-1 of each split and write them (images, masks, captions.json)
    into `root`, in `workers` processes; the folder does not depend on how many. Returns the
    counts per split."""
    root = Path(root)
    jobs = []
    for split, n in counts.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        jobs += [(root, cfg, seed, split, lo, hi) for lo, hi in split_range(0, n, workers)]
    chunks = run_jobs(_write_scene_range, jobs, workers)
    images = []
    for (_, _, _, split, lo, _), chunk in zip(jobs, chunks, strict=True):
        for i, (tokens, raw, token_objects) in enumerate(chunk, start=lo):
            name = f"{i:05d}.png"
            images.append(
                {
                    "filepath": f"images/{split}",
                    "filename": name,
                    "split": split,
                    "imgid": len(images),
                    "mask": f"masks/{split}/{name}",
                    "sentences": [{"tokens": tokens, "raw": raw, "token_objects": token_objects}],
                }
            )
    doc = {
        "dataset": "vitlab-scenes",
        "generator": {"seed": seed, "config": cfg.to_dict()},
        "images": images,
    }
    write_json(root / CAPTIONS_FILE, doc)
    return dict(counts)


def write_resized(
    root: str | os.PathLike[str], items: list[CaptionedImage], image_size: int, dataset: str
) -> dict[str, int]:
    """Copy a Karpathy set's images into `root` at image_size x image_size (resized, no crop,
    RGB) with a normalised captions.json; counts per split."""
    root = Path(root)
    images, counts = [], dict.fromkeys(SPLITS, 0)
    for item in items:
        n = counts[item.split]
        counts[item.split] += 1
        name = f"{n:06d}.png"
        (root / "images" / item.split).mkdir(parents=True, exist_ok=True)
        try:
            with Image.open(item.path) as im:
                im = im.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC)
                im.save(root / "images" / item.split / name)
        except OSError as e:
            raise VitlabError(
                f"image {item.path} cannot be decoded ({e}); remove or replace it"
            ) from e
        images.append(
            {
                "filepath": f"images/{item.split}",
                "filename": name,
                "split": item.split,
                "imgid": len(images),
                "source": item.key,
                "sentences": [{"tokens": c, "raw": " ".join(c)} for c in item.captions],
            }
        )
    write_json(root / CAPTIONS_FILE, {"dataset": dataset, "images": images})
    return counts


def read_items(root: str | os.PathLike[str]) -> list[CaptionedImage]:
    """Every image of a prepared caption folder (validated like any Karpathy file)."""
    path = Path(root) / CAPTIONS_FILE
    if not path.is_file():
        raise VitlabError(f"{path} is missing; run `dvc repro fetch_captions`")
    return read_karpathy(path, root)


def generator(root: str | os.PathLike[str]) -> tuple[SceneConfig, int] | None:
    """The scene generator (config, seed) recorded by fetch_captions, or None (real data)."""
    doc = json.loads((Path(root) / CAPTIONS_FILE).read_text())
    g = doc.get("generator")
    return None if g is None else (SceneConfig.from_dict(g["config"]), int(g["seed"]))


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def load_split(items: list[CaptionedImage], split: str) -> CaptionSet:
    """The images of one split in memory (masks/token objects when every image has them)."""
    from vitlab.captions.dataset import CaptionSet

    chosen = [it for it in items if it.split == split]
    if not chosen:
        raise VitlabError(f"the {split!r} caption split is empty; check the caption data")
    images = [_rgb(it.path) for it in chosen]
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise VitlabError(f"{split} images differ in size {sorted(shapes)}; rerun fetch_captions")
    has_masks = all(it.mask is not None and it.token_objects is not None for it in chosen)
    masks = None
    if has_masks:
        masks = np.stack([np.asarray(Image.open(it.mask)) for it in chosen])
    return CaptionSet(
        ids=[it.key for it in chosen],
        images=np.stack(images),
        captions=[it.captions for it in chosen],
        masks=masks,
        token_objects=[it.token_objects for it in chosen] if has_masks else None,
    )


def write_originals(
    root: str | os.PathLike[str], photos: list[Photo], dataset: str, skipped: list[str]
) -> int:
    """Copy `photos` unchanged into `root`/images with a captions.json of format `originals`
    (keys, references, and the reasons of the `skipped` files); the number copied."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for photo in photos:
        rel = f"images/{photo.name}{photo.path.suffix.lower()}"
        shutil.copyfile(photo.path, root / rel)
        images.append({"file": rel, "key": photo.key, "references": photo.references})
    doc = {"dataset": dataset, "format": ORIGINALS, "images": images, "skipped": skipped}
    write_json(root / CAPTIONS_FILE, doc)
    return len(images)


def read_originals(root: str | os.PathLike[str]) -> list[Photo]:
    """The images write_originals left in `root`, as Photos of the copies."""
    from vitlab.captions.photos import Photo

    root = Path(root)
    path = root / CAPTIONS_FILE
    doc = json.loads(path.read_text()) if path.is_file() else {}
    if doc.get("format") != ORIGINALS:
        raise VitlabError(
            f"{path} does not list a pretrained captioner's originals; rerun "
            "`dvc repro fetch_captions`"
        )
    return [Photo(root / e["file"], e["key"], e["references"]) for e in doc["images"]]
