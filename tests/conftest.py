"""Shared fixtures: scratch copies of the project, run with real DVC in a real git repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "profiles" / "micro.yaml"


def project_env() -> dict[str, str]:
    """The environment stages run in: this interpreter's bin first, no analytics."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command in a scratch project, capturing text output; fail loudly with it."""
    proc = subprocess.run(cmd, cwd=cwd, env=project_env(), capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd, check=check)


def make_project(dest: Path, params: Path | None = MICRO) -> Path:
    """Copy the project's tracked (and new, unignored) files into `dest` as a fresh git repo."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in files:
        src = ROOT / rel
        skip = rel.startswith(("tests/", "dashboard/", "docs/", "reports/")) or rel == "dvc.lock"
        if src.is_file() and not skip:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    if params is not None:
        shutil.copy(params, dest / "params.yaml")
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], dest)
    return dest


@pytest.fixture(scope="session")
def micro_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch project on the micro profile after a full `dvc repro` (shared, read-only)."""
    root = make_project(tmp_path_factory.mktemp("micro"))
    dvc("repro", cwd=root)
    return root
