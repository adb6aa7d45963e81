"""vitlab dashboard: `streamlit run dashboard/app.py` (reads $VITLAB_ROOT, else the cwd).

It only reads what the DAG wrote and what DVC knows about experiments; it never trains and
nothing in dashboard/ imports torch, so it starts in seconds.

Why the address check: Streamlit reads `.streamlit/config.toml` from the working directory
only, so launched from anywhere else it binds every interface. The app then serves nothing but
one line until the address is loopback or VITLAB_DASHBOARD_PUBLIC=1 says exposure is meant.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from pathlib import Path

import streamlit as st

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `dashboard` and `vitlab` are imported from the repository root
    sys.path.insert(0, str(REPO))

from dashboard import ui  # noqa: E402

PUBLIC = "VITLAB_DASHBOARD_PUBLIC"


def loopback(address: str | None) -> bool:
    """Whether Streamlit's server.address reaches this machine only ('' = every interface)."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address or "").is_loopback
    except ValueError:
        return False


st.set_page_config(page_title="vitlab", layout="wide")
address = st.get_option("server.address")
if not loopback(address) and os.environ.get(PUBLIC) != "1":
    st.error(
        f"Not serving on {address or 'every interface'}: run `streamlit run dashboard/app.py "
        f"--server.address 127.0.0.1`, or set {PUBLIC}=1 to expose the dashboard deliberately."
    )
    st.stop()

PAGES = [
    st.Page("views/leaderboard.py", title="Leaderboard", icon=":material/leaderboard:"),
    st.Page("views/training.py", title="Training", icon=":material/show_chart:"),
    st.Page("views/per_class.py", title="Per-class", icon=":material/grid_on:"),
    st.Page("views/maps.py", title="Maps", icon=":material/image:"),
    st.Page("views/experiments.py", title="Experiments", icon=":material/science:"),
]
page = st.navigation(PAGES)
root = ui.root()
st.sidebar.caption(f"Project: `{root}`  \nSet `VITLAB_ROOT` to show another checkout.")
if not (root / "dvc.yaml").is_file():
    st.info(f"`{root}` has no `dvc.yaml`: set `VITLAB_ROOT` to a vitlab checkout, or run there.")
    st.stop()
try:
    page.run()
except Exception as exc:  # a bug in a page: one clear line in the app, the traceback in the log
    logging.getLogger("vitlab.dashboard").exception("page %s failed", page.title)
    st.error(
        f"The {page.title} page failed ({type(exc).__name__}: {exc}); the traceback is in the "
        "terminal running `streamlit run`."
    )
