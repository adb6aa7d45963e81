"""Maps: position-embedding similarity, attention maps with their pointing and energy scores,
and captions with one map per generated word.

Everything comes from the render stages' manifest.json: each figure's PNG and the `maps` array
the stage drew and scored, shown as it is (one pixel per value), never re-derived here. Every
folder outside reports/figures/ whose manifest holds caption figures is a captioner to show, so
a second captioner writing the same manifest appears beside the first.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import ui
from vitlab.core import contract

SCORES = {"pointing": "pointing game", "energy": "energy in the object"}


def score_metrics(scores: dict) -> None:
    """A map's pointing and energy over the whole split, each against a uniform map's."""
    for col, (key, label) in zip(st.columns(len(SCORES)), SCORES.items(), strict=True):
        value, uniform = scores[key], scores[f"{key}_uniform"]
        col.metric(label, f"{value:.3f}", delta=f"{value - uniform:+.3f} vs uniform")
    st.caption(f"over all {scores['n']} images of the split")


def positions_tab(model: str) -> None:
    folder, command = contract.positions_dir(model), f"dvc repro render_positions@{model}"
    got = ui.manifest(folder, command, lambda figs: {f.variant: f for f in figs})
    if got is None:
        return
    by = got[1]
    fig = by[st.selectbox("Variant", list(by), key="mp_pos_variant")]
    left, right = st.columns([3, 2])
    left.image(str(ui.root() / folder / fig.png), caption=fig.title, width="stretch")
    square = lambda a: a.reshape(a.shape[:2] * 2)  # noqa: E731  (rows, cols, rows, cols)
    sim = ui.get(folder / fig.maps, command, square)
    if sim is not None:
        with right:
            r = st.slider("Patch row", 0, sim.shape[0] - 1, 0, key="mp_pos_row")
            c = st.slider("Patch column", 0, sim.shape[1] - 1, 0, key="mp_pos_col")
            ui.show_map(sim[r, c], f"cosine similarity of patch ({r}, {c}) with each", "pos")


def drawn(figs: list[contract.Figure]) -> tuple[list[contract.Figure], pd.DataFrame]:
    """The attention figures and their scores table; each figure's image labels checked."""
    for f in figs:
        lengths = {len(f.images), len(f.info["labels"]), len(f.info["predicted"])}
        if len(lengths) != 1:
            raise ValueError(f"{f.png}: images, labels and predicted differ in length")
    rows = [
        {
            "variant": f.variant,
            "method": f.method,
            **{k: f.info["scores"][k] for k in contract.SCORE_KEYS},
        }
        for f in figs
    ]
    return figs, pd.DataFrame(rows)


def attention_tab(model: str) -> None:
    folder, command = contract.attention_dir(model), f"dvc repro render_attention@{model}"
    got = ui.manifest(folder, command, drawn)
    if got is None:
        return
    figs, scores = got[1]
    with st.expander("Scores of every drawn variant and method (the whole split)"):
        st.dataframe(scores, hide_index=True)
    c1, c2 = st.columns(2)
    variants = list(dict.fromkeys(f.variant for f in figs))
    variant = c1.selectbox("Variant", variants, key="mp_att_variant")
    view = c2.radio("Show", ["Figures", "Maps as scored"], horizontal=True, key="mp_att_view")
    chosen = [f for f in figs if f.variant == variant]
    if view == "Figures":
        for f in chosen:
            score_metrics(f.info["scores"])
            st.image(str(ui.root() / folder / f.png), caption=f.title, width="stretch")
        return
    first = chosen[0]
    labels = [
        f"#{i} · {t} → {p}"
        for i, t, p in zip(first.images, first.info["labels"], first.info["predicted"], strict=True)
    ]
    k = st.selectbox(
        "Image", range(len(labels)), format_func=labels.__getitem__, key="mp_att_image"
    )
    for col, f in zip(st.columns(len(chosen)), chosen, strict=True):
        with col:
            one = ui.get(folder / f.maps, command, lambda a: a[k])
            if one is not None:
                ui.show_map(one, f"{contract.MAP_METHODS[f.method]} · {labels[k]}", f.method)
                score_metrics(f.info["scores"])


def captions(figs: list[contract.Figure]) -> list[contract.Figure]:
    """The caption figures, each with its caption and one token per map row."""
    figs = [f for f in figs if f.group == "captions"]
    for f in figs:
        if not (f.info["caption"], f.info["tokens"], f.images):
            raise ValueError(f"{f.png}: no caption, tokens or image index")
    return figs


def caption_sets() -> list[tuple[Path, dict, list[contract.Figure]]]:
    """(folder, about, caption figures) of every manifest with caption figures under reports/."""
    out = []
    for path in sorted((ui.root() / contract.REPORTS).glob(f"**/{contract.MANIFEST}")):
        folder = path.parent.relative_to(ui.root())
        if contract.FIGURES in folder.parents:  # the classifiers' figures, shown above
            continue
        got = ui.manifest(folder, "dvc repro", captions)
        if got is not None and got[1]:
            out.append((folder, *got))
    return out


def captions_tab() -> None:
    sets = caption_sets()
    if not sets:
        rel = contract.CAPTION_FIGURES / contract.MANIFEST
        ui.show(ui.Notice(f"`{rel}` is missing: run `dvc repro render_captions`.", True))
        return
    st.caption("A captioner is a model of its own: the model picked above does not apply.")
    names = [about.get("model", str(folder)) for folder, about, _ in sets]
    folder, about, figs = sets[names.index(st.radio("Captioner", names, key="mp_cap_model"))]
    table = ui.metrics(notify=False)
    if table is not None and (table["model"] == about.get("model")).any():
        rows = table[table["model"] == about.get("model")].dropna(axis=1, how="all")
        st.dataframe(rows, hide_index=True)
    k = st.selectbox(
        "Image",
        range(len(figs)),
        key="mp_cap_image",
        format_func=lambda i: f"#{figs[i].images[0]} — {figs[i].title}",
    )
    fig = figs[k]
    st.markdown(f"**Generated:** {fig.info['caption']}")
    if fig.info.get("reference"):
        st.markdown(f"**Reference:** {fig.info['reference']}")
    left, right = st.columns([3, 2])
    left.image(str(ui.root() / folder / fig.png), caption=fig.title, width="stretch")
    tokens, ids = fig.info["tokens"], fig.info.get("token_ids")
    with right:
        t = st.radio(
            "Word",
            range(len(tokens)),
            format_func=tokens.__getitem__,
            horizontal=True,
            key="mp_cap_word",
        )
        command = f"dvc repro {about.get('stage', 'render_captions')}"
        one = ui.get(folder / fig.maps, command, lambda a: a[t])
        if one is not None:
            word = f"'{tokens[t]}'" + (f" (id {ids[t]})" if ids else "")
            ui.show_map(one, f"attention while generating {word}", "cap")


def main() -> None:
    ui.page_header("Maps", "position embeddings, attention maps and caption maps")
    ui.pixelated()
    models = ui.models()
    model = st.selectbox("Model", models, key="mp_model") if models else None
    if model:
        ran = ui.architectures(ui.metrics(notify=False)).get(model)
        st.caption(f"{model} ran {ran}" if ran else f"{model} is not evaluated yet")
    tabs = st.tabs(["Position embeddings", "Attention maps", "Captions"])
    if model:
        with tabs[0]:
            positions_tab(model)
        with tabs[1]:
            attention_tab(model)
    with tabs[2]:
        captions_tab()


main()
