"""The study's one scoring function: a checkpoint's accuracy on a split is computed here only.

Training scores val with it, the greedy soup scores every step with it, `evaluate` scores every
variant with it; all at `runtime.eval_batch_size`, all through the same attention kernel
(SDPA in eval mode, whatever path training used), so one checkpoint has one accuracy wherever it
is reported. An explicit softmax and SDPA flip a few bf16 predictions: mixing them would not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vitlab.prepared import Split, batches, normalize
from vitlab.vit.device import autocast
from vitlab.vit.fused_attention import fused_attention
from vitlab.vit.runtime import Runtime


@torch.no_grad()
def predict(model: torch.nn.Module, split: Split, rt: Runtime) -> torch.Tensor:
    """Logits (N, C) in float32, in the split's order, with the model in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    with fused_attention(model):
        for x, _ in batches(split, rt.eval_batch_size, shuffle=False):
            with autocast(rt.device, rt.amp):
                out.append(model(normalize(x.to(rt.device, non_blocking=True))).float().cpu())
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


def evaluate(model: torch.nn.Module, split: Split, num_classes: int, rt: Runtime) -> dict:
    """`classification_metrics` of `model` on `split`: the one number of the study."""
    logits = predict(model, split, rt)
    return classification_metrics(logits, torch.from_numpy(split.labels), num_classes)
