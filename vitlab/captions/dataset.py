"""Captioned image sets in memory, from generated scenes or a prepared caption folder.

One shape for every source: uint8 images (N, H, W, 3), one or more reference token lists per
image, and, for generated scenes, an object-id mask per image plus the object each token of
the first reference describes (what grounding is scored against).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from vitlab.captions.scenes import Scene
from vitlab.captions.vocab import Vocab, pad_batch


@dataclass
class CaptionSet:
    """Images with their reference captions (and masks / token objects where known)."""

    ids: list[str]
    images: np.ndarray
    captions: list[list[list[str]]]
    masks: np.ndarray | None = None
    token_objects: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: list[int]) -> CaptionSet:
        """The images at `index`, in that order."""
        return CaptionSet(
            ids=[self.ids[i] for i in index],
            images=self.images[index],
            captions=[self.captions[i] for i in index],
            masks=None if self.masks is None else self.masks[index],
            token_objects=None
            if self.token_objects is None
            else [self.token_objects[i] for i in index],
        )


def from_scenes(scenes: list[Scene], ids: list[str]) -> CaptionSet:
    """Generated scenes as a CaptionSet (one reference each, masks and token objects kept)."""
    return CaptionSet(
        ids=ids,
        images=np.stack([s.image for s in scenes]),
        captions=[[s.tokens] for s in scenes],
        masks=np.stack([s.mask for s in scenes]),
        token_objects=[s.token_objects for s in scenes],
    )


def to_images(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W) as the ViTs expect: (x/255-0.5)/0.5."""
    t = torch.from_numpy(np.ascontiguousarray(x)).to(device).permute(0, 3, 1, 2)
    return (t.float() / 255.0 - 0.5) / 0.5


def pairs(data: CaptionSet) -> list[tuple[int, int]]:
    """Every (image, reference) pair: an epoch sees each training caption once."""
    return [(i, j) for i, refs in enumerate(data.captions) for j in range(len(refs))]


def batches(
    data: CaptionSet,
    vocab: Vocab,
    batch_size: int,
    *,
    max_len: int,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(uint8 images, ids (B, T)) batches of pairs, shuffled when a generator is given.

    Captions longer than max_len (with <start>/<end>) are cut; the cut caption keeps no <end>.
    """
    p = pairs(data)
    order = torch.randperm(len(p), generator=generator).tolist() if generator else range(len(p))
    order = list(order)
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for lo in range(0, stop, batch_size):
        chunk = [p[k] for k in order[lo : lo + batch_size]]
        if not chunk:
            break
        imgs = data.images[[i for i, _ in chunk]]
        seqs = [vocab.encode(data.captions[i][j])[:max_len] for i, j in chunk]
        yield imgs, pad_batch(seqs, vocab.pad)
