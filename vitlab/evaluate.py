"""Classification metrics of a model on a prepared split: accuracy, loss, per class, confusion."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vitlab.data import Split, batches, normalize
from vitlab.device import autocast
from vitlab.distributed import Context, gather_rows


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    split: Split,
    *,
    batch_size: int,
    device: torch.device,
    amp: torch.dtype | None = None,
    ctx: Context | None = None,
) -> torch.Tensor:
    """Logits (N, C) in float32, in the split's order, with the model in eval mode.

    Under data parallelism each rank predicts its shard and the logits are gathered.
    """
    ctx = ctx or Context()
    was_training = model.training
    model.eval()
    out = []
    mine = np.arange(len(split))[ctx.rank :: ctx.world]
    for x, _ in batches(split, batch_size, shuffle=False, indices=mine):
        with autocast(device, amp):
            out.append(model(normalize(x.to(device, non_blocking=True))).float().cpu())
    model.train(was_training)
    return gather_rows(ctx, torch.cat(out), len(split))


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """accuracy, mean cross-entropy, per-class accuracy and the confusion matrix (true x pred)."""
    labels = torch.as_tensor(labels)
    pred = logits.argmax(1)
    confusion = torch.bincount(labels * num_classes + pred, minlength=num_classes**2)
    confusion = confusion.reshape(num_classes, num_classes)
    support = confusion.sum(1)
    per_class = torch.where(support > 0, confusion.diag() / support.clamp(min=1), torch.nan)
    return {
        "accuracy": (pred == labels).float().mean().item(),
        "loss": F.cross_entropy(logits, labels).item(),
        "per_class_accuracy": [None if torch.isnan(a) else round(a.item(), 6) for a in per_class],
        "confusion": confusion.tolist(),
    }


def evaluate(
    model: torch.nn.Module,
    split: Split,
    num_classes: int,
    *,
    batch_size: int,
    device: torch.device,
    amp: torch.dtype | None = None,
    ctx: Context | None = None,
) -> dict:
    """`classification_metrics` of `model` on `split`."""
    logits = predict(model, split, batch_size=batch_size, device=device, amp=amp, ctx=ctx)
    return classification_metrics(logits, torch.from_numpy(split.labels), num_classes)
