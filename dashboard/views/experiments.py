"""Experiments: what DVC knows (the workspace, every branch and their experiments) in one table,
and a comparison of two or more: parameter differences, metric deltas, training curves.

Asked through dvc.api.exp_show and cached by Streamlit (`experiments`); the reload button asks
DVC again. Curves of other revisions are read through dvc.api.DVCFileSystem, which serves git-
tracked and DVC-cached files exactly as that revision has them.
"""

from __future__ import annotations

import subprocess
from contextlib import closing
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import ui
from vitlab.core import config, contract

ROW_KEYS = ("Experiment", "rev", "typ", "Created", "parent", "State", "Executor")
SECTIONS = set(config.Params.model_fields)  # params.yaml's top-level sections
DVC_HASH = r"[0-9a-f]{32}(\.dir)?"  # what exp_show gives for a dependency
UNREADABLE = "!"  # exp_show's value of a metric DVC could not read at that revision: shown empty


def kind(column: str, values: pd.Series) -> str:
    """'param', 'dep' or 'metric'. A dependency's values are DVC hashes (its name, a path, can
    equal a metric's key: exp_show then keeps the dependency); a param's first key is a
    params.yaml section; the rest are metrics (`file:key` when two files share a key)."""
    given = values.dropna().astype(str)
    if len(given) and given.str.fullmatch(DVC_HASH).all():
        return "dep"
    key = column.removeprefix(f"{contract.PARAMS}:")
    return "param" if key.split(".")[0] in SECTIONS else "metric"


def cell(v: object) -> str:
    """A parameter as text: whole numbers without `.0` (exp_show returns every number as float)."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return "—" if v is None else str(v)


def table(rows: list[dict]) -> pd.DataFrame:
    """One row per experiment: its label (name, else branch or commit), type and baseline, then
    `param <key>` and `metric <key>` columns."""
    raw = pd.DataFrame(rows)
    labels, baselines, base = [], [], ""
    for r in rows:
        label, typ = r["Experiment"] or r["rev"], r["typ"]
        while label in labels:
            label += "'"
        labels.append(label)
        base = label if typ == "baseline" else base
        baselines.append("" if typ == "baseline" else base)
    cols = {
        "experiment": labels,
        "rev": raw["rev"],
        "type": raw["typ"],
        "created": raw["Created"],
        "baseline": baselines,
    }
    for col in raw.columns.difference(ROW_KEYS, sort=False):
        k = kind(col, raw[col])
        if k == "param":
            cols[f"param {col}"] = raw[col].map(cell)
        elif k == "metric":
            cols[f"metric {col}"] = raw[col].replace(UNREADABLE, None)
    return pd.DataFrame(cols)


def branches(repo: Path) -> list[str]:
    """The repository's local branches (what `dvc exp show -a` starts from)."""
    out = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname:short)", "refs/heads"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout.split() if out.returncode == 0 else []


@st.cache_data(ttl=120, show_spinner="Asking DVC for the experiments…", max_entries=8)
def experiments(repo: str, stamp: tuple[int, ...]) -> list[dict]:
    """dvc.api.exp_show over every branch, cached until `stamp` (the mtimes of params.yaml and
    dvc.lock) changes, for two minutes, or until the reload button clears it."""
    import dvc.api

    return dvc.api.exp_show(repo, revs=branches(Path(repo)) or None)


@st.cache_data(ttl=120, show_spinner="Reading the experiments' curves…", max_entries=64)
def rev_curves(repo: str, rev: str, label: str, models: tuple[str, ...]) -> pd.DataFrame:
    """The dvclive curves of `models` at revision `rev` ("workspace": the files on disk)."""
    from dvc.api import DVCFileSystem

    frames = []
    with closing(DVCFileSystem(repo, rev=None if rev == "workspace" else rev)) as fs:
        for model in models:
            for curve in contract.CURVES:
                path = contract.curve_file(model, curve).as_posix()
                if fs.exists(path):
                    with fs.open(path) as f:
                        tsv = pd.read_csv(f, sep="\t")
                    got = ui.curve_frame(tsv, curve)
                    frames.append(got.assign(model=model, experiment=label))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def compare(df: pd.DataFrame, chosen: list[str]) -> None:
    """Parameters that differ, metrics with deltas against the first pick, curves per model."""
    rows = df.set_index("experiment").loc[chosen].rename_axis(None)
    params = rows[[c for c in rows if c.startswith("param ")]].T
    params = params[params.nunique(axis=1) > 1].rename(index=lambda c: c[6:])
    st.markdown(f"**Parameters that differ** ({len(params)})")
    st.dataframe(params.rename_axis("parameter").reset_index(), hide_index=True)
    numbers = rows[[c for c in rows if c.startswith("metric ")]].apply(
        pd.to_numeric, errors="coerce"
    )
    metrics = numbers.T.dropna(how="all").rename(index=lambda c: c[7:])
    for label in chosen[1:]:
        metrics[f"Δ {label}"] = metrics[label] - metrics[chosen[0]]
    st.markdown(f"**Metrics** (Δ = row minus `{chosen[0]}`)")
    word = st.text_input("Filter metrics", key="ex_mfilter", placeholder="e.g. test_acc")
    metrics = metrics[metrics.index.str.contains(word, case=False, regex=False)]
    st.dataframe(metrics.rename_axis("metric").reset_index(), hide_index=True)
    models = tuple(ui.models())
    repo = str(ui.root())
    try:
        curves = pd.concat([rev_curves(repo, rows.loc[c, "rev"], c, models) for c in chosen])
    except Exception as e:  # DVC raises many types (revision, SCM, cache): all mean unreadable
        st.warning(f"DVC cannot read the curves of these revisions ({type(e).__name__}: {e}).")
        return
    if curves.empty:
        st.info("No training curves in the chosen revisions: `dvc exp run` records them.")
        return
    curve = st.radio(
        "Curve",
        contract.CURVES,
        index=contract.CURVES.index("val_acc"),
        horizontal=True,
        key="ex_curve",
    )
    sub = curves[curves["curve"] == curve]
    cols = st.columns(min(3, sub["model"].nunique()) or 1)
    for i, (model, g) in enumerate(sub.groupby("model", sort=False)):
        chart = (
            alt.Chart(g, title=f"{model} · {curve}")
            .mark_line(point=True)
            .encode(
                x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1)),
                y=alt.Y("value:Q", title=curve, scale=alt.Scale(zero=False)),
                color=alt.Color("experiment:N", scale=alt.Scale(domain=chosen)),
                tooltip=["experiment", "epoch", alt.Tooltip("value:Q", format=".4f")],
            )
        )
        cols[i % len(cols)].altair_chart(chart, width="stretch")


def main() -> None:
    ui.page_header("Experiments", "what `dvc exp show` knows, compared side by side")
    root = ui.root()
    if st.button("Ask DVC again", icon=":material/refresh:", key="ex_reload"):
        experiments.clear()
        rev_curves.clear()
    stamp = tuple(
        (root / p).stat().st_mtime_ns if (root / p).is_file() else 0
        for p in (contract.PARAMS, "dvc.lock")
    )
    try:
        rows = experiments(str(root), stamp)
    except Exception as e:  # DVC raises many types (not a repo, no commit, SCM): one notice
        st.warning(
            f"DVC cannot list the experiments of `{root}` ({type(e).__name__}: {e}). Experiments "
            "need a git repository with a commit and `dvc init`; then `dvc exp run -S "
            "train.lr=0.001` records one."
        )
        return
    df = table(rows)
    only = st.toggle("Only columns that differ between rows", value=True, key="ex_changed")
    shown = df
    if only and len(df) > 1:
        shown = df[[c for c in df if " " not in c or df[c].astype(str).nunique() > 1]]
    st.dataframe(shown, hide_index=True, placeholder="—")
    st.caption("Record one with `dvc exp run -S train.lr=0.001 -n my-exp`.")
    exps = df[df["baseline"] != ""]
    base = exps["baseline"].iloc[0] if len(exps) else df["experiment"].iloc[0]
    default = [base, *exps[exps["baseline"] == base]["experiment"][:2]]
    if len(default) < 2:
        default = list(df["experiment"][:2])
    chosen = st.multiselect(
        "Compare (the first is the baseline for the deltas)",
        list(df["experiment"]),
        default=default,
        key="ex_chosen",
    )
    if len(chosen) < 2:
        st.info("Pick two or more rows to compare them side by side.")
        return
    compare(df, chosen)


main()
