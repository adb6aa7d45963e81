"""Two-process DDP (gloo, CPU) follows the single-process run on the same global batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_project, run


def _train(root: Path, nproc: int) -> dict:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["epochs"] = 3
    # SGD (the reference recipe): updates are linear in the gradient, so the float noise of a
    # different reduction order stays noise (Adam's normalisation magnifies it near zero grads)
    params["train"].update(optimizer="sgd", lr=0.05, weight_decay=0.0)
    params["models"]["M16"]["dropout"] = 0.0  # dropout draws differ per rank; the math must not
    params["runtime"]["nproc_per_node"] = nproc
    params["runtime"]["torchrun_args"] = "--standalone"  # a free port of its own, race-free
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("stages.fetch", "stages.prepare"):
        run([sys.executable, "-m", stage], root)
    run([sys.executable, "-m", "stages.train", "M16"], root)
    return json.loads((root / "models/M16/history.json").read_text())


def test_two_gloo_ranks_follow_the_single_process_trajectory(tmp_path):
    single = _train(make_project(tmp_path / "one"), 1)
    double = _train(make_project(tmp_path / "two"), 2)
    assert len(single["epochs"]) == len(double["epochs"]) == 3
    for a, b in zip(single["epochs"], double["epochs"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
        assert b["val_acc"] == a["val_acc"]
    # and it trained: the loss fell
    assert double["epochs"][-1]["train_loss"] < double["epochs"][0]["train_loss"]
