"""A generated 37-class image set that behaves like a fine-grained breed task.

Each image holds one object of its class at a random position, scale and rotation, with a
random body shape, on a textured background beside grey distractors. A class is a coat: a
colour crossed with a surface pattern (the "breed"), so the class shows only on the object,
distractors carry patterns but never colour, and a model has to find the object and read its
coat. Every image is a pure function of (seed, split, index), so sizes can change without
reshuffling the rest, and a ground-truth object mask is drawn with it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vitlab.core.generated import COLOURS, PNG_OPTIONS, SPLIT_IDS
from vitlab.core.workers import run_jobs, split_range

PATTERNS = ("solid", "stripes", "dots", "checks", "net")


def class_names(num_classes: int = 37) -> list[str]:
    """`<colour>_<pattern>` names, pattern-major, the first `num_classes` of 8 x 5."""
    names = [f"{c}_{p}" for p, c in itertools.product(PATTERNS, COLOURS)]
    if not 2 <= num_classes <= len(names):
        raise ValueError(f"num_classes must be in 2..{len(names)} (got {num_classes})")
    return names[:num_classes]


@dataclass(frozen=True)
class Difficulty:
    """Knobs of the generated set. Scales are the object's diameter as a fraction of the side."""

    object_scale: tuple[float, float] = (0.35, 0.6)
    distractors: tuple[int, int] = (1, 3)
    noise: float = 0.06
    colour_jitter: float = 0.12
    background_saturation: float = 0.25


def _body(size: int, rng: np.random.Generator, diameter: float) -> tuple[np.ndarray, tuple]:
    """A random blob mask (radius with a few harmonics) and its frame (cx, cy, angle)."""
    radius = diameter * size / 2
    margin = radius * 1.1
    cx, cy = rng.uniform(margin, size - margin, size=2) if size > 2 * margin else (size / 2,) * 2
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = xx - cx, yy - cy
    theta = np.arctan2(dy, dx)
    r = np.ones_like(theta)
    for k in (2, 3):
        r += rng.uniform(0.0, 0.18) * np.cos(k * (theta - rng.uniform(0, 2 * np.pi)))
    mask = np.hypot(dx, dy) <= radius * r / r.max()
    return mask, (cx, cy, angle)


def _pattern(kind: str, size: int, frame: tuple, period: float) -> np.ndarray:
    """A boolean field (True = second tone) of `kind` in the object's rotated frame."""
    cx, cy, angle = frame
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    w = 2 * np.pi / period
    if kind == "solid":
        return np.zeros((size, size), bool)
    if kind == "stripes":
        return np.sin(w * u) > 0
    if kind == "checks":
        return (np.sin(w * u) > 0) ^ (np.sin(w * v) > 0)
    if kind == "dots":
        du = (u / period + 0.25) % 1.0 - 0.5
        dv = (v / period + 0.25) % 1.0 - 0.5
        return np.hypot(du, dv) < 0.28
    if kind == "net":
        return ((u / period) % 1.0 < 0.28) | ((v / period) % 1.0 < 0.28)
    raise ValueError(f"unknown pattern {kind!r}")


def _background(size: int, rng: np.random.Generator, d: Difficulty) -> np.ndarray:
    """Low-frequency, low-saturation colour texture plus fine grain."""
    coarse = rng.uniform(70, 190, size=(5, 5, 3))
    grey = coarse.mean(axis=2, keepdims=True)
    coarse = grey + d.background_saturation * (coarse - grey)
    idx = np.linspace(0, 4, size)
    i0 = np.floor(idx).astype(int).clip(0, 3)
    t = (idx - i0)[:, None]
    rows = coarse[i0] * (1 - t[..., None]) + coarse[i0 + 1] * t[..., None]  # (size, 5, 3)
    img = rows[:, i0] * (1 - t.T[..., None]) + rows[:, i0 + 1] * t.T[..., None]
    return img + rng.normal(0, 12, size=(size, size, 1))


def render(label: int, size: int, rng: np.random.Generator, d: Difficulty) -> tuple:
    """One (RGB uint8 image, bool object mask) of class `label`."""
    colour_name, pattern = class_names(len(COLOURS) * len(PATTERNS))[label].split("_")
    img = _background(size, rng, d)
    period = size / 6
    for _ in range(rng.integers(d.distractors[0], d.distractors[1] + 1)):
        dmask, frame = _body(size, rng, rng.uniform(*d.object_scale) * 0.7)
        tone = _pattern(PATTERNS[rng.integers(len(PATTERNS))], size, frame, period)
        g = rng.uniform(60, 200)
        img[dmask] = np.where(tone[dmask, None], g * 0.45, g)
    mask, frame = _body(size, rng, rng.uniform(*d.object_scale))
    coat = np.array(COLOURS[colour_name], np.float32)
    coat = coat * (1 + rng.uniform(-d.colour_jitter, d.colour_jitter))
    tone = _pattern(pattern, size, frame, period)
    img[mask] = np.where(tone[mask, None], coat * 0.25, coat)
    img += rng.normal(0, d.noise * 255, size=img.shape)
    return img.clip(0, 255).astype(np.uint8), mask


def _write_range(job: tuple) -> None:
    out, split, lo, hi, num_classes, size, seed, d = job
    for i in range(lo, hi):
        rng = np.random.default_rng([seed, SPLIT_IDS[split], i])
        image, mask = render(i % num_classes, size, rng, d)
        Image.fromarray(image).save(out / f"{i:05d}.png", **PNG_OPTIONS)
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{i:05d}_mask.png", **PNG_OPTIONS)


def write_split(
    out: Path, split: str, per_class: int, num_classes: int, size: int, seed: int, d: Difficulty,
    *, workers: int = 1,
) -> list[tuple[str, str, int]]:  # fmt: skip
    """Write a balanced split as out/NNNNN.png and NNNNN_mask.png (image i is of class
    i % num_classes), rendered in `workers` processes; the files do not depend on how many.
    Returns (image, mask, label) per image, in index order."""
    class_names(num_classes)  # validates num_classes
    n = per_class * num_classes
    jobs = [(out, split, lo, hi, num_classes, size, seed, d)
            for lo, hi in split_range(0, n, workers)]  # fmt: skip
    run_jobs(_write_range, jobs, workers)
    return [(f"{i:05d}.png", f"{i:05d}_mask.png", i % num_classes) for i in range(n)]
