"""The dashboard in a real headless Chromium: `streamlit run` on loopback over the outputs of a
micro `dvc repro`, each page loaded, checked for the leaderboard's numbers and for errors, and
screenshotted.

Chromium is Debian's package (Playwright's own browser download does not work offline). When
/usr/bin/chromium is missing the module installs it with `apt-get install -y chromium` (needs
root and the Debian mirror); only if that fails are the tests skipped, with the reason.
Screenshots go to a pytest tmp folder and, when VITLAB_SCREENSHOTS is set, to that folder too.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, project_env

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
PAGES = {  # url path -> the page's title
    "": "Leaderboard",
    "training": "Training",
    "per_class": "Per-class",
    "maps": "Maps",
    "experiments": "Experiments",
}
HEADLINE = ("best_epoch", "uniform_soup", "greedy_soup")
# The run is over (the app root's script state) and every visible dataframe, chart and image
# has drawn: Streamlit loads those lazily, after the script run has finished.
RENDERED = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  if (document.querySelector('[data-testid="stSpinner"]')) return false;
  const main = document.querySelector('[data-testid="stMain"]');
  if (!main || !main.querySelector('h1')) return false;
  for (const f of document.querySelectorAll('[data-testid="stDataFrame"]'))
    if (f.checkVisibility() && !f.querySelector('canvas')) return false;
  for (const c of document.querySelectorAll('[data-testid="stVegaLiteChart"]'))
    if (c.checkVisibility() && !c.querySelector('svg, canvas')) return false;
  for (const i of document.querySelectorAll('[data-testid="stImageContainer"] img'))
    if (!i.complete) return false;
  return true;
}"""
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'


def install_chromium() -> str:
    """Install Debian's chromium if it is missing; '' on success, else why it failed."""
    if CHROMIUM.exists():
        return ""
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine"
    if os.geteuid() != 0:
        return "apt-get needs root; run `apt-get install -y chromium` as root"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(cmd)}` timed out"
        if proc.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {(proc.stderr or proc.stdout)[-300:]}"
    return "" if CHROMIUM.exists() else "apt-get finished but /usr/bin/chromium is missing"


@pytest.fixture(scope="module")
def chromium() -> Path:
    reason = install_chromium()
    if reason:
        pytest.skip(f"Debian's chromium is not available: {reason}")
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(micro_project: Path, tmp_path_factory: pytest.TempPathFactory):
    """`streamlit run dashboard/app.py` headless on 127.0.0.1, reading the micro project."""
    port = free_port()
    log = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    env = project_env()
    env["VITLAB_ROOT"] = str(micro_project)
    cmd = [
        sys.executable, "-m", "streamlit", "run", "dashboard/app.py",
        "--server.headless", "true",
        "--server.address", "127.0.0.1",
        "--server.port", str(port),
        "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"streamlit did not come up:\n{log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser(chromium: Path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shot_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    dirs = [tmp_path_factory.mktemp("screenshots")]
    if os.environ.get("VITLAB_SCREENSHOTS"):
        dirs.append(Path(os.environ["VITLAB_SCREENSHOTS"]))
        dirs[-1].mkdir(parents=True, exist_ok=True)
    return dirs


def load(browser, url: str):
    """A fresh page (a fresh Streamlit session) at url, waited on until fully drawn."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(url)
    page.wait_for_function(RENDERED, timeout=120_000, polling=250)
    page.wait_for_timeout(500)  # let the last chart finish its layout
    page.wait_for_function(RENDERED, timeout=120_000, polling=250)
    return page


def screenshot(page, name: str, dirs: list[Path]) -> None:
    """The whole page: Streamlit scrolls inside its main container, so grow the viewport."""
    height = page.evaluate(
        "() => Math.max(...[...document.querySelectorAll('[data-testid=stMain] *')]"
        ".map(e => e.scrollHeight), 900)"
    )
    page.set_viewport_size({"width": 1400, "height": min(int(height) + 60, 8000)})
    page.wait_for_timeout(500)
    for d in dirs:
        page.screenshot(path=str(d / f"{name}.png"))


def assert_no_error(page) -> None:
    assert page.locator(ERRORS).count() == 0, page.locator(ERRORS).first.inner_text()
    assert "Traceback" not in page.inner_text("body")


def test_leaderboard_numbers_in_chromium(app_url, browser, shot_dirs, micro_project):
    page = load(browser, app_url)
    try:
        assert_no_error(page)
        body = page.inner_text('[data-testid="stMain"]')
        with open(micro_project / "reports" / "metrics.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["variant"] in HEADLINE]
        assert rows
        for row in rows:
            for split in ("val_acc", "test_acc"):
                number = f"{float(row[split]):.4f}"
                assert number in body, f"{row['model']} {row['variant']} {split} {number}"
        # the navigation of st.navigation, not Streamlit's legacy pages/ listing
        nav = page.inner_text('[data-testid="stSidebarNav"]')
        assert [t for t in PAGES.values() if t not in nav] == []
        screenshot(page, "leaderboard", shot_dirs)
    finally:
        page.close()


@pytest.mark.parametrize("path", [p for p in PAGES if p])
def test_page_renders_in_chromium(path, app_url, browser, shot_dirs):
    page = load(browser, app_url + path)
    try:
        assert_no_error(page)
        assert page.locator('[data-testid="stMain"] h1').first.inner_text() == PAGES[path]
        if path != "maps":  # maps of the micro project may be notices only
            assert page.locator(
                '[data-testid="stVegaLiteChart"], [data-testid="stDataFrame"]'
            ).count()
        screenshot(page, path, shot_dirs)
    finally:
        page.close()
