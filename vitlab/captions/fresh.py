"""The captioner's training scenes, drawn fresh every epoch over worker processes.

Drawing 4,000 scenes is about a second of single-threaded Python, a quarter of a default
captioner epoch, while the other cores wait. Every scene is a pure function of (seed, split,
index), so an epoch's scenes can be drawn in chunks, one per core, and come out identical to a
serial draw.
"""

from __future__ import annotations

import itertools

from vitlab.captions.dataset import CaptionSet, from_scenes
from vitlab.captions.scenes import SceneConfig, generate
from vitlab.core.workers import process_pool, split_range


class FreshScenes:
    """Epoch 1 trains on `first` (the written split); epoch e >= 2 on the new training scenes
    (e-1)*n .. e*n-1, n = len(first). A context manager: leaving it ends the workers."""

    def __init__(self, first: CaptionSet, cfg: SceneConfig, seed: int, *, workers: int) -> None:
        self.first, self.cfg, self.seed, self.workers = first, cfg, seed, max(1, workers)
        self._pool = process_pool(self.workers, spawn=True) if workers > 1 else None

    def __call__(self, epoch: int) -> CaptionSet:
        if epoch == 1:
            return self.first
        n = len(self.first)
        pieces = split_range((epoch - 1) * n, epoch * n, self.workers)
        starts, counts = [lo for lo, _ in pieces], [hi - lo for lo, hi in pieces]
        jobs = (itertools.repeat(self.cfg), itertools.repeat(self.seed),
                itertools.repeat("train"), starts, counts)  # fmt: skip
        chunks = self._pool.map(generate, *jobs) if self._pool else map(generate, *jobs)
        scenes = [s for chunk in chunks for s in chunk]
        return from_scenes(scenes, [""] * n)

    def __enter__(self) -> FreshScenes:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool:
            self._pool.shutdown(cancel_futures=True)
