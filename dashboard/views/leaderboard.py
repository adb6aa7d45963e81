"""Leaderboard: per model, the best single epoch against the uniform and greedy soups.

Reads reports/metrics.csv (THE table) and models/<M>/selection.json (the selected epochs in
rank order). Before `summarize` has run it falls back to reports/eval/<M>.json.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import data, ui

TABLE_FILES = [data.METRICS_CSV]
SELECTION_FILES = ["models/*/selection.json", data.PARAMS_FILE]


def load_table() -> pd.DataFrame | None:
    """The metrics table, or the partial-run fallback, or None after showing why."""
    df = ui.load(data.read_metrics_table, TABLE_FILES)
    if not ui.is_problem(df):
        return df
    problem = df
    models = data.pick_models(data.study_models(ui.root()), data.eval_models(ui.root()))
    if problem.kind == "missing" and models:
        fallback = ui.load(data.metrics_from_evals, [f"{data.EVAL_DIR}/*.json"], tuple(models))
        if not ui.is_problem(fallback):
            st.info(
                f"`{data.METRICS_CSV}` is not written yet; showing the per-model evaluations "
                f"in `{data.EVAL_DIR}/`. Run `dvc repro` to finish the run and write the table."
            )
            return fallback
        ui.notice(fallback)
        return None
    ui.notice(problem)
    return None


def selections(models: list[str]) -> dict[str, list[int]]:
    out = {}
    for model in models:
        sel = ui.load(data.read_selection, [f"models/{model}/selection.json"], model)
        if not ui.is_problem(sel):
            out[model] = [s["epoch"] for s in sel["selected"]]
    return out


SERIES = ["uniform · val", "uniform · test", "greedy · val", "greedy · test"]
SERIES_COLOURS = ["#9ecae1", "#3182bd", "#fdae6b", "#e6550d"]


def gains_chart(df: pd.DataFrame) -> alt.LayerChart:
    gains = data.soup_gains(df).assign(points=lambda d: d["gain"] * 100)
    bars = (
        alt.Chart(gains, title="Soup gain over the best single epoch (accuracy points)")
        .mark_bar()
        .encode(
            x=alt.X("model:N", title=None, axis=alt.Axis(labelAngle=0)),
            xOffset=alt.XOffset("series:N", sort=SERIES),
            y=alt.Y("points:Q", title="soup − best epoch (points)"),
            color=alt.Color(
                "series:N",
                title="soup · split",
                scale=alt.Scale(domain=SERIES, range=SERIES_COLOURS),
            ),
            tooltip=["model", "soup", "split", alt.Tooltip("gain:Q", format="+.4f")],
        )
    )
    labels = (
        alt.Chart(gains)
        .mark_text(fontSize=11, dy=-8)
        .encode(
            x=alt.X("model:N"),
            xOffset=alt.XOffset("series:N", sort=SERIES),
            y=alt.Y("top:Q"),
            text=alt.Text("points:Q", format="+.2f"),
        )
        .transform_calculate(top="max(datum.points, 0)")
    )
    zero = alt.Chart(pd.DataFrame({"y": [0]})).mark_rule(color="#666").encode(y="y:Q")
    return alt.layer(bars, labels, zero)


def main() -> None:
    ui.page_header("Leaderboard", "best single epoch vs uniform soup vs greedy soup")
    df = load_table()
    if df is None:
        return
    models = list(dict.fromkeys(df["model"]))
    selected = selections(models)
    head = data.headline_table(df, selected)

    st.subheader("Headline accuracy")
    if head.empty:
        st.info(
            f"`{data.METRICS_CSV}` has no best_epoch / uniform_soup / greedy_soup rows yet; "
            "run `dvc repro` to evaluate the soups."
        )
    else:
        shown = head.copy()
        for col in shown.columns:
            if col.endswith((" val", " test")):
                shown[col] = shown[col].map(data.fmt_acc)
        st.table(shown.set_index("model"))
        st.caption(
            "Selected epochs in rank order (best first, from `models/<M>/selection.json`). "
            "Epochs are selected and the greedy soup is built on val, so val is optimistic: "
            "read test beside it."
        )

    st.subheader("All rows")
    c1, c2 = st.columns(2)
    model_pick = c1.multiselect("Models", models, default=models, key="lb_models")
    variants = data.variant_order(df["variant"].unique())
    default = [v for v in variants if v in data.HEADLINE] or variants
    variant_pick = c2.multiselect("Variants", variants, default=default, key="lb_variants")
    table = data.with_gains(df)
    table = table[table["model"].isin(model_pick) & table["variant"].isin(variant_pick)]
    acc = st.column_config.NumberColumn(format="%.4f")
    delta = st.column_config.NumberColumn(format="%+.4f")
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "val_acc": acc,
            "test_acc": acc,
            "val_loss": acc,
            "test_loss": acc,
            "gain_val": delta,
            "gain_test": delta,
        },
        placeholder="—",
    )
    st.caption("Click a column header to sort; `gain_*` = accuracy minus the model's best epoch.")

    if not data.soup_gains(df).empty:
        st.subheader("Soup gains")
        st.altair_chart(gains_chart(df[df["model"].isin(model_pick)]), width="stretch")


main()
