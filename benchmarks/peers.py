"""Peers of vitlab's fast path: Hugging Face transformers' ViT, built to mirror a vitlab model.

transformers is a benchmark-only extra (`pip install .[bench]`), never a runtime dependency of
vitlab, so it is imported here, lazily, and a missing install is a value, not an error.

The mirror is read off the built pytorch_pretrained_vit model rather than its config, because
the library ignores its own `attention_dropout_rate`: every block drops its attention
probabilities at `dropout_rate`. Reading the modules gives the HF model the dropout the stock
model really runs. The two layouts then hold the same parameters, tensor for tensor (HF's
classification model has no pooler and no mask token); what differs has no parameters: HF
drops the embeddings at `hidden_dropout_prob` too, and initialises the weights its own way.
"""

from __future__ import annotations

import importlib.util

from pytorch_pretrained_vit import ViT
from torch import nn


def transformers_version() -> str | None:
    """The installed transformers version, or None when the `bench` extra is not installed."""
    if importlib.util.find_spec("transformers") is None:
        return None
    import transformers

    return transformers.__version__


def hf_mirror(model: ViT, image_size: int) -> nn.Module:
    """A fresh SDPA `ViTForImageClassification` with `model`'s architecture and dropout.

    Built from a config, never from the hub, so it works offline. Raises ValueError for a
    layout HF's ViT cannot mirror (a pre-logits layer, no class token).
    """
    from transformers import ViTConfig, ViTForImageClassification

    if hasattr(model, "pre_logits") or not hasattr(model, "class_token"):
        raise ValueError("HF's ViT mirrors only class-token models without a pre-logits layer")
    block = model.transformer.blocks[0]
    config = ViTConfig(
        hidden_size=model.patch_embedding.out_channels,
        num_hidden_layers=len(model.transformer.blocks),
        num_attention_heads=block.attn.n_heads,
        intermediate_size=block.pwff.fc1.out_features,
        hidden_act="gelu",  # exact GELU, as F.gelu
        hidden_dropout_prob=block.drop.p,
        attention_probs_dropout_prob=block.attn.drop.p,
        layer_norm_eps=block.norm1.eps,
        image_size=image_size,
        patch_size=model.patch_embedding.kernel_size[0],
        num_channels=model.patch_embedding.in_channels,
        qkv_bias=True,
        num_labels=model.fc.out_features,
        attn_implementation="sdpa",
    )
    mirror = ViTForImageClassification(config)
    if mirror.config._attn_implementation != "sdpa":  # HF may fall back to eager quietly
        raise ValueError(f"transformers chose {mirror.config._attn_implementation} attention")
    return mirror


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters, to show that a peer trains the same model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
