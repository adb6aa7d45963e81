"""Per-class: accuracy per class and the confusion matrix of any model, variant and split.

Reads reports/eval/<M>.json (every kept epoch, the best epoch and both soups on val and test).
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from dashboard import ui
from vitlab.core import contract


def frames(report: dict) -> dict[tuple[str, str], tuple[dict, pd.DataFrame, pd.DataFrame]]:
    """{(variant, split): (scores, per-class table, confusion cells)} of an eval report."""
    classes = [str(c) for c in report["classes"]]
    out = {}
    for name, v in report["variants"].items():
        for split in contract.EVAL_SPLITS:
            s = v[split]
            conf = pd.DataFrame(s["confusion"], index=classes, columns=classes).astype(int)
            off = conf.mask(np.eye(len(classes), dtype=bool), 0)  # the confusions only
            table = pd.DataFrame(
                {
                    "class": classes,
                    "accuracy": [float(a) for a in s["per_class_accuracy"]],
                    "correct": [int(conf.loc[c, c]) for c in classes],
                    "support": conf.sum(axis=1).tolist(),
                    "most confused with": [
                        off.loc[c].idxmax() if off.loc[c].max() > 0 else "" for c in classes
                    ],
                }
            )
            cells = (
                conf.rename_axis("true")
                .reset_index()
                .melt("true", var_name="predicted", value_name="count")
            )
            cells["share"] = cells["count"] / cells.groupby("true")["count"].transform("sum")
            about = {"accuracy": s["accuracy"], "loss": s["loss"], "epochs": v["epochs"]}
            out[(name, split)] = (about, table, cells)
    return out


def accuracy_chart(table: pd.DataFrame, title: str) -> alt.Chart:
    return (
        alt.Chart(table, title=title, height=max(200, 22 * len(table)))
        .mark_bar()
        .encode(
            y=alt.Y("class:N", sort="-x", title=None),
            x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color(
                "accuracy:Q", scale=alt.Scale(scheme="redyellowgreen", domain=[0, 1]), legend=None
            ),
            tooltip=list(table.columns),
        )
    )


def confusion_chart(cells: pd.DataFrame, classes: list[str], normalise: bool) -> alt.Chart:
    """Non-zero cells only, every class on both axes, the counts printed."""
    axis = {"scale": alt.Scale(domain=classes), "axis": alt.Axis(labelOverlap=False)}
    base = (
        alt.Chart(
            cells,
            width=alt.Step(22),
            height=alt.Step(22),
            title="Confusion matrix (rows: true class)",
        )
        .transform_filter(alt.datum.count > 0)
        .encode(x=alt.X("predicted:N", **axis), y=alt.Y("true:N", **axis))
    )
    colour = alt.Color("share:Q" if normalise else "count:Q", scale=alt.Scale(scheme="blues"))
    rects = base.mark_rect().encode(
        color=colour, tooltip=["true", "predicted", "count", alt.Tooltip("share:Q", format=".1%")]
    )
    return rects + base.mark_text().encode(text="count:Q")


def main() -> None:
    ui.page_header("Per-class", "per-class accuracy and confusion matrix of any variant")
    models = ui.models()
    if not models:
        return
    c1, c2, c3 = st.columns([2, 2, 1])
    model = c1.selectbox("Model", models, key="pc_model")
    report = ui.get(
        contract.eval_report(model), f"dvc repro evaluate@{model}", lambda r: (r, frames(r))
    )
    if report is None:
        return
    report, by = report
    arch = report.get("architecture", {})
    st.caption(
        f"{model} ran {arch.get('arch')}, {arch.get('image_size')} px images, "
        f"patch {arch.get('patch')}"
    )
    variant = c2.selectbox("Variant", ui.variant_order(report["variants"]), key="pc_variant")
    split = c3.radio("Split", contract.EVAL_SPLITS[::-1], horizontal=True, key="pc_split")
    normalise = st.toggle("Colour by share of the true class", value=False, key="pc_norm")
    about, table, cells = by[(variant, split)]
    m1, m2, m3 = st.columns(3)
    m1.metric(f"{split} accuracy", f"{about['accuracy']:.4f}")
    m2.metric(f"{split} loss", f"{about['loss']:.4f}")
    m3.metric("epochs", ", ".join(map(str, about["epochs"])))
    left, right = st.columns([2, 3])
    left.altair_chart(accuracy_chart(table, f"{model} {variant} ({split})"), width="stretch")
    right.dataframe(
        table.sort_values(["accuracy", "class"]),
        hide_index=True,
        column_config={"accuracy": st.column_config.ProgressColumn(format="%.3f", max_value=1.0)},
    )
    classes = [str(c) for c in report["classes"]]
    st.altair_chart(confusion_chart(cells, classes, normalise), width="content")


main()
