"""render_positions@M and render_attention@M under real DVC on the micro profile."""

from __future__ import annotations

import json
import re
import shutil
import sys

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import dvc, run
from vitlab.core.contract import read_manifest
from vitlab.maps.rollout import METHODS, attention_maps, upsample
from vitlab.vit.models import build_model, load_checkpoint

MODELS = {"M16": (4, 4), "M32": (2, 2)}  # the micro models' patch grids at 32 px
VARIANTS = ("best_epoch", "uniform_soup", "greedy_soup")


@pytest.fixture(scope="module")
def maps_project(micro_project, tmp_path_factory):
    """A copy of the trained micro project (the map stages already ran in its repro)."""
    root = tmp_path_factory.mktemp("maps") / "project"
    shutil.copytree(micro_project, root, symlinks=True)
    dvc("repro", *[f"render_{s}@{m}" for m in MODELS for s in ("positions", "attention")], cwd=root)
    return root


def drawn(root, model: str) -> dict:
    """(variant, method) -> the manifest's figure entry of render_attention@<model>."""
    _, figures = read_manifest(root / f"reports/figures/{model}/attention")
    return {(f.variant, f.method): f for f in figures}


def load(root, model: str, variant: str) -> torch.nn.Module:
    net = build_model(f"vitlab_micro_{model[1:]}", num_classes=8, image_size=32)
    checkpoint = drawn(root, model)[(variant, "rollout")].info["checkpoint"]
    return load_checkpoint(net, root / checkpoint).eval()


def test_stages_write_figures_raw_maps_and_scores_for_every_model(maps_project):
    root = maps_project
    test_masks = np.load(root / "data/prepared/test/masks.npy")
    for model, grid in MODELS.items():
        base = root / "reports/figures" / model
        for variant in ("best_epoch", "uniform_soup"):
            sim = np.load(base / "positions" / f"positions_{variant}.npy")
            assert sim.shape == (*grid, *grid)
            np.testing.assert_allclose(np.einsum("ijij->ij", sim), 1.0, atol=1e-5)  # self = 1
            assert (base / "positions" / f"positions_{variant}.png").stat().st_size > 1000
        figures = drawn(root, model)
        assert set(figures) == {(v, m) for v in VARIANTS for m in METHODS}
        for (variant, method), f in figures.items():
            assert f.images == tuple(range(8)) and f.info["grid_shape"] == list(grid)
            assert len(f.info["labels"]) == len(f.info["predicted"]) == 8
            on_grid = np.load(base / "attention" / f.info["grid"])
            assert on_grid.shape == (8, *grid) and np.isfinite(on_grid).all()
            shown = np.load(base / "attention" / f.maps)  # what is drawn and scored
            assert shown.shape == (8, 32, 32)
            np.testing.assert_allclose(shown, upsample(on_grid, (32, 32)).numpy(), atol=1e-6)
            assert (
                f.info["scores"] == json.loads((base / "scores.json").read_text())[variant][method]
            )
            assert (base / "attention" / f.png).stat().st_size > 1000
        scores = json.loads((base / "scores.json").read_text())
        assert set(scores) == set(VARIANTS)
        for variant in VARIANTS:
            assert set(scores[variant]) == set(METHODS)
            for s in scores[variant].values():
                assert s["n"] == len(test_masks) == 64  # the whole test split, not the drawn 8
                assert s["pointing_uniform"] == pytest.approx(test_masks.mean(), abs=1e-5)
                assert 0 <= s["pointing"] <= 1 and 0 <= s["energy"] <= 1
    # even five epochs on 32 px put rollout's maximum on the object more often than chance
    best = json.loads((root / "reports/figures/M16/scores.json").read_text())["best_epoch"]
    assert best["rollout"]["pointing"] > best["rollout"]["pointing_uniform"]


def test_a_soup_gives_its_own_maps_not_another_models(maps_project):
    root = maps_project
    images = np.load(root / "data/prepared/test/images.npy")[:8]
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    base = root / "reports/figures/M16/attention"
    ours = {}
    for variant in ("best_epoch", "uniform_soup"):
        ours[variant], _ = attention_maps(load(root, "M16", variant), x)
        again, _ = attention_maps(load(root, "M16", variant), x)  # reloaded from the same file
        for m in METHODS:
            torch.testing.assert_close(again[m], ours[variant][m], rtol=0, atol=0)
            saved = torch.from_numpy(np.load(base / f"attention_{m}_{variant}_grid.npy"))
            torch.testing.assert_close(saved, ours[variant][m], rtol=1e-5, atol=1e-6)
    for m in METHODS:
        assert (ours["best_epoch"][m] - ours["uniform_soup"][m]).abs().max() > 1e-4


def test_a_second_repro_leaves_the_map_stages_alone(maps_project):
    out = dvc("status", cwd=maps_project).stdout
    assert "render_" not in out


def params_with(root, **maps):
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["maps"].update(maps)
    return yaml.safe_dump(params, sort_keys=False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"images": [999]}, r"^error: maps.images \[999\]: none is inside the test split"),
        ({"variants": ["soup_of_the_day"]}, r"^error: params.yaml: maps.variants.0: Input should"),
    ],
)
def test_bad_map_params_fail_in_one_line_and_leave_the_outputs(maps_project, change, message):
    root = maps_project
    original = (root / "params.yaml").read_text()
    base = root / "reports/figures/M16"
    before = {p: p.read_bytes() for p in base.rglob("*") if p.is_file()}
    try:
        (root / "params.yaml").write_text(params_with(root, **change))
        proc = run([sys.executable, "-m", "stages.render_attention", "M16"], root, check=False)
    finally:
        (root / "params.yaml").write_text(original)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert re.match(message, proc.stderr), proc.stderr
    after = {p: p.read_bytes() for p in base.rglob("*") if p.is_file()}
    assert after == before  # nothing half-written, no temporary folder left behind
