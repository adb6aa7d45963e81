"""Stage `prepare`: decode and resize data/raw once into memory-mappable arrays.

Writes data/prepared/<split>/{images,labels,masks}.npy and data/prepared/meta.json (classes,
counts, skipped images, a content fingerprint that training uses to know its data).
"""

from __future__ import annotations

import hashlib
import os

from stages._common import cli, load_params
from vitlab.core import contract
from vitlab.core.atomic import atomic_dir, write_json
from vitlab.core.errors import VitlabError
from vitlab.sources.prepare import prepare_split
from vitlab.sources.rawdata import SPLITS, read_index

RAW, OUT = contract.RAW, contract.PREPARED


@cli
def main() -> None:
    p = load_params().prepare
    size = p.image_size
    workers = min(p.workers or 8, os.cpu_count() or 1)
    ds = read_index(RAW)
    with atomic_dir(OUT) as tmp:
        splits = {s: prepare_split(RAW, ds, s, size, tmp / s, workers) for s in SPLITS}
        for split, info in splits.items():
            if info["count"] == 0:
                raise VitlabError(
                    f"{RAW}: every image of the {split!r} split is unreadable; check the data"
                )
        fingerprint = hashlib.sha256("".join(splits[s]["sha256"] for s in SPLITS).encode())
        meta = {
            "source": ds.source,
            "classes": ds.classes,
            "image_size": size,
            "mask_format": ds.mask_format,
            "splits": splits,
            "fingerprint": fingerprint.hexdigest(),
        }
        write_json(tmp / "meta.json", meta)
    skipped = sum(len(v["skipped"]) for v in splits.values())
    counts = {s: v["count"] for s, v in splits.items()}
    print(f"prepare: {size}px, {counts}, skipped {skipped} unreadable image(s)")


if __name__ == "__main__":
    main()
