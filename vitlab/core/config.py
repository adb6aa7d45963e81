"""The schema of params.yaml: every section typed, ranged and closed to unknown keys.

Why a schema rather than checks in each stage: a typo such as `train.epoch` must fail, not fall
back to a default written somewhere in the code, and `lr: 1e-3` (a string to YAML 1.1) must be
read as the number the user meant. params.yaml is the one source of values: no field below has
a default unless the key is optional by nature (an override, a URL). Errors come out as one line
naming the parameter and what it must be.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic.fields import FieldInfo

from vitlab.core.errors import VitlabError

PositiveInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
Range = tuple[float, float]
IntRange = tuple[int, int]


class Section(BaseModel):
    """Closed (unknown keys refused), numbers parsed from strings, values never mutated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- data


class PerClass(Section):
    train: PositiveInt
    val: PositiveInt
    test: PositiveInt


class SyntheticData(Section):
    num_classes: Annotated[int, Field(ge=2, le=40)]
    size: Annotated[int, Field(ge=16)]
    seed: int
    per_class: PerClass
    object_scale: Range
    distractors: IntRange
    noise: Annotated[float, Field(ge=0.0)]
    colour_jitter: Annotated[float, Field(ge=0.0)]


class OxfordData(Section):
    images_url: str
    images_md5: str
    annotations_url: str
    annotations_md5: str
    cache_dir: str
    val_fraction: Fraction


class FolderData(Section):
    path: str
    val_fraction: Fraction
    test_fraction: Fraction


class Data(Section):
    source: Literal["synthetic", "oxford_pets", "folder"]
    split_seed: int
    synthetic: SyntheticData
    oxford_pets: OxfordData
    folder: FolderData


class Prepare(Section):
    image_size: Annotated[int, Field(ge=8)]
    workers: NonNegInt  # 0 = one per CPU core, at most 8


# ----------------------------------------------------------------------------- models, training


class Augment(Section):
    scale: Range
    translate: Annotated[float, Field(ge=0.0, le=1.0)]
    flip: bool


class Train(Section):
    """train.* with a model's `train:` overrides applied: everything that decides the numbers."""

    epochs: PositiveInt
    batch_size: PositiveInt
    optimizer: Literal["sgd", "adamw"]
    lr: Annotated[float, Field(gt=0.0)]
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)]
    weight_decay: Annotated[float, Field(ge=0.0)]
    schedule: Literal["step", "cosine"]
    step_size: PositiveInt
    gamma: Annotated[float, Field(gt=0.0, le=1.0)]
    warmup_epochs: Annotated[float, Field(ge=0.0)]
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)]
    grad_clip: Annotated[float, Field(ge=0.0)]  # 0 = off
    augment: Augment
    keep_top_k: Annotated[int, Field(ge=3)]
    seed: int

    @model_validator(mode="after")
    def _warmup_fits(self) -> Train:
        if self.warmup_epochs >= self.epochs and self.schedule == "cosine":
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be below epochs")
        return self


def _optional(field: FieldInfo) -> Any:
    """The field's type with its constraints, or None."""
    typ = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    return typ | None


# A model's own `train:` keys: every train.* key, optional, with train's types and ranges; each
# one given replaces the shared value for that model (derived, so the two never drift apart).
TrainOverrides = create_model(
    "TrainOverrides",
    __base__=Section,
    **{name: (_optional(field), None) for name, field in Train.model_fields.items()},
)


class Model(Section):
    arch: str
    pretrained: bool
    weights: str  # a local weights file; "" = the torch hub cache
    weights_url: str | None = None  # fetched into the hub cache only when named
    weights_md5: str | None = None
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    train: TrainOverrides | None = None


class Select(Section):
    k: PositiveInt


class Maps(Section):
    split: Literal["val", "test"]
    images: Annotated[list[NonNegInt], Field(min_length=1)]
    methods: Annotated[list[Literal["last_layer", "rollout", "grad_rollout"]], Field(min_length=1)]
    variants: Annotated[
        list[Literal["best_epoch", "uniform_soup", "greedy_soup"]], Field(min_length=1)
    ]
    position_variants: Annotated[
        list[Literal["best_epoch", "uniform_soup", "greedy_soup"]], Field(min_length=1)
    ]
    head_fusion: Literal["mean", "max", "min"]
    batch_size: PositiveInt  # images per extraction batch; does not change the maps


# ----------------------------------------------------------------------------- captions


class CaptionCounts(Section):
    train: PositiveInt
    val: PositiveInt
    test: PositiveInt


class SceneKnobs(Section):
    objects: IntRange | None = None
    grid: PositiveInt | None = None
    small: Range | None = None
    large: Range | None = None
    jitter: float | None = None
    noise: float | None = None
    colour_jitter: float | None = None


class CaptionSynthetic(Section):
    seed: int
    counts: CaptionCounts
    scenes: SceneKnobs


class Karpathy(Section):
    json_path: str = Field(alias="json")
    images: str
    limit: NonNegInt  # 0 = every image


class CaptionVocab(Section):
    min_count: PositiveInt


class CaptionModel(Section):
    arch: str
    pretrained: bool
    weights: str
    init: str  # a vitlab ViT checkpoint to start the encoder from; "" = none
    encoder_blocks: NonNegInt
    local_layers: NonNegInt
    pos_init: Literal["sincos", "random"]
    d_model: PositiveInt
    heads: PositiveInt
    layers: PositiveInt
    ff_mult: PositiveInt
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)]
    max_len: Annotated[int, Field(ge=4)]

    @model_validator(mode="after")
    def _heads_divide(self) -> CaptionModel:
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of heads {self.heads}")
        return self


class CaptionTrain(Section):
    epochs: PositiveInt
    batch_size: PositiveInt
    lr: Annotated[float, Field(gt=0.0)]
    weight_decay: Annotated[float, Field(ge=0.0)]
    warmup_epochs: Annotated[float, Field(ge=0.0)]
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)]
    grad_clip: Annotated[float, Field(ge=0.0)]
    fresh_scenes: bool
    seed: int


class CaptionDecode(Section):
    headline: Literal["greedy", "beam"]
    beam_size: PositiveInt


class CaptionRender(Section):
    images: list[NonNegInt]


class CaptionFolder(Section):
    path: str  # a folder of photos to caption (no references); a dep of fetch_captions


class Catr(Section):
    """Where the pretrained captioner's two files are, and how its input is squared."""

    dir: str  # released weights + vocab.txt; a dep of render_captions
    weights: str  # "" = <dir>/<release file> if present, else the torch hub cache
    vocab: str  # "" = vocab.txt beside the weights
    weights_url: str = ""  # fetched into the torch hub cache only when named
    weights_md5: str = ""  # checked when given
    square: Literal["pad", "resize", "none"]


CATR_ARCHS = {"catr_v1": "v1", "catr_v2": "v2", "catr_v3": "v3"}  # arch -> release


class Captions(Section):
    source: Literal["synthetic", "karpathy", "folder"]
    image_size: Annotated[int, Field(ge=16)]
    synthetic: CaptionSynthetic
    karpathy: Karpathy
    folder: CaptionFolder
    vocab: CaptionVocab
    model: CaptionModel
    catr: Catr
    train: CaptionTrain
    decode: CaptionDecode
    render: CaptionRender

    @property
    def catr_version(self) -> str | None:
        """The CATR release (v1, v2, v3) when captions.model.arch names one, else None."""
        return CATR_ARCHS.get(self.model.arch)

    @model_validator(mode="after")
    def _source_fits_model(self) -> Captions:
        arch, names = self.model.arch, " | ".join(CATR_ARCHS)
        if arch.startswith("catr") and self.catr_version is None:
            raise ValueError(f"model.arch {arch!r} is not a CATR release; use {names}")
        if self.catr_version is None and self.source == "folder":
            raise ValueError(
                f"source folder has no reference captions to train {arch} on; set model.arch "
                f"to a pretrained {names}, or source to synthetic or karpathy"
            )
        if self.catr_version is not None and self.source == "synthetic":
            raise ValueError(
                f"model.arch {arch} captions photos (source: folder) or a Karpathy test split "
                f"(source: karpathy), not generated scenes; set captions.source"
            )
        return self


# ----------------------------------------------------------------------------- runtime


class Runtime(Section):
    device: str  # auto | cpu | cuda | cuda:N
    amp: Literal["auto", "bf16", "fp32"]
    fused_attention: bool  # SDPA while training; scoring and figures are unaffected
    fast_dropout: bool
    workers: NonNegInt
    threads: NonNegInt  # 0 = torch's default
    nproc_per_node: PositiveInt
    torchrun_args: str
    eval_batch_size: PositiveInt  # every accuracy of the study is scored at this batch size
    progress: bool


class Params(Section):
    data: Data
    prepare: Prepare
    models: Annotated[dict[str, Model], Field(min_length=1)]
    train: Train
    select: Select
    maps: Maps
    captions: Captions
    runtime: Runtime

    @model_validator(mode="after")
    def _cross_fields(self) -> Params:
        for name in self.models:
            cfg = self.train_for(name)
            if self.select.k > cfg.keep_top_k:
                raise ValueError(
                    f"select.k ({self.select.k}) exceeds train.keep_top_k ({cfg.keep_top_k}) "
                    f"of model {name}: raise keep_top_k or lower k"
                )
        return self

    def train_for(self, model: str) -> Train:
        """train.* with models.<model>.train overrides on top (validated as a whole)."""
        over = self.models[model].train
        if over is None:
            return self.train
        merged = {**self.train.model_dump(), **over.model_dump(exclude_none=True)}
        return Train.model_validate(merged)


def _where(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith(("function-", "tagged-")))


def validate(raw: Any, source: str = "params.yaml") -> Params:
    """params as a Params, or one VitlabError line naming the first bad parameter."""
    if not isinstance(raw, dict):
        raise VitlabError(f"{source}: not a mapping of sections; see the repository's params.yaml")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = _where(err["loc"])
        if err["type"] == "extra_forbidden":
            parent = where.rsplit(".", 1)[0] if "." in where else ""
            raise VitlabError(
                f"{source}: {where} is not a parameter (a typo?); check the keys of "
                f"{parent or 'the top level'} in the repository's params.yaml"
            ) from None
        if err["type"] == "missing":
            raise VitlabError(
                f"{source}: {where} is missing; copy it from the repository's params.yaml"
            ) from None
        got = err.get("input")
        msg = err["msg"].removeprefix("Value error, ")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        raise VitlabError(f"{source}: {where + ': ' if where else ''}{msg}{shown}") from None


def load(path: Path) -> Params:
    """Read and validate a params file."""
    if not path.is_file():
        raise VitlabError(f"{path} is missing; run from the repository root")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise VitlabError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return validate(raw, str(path))


def overlay(base: dict, changes: dict) -> dict:
    """`base` with `changes` merged in: mappings recursively, anything else replaced.

    A key set to null in `changes` removes it (how a profile drops a model of the default).
    """
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = overlay(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
