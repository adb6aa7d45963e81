"""vitlab dashboard: `streamlit run dashboard/app.py` (reads $VITLAB_ROOT, else the cwd).

It only reads what the DAG wrote (reports/, models/*/selection.json) and what DVC knows about
experiments; it never trains, and nothing in dashboard/ imports torch, so it starts in seconds.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import streamlit as st

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `dashboard` is imported as a package from the repo root
    sys.path.insert(0, str(REPO))

from dashboard import ui  # noqa: E402

st.set_page_config(page_title="vitlab", layout="wide")

PAGES = [
    st.Page(
        "views/leaderboard.py", title="Leaderboard", icon=":material/leaderboard:", default=True
    ),
    st.Page("views/training.py", title="Training", icon=":material/show_chart:"),
    st.Page("views/per_class.py", title="Per-class", icon=":material/grid_on:"),
    st.Page("views/maps.py", title="Maps", icon=":material/image:"),
    st.Page("views/experiments.py", title="Experiments", icon=":material/science:"),
]

page = st.navigation(PAGES)
root = ui.root()
st.sidebar.caption(f"Project: `{root}`  \nSet `VITLAB_ROOT` to show another checkout.")
if not root.is_dir():
    st.warning(f"`{root}` does not exist: point `VITLAB_ROOT` at a vitlab checkout.")
elif not (root / "dvc.yaml").is_file():
    st.info(f"`{root}` has no `dvc.yaml`: is it a vitlab checkout? Set `VITLAB_ROOT` to one.")
try:
    page.run()
except Exception as exc:  # a bug in a page: one clear line in the app, the traceback in the log
    logging.getLogger("vitlab.dashboard").exception("page %s failed", page.title)
    st.error(
        f"The {page.title} page failed ({type(exc).__name__}: {exc}). The full traceback is in "
        "the terminal running `streamlit run`; please report it."
    )
