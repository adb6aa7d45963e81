"""The output contract: every path, file name and key that stages, flows, the dashboard and the
benchmarks share, in one torch-free module.

Why one module: a reader that rebuilds a path or a key by hand drifts from the writer the day
one of them changes. Stages write through these names, everything else reads through them, and
the dashboard can import this without pulling in torch. Paths are relative to the repository
root (stages run there; readers join them onto the root they were given).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vitlab.core.atomic import write_json
from vitlab.core.errors import VitlabError

PARAMS = Path("params.yaml")

RAW = Path("data/raw")
PREPARED = Path("data/prepared")
CAPTION_DATA = Path("data/captions")

MODELS = Path("models")
CAPTIONER = MODELS / "captioner"
CAPTIONER_STATE = MODELS / "captioner_last.pt"  # resume state of train_captioner (persisted)

REPORTS = Path("reports")
EVAL = REPORTS / "eval"
TRAIN = REPORTS / "train"
FIGURES = REPORTS / "figures"
CAPTIONS = REPORTS / "captions"
CAPTION_FIGURES = CAPTIONS / "figures"
CAPTION_METRICS = CAPTIONS / "metrics.json"
CAPTION_TRAIN = CAPTIONS / "train"
TEST_CAPTIONS = CAPTIONS / "test_captions.json"
METRICS_CSV = REPORTS / "metrics.csv"
METRICS_JSON = REPORTS / "metrics.json"
BENCH = REPORTS / "bench"

MANIFEST = "manifest.json"  # in every figure folder: what the render stage drew

# ----------------------------------------------------------------------------- per model


def model_dir(model: str) -> Path:
    return MODELS / model


def epochs_dir(model: str) -> Path:
    return model_dir(model) / "epochs"


def last_state(model: str) -> Path:
    """The resume state of train@<model>."""
    return model_dir(model) / "last.pt"


def history(model: str) -> Path:
    return model_dir(model) / "history.json"


def selection(model: str) -> Path:
    return model_dir(model) / "selection.json"


def soups(model: str) -> Path:
    return model_dir(model) / "soups.json"


def soup_checkpoint(model: str, soup: str) -> Path:
    """models/<model>/<soup>.pt for soup in SOUPS."""
    return model_dir(model) / f"{soup}.pt"


def eval_report(model: str) -> Path:
    return EVAL / f"{model}.json"


def train_curves(model: str) -> Path:
    """The dvclive folder of train@<model> (metrics.json, plots/metrics/<metric>.tsv)."""
    return TRAIN / model


def curve_file(model: str, curve: str) -> Path:
    """The dvclive TSV of one curve of train@<model> (columns step, <curve>)."""
    return train_curves(model) / "plots" / "metrics" / f"{curve}.tsv"


def figures_dir(model: str) -> Path:
    return FIGURES / model


def positions_dir(model: str) -> Path:
    return figures_dir(model) / "positions"


def attention_dir(model: str) -> Path:
    return figures_dir(model) / "attention"


def map_scores(model: str) -> Path:
    """render_attention@<model>'s pointing and energy scores, {variant: {method: SCORE_KEYS}}."""
    return figures_dir(model) / "scores.json"


# ----------------------------------------------------------------------------- epochs

_EPOCH = re.compile(r"^epoch_(\d{3,})$")


def epoch_name(epoch: int) -> str:
    """`epoch_007`: the variant name and the checkpoint stem of a kept epoch."""
    return f"epoch_{epoch:03d}"


def epoch_checkpoint(model: str, epoch: int) -> Path:
    return epochs_dir(model) / f"{epoch_name(epoch)}.pt"


def epoch_of(name: str | Path) -> int:
    """The epoch number of `epoch_007` or `.../epoch_007.pt`."""
    stem = Path(name).stem if str(name).endswith(".pt") else str(name)
    m = _EPOCH.match(stem)
    if m is None:
        raise VitlabError(f"{name}: not an epoch checkpoint name (epoch_NNN)")
    return int(m.group(1))


# ----------------------------------------------------------------------------- variants

EPOCH = "epoch"
BEST_EPOCH = "best_epoch"
UNIFORM_SOUP = "uniform_soup"
GREEDY_SOUP = "greedy_soup"
SOUPS = (UNIFORM_SOUP, GREEDY_SOUP)
HEADLINE_VARIANTS = (BEST_EPOCH, UNIFORM_SOUP, GREEDY_SOUP)
VARIANT_ORDER = {v: i for i, v in enumerate(HEADLINE_VARIANTS)}
SPLITS = ("train", "val", "test")
EVAL_SPLITS = ("val", "test")


@dataclass(frozen=True)
class Variant:
    """One evaluated set of weights: a kept epoch, the best epoch, or a soup."""

    name: str
    kind: str  # EPOCH or one of HEADLINE_VARIANTS
    epochs: tuple[int, ...]
    checkpoint: Path


def read_json(path: Path, producer: str = "") -> Any:
    """A JSON output of the DAG, or one line naming the file and the stage that writes it."""
    command = f"dvc repro {producer}".strip()
    if not path.is_file():
        raise VitlabError(f"{path} is missing; run `{command}`")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VitlabError(f"{path} is unreadable ({e}); delete it and run `{command}`") from None


def variants(model: str, root: Path = Path(".")) -> dict[str, Variant]:
    """Every variant of `model` in report order: each kept epoch, the best epoch, both soups.

    Built from history.json (kept epochs), selection.json (rank order) and soups.json (the
    greedy soup's ingredients), so every stage and reader names the same weights the same way.
    """
    kept = read_json(root / history(model), f"train@{model}")["kept"]
    selected = read_json(root / selection(model), f"select@{model}")["selected"]
    greedy = read_json(root / soups(model), f"average@{model}")["greedy"]["ingredients"]
    table = {
        epoch_name(e): Variant(epoch_name(e), EPOCH, (e,), epoch_checkpoint(model, e)) for e in kept
    }
    best = selected[0]["epoch"]
    table[BEST_EPOCH] = Variant(BEST_EPOCH, BEST_EPOCH, (best,), epoch_checkpoint(model, best))
    table[UNIFORM_SOUP] = Variant(
        UNIFORM_SOUP,
        UNIFORM_SOUP,
        tuple(sorted(s["epoch"] for s in selected)),
        soup_checkpoint(model, UNIFORM_SOUP),
    )
    table[GREEDY_SOUP] = Variant(
        GREEDY_SOUP,
        GREEDY_SOUP,
        tuple(sorted(epoch_of(n) for n in greedy)),
        soup_checkpoint(model, GREEDY_SOUP),
    )
    return table


# ----------------------------------------------------------------------------- metrics and keys

CURVES = ("train_loss", "val_loss", "val_acc", "lr")  # per epoch, in history.json and dvclive
CAPTION_CURVES = ("train_loss", "val_loss", "val_bleu4", "val_exact", "lr")
TABLE_KEYS = ("model", "arch", "image_size", "patch", "variant", "kind", "epochs")
ACCURACY_COLUMNS = ("val_acc", "test_acc", "val_loss", "test_loss")
REQUIRED_COLUMNS = ("model", "variant", "val_acc", "test_acc")
MAP_METHODS = {
    "last_layer": "last-layer CLS attention (mean over heads)",
    "rollout": "attention rollout",
    "grad_rollout": "gradient-weighted rollout (predicted class)",
}
SCORE_KEYS = ("pointing", "energy", "pointing_uniform", "energy_uniform", "n")
CAPTION_SCORES = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d", "exact_match")


def score_column(score: str, method: str) -> str:
    """The metrics-table column of one map score: `pointing_rollout`."""
    return f"{score}_{method}"


# ----------------------------------------------------------------------------- figure manifest


@dataclass(frozen=True)
class Figure:
    """One drawn figure, as its render stage describes it in the folder's manifest.json.

    `png` and `maps` are file names in the same folder. `maps` holds exactly the array the
    stage scored and drew (attention maps at image resolution, similarities, per-word maps),
    so a reader shows it as it is, never re-derived.
    """

    png: str
    maps: str
    group: str  # positions | attention | captions
    title: str
    variant: str = ""
    method: str = ""
    epochs: tuple[int, ...] = ()
    split: str = ""
    images: tuple[int, ...] = ()  # split indices, one per row of `maps` (attention figures)
    info: dict[str, Any] = field(default_factory=dict)  # what else the stage knows


def write_manifest(folder: Path, figures: list[Figure], **about: Any) -> None:
    """folder/manifest.json: what the stage drew, in drawing order, plus `about` (model, ...)."""
    write_json(folder / MANIFEST, {**about, "figures": [asdict(f) for f in figures]})


def read_manifest(folder: Path, producer: str = "") -> tuple[dict[str, Any], list[Figure]]:
    """(about, figures) of a figure folder; one line naming the file (and `producer`, the stage
    that writes it) when it is not readable."""
    data = read_json(folder / MANIFEST, producer)
    figures = [
        Figure(
            **{
                **f,
                "epochs": tuple(f.get("epochs", ())),
                "images": tuple(f.get("images", ())),
            }
        )
        for f in data.get("figures", [])
    ]
    return {k: v for k, v in data.items() if k != "figures"}, figures
