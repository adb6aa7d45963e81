"""The images a pretrained captioner (CATR) captions: a folder of photos or a Karpathy test split.

Each image is decoded and preprocessed here exactly as CATR will read it, so one CATR cannot
read (empty, not an image, too small for the backbone) is counted and skipped once, with its
reason, instead of stopping the captioning of the others. What passes is copied, as it is, into
the caption folder (store.write_originals).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitlab.captions.catr import load_image, preprocess
from vitlab.captions.karpathy import CaptionedImage
from vitlab.core.errors import VitlabError

PARAM = "captions.folder.path"
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png"})
RESERVED = frozenset({"manifest"})  # the figure folder's manifest.json


@dataclass(frozen=True)
class Photo:
    """One image to caption: its file, its key (where it came from), its reference captions."""

    path: Path
    key: str
    references: list[list[str]]

    @property
    def name(self) -> str:
        """The stem its figure files are named by."""
        return self.path.stem


def folder_photos(folder: Path) -> list[Photo]:
    """The .jpg/.jpeg/.png files directly in `folder`, sorted (hidden and other files ignored)."""
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise VitlabError(f"{PARAM}: {folder} {what}; point it at a folder of photos to caption")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")
    )
    if not files:
        raise VitlabError(
            f"{PARAM}: {folder} holds no .jpg/.jpeg/.png images; put the photos to caption there"
        )
    return [Photo(p, p.as_posix(), []) for p in files]


def karpathy_test(items: list[CaptionedImage], limit: int) -> list[Photo]:
    """The test split of a Karpathy file with its references (the first `limit`; 0 = all)."""
    test = [it for it in items if it.split == "test"]
    if not test:
        raise VitlabError("the Karpathy file's 'test' split is empty; CATR captions that split")
    return [Photo(it.path, it.key, it.captions) for it in test[: limit or None]]


def readable(photos: list[Photo], square: str) -> tuple[list[Photo], list[str]]:
    """(photos CATR can read with this `square` mode, one reason line per photo it cannot).

    Two readable photos of one name are refused: their figures would overwrite each other.
    """
    kept, skipped = [], []
    for photo in photos:
        try:
            preprocess(load_image(photo.path), square, name=str(photo.path))
        except VitlabError as e:
            skipped.append(str(e))
        else:
            kept.append(photo)
    seen: dict[str, Path] = {}
    for photo in kept:
        if photo.name in RESERVED:
            raise VitlabError(
                f"{photo.path}: the name {photo.name!r} is taken by the figures' "
                f"{photo.name}.json; rename the photo"
            )
        if photo.name in seen:
            raise VitlabError(
                f"{seen[photo.name]} and {photo.path} share the name {photo.name!r}, which "
                "names their figure files; rename one"
            )
        seen[photo.name] = photo.path
    return kept, skipped
