"""Experiments: what `dvc exp show` knows (workspace, branches, named experiments) in one table,
and a side-by-side comparison of two or more: parameter differences, metric deltas, curves.

DVC runs as a subprocess with a timeout; its answers are cached on git HEAD, the refs and
.dvc/tmp/exps, so the page reruns instantly until an experiment or commit changes something.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import data, dvcexp, ui

DIFF_BG = "background-color: rgba(255, 196, 0, 0.28)"
GOOD, BAD = "color: #1a7f37", "color: #cf222e"


def default_choice(rows: list[dvcexp.ExpRow]) -> list[str]:
    """The newest experiments' baseline and up to two experiments; else the first two rows."""
    exps = [r for r in rows if r.kind == "experiment"]
    if exps:
        base = exps[0].baseline
        return [base, *[r.label for r in exps if r.baseline == base][:2]]
    return [r.label for r in rows[:2]]


def style_params(df: pd.DataFrame):
    return df.style.apply(lambda row: [DIFF_BG if row["differs"] else "" for _ in row], axis=1)


def style_deltas(df: pd.DataFrame):
    delta_cols = [c for c in df.columns if c.startswith("Δ ")]
    value_cols = [c for c in df.columns if c != "metric" and c not in delta_cols]

    def colour(row: pd.Series) -> list[str]:
        lower_better = "loss" in str(row["metric"]).lower()
        out = []
        for col, v in row.items():
            if col in delta_cols and pd.notna(v) and v != 0:
                better = (v < 0) if lower_better else (v > 0)
                out.append(GOOD if better else BAD)
            else:
                out.append("")
        return out

    return (
        df.style.apply(colour, axis=1)
        .format("{:.4f}", subset=value_cols, na_rep="—")
        .format("{:+.4f}", subset=delta_cols, na_rep="—")
    )


def curves_chart(df: pd.DataFrame, model: str, metric: str, domain: list[str]) -> alt.Chart:
    """One model's curve of every chosen experiment (same colours in every model's chart)."""
    sub = df[(df["metric"] == metric) & (df["model"] == model)]
    return (
        alt.Chart(sub, title=f"{model} · {metric}")
        .mark_line(point=True)
        .encode(
            x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1)),
            y=alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False)),
            color=alt.Color(
                "experiment:N",
                scale=alt.Scale(domain=domain, scheme="tableau10"),
                legend=alt.Legend(orient="bottom"),
            ),
            tooltip=["experiment", "model", "epoch", alt.Tooltip("value:Q", format=".4f")],
        )
    )


def main() -> None:
    ui.page_header("Experiments", "what `dvc exp show` knows, compared side by side")
    rows = ui.experiments()
    if ui.is_problem(rows):
        ui.notice(rows)
        st.info(
            "Experiments need the project to be a git repository with at least one commit and "
            "DVC initialised; then `dvc exp run -S train.lr=0.001` records one."
        )
        return
    if not rows:
        st.info("`dvc exp show` lists nothing yet: run `dvc exp run` to record an experiment.")
        return
    only_changed = st.toggle("Only columns that differ between rows", value=True, key="ex_changed")
    table = dvcexp.experiments_table(rows, only_changed=only_changed)
    st.dataframe(table, hide_index=True, placeholder="—")
    st.caption(
        f"{sum(r.kind == 'experiment' for r in rows)} experiment(s), "
        f"{sum(r.kind == 'baseline' for r in rows)} branch/commit baseline(s) and the workspace."
        " Create one with `dvc exp run -S train.lr=0.001 -n my-exp`."
    )
    for r in rows:
        if r.error:
            st.warning(f"DVC reported an error for `{r.label}`: {r.error}")

    st.subheader("Compare")
    labels = [r.label for r in rows]
    chosen = st.multiselect(
        "Experiments (the first is the baseline for the deltas)",
        labels,
        default=[lab for lab in default_choice(rows) if lab in labels],
        key="ex_chosen",
    )
    if len(chosen) < 2:
        st.info("Pick two or more rows to compare them side by side.")
        return
    params = dvcexp.param_diff(rows, chosen)
    only_diff = st.toggle("Only parameters that differ", value=True, key="ex_pdiff")
    shown = params[params["differs"]] if only_diff else params
    st.markdown(f"**Parameters** ({int(params['differs'].sum())} differ, highlighted)")
    if shown.empty:
        st.caption("The chosen rows have the same parameters.")
    else:
        st.dataframe(style_params(shown), hide_index=True)
    deltas = dvcexp.metric_deltas(rows, chosen)
    st.markdown(f"**Metrics** (Δ = row minus `{chosen[0]}`; green = better)")
    if deltas.empty:
        st.caption(f"No metrics recorded for these rows (`{data.METRICS_JSON}`).")
    else:
        word = st.text_input(
            "Filter metrics", value="", key="ex_mfilter", placeholder="e.g. test_acc"
        )
        if word:
            deltas = deltas[deltas["metric"].str.contains(word, case=False, regex=False)]
        st.dataframe(
            style_deltas(deltas),
            hide_index=True,
            height=min(38 + 35 * len(deltas), 640),
            placeholder="—",
        )

    by_label = {r.label: r for r in rows}
    study = data.study_models(ui.root())
    curves = ui.experiment_curves([by_label[lab] for lab in chosen], study)
    if ui.is_problem(curves):
        ui.notice(curves)
        return
    if curves.empty:
        st.info(
            f"No training curves (`{data.TRAIN_DIR}/<model>/plots/metrics/*.tsv`) in the chosen "
            "revisions: run `dvc repro` and commit, or record them with `dvc exp run`."
        )
        return
    metrics = [m for m in data.CURVE_METRICS if m in set(curves["metric"])]
    metric = st.radio(
        "Curve",
        metrics,
        horizontal=True,
        key="ex_metric",
        index=metrics.index("val_acc") if "val_acc" in metrics else 0,
    )
    models = list(dict.fromkeys(curves["model"]))
    cols = st.columns(min(3, len(models)))
    for i, model in enumerate(models):
        cols[i % len(cols)].altair_chart(
            curves_chart(curves, model, metric, chosen), width="stretch"
        )


main()
