"""What a flow run publishes: the metrics table, the per-stage table and a markdown summary.

Kept apart from flows/dag.py (which schedules the stages) so the report can be read, and
changed, on its own: best variant per model, soups against the best single epoch, figures.
"""

import csv
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

TEXT_COLUMNS = frozenset({"model", "variant", "kind", "epochs"})  # "4" is an epoch, not 4.0


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of the metrics table, scores as floats (blank -> None); any columns accepted."""
    with open(path, newline="") as f:
        return [
            {k: (v if k in TEXT_COLUMNS else _number(v)) for k, v in row.items() if k}
            for row in csv.DictReader(f)
        ]


def _number(value: str | None) -> Any:
    if value is None or value.strip() == "":
        return None
    try:
        x = float(value)
    except ValueError:
        return value
    return None if math.isnan(x) else x


def _fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return "" if x is None else str(x)


def _fmt_delta(x: Any, base: Any) -> str:
    if isinstance(x, float) and isinstance(base, float):
        return f"{x - base:+.4f}"
    return ""


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def best_variants(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model, the variant with the highest val_acc (ties: lower val_loss, then first)."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        model, acc = row.get("model"), row.get("val_acc")
        if model is None or not isinstance(acc, float):
            continue
        cur = best.get(str(model))
        if cur is None or acc > cur["val_acc"] or (acc == cur["val_acc"] and _lower_loss(row, cur)):
            best[str(model)] = row
    return best


def _lower_loss(a: dict[str, Any], b: dict[str, Any]) -> bool:
    la, lb = a.get("val_loss"), b.get("val_loss")
    return isinstance(la, float) and isinstance(lb, float) and la < lb


def summary_markdown(
    root: Path,
    rows: list[dict[str, Any]] | None,
    metrics_csv: str,
    figure_dirs: Sequence[str],
    stages: Sequence[dict[str, Any]],
    experiment: str | None = None,
    overrides: Sequence[str] = (),
) -> str:
    """The run's summary: stages, best variant per model, soups vs best epoch, figures."""
    counts: dict[str, int] = {}
    for s in stages:
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    out = [f"# experiment-dag: `{root}`", ""]
    if experiment:
        out += [f"DVC experiment **{experiment}** (compare: `dvc exp show`).", ""]
    if overrides:
        out += ["Overrides: " + ", ".join(f"`{o}`" for o in overrides), ""]
    out += ["## Stages", "", ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ".", ""]
    stage_rows = [(s["stage"], s["status"], _fmt(s.get("seconds"), 1)) for s in stages]
    out += [_table(["stage", "status", "seconds"], stage_rows), ""]
    if rows is None:
        out += [f"`{metrics_csv}` does not exist yet: the summarize stage has not run.", ""]
    else:
        out += _model_sections(rows, metrics_csv)
    out += _figure_section(root, figure_dirs)
    return "\n".join(out)


def _model_sections(rows: list[dict[str, Any]], metrics_csv: str) -> list[str]:
    out = ["## Best variant per model", "", "Chosen on val accuracy; test is held out.", ""]
    best = best_variants(rows)
    out += [
        _table(
            ["model", "variant", "epochs", "val_acc", "test_acc"],
            [
                (m, r.get("variant", ""), _fmt(r.get("epochs")), _fmt(r["val_acc"]))
                + (_fmt(r.get("test_acc")),)
                for m, r in best.items()
            ],
        ),
        "",
        "## Soups vs best single epoch",
        "",
    ]
    soup_rows = []
    by_model: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_model.setdefault(str(r.get("model")), {})[str(r.get("variant"))] = r
    for model, variants in by_model.items():
        base = variants.get("best_epoch")
        if base is None:
            continue
        for v in ("best_epoch", "uniform_soup", "greedy_soup"):
            r = variants.get(v)
            if r is None:
                continue
            soup_rows.append(
                (
                    model,
                    v,
                    _fmt(r.get("val_acc")),
                    _fmt_delta(r.get("val_acc"), base.get("val_acc")),
                    _fmt(r.get("test_acc")),
                    _fmt_delta(r.get("test_acc"), base.get("test_acc")),
                )
            )
    if soup_rows:
        header = ["model", "variant", "val_acc", "Δ val", "test_acc", "Δ test"]
        out += [_table(header, soup_rows), ""]
    else:
        out += ["No `best_epoch` rows in the metrics table.", ""]
    others = [r for r in rows if not isinstance(r.get("val_acc"), float)]
    if others:
        out += ["## Other rows (no val accuracy)", ""]
        skip = {"model", "variant", "kind", "epochs"}
        cols = list(dict.fromkeys(k for r in others for k, v in r.items() if k not in skip))
        cols = [k for k in cols if any(isinstance(r.get(k), float) for r in others)][:8]
        rows_out = [
            (r.get("model", ""), r.get("variant", ""), *(_fmt(r.get(k)) for k in cols))
            for r in others
        ]
        out += [_table(["model", "variant", *cols], rows_out), ""]
    out += [f"Full table: `{metrics_csv}` (table artifact `experiment-dag-metrics`).", ""]
    return out


def _figure_section(root: Path, figure_dirs: Sequence[str]) -> list[str]:
    out = ["## Figures", ""]
    for rel in figure_dirs:
        base = root / rel
        if not base.is_dir():
            continue
        for d in [base, *sorted(d for d in base.iterdir() if d.is_dir())]:
            found = d.glob("*.png") if d == base else d.rglob("*.png")
            pngs = sorted(p.relative_to(d) for p in found)
            if not pngs:
                continue
            loose = [p.name for p in pngs if len(p.parts) == 1]
            groups: dict[str, int] = {}
            for p in pngs:
                if len(p.parts) > 1:
                    groups[p.parts[0]] = groups.get(p.parts[0], 0) + 1
            parts = [f"{g}/ ({n})" for g, n in groups.items()]
            parts += loose[:6] + (["..."] if len(loose) > 6 else [])
            where = rel if d == base else f"{rel}/{d.name}"
            out.append(f"- `{where}/` ({len(pngs)} PNG): {', '.join(parts)}")
    if len(out) == 2:
        return out + ["No figures yet under " + ", ".join(f"`{d}/`" for d in figure_dirs), ""]
    return out + ["", f"Under `{root}`.", ""]


def publish_artifacts(
    root: Path,
    metrics_csv: str,
    figure_dirs: Sequence[str],
    stages: Sequence[dict[str, Any]],
    experiment: str | None,
    overrides: Sequence[str],
) -> None:
    """The metrics table, the per-stage table and the markdown summary as Prefect artifacts."""
    path = root / metrics_csv
    rows = read_metrics(path) if path.is_file() else None
    if rows:
        create_table_artifact(
            key="experiment-dag-metrics",
            table=rows,
            description=f"{metrics_csv} in {root}"
            + (f" (experiment {experiment})" if experiment else ""),
        )
    create_table_artifact(
        key="experiment-dag-stages",
        table=[{k: s.get(k) for k in ("stage", "status", "seconds")} for s in stages],
        description="What DVC did with each stage in this run",
    )
    create_markdown_artifact(
        key="experiment-dag-summary",
        markdown=summary_markdown(
            root, rows, metrics_csv, figure_dirs, stages, experiment, overrides
        ),
        description="Best variant per model, soups vs best epoch, figures",
    )
