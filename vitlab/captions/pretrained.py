"""CATR in the DAG: its two files found from `captions.catr`, and one photo captioned.

The weights are `captions.catr.weights`, else the release file in `captions.catr.dir` (where DVC
tracks it), else the torch hub cache file of the release; the network is touched only when
`weights_url` is named. The vocabulary is `captions.catr.vocab`, else vocab.txt beside the
weights. Each missing or foreign file is one line naming it and where the right one goes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitlab.captions.catr import (
    RELEASE_URL,
    RELEASES,
    Catr,
    greedy_decode,
    load_catr,
    load_image,
    preprocess,
    resolve_weights,
    scaled_size,
    to_rgb,
    word_maps,
)
from vitlab.captions.wordpiece import WordPiece
from vitlab.core import config
from vitlab.core.errors import VitlabError

VOCAB_FILE = "vocab.txt"


def weights_file(c: config.Catr, version: str) -> Path:
    """The weights of CATR `version` (v1, v2, v3), downloaded only when a url is named."""
    release = RELEASES[version].split("/")[1]
    source = f"{RELEASE_URL}{RELEASES[version]}"
    url, md5 = c.weights_url or None, c.weights_md5 or None
    if c.weights:
        path: Path | None = Path(c.weights)
        if url is None and not path.is_file():
            raise VitlabError(
                f"captions.catr.weights: {path} does not exist; download {source} there, or "
                "set captions.catr.weights_url to fetch it"
            )
    elif (Path(c.dir) / release).is_file():
        path, url = Path(c.dir) / release, None  # present where DVC tracks it: never fetched
    else:
        path = None
        hub = Path(torch.hub.get_dir()) / "checkpoints" / release
        if url is None and not hub.is_file():
            raise VitlabError(
                f"CATR {version} weights not found: download {source} into {c.dir}/ (DVC "
                f"tracks it there) or {hub.parent}/, or set captions.catr.weights_url to fetch it"
            )
    return resolve_weights(version, path, url, md5)


def vocab_file(c: config.Catr, weights: Path) -> Path:
    """captions.catr.vocab, else the vocab.txt beside the weights; one line when missing."""
    path = Path(c.vocab) if c.vocab else weights.parent / VOCAB_FILE
    if not path.is_file():
        where = "captions.catr.vocab" if c.vocab else f"the vocabulary beside {weights.name}"
        raise VitlabError(
            f"{where}: {path} does not exist; put bert-base-uncased's vocab.txt (30522 lines) "
            f"there{'' if c.vocab else ', or set captions.catr.vocab'}"
        )
    return path


def load(c: config.Catr, version: str) -> tuple[Catr, WordPiece, Path, Path]:
    """(model, vocabulary, weights file, vocab file), the vocabulary checked against the model
    before the weights are read in full."""
    weights = weights_file(c, version)
    vocab_path = vocab_file(c, weights)
    vocab = WordPiece.load(vocab_path)
    model = load_catr(weights)
    if len(vocab) != model.cfg.vocab_size:
        raise VitlabError(
            f"{vocab_path}: {len(vocab)} tokens, but {weights.name} predicts "
            f"{model.cfg.vocab_size} ids; use bert-base-uncased's vocab.txt"
        )
    return model, vocab, weights, vocab_path


@dataclass(frozen=True)
class Captioned:
    """One photo's caption and maps, and the image the figure draws them on."""

    token_ids: list[int]  # generated ids after [CLS], [SEP] last when predicted
    tokens: list[str]
    caption: str
    maps: np.ndarray  # (len(token_ids), grid_h, grid_w) float32, over the model's input
    shown: np.ndarray  # (h, w, 3) uint8: the photo scaled as CATR scales it, aspect kept
    extent: tuple[int, int]  # (h, w) the maps cover; `shown` is its top-left part


def shown_image(image: Image.Image) -> np.ndarray:
    """The photo with its longest side at 299 px, as preprocess scales it before squaring."""
    image = to_rgb(image)
    return np.asarray(image.resize(scaled_size(*image.size), Image.Resampling.BICUBIC))


def caption_photo(
    model: Catr, vocab: WordPiece, path: Path, square: str, device: torch.device
) -> Captioned:
    """Encode the photo once, decode greedily, and take each generated token's map."""
    image = load_image(path)
    x, mask = preprocess(image, square, name=str(path))
    with torch.no_grad():
        enc = model.encode(x[None].to(device), mask[None].to(device))
    ids = greedy_decode(model, enc)
    maps = word_maps(model, enc, ids).astype(np.float32)
    shown = shown_image(image)
    # resize stretched the whole photo onto the grid; pad and none put it top-left of the input
    extent = shown.shape[:2] if square == "resize" else tuple(mask.shape)
    return Captioned(
        token_ids=ids,
        tokens=[vocab.tokens[i] for i in ids],
        caption=vocab.decode(ids),
        maps=maps,
        shown=shown,
        extent=(int(extent[0]), int(extent[1])),
    )
