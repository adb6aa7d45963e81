"""The dashboard in a real headless Chromium, served by a real `streamlit run`.

Launched from the repository root (so `.streamlit/config.toml` binds it to loopback) over the
outputs of a micro `dvc repro`: every page loads without an error, the leaderboard shows the
numbers of reports/metrics.csv with the architecture each model ran, and the maps the page
serves are the stages' .npy arrays pixel for pixel. Launched from another directory (where
Streamlit binds every interface) it serves one refusal line unless VITLAB_DASHBOARD_PUBLIC=1.

Chromium is Debian's package (Playwright's own browser download does not work offline). When
/usr/bin/chromium is missing the module installs it with `apt-get install -y chromium` (needs
root and the Debian mirror); only if that fails are the tests skipped, with the reason.
Screenshots go to a pytest tmp folder and, when VITLAB_SCREENSHOTS is set, to that folder too.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, project_env
from matplotlib import colormaps
from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vitlab.core import config, contract  # noqa: E402

pytestmark = pytest.mark.slow

APP = ROOT / "dashboard" / "app.py"
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
  if (!main || !main.querySelector('h1, [data-testid="stAlert"]')) return false;
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


@contextlib.contextmanager
def serve(cwd: Path, project: Path, log: Path, **env: str) -> Iterator[str]:
    """`streamlit run <repo>/dashboard/app.py` started in `cwd` on a free port, reading
    `project`; yields its loopback URL once healthy."""
    port = free_port()
    full = {**project_env(), "VITLAB_ROOT": str(project), **env}
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port)]
    if cwd != ROOT:  # the repository's config says headless; elsewhere it must be said
        cmd += ["--server.headless", "true", "--browser.gatherUsageStats", "false"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=full, stdout=out, stderr=subprocess.STDOUT)
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
def app_url(micro_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Served from the repository root with no address flag: its config.toml decides."""
    log = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    with serve(ROOT, micro_project, log) as url:
        yield url


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


def wait_drawn(page) -> None:
    page.wait_for_function(RENDERED, timeout=120_000, polling=250)
    page.wait_for_timeout(500)  # let the last chart finish its layout
    page.wait_for_function(RENDERED, timeout=120_000, polling=250)


def load(browser, url: str):
    """A fresh page (a fresh Streamlit session) at url, waited on until fully drawn."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(url)
    wait_drawn(page)
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


def csv_rows(root: Path) -> list[dict]:
    with open(root / contract.METRICS_CSV, newline="") as f:
        return list(csv.DictReader(f))


def served_pixels(page, url: str, selector: str) -> np.ndarray:
    """The RGB pixels of the image the server sent for the <img> at `selector`."""
    src = page.locator(selector).first.get_attribute("src")
    with urllib.request.urlopen(urllib.parse.urljoin(url, src), timeout=10) as r:
        return np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))


def viridis(a: np.ndarray) -> np.ndarray:
    """The documented colouring of a shown map: its min..max through viridis, one pixel each."""
    a = a.astype(np.float64)
    unit = (a - a.min()) / (a.max() - a.min())
    return (colormaps["viridis"](unit)[..., :3] * 255).round().astype(np.uint8)


def test_leaderboard_numbers_in_chromium(app_url, browser, shot_dirs, micro_project):
    page = load(browser, app_url)
    try:
        assert_no_error(page)
        main = page.locator('[data-testid="stMain"]')
        rows = [r for r in csv_rows(micro_project) if r["variant"] in HEADLINE]
        assert rows
        for row in rows:  # expect() waits: React may mount the table after the run has ended
            expect(main).to_contain_text(row["arch"], timeout=30_000)
            for split in ("val_acc", "test_acc"):
                number = f"{float(row[split]):.4f}"
                expect(main).to_contain_text(number, timeout=30_000)
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
        shown = (
            '[data-testid="stVegaLiteChart"], [data-testid="stDataFrame"], [data-testid="stImage"]'
        )
        try:  # React may mount the page's elements a moment after the run has ended
            page.locator(shown).first.wait_for(state="attached", timeout=30_000)
        except PlaywrightTimeout:
            raise AssertionError(page.inner_text('[data-testid="stMain"]')) from None
        screenshot(page, path, shot_dirs)
    finally:
        page.close()


def test_served_maps_are_the_npy_pixel_for_pixel(app_url, browser, micro_project):
    page = load(browser, app_url + "maps")
    try:
        model = next(iter(config.load(micro_project / contract.PARAMS).models))  # the default
        _, pos = contract.read_manifest(micro_project / contract.positions_dir(model))
        sim = np.load(micro_project / contract.positions_dir(model) / pos[0].maps)
        got = served_pixels(page, app_url, ".st-key-heat_pos img")
        assert (got == viridis(sim[0, 0])).all()
        page.get_by_role("tab", name="Attention maps").click()
        page.get_by_text("Maps as scored").click()
        wait_drawn(page)
        assert_no_error(page)
        folder = micro_project / contract.attention_dir(model)
        _, att = contract.read_manifest(folder)
        first = [f for f in att if f.variant == att[0].variant]
        for f in first:
            maps = np.load(folder / f.maps)
            got = served_pixels(page, app_url, f".st-key-heat_{f.method} img")
            assert got.shape[:2] == maps.shape[1:]  # at image resolution, not resampled
            assert (got == viridis(maps[0])).all(), f.method
    finally:
        page.close()


@pytest.mark.parametrize("public", [False, True])
def test_launched_elsewhere_it_serves_only_when_exposure_is_meant(
    public, micro_project, browser, tmp_path
):
    """From another directory Streamlit binds every interface: one refusal line, no data."""
    env = {"VITLAB_DASHBOARD_PUBLIC": "1"} if public else {}
    with serve(tmp_path, micro_project, tmp_path / "streamlit.log", **env) as url:
        page = load(browser, url)
        try:
            best = next(r for r in csv_rows(micro_project) if r["variant"] == "best_epoch")
            if public:
                assert page.locator('[data-testid="stMain"] h1').first.inner_text() == "Leaderboard"
                # expect() waits: on a slow machine the table mounts after the run has ended
                number = f"{float(best['test_acc']):.4f}"
                expect(page.locator('[data-testid="stTable"]')).to_contain_text(
                    number, timeout=30_000
                )
            else:
                body = page.inner_text("body")
                assert page.locator(ERRORS).first.inner_text() == (
                    "Not serving on every interface: run `streamlit run dashboard/app.py "
                    "--server.address 127.0.0.1`, or set VITLAB_DASHBOARD_PUBLIC=1 to expose "
                    "the dashboard deliberately."
                ).replace("`", "")
                assert f"{float(best['test_acc']):.4f}" not in body and best["arch"] not in body
        finally:
            page.close()
