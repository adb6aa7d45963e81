"""The word vocabulary: specials first, then the training split's words by count.

Built from the training split only, so a word seen only in val/test maps to <unk> exactly as
it would for a deployed model. Saved as JSON beside the checkpoint; a checkpoint trained with
another vocabulary is refused (see model.load_captioner).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch

from vitlab.core.errors import VitlabError

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)


class Vocab:
    """Word <-> id. Ids 0..3 are <pad>, <start>, <end>, <unk>."""

    def __init__(self, words: list[str]):
        if list(words[: len(SPECIALS)]) != list(SPECIALS):
            raise VitlabError(f"vocabulary must start with {list(SPECIALS)}; rebuild it")
        if len(set(words)) != len(words):
            raise VitlabError("vocabulary has duplicate words; rebuild it")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.pad, self.start, self.end, self.unk = range(4)

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def build(cls, captions: Iterable[list[str]], min_count: int = 1) -> Vocab:
        """Words occurring at least `min_count` times, most frequent first (ties: alphabetical)."""
        counts = Counter(w for tokens in captions for w in tokens)
        kept = sorted(
            (w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
            key=lambda w: (-counts[w], w),
        )
        if not kept:
            raise VitlabError(
                f"no word occurs {min_count}+ times in the training captions; lower "
                f"captions.vocab.min_count or check the training split"
            )
        return cls([*SPECIALS, *kept])

    def encode(self, tokens: list[str]) -> list[int]:
        """<start> w1 .. wn <end> as ids (unknown words -> <unk>)."""
        return [self.start, *(self.index.get(w, self.unk) for w in tokens), self.end]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids -> words, stopping at <end> and skipping <start>/<pad>."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.end:
                break
            if i in (self.start, self.pad):
                continue
            out.append(self.words[i] if 0 <= i < len(self.words) else UNK)
        return out

    def label(self, i: int) -> str:
        """The display label of one id (specials included)."""
        return self.words[int(i)]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write as JSON (call inside an atomic output)."""
        Path(path).write_text(json.dumps({"words": self.words}, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocab:
        """Read a saved vocabulary, with a one-line error for a missing or bad file."""
        path = Path(path)
        if not path.is_file():
            raise VitlabError(f"{path} is missing; run `dvc repro train_captioner`")
        try:
            words = json.loads(path.read_text())["words"]
        except (ValueError, KeyError, TypeError) as e:
            raise VitlabError(
                f"{path} is not a vocabulary file ({e}); rerun train_captioner"
            ) from e
        return cls(words)


def pad_batch(seqs: list[list[int]], pad: int, length: int | None = None) -> torch.Tensor:
    """Right-pad id lists into a (B, T) long tensor."""
    t = length or max(len(s) for s in seqs)
    out = torch.full((len(seqs), t), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s[:t], dtype=torch.long)
    return out
