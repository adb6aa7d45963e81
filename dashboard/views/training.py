"""Training: per-epoch curves of every model overlaid, the selected epochs marked.

Reads reports/train/<M>/plots/metrics/*.tsv (dvclive), falling back to models/<M>/history.json,
and models/<M>/selection.json for the epochs averaged into the soups.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import data, ui

TITLES = {
    "train_loss": "train loss",
    "val_loss": "val loss",
    "val_acc": "val accuracy",
    "lr": "learning rate",
}


def curve_chart(curves: pd.DataFrame, metrics: list[str], title: str, y_title: str) -> alt.Chart:
    """Lines per model (dashed = train), selected epochs as large ringed points."""
    df = curves[curves["metric"].isin(metrics)].assign(series=lambda d: d["metric"].map(TITLES))
    base = alt.Chart(df, title=title).encode(
        x=alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1)),
        y=alt.Y("value:Q", title=y_title, scale=alt.Scale(zero=False)),
        color=alt.Color("model:N", title="model", scale=alt.Scale(scheme="tableau10")),
    )
    dash = alt.StrokeDash(
        "series:N",
        title="curve",
        scale=alt.Scale(domain=["train loss", "val loss"], range=[[6, 4], [1, 0]]),
        legend=None,  # the chart's title says which is dashed
    )
    lines = base.mark_line(point=alt.OverlayMarkDef(size=18)).encode(
        detail="series:N",
        tooltip=["model", "series", "epoch", alt.Tooltip("value:Q", format=".4f")],
    )
    if len(metrics) > 1:
        lines = lines.encode(strokeDash=dash)
    marks = (
        base.transform_filter(alt.datum.selected)
        .mark_point(size=160, filled=False, strokeWidth=2.5)
        .encode(
            shape=alt.value("circle"),
            tooltip=["model", "series", "epoch", "rank", alt.Tooltip("value:Q", format=".4f")],
        )
    )
    if len(metrics) > 1:  # mark the selected epochs on the val curve only
        marks = marks.transform_filter(alt.datum.metric == "val_loss")
    return alt.layer(lines, marks)


def main() -> None:
    ui.page_header("Training", "per-epoch curves of every model; rings mark the selected epochs")
    root = ui.root()
    models = data.pick_models(data.study_models(root), data.curve_models(root))
    if not models:
        st.info(
            f"No training curves yet: `{data.TRAIN_DIR}/<model>/` is missing. Run `dvc repro` "
            "(stage train@<model>) to train the models and log their curves."
        )
        return
    for model in data.study_models(root):
        if model not in models:
            st.info(f"`{data.TRAIN_DIR}/{model}/` is missing: run `dvc repro train@{model}`.")
    pick = st.multiselect("Models", models, default=models, key="tr_models")

    frames, selections = [], {}
    for model in pick:
        patterns = [f"{data.TRAIN_DIR}/{model}/plots/metrics/*.tsv", f"models/{model}/history.json"]
        result = ui.load(data.read_curves, patterns, model)
        if ui.is_problem(result):
            ui.notice(result)
            continue
        curves, problems = result
        for p in problems:
            ui.notice(p)
        if not curves.empty:
            frames.append(curves)
        sel = ui.load(data.read_selection, [f"models/{model}/selection.json"], model)
        if ui.is_problem(sel):
            if sel.kind != "missing":
                ui.notice(sel)
        else:
            selections[model] = [s["epoch"] for s in sel["selected"]]
    if not frames:
        return
    curves = data.mark_selected(pd.concat(frames, ignore_index=True), selections)
    have = set(curves["metric"])

    c1, c2 = st.columns(2)
    if have & {"train_loss", "val_loss"}:
        c1.altair_chart(
            curve_chart(curves, ["train_loss", "val_loss"], "Loss (dashed: train)", "loss"),
            width="stretch",
        )
    if "val_acc" in have:
        c2.altair_chart(
            curve_chart(curves, ["val_acc"], "Validation accuracy", "accuracy"), width="stretch"
        )
    if "lr" in have:
        c1.altair_chart(curve_chart(curves, ["lr"], "Learning rate", "lr"), width="stretch")

    rows = []
    for model, epochs in selections.items():
        got = curves[(curves["model"] == model) & curves["selected"]]
        for rank, epoch in enumerate(epochs, start=1):
            at = got[got["epoch"] == epoch].set_index("metric")["value"]
            rows.append(
                {
                    "model": model,
                    "rank": rank,
                    "epoch": epoch,
                    "val_acc": at.get("val_acc"),
                    "val_loss": at.get("val_loss"),
                }
            )
    with c2:
        st.markdown("**Selected epochs** (averaged into the soups; rank 1 = best epoch)")
        if rows:
            fmt = st.column_config.NumberColumn(format="%.4f")
            st.dataframe(
                pd.DataFrame(rows), hide_index=True, column_config={"val_acc": fmt, "val_loss": fmt}
            )
        else:
            st.info(
                "No `models/<model>/selection.json` yet: run `dvc repro` (stage select@<model>)."
            )


main()
