"""index_folder on real folders in both layouts, and the errors a user sees for bad ones."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import dvc, make_project
from vitlab.core.errors import VitlabError
from vitlab.sources.folder import index_folder, stratified_carve
from vitlab.sources.rawdata import read_index, resolve

REPO = Path(__file__).resolve().parents[1]


def img(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, "PNG" if path.suffix.lower() == ".png" else "JPEG")
    return path


def homework(root: Path, classes: int = 3, train: int = 10, val: int = 3) -> Path:
    for label in range(classes):
        for i in range(train):
            img(root / "train" / f"{label}_{label * 100 + i}.jpg", i)
        for i in range(val):
            img(root / "val" / f"{label}_{label * 100 + 50 + i}.jpg", i)
    return root


def class_tree(root: Path, per_class: dict[str, int]) -> Path:
    for name, n in per_class.items():
        for i in range(n):
            img(root / name / f"{name}{i:03d}.{'png' if i % 2 else 'jpg'}", i)
    return root


def counts(ds, split: str) -> Counter[int]:
    return Counter(s.label for s in ds.samples if s.split == split)


def test_stratified_carve_is_seeded_per_class_and_order_free() -> None:
    labels = {f"{c}/{i}": c for c in range(3) for i in range(10)}
    a = stratified_carve(labels, {"test": 0.2, "val": 0.3}, seed=5)
    assert Counter((labels[k], v) for k, v in a.items()) == {
        (c, s): n for c in range(3) for s, n in (("test", 2), ("val", 3), ("train", 5))
    }
    shuffled = dict(reversed(list(labels.items())))
    assert stratified_carve(shuffled, {"test": 0.2, "val": 0.3}, seed=5) == a
    assert stratified_carve(labels, {"test": 0.2, "val": 0.3}, seed=6) != a
    # one class's assignment does not depend on the other classes being there
    only0 = {k: v for k, v in labels.items() if v == 0}
    assert stratified_carve(only0, {"test": 0.2, "val": 0.3}, seed=5) == {
        k: v for k, v in a.items() if labels[k] == 0
    }
    # tiny classes: f > 0 still carves one, and train always keeps one
    assert sorted(stratified_carve({"x": 0, "y": 0}, {"val": 0.1}, 0).values()) == ["train", "val"]
    assert stratified_carve({"x": 0}, {"val": 0.5}, 0) == {"x": "train"}


def test_homework_layout_with_classes_txt_carves_test_from_train(tmp_path: Path) -> None:
    src = homework(tmp_path / "hw")
    (src / "classes.txt").write_text("Abyssinian\namerican_bulldog\nbasset_hound\n")
    (src / "train" / ".DS_Store").write_text("junk")
    (src / "train" / "notes.txt").write_text("not an image")
    out = tmp_path / "raw"
    ds = index_folder(src, out, val_fraction=0.5, test_fraction=0.2, seed=0)
    assert ds.classes == ["Abyssinian", "american_bulldog", "basset_hound"]
    assert ds.mask_format == "none" and ds.source == "folder"
    assert read_index(out) == ds
    assert counts(ds, "val") == {0: 3, 1: 3, 2: 3}  # the val folder as it is (no carving)
    assert counts(ds, "test") == {0: 2, 1: 2, 2: 2}  # 0.2 of each class's train
    assert counts(ds, "train") == {0: 8, 1: 8, 2: 8}
    for s in ds.samples:
        assert not Path(s.image).is_absolute()  # relative to the index: clones stay valid
        p = resolve(out, s.image)
        assert p.is_file() and s.mask == ""
        assert s.label == int(p.name.split("_")[0])
        assert p.parent.name == ("val" if s.split == "val" else "train")


def test_homework_layout_default_names_and_test_folder(tmp_path: Path) -> None:
    src = homework(tmp_path / "hw", classes=2, train=4, val=2)
    img(src / "test" / "1_900.jpg")
    img(src / "test" / "0_901.jpg")
    ds = index_folder(src, tmp_path / "raw", val_fraction=0.0, test_fraction=0.0, seed=0)
    assert ds.classes == ["class_00", "class_01"]
    assert {Path(s.image).name for s in ds.samples if s.split == "test"} == {
        "1_900.jpg",
        "0_901.jpg",
    }
    assert counts(ds, "train") == {0: 4, 1: 4}


def test_class_folders_carve_val_and_test_deterministically(tmp_path: Path) -> None:
    src = class_tree(tmp_path / "pets", {"cat": 10, "dog": 20, "axolotl": 10})
    (src / "empty_class").mkdir()
    (src / "README.md").write_text("top-level non-image files are ignored")
    ds = index_folder(src, tmp_path / "raw", val_fraction=0.2, test_fraction=0.1, seed=3)

    def under(ds, index: Path, folder: Path) -> set:
        return {(resolve(index, s.image).resolve().relative_to(folder).as_posix(), s.split)
                for s in ds.samples}  # fmt: skip

    assert ds.classes == ["axolotl", "cat", "dog"]
    assert counts(ds, "val") == {0: 2, 1: 2, 2: 4}
    assert counts(ds, "test") == {0: 1, 1: 1, 2: 2}
    assert counts(ds, "train") == {0: 7, 1: 7, 2: 14}
    assert all(Path(s.image).parent.name == ds.classes[s.label] for s in ds.samples)

    # Same folder contents elsewhere + same seed -> the same assignment; another seed differs.
    moved = Path(shutil.copytree(src, tmp_path / "elsewhere" / "pets"))
    ds2 = index_folder(moved, tmp_path / "raw2", val_fraction=0.2, test_fraction=0.1, seed=3)
    rel = under(ds, tmp_path / "raw", src.resolve())
    assert under(ds2, tmp_path / "raw2", moved.resolve()) == rel
    ds3 = index_folder(src, tmp_path / "raw3", val_fraction=0.2, test_fraction=0.1, seed=4)
    assert under(ds3, tmp_path / "raw3", src.resolve()) != rel


def test_split_then_class_folders(tmp_path: Path) -> None:
    src = tmp_path / "data"
    class_tree(src / "train", {"b": 6, "a": 6})
    class_tree(src / "val", {"a": 2, "b": 2})
    ds = index_folder(src, tmp_path / "raw", val_fraction=0.2, test_fraction=0.5, seed=0)
    assert ds.classes == ["a", "b"]
    assert counts(ds, "val") == {0: 2, 1: 2}
    assert counts(ds, "test") == {0: 3, 1: 3}
    assert all(
        Path(s.image).parts[-3] == ("val" if s.split == "val" else "train") for s in ds.samples
    )


@pytest.mark.parametrize(
    "setup, match",
    [
        ("missing", "does not exist"),
        ("empty", "holds no .jpg/.jpeg/.png images"),
        ("flat", "holds images directly, so they carry no class"),
        ("val_only", "has val/ but no train/"),
        ("bad_name", r"cat\.jpg is not named \{label\}_\{index\}"),
        ("short_classes", r"classes\.txt names 1 classes but the files use labels up to 2"),
        ("mixed", "use one layout for every split"),
    ],
)
def test_bad_folders_are_one_clear_error(tmp_path: Path, setup: str, match: str) -> None:
    src = tmp_path / "in"
    if setup != "missing":
        src.mkdir()
    if setup == "flat":
        img(src / "a.jpg")
    elif setup == "val_only":
        img(src / "val" / "0_1.jpg")
    elif setup in ("bad_name", "short_classes", "mixed"):
        homework(src, classes=3, train=3, val=1)
        if setup == "bad_name":
            img(src / "train" / "cat.jpg")
        elif setup == "short_classes":
            (src / "classes.txt").write_text("only_one\n")
        else:
            shutil.rmtree(src / "val")
            img(src / "val" / "cat" / "x.jpg")
    out = tmp_path / "raw"
    with pytest.raises(VitlabError, match=match) as e:
        index_folder(src, out, val_fraction=0.2, test_fraction=0.2, seed=0)
    msg = str(e.value)
    assert msg.startswith("data.folder.path: ") and (str(src) in msg or str(src.resolve()) in msg)
    assert not out.exists()


def test_empty_split_names_the_fraction(tmp_path: Path) -> None:
    src = class_tree(tmp_path / "pets", {"cat": 5, "dog": 5})
    with pytest.raises(VitlabError, match=r"val split .* empty; raise data.folder.val_fraction"):
        index_folder(src, tmp_path / "raw", val_fraction=0.0, test_fraction=0.2, seed=0)
    with pytest.raises(VitlabError, match=r"data.folder.test_fraction must be in \[0, 1\)"):
        index_folder(src, tmp_path / "raw", val_fraction=0.2, test_fraction=1.5, seed=0)
    assert not (tmp_path / "raw").exists()


def test_fetch_stage_reports_a_missing_folder_in_one_line(tmp_path: Path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["source"] = "folder"
    params["data"]["folder"]["path"] = "no/such/folder"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    r = subprocess.run(
        [sys.executable, "-m", "stages.fetch"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.startswith("error: data.folder.path: no/such/folder does not exist")
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "data" / "raw").exists()


@pytest.mark.slow
def test_the_folder_is_a_dependency_and_a_moved_clone_reads_it(tmp_path: Path) -> None:
    root = make_project(tmp_path / "p")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["source"] = "folder"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    class_tree(root / "inputs/images", {"cat": 6, "dog": 6})
    dvc("repro", "fetch", cwd=root)
    assert len(read_index(root / "data/raw").samples) == 12
    assert "fetch" not in dvc("status", "fetch", cwd=root).stdout
    img(root / "inputs/images" / "cat" / "cat_extra.jpg")  # an added image: fetch is stale
    assert "fetch" in dvc("status", "fetch", cwd=root).stdout
    dvc("repro", "fetch", cwd=root)
    assert len(read_index(root / "data/raw").samples) == 13
    # a copy of the workspace elsewhere reads its own folder, not the original's
    moved = Path(shutil.copytree(root, tmp_path / "elsewhere" / "p", symlinks=True))
    shutil.rmtree(root)
    ds = read_index(moved / "data/raw")
    assert all(resolve(moved / "data/raw", s.image).is_file() for s in ds.samples)
