"""Bad input: one `error:` line naming the parameter or file, exit 2, nothing half-written."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.conftest import run


@pytest.fixture
def project(micro_project: Path, tmp_path: Path) -> Path:
    """A private copy of the trained micro project, free to break."""
    dest = tmp_path / "p"
    shutil.copytree(micro_project, dest, symlinks=True)
    return dest


def set_param(root: Path, dotted: str, value) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    *path, last = dotted.split(".")
    node = params
    for key in path:
        node = node[key]
    node[last] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def stage(root: Path, *args: str):
    return run([sys.executable, "-m", *args], root, check=False)


def assert_one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unknown_model_key_lists_the_known_ones(project):
    assert_one_line_error(stage(project, "stages.train", "B_99"), "models.B_99", "M16, M32")


def test_unknown_architecture(project):
    set_param(project, "models.M16.arch", "B_99")
    shutil.rmtree(project / "models/M16")
    proc = stage(project, "stages.train", "M16")
    assert_one_line_error(proc, "unknown model architecture 'B_99'", "vitlab_micro_16")
    assert not (project / "models/M16").exists()


def test_a_params_file_without_a_runtime_key_names_it(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    del params["runtime"]["fast_dropout"]  # a params.yaml from before the key existed
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert_one_line_error(stage(project, "stages.train", "M16"), "runtime.fast_dropout")


def test_image_size_not_divisible_by_the_patch(project):
    set_param(project, "prepare.image_size", 36)
    assert stage(project, "stages.prepare").returncode == 0
    proc = stage(project, "stages.train", "M16")
    assert_one_line_error(proc, "image size 36", "patch size 8", "prepare.image_size")


def test_top_k_larger_than_the_kept_epochs(project):
    set_param(project, "select.k", 5)
    before = (project / "models/M16/selection.json").read_bytes()
    proc = stage(project, "stages.select", "M16")
    assert_one_line_error(proc, "select.k (5) exceeds train.keep_top_k (3)", "raise keep_top_k")
    assert (project / "models/M16/selection.json").read_bytes() == before  # untouched


def test_keep_top_k_below_three_is_refused(project):
    set_param(project, "train.keep_top_k", 2)
    assert_one_line_error(
        stage(project, "stages.train", "M16"),
        "train.keep_top_k: Input should be greater than or equal to 3",
    )


def test_missing_dataset_folder(project):
    set_param(project, "data.source", "folder")
    set_param(project, "data.folder.path", str(project / "no-such-folder"))
    proc = stage(project, "stages.fetch")
    assert_one_line_error(proc, "data.folder.path", "no-such-folder")
    assert (project / "data/raw/index.csv").is_file()  # the previous raw data is intact


def test_corrupt_and_truncated_images_are_counted_and_skipped(project):
    raw = project / "data/raw/train"
    good = (raw / "00000.png").read_bytes()
    (raw / "00000.png").write_bytes(good[: len(good) // 2])  # truncated
    (raw / "00001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # corrupt
    Image.new("RGB", (5, 5)).save(raw / "00002.png")  # fine, just small
    proc = stage(project, "stages.prepare")
    assert proc.returncode == 0, proc.stderr
    assert "skipped 2 unreadable image(s)" in proc.stdout
    meta = yaml.safe_load((project / "data/prepared/meta.json").read_text())
    assert meta["splits"]["train"]["count"] == 8 * 24 - 2
    assert sorted(meta["splits"]["train"]["skipped"]) == ["train/00000.png", "train/00001.png"]


def test_a_checkpoint_of_another_architecture_is_refused_by_name(project):
    selection = yaml.safe_load((project / "models/M16/selection.json").read_text())
    victim = project / selection["selected"][1]["path"]
    other = sorted((project / "models/M32/epochs").glob("*.pt"))[0]
    shutil.copy(other, victim)
    (project / "models/M16/uniform_soup.pt").unlink()
    proc = stage(project, "stages.average", "M16")
    assert_one_line_error(proc, victim.name, "patch_embedding.weight has shape")
    assert not (project / "models/M16/uniform_soup.pt").exists()


def test_an_unreadable_prepared_split_names_the_stage_to_run(project):
    shutil.rmtree(project / "data/prepared/val")
    assert_one_line_error(stage(project, "stages.evaluate", "M16"), "dvc repro prepare")
