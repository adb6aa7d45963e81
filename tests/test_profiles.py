"""The real study is one params file away and runs the same stages with the reference recipe."""

from __future__ import annotations

import yaml
from dvc.repo import Repo

from tests.conftest import ROOT, dvc, make_project


def _stages(root) -> list[str]:
    return dvc("stage", "list", "--name-only", cwd=root).stdout.split()


def test_the_oxford_profile_resolves_into_the_default_stages(tmp_path):
    default = make_project(tmp_path / "default", params=ROOT / "params.yaml")
    real = make_project(tmp_path / "real", params=ROOT / "profiles/oxford-pet.yaml")
    names = _stages(default)
    assert names == _stages(real)
    for m in ("B_16", "B_32", "L_16"):
        assert {f"train@{m}", f"select@{m}", f"average@{m}", f"evaluate@{m}"} <= set(names)
    commands = {s.name: s.cmd for s in Repo(str(real)).index.stages}
    assert commands["train@L_16"] == "python -m stages.train L_16"


def test_the_oxford_profile_is_the_reference_recipe():
    p = yaml.safe_load((ROOT / "profiles/oxford-pet.yaml").read_text())
    assert p["data"]["source"] == "oxford_pets"
    assert p["prepare"]["image_size"] == 384
    assert {m: v["arch"] for m, v in p["models"].items()} == {
        "B_16": "B_16_imagenet1k",
        "B_32": "B_32_imagenet1k",
        "L_16": "L_16_imagenet1k",
    }
    assert all(v["pretrained"] for v in p["models"].values())
    t = p["train"]
    assert (
        t["optimizer"],
        t["lr"],
        t["momentum"],
        t["schedule"],
        t["step_size"],
        t["gamma"],
        t["batch_size"],
        t["epochs"],
    ) == ("sgd", 0.002, 0.9, "step", 5, 0.7, 16, 30)
    assert t["weight_decay"] == 0 and t["label_smoothing"] == 0
    default = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(p) == set(default)  # same sections: only values differ
