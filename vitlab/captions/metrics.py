"""Caption metrics as COCO computes them, exact match, and words-to-patches grounding.

BLEU-1..4 and CIDEr-D come from pycocoevalcap 1.2 (`Bleu(4)`, `Cider()`: pure Python, no
Java). Its PTB tokenizer needs Java, so captions are tokenised here instead: lower case, words
are runs of letters/digits (apostrophes kept inside words), everything else is a separator —
the same tokens the Karpathy split files ship. BLEU is corpus-level with the closest reference
length (COCO's choice); CIDEr-D takes document frequencies from the scored corpus, so it is
only meaningful over a whole split (a single image degenerates).

Grounding, per word that names an object (size, colour, pattern, noun of a generated scene):
- energy: the share of the word's map inside the object's mask (the map spread evenly over each
  patch's pixels, i.e. sum over patches of weight x the patch's object coverage);
- pointing: whether the map's maximum patch overlaps the object (the pointing game at patch
  resolution);
each next to a uniform map's value (energy: the object's area share; pointing: the share of
patches that overlap the object), so a score means something only above its baseline.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections import defaultdict

import numpy as np

from vitlab.core.errors import VitlabError

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
TOKENIZER = "lower-case words of letters/digits (vitlab.captions.metrics.tokenize)"  # reported


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens of a raw caption (our stand-in for the Java PTB tokenizer)."""
    return _WORD.findall(text.lower())


def _check(refs: list[list[list[str]]], hyps: list[list[str]]) -> None:
    if len(refs) != len(hyps) or not hyps:
        raise VitlabError(f"{len(hyps)} hypotheses for {len(refs)} reference sets; need equal > 0")
    for i, r in enumerate(refs):
        if not r:
            raise VitlabError(f"image {i} has no reference caption")


def _coco_inputs(refs, hyps) -> tuple[dict, dict]:
    gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(h)] for i, h in enumerate(hyps)}
    return gts, res


def bleu(refs: list[list[list[str]]], hyps: list[list[str]]) -> list[float]:
    """Corpus BLEU-1..4 (pycocoevalcap's Bleu(4)) of tokenised hypotheses vs references."""
    from pycocoevalcap.bleu.bleu import Bleu

    _check(refs, hyps)
    gts, res = _coco_inputs(refs, hyps)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its ratios
        score, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return [float(s) for s in score]


def cider_d(refs: list[list[list[str]]], hyps: list[list[str]]) -> float:
    """Corpus CIDEr-D (pycocoevalcap's Cider: clipped, length-penalised, x10)."""
    from pycocoevalcap.cider.cider import Cider

    _check(refs, hyps)
    gts, res = _coco_inputs(refs, hyps)
    score, _ = Cider().compute_score(gts, res)
    return float(score)


def exact_match(refs: list[list[list[str]]], hyps: list[list[str]]) -> float:
    """Share of hypotheses equal (token for token) to one of their references."""
    _check(refs, hyps)
    return float(np.mean([h in rs for rs, h in zip(refs, hyps, strict=True)]))


def caption_scores(refs: list[list[list[str]]], hyps: list[list[str]]) -> dict[str, float]:
    """bleu_1..bleu_4, cider_d and exact_match over a whole split."""
    b = bleu(refs, hyps)
    out = {f"bleu_{n}": round(b[n - 1], 6) for n in range(1, 5)}
    out["cider_d"] = round(cider_d(refs, hyps), 6)
    out["exact_match"] = round(exact_match(refs, hyps), 6)
    return out


def coverage(mask: np.ndarray, object_id: int, grid: int) -> np.ndarray:
    """(grid, grid) share of each patch's pixels that belong to object `object_id`."""
    h, w = mask.shape
    if h % grid or w % grid:
        raise VitlabError(f"mask of {h}x{w} pixels does not divide into a {grid}x{grid} grid")
    inside = (mask == object_id).astype(np.float64)
    return inside.reshape(grid, h // grid, grid, w // grid).mean(axis=(1, 3))


def word_grounding(attn: np.ndarray, cov: np.ndarray) -> dict[str, float]:
    """energy, pointing and their uniform-map values for one word's map (grid, grid)."""
    if not np.isclose(attn.sum(), 1.0, atol=1e-3):
        raise VitlabError(f"an attention map sums to {attn.sum():.4f}, not 1")
    top = np.unravel_index(int(np.argmax(attn)), attn.shape)
    return {
        "energy": float((attn * cov).sum()),
        "pointing": float(cov[top] > 0),
        "energy_uniform": float(cov.mean()),
        "pointing_uniform": float((cov > 0).mean()),
    }


class Grounding:
    """Accumulates word_grounding over a split, overall and per word kind."""

    KEYS = ("energy", "pointing", "energy_uniform", "pointing_uniform")

    def __init__(self) -> None:
        self.sums: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(self.KEYS, 0.0))
        self.counts: dict[str, int] = defaultdict(int)

    def add(
        self,
        maps: np.ndarray,
        mask: np.ndarray,
        token_objects: list[int],
        kinds: list[str | None],
    ) -> None:
        """maps (T, grid, grid): row i is the map while predicting caption token i."""
        if len(maps) != len(token_objects):
            raise VitlabError(f"{len(maps)} maps for {len(token_objects)} caption tokens")
        grid = maps.shape[-1]
        covs: dict[int, np.ndarray] = {}
        for attn, obj, kind in zip(maps, token_objects, kinds, strict=True):
            if obj <= 0:
                continue
            if obj not in covs:
                covs[obj] = coverage(mask, obj, grid)
            if covs[obj].sum() == 0:
                continue  # object hidden entirely (never happens in generated scenes)
            g = word_grounding(np.asarray(attn, np.float64), covs[obj])
            for key in ("all", kind or "other"):
                self.counts[key] += 1
                for k, v in g.items():
                    self.sums[key][k] += v

    def result(self) -> dict | None:
        """{"words": n, energy, pointing, *_uniform, "by_kind": {...}} or None if no words."""
        if not self.counts["all"]:
            return None

        def mean(key: str) -> dict:
            n = self.counts[key]
            return {"words": n, **{k: round(v / n, 6) for k, v in self.sums[key].items()}}

        out = mean("all")
        out["by_kind"] = {k: mean(k) for k in sorted(self.counts) if k != "all"}
        return out
