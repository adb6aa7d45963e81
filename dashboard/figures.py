"""Figure and caption discovery for the Maps page.

Why globbing: the stages that render position-embedding and attention figures and the
captioner's maps land independently and may rename things, so the page shows every PNG it
finds, parses what the names say (model, method, variant, image) and never hides a file
whose name it does not understand.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dashboard.data import (
    CAPTIONS_DIR,
    FIGURES_DIR,
    REPRO,
    DataError,
    Problem,
    flatten,
    read_json,
)

VARIANT_RE = r"best_epoch|uniform_soup|greedy_soup|epoch_\d+"


PREPARED_DIR = "data/prepared"
GROUP_DIRS = {"positions", "attention", "figures"}  # folders that group figures, not images
SCORE_KEYS = ("pointing", "energy", "pointing_uniform", "energy_uniform", "n")


@dataclass(frozen=True)
class Figure:
    """One PNG and what its name says: group (positions/attention/other), method, variant,
    image, and the raw .npy beside it ("" when there is none)."""

    path: str
    group: str
    variant: str = ""
    method: str = ""
    image: str = ""
    npy: str = ""


_POS = re.compile(rf"^positions?_(?P<variant>{VARIANT_RE})(?:_(?P<image>.+))?$")
_POS_ANY = re.compile(r"^positions?(?:_(?P<variant>.+))?$")
_ATT = re.compile(rf"^attention_(?P<method>.+?)_(?P<variant>{VARIANT_RE})(?:_(?P<image>.+))?$")
_ATT_ANY = re.compile(r"^attention_(?P<method>.+)$")


def classify_figure(rel: str, model_dir: str) -> Figure:
    """Parse a figure's path: [positions/]positions_<variant>.png and
    [attention/]attention_<method>_<variant>[_<image>].png.

    Sub-folders other than the group folders (positions/, attention/) name an image. Names that
    match no pattern go to the "other" group, so no figure is hidden for its name.
    """
    path = Path(rel)
    parts = path.parent.relative_to(model_dir).parts if path.parent.as_posix() != model_dir else ()
    sub = "/".join(p for p in parts if p not in GROUP_DIRS)
    stem = path.stem
    npy = path.with_suffix(".npy").as_posix()

    def image(suffix: str | None) -> str:
        return "/".join(x for x in (sub, suffix or "") if x)

    if m := _POS.match(stem):
        return Figure(rel, "positions", variant=m["variant"], image=image(m["image"]), npy=npy)
    if m := _ATT.match(stem):
        return Figure(rel, "attention", m["variant"], m["method"], image(m["image"]), npy)
    if m := _POS_ANY.match(stem):
        return Figure(rel, "positions", variant=m["variant"] or "", image=sub, npy=npy)
    if m := _ATT_ANY.match(stem):
        return Figure(rel, "attention", method=m["method"], image=sub, npy=npy)
    return Figure(rel, "other", image=sub, npy=npy)


def figure_models(root: Path) -> list[str]:
    """Models with a reports/figures/<M>/ folder."""
    return sorted(p.name for p in (root / FIGURES_DIR).glob("*") if p.is_dir())


def discover_figures(root: Path, model: str) -> list[Figure]:
    """Every PNG under reports/figures/<M>/ (recursively), classified by name."""
    model_dir = f"{FIGURES_DIR}/{model}"
    figs = []
    for p in sorted((root / model_dir).rglob("*.png")):
        if p.is_file() and not any(part.startswith(".") for part in p.parts):
            fig = classify_figure(p.relative_to(root).as_posix(), model_dir)
            if not (root / fig.npy).is_file():
                fig = Figure(fig.path, fig.group, fig.variant, fig.method, fig.image, "")
            figs.append(fig)
    return figs


def read_scores(root: Path, model: str) -> dict[str, Any]:
    """reports/figures/<M>/scores.json ({variant: {method: {pointing, energy, *_uniform, n}}});
    {} when absent."""
    rel = f"{FIGURES_DIR}/{model}/scores.json"
    if not (root / rel).is_file():
        return {}
    scores = read_json(root, rel, f"{REPRO} render_attention@{model}")
    if not isinstance(scores, dict):
        raise DataError(
            Problem(
                "malformed",
                rel,
                "expected {variant: {method: {pointing, energy, ...}}}",
                f"{REPRO} render_attention@{model}",
            )
        )
    return scores


def _numbers(d: Any) -> dict[str, float]:
    if not isinstance(d, dict):
        return {}
    return {
        k: float(v)
        for k, v in d.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v)
    }


def scores_for(scores: dict[str, Any], method: str, variant: str) -> dict[str, float]:
    """The numbers of one (method, variant): scores[variant][method] (render_attention's
    layout), or scores[method][variant]."""
    for outer, inner in ((variant, method), (method, variant)):
        got = _numbers(
            (scores.get(outer) or {}).get(inner) if isinstance(scores.get(outer), dict) else None
        )
        if got:
            return got
    return {}


def scores_frame(scores: dict[str, Any]) -> pd.DataFrame:
    """scores.json as a table: one row per (variant, method), or key/value when the layout is
    not {variant: {method: {...}}}."""
    rows = []
    for variant, methods in scores.items():
        if not isinstance(methods, dict):
            rows = []
            break
        for method, numbers in methods.items():
            got = _numbers(numbers)
            if not got:
                rows = []
                break
            rows.append({"variant": variant, "method": method, **got})
    if rows:
        return pd.DataFrame(rows)
    flat = flatten(scores)
    return pd.DataFrame({"key": list(flat), "value": [str(v) for v in flat.values()]})


def csv_scores(df: pd.DataFrame, model: str, variant: str, method: str) -> dict[str, float]:
    """pointing_<method> / energy_<method> (+ the uniform columns) of metrics.csv, keyed like
    scores.json (pointing, energy, pointing_uniform, energy_uniform)."""
    rows = df[(df["model"] == model) & (df["variant"] == variant)]
    if rows.empty:
        return {}
    row = rows.iloc[0]
    want = {
        "pointing": f"pointing_{method}",
        "energy": f"energy_{method}",
        "pointing_uniform": "pointing_uniform",
        "energy_uniform": "energy_uniform",
    }
    out = {}
    for key, col in want.items():
        if col in df.columns and pd.notna(row[col]):
            try:
                out[key] = float(row[col])
            except (TypeError, ValueError):
                continue
    return out


def read_drawn(root: Path, model: str) -> dict:
    """reports/figures/<M>/attention/drawn.json: which images the figures show (indices into
    the split, true labels, predictions per variant); {} when absent."""
    rel = f"{FIGURES_DIR}/{model}/attention/drawn.json"
    if not (root / rel).is_file():
        return {}
    drawn = read_json(root, rel, f"{REPRO} render_attention@{model}")
    return drawn if isinstance(drawn, dict) else {}


def image_labels(drawn: dict, variant: str, count: int) -> list[str]:
    """A readable label per drawn image: '#<index> · <true> → <predicted>'."""
    indices = drawn.get("indices") or list(range(count))
    true = drawn.get("labels") or []
    pred = ((drawn.get("variants") or {}).get(variant) or {}).get("predicted") or []
    out = []
    for i in range(count):
        label = f"#{indices[i]}" if i < len(indices) else f"image {i + 1}"
        if i < len(true):
            label += f" · {true[i]}"
        if i < len(pred):
            label += f" → {pred[i]}" + (" ✓" if i < len(true) and pred[i] == true[i] else " ✗")
        out.append(label)
    return out


def map_overlay(root: Path, npy: str, position: int, split: str = "", index: int = -1) -> Any:
    """One image's attention map from an (n, rows, cols) .npy, upsampled and coloured, blended
    over the image from data/prepared/<split>/images.npy when it is there (else the map alone).
    Returns an (H, W, 3) uint8 array."""
    import numpy as np
    from matplotlib import colormaps
    from PIL import Image

    try:
        maps = np.load(root / npy, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise DataError(
            Problem("malformed", npy, f"not a NumPy array ({e.__class__.__name__})", REPRO)
        ) from None
    if maps.ndim != 3 or not 0 <= position < maps.shape[0]:
        raise DataError(
            Problem(
                "malformed",
                npy,
                f"expected (n, rows, cols) maps, got shape {tuple(maps.shape)}",
                REPRO,
            )
        )
    m = np.asarray(maps[position], dtype=np.float32)
    m = (m - m.min()) / (float(m.max() - m.min()) or 1.0)
    picture = None
    images = root / PREPARED_DIR / split / "images.npy"
    if split and index >= 0 and images.is_file():
        try:
            pixels = np.load(images, mmap_mode="r")
            if index < pixels.shape[0] and pixels.ndim == 4:
                picture = np.asarray(pixels[index], dtype=np.uint8)
        except (OSError, ValueError):
            picture = None
    size = (picture.shape[1], picture.shape[0]) if picture is not None else (224, 224)
    size = (max(size[0], 224), max(size[1], 224))
    up = np.asarray(Image.fromarray(m).resize(size, Image.Resampling.BILINEAR))
    heat = (colormaps["jet"](np.clip(up, 0, 1))[..., :3] * 255).astype(np.float32)
    if picture is None:
        return heat.astype(np.uint8)
    base = np.asarray(Image.fromarray(picture).resize(size, Image.Resampling.NEAREST), np.float32)
    return (0.5 * base + 0.5 * heat).astype(np.uint8)


@dataclass
class CaptionFigure:
    """One rendered caption: the PNG (image + one panel per generated token), its raw maps
    (T, grid, grid) and what its .json says (caption, reference, tokens)."""

    name: str
    png: str
    npy: str = ""
    meta: dict = field(default_factory=dict)


@dataclass
class Captions:
    """What reports/captions/ holds: metrics, every test caption, the rendered figures."""

    metrics: dict[str, Any] = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    figures: list[CaptionFigure] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def _caption_records(obj: Any) -> list[dict]:
    """Caption records: a list of objects, or the first such list inside an object."""
    if isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        return obj
    if isinstance(obj, dict):
        for v in obj.values():
            found = _caption_records(v)
            if found:
                return found
    return []


def discover_captions(root: Path) -> Captions:
    """reports/captions/ as render_captions writes it: metrics.json, test_captions.json (or any
    other JSON list of captions) and figures/<name>.{png,npy,json}. PNGs elsewhere are shown
    too; dvclive's train/ folder is skipped (those are curves)."""
    base = root / CAPTIONS_DIR
    out = Captions()
    if not base.is_dir():
        return out
    command = f"{REPRO} render_captions"
    for p in sorted(base.rglob("*")):
        rel = p.relative_to(root).as_posix()
        parts = p.relative_to(base).parts
        if not p.is_file() or any(x.startswith(".") for x in parts) or parts[0] == "train":
            continue
        out.files.append(rel)
        try:
            if p.suffix == ".png":
                npy = p.with_suffix(".npy")
                meta_path = p.with_suffix(".json")
                meta = (
                    read_json(root, meta_path.relative_to(root).as_posix(), command)
                    if meta_path.is_file()
                    else {}
                )
                out.figures.append(
                    CaptionFigure(
                        name=p.stem,
                        png=rel,
                        npy=npy.relative_to(root).as_posix() if npy.is_file() else "",
                        meta=meta if isinstance(meta, dict) else {},
                    )
                )
            elif p.suffix == ".json" and p.with_suffix(".png").is_file():
                continue  # a figure's sidecar, read with its PNG
            elif p.name == "metrics.json":
                metrics = read_json(root, rel, command)
                if not isinstance(metrics, dict):
                    raise DataError(Problem("malformed", rel, "expected a JSON object", command))
                out.metrics = metrics
            elif p.suffix == ".json":
                out.records += _caption_records(read_json(root, rel, command))
        except DataError as e:
            out.problems.append(e.problem)
    return out


def decoding_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """metrics.json's `decodings` ({greedy: {bleu_1.., cider_d, exact_match}, beamN: ...}) as
    one row per decoding; empty when absent."""
    dec = metrics.get("decodings")
    if not isinstance(dec, dict):
        return pd.DataFrame()
    rows = [{"decoding": name, **_numbers(v)} for name, v in dec.items() if _numbers(v)]
    return pd.DataFrame(rows)


def grounding_numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """metrics.json's `grounding` (mass, pointing and their *_uniform baselines)."""
    return _numbers(metrics.get("grounding"))


def captioner_rows(df: pd.DataFrame) -> pd.DataFrame:
    """metrics.csv rows that belong to the captioner, without all-empty columns."""
    rows = df[df["model"].str.contains("caption", case=False, na=False)]
    return rows.dropna(axis=1, how="all")


def npy_shape(root: Path, rel: str) -> tuple[int, ...]:
    """The shape of a .npy array, read from its header (the data stay on disk)."""
    import numpy as np

    try:
        return tuple(np.load(root / rel, mmap_mode="r").shape)
    except (OSError, ValueError) as e:
        raise DataError(
            Problem("malformed", rel, f"not a NumPy array ({e.__class__.__name__})", REPRO)
        ) from None
