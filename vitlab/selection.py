"""Which epochs to keep and average: top-k by validation accuracy, with one tie rule.

The same rule ranks epochs while training (which checkpoints to keep on disk) and in the
`select` stage (which to average), so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence

TIE_RULE = (
    "rank by val_acc (higher first); equal val_acc -> lower val_loss first; "
    "equal both -> the later epoch first"
)


def rank_key(record: dict) -> tuple[float, float, int]:
    """Sort key implementing TIE_RULE for a record with epoch, val_acc, val_loss."""
    return (-record["val_acc"], record["val_loss"], -record["epoch"])


def top_k(records: Sequence[dict], k: int) -> list[dict]:
    """The best `k` records under TIE_RULE, best first."""
    if k < 1:
        raise ValueError(f"k must be >= 1 (got {k})")
    return sorted(records, key=rank_key)[:k]
