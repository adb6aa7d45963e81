"""The metrics table: every evaluated variant of every model as one row, plus headlines.

reports/metrics.csv is what the dashboard, the flows and people read; reports/metrics.json
holds the headline numbers nested by model and variant so `dvc exp show` lists them.
"""

from __future__ import annotations

import pandas as pd

HEADLINE_VARIANTS = ("best_epoch", "uniform_soup", "greedy_soup")
VARIANT_ORDER = {"best_epoch": 0, "uniform_soup": 1, "greedy_soup": 2}


def eval_rows(report: dict) -> list[dict]:
    """One row per variant of an evaluate-stage report."""
    rows = []
    for name, v in report["variants"].items():
        rows.append(
            {
                "model": report["model"],
                "variant": name,
                "kind": v["kind"],
                "epochs": ";".join(str(e) for e in v["epochs"]),
                "val_acc": round(v["val"]["accuracy"], 6),
                "test_acc": round(v["test"]["accuracy"], 6),
                "val_loss": round(v["val"]["loss"], 6),
                "test_loss": round(v["test"]["loss"], 6),
            }
        )
    return rows


def metrics_table(
    rows: list[dict], extra: dict[tuple[str, str], dict] | None = None
) -> pd.DataFrame:
    """The table sorted by model then variant (headline variants first), with extra columns
    (attention or caption scores) merged in by (model, variant)."""
    for row in rows:
        row.update((extra or {}).get((row["model"], row["variant"]), {}))
    df = pd.DataFrame(rows)
    order = df["variant"].map(lambda v: VARIANT_ORDER.get(v, 9))
    return df.assign(_o=order).sort_values(["model", "_o", "variant"]).drop(columns="_o")


def headline(df: pd.DataFrame) -> dict:
    """{model: {variant: {val_acc, test_acc, ...}}} for the headline variants."""
    out: dict = {}
    for row in df[df["variant"].isin(HEADLINE_VARIANTS)].to_dict("records"):
        numbers = {k: v for k, v in row.items() if k not in ("model", "variant", "kind", "epochs")}
        out.setdefault(row["model"], {})[row["variant"]] = {
            k: v for k, v in numbers.items() if pd.notna(v)
        }
    return out
