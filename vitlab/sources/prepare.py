"""Decode and resize a raw index once into arrays that training memory-maps.

JPEG/PNG decoding never runs inside the training loop: `prepare_split` turns one split into
`images.npy` (N, H, W, 3 uint8), `labels.npy` (N int64) and `masks.npy` (N, H, W uint8, 1 =
object), resizing as the released ViT weights expect (to a square, no crop). Unreadable or
truncated images are counted and skipped, with their paths reported, never a crash mid-epoch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from vitlab.core.workers import run_jobs
from vitlab.sources.rawdata import RawDataset, Sample, resolve

log = logging.getLogger(__name__)
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey tail


def object_mask(mask_img: Image.Image, mask_format: str) -> np.ndarray:
    """The object as 0/1: binary masks are non-zero; Oxford trimaps are 1 (pet) or 3 (edge)."""
    m = np.asarray(mask_img)
    if m.ndim == 3:
        m = m[..., 0]
    if mask_format == "trimap":
        return ((m == 1) | (m == 3)).astype(np.uint8)
    return (m > 0).astype(np.uint8)


def load_sample(
    root: Path, sample: Sample, size: int, mask_format: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """(image, mask) resized to size x size, or None if the image cannot be decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(resolve(root, sample.image)) as im:
                im.load()
                image = np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning):
        return None
    if sample.mask and mask_format != "none":
        try:
            with Image.open(resolve(root, sample.mask)) as mk:
                mask = object_mask(mk.resize((size, size), Image.NEAREST), mask_format)
        except (OSError, ValueError, SyntaxError):
            return None
    else:
        mask = np.ones((size, size), np.uint8)  # no mask: the whole image counts as object
    return image, mask


def _load_chunk(args: tuple) -> list:
    root, samples, size, mask_format = args
    return [load_sample(root, s, size, mask_format) for s in samples]


def _allocated(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A uint8 .npy memory map whose blocks are reserved on disk now: a full disk is an OSError
    here (named by the caller), not a SIGBUS when a page of the map is first written."""
    arr = np.lib.format.open_memmap(path, "w+", np.uint8, shape)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    return arr


def prepare_split(
    root: Path, ds: RawDataset, split: str, size: int, out: Path, workers: int = 1
) -> dict:
    """Write one split's arrays into `out`; return counts, skipped paths and a content hash."""
    samples = [s for s in ds.samples if s.split == split]
    chunks = [samples[i : i + 256] for i in range(0, len(samples), 256)]
    jobs = [(root, c, size, ds.mask_format) for c in chunks]
    results = [r for chunk in run_jobs(_load_chunk, jobs, workers) for r in chunk]
    kept = [(s, r) for s, r in zip(samples, results, strict=True) if r is not None]
    skipped = [s.image for s, r in zip(samples, results, strict=True) if r is None]
    if skipped:
        log.warning("%s: skipped %d unreadable image(s), e.g. %s", split, len(skipped), skipped[0])
    out.mkdir(parents=True, exist_ok=True)
    n = len(kept)
    images = _allocated(out / "images.npy", (n, size, size, 3))
    masks = _allocated(out / "masks.npy", (n, size, size))
    digest = hashlib.sha256()
    for i, (_, (image, mask)) in enumerate(kept):
        images[i], masks[i] = image, mask
        digest.update(image.tobytes())
    labels = np.array([s.label for s, _ in kept], np.int64)
    digest.update(labels.tobytes())
    images.flush()
    masks.flush()
    del images, masks
    np.save(out / "labels.npy", labels)
    return {"count": n, "skipped": skipped, "sha256": digest.hexdigest()}
