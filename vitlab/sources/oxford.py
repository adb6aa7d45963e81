"""The Oxford-IIIT Pet source: download both archives (md5-checked, cached), unpack, index.

The official lists, not a directory listing, decide what is an image: `images/` also holds
`.mat` files and a few listed names are missing, and `annotations/trimaps/` holds macOS `._`
files. Labels are CLASS-ID - 1 (1..37, alphabetical breeds); val is carved from trainval per
class with a seed; test is the official test list; masks are the trimaps.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import unquote, urlparse

from vitlab.core.download import download, safe_extract
from vitlab.core.errors import VitlabError
from vitlab.sources.folder import stratified_carve
from vitlab.sources.rawdata import RawDataset, Sample, write_index

log = logging.getLogger(__name__)

PARAM = "data.oxford_pets"


def class_name(image_name: str) -> str:
    """`american_bulldog_12` -> `american_bulldog`: the breed is the name minus `_<index>`."""
    head, sep, tail = image_name.rpartition("_")
    return head if sep and tail.isdigit() and head else image_name


def parse_list(path: Path) -> list[tuple[str, int]]:
    """(image name, CLASS-ID) rows of list.txt / trainval.txt / test.txt; '#' lines skipped."""
    if not path.is_file():
        raise VitlabError(
            f"{path} is missing; is {PARAM}.annotations_url the Oxford-IIIT Pet annotations "
            "archive? Delete the cached archive and rerun"
        )
    rows = []
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 2 or not fields[1].isdigit() or int(fields[1]) < 1:
            raise VitlabError(
                f"{path}:{no}: expected 'Image CLASS-ID SPECIES BREED-ID', got {line.strip()!r}"
            )
        rows.append((fields[0], int(fields[1])))
    return rows


def _archive_path(cache_dir: Path, url: str, fallback: str) -> Path:
    name = Path(unquote(urlparse(url).path)).name
    return cache_dir / (name if name.endswith((".tar", ".tgz", ".gz", ".xz", ".bz2")) else fallback)


def fetch_oxford(
    *,
    images_url: str,
    images_md5: str | None,
    annotations_url: str,
    annotations_md5: str | None,
    cache_dir: Path,
    out_root: Path,
    val_fraction: float,
    seed: int,
) -> RawDataset:
    """Download (or reuse the cached) archives, unpack into `out_root`, write and return the index.

    Sample paths are relative to `out_root` (`images/<name>.jpg`, masks
    `annotations/trimaps/<name>.png`). Listed images missing on disk are skipped with a warning;
    a missing trimap leaves that sample without a mask.
    """
    if not isinstance(val_fraction, int | float) or not 0 < val_fraction < 1:
        raise VitlabError(f"{PARAM}.val_fraction must be in (0, 1), got {val_fraction!r}")
    cache_dir, out_root = Path(cache_dir), Path(out_root)
    images_tgz = _archive_path(cache_dir, images_url, "images.tar.gz")
    annotations_tgz = _archive_path(cache_dir, annotations_url, "annotations.tar.gz")
    if images_tgz == annotations_tgz:
        images_tgz = cache_dir / f"images-{images_tgz.name}"
        annotations_tgz = cache_dir / f"annotations-{annotations_tgz.name}"
    archives = (
        ("images", images_url, images_md5, images_tgz),
        ("annotations", annotations_url, annotations_md5, annotations_tgz),
    )
    for what, url, md5, dest in archives:  # both downloads before any slow extraction
        try:
            download(url, dest, md5)
        except VitlabError as e:
            raise VitlabError(f"{PARAM}.{what}_url / {what}_md5: {e}") from None
    for _, _, _, dest in archives:
        safe_extract(dest, out_root)

    ann = out_root / "annotations"
    if not (out_root / "images").is_dir():
        raise VitlabError(
            f"{images_tgz} has no images/ folder; is {PARAM}.images_url the Oxford-IIIT Pet "
            "images archive? Delete the file and rerun"
        )
    classes = _classes(parse_list(ann / "list.txt"), ann / "list.txt")
    trainval = parse_list(ann / "trainval.txt")
    test = parse_list(ann / "test.txt")
    for name, cid in trainval + test:
        if cid > len(classes) or classes[cid - 1] != class_name(name):
            raise VitlabError(
                f"{ann}: {name} has CLASS-ID {cid} in trainval/test but list.txt disagrees; "
                "the annotations archive is inconsistent, delete it and rerun"
            )
    test_names = {name for name, _ in test}
    dup = [name for name, _ in trainval if name in test_names]
    if dup:
        log.warning("oxford: %d image(s) in both trainval and test, kept in test", len(dup))
    trainval = [(name, cid) for name, cid in trainval if name not in test_names]

    present, missing = [], []
    for name, cid in trainval + test:
        (present if (out_root / f"images/{name}.jpg").is_file() else missing).append((name, cid))
    trainval_ok = {name: cid - 1 for name, cid in present if name not in test_names}
    split_of = stratified_carve(trainval_ok, {"val": val_fraction}, seed)
    split_of.update((name, "test") for name in test_names)
    samples, no_mask = [], 0
    for name, cid in present:
        mask = f"annotations/trimaps/{name}.png"
        if not (out_root / mask).is_file():
            no_mask += 1
            mask = ""
        samples.append(Sample(f"images/{name}.jpg", cid - 1, split_of[name], mask))
    if missing:
        log.warning(
            "oxford: %d listed image(s) missing from images/, skipped (e.g. %s)",
            len(missing),
            missing[0][0],
        )
    if no_mask:
        log.warning("oxford: %d image(s) have no trimap; they get no mask", no_mask)
    ds = RawDataset(classes=classes, mask_format="trimap", source="oxford_pets", samples=samples)
    write_index(out_root, ds)
    return ds


def _classes(rows: list[tuple[str, int]], path: Path) -> list[str]:
    """Class names by label from list.txt; every CLASS-ID 1..max must name exactly one breed."""
    by_id: dict[int, str] = {}
    for name, cid in rows:
        breed = class_name(name)
        if by_id.setdefault(cid, breed) != breed:
            raise VitlabError(
                f"{path}: CLASS-ID {cid} names both {by_id[cid]!r} and {breed!r}; "
                "the annotations archive is inconsistent, delete it and rerun"
            )
    if not by_id:
        raise VitlabError(f"{path} lists no images; delete the annotations archive and rerun")
    gaps = [i for i in range(1, max(by_id) + 1) if i not in by_id]
    if gaps:
        raise VitlabError(f"{path}: no image has CLASS-ID {gaps[0]}; the list is incomplete")
    return [by_id[i] for i in range(1, max(by_id) + 1)]
