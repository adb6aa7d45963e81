"""Readers for the dashboard: turn the DAG's outputs and DVC's experiment state into tables.

Why a separate module: every page shows what the pipeline wrote and nothing else, so the file
formats (docs: /work/briefs/contract.md, DESIGN.md "Output contract") are parsed in one place,
validated, and turned into a `DataError` that names the file and the command that produces it.
Pages then only decide how to show things. Pure functions of a project root and pandas; no
Streamlit and no torch here (the dashboard must start in a second, and never trains).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

METRICS_CSV = "reports/metrics.csv"
METRICS_JSON = "reports/metrics.json"
EVAL_DIR = "reports/eval"
TRAIN_DIR = "reports/train"
FIGURES_DIR = "reports/figures"
CAPTIONS_DIR = "reports/captions"
PARAMS_FILE = "params.yaml"

HEADLINE = ("best_epoch", "uniform_soup", "greedy_soup")
SOUPS = ("uniform_soup", "greedy_soup")
CURVE_METRICS = ("train_loss", "val_loss", "val_acc", "lr")
REQUIRED_COLUMNS = ("model", "variant", "val_acc", "test_acc")
NUMERIC_COLUMNS = ("val_acc", "test_acc", "val_loss", "test_loss")
REPRO = "dvc repro"


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    """Why something cannot be shown: which file, what is wrong, and the command that fixes it.

    `kind` is "missing" (not produced yet: an info notice), "malformed" (produced but unreadable:
    a warning) or "unavailable" (a tool such as DVC could not answer: a warning).
    """

    kind: str
    path: str
    detail: str
    command: str = REPRO

    def message(self) -> str:
        fix = f" Run `{self.command}` to produce it." if self.command else ""
        if self.kind == "missing":
            return f"`{self.path}` is missing: {self.detail}.{fix}"
        if self.kind == "malformed":
            return f"`{self.path}` is malformed: {self.detail}.{fix.replace('produce', 'rewrite')}"
        return f"{self.path}: {self.detail}.{fix}"


class DataError(Exception):
    """Raised by readers; carries the Problem the page shows instead of a traceback."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message())
        self.problem = problem


def missing(path: str, detail: str, command: str = REPRO) -> DataError:
    return DataError(Problem("missing", path, detail, command))


def malformed(path: str, detail: str, command: str = REPRO) -> DataError:
    return DataError(Problem("malformed", path, detail, command))


# --------------------------------------------------------------------------- files and stamps


def project_root(env: dict[str, str] | None = None) -> Path:
    """The project the dashboard reads: $VITLAB_ROOT, else the current directory."""
    env = os.environ if env is None else env
    return Path(env.get("VITLAB_ROOT") or os.getcwd()).expanduser().resolve()


def stamp(root: Path, patterns: Iterable[str]) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime_ns, size) of every file matching the glob patterns under root.

    Caches key on this, so they invalidate whenever a file appears, disappears or changes.
    """
    seen: dict[str, tuple[str, int, int]] = {}
    for pattern in patterns:
        for path in root.glob(pattern):
            try:
                st = path.stat()
            except OSError:
                continue
            if path.is_file():
                rel = path.relative_to(root).as_posix()
                seen[rel] = (rel, st.st_mtime_ns, st.st_size)
    return tuple(sorted(seen.values()))


def _read_text(root: Path, rel: str, command: str = REPRO) -> str:
    path = root / rel
    if not path.is_file():
        raise missing(rel, "no such file yet", command)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise malformed(
            rel, f"cannot be read as UTF-8 text ({e.__class__.__name__})", command
        ) from None


def read_json(root: Path, rel: str, command: str = REPRO) -> Any:
    """A JSON file, or a DataError naming it (missing, or the line/column of the syntax error)."""
    text = _read_text(root, rel, command)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise malformed(
            rel, f"invalid JSON at line {e.lineno} column {e.colno} ({e.msg})", command
        ) from None


def study_models(root: Path) -> list[str]:
    """Model keys of the current study (params.yaml `models`), [] when params.yaml is unreadable.

    Old models keep their persisted outputs (reports/train/<M>/ is `persist: true`), so pages
    show the current study's models first rather than everything a glob finds.
    """
    try:
        params = yaml.safe_load((root / PARAMS_FILE).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    models = params.get("models") if isinstance(params, dict) else None
    return [str(m) for m in models] if isinstance(models, dict) else []


def pick_models(study: Sequence[str], found: Iterable[str]) -> list[str]:
    """The study's models that have outputs, in study order; all found ones without a study."""
    found = sorted(set(found))
    if study:
        return [m for m in study if m in found]
    return found


# --------------------------------------------------------------------------- metrics table


def read_metrics_table(root: Path) -> pd.DataFrame:
    """reports/metrics.csv, validated: required columns present, accuracies numeric.

    Extra columns (attention, caption scores) are kept; missing optional ones are tolerated.
    """
    text = _read_text(root, METRICS_CSV)
    if not text.strip():
        raise malformed(METRICS_CSV, "the file is empty")
    try:
        df = pd.read_csv(io.StringIO(text), dtype={"model": str, "variant": str, "epochs": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise malformed(METRICS_CSV, f"not a CSV table ({first})") from None
    df.columns = [str(c).strip() for c in df.columns]
    absent = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if absent:
        raise malformed(
            METRICS_CSV,
            f"column(s) {', '.join(absent)} missing (has: {', '.join(map(str, df.columns))})",
        )
    if df.empty:
        raise malformed(METRICS_CSV, "the table has no rows")
    for col in NUMERIC_COLUMNS:
        if col not in df.columns:
            continue
        values = pd.to_numeric(df[col], errors="coerce")
        bad = df[col].notna() & values.isna()
        if bad.any():
            rows = ", ".join(str(i + 2) for i in df.index[bad][:3])
            raise malformed(METRICS_CSV, f"column {col} has non-numeric values (line {rows})")
        df[col] = values
    df["model"] = df["model"].astype(str)
    df["variant"] = df["variant"].astype(str)
    if "epochs" in df.columns:
        df["epochs"] = df["epochs"].fillna("").astype(str)
    return df.reset_index(drop=True)


def rows_from_eval(report: dict) -> list[dict]:
    """metrics.csv-shaped rows from one reports/eval/<M>.json (the partial-run fallback)."""
    rows = []
    for name, v in report["variants"].items():
        rows.append(
            {
                "model": report["model"],
                "variant": name,
                "kind": v.get("kind", ""),
                "epochs": ";".join(str(e) for e in v.get("epochs", [])),
                "val_acc": float(v["val"]["accuracy"]),
                "test_acc": float(v["test"]["accuracy"]),
                "val_loss": float(v["val"].get("loss", math.nan)),
                "test_loss": float(v["test"].get("loss", math.nan)),
            }
        )
    return rows


def metrics_from_evals(root: Path, models: Sequence[str]) -> pd.DataFrame:
    """The table rebuilt from whatever reports/eval/<M>.json exist (before `summarize` ran)."""
    rows: list[dict] = []
    for model in models:
        rows += rows_from_eval(read_eval(root, model))
    if not rows:
        raise missing(EVAL_DIR, "no model has been evaluated yet")
    return pd.DataFrame(rows)


def eval_models(root: Path) -> list[str]:
    """Models with a reports/eval/<M>.json."""
    return sorted(p.stem for p in (root / EVAL_DIR).glob("*.json") if p.is_file())


def epochs_list(value: Any) -> list[int]:
    """'12;14;15' (the CSV's epochs cell) -> [12, 14, 15]; junk -> []."""
    out = []
    for part in re.split(r"[;, ]+", str(value or "")):
        if part.strip().lstrip("-").isdigit():
            out.append(int(part))
    return out


def headline_table(df: pd.DataFrame, selections: dict[str, list[int]]) -> pd.DataFrame:
    """One row per model: best single epoch vs uniform vs greedy soup, val and test accuracy.

    `selections` gives each model's selected epochs in rank order (selection.json); without
    one the uniform soup's epochs stand in. Models without any headline row are skipped
    (e.g. the captioner's rows).
    """
    out = []
    for model, g in df.groupby("model", sort=False):
        by = {row["variant"]: row for row in g.to_dict("records")}
        if not any(v in by for v in HEADLINE):
            continue
        row: dict[str, Any] = {"model": model}
        selected = selections.get(model) or epochs_list(by.get("uniform_soup", {}).get("epochs"))
        row["selected epochs"] = ", ".join(map(str, selected)) or "—"
        best = by.get("best_epoch", {})
        row["best epoch"] = ", ".join(map(str, epochs_list(best.get("epochs")))) or "—"
        for variant, label in (
            ("best_epoch", "best"),
            ("uniform_soup", "uniform"),
            ("greedy_soup", "greedy"),
        ):
            r = by.get(variant, {})
            row[f"{label} val"] = r.get("val_acc", math.nan)
            row[f"{label} test"] = r.get("test_acc", math.nan)
        greedy = by.get("greedy_soup", {})
        row["greedy ingredients"] = ", ".join(map(str, epochs_list(greedy.get("epochs")))) or "—"
        out.append(row)
    return pd.DataFrame(out)


def with_gains(df: pd.DataFrame) -> pd.DataFrame:
    """The table plus `gain_val` / `gain_test`: each row's accuracy minus its model's best epoch."""
    best = df[df["variant"] == "best_epoch"].set_index("model")[["val_acc", "test_acc"]]
    best = best[~best.index.duplicated()]
    out = df.copy()
    out["gain_val"] = out["val_acc"] - out["model"].map(best["val_acc"])
    out["gain_test"] = out["test_acc"] - out["model"].map(best["test_acc"])
    return out


def soup_gains(df: pd.DataFrame) -> pd.DataFrame:
    """Long table for the gains chart: model, soup, split, gain (soup acc - best single acc)."""
    g = with_gains(df)
    g = g[g["variant"].isin(SOUPS)]
    rows = []
    for r in g.to_dict("records"):
        for split in ("val", "test"):
            gain = r[f"gain_{split}"]
            if pd.notna(gain):
                soup = r["variant"].replace("_soup", "")
                rows.append(
                    {
                        "model": r["model"],
                        "soup": soup,
                        "split": split,
                        "series": f"{soup} · {split}",
                        "gain": float(gain),
                    }
                )
    return pd.DataFrame(rows, columns=["model", "soup", "split", "series", "gain"])


def fmt_acc(x: Any) -> str:
    """Accuracies as the leaderboard prints them (4 decimals; — when absent)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "—"
    return "—" if math.isnan(x) else f"{x:.4f}"


# --------------------------------------------------------------------------- selection, curves


def read_selection(root: Path, model: str) -> dict:
    """models/<M>/selection.json, validated: `selected` is a list of {epoch, val_acc, ...}."""
    rel = f"models/{model}/selection.json"
    sel = read_json(root, rel, f"{REPRO} select@{model}")
    items = sel.get("selected") if isinstance(sel, dict) else None
    if not isinstance(items, list) or not all(
        isinstance(s, dict) and isinstance(s.get("epoch"), int) for s in items
    ):
        raise malformed(
            rel, "`selected` must be a list of {epoch: int, ...}", f"{REPRO} select@{model}"
        )
    return sel


def curve_models(root: Path) -> list[str]:
    """Models with curves: a reports/train/<M>/ folder or a models/<M>/history.json."""
    found = {p.name for p in (root / TRAIN_DIR).glob("*") if p.is_dir()}
    found |= {p.parent.name for p in (root / "models").glob("*/history.json")}
    return sorted(found)


def parse_tsv(text: str, metric: str, rel: str, command: str = REPRO) -> pd.DataFrame:
    """A dvclive TSV (columns `step`, `<metric>`, maybe `timestamp`) -> (step, value)."""
    try:
        df = pd.read_csv(io.StringIO(text), sep="\t")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise malformed(
            rel, f"not a tab-separated table ({e.__class__.__name__})", command
        ) from None
    if "step" not in df.columns or metric not in df.columns:
        raise malformed(rel, f"needs columns `step` and `{metric}`", command)
    step = pd.to_numeric(df["step"], errors="coerce")
    value = pd.to_numeric(df[metric], errors="coerce")
    if step.isna().any() or value.isna().any():
        raise malformed(rel, "has non-numeric values", command)
    return pd.DataFrame({"step": step.astype(int), "value": value.astype(float)})


def _read_tsv(root: Path, rel: str, metric: str, command: str) -> pd.DataFrame:
    return parse_tsv(_read_text(root, rel, command), metric, rel, command)


def read_curves(root: Path, model: str) -> tuple[pd.DataFrame, list[Problem]]:
    """One model's per-epoch curves as a long table (model, metric, epoch, value).

    Read from the dvclive TSVs in reports/train/<M>/plots/metrics/; models/<M>/history.json
    stands in when the TSVs are absent. A malformed file is reported and skipped.
    """
    command = f"{REPRO} train@{model}"
    frames, problems = [], []
    base = f"{TRAIN_DIR}/{model}/plots/metrics"
    for metric in CURVE_METRICS:
        rel = f"{base}/{metric}.tsv"
        if not (root / rel).is_file():
            continue
        try:
            df = _read_tsv(root, rel, metric, command)
        except DataError as e:
            problems.append(e.problem)
            continue
        frames.append(df.assign(model=model, metric=metric))
    if not frames and not problems:
        rel = f"models/{model}/history.json"
        try:
            history = read_json(root, rel, command)
            epochs = history["epochs"]
            rows = [
                {"model": model, "metric": m, "step": int(r["epoch"]), "value": float(r[m])}
                for r in epochs
                for m in CURVE_METRICS
                if r.get(m) is not None
            ]
            if rows:
                frames.append(pd.DataFrame(rows))
        except DataError as e:
            if e.problem.kind != "missing":
                problems.append(e.problem)
        except (KeyError, TypeError, ValueError):
            problems.append(
                Problem("malformed", rel, "`epochs` must be a list of records", command)
            )
    if not frames:
        if not problems:
            problems.append(Problem("missing", f"{TRAIN_DIR}/{model}/", "no curves yet", command))
        return pd.DataFrame(columns=["model", "metric", "epoch", "value"]), problems
    df = pd.concat(frames, ignore_index=True).rename(columns={"step": "epoch"})
    return df[["model", "metric", "epoch", "value"]], problems


def mark_selected(curves: pd.DataFrame, selections: dict[str, list[int]]) -> pd.DataFrame:
    """Adds `selected` (bool) and `rank` (1 = best, else None) to a curves table."""
    out = curves.copy()
    ranks = [
        (selections.get(m) or []).index(e) + 1 if e in (selections.get(m) or []) else None
        for m, e in zip(out["model"], out["epoch"], strict=True)
    ]
    out["rank"] = pd.array(ranks, dtype="Int64")
    out["selected"] = out["rank"].notna()
    return out


# --------------------------------------------------------------------------- per-class


def read_eval(root: Path, model: str) -> dict:
    """reports/eval/<M>.json, validated against the contract (classes, variants, splits)."""
    rel = f"{EVAL_DIR}/{model}.json"
    command = f"{REPRO} evaluate@{model}"
    report = read_json(root, rel, command)
    if not isinstance(report, dict) or not isinstance(report.get("variants"), dict):
        raise malformed(rel, "expected an object with `classes` and `variants`", command)
    classes = report.get("classes")
    if not isinstance(classes, list) or not classes:
        raise malformed(rel, "`classes` must be a non-empty list of names", command)
    n = len(classes)
    for name, v in report["variants"].items():
        for split in ("val", "test"):
            s = v.get(split) if isinstance(v, dict) else None
            where = f"variants.{name}.{split}"
            if not isinstance(s, dict) or not isinstance(s.get("accuracy"), int | float):
                raise malformed(rel, f"`{where}.accuracy` is missing", command)
            pca, conf = s.get("per_class_accuracy"), s.get("confusion")
            if not isinstance(pca, list) or len(pca) != n:
                raise malformed(rel, f"`{where}.per_class_accuracy` must list {n} numbers", command)
            if not (
                isinstance(conf, list)
                and len(conf) == n
                and all(isinstance(r, list) and len(r) == n for r in conf)
            ):
                raise malformed(rel, f"`{where}.confusion` must be {n}x{n}", command)
    report.setdefault("model", model)
    return report


def variant_order(names: Iterable[str]) -> list[str]:
    """Headline variants first, then epochs in order."""
    names = list(names)
    head = [v for v in HEADLINE if v in names]
    return head + sorted(v for v in names if v not in head)


def per_class_frame(report: dict, variant: str, split: str) -> pd.DataFrame:
    """Per-class accuracy with support, correct count and the most frequent confusion."""
    s = report["variants"][variant][split]
    classes = [str(c) for c in report["classes"]]
    rows = []
    for i, name in enumerate(classes):
        counts = s["confusion"][i]
        support = int(sum(counts))
        wrong = [(c, j) for j, c in enumerate(counts) if j != i and c > 0]
        confused = classes[max(wrong)[1]] if wrong else ""
        rows.append(
            {
                "class": name,
                "accuracy": float(s["per_class_accuracy"][i]),
                "correct": int(counts[i]),
                "support": support,
                "most confused with": confused,
            }
        )
    return pd.DataFrame(rows)


def confusion_frame(report: dict, variant: str, split: str, normalise: bool) -> pd.DataFrame:
    """The confusion matrix as a long table (true, predicted, count, share of the true row)."""
    s = report["variants"][variant][split]
    classes = [str(c) for c in report["classes"]]
    rows = []
    for i, true in enumerate(classes):
        total = sum(s["confusion"][i]) or 1
        for j, pred in enumerate(classes):
            count = int(s["confusion"][i][j])
            rows.append({"true": true, "predicted": pred, "count": count, "share": count / total})
    df = pd.DataFrame(rows)
    df["value"] = df["share"] if normalise else df["count"]
    return df


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b.c": leaf}; lists of scalars become one string."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list) and any(isinstance(x, dict | list) for x in obj):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}[{i}]"))
    elif isinstance(obj, list):
        out[prefix] = ", ".join(map(str, obj))
    else:
        out[prefix] = obj
    return out
