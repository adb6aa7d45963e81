"""Profiles are overlays of params.yaml: the real study is one command away, runs the same
stages with the reference recipe, and each profile holds only what differs from the default."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from dvc.repo import Repo

from tests.conftest import ROOT, dvc, make_project
from vitlab.core import config


def _stages(root) -> list[str]:
    return dvc("stage", "list", "--name-only", cwd=root).stdout.split()


def test_the_oxford_profile_resolves_into_the_default_stages(tmp_path):
    default = make_project(tmp_path / "default", params=None)
    real = make_project(tmp_path / "real", params=ROOT / "profiles/oxford-pet.yaml")
    names = _stages(default)
    assert names == _stages(real)
    for m in ("B_16", "B_32", "L_16"):
        assert {f"train@{m}", f"select@{m}", f"average@{m}", f"evaluate@{m}"} <= set(names)
    commands = {s.name: s.cmd for s in Repo(str(real)).index.stages}
    assert commands["train@L_16"] == "python -m stages.train L_16"


def test_the_documented_command_applies_the_reference_recipe(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    subprocess.run(
        [sys.executable, "-m", "vitlab.profile", "oxford-pet", "--params", str(params)],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    text = params.read_text()
    assert "# vitlab parameters" in text  # the default's comments survive
    p = config.load(params)
    assert p.data.source == "oxford_pets" and p.prepare.image_size == 384
    assert {m: v.arch for m, v in p.models.items()} == {
        "B_16": "B_16_imagenet1k",
        "B_32": "B_32_imagenet1k",
        "L_16": "L_16_imagenet1k",
    }
    assert all(v.pretrained for v in p.models.values())
    t = p.train
    assert (t.optimizer, t.lr, t.momentum, t.schedule, t.step_size, t.gamma, t.batch_size,
            t.epochs, t.weight_decay, t.label_smoothing) == (
        "sgd", 0.002, 0.9, "step", 5, 0.7, 16, 30, 0, 0)  # fmt: skip


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml")))
def test_a_profile_holds_only_what_differs(name):
    default = _leaves(yaml.safe_load((ROOT / "params.yaml").read_text()))
    overlay = _leaves(yaml.safe_load((ROOT / f"profiles/{name}.yaml").read_text()))
    same = [k for k, v in overlay.items() if k in default and default[k] == v]
    assert not same, f"profiles/{name}.yaml repeats the default's values: {same}"
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    merged = config.overlay(base, yaml.safe_load((ROOT / f"profiles/{name}.yaml").read_text()))
    config.validate(merged)  # and the result is a valid params file


def test_an_unknown_profile_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vitlab.profile", "nope", "--params", str(tmp_path / "p.yaml")],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: profile 'nope': profiles/nope.yaml does not exist; known profiles: "
        + ", ".join(sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml")))
    ]
