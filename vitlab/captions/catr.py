"""CATR, the pretrained COCO captioner of github.com/saahiluppal/catr, in plain torch.

The release is a state_dict for torchvision's ResNet-101 plus DETR's transformer, and
torchvision does not import beside this torch, so the modules are written here under the
release's names: its file loads strictly. The arithmetic is the release's too (attention through
nn.MultiheadAttention's weights-returning path, fp32), so the captions are the ones it gives.

Inference only (no dropout): prepare_image -> Catr.encode (once per image) -> greedy_decode ->
word_maps (one grid of cross-attention per generated token) -> WordPiece.decode.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn

from vitlab.core.download import download, md5sum
from vitlab.core.errors import VitlabError

RELEASE_URL = "https://github.com/saahiluppal/catr/releases/download/"
RELEASES = {  # hub entry -> release asset (no checksums are published)
    "v1": "0.1/weights_9348032.pth",
    "v2": "0.2/weight389123791.pth",
    "v3": "0.2/weight493084032.pth",
}
PAD_ID, CLS_ID, SEP_ID = 0, 101, 102  # BERT uncased ids the release was trained with
MAX_DIM = 299  # longest image side fed to the backbone
MIN_SIDE = 16  # one backbone feature cell; smaller sides carry no whole cell
SQUARE_MODES = ("pad", "resize", "none")


@dataclass(frozen=True)
class CatrConfig:
    """Architecture knobs; the defaults are the released model's (84,392,954 weights)."""

    blocks: tuple[int, int, int, int] = (3, 4, 23, 3)  # bottlenecks per ResNet stage (101)
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    vocab_size: int = 30522
    max_position_embeddings: int = 128  # the caption tensor is always exactly this long
    layer_norm_eps: float = 1e-12

    def __post_init__(self) -> None:
        if len(self.blocks) != 4 or min(self.blocks) < 1:
            raise ValueError(f"blocks must be 4 stage depths >= 1, got {self.blocks}")
        if self.hidden_dim % 4 or self.hidden_dim % self.nheads:
            raise ValueError("hidden_dim must be a multiple of 4 (sine code) and of nheads")
        if self.vocab_size <= SEP_ID or self.max_position_embeddings < 2:
            raise ValueError(f"vocab_size must exceed {SEP_ID}; max_position_embeddings >= 2")


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine, all four stored as buffers (as released)."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.weight.reshape(1, -1, 1, 1), self.bias.reshape(1, -1, 1, 1)
        rv, rm = self.running_var.reshape(1, -1, 1, 1), self.running_mean.reshape(1, -1, 1, 1)
        scale = w * (rv + 1e-5).rsqrt()
        return x * scale + (b - rm * scale)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride (or dilation) sits in the 3x3 conv."""

    def __init__(self, inplanes: int, planes: int, stride: int, dilation: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = FrozenBatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = FrozenBatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                FrozenBatchNorm2d(planes * 4),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + identity)


def _stage(inplanes: int, planes: int, blocks: int, stride: int, dilated: bool) -> nn.Sequential:
    """One ResNet stage; `dilated` trades the stride for dilation 2 after the first block."""
    first_stride, dilation = (1, 2) if dilated else (stride, 1)
    layers = [Bottleneck(inplanes, planes, first_stride, 1)]
    layers += [Bottleneck(planes * 4, planes, 1, dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """ResNet up to layer4 (no pooling head) with a dilated last stage: stride 16, 2048 ch."""

    def __init__(self, blocks: tuple[int, int, int, int]):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = FrozenBatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _stage(64, 64, blocks[0], 1, False)
        self.layer2 = _stage(256, 128, blocks[1], 2, False)
        self.layer3 = _stage(512, 256, blocks[2], 2, False)
        self.layer4 = _stage(1024, 512, blocks[3], 2, True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def sine_position_encoding(mask: Tensor, num_pos_feats: int, temperature: int = 10000) -> Tensor:
    """DETR's normalised sine code of each cell's row and column, (N, 2 * num_pos_feats, H, W).

    Coordinates count unmasked cells and are scaled to (0, 2 pi], so a padded image is coded
    over its real extent; `mask` (N, H, W) is True on padding.
    """
    not_mask = ~mask
    y = not_mask.cumsum(1, dtype=torch.float32)
    x = not_mask.cumsum(2, dtype=torch.float32)
    eps, scale = 1e-6, 2 * math.pi
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=mask.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)

    def code(t: Tensor) -> Tensor:  # sin on even, cos on odd frequencies, interleaved
        t = t[..., None] / dim_t
        return torch.stack((t[..., 0::2].sin(), t[..., 1::2].cos()), dim=4).flatten(3)

    return torch.cat((code(y), code(x)), dim=3).permute(0, 3, 1, 2)


# Attention below keeps nn.MultiheadAttention's default need_weights=True: its explicit-softmax
# path is the one the release ran, so outputs match it to the bit; the weights are also the maps.


class EncoderLayer(nn.Module):
    """Pre-norm self-attention over image cells (position code added to queries and keys)."""

    def __init__(self, cfg: CatrConfig):
        super().__init__()
        d = cfg.hidden_dim
        self.self_attn = nn.MultiheadAttention(d, cfg.nheads)
        self.linear1 = nn.Linear(d, cfg.dim_feedforward)
        self.linear2 = nn.Linear(cfg.dim_feedforward, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)

    def forward(self, src: Tensor, pos: Tensor, padding: Tensor) -> Tensor:
        x = self.norm1(src)
        q = x + pos
        src = src + self.self_attn(q, q, x, key_padding_mask=padding)[0]
        return src + self.linear2(F.relu(self.linear1(self.norm2(src))))


class Encoder(nn.Module):
    def __init__(self, cfg: CatrConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.enc_layers))
        self.norm = nn.LayerNorm(cfg.hidden_dim)

    def forward(self, src: Tensor, pos: Tensor, padding: Tensor) -> Tensor:
        for layer in self.layers:
            src = layer(src, pos, padding)
        return self.norm(src)


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention, cross-attention to the image, feed-forward.

    Returns the head-averaged cross-attention weights too (N, L, HW), which
    nn.TransformerDecoderLayer would discard.
    """

    def __init__(self, cfg: CatrConfig):
        super().__init__()
        d = cfg.hidden_dim
        self.self_attn = nn.MultiheadAttention(d, cfg.nheads)
        self.multihead_attn = nn.MultiheadAttention(d, cfg.nheads)
        self.linear1 = nn.Linear(d, cfg.dim_feedforward)
        self.linear2 = nn.Linear(cfg.dim_feedforward, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        causal: Tensor,
        cap_padding: Tensor,
        memory: Tensor,
        memory_key: Tensor,
        memory_padding: Tensor,
    ) -> tuple[Tensor, Tensor]:
        t = self.norm1(tgt)
        q = t + query_pos
        tgt = tgt + self.self_attn(q, q, t, attn_mask=causal, key_padding_mask=cap_padding)[0]
        t = self.norm2(tgt)
        out, weights = self.multihead_attn(
            t + query_pos, memory_key, memory, key_padding_mask=memory_padding
        )
        tgt = tgt + out
        return tgt + self.linear2(F.relu(self.linear1(self.norm3(tgt)))), weights


class Decoder(nn.Module):
    def __init__(self, cfg: CatrConfig):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.dec_layers))
        self.norm = nn.LayerNorm(cfg.hidden_dim)

    def forward(
        self, tgt: Tensor, query_pos: Tensor, cap_padding: Tensor, enc: Encoded
    ) -> tuple[Tensor, Tensor]:
        """Normed hidden states (L, N, d) and the last layer's cross-attention (N, L, HW)."""
        n = tgt.shape[0]
        causal = torch.ones(n, n, dtype=torch.bool, device=tgt.device).triu(1)  # True: future
        memory_key = enc.memory + enc.pos
        for layer in self.layers:
            tgt, weights = layer(
                tgt, query_pos, causal, cap_padding, enc.memory, memory_key, enc.padding
            )
        return self.norm(tgt), weights


class Embeddings(nn.Module):
    """BERT-style token embedding: LayerNorm(word + learned position)."""

    def __init__(self, cfg: CatrConfig):
        super().__init__()
        d = cfg.hidden_dim
        self.word_embeddings = nn.Embedding(cfg.vocab_size, d, padding_idx=PAD_ID)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, d)
        self.LayerNorm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    def forward(self, ids: Tensor) -> Tensor:
        positions = self.position_embeddings.weight[: ids.shape[1]]
        return self.LayerNorm(self.word_embeddings(ids) + positions)


class Transformer(nn.Module):
    def __init__(self, cfg: CatrConfig):
        super().__init__()
        self.encoder = Encoder(cfg)
        self.embeddings = Embeddings(cfg)
        self.decoder = Decoder(cfg)


class Head(nn.Module):
    """Hidden state -> vocabulary logits: Linear-ReLU-Linear-ReLU-Linear (512 wide)."""

    def __init__(self, cfg: CatrConfig):
        super().__init__()
        dims = (cfg.hidden_dim, 512, 512, cfg.vocab_size)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(dims))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


@dataclass(frozen=True)
class Encoded:
    """An encoded image batch, reused by every decoding step."""

    memory: Tensor  # (HW, N, d) encoder output, sequence-first
    pos: Tensor  # (HW, N, d) sine position code of the cells
    padding: Tensor  # (N, HW) True on cells that are image padding
    grid: tuple[int, int]  # (h, w) of the cell grid; HW is row-major


class Catr(nn.Module):
    """The captioner; attribute names give exactly the release's state_dict keys."""

    def __init__(self, cfg: CatrConfig | None = None):
        super().__init__()
        self.cfg = cfg or CatrConfig()
        # "backbone.0.body.*" as the release stores it (DETR's Joiner -> Backbone.body)
        self.backbone = nn.ModuleList([nn.ModuleDict({"body": ResNet(self.cfg.blocks)})])
        self.input_proj = nn.Conv2d(2048, self.cfg.hidden_dim, 1)
        self.transformer = Transformer(self.cfg)
        self.mlp = Head(self.cfg)

    def encode(self, images: Tensor, mask: Tensor) -> Encoded:
        """Images (N, 3, H, W) with their padding mask (N, H, W; True = padding) -> memory.

        The pixel mask reaches the 16-px cell grid by nearest interpolation, as in DETR.
        """
        features = self.backbone[0]["body"](images)
        h, w = features.shape[-2:]
        cells = F.interpolate(mask[None].float(), size=(h, w)).to(torch.bool)[0]
        pos = sine_position_encoding(cells, self.cfg.hidden_dim // 2).to(features.dtype)
        src = self.input_proj(features).flatten(2).permute(2, 0, 1)
        pos = pos.flatten(2).permute(2, 0, 1)
        padding = cells.flatten(1)
        return Encoded(self.transformer.encoder(src, pos, padding), pos, padding, (h, w))

    def decode(self, enc: Encoded, caption: Tensor, cap_padding: Tensor) -> tuple[Tensor, Tensor]:
        """Token ids (N, L) and their padding (True = not a token yet), L = max positions.

        Returns the normed hidden states (N, L, d) and the last decoder layer's head-averaged
        cross-attention (N, L, HW). L is fixed because every query adds the whole position
        table, as in training.
        """
        table = self.transformer.embeddings.position_embeddings.weight
        if caption.shape[1] != table.shape[0]:
            raise ValueError(f"caption must be {table.shape[0]} long, got {caption.shape[1]}")
        tgt = self.transformer.embeddings(caption).permute(1, 0, 2)
        query_pos = table[:, None, :].expand(-1, caption.shape[0], -1)
        hidden, weights = self.transformer.decoder(tgt, query_pos, cap_padding, enc)
        return hidden.permute(1, 0, 2), weights

    def forward(
        self, images: Tensor, mask: Tensor, caption: Tensor, cap_padding: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Logits (N, L, vocab) and last-layer cross-attention (N, L, HW): the release's call."""
        hidden, weights = self.decode(self.encode(images, mask), caption, cap_padding)
        return self.mlp(hidden), weights


def start_caption(
    cfg: CatrConfig, words: Sequence[int], device: torch.device
) -> tuple[Tensor, Tensor]:
    """The fixed-length caption [CLS] + words (zeros after) and its padding mask."""
    caption = torch.zeros(1, cfg.max_position_embeddings, dtype=torch.long, device=device)
    padding = torch.ones(1, cfg.max_position_embeddings, dtype=torch.bool, device=device)
    caption[0, 0] = CLS_ID
    caption[0, 1 : len(words) + 1] = torch.tensor(list(words), dtype=torch.long)
    padding[0, : len(words) + 1] = False
    return caption, padding


@torch.no_grad()
def greedy_decode(model: Catr, enc: Encoded) -> list[int]:
    """The release's predict loop with the image encoded once: argmax token by token.

    Returns the generated ids after [CLS], ending with [SEP] when it was predicted (at most
    max_position_embeddings - 1 ids). Each step reruns the decoder on the full fixed-length
    caption, so every step computes exactly what the release's whole-model call does.
    """
    if enc.memory.shape[1] != 1:
        raise ValueError("greedy_decode takes one image at a time")
    caption, padding = start_caption(model.cfg, [], enc.memory.device)
    ids: list[int] = []
    for i in range(model.cfg.max_position_embeddings - 1):
        hidden, _ = model.decode(enc, caption, padding)
        next_id = int(model.mlp(hidden[:, i]).argmax(-1))
        ids.append(next_id)
        if next_id == SEP_ID:
            break
        caption[0, i + 1] = next_id
        padding[0, i + 1] = False
    return ids


@torch.no_grad()
def word_maps(model: Catr, enc: Encoded, token_ids: Sequence[int]) -> np.ndarray:
    """Cross-attention grids (len(token_ids), h, w) of the last decoder layer, head-averaged.

    Row i is the query that predicted token_ids[i] (ids as greedy_decode returns them). One
    pass over the finished caption suffices: causal and padding masks make each row equal to
    the one of its own decoding step.
    """
    ids = [int(t) for t in token_ids]
    words = ids[:-1] if ids and ids[-1] == SEP_ID else ids
    if SEP_ID in words or len(words) >= model.cfg.max_position_embeddings:
        raise ValueError("token_ids must be at most max_positions - 1 ids, [SEP] only last")
    caption, padding = start_caption(model.cfg, words, enc.memory.device)
    _, weights = model.decode(enc, caption, padding)
    h, w = enc.grid
    return weights[0, : len(ids)].reshape(len(ids), h, w).cpu().numpy()


def load_catr(path: str | Path, cfg: CatrConfig | None = None) -> Catr:
    """A Catr with the weights of `path` (a release file or a bare state_dict), in eval mode.

    Every key and shape must match (num_batches_tracked aside); the first that does not is
    named in a one-line VitlabError, so a wrong file never loads half-way.
    """
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise VitlabError(f"{path}: no such file; see resolve_weights for where it goes") from None
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise VitlabError(
            f"{path}: unreadable as a torch checkpoint ({reason}); the file is truncated or of "
            f"another kind, delete it and download it again"
        ) from None
    state = obj.get("model", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise VitlabError(f"{path}: holds a {type(obj).__name__}, not a CATR state_dict")
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    with torch.device("meta"):
        model = Catr(cfg)
    expected = model.state_dict()
    for key, want in expected.items():
        if key not in state:
            raise VitlabError(
                f"{path}: missing key {key} — not a CATR checkpoint; use a release file "
                f"({RELEASE_URL}{RELEASES['v3']}) or one saved from this Catr"
            )
        if state[key].shape != want.shape:
            raise VitlabError(
                f"{path}: {key} has shape {tuple(state[key].shape)}, this Catr expects "
                f"{tuple(want.shape)} — a checkpoint of another configuration; pass its CatrConfig"
            )
    extra = next((k for k in state if k not in expected), None)
    if extra is not None:
        raise VitlabError(f"{path}: unexpected key {extra} — not a CATR checkpoint")
    model.load_state_dict(state, assign=True)
    return model.eval()


def resolve_weights(
    version: str, path: str | Path | None = None, url: str | None = None, md5: str | None = None
) -> Path:
    """Where the weights of `version` (v1, v2, v3) are, downloading only when `url` is given.

    A given `path` wins over the torch hub cache location of the release file (where
    torch.hub.load puts it). Without a url nothing touches the network: a missing file is a
    VitlabError naming the exact place to put it.
    """
    if path is None:
        if version not in RELEASES:
            raise VitlabError(f"CATR version {version!r} is unknown; use v1, v2 or v3")
        target = Path(torch.hub.get_dir()) / "checkpoints" / RELEASES[version].split("/")[1]
    else:
        target = Path(path)
    if url is not None:
        return download(url, target, md5)
    if not target.is_file():
        source = f"{RELEASE_URL}{RELEASES[version]}" if version in RELEASES else "its source"
        raise VitlabError(
            f"CATR {version} weights not found: download {source} to {target} (or name a url)"
        )
    if md5 is not None and md5sum(target) != md5.strip().lower():
        raise VitlabError(f"{target}: md5 differs from {md5}; delete it and download it again")
    return target


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as the release feeds it; 16-bit greyscale is first scaled to 8 bits.

    PIL's own conversion of 16-bit ("I;16*", or "I" as older PIL opens such PNGs) clips every
    value above 255 to white.
    """
    if image.mode.startswith("I"):
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535) >> 8
        image = Image.fromarray(values.astype(np.uint8))
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """The decoded image at `path`; any unreadable file is a one-line VitlabError naming it."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise VitlabError(f"{path}: empty file (0 bytes); replace or remove it")
        with Image.open(path) as image:
            image.load()
            return image
    except FileNotFoundError:
        raise VitlabError(f"{path}: no such image file") from None
    except UnidentifiedImageError:
        raise VitlabError(f"{path}: not an image format PIL can read; replace it") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise VitlabError(f"{path}: cannot decode the image ({e}); replace it") from None


def scaled_size(w: int, h: int) -> tuple[int, int]:
    """(w, h) with the longest side at 299, floored as the release's float arithmetic does."""
    scale = MAX_DIM / max(w, h)
    return int(w * scale), int(h * scale)


def preprocess(
    image: Image.Image, square: str = "pad", name: str = "image"
) -> tuple[Tensor, Tensor]:
    """The release's input: (3, H, W) in [-1, 1] and its padding mask (H, W; True = padding).

    Longest side scaled to 299 with the release's float arithmetic (floored, so a 550 px side
    becomes 298), PIL bicubic. `square`: "pad" pads bottom/right to 299 x 299 and masks the pad
    (the release's training batches; a full 19 x 19 grid), "resize" stretches to 299 x 299,
    "none" keeps the aspect (the release's predict: a 753 x 630 image gives a 16 x 19 grid).
    `name` (the file) appears in errors.
    """
    if square not in SQUARE_MODES:
        raise VitlabError(f"square {square!r} is unknown; use one of {', '.join(SQUARE_MODES)}")
    image = to_rgb(image)
    w, h = image.size
    if min(w, h) < MIN_SIDE:
        raise VitlabError(f"{name}: {w}x{h} px is too small; CATR needs {MIN_SIDE}+ px a side")
    size = (MAX_DIM, MAX_DIM) if square == "resize" else scaled_size(w, h)
    if min(size) < MIN_SIDE:
        raise VitlabError(
            f"{name}: {w}x{h} px scales to {size[0]}x{size[1]}, under {MIN_SIDE} px a side; "
            f"crop it less elongated or use square: resize"
        )
    pixels = np.array(image.resize(size, Image.Resampling.BICUBIC))
    x = torch.from_numpy(pixels).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)
    mask = torch.zeros(x.shape[1:], dtype=torch.bool)
    if square == "pad":
        padded = x.new_zeros(3, MAX_DIM, MAX_DIM)
        padded[:, : size[1], : size[0]] = x
        mask = torch.ones(MAX_DIM, MAX_DIM, dtype=torch.bool)
        mask[: size[1], : size[0]] = False
        x = padded
    return x, mask


def prepare_image(path: str | Path, square: str = "pad") -> tuple[Tensor, Tensor]:
    """load_image + preprocess, batched: (1, 3, H, W) and (1, H, W), errors naming the file."""
    x, mask = preprocess(load_image(path), square, name=str(path))
    return x[None], mask[None]
