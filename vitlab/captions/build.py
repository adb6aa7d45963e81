"""The captioner of `captions.model`: its architecture config and its initial weights."""

from __future__ import annotations

import sys

from vitlab.captions.model import Captioner, CaptionerConfig, init_encoder
from vitlab.core import config

ARCH_KEYS = ("arch", "encoder_blocks", "local_layers", "d_model", "heads", "layers", "ff_mult",
             "dropout", "max_len", "pos_init")  # fmt: skip


def model_config(c: config.Captions, vocab_size: int) -> CaptionerConfig:
    """captions.model (architecture keys) + captions.image_size + the vocabulary size."""
    cfg = CaptionerConfig(
        vocab_size=vocab_size,
        image_size=c.image_size,
        **{k: getattr(c.model, k) for k in ARCH_KEYS},
    )
    cfg.validate()
    return cfg


def build_captioner(c: config.Captions, vocab_size: int, *, for_training: bool) -> Captioner:
    """The captioner of captions.model. For training, its encoder starts from released weights
    (`pretrained`, `weights`) or a vitlab ViT checkpoint (`init`) when asked; otherwise the
    weights come from the trained checkpoint, loaded by the caller."""
    m = c.model
    model = Captioner(
        model_config(c, vocab_size),
        pretrained=m.pretrained and for_training,
        weights=m.weights or None,
    )
    if for_training and m.init:
        loaded = init_encoder(model, m.init)
        print(f"encoder initialised from {m.init} ({len(loaded)} tensors)", file=sys.stderr)
    return model
