"""Leaderboard: per model, the best single epoch against the uniform and greedy soups, with the
architecture, image size and patch each model key ran (the CPU default's `B_16` is a small
mirror, not the released B_16).

Reads reports/metrics.csv and models/<M>/selection.json (the selected epochs in rank order).
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import ui
from vitlab.core import contract

LABELS = {
    contract.BEST_EPOCH: "best",
    contract.UNIFORM_SOUP: "uniform",
    contract.GREEDY_SOUP: "greedy",
}


def headline_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per model with headline rows: what it ran, its selected epochs, and val/test
    accuracy of the best epoch and both soups."""
    out = []
    for model, g in df[df["variant"].isin(contract.HEADLINE_VARIANTS)].groupby("model", sort=False):
        by = g.set_index("variant")
        first = g.iloc[0]
        row = {
            "model": model,
            "arch": first["arch"],
            "image size": first["image_size"],
            "patch": first["patch"],
        }
        ranked = ui.selected_epochs(model)
        row["selected epochs"] = ", ".join(map(str, ranked)) if ranked else "—"
        for variant, label in LABELS.items():
            for split in contract.EVAL_SPLITS:
                acc = by[f"{split}_acc"].get(variant)
                row[f"{label} {split}"] = "—" if pd.isna(acc) else f"{acc:.4f}"
        greedy = by["epochs"].get(contract.GREEDY_SOUP)
        row["greedy ingredients"] = "—" if pd.isna(greedy) else greedy.replace(";", ", ")
        out.append(row)
    return pd.DataFrame(out)


def with_gains(df: pd.DataFrame) -> pd.DataFrame:
    """Each row's accuracy minus its model's best epoch (`gain_val`, `gain_test`)."""
    best = df[df["variant"] == contract.BEST_EPOCH].drop_duplicates("model").set_index("model")
    return df.assign(
        gain_val=df["val_acc"] - df["model"].map(best["val_acc"]),
        gain_test=df["test_acc"] - df["model"].map(best["test_acc"]),
    )


def gains_chart(df: pd.DataFrame) -> alt.Chart:
    """Soup minus best epoch, in accuracy points, per model, soup and split."""
    soups = with_gains(df)[df["variant"].isin(contract.SOUPS)]
    long = soups.melt(["model", "variant"], ["gain_val", "gain_test"], "split", "gain").dropna()
    long["series"] = long["variant"].map(LABELS) + " · " + long["split"].str[5:]
    long["points"] = long["gain"] * 100
    return (
        alt.Chart(long, title="Soup gain over the best single epoch (accuracy points)")
        .mark_bar()
        .encode(
            x=alt.X("model:N", title=None, axis=alt.Axis(labelAngle=0)),
            xOffset="series:N",
            y=alt.Y("points:Q", title="soup − best epoch (points)"),
            color=alt.Color("series:N", title="soup · split"),
            tooltip=["model", "series", alt.Tooltip("gain:Q", format="+.4f")],
        )
    )


def main() -> None:
    ui.page_header("Leaderboard", "best single epoch vs uniform soup vs greedy soup")
    df = ui.metrics()
    if df is None:
        return
    st.subheader("Headline accuracy")
    head = headline_table(df)
    if head.empty:
        st.info(f"`{contract.METRICS_CSV}` has no headline rows yet: run `dvc repro`.")
    else:
        st.table(head.set_index("model"))
        st.caption(
            "Selected epochs in rank order (best first). Epochs are selected and the greedy "
            "soup is built on val, so val is optimistic: read test beside it."
        )
    st.subheader("All rows")
    models = list(dict.fromkeys(df["model"]))
    variants = ui.variant_order(df["variant"].unique())
    c1, c2 = st.columns(2)
    pick_m = c1.multiselect("Models", models, default=models, key="lb_models")
    default = [v for v in variants if v in contract.HEADLINE_VARIANTS] or variants
    pick_v = c2.multiselect("Variants", variants, default=default, key="lb_variants")
    table = with_gains(df)
    table = table[table["model"].isin(pick_m) & table["variant"].isin(pick_v)]
    number = st.column_config.NumberColumn(format="%.4f")
    delta = st.column_config.NumberColumn(format="%+.4f")
    formats = {c: number for c in contract.ACCURACY_COLUMNS} | {
        "gain_val": delta,
        "gain_test": delta,
    }
    st.dataframe(
        table.dropna(axis=1, how="all"), hide_index=True, column_config=formats, placeholder="—"
    )
    st.caption("Click a header to sort; `gain_*` = accuracy minus the model's best epoch.")
    if df["variant"].isin(contract.SOUPS).any():
        st.altair_chart(gains_chart(df[df["model"].isin(pick_m)]), width="stretch")


main()
