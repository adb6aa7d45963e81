"""Generated captioned scenes: one to three objects, a template caption and a mask per object.

A scene places objects in distinct cells of a coarse grid (so "left of" and "above" are never
ambiguous), each with a size, a coat colour and a coat pattern that shows inside a single
patch (we measured that patterns visible within a patch are learned fast; body shapes are not).
The caption names the objects column by column (top to bottom within a column) and the
relation between neighbours, so it is a pure function of the scene and can be got exactly
right. Every scene is a pure function of (seed, split, index): a training run can draw fresh
scenes each epoch (indices beyond the written split) without reshuffling anything, and the
val/test scenes never change when the train size does.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np

from vitlab.core.errors import VitlabError
from vitlab.core.generated import COLOURS, SPLIT_IDS

PATTERNS = ("plain", "striped", "spotted", "checked")
SIZES = ("small", "large")
NOUN = "blob"


@dataclass(frozen=True)
class SceneConfig:
    """Knobs of the generated scenes. Diameters and jitter are fractions of the image side."""

    image_size: int = 64
    objects: tuple[int, int] = (1, 3)
    grid: int = 3
    small: tuple[float, float] = (0.17, 0.21)
    large: tuple[float, float] = (0.27, 0.32)
    jitter: float = 0.04
    pattern_period: float = 6.0  # pixels: stripes/spots/checks repeat inside one 8-px patch
    pattern_tilt: float = 0.0  # degrees of random tilt off the axes (20: much slower to learn)
    noise: float = 0.04
    colour_jitter: float = 0.1
    background_saturation: float = 0.25
    colours: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple")
    patterns: tuple[str, ...] = PATTERNS

    def validate(self) -> None:
        """Raise a VitlabError naming the first bad knob."""
        lo, hi = self.objects
        if not 1 <= lo <= hi <= self.grid * self.grid:
            raise VitlabError(
                f"captions.scenes.objects {list(self.objects)} must satisfy "
                f"1 <= min <= max <= grid^2 = {self.grid * self.grid}"
            )
        if self.image_size < 16:
            raise VitlabError(f"captions.image_size must be >= 16 (got {self.image_size})")
        unknown = [c for c in self.colours if c not in COLOURS]
        if unknown or not self.colours:
            raise VitlabError(
                f"captions.scenes.colours {list(self.colours)}: choose from {list(COLOURS)}"
            )
        unknown = [p for p in self.patterns if p not in PATTERNS]
        if unknown or not self.patterns:
            raise VitlabError(
                f"captions.scenes.patterns {list(self.patterns)}: choose from {list(PATTERNS)}"
            )

    def to_dict(self) -> dict:
        """JSON-ready form (written into the dataset so training can draw more scenes)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> SceneConfig:
        """Inverse of to_dict; unknown keys are an error naming them."""
        known = cls.__dataclass_fields__
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise VitlabError(f"captions.scenes: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass
class Scene:
    """One scene: RGB image, object-id mask (0 = background, k = k-th object named in the
    caption), caption tokens, and per token the 1-based object it describes (0 = none)."""

    image: np.ndarray
    mask: np.ndarray
    tokens: list[str]
    token_objects: list[int]

    @property
    def caption(self) -> str:
        return " ".join(self.tokens)


@functools.lru_cache(maxsize=8)
def _interp(size: int, knots: int) -> np.ndarray:
    """(size, knots) linear-interpolation weights from `knots` control points to `size` pixels."""
    idx = np.linspace(0, knots - 1, size)
    i0 = np.floor(idx).astype(int).clip(0, knots - 2)
    t = idx - i0
    w = np.zeros((size, knots), np.float32)
    w[np.arange(size), i0] = 1 - t
    w[np.arange(size), i0 + 1] = t
    return w


def _background(size: int, rng: np.random.Generator, saturation: float) -> np.ndarray:
    """Low-frequency, low-saturation colour texture (float32 RGB)."""
    coarse = rng.uniform(80, 180, size=(4, 4, 3)).astype(np.float32)
    grey = coarse.mean(axis=2, keepdims=True)
    coarse = grey + saturation * (coarse - grey)
    w = _interp(size, 4)
    rows = (w @ coarse.reshape(4, 12)).reshape(size, 4, 3)
    return np.matmul(w, rows)  # (size, size, 3): interpolated along rows, then columns


def _coat(pattern: str, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """True where the pattern's dark tone shows, in the object's rotated frame (u, v)."""
    w = 2 * np.pi / period
    if pattern == "plain":
        return np.zeros(u.shape, bool)
    if pattern == "striped":
        return np.sin(w * u) > 0
    if pattern == "checked":
        return (np.sin(w * u) > 0) ^ (np.sin(w * v) > 0)
    if pattern == "spotted":
        du = (u / period) % 1.0 - 0.5
        dv = (v / period) % 1.0 - 0.5
        return np.hypot(du, dv) < 0.3
    raise VitlabError(f"unknown pattern {pattern!r}")


def _phrase(size: str, colour: str, pattern: str) -> list[str]:
    return ["a", size, colour, pattern, NOUN]


def render_scene(cfg: SceneConfig, rng: np.random.Generator) -> Scene:
    """Draw one scene from `rng` (objects in distinct grid cells, named column by column)."""
    s = cfg.image_size
    n = int(rng.integers(cfg.objects[0], cfg.objects[1] + 1))
    cells = sorted(
        rng.choice(cfg.grid * cfg.grid, size=n, replace=False).tolist(),
        key=lambda c: (c % cfg.grid, c // cfg.grid),
    )  # column-major: left to right
    img = _background(s, rng, cfg.background_saturation)
    mask = np.zeros((s, s), np.uint8)
    cell = s / cfg.grid
    tokens: list[str] = []
    objs: list[int] = []
    for k, c in enumerate(cells, start=1):
        size = SIZES[int(rng.integers(2))]
        colour = cfg.colours[int(rng.integers(len(cfg.colours)))]
        pattern = cfg.patterns[int(rng.integers(len(cfg.patterns)))]
        diameter = rng.uniform(*(cfg.small if size == "small" else cfg.large)) * s
        cx = (c % cfg.grid + 0.5) * cell + rng.uniform(-1, 1) * cfg.jitter * s
        cy = (c // cfg.grid + 0.5) * cell + rng.uniform(-1, 1) * cfg.jitter * s
        # Work in the object's bounding box only: a scene costs well under a millisecond.
        half = diameter / 2 + 1
        x0, x1 = max(int(cx - half), 0), min(int(np.ceil(cx + half)), s)
        y0, y1 = max(int(cy - half), 0), min(int(np.ceil(cy + half)), s)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
        dx, dy = xx - cx, yy - cy
        theta = np.arctan2(dy, dx)
        r = 1 + rng.uniform(0.0, 0.12) * np.cos(2 * (theta - rng.uniform(0, np.pi)))
        inside = np.hypot(dx, dy) <= diameter / 2 * r / r.max()
        angle = np.pi / 2 * rng.integers(2) + np.radians(rng.uniform(-1, 1) * cfg.pattern_tilt)
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        tone = _coat(pattern, u + rng.uniform(0, cfg.pattern_period), v, cfg.pattern_period)
        rgb = np.array(COLOURS[colour], np.float32)
        rgb = rgb * (1 + rng.uniform(-cfg.colour_jitter, cfg.colour_jitter))
        box = img[y0:y1, x0:x1]
        box[inside] = np.where(tone[inside, None], rgb * 0.3, rgb)
        mask[y0:y1, x0:x1][inside] = k
        if k > 1:
            left_of = cells[k - 2] % cfg.grid != c % cfg.grid
            tokens += ["left", "of"] if left_of else ["above"]
            objs += [0, 0] if left_of else [0]
        tokens += _phrase(size, colour, pattern)
        objs += [0, k, k, k, k]
    img += rng.standard_normal((s, s, 1), dtype=np.float32) * np.float32(cfg.noise * 255)
    return Scene(img.clip(0, 255).astype(np.uint8), mask, tokens, objs)


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of scene `index` of `split`: scenes never depend on one another."""
    return np.random.default_rng([seed, SPLIT_IDS[split], index])


def generate(cfg: SceneConfig, seed: int, split: str, start: int, count: int) -> list[Scene]:
    """Scenes start .. start+count-1 of `split`, deterministically from `seed`."""
    if split not in SPLIT_IDS:
        raise VitlabError(f"unknown split {split!r}; use one of {list(SPLIT_IDS)}")
    return [render_scene(cfg, scene_rng(seed, split, i)) for i in range(start, start + count)]


def word_kind(token: str) -> str | None:
    """Which attribute of an object `token` names (size/colour/pattern/noun), else None."""
    if token in SIZES:
        return "size"
    if token in COLOURS:
        return "colour"
    if token in PATTERNS:
        return "pattern"
    if token == NOUN:
        return "noun"
    return None
