"""What the model stages share: the runtime from `runtime:` and the model from `models.<M>`."""

from __future__ import annotations

from pathlib import Path

import torch

from stages._common import model_params, section
from vitlab.data import load_meta
from vitlab.device import amp_dtype, resolve_device
from vitlab.download import download
from vitlab.errors import VitlabError
from vitlab.models import build_model, hub_weights_path
from vitlab.train import Runtime

PREPARED = Path("data/prepared")
RUNTIME_KEYS = ("device", "amp", "fused_attention", "fast_dropout", "workers", "eval_batch_size")


def runtime(params: dict) -> Runtime:
    """runtime.* as a Runtime, with torch's CPU threads set."""
    r = section(params, "runtime")
    missing = [k for k in RUNTIME_KEYS if k not in r]
    if missing:
        raise VitlabError(
            f"params.yaml: runtime.{missing[0]} is missing; copy the runtime section of the "
            "repo's params.yaml (it lists every key with its default)"
        )
    device = resolve_device(r["device"])
    if r.get("threads"):
        torch.set_num_threads(r["threads"])
    return Runtime(
        device=device,
        amp=amp_dtype(r["amp"], device),
        fused_attention=r["fused_attention"],
        fast_dropout=r["fast_dropout"],
        workers=r["workers"],
        eval_batch_size=r["eval_batch_size"],
        progress=r.get("progress", True),
    )


def fetch_weights(m: dict) -> None:
    """Download the released weights into the torch hub cache when the params name a URL.

    Only with `pretrained: true`, no local `weights` file, nothing cached yet, and a
    `weights_url`; `weights_md5` (when set) is checked. Otherwise nothing is fetched.
    """
    if not m.get("pretrained") or m.get("weights") or not m.get("weights_url"):
        return
    target = hub_weights_path(m["arch"])
    if not target.is_file():
        download(m["weights_url"], target, m.get("weights_md5") or None)


def build(params: dict, model: str, *, pretrained: bool | None = None) -> torch.nn.Module:
    """The model named by models.<model> (architecture, weights) for the prepared data.

    `pretrained=False` skips loading released weights (when a checkpoint replaces them anyway).
    """
    m = model_params(params, model)
    meta = load_meta(PREPARED)
    if pretrained is None:
        fetch_weights(m)
    return build_model(
        m["arch"],
        num_classes=len(meta["classes"]),
        image_size=meta["image_size"],
        pretrained=m.get("pretrained", False) if pretrained is None else pretrained,
        weights=m.get("weights") or None,
        dropout=m.get("dropout"),
    )
