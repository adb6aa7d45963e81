"""Training: per-epoch curves of every model of params.yaml overlaid, the selected epochs ringed.

Reads reports/train/<M>/plots/metrics/<curve>.tsv (dvclive) and models/<M>/selection.json.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import ui
from vitlab.core import contract

CHARTS = (  # (title, curves): the selected epochs are ringed on the first curve of each
    ("Loss (dashed: train)", ["val_loss", "train_loss"]),
    ("Validation accuracy", ["val_acc"]),
    ("Learning rate", ["lr"]),
)


def curve_chart(df: pd.DataFrame, title: str, curves: list[str]) -> alt.Chart:
    """Lines per model (dashed = train), the selected epochs as large rings on curves[0]."""
    sub = df[df["curve"].isin(curves)]
    base = alt.Chart(sub, title=title).encode(
        x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1)),
        y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
        color=alt.Color("model:N", scale=alt.Scale(scheme="tableau10")),
    )
    lines = base.mark_line(point=True).encode(
        detail="curve:N",
        strokeDash=alt.StrokeDash("curve:N", legend=None, sort=curves),
        tooltip=["model", "curve", "epoch", alt.Tooltip("value:Q", format=".4f")],
    )
    rings = (
        base.transform_filter((alt.datum.curve == curves[0]) & alt.datum.selected)
        .mark_point(size=160, filled=False, strokeWidth=2.5)
        .encode(tooltip=["model", "epoch", "rank", alt.Tooltip("value:Q", format=".4f")])
    )
    return alt.layer(lines, rings)


def model_curves(model: str) -> pd.DataFrame | None:
    """Every curve of one model with the selected epochs' rank (None elsewhere)."""
    command = f"dvc repro train@{model}"
    if not (ui.root() / contract.train_curves(model)).is_dir():
        ui.show(ui.Notice(f"`{contract.train_curves(model)}/` is missing: run `{command}`.", True))
        return None
    frames = []
    for curve in contract.CURVES:
        got = ui.get(
            contract.curve_file(model, curve), command, lambda t, c=curve: ui.curve_frame(t, c)
        )
        if got is not None:
            frames.append(got)
    if not frames:
        return None
    ranked = ui.selected_epochs(model) or []
    df = pd.concat(frames, ignore_index=True).assign(model=model)
    rank = df["epoch"].map({e: i + 1 for i, e in enumerate(ranked)})
    return df.assign(rank=rank.astype("Int64"), selected=rank.notna())


def main() -> None:
    ui.page_header("Training", "per-epoch curves of every model; rings mark the selected epochs")
    models = ui.models()
    if not models:
        return
    pick = st.multiselect("Models", models, default=models, key="tr_models")
    frames = [f for f in map(model_curves, pick) if f is not None]
    if not frames:
        return
    df = pd.concat(frames, ignore_index=True)
    left, right = st.columns(2)
    for i, (title, curves) in enumerate(CHARTS):
        if df["curve"].isin(curves).any():
            (left if i % 2 == 0 else right).altair_chart(
                curve_chart(df, title, curves), width="stretch"
            )
    with right:
        st.markdown("**Selected epochs** (averaged into the soups; rank 1 = best epoch)")
        if not df["selected"].any():
            st.info("No `models/<model>/selection.json` yet: run `dvc repro select@<model>`.")
            return
        archs = ui.architectures(ui.metrics(notify=False))
        chosen = df[df["selected"]].pivot_table("value", ["model", "rank", "epoch"], "curve")
        chosen = chosen.reset_index().sort_values(["model", "rank"])
        chosen.insert(1, "ran", chosen["model"].map(archs).fillna("(not evaluated yet)"))
        fmt = st.column_config.NumberColumn(format="%.4f")
        st.dataframe(chosen, hide_index=True, column_config=dict.fromkeys(contract.CURVES, fmt))


main()
