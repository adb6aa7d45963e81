"""A training killed mid-run and rerun with `dvc repro` ends where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from tests.conftest import dvc, make_project, project_env

EPOCHS = 6


def _project(dest: Path) -> Path:
    root = make_project(dest)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["epochs"] = EPOCHS
    params["train"]["batch_size"] = 8  # more steps an epoch: time to interrupt it
    params["runtime"].update(amp="bf16", fast_dropout=True)  # the default's CPU numerics
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def _completed_epoch(last: Path) -> int:
    try:
        return torch.load(last, weights_only=True)["epoch"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return 0


def _without_timing(history: dict) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history["epochs"]]


def test_resume_after_kill_gives_the_uninterrupted_result(tmp_path):
    straight, killed = _project(tmp_path / "straight"), _project(tmp_path / "killed")
    dvc("repro", "train@M16", cwd=straight)

    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "train@M16"],
        cwd=killed,
        env=project_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = killed / "models/M16/last.pt"
    deadline = time.monotonic() + 300
    while _completed_epoch(last) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: dvc and the stage
    proc.wait()
    interrupted_at = _completed_epoch(last)
    assert 2 <= interrupted_at < EPOCHS, f"training was not interrupted mid-run ({interrupted_at})"

    rerun = dvc("repro", "train@M16", cwd=killed)
    assert f"resuming after epoch {interrupted_at}" in rerun.stdout + rerun.stderr

    a = json.loads((straight / "models/M16/history.json").read_text())
    b = json.loads((killed / "models/M16/history.json").read_text())
    assert _without_timing(a) == _without_timing(b)
    assert a["kept"] == b["kept"]
    for epoch in a["kept"]:
        name = f"models/M16/epochs/epoch_{epoch:03d}.pt"
        sa = torch.load(straight / name, weights_only=True)
        sb = torch.load(killed / name, weights_only=True)
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key
    curve = (killed / "reports/train/M16/plots/metrics/val_acc.tsv").read_text().splitlines()
    assert len(curve) == 1 + EPOCHS  # rebuilt from the resume state: no gaps, no repeats


def test_a_changed_parameter_starts_afresh(tmp_path):
    root = _project(tmp_path / "p")
    dvc("repro", "train@M16", cwd=root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["lr"] = 0.001
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc("repro", "train@M16", cwd=root)
    assert "resuming" not in out.stdout + out.stderr
    history = json.loads((root / "models/M16/history.json").read_text())
    assert [r["epoch"] for r in history["epochs"]] == list(range(1, EPOCHS + 1))
