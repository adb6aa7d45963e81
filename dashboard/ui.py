"""Streamlit glue shared by the pages: the project root, cached reads, and notices.

Why: every page reads files that the DAG rewrites while the dashboard is open. Reads are cached
with `st.cache_data` keyed on the files' (path, mtime, size), so a rerun after `dvc repro`
shows the new numbers without a restart, and a reader's DataError becomes a notice that names
the file and the command that produces it, never a traceback.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import data, dvcexp
from dashboard.data import Problem

DVC_TIMEOUT_S = 60.0


def root() -> Path:
    """The project being shown ($VITLAB_ROOT, else the working directory)."""
    return data.project_root()


@st.cache_data(show_spinner=False, max_entries=256)
def _cached(module: str, name: str, root_dir: str, args: tuple, key: tuple) -> Any:
    """Call <module>.<name>(root, *args); `key` (the files' stamp) only invalidates the cache."""
    del key
    try:
        return getattr(importlib.import_module(module), name)(Path(root_dir), *args)
    except data.DataError as e:
        return e.problem


def load(reader: Callable[..., Any], patterns: Sequence[str], *args: Any) -> Any:
    """reader(root, *args), cached until a file matching the glob `patterns` changes.

    Returns the reader's value, or the Problem to show with `notice`.
    """
    r = root()
    key = data.stamp(r, patterns)
    return _cached(reader.__module__, reader.__name__, str(r), tuple(args), key)


def notice(problem: Problem) -> None:
    """A missing output is an info box; a malformed one, or DVC failing, is a warning."""
    if problem.kind == "missing":
        st.info(problem.message(), icon=":material/info:")
    else:
        st.warning(problem.message(), icon=":material/warning:")


def is_problem(value: Any) -> bool:
    return isinstance(value, Problem)


@st.cache_data(show_spinner="Asking DVC for experiments…", max_entries=16)
def _experiments(root_dir: str, key: tuple) -> list[dvcexp.ExpRow] | Problem:
    del key
    try:
        out = dvcexp.run_dvc(Path(root_dir), ["exp", "show", "--json", "-a"], DVC_TIMEOUT_S)
        return dvcexp.parse_exp_show(json.loads(out or "[]"))
    except data.DataError as e:
        return e.problem
    except ValueError as e:
        return Problem("unavailable", "`dvc exp show --json`", f"unreadable output ({e})", "")


def experiments() -> list[dvcexp.ExpRow] | Problem:
    """What `dvc exp show --json -a` knows, cached on HEAD, refs and .dvc/tmp/exps."""
    r = root()
    return _experiments(str(r), dvcexp.experiments_state(r))


@st.cache_data(show_spinner="Reading the experiments' curves…", max_entries=64)
def _rev_curves(root_dir: str, rev: str, label: str, models: tuple, key: tuple) -> Any:
    del key
    try:
        return dvcexp.read_rev_curves(Path(root_dir), rev, label, models)
    except data.DataError as e:
        return e.problem


def experiment_curves(rows: Sequence[dvcexp.ExpRow], models: Sequence[str]) -> Any:
    """Training curves of the chosen rows (one DataFrame), or the first Problem met.

    A commit's files never change, so its cache key is the commit id; the workspace's key is
    the stamp of its curve files.
    """
    r = root()
    frames = []
    for row in rows:
        key: tuple = (row.rev,)
        if row.rev == "workspace":
            key = data.stamp(r, [f"{data.TRAIN_DIR}/*/plots/metrics/*.tsv"])
        got = _rev_curves(str(r), row.rev, row.label, tuple(models), key)
        if is_problem(got):
            return got
        frames.append(got)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def page_header(title: str, what: str) -> None:
    st.title(title)
    st.caption(f"{what} · project: `{root()}`")
