"""Stage `fetch`: bring the raw dataset named by `data.source` into data/raw as an index.

synthetic: generate images and masks; oxford_pets: download, verify, extract; folder: index a
local folder. Whatever the source, the output is data/raw/{dataset.json,index.csv} + files.
"""

from __future__ import annotations

from pathlib import Path

from stages._common import cli, load_params
from vitlab.core import config, contract
from vitlab.core.atomic import atomic_dir
from vitlab.core.errors import VitlabError
from vitlab.core.workers import per_core
from vitlab.sources import synthetic
from vitlab.sources.rawdata import SPLITS, RawDataset, Sample, write_index

RAW = contract.RAW


def fetch_synthetic(p: config.SyntheticData, out: Path) -> RawDataset:
    """Write the generated set as PNG images and masks, so it goes through `prepare` as files."""
    per_class = p.per_class.model_dump()
    d = synthetic.Difficulty(
        object_scale=tuple(p.object_scale),
        distractors=tuple(p.distractors),
        noise=p.noise,
        colour_jitter=p.colour_jitter,
    )
    num_classes = p.num_classes
    try:
        classes = synthetic.class_names(num_classes)
    except ValueError as e:
        raise VitlabError(f"data.synthetic.num_classes: {e}") from e
    workers = per_core()  # the files do not depend on how many
    samples = []
    for split in SPLITS:
        (out / split).mkdir(parents=True)
        written = synthetic.write_split(
            out / split, split, per_class[split], num_classes, p.size, p.seed, d, workers=workers
        )
        samples += [Sample(f"{split}/{img}", label, split, f"{split}/{mask}")
                    for img, mask, label in written]  # fmt: skip
    return RawDataset(classes, "binary", "synthetic", samples)


@cli
def main() -> None:
    data = load_params().data
    source = data.source
    with atomic_dir(RAW) as tmp:
        if source == "synthetic":
            ds = fetch_synthetic(data.synthetic, tmp)
        elif source == "oxford_pets":
            from vitlab.sources.oxford import fetch_oxford

            o = data.oxford_pets
            ds = fetch_oxford(
                images_url=o.images_url,
                images_md5=o.images_md5,
                annotations_url=o.annotations_url,
                annotations_md5=o.annotations_md5,
                cache_dir=Path(o.cache_dir),
                out_root=tmp,
                val_fraction=o.val_fraction,
                seed=data.split_seed,
            )
        else:
            from vitlab.sources.folder import index_folder

            f = data.folder
            ds = index_folder(
                Path(f.path),
                tmp,
                val_fraction=f.val_fraction,
                test_fraction=f.test_fraction,
                seed=data.split_seed,
                index_dir=RAW,
            )
        if source == "synthetic":
            write_index(tmp, ds)
    counts = {s: sum(x.split == s for x in ds.samples) for s in SPLITS}
    print(f"fetch: {source}, {len(ds.classes)} classes, {counts}")


if __name__ == "__main__":
    main()
