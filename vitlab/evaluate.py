"""Classification metrics of a model on a prepared split: accuracy, loss, per class, confusion."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vitlab.data import Split, batches, normalize
from vitlab.device import autocast


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    split: Split,
    *,
    batch_size: int,
    device: torch.device,
    amp: torch.dtype | None = None,
) -> torch.Tensor:
    """Logits (N, C) in float32, in the split's order, with the model in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    for x, _ in batches(split, batch_size, shuffle=False):
        with autocast(device, amp):
            out.append(model(normalize(x.to(device, non_blocking=True))).float().cpu())
    model.train(was_training)
    return torch.cat(out)


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
) -> dict:
    """`classification_metrics` of `model` on `split`."""
    logits = predict(model, split, batch_size=batch_size, device=device, amp=amp)
    return classification_metrics(logits, torch.from_numpy(split.labels), num_classes)
