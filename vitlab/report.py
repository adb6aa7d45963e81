"""The metrics table: every evaluated variant of every model as one row, plus headlines.

reports/metrics.csv is what the dashboard, the flows and people read; reports/metrics.json
holds the headline numbers nested by model and variant so `dvc exp show` lists them. Every row
says which architecture, image size and patch it ran, so `B_16` of the CPU default (a small
mirror) is never mistaken for the released B_16. Torch-free: the dashboard imports it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vitlab.core import contract


def eval_rows(report: dict) -> list[dict]:
    """One row per variant of an evaluate-stage report."""
    arch = report.get("architecture", {})
    rows = []
    for name, v in report["variants"].items():
        rows.append(
            {
                "model": report["model"],
                "arch": arch.get("arch"),
                "image_size": arch.get("image_size"),
                "patch": arch.get("patch"),
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


def score_columns(scores: dict) -> dict[str, dict[str, float]]:
    """scores.json ({variant: {method: {...}}}) as metrics-table columns per variant:
    pointing_<method>, energy_<method>, plus pointing_uniform and energy_uniform."""
    out: dict[str, dict[str, float]] = {}
    for variant, methods in scores.items():
        row: dict[str, float] = {}
        for method, s in methods.items():
            row[contract.score_column("pointing", method)] = s["pointing"]
            row[contract.score_column("energy", method)] = s["energy"]
            row["pointing_uniform"] = s["pointing_uniform"]
            row["energy_uniform"] = s["energy_uniform"]
        out[variant] = row
    return out


def metrics_table(
    rows: list[dict], extra: dict[tuple[str, str], dict] | None = None
) -> pd.DataFrame:
    """The table sorted by model then variant (headline variants first), with extra columns
    (attention or caption scores) merged in by (model, variant)."""
    for row in rows:
        row.update((extra or {}).get((row["model"], row["variant"]), {}))
    df = pd.DataFrame(rows)
    for col in ("image_size", "patch"):  # integers, blank for the captioner's rows
        if col in df:
            df[col] = df[col].astype("Int64")
    order = df["variant"].map(lambda v: contract.VARIANT_ORDER.get(v, 9))
    return df.assign(_o=order).sort_values(["model", "_o", "variant"]).drop(columns="_o")


def headline(df: pd.DataFrame) -> dict:
    """{model: {variant: {val_acc, test_acc, ...}}} for the headline variants."""
    out: dict = {}
    text = set(contract.TABLE_KEYS)
    for row in df[df["variant"].isin(contract.HEADLINE_VARIANTS)].to_dict("records"):
        numbers = {k: v for k, v in row.items() if k not in text}
        out.setdefault(row["model"], {})[row["variant"]] = {
            k: v for k, v in numbers.items() if pd.notna(v)
        }
    return out


def read_table(path: str | Path) -> pd.DataFrame:
    """reports/metrics.csv as written by `summarize`: text columns as text, image size and patch
    as integers (blank on the captioner's rows)."""
    df = pd.read_csv(path, dtype={k: str for k in ("model", "arch", "variant", "kind", "epochs")})
    return df.astype({c: "Int64" for c in ("image_size", "patch") if c in df.columns})
