"""The Karpathy-split caption JSON (COCO, Flickr8k, Flickr30k) and its image folder.

Format: {"images": [{"filepath"?: dir, "filename": name, "split": train|restval|val|test,
"sentences": [{"tokens": [...], "raw": "..."}]}]}; images live at
<image_root>/<filepath>/<filename> (Flickr files have no filepath). `restval` is training
data (Karpathy's convention). Sentences without `tokens` are tokenised from `raw` with
metrics.tokenize (lower case, letters/digits).

vitlab writes its generated scenes in the same format (one reader for both) with two optional
extensions per image: "mask" (an object-id PNG relative to the image root: 0 = background,
k = the k-th object the caption names) and, per sentence, "token_objects" (for each token,
the object it describes, 0 = none). Every problem is one VitlabError line naming the image.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from vitlab.captions.metrics import tokenize
from vitlab.core.errors import VitlabError

SPLIT_MAP = {"train": "train", "restval": "train", "val": "val", "test": "test"}


@dataclass
class CaptionedImage:
    """One image of a Karpathy file: where it is, its split and its tokenised captions."""

    key: str
    path: Path
    split: str
    captions: list[list[str]]
    mask: Path | None = None
    token_objects: list[int] | None = None
    extra: dict = field(default_factory=dict)


def _sentences(entry: dict, key: str, source: str) -> tuple[list[list[str]], list[int] | None]:
    sentences = entry.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise VitlabError(f"{source}: image {key} has no captions ('sentences' is empty)")
    captions = []
    for n, s in enumerate(sentences):
        if not isinstance(s, dict):
            raise VitlabError(f"{source}: image {key} sentence {n} is not an object")
        tokens = s.get("tokens")
        if tokens is None:
            tokens = tokenize(str(s.get("raw", "")))
        tokens = [str(t).lower() for t in tokens if str(t).strip()]
        if not tokens:
            raise VitlabError(
                f"{source}: image {key} sentence {n} is an empty caption; remove it or fix it"
            )
        captions.append(tokens)
    objs = sentences[0].get("token_objects") if isinstance(sentences[0], dict) else None
    if objs is not None and len(objs) != len(captions[0]):
        raise VitlabError(
            f"{source}: image {key}: token_objects has {len(objs)} entries for "
            f"{len(captions[0])} tokens"
        )
    return captions, objs


def read_karpathy(
    json_path: str | os.PathLike[str], image_root: str | os.PathLike[str]
) -> list[CaptionedImage]:
    """Every image of a Karpathy-split file, validated (files exist, captions non-empty,
    splits known), in file order."""
    json_path, root = Path(json_path), Path(image_root)
    if not json_path.is_file():
        raise VitlabError(f"caption file {json_path} is missing; set captions.karpathy.json")
    try:
        doc = json.loads(json_path.read_text())
    except (OSError, ValueError) as e:
        raise VitlabError(f"caption file {json_path} is not valid JSON ({e})") from e
    entries = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise VitlabError(f"{json_path}: no 'images' list; is it a Karpathy-split file?")
    out, missing = [], []
    for n, e in enumerate(entries):
        if not isinstance(e, dict) or not e.get("filename"):
            raise VitlabError(f"{json_path}: image entry {n} has no 'filename'")
        key = str(Path(e.get("filepath", "")) / e["filename"])
        split = e.get("split")
        if split not in SPLIT_MAP:
            raise VitlabError(
                f"{json_path}: image {key} has unknown split {split!r}; use one of "
                f"{', '.join(SPLIT_MAP)}"
            )
        captions, objs = _sentences(e, key, str(json_path))
        path = root / key
        if not path.is_file():
            missing.append(path)
        mask = root / e["mask"] if e.get("mask") else None
        if mask is not None and not mask.is_file():
            missing.append(mask)
        out.append(CaptionedImage(key, path, SPLIT_MAP[split], captions, mask, objs))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise VitlabError(
            f"{json_path}: image file {missing[0]} is missing{more}; check "
            f"captions.karpathy.images (the image folder) or the file"
        )
    return out
