"""Shared fixtures: scratch copies of the project, run with real DVC in a real git repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vitlab.profile import apply as apply_profile

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


def run(
    cmd: list[str], cwd: Path, check: bool = True, env_extra: dict | None = None, **kw
) -> subprocess.CompletedProcess:
    """Run a command in a scratch project, capturing text output; fail loudly with it."""
    env = {**project_env(), **(env_extra or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd, check=check)


def make_project(dest: Path, params: Path | None = MICRO) -> Path:
    """Copy the project's tracked (and new, unignored) files into `dest` as a fresh git repo,
    with the profile `params` (default: micro) applied to its params.yaml."""
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
    if params is not None:  # a profile: an overlay of the repository's params.yaml
        apply_profile(dest / "params.yaml", params)
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], dest)
    return dest


AUDIT = ROOT / "tests" / "audit"  # sitecustomize: which files each stage process reads


@pytest.fixture(scope="session")
def micro_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch project on the micro profile after a full `dvc repro` (shared, read-only).

    Every stage process records the files it read into <root>/../reads (tests/test_dag_deps.py).
    """
    root = make_project(tmp_path_factory.mktemp("micro"))
    reads = root.parent / "reads"
    reads.mkdir()
    env = {"VITLAB_READS": str(reads), "PYTHONPATH": str(AUDIT)}
    run([sys.executable, "-m", "dvc", "repro"], root, env_extra=env)
    return root


FAULTS_REPORT = ROOT / "reports" / "bench" / "faults.md"


@pytest.fixture(scope="session")
def fault_rows() -> Iterator[list[dict]]:
    """Rows (fault, stage, outcome, ok) that fault-injection tests add; written at the end of
    the session to reports/bench/faults.md with the totals."""
    rows: list[dict] = []
    yield rows
    if not rows:
        return
    lost = sum(not r["ok"] for r in rows)
    lines = [
        "# Fault injection (`pytest -m faults`, micro profile, real processes)",
        "",
        f"{len(rows)} faults injected; results lost or wrong: {lost}.",
        "",
        "| fault | stage | outcome |",
        "|---|---|---|",
        *(f"| {r['fault']} | {r['stage']} | {r['outcome']} |" for r in rows),
        "",
    ]
    FAULTS_REPORT.parent.mkdir(parents=True, exist_ok=True)
    FAULTS_REPORT.write_text("\n".join(lines))
