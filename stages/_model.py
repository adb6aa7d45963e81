"""What the model stages share: the runtime from `runtime:` and the model from `models.<M>`."""

from __future__ import annotations

from pathlib import Path

import torch

from stages._common import model_params, section
from vitlab.data import load_meta
from vitlab.device import amp_dtype, resolve_device
from vitlab.models import build_model
from vitlab.train import Runtime

PREPARED = Path("data/prepared")


def runtime(params: dict) -> Runtime:
    """runtime.* as a Runtime, with torch's CPU threads set."""
    r = section(params, "runtime")
    device = resolve_device(r["device"])
    if r.get("threads"):
        torch.set_num_threads(r["threads"])
    return Runtime(
        device=device,
        amp=amp_dtype(r["amp"], device),
        fused_attention=r["fused_attention"],
        workers=r["workers"],
        eval_batch_size=r["eval_batch_size"],
        progress=r.get("progress", True),
    )


def build(params: dict, model: str, *, pretrained: bool | None = None) -> torch.nn.Module:
    """The model named by models.<model> (architecture, weights) for the prepared data.

    `pretrained=False` skips loading released weights (when a checkpoint replaces them anyway).
    """
    m = model_params(params, model)
    meta = load_meta(PREPARED)
    return build_model(
        m["arch"],
        num_classes=len(meta["classes"]),
        image_size=meta["image_size"],
        pretrained=m.get("pretrained", False) if pretrained is None else pretrained,
        weights=m.get("weights") or None,
        dropout=m.get("dropout"),
    )
