"""The captioner: a ViT patch encoder and a transformer decoder that returns its cross-attention.

CPTR-style ("words-to-patches", arXiv 2101.10804): the encoder turns the image into one token
per patch; the decoder predicts the caption word by word, and the last decoder layer's
cross-attention over those patch tokens is the map shown for each word.

- The encoder is cut from a pytorch_pretrained_vit `ViT` built by name (vitlab.vit.models):
  its patch embedding, class token and position embedding, then its first `encoder_blocks`
  blocks (0 allowed). we measured that self-attention blocks mix the patches so much
  that the decoder's maps stop pointing at objects. `local_layers` per-patch residual MLPs
  (a ViT block without its attention) sit right after the linear patch embedding, BEFORE the
  position embedding: a non-linear patch embedding. Measured here (12 epochs, batch 32): a
  linear patch embedding cannot tell stripes from checks (same mean colour); two MLPs after
  the position code reached 0.57 exact captions (stripes/checks still confused), one MLP
  before it 0.93. The class token is dropped from the memory, so every map is a distribution
  over patches only.
- Position embeddings start as a 2D sine-cosine grid (`pos_init: sincos`, learnable): in a
  12-epoch run with the library's random init, "above" was predicted right 9% of the time
  (teacher-forced); with sincos, 60%.
- Decoder layers are written here, not `nn.TransformerDecoderLayer`, which calls attention with
  `need_weights=False` and so hides the maps. Pre-norm, causal self-attention, explicit softmax.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.core.errors import VitlabError
from vitlab.vit.models import build_model, check_compatible, patch_size, read_state_dict


@dataclass(frozen=True)
class CaptionerConfig:
    """Architecture of a captioner; the checkpoint must have been trained with the same one."""

    vocab_size: int
    arch: str = "vitlab_B_16"
    image_size: int = 64
    encoder_blocks: int = 0
    local_layers: int = 1
    d_model: int = 64
    heads: int = 4
    layers: int = 2
    ff_mult: int = 4
    dropout: float = 0.0
    max_len: int = 24
    pos_init: str = "sincos"  # sincos: 2D sine-cosine grid (spatial words learn fast) | random

    def validate(self) -> None:
        """Raise a VitlabError naming the first bad knob (as a `captions.model.*` param)."""
        if self.vocab_size < 5:
            raise VitlabError(f"vocabulary has {self.vocab_size} entries; need specials + words")
        if self.encoder_blocks < 0 or self.local_layers < 0:
            raise VitlabError("captions.model.encoder_blocks and local_layers must be >= 0")
        if self.layers < 1:
            raise VitlabError(f"captions.model.layers must be >= 1 (got {self.layers})")
        if self.d_model % self.heads:
            raise VitlabError(
                f"captions.model.d_model {self.d_model} is not a multiple of heads {self.heads}"
            )
        if self.pos_init not in ("sincos", "random"):
            raise VitlabError(
                f"captions.model.pos_init {self.pos_init!r} is unknown; use sincos or random"
            )
        if self.max_len < 2:
            raise VitlabError(f"captions.model.max_len must be >= 2 (got {self.max_len})")


class Attention(nn.Module):
    """Multi-head attention with an explicit softmax that returns its weights (B, H, Tq, Tk)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, tq, d = x.shape
        tk, h = memory.shape[1], self.heads
        q = self.q(x).view(b, tq, h, d // h).transpose(1, 2)
        k = self.k(memory).view(b, tk, h, d // h).transpose(1, 2)
        v = self.v(memory).view(b, tk, h, d // h).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // h)
        if mask is not None:  # True = may attend
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.softmax(dim=-1)
        out = (self.drop(weights) @ v).transpose(1, 2).reshape(b, tq, d)
        return self.out(out), weights


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: causal self-attention, cross-attention to patches, MLP."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, dropout)
        self.cross_attn = Attention(dim, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, ff_dim), nn.GELU(), nn.Linear(ff_dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, causal: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm1(x)
        x = x + self.drop(self.self_attn(h, h, causal)[0])
        h, cross = self.cross_attn(self.norm2(x), memory)
        x = x + self.drop(h)
        x = x + self.drop(self.mlp(self.norm3(x)))
        return x, cross


class LocalLayer(nn.Module):
    """A per-patch residual MLP: a ViT block without attention, so patches never mix."""

    def __init__(self, dim: int, ff_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, ff_dim), nn.GELU(), nn.Linear(ff_dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.mlp(self.norm(x)))


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """(grid*grid, dim) fixed 2D sine-cosine position codes (MAE/MoCo v3), patches row-major:
    half the channels encode the row, half the column, so "left of" / "above" are linear."""
    if dim % 4:
        raise VitlabError(f"encoder width {dim} must be a multiple of 4 for sincos positions")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64),
        torch.arange(grid, dtype=torch.float64),
        indexing="ij",
    )
    parts = []
    for coord in (rows.flatten(), cols.flatten()):
        angle = coord[:, None] * omega[None]
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1).float()


class PatchEncoder(nn.Module):
    """Image -> one memory token per patch, cut from a pytorch_pretrained_vit ViT."""

    def __init__(self, cfg: CaptionerConfig, *, pretrained: bool = False, weights=None):
        super().__init__()
        vit = build_model(
            cfg.arch,
            num_classes=2,
            image_size=cfg.image_size,
            pretrained=pretrained,
            weights=weights,
            dropout=cfg.dropout,
        )
        self.grid = cfg.image_size // patch_size(cfg.arch)
        self.patch_embedding = vit.patch_embedding
        self.class_token = vit.class_token
        self.positional_embedding = vit.positional_embedding
        self.blocks = nn.ModuleList(list(vit.transformer.blocks)[: cfg.encoder_blocks])
        if cfg.encoder_blocks > len(vit.transformer.blocks):
            raise VitlabError(
                f"captions.model.encoder_blocks {cfg.encoder_blocks} > {cfg.arch}'s "
                f"{len(vit.transformer.blocks)} blocks"
            )
        width = vit.patch_embedding.out_channels
        self.local = nn.ModuleList(
            LocalLayer(width, cfg.ff_mult * width, cfg.dropout) for _ in range(cfg.local_layers)
        )
        if cfg.pos_init == "sincos" and not pretrained:
            with torch.no_grad():
                pos = self.positional_embedding.pos_embedding
                pos[0, 0].zero_()
                pos[0, 1:] = sincos_2d(self.grid, width)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Identity() if width == cfg.d_model else nn.Linear(width, cfg.d_model)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> memory (B, grid*grid, d_model), patches row-major."""
        x = self.patch_embedding(images).flatten(2).transpose(1, 2)
        for layer in self.local:  # before positions: features of the patch's pixels alone
            x = layer(x)
        x = torch.cat((self.class_token.expand(len(x), -1, -1), x), dim=1)
        x = self.positional_embedding(x)
        for block in self.blocks:
            x = block(x, None)
        return self.proj(self.norm(x[:, 1:]))


class Captioner(nn.Module):
    """Encoder + decoder; `forward` returns logits and the last layer's cross-attention."""

    def __init__(self, cfg: CaptionerConfig, *, pretrained: bool = False, weights=None):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.encoder = PatchEncoder(cfg, pretrained=pretrained, weights=weights)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Parameter(torch.randn(1, cfg.max_len, cfg.d_model) * 0.02)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg.d_model, cfg.heads, cfg.ff_mult * cfg.d_model, cfg.dropout)
            for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)
        nn.init.normal_(self.embed.weight, std=0.02)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images -> patch memory (B, P, d_model)."""
        return self.encoder(images)

    def decode(
        self, memory: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, T) -> logits (B, T, V) and last-layer cross-attention (B, H, T, P).

        Row i of both predicts token i+1 from tokens 0..i (causal mask).
        """
        t = tokens.shape[1]
        if t > self.cfg.max_len:
            raise VitlabError(
                f"caption of {t} tokens exceeds captions.model.max_len {self.cfg.max_len}"
            )
        causal = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()
        x = self.embed(tokens) + self.pos[:, :t]
        cross = None
        for layer in self.layers:
            x, cross = layer(x, memory, causal)
        return self.head(self.norm(x)), cross

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass: logits (B, T, V) and last-layer cross-attention (B, H, T, P)."""
        return self.decode(self.encode(images), tokens)


def caption_loss(
    logits: torch.Tensor, targets: torch.Tensor, pad: int, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy over the non-pad target tokens."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=pad,
        label_smoothing=label_smoothing,
    )


def config_dict(cfg: CaptionerConfig) -> dict:
    """The config as JSON-ready data (saved beside the checkpoint)."""
    return asdict(cfg)


def init_encoder(model: Captioner, path: str | os.PathLike[str]) -> list[str]:
    """Initialise the encoder from a vitlab ViT checkpoint (e.g. a classifier's soup).

    Only the parts the encoder uses are read (patch embedding, class token, positions, the
    first `encoder_blocks` blocks); a checkpoint of another width, patch size or image size is
    a one-line error. Returns the keys loaded.
    """
    state = read_state_dict(path)
    own = model.encoder.state_dict()
    wanted = {}
    for key in own:
        src = key.replace("blocks.", "transformer.blocks.", 1) if key.startswith("blocks.") else key
        if key.startswith(("patch_embedding.", "class_token", "positional_embedding.", "blocks.")):
            wanted[key] = src
    missing = [src for src in wanted.values() if src not in state]
    if missing:
        raise VitlabError(
            f"{path}: lacks {missing[:3]}; captions.model.init must be a checkpoint of "
            f"{model.cfg.arch} with at least {model.cfg.encoder_blocks} blocks"
        )
    loaded = {key: state[src] for key, src in wanted.items()}
    check_compatible(loaded, {k: own[k] for k in wanted}, f"{path} (captions.model.init)")
    model.encoder.load_state_dict(loaded, strict=False)
    return sorted(loaded)


def load_captioner(model: Captioner, path: str | os.PathLike[str]) -> Captioner:
    """Load a captioner checkpoint, with a clear error when it was trained with another
    vocabulary or architecture."""
    state = read_state_dict(path)
    rows = state.get("embed.weight")
    if rows is not None and rows.shape[0] != model.cfg.vocab_size:
        raise VitlabError(
            f"{path} was trained with a vocabulary of {rows.shape[0]} words but the vocabulary "
            f"has {model.cfg.vocab_size}; the two come from different runs: rerun train_captioner"
        )
    check_compatible(state, model.state_dict(), str(path))
    model.load_state_dict(state)
    return model
