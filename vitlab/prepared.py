"""Memory-mapped splits and a batch loader that does the float work on the device.

Batches travel as uint8 (4x less to copy than float32) and are normalised on the target
device, so a GPU does its own augmentation and normalisation; workers and pinned memory are
loader options for when the host must keep up with a fast device.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vitlab.core.errors import VitlabError


@dataclass
class Split:
    """One prepared split: images (N, H, W, 3 uint8), labels (N,), masks (N, H, W uint8)."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def load_split(root: str | Path, split: str) -> Split:
    """Memory-map a split written by `prepare`; a missing one names the stage to run."""
    d = Path(root) / split
    try:
        return Split(
            images=np.load(d / "images.npy", mmap_mode="r"),
            labels=np.load(d / "labels.npy"),
            masks=np.load(d / "masks.npy", mmap_mode="r"),
        )
    except (FileNotFoundError, ValueError) as e:
        raise VitlabError(f"{d} is missing or unreadable ({e}); run `dvc repro prepare`") from e


def load_meta(root: str | Path) -> dict:
    """data/prepared/meta.json: classes, image size, counts, fingerprint."""
    path = Path(root) / "meta.json"
    if not path.is_file():
        raise VitlabError(f"{path} is missing; run `dvc repro prepare`")
    return json.loads(path.read_text())


class _Batches(Dataset):
    """Index-batch -> (uint8 NCHW images, int64 labels); one item is one whole batch."""

    def __init__(self, split: Split, batches: list[np.ndarray]):
        self.split, self.batches = split, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.batches[i]
        x = torch.from_numpy(np.ascontiguousarray(self.split.images[idx])).permute(0, 3, 1, 2)
        y = torch.from_numpy(self.split.labels[idx])
        return x, y


def batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
    workers: int = 0,
    pin_memory: bool = False,
    indices: np.ndarray | None = None,
    rank: int = 0,
    world: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 images NCHW, labels) batches; the order is a pure function of `seed`.

    With `world` > 1 each global batch of `batch_size` rows is split across ranks (rank r
    gets rows r, r + world, ...), so the union over ranks is the single-process batch.
    """
    order = np.arange(len(split)) if indices is None else np.asarray(indices)
    if shuffle:
        order = np.random.default_rng(seed).permutation(order)
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    # each global batch sorted (sequential reads on the memory map), then split across ranks
    chunks = [np.sort(order[i : i + batch_size])[rank::world] for i in range(0, stop, batch_size)]
    loader = DataLoader(
        _Batches(split, chunks),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
    yield from loader


def normalize(x: torch.Tensor, mean: float = 0.5, std: float = 0.5) -> torch.Tensor:
    """uint8 -> float in the released weights' convention: (x/255 - 0.5) / 0.5."""
    return (x.float().div_(255.0) - mean) / std
