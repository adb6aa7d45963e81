"""The raw-dataset index: the contract between `fetch` (any source) and `prepare`.

Every source (generated, Oxford-IIIT Pet, a local folder) ends as a folder holding
`dataset.json` (class names, mask format, source) and `index.csv` (one row per image:
path, label, split, optional mask path). `prepare` reads only this, so adding a source never
touches decoding, resizing or training.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vitlab.core.atomic import write_json, write_text
from vitlab.core.errors import VitlabError

SPLITS = ("train", "val", "test")
MASK_FORMATS = ("binary", "trimap", "none")


@dataclass(frozen=True)
class Sample:
    """One image. Paths are relative to the index folder (absolute ones are read as they are)."""

    image: str
    label: int
    split: str
    mask: str = ""


@dataclass
class RawDataset:
    """Class names (index = label), how masks encode the object, and the samples.

    mask_format: "binary" (non-zero = object), "trimap" (Oxford: 1 = pet, 2 = background,
    3 = boundary; the object is 1 and 3), or "none" (no masks).
    """

    classes: list[str]
    mask_format: str
    source: str
    samples: list[Sample] = field(default_factory=list)

    def validate(self) -> None:
        if self.mask_format not in MASK_FORMATS:
            raise VitlabError(
                f"dataset.json: mask_format {self.mask_format!r} not in {MASK_FORMATS}"
            )
        n = len(self.classes)
        for s in self.samples:
            if s.split not in SPLITS:
                raise VitlabError(
                    f"index.csv: {s.image} has split {s.split!r}; use one of {SPLITS}"
                )
            if not 0 <= s.label < n:
                raise VitlabError(
                    f"index.csv: {s.image} has label {s.label}; labels run 0..{n - 1}"
                )
        for split in SPLITS:
            if not any(s.split == split for s in self.samples):
                raise VitlabError(f"index.csv: the {split!r} split is empty; check the data source")


def write_index(root: str | Path, ds: RawDataset) -> None:
    """Write dataset.json and index.csv into `root`, atomically (index last)."""
    ds.validate()
    root = Path(root)
    meta = {"classes": ds.classes, "mask_format": ds.mask_format, "source": ds.source}
    write_json(root / "dataset.json", meta)
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=["image", "label", "split", "mask"], lineterminator="\n"
    )
    writer.writeheader()
    for s in ds.samples:
        writer.writerow(asdict(s))
    write_text(root / "index.csv", buf.getvalue())


def read_index(root: str | Path) -> RawDataset:
    """Read what `write_index` wrote; a missing file is a clear error naming the stage to run."""
    root = Path(root)
    meta_path, index_path = root / "dataset.json", root / "index.csv"
    for p in (meta_path, index_path):
        if not p.is_file():
            raise VitlabError(f"{p} is missing; run the fetch stage first (dvc repro fetch)")
    meta = json.loads(meta_path.read_text())
    with index_path.open(newline="") as f:
        samples = [
            Sample(image=r["image"], label=int(r["label"]), split=r["split"], mask=r["mask"] or "")
            for r in csv.DictReader(f)
        ]
    ds = RawDataset(meta["classes"], meta["mask_format"], meta["source"], samples)
    ds.validate()
    return ds


def resolve(root: str | Path, rel: str) -> Path:
    """A sample's path as a real path: absolute paths stay, relative ones hang off `root`."""
    p = Path(rel)
    return p if p.is_absolute() else Path(root) / p
