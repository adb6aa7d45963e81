"""What the pages share: the project root, cached reads of the DAG's outputs, one notice per file
that is missing or malformed, and maps drawn pixel for pixel.

Why reads are keyed on mtimes: the DAG rewrites these files while the dashboard is open. Each
read is an `st.cache_data` entry keyed on the file's path and mtime, so the rerun after a
`dvc repro` shows the new numbers without a restart. Every format is parsed by the library
(`vitlab.core.contract`, `vitlab.report`, `vitlab.core.config`); a page only decides how to show.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import streamlit as st

from vitlab import report
from vitlab.core import config, contract
from vitlab.core.errors import VitlabError

T = TypeVar("T")
MALFORMED = (VitlabError, ValueError, KeyError, TypeError, IndexError, AttributeError, OSError)


class Notice(Exception):
    """One line shown instead of a traceback: the file, what is wrong, the command that fixes it."""

    def __init__(self, text: str, missing: bool = False) -> None:
        super().__init__(text)
        self.missing = missing


def root() -> Path:
    """The project shown: $VITLAB_ROOT, else the working directory."""
    return Path(os.environ.get("VITLAB_ROOT") or os.getcwd()).expanduser().resolve()


def show(notice: Notice) -> None:
    """Not produced yet is an info box; produced but unreadable is a warning."""
    (st.info if notice.missing else st.warning)(str(notice))


def _load(path: Path) -> Any:
    if path.suffix == ".csv":
        return report.read_table(str(path))
    if path.suffix == ".tsv":
        return pd.read_csv(path, sep="\t")
    if path.suffix == ".npy":
        return np.load(path)
    if path.suffix == ".yaml":
        return config.load(path)
    return json.loads(path.read_text(encoding="utf-8"))


@st.cache_data(show_spinner=False, max_entries=512)
def _cached(path: str, mtime_ns: int) -> Any:
    """A file as its library reader returns it; `mtime_ns` is only the cache key."""
    return _load(Path(path))


def read(rel: Path, command: str, parse: Callable[[Any], T] = lambda x: x) -> T:
    """`parse` of the file at root/rel, or a Notice naming the file and `command` (if any).

    `parse` turns the file into what the page shows, so a file of the wrong shape is named here
    (with the exception) rather than failing somewhere in the page.
    """
    path = root() / rel
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        fix = f": run `{command}` to produce it" if command else ""
        raise Notice(f"`{rel}` is missing{fix}.", missing=True) from None
    try:
        return parse(_cached(str(path), mtime))
    except MALFORMED as e:
        detail = str(e).split("\n")[0] or type(e).__name__
        fix = f": run `{command}` to rewrite it" if command else ""
        raise Notice(f"`{rel}` is malformed ({detail}){fix}.") from None


def get(rel: Path, command: str, parse: Callable[[Any], T] = lambda x: x) -> T | None:
    """`read`, showing the Notice and returning None instead of raising it."""
    try:
        return read(rel, command, parse)
    except Notice as n:
        show(n)
        return None


def models() -> list[str]:
    """The models of the project's params.yaml (stale outputs of removed models are not shown)."""
    return get(contract.PARAMS, "", lambda p: list(p.models)) or []  # its errors say the fix


def checked_table(df: pd.DataFrame) -> pd.DataFrame:
    """The metrics table with its required columns present and its accuracies numeric."""
    absent = [c for c in contract.REQUIRED_COLUMNS if c not in df.columns]
    if absent:
        raise ValueError(f"column(s) {', '.join(absent)} missing")
    if df.empty:
        raise ValueError("no rows")
    for col in contract.ACCURACY_COLUMNS:
        if col in df.columns:
            df[col] = pd.to_numeric(df[col])
    return df


def metrics(notify: bool = True) -> pd.DataFrame | None:
    """reports/metrics.csv; before `summarize` has run, the table of the eval reports so far."""
    try:
        return read(contract.METRICS_CSV, "dvc repro summarize", checked_table)
    except Notice as n:
        if notify:
            show(n)
        if not n.missing:
            return None
    rows = []
    for m in models():
        try:
            rows += read(contract.eval_report(m), f"dvc repro evaluate@{m}", report.eval_rows)
        except Notice as n:
            if notify and not n.missing:
                show(n)
    if rows and notify:
        st.caption(f"Showing the evaluations written so far (`{contract.EVAL}/<model>.json`).")
    return report.metrics_table(rows) if rows else None


def architectures(df: pd.DataFrame | None) -> dict[str, str]:
    """{model: 'arch, N px, patch P'}: what each model key ran, from the metrics table."""
    if df is None or "arch" not in df.columns:
        return {}
    rows = df.dropna(subset=["arch", "image_size", "patch"]).drop_duplicates("model")
    return {
        r.model: f"{r.arch}, {int(r.image_size)} px, patch {int(r.patch)}"
        for r in rows.itertuples()
    }


def variant_order(names: Any) -> list[str]:
    """The headline variants first (best epoch, soups), then the kept epochs in order."""
    names = list(names)
    head = [v for v in contract.HEADLINE_VARIANTS if v in names]
    return head + sorted(v for v in names if v not in head)


def selected_epochs(model: str) -> list[int] | None:
    """models/<M>/selection.json's epochs in rank order (best first); None before `select` ran,
    and after a notice when the file is malformed."""
    try:
        return read(
            contract.selection(model),
            f"dvc repro select@{model}",
            lambda s: [int(e["epoch"]) for e in s["selected"]],
        )
    except Notice as n:
        if not n.missing:
            show(n)
        return None


def curve_frame(tsv: pd.DataFrame, curve: str) -> pd.DataFrame:
    """A dvclive TSV as (epoch, value) rows; the stage logs step = epoch."""
    return pd.DataFrame(
        {"epoch": tsv["step"].astype(int), "value": pd.to_numeric(tsv[curve]), "curve": curve}
    )


def manifest(
    folder: Path, command: str, parse: Callable[[list[contract.Figure]], T] = lambda x: x
) -> tuple[dict, T] | None:
    """(about, parse(figures)) of root/folder's manifest.json, or None after one notice naming
    it; `parse` reads what a page needs from each figure, so a figure without it is named."""

    def both(_: Any) -> tuple[dict, T]:
        about, figures = contract.read_manifest(root() / folder)
        return about, parse(figures)

    return get(folder / contract.MANIFEST, command, both)


def heat(a: np.ndarray) -> np.ndarray:
    """A 2-D map as RGB, one pixel per value (this map's min..max through viridis): the array as
    it is, never resampled."""
    from matplotlib import colormaps

    a = np.asarray(a, dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    unit = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return (colormaps["viridis"](unit)[..., :3] * 255).round().astype(np.uint8)


def show_map(a: np.ndarray, caption: str, key: str) -> None:
    """`heat(a)` at least 240 px wide; the browser scales it up cell by cell (never down, which
    Streamlit would do by resampling)."""
    a = np.asarray(a)
    with st.container(key=f"heat_{key}"):
        st.image(
            heat(a),
            caption=f"{caption} · {a.shape[0]}×{a.shape[1]}, {a.min():.4g} to {a.max():.4g}",
            width=max(240, a.shape[1]),
            output_format="PNG",
        )


def pixelated() -> None:
    """Maps are scaled up by the browser as blocks, one per value, not blurred."""
    st.html("<style>[class*='st-key-heat_'] img {image-rendering: pixelated;}</style>")


def page_header(title: str, what: str) -> None:
    st.title(title)
    st.caption(f"{what} · project: `{root()}`")
