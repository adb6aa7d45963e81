"""Per-class: accuracy per class and the confusion matrix of any model variant and split.

Reads reports/eval/<M>.json (every kept epoch, best epoch and both soups on val and test).
"""

from __future__ import annotations

import altair as alt
import streamlit as st

from dashboard import data, ui

SPLITS = ["test", "val"]


def accuracy_chart(frame, title: str) -> alt.Chart:
    height = max(200, 22 * len(frame))
    return (
        alt.Chart(frame, title=title, height=height)
        .mark_bar()
        .encode(
            y=alt.Y("class:N", sort="-x", title=None, axis=alt.Axis(labelOverlap=False)),
            x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1]), title="accuracy"),
            color=alt.Color(
                "accuracy:Q", scale=alt.Scale(scheme="redyellowgreen", domain=[0, 1]), legend=None
            ),
            tooltip=[
                "class",
                alt.Tooltip("accuracy:Q", format=".4f"),
                "correct",
                "support",
                "most confused with",
            ],
        )
    )


def confusion_chart(frame, normalise: bool, classes: list[str]) -> alt.Chart:
    """Non-zero cells only (a clean diagonal), every class on both axes, counts printed when
    there is room."""
    cell = 22 if len(classes) <= 16 else 16
    font = 11 if len(classes) <= 16 else 9
    x = alt.X(
        "predicted:N",
        scale=alt.Scale(domain=classes),
        title="predicted",
        axis=alt.Axis(labelOverlap=False, labelAngle=-60, labelFontSize=font),
    )
    y = alt.Y(
        "true:N",
        scale=alt.Scale(domain=classes),
        title="true",
        axis=alt.Axis(labelOverlap=False, labelFontSize=font),
    )
    base = alt.Chart(
        frame,
        width=alt.Step(cell),
        height=alt.Step(cell),
        title="Confusion matrix (rows: true class)",
    )
    cells = (
        base.transform_filter(alt.datum.count > 0)
        .mark_rect(stroke="white", strokeWidth=0.5)
        .encode(
            x=x,
            y=y,
            color=alt.Color(
                "value:Q",
                scale=alt.Scale(scheme="blues", domainMin=0),
                title="share of row" if normalise else "count",
            ),
            tooltip=["true", "predicted", "count", alt.Tooltip("share:Q", format=".1%")],
        )
    )
    text = (
        base.transform_filter(alt.datum.count > 0)
        .mark_text(fontSize=font)
        .encode(
            x=x,
            y=y,
            text=alt.Text("count:Q"),
            color=alt.condition(alt.datum.share > 0.5, alt.value("white"), alt.value("black")),
        )
    )
    return cells + text


def main() -> None:
    ui.page_header("Per-class", "per-class accuracy and confusion matrix of any variant")
    root = ui.root()
    models = data.pick_models(data.study_models(root), data.eval_models(root))
    if not models:
        st.info(
            f"No evaluations yet: `{data.EVAL_DIR}/<model>.json` is missing. Run `dvc repro` "
            "(stage evaluate@<model>) to evaluate the epochs and soups."
        )
        return
    c1, c2, c3 = st.columns([2, 2, 1])
    model = c1.selectbox("Model", models, key="pc_model")
    report = ui.load(data.read_eval, [f"{data.EVAL_DIR}/{model}.json"], model)
    if ui.is_problem(report):
        ui.notice(report)
        return
    variants = data.variant_order(report["variants"])
    variant = c2.selectbox("Variant", variants, key="pc_variant")
    split = c3.radio("Split", SPLITS, horizontal=True, key="pc_split")
    normalise = st.toggle("Normalise confusion rows", value=False, key="pc_norm")

    s = report["variants"][variant][split]
    v = report["variants"][variant]
    m1, m2, m3 = st.columns(3)
    m1.metric(f"{split} accuracy", data.fmt_acc(s["accuracy"]))
    m2.metric(f"{split} loss", data.fmt_acc(s.get("loss")))
    m3.metric("epochs", ", ".join(map(str, v.get("epochs", []))) or "—")

    frame = data.per_class_frame(report, variant, split)
    classes = [str(c) for c in report["classes"]]
    left, right = st.columns([2, 3])
    left.altair_chart(
        accuracy_chart(frame, f"Per-class accuracy · {model} {variant} ({split})"),
        width="stretch",
    )
    with right:
        st.markdown("**Per-class table** (lowest accuracy first)")
        st.dataframe(
            frame.sort_values(["accuracy", "class"]),
            hide_index=True,
            height=min(38 + 35 * len(frame), 700),
            column_config={
                "accuracy": st.column_config.ProgressColumn(
                    format="%.3f", min_value=0.0, max_value=1.0
                )
            },
        )
    st.altair_chart(
        confusion_chart(
            data.confusion_frame(report, variant, split, normalise), normalise, classes
        ),
        width="content",
    )


main()
