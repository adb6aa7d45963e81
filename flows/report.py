"""What a flow run publishes: the metrics table, the per-stage table and a markdown summary.

Kept apart from flows/dag.py (which schedules the stages) so the report can be read, and
changed, on its own: best variant per model, soups against the best single epoch, figures.
The metrics table is read with vitlab's own reader, the paths come from the output contract.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from vitlab.core import contract
from vitlab.report import read_table

FIGURE_DIRS = (contract.FIGURES, contract.CAPTIONS)
VAL_ACC, TEST_ACC, VAL_LOSS, _ = contract.ACCURACY_COLUMNS


def fmt(x: Any, digits: int = 4) -> str:
    """A table cell: floats to `digits` places, blank for a missing value."""
    if x is None or (isinstance(x, float) and pd.isna(x)):
        return ""
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def best_variants(df: pd.DataFrame) -> pd.DataFrame:
    """Per model, the variant with the highest val_acc (ties: lower val_loss, then first)."""
    ranked = df.dropna(subset=[VAL_ACC]).sort_values(
        [VAL_ACC, VAL_LOSS], ascending=[False, True], kind="stable"
    )
    return ranked.drop_duplicates("model").sort_values("model", kind="stable")


def summary_markdown(
    root: Path,
    df: pd.DataFrame | None,
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
    rows = [
        (s["stage"], s["status"], fmt(s.get("seconds"), 1), s.get("worker") or "") for s in stages
    ]
    out += [table(["stage", "status", "seconds", "worker"], rows), ""]
    if df is None:
        out += [f"`{contract.METRICS_CSV}` does not exist yet: summarize has not run.", ""]
    else:
        out += _model_sections(df)
    return "\n".join(out + _figure_section(root))


def _model_sections(df: pd.DataFrame) -> list[str]:
    out = ["## Best variant per model", "", "Chosen on val accuracy; test is held out.", ""]
    best = best_variants(df)
    cols = ["model", "variant", "epochs", VAL_ACC, TEST_ACC]
    out += [table(cols, ([fmt(r.get(c)) for c in cols] for r in best.to_dict("records"))), ""]
    out += ["## Soups vs best single epoch", ""]
    soups = []
    for model, rows in df.groupby("model", sort=False):
        by = {r["variant"]: r for r in rows.to_dict("records")}
        if (base := by.get(contract.BEST_EPOCH)) is None:
            continue
        for r in (by[v] for v in contract.HEADLINE_VARIANTS if v in by):
            cells = [model, r["variant"]]
            for col in (VAL_ACC, TEST_ACC):
                delta = r[col] - base[col]
                cells += [fmt(r[col]), "" if pd.isna(delta) else f"{delta:+.4f}"]
            soups.append(cells)
    header = ["model", "variant", VAL_ACC, "Δ val", TEST_ACC, "Δ test"]
    none = f"No `{contract.BEST_EPOCH}` rows in the metrics table."
    out += [table(header, soups) if soups else none, ""]
    others = df[df[VAL_ACC].isna()]
    if len(others):
        numeric = [
            c
            for c in others.columns
            if c not in contract.TABLE_KEYS
            and pd.api.types.is_numeric_dtype(df[c])
            and others[c].notna().any()
        ][:8]
        rows = (
            [r["model"], r["variant"], *(fmt(r[c]) for c in numeric)] for _, r in others.iterrows()
        )
        out += [
            "## Other rows (no val accuracy)",
            "",
            table(["model", "variant", *numeric], rows),
            "",
        ]
    out += [f"Full table: `{contract.METRICS_CSV}` (table artifact `experiment-dag-metrics`).", ""]
    return out


def _figure_section(root: Path) -> list[str]:
    out = ["## Figures", ""]
    for rel in FIGURE_DIRS:
        base = root / rel
        if not base.is_dir():
            continue
        for d in [base, *sorted(d for d in base.iterdir() if d.is_dir())]:
            pngs = sorted(p.relative_to(d) for p in (d.glob if d == base else d.rglob)("*.png"))
            if not pngs:
                continue
            groups: dict[str, int] = {}
            for p in pngs:
                if len(p.parts) > 1:
                    groups[p.parts[0]] = groups.get(p.parts[0], 0) + 1
            loose = [p.name for p in pngs if len(p.parts) == 1]
            parts = [f"{g}/ ({n})" for g, n in groups.items()]
            parts += loose[:6] + (["..."] if len(loose) > 6 else [])
            where = rel if d == base else rel / d.name
            out.append(f"- `{where}/` ({len(pngs)} PNG): {', '.join(parts)}")
    if len(out) == 2:
        return out + ["No figures yet under " + ", ".join(f"`{d}/`" for d in FIGURE_DIRS), ""]
    return out + ["", f"Under `{root}`.", ""]


def publish_artifacts(
    root: Path, stages: Sequence[dict[str, Any]], experiment: str | None, overrides: Sequence[str]
) -> None:
    """The metrics table, the per-stage table and the markdown summary as Prefect artifacts."""
    path = root / contract.METRICS_CSV
    df = read_table(str(path)) if path.is_file() else None
    if df is not None and len(df):
        create_table_artifact(
            key="experiment-dag-metrics",
            table=df.to_dict("records"),
            description=f"{contract.METRICS_CSV} in {root}"
            + (f" (experiment {experiment})" if experiment else ""),
        )
    create_table_artifact(
        key="experiment-dag-stages",
        table=[{k: s.get(k) for k in ("stage", "status", "seconds", "worker")} for s in stages],
        description="What DVC did with each stage in this run, and where",
    )
    create_markdown_artifact(
        key="experiment-dag-summary",
        markdown=summary_markdown(root, df, stages, experiment, overrides),
        description="Best variant per model, soups vs best epoch, figures",
    )
