"""Index a user's local image folder as a raw dataset (no copying; paths relative to the index,
so a clone elsewhere that holds the folder at the same place reads the same files).

Two layouts are recognised, so the homework data and an ordinary "one folder per class" tree
both work without conversion:

  (a) `train/{label}_{index}.jpg`, `val/...`, optional `test/...`: integer labels 0..C-1,
      class names from an optional `classes.txt` (one per line), else `class_00`, ...
  (b) `<class_name>/*.jpg` or `{train,val,test}/<class_name>/*.jpg`: classes sorted by name.

Splits missing on disk are carved from train, stratified per class and seeded, so the same
folder and seed always give the same index wherever the folder sits.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from vitlab.core.errors import VitlabError
from vitlab.sources.rawdata import SPLITS, RawDataset, Sample, write_index

log = logging.getLogger(__name__)

PARAM = "data.folder.path"
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png"})
HOMEWORK_NAME = re.compile(r"^(\d+)_.+")
EXPECTED = (
    "expected either train/{label}_{index}.jpg + val/{label}_{index}.jpg (optional test/, "
    "classes.txt), or one sub-folder of images per class (optionally under train/ val/ test/)"
)


def stratified_carve(
    labels: Mapping[str, int], fractions: Mapping[str, float], seed: int, rest: str = "train"
) -> dict[str, str]:
    """Assign each key a split: per class, carve round(n * f) keys for each split in `fractions`.

    Keys are sorted before a per-class shuffle seeded by (seed, label), so the result depends
    only on the keys, labels and seed (not on listing order, or on the other classes). A split
    with f > 0 gets at least one key of a class with >= 2 keys; `rest` always keeps one.
    """
    by_label: dict[int, list[str]] = defaultdict(list)
    for key, label in labels.items():
        by_label[label].append(key)
    out: dict[str, str] = {}
    for label in sorted(by_label):
        keys = sorted(by_label[label])
        random.Random(f"{seed}:{label}").shuffle(keys)
        n, start = len(keys), 0
        for split, f in fractions.items():
            k = int(n * f + 0.5)
            if f > 0 and k == 0:
                k = 1
            k = max(0, min(k, n - start - 1))
            out.update((key, split) for key in keys[start : start + k])
            start += k
        out.update((key, rest) for key in keys[start:])
    return out


def _check_fraction(name: str, f: float) -> None:
    if not isinstance(f, int | float) or not 0 <= f < 1:
        raise VitlabError(f"data.folder.{name} must be in [0, 1), got {f!r}")


def _images(d: Path) -> list[Path]:
    """Image files directly in `d` (hidden files such as .DS_Store or ._x.jpg are skipped)."""
    return sorted(
        p
        for p in d.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")
    )


def _subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _homework(path: Path, split_dirs: dict[str, Path]) -> tuple[list[str], dict[Path, tuple]]:
    """Layout (a): label from the file name; returns class names and {file: (label, split)}."""
    found: dict[Path, tuple[int, str]] = {}
    for split, d in split_dirs.items():
        if _subdirs(d) and not _images(d):
            raise VitlabError(
                f"{PARAM}: {d} holds class sub-folders but train/ holds "
                f"{{label}}_{{index}} files; use one layout for every split ({EXPECTED})"
            )
        for img in _images(d):
            m = HOMEWORK_NAME.match(img.name)
            if not m:
                raise VitlabError(
                    f"{PARAM}: {img} is not named {{label}}_{{index}}{img.suffix} like the "
                    f"other files in {path}/train; rename it or remove it"
                )
            found[img] = (int(m.group(1)), split)
    if not found:
        raise VitlabError(f"{PARAM}: {path} holds no .jpg/.jpeg/.png images; {EXPECTED}")
    n = max(label for label, _ in found.values()) + 1
    names_file = path / "classes.txt"
    if names_file.is_file():
        classes = [ln.strip() for ln in names_file.read_text().splitlines() if ln.strip()]
        if len(classes) < n:
            raise VitlabError(
                f"{PARAM}: {names_file} names {len(classes)} classes but the files use labels "
                f"up to {n - 1}; list one class name per line for labels 0..{n - 1}"
            )
    else:
        width = max(2, len(str(n - 1)))
        classes = [f"class_{i:0{width}d}" for i in range(n)]
    return classes, found


def _class_folders(path: Path, split_dirs: dict[str, Path]) -> tuple[list[str], dict[Path, tuple]]:
    """Layout (b): label from the sub-folder name; classes sorted over all splits."""
    per_split: dict[str, dict[str, list[Path]]] = {}
    for split, d in split_dirs.items():
        per_split[split] = {}
        for sub in _subdirs(d):
            imgs = _images(sub)
            if imgs:
                per_split[split][sub.name] = imgs
            else:
                log.warning("%s: %s holds no images; not a class", PARAM, sub)
    classes = sorted({c for folders in per_split.values() for c in folders})
    if not classes:
        raise VitlabError(f"{PARAM}: {path} holds no .jpg/.jpeg/.png images; {EXPECTED}")
    index = {c: i for i, c in enumerate(classes)}
    found = {
        img: (index[c], split)
        for split, folders in per_split.items()
        for c, imgs in folders.items()
        for img in imgs
    }
    return classes, found


def index_folder(
    path: Path,
    out_root: Path,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    index_dir: Path | None = None,
) -> RawDataset:
    """Index the images under `path` (layout detected), write the index into `out_root`.

    Splits with their own folder are used as they are; a missing val or test split is carved
    from train with `val_fraction` / `test_fraction` of each class. Sample paths are relative
    to `index_dir` (default `out_root`): where the index is read from.
    """
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    path = Path(path).expanduser()
    if not path.exists():
        raise VitlabError(
            f"{PARAM}: {path} does not exist; point it at an image folder, {EXPECTED}"
        )
    if not path.is_dir():
        raise VitlabError(f"{PARAM}: {path} is not a folder; {EXPECTED}")
    path = path.resolve()

    split_dirs = {s: path / s for s in SPLITS if (path / s).is_dir()}
    if split_dirs and "train" not in split_dirs:
        raise VitlabError(f"{PARAM}: {path} has {', '.join(split_dirs)}/ but no train/; {EXPECTED}")
    if split_dirs and _images(split_dirs["train"]):
        layout, (classes, found) = "train/{label}_{index}", _homework(path, split_dirs)
    elif split_dirs:
        layout, (classes, found) = "split/class folders", _class_folders(path, split_dirs)
    elif _images(path):
        raise VitlabError(
            f"{PARAM}: {path} holds images directly, so they carry no class; {EXPECTED}"
        )
    else:
        split_dirs = {"train": path}
        layout, (classes, found) = "class folders", _class_folders(path, split_dirs)

    carve = {}
    if "test" not in split_dirs:
        carve["test"] = test_fraction
    if "val" not in split_dirs:
        carve["val"] = val_fraction
    split_of = {img: split for img, (_, split) in found.items()}
    base = Path(index_dir or out_root).resolve()  # paths hang off where the index will live
    if carve:
        train = {
            img.relative_to(path).as_posix(): label
            for img, (label, split) in found.items()
            if split == "train"
        }
        for rel, split in stratified_carve(train, carve, seed).items():
            split_of[path / rel] = split

    samples = [
        Sample(image=os.path.relpath(img, base), label=found[img][0], split=split_of[img])
        for img in sorted(found, key=lambda p: (SPLITS.index(split_of[p]), found[p][0], p))
    ]
    for split in SPLITS:
        if not any(s.split == split for s in samples):
            fix = (
                f"raise data.folder.{split}_fraction above 0 or add a {split}/ folder"
                if split in carve
                else f"add images to {path / split}"
            )
            raise VitlabError(f"{PARAM}: the {split} split of {path} is empty; {fix}")
    counts = {s: sum(x.split == s for x in samples) for s in SPLITS}
    log.info("%s: %s layout, %d classes, %s", path, layout, len(classes), counts)
    ds = RawDataset(classes=classes, mask_format="none", source="folder", samples=samples)
    write_index(out_root, ds)
    return ds
