"""BERT WordPiece ids -> caption text, as the pretrained CATR captioner's output is read.

CATR predicts bert-base-uncased ids; its text is the tokenizer's decode with special tokens
skipped and spaces cleaned up, then capitalised. Only decoding is needed, and it is a few
string rules, so no tokenizer package is involved: the vocab.txt (one token per line, id =
line number) is read directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from vitlab.core.errors import VitlabError

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
EXPECTED_IDS = {"[PAD]": 0, "[CLS]": 101, "[SEP]": 102}  # the ids CATR's decoding hard-codes
CLEANUP = (  # BERT's clean_up_tokenization, in its order
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


class WordPiece:
    """A BERT vocabulary, for turning generated ids into a caption."""

    def __init__(self, tokens: list[str], source: str = "vocab"):
        for token, want in EXPECTED_IDS.items():
            got = tokens[want] if want < len(tokens) else None
            if got != token:
                raise VitlabError(
                    f"{source}: line {want + 1} is {got!r}, expected {token} (id {want}); "
                    f"use bert-base-uncased's vocab.txt"
                )
        self.tokens = tokens
        self.source = source
        self.special_ids = frozenset(i for i, t in enumerate(tokens) if t in SPECIALS)

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def load(cls, path: str | Path) -> WordPiece:
        """Read vocab.txt; a missing, non-UTF-8 or wrongly ordered file is a VitlabError."""
        path = Path(path)
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.readlines()  # universal newlines, as BERT's own vocab reader
        except FileNotFoundError:
            raise VitlabError(f"{path}: no such vocabulary file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise VitlabError(f"{path}: unreadable as a UTF-8 vocab.txt ({e})") from None
        return cls([line.rstrip("\n") for line in lines], source=str(path))

    def decode(self, ids: Iterable[int]) -> str:
        """The caption CATR prints: specials dropped, ## glued, BERT's clean-up, capitalised."""
        pieces = []
        for raw in ids:
            i = int(raw)
            if not 0 <= i < len(self.tokens):
                raise VitlabError(
                    f"id {i} is outside {self.source} ({len(self.tokens)} tokens); the "
                    f"vocabulary does not belong to the model"
                )
            if i not in self.special_ids:
                pieces.append(self.tokens[i])
        text = " ".join(pieces).replace(" ##", "").strip()
        for old, new in CLEANUP:
            text = text.replace(old, new)
        return text.capitalize()
