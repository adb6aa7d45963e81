"""Maps: position-embedding similarity, attention maps per method with their pointing and energy
scores, and the captioner's captions with per-word maps and caption metrics.

Figures are discovered by glob under reports/figures/<M>/ and reports/captions/ (the stages that
write them land independently), so whatever exists is shown and whatever does not is named.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import data, figures, ui

SCORE_LABELS = {"pointing": "pointing game", "energy": "energy in object"}


def pick(label: str, options: list[str], key: str, fmt=None) -> str:
    """A selectbox, or nothing to choose when there is a single option."""
    if len(options) == 1:
        return options[0]
    return st.selectbox(label, options, key=key, format_func=fmt or (lambda x: x or "(none)"))


def raw_map(rel: str, key: str) -> None:
    """A download button for the raw array beside a figure."""
    path = ui.root() / rel
    st.download_button(
        f"Raw map {path.name}",
        path.read_bytes(),
        file_name=path.name,
        mime="application/octet-stream",
        key=key,
        icon=":material/download:",
    )


def score_metrics(numbers: dict[str, float]) -> None:
    """Pointing and energy next to a uniform map's values."""
    shown = [k for k in SCORE_LABELS if k in numbers]
    if not shown:
        st.caption("no pointing/energy score recorded for this map")
        return
    cols = st.columns(len(shown))
    for col, key in zip(cols, shown, strict=True):
        value, uniform = numbers[key], numbers.get(f"{key}_uniform")
        delta = None if uniform is None else f"{value - uniform:+.3f}"
        hint = None if uniform is None else f"Δ against a uniform map, which scores {uniform:.3f}"
        col.metric(SCORE_LABELS[key], f"{value:.3f}", delta=delta, help=hint)
    if "n" in numbers:
        st.caption(f"over all {int(numbers['n'])} images of the split; Δ = minus a uniform map")


def positions_tab(model: str, figs: list[figures.Figure]) -> None:
    pos = [f for f in figs if f.group == "positions"]
    if not pos:
        st.info(
            f"No position-embedding figure under `{data.FIGURES_DIR}/{model}/` "
            f"(positions_<variant>.png). Run `dvc repro` (stage render_positions@{model})."
        )
        return
    variant = pick("Variant", data.variant_order({f.variant for f in pos}), "mp_pos_variant")
    fig = next(f for f in pos if f.variant == variant)
    left, _ = st.columns([3, 2])
    with left:
        st.image(
            str(ui.root() / fig.path),
            caption=f"{model} · {variant}: cosine similarity of each patch's position embedding "
            "with every other patch (one tile per patch, one colour scale)",
            width="stretch",
        )
        if fig.npy:
            raw_map(fig.npy, "mp_pos_npy")


def method_scores(
    scores: dict, table: pd.DataFrame | None, model: str, method: str, variant: str
) -> dict[str, float]:
    found = figures.scores_for(scores, method, variant)
    if not found and table is not None:
        found = figures.csv_scores(table, model, variant, method)
    return found


def attention_tab(model: str, figs: list[figures.Figure], table: pd.DataFrame | None) -> None:
    att = [f for f in figs if f.group == "attention"]
    if not att:
        st.info(
            f"No attention map under `{data.FIGURES_DIR}/{model}/` "
            f"(attention_<method>_<variant>.png). Run `dvc repro` (stage render_attention@{model})."
        )
        return
    scores = ui.load(figures.read_scores, [f"{data.FIGURES_DIR}/{model}/scores.json"], model)
    if ui.is_problem(scores):
        ui.notice(scores)
        scores = {}
    drawn = ui.load(figures.read_drawn, [f"{data.FIGURES_DIR}/{model}/attention/drawn.json"], model)
    if ui.is_problem(drawn):
        ui.notice(drawn)
        drawn = {}
    c1, c2 = st.columns(2)
    with c1:
        variant = pick("Variant", data.variant_order({f.variant for f in att}), "mp_att_variant")
    chosen = [f for f in att if f.variant == variant]
    with c2:
        view = st.radio(
            "Show", ["All drawn images", "One image"], horizontal=True, key="mp_att_view"
        )
    methods = sorted({f.method for f in chosen})
    with_npy = [f for f in chosen if f.npy]
    if view == "One image" and with_npy:
        shape = ui.load(figures.npy_shape, [with_npy[0].npy], with_npy[0].npy)
        count = shape[0] if not ui.is_problem(shape) and len(shape) == 3 else 0
        labels = figures.image_labels(drawn, variant, count)
        position = st.selectbox(
            "Image", range(count), format_func=lambda i: labels[i], key="mp_att_image"
        )
        indices = drawn.get("indices") or []
        index = indices[position] if position is not None and position < len(indices) else -1
        split = str(drawn.get("split") or "")
        cols = st.columns(min(3, len(with_npy)))
        for i, fig in enumerate(with_npy):
            with cols[i % len(cols)]:
                st.markdown(f"**{fig.method}**")
                patterns = [fig.npy, f"{figures.PREPARED_DIR}/{split}/images.npy"]
                panel = ui.load(figures.map_overlay, patterns, fig.npy, position or 0, split, index)
                if ui.is_problem(panel):
                    ui.notice(panel)
                    continue
                st.image(panel, caption=f"{labels[position or 0]} · {fig.method}", width="stretch")
                score_metrics(method_scores(scores, table, model, fig.method, variant))
        if index < 0 or not (ui.root() / figures.PREPARED_DIR / split / "images.npy").is_file():
            st.caption(
                "The maps are shown alone: the images themselves "
                f"(`{figures.PREPARED_DIR}/<split>/images.npy`) are not in this checkout."
            )
    else:
        if view == "One image":
            st.caption("These figures have no raw maps (.npy) beside them; showing the figures.")
        for method in methods:
            fig = next(f for f in chosen if f.method == method)
            st.markdown(f"**{method}** · {model} · {variant}")
            score_metrics(method_scores(scores, table, model, method, variant))
            st.image(str(ui.root() / fig.path), width="stretch")
            if fig.npy:
                raw_map(fig.npy, f"mp_att_npy_{method}")
    if scores:
        with st.expander(f"All scores in {data.FIGURES_DIR}/{model}/scores.json"):
            st.dataframe(figures.scores_frame(scores), hide_index=True)


def other_tab(figs: list[figures.Figure]) -> None:
    other = [f for f in figs if f.group == "other"]
    name = st.selectbox("Figure", [f.path for f in other], key="mp_other")
    st.image(str(ui.root() / name), caption=Path(name).name, width="stretch")


def caption_metrics(caps: figures.Captions, table: pd.DataFrame | None) -> None:
    decodings = figures.decoding_table(caps.metrics)
    if not decodings.empty:
        st.markdown(
            f"**Caption metrics** over {caps.metrics.get('images', '?')} "
            f"{caps.metrics.get('split', 'test')} images (`{data.CAPTIONS_DIR}/metrics.json`)"
        )
        head = str(caps.metrics.get("headline") or decodings["decoding"].iloc[0])
        row = decodings[decodings["decoding"] == head]
        row = (row if not row.empty else decodings).iloc[0]
        keys = [k for k in ("bleu_1", "bleu_4", "cider_d", "exact_match") if k in row]
        cols = st.columns(len(keys) + 2)
        for col, key in zip(cols, keys, strict=False):
            col.metric(f"{key} ({row['decoding']})", f"{row[key]:.4f}")
        ground = figures.grounding_numbers(caps.metrics)
        for col, key in zip(cols[len(keys) :], ("mass", "pointing"), strict=False):
            if key in ground:
                uniform = ground.get(f"{key}_uniform")
                delta = None if uniform is None else f"{ground[key] - uniform:+.3f} vs uniform"
                col.metric(f"object words: {key}", f"{ground[key]:.3f}", delta=delta)
        fmt = {c: st.column_config.NumberColumn(format="%.4f") for c in decodings.columns[1:]}
        st.dataframe(decodings, hide_index=True, column_config=fmt)
    elif caps.metrics:
        flat = data.flatten(caps.metrics)
        st.dataframe(
            pd.DataFrame({"metric": list(flat), "value": [str(v) for v in flat.values()]}),
            hide_index=True,
        )
    if table is not None:
        rows = figures.captioner_rows(table)
        if not rows.empty:
            with st.expander(f"Captioner rows of `{data.METRICS_CSV}`"):
                st.dataframe(rows, hide_index=True, placeholder="—")


def captions_tab(table: pd.DataFrame | None) -> None:
    caps = ui.load(figures.discover_captions, [f"{data.CAPTIONS_DIR}/**/*"])
    if ui.is_problem(caps):
        ui.notice(caps)
        return
    for p in caps.problems:
        ui.notice(p)
    if not caps.files:
        st.info(
            f"`{data.CAPTIONS_DIR}/` is missing: run `dvc repro` (stages fetch_captions, "
            "train_captioner, render_captions) to train the captioner and render its "
            "words-to-patches maps."
        )
        return
    st.caption("The captioner is one model of its own; the model picked above does not apply.")
    caption_metrics(caps, table)
    if caps.figures:
        names = [f.name for f in caps.figures]
        by_name = {f.name: f for f in caps.figures}

        def label(name: str) -> str:
            text = by_name[name].meta.get("caption")
            return f"{name} — {text}" if text else name

        name = st.selectbox("Image", names, format_func=label, key="mp_cap_image")
        fig = by_name[name]
        if fig.meta.get("caption"):
            st.markdown(f"**Generated:** {fig.meta['caption']}")
        if fig.meta.get("reference"):
            st.markdown(f"**Reference:** {fig.meta['reference']}")
        st.image(
            str(ui.root() / fig.png),
            caption="one panel per generated token (<end> included): the last decoder layer's "
            "cross-attention over the image patches",
            width="stretch",
        )
        if fig.npy:
            raw_map(fig.npy, "mp_cap_npy")
    else:
        st.info(
            f"No caption figure under `{data.CAPTIONS_DIR}/figures/`: run `dvc repro` "
            "(stage render_captions) with images listed in captions.render.images."
        )
    if caps.records:
        with st.expander(f"All generated captions ({len(caps.records)})"):
            st.dataframe(pd.DataFrame(caps.records).astype(str), hide_index=True)


def main() -> None:
    ui.page_header("Maps", "position embeddings, attention maps and caption maps")
    root = ui.root()
    models = data.pick_models(data.study_models(root), figures.figure_models(root))
    table = ui.load(data.read_metrics_table, [data.METRICS_CSV])
    table = None if ui.is_problem(table) else table
    figs: list[figures.Figure] = []
    model = ""
    if models:
        model = st.selectbox("Model", models, key="mp_model")
        found = ui.load(figures.discover_figures, [f"{data.FIGURES_DIR}/{model}/**/*"], model)
        figs = [] if ui.is_problem(found) else found
    tab_pos, tab_att, tab_cap, tab_other = st.tabs(
        ["Position embeddings", "Attention maps", "Captions", "Other figures"]
    )
    missing = (
        f"No figures yet: `{data.FIGURES_DIR}/<model>/` is missing. Run `dvc repro` (stages "
        "render_positions@<model> and render_attention@<model>) to render them."
    )
    with tab_pos:
        if model:
            positions_tab(model, figs)
        else:
            st.info(missing)
    with tab_att:
        if model:
            attention_tab(model, figs, table)
        else:
            st.info(missing)
    with tab_cap:
        captions_tab(table)
    with tab_other:
        if any(f.group == "other" for f in figs):
            other_tab(figs)
        else:
            st.caption("Figures whose names match no known pattern would appear here.")


main()
