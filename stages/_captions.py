"""What the captioning stages share: paths, the captioner built from `captions.model`, the
device from `runtime`."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from stages._common import section
from vitlab.captions.model import Captioner, CaptionerConfig, init_encoder
from vitlab.captions.train import CaptionTrainConfig
from vitlab.device import resolve_device
from vitlab.errors import VitlabError

DATA = Path("data/captions")
MODEL_DIR = Path("models/captioner")
OUT = Path("reports/captions")
MODEL_KEYS = (
    "arch",
    "encoder_blocks",
    "local_layers",
    "d_model",
    "heads",
    "layers",
    "ff_mult",
    "dropout",
    "max_len",
    "pos_init",
)
WEIGHT_KEYS = ("init", "pretrained", "weights")


REQUIRED = {
    "fetch_captions": ("source", "image_size"),
    "train_captioner": ("image_size", "vocab", "model", "train"),
    "render_captions": ("image_size", "model", "decode", "render"),
}


def captions_section(params: dict, stage: str) -> dict:
    """The `captions` section, with a one-line error naming any key `stage` needs but lacks."""
    p = section(params, "captions")
    missing = [k for k in REQUIRED[stage] if k not in p]
    if missing:
        raise VitlabError(
            f"params.yaml: captions.{missing[0]} is missing (needed by {stage}); "
            f"see docs/captions.md for the section"
        )
    return p


def train_config(p: dict) -> CaptionTrainConfig:
    """captions.train as a CaptionTrainConfig; unknown keys are named."""
    known = CaptionTrainConfig.__dataclass_fields__
    unknown = sorted(set(p["train"]) - set(known))
    if unknown:
        raise VitlabError(f"captions.train: unknown key(s) {unknown}; known: {sorted(known)}")
    return CaptionTrainConfig(**p["train"])


def model_config(p: dict, vocab_size: int) -> CaptionerConfig:
    """captions.model (architecture keys) + captions.image_size + the vocabulary size."""
    m = p["model"]
    unknown = sorted(set(m) - set(MODEL_KEYS) - set(WEIGHT_KEYS))
    if unknown:
        raise VitlabError(
            f"captions.model: unknown key(s) {unknown}; known: {[*MODEL_KEYS, *WEIGHT_KEYS]}"
        )
    cfg = CaptionerConfig(
        vocab_size=vocab_size,
        image_size=int(p["image_size"]),
        **{k: m[k] for k in MODEL_KEYS if k in m},
    )
    cfg.validate()
    return cfg


def build_captioner(p: dict, vocab_size: int, *, for_training: bool) -> Captioner:
    """The captioner of captions.model. For training, its encoder starts from released weights
    (`pretrained`, `weights`) or a vitlab ViT checkpoint (`init`) when asked; otherwise the
    weights come from the trained checkpoint, loaded by the caller."""
    m = p["model"]
    pretrained = bool(m.get("pretrained", False)) and for_training
    model = Captioner(
        model_config(p, vocab_size), pretrained=pretrained, weights=m.get("weights") or None
    )
    if for_training and m.get("init"):
        loaded = init_encoder(model, m["init"])
        print(f"encoder initialised from {m['init']} ({len(loaded)} tensors)", file=sys.stderr)
    return model


def runtime_device(params: dict) -> torch.device:
    """runtime.device, with runtime.threads applied to torch's CPU pool."""
    rt = section(params, "runtime")
    if rt.get("threads"):
        torch.set_num_threads(int(rt["threads"]))
    return resolve_device(rt.get("device", "auto"))
