"""Build ViTs from pytorch_pretrained_vit by name, with a 37-way head and checked weights.

Two families share one code path:
- the released `*_imagenet1k` configs (B_16, B_32, L_16 at 384 px) for the real study;
- small configs registered under `vitlab_*` that mirror them for the CPU default: one width at
  two patch sizes (`vitlab_B_16`, `vitlab_B_32`) and a wider, deeper one (`vitlab_L_16`).

Models are always built *by name* (the library's `name=None` path raises NameError), and
pretrained weights are only ever read from a local file or the torch hub cache, never fetched
here and never silently replaced by a random init.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from pytorch_pretrained_vit import ViT
from pytorch_pretrained_vit.configs import PRETRAINED_MODELS
from pytorch_pretrained_vit.utils import resize_positional_embedding_

from vitlab.core import config
from vitlab.core.download import download
from vitlab.core.errors import VitlabError


def _small(patches: int, dim: int, layers: int, heads: int, image_size: int = 64) -> dict:
    config = {
        "patches": (patches, patches),
        "dim": dim,
        "ff_dim": 4 * dim,
        "num_heads": heads,
        "num_layers": layers,
        "attention_dropout_rate": 0.0,
        "dropout_rate": 0.1,
        "representation_size": None,
        "classifier": "token",
    }
    return {
        "config": config,
        "num_classes": 37,
        "image_size": (image_size, image_size),
        "url": None,
    }


SMALL_MODELS = {
    "vitlab_B_16": _small(patches=8, dim=64, layers=4, heads=4),
    "vitlab_B_32": _small(patches=16, dim=64, layers=4, heads=4),
    "vitlab_L_16": _small(patches=8, dim=96, layers=6, heads=4),
    # Tiny variants for tests: seconds per epoch at 32 px.
    "vitlab_micro_16": _small(patches=8, dim=32, layers=2, heads=2, image_size=32),
    "vitlab_micro_32": _small(patches=16, dim=32, layers=2, heads=2, image_size=32),
}
PRETRAINED_MODELS.update(SMALL_MODELS)


def known_archs() -> list[str]:
    """Every architecture name `build_model` accepts."""
    return sorted(PRETRAINED_MODELS)


def patch_size(arch: str) -> int:
    """The (square) patch size of `arch`."""
    return int(_entry(arch)["config"]["patches"][0])


def _entry(arch: str) -> dict:
    if arch not in PRETRAINED_MODELS:
        raise VitlabError(
            f"unknown model architecture {arch!r}; choose one of: {', '.join(known_archs())}"
        )
    return PRETRAINED_MODELS[arch]


def hub_weights_path(arch: str) -> Path:
    """Where torch hub caches the released file of `arch` (a file put there works offline)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / f"{arch}.pth"


def build_model(
    arch: str,
    *,
    num_classes: int,
    image_size: int,
    pretrained: bool = False,
    weights: str | os.PathLike[str] | None = None,
    dropout: float | None = None,
) -> ViT:
    """A ViT named `arch` with a fresh `num_classes` head at `image_size` pixels.

    With `pretrained`, weights come from `weights` if given, else the torch hub cache; the
    classification head is left freshly initialised (zeros, as the library does) and position
    embeddings are resized when the image size differs from the released one.
    """
    entry = _entry(arch)
    patch = patch_size(arch)
    if image_size <= 0 or image_size % patch:
        raise VitlabError(
            f"image size {image_size} is not a positive multiple of {arch}'s patch size {patch}; "
            f"set prepare.image_size to a multiple of {patch}"
        )
    if num_classes < 2:
        raise VitlabError(f"num_classes must be at least 2 (got {num_classes})")
    model = ViT(arch, pretrained=False, image_size=image_size, num_classes=num_classes)
    if dropout is not None:  # the config's dropout_rate is fixed by name; set it on the modules
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = dropout
    if pretrained:
        path = Path(weights) if weights else hub_weights_path(arch)
        if not path.is_file():
            url = entry.get("url") or "(no released file)"
            raise VitlabError(
                f"pretrained weights for {arch} not found at {path}; download {url} there, or "
                f"set models.<M>.weights to a local file, or set models.<M>.pretrained: false"
            )
        load_pretrained(model, path, released_image_size=entry["image_size"][0])
    return model


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """torch.load(weights_only=True) with a clear error for a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise VitlabError(f"{path} is missing; rerun the stage that writes it (dvc repro)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated/corrupt files
        raise VitlabError(
            f"{path} is not a readable checkpoint ({type(e).__name__}); delete it and rerun"
        ) from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VitlabError(f"{path} does not hold a state_dict of tensors; delete it and rerun")
    return state


def check_compatible(
    state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], source: str
) -> None:
    """Raise a one-line error if `state`'s keys or shapes differ from `reference`'s."""
    missing = sorted(set(reference) - set(state))
    extra = sorted(set(state) - set(reference))
    if missing or extra:
        raise VitlabError(
            f"{source}: keys differ from the model (missing {missing[:3]}, unexpected "
            f"{extra[:3]}); it was saved by another architecture; rerun its training stage"
        )
    for key, ref in reference.items():
        if state[key].shape != ref.shape:
            raise VitlabError(
                f"{source}: {key} has shape {tuple(state[key].shape)}, the model expects "
                f"{tuple(ref.shape)}; it was saved with other model or data parameters"
            )


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike[str]) -> torch.nn.Module:
    """Load a vitlab checkpoint (a full state_dict) into `model`, checking keys and shapes."""
    state = read_state_dict(path)
    check_compatible(state, model.state_dict(), str(path))
    model.load_state_dict(state)
    return model


def load_pretrained(model: ViT, path: Path, *, released_image_size: int) -> None:
    """Load a released-layout weights file into `model`, dropping its head and pre-logits."""
    state = read_state_dict(path)
    for key in ("fc.weight", "fc.bias", "pre_logits.weight", "pre_logits.bias"):
        state.pop(key, None)
    own = model.state_dict()
    pos_key = "positional_embedding.pos_embedding"
    if pos_key in state and state[pos_key].shape != own[pos_key].shape:
        state[pos_key] = resize_positional_embedding_(
            posemb=state[pos_key], posemb_new=own[pos_key], has_class_token=True
        )
    reference = {k: v for k, v in own.items() if not k.startswith("fc.")}
    check_compatible(state, reference, str(path))
    model.load_state_dict(state, strict=False)


def describe(arch: str, image_size: int) -> dict:
    """What an architecture name stands for, for tables: `vitlab_B_16` is not B_16."""
    c = _entry(arch)["config"]
    return {"arch": arch, "image_size": image_size, "patch": int(c["patches"][0]),
            "dim": c["dim"], "layers": c["num_layers"]}  # fmt: skip


def fetch_weights(m: config.Model) -> None:
    """Download the released weights into the torch hub cache when the params name a URL.

    Only with `pretrained: true`, no local `weights` file, nothing cached yet, and a
    `weights_url`; `weights_md5` (when set) is checked. Otherwise nothing is fetched.
    """
    if not m.pretrained or m.weights or not m.weights_url:
        return
    target = hub_weights_path(m.arch)
    if not target.is_file():
        download(m.weights_url, target, m.weights_md5 or None)


def build_for(m: config.Model, *, num_classes: int, image_size: int, released: bool = False) -> ViT:
    """The model of one `models.<M>` entry. `released=True` loads (and if named, fetches) the
    released weights, for training; otherwise a checkpoint replaces the weights anyway."""
    if released:
        fetch_weights(m)
    return build_model(
        m.arch,
        num_classes=num_classes,
        image_size=image_size,
        pretrained=m.pretrained and released,
        weights=m.weights or None,
        dropout=m.dropout,
    )
