"""The Karpathy-split reader on a small file written here, and fetch_captions on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from vitlab.captions import store
from vitlab.captions.karpathy import read_karpathy
from vitlab.core.errors import VitlabError

ROOT = Path(__file__).resolve().parents[1]


def write_set(root: Path, images: list[dict] | None = None) -> Path:
    """A Flickr-style folder (no filepath) plus one COCO-style entry (with filepath)."""
    (root / "imgs" / "val2014").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg", "c.png", "val2014/d.jpg"):
        size = (40, 30) if name.endswith("jpg") else (20, 20)
        arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "imgs" / name)
    if images is None:
        images = [
            {
                "filename": "a.jpg",
                "split": "train",
                "sentences": [
                    {"tokens": ["a", "dog", "runs"], "raw": "A dog runs."},
                    {"raw": "The Dog, running!"},
                ],
            },
            {"filename": "b.jpg", "split": "restval", "sentences": [{"raw": "Two cats."}]},
            {"filename": "c.png", "split": "val", "sentences": [{"tokens": ["a", "bird"]}]},
            {
                "filepath": "val2014",
                "filename": "d.jpg",
                "split": "test",
                "sentences": [{"tokens": ["A", "Boat"], "raw": "A boat"}],
            },
        ]
    path = root / "dataset.json"
    path.write_text(json.dumps({"dataset": "tiny", "images": images}))
    return path


def test_reader_maps_restval_to_train_and_tokenises_raw_sentences(tmp_path):
    items = read_karpathy(write_set(tmp_path), tmp_path / "imgs")
    assert [(it.key, it.split) for it in items] == [
        ("a.jpg", "train"),
        ("b.jpg", "train"),
        ("c.png", "val"),
        ("val2014/d.jpg", "test"),
    ]
    assert items[0].captions == [["a", "dog", "runs"], ["the", "dog", "running"]]
    assert items[1].captions == [["two", "cats"]]
    assert items[3].captions == [["a", "boat"]]
    assert items[3].path == tmp_path / "imgs" / "val2014" / "d.jpg"
    assert items[0].mask is None and items[0].token_objects is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"filename": "nope.jpg", "split": "train", "sentences": [{"raw": "x"}]},
            r"image file .*nope.jpg is missing; check captions.karpathy.images",
        ),
        (
            {"filename": "a.jpg", "split": "train", "sentences": [{"tokens": [], "raw": " "}]},
            r"image a.jpg sentence 0 is an empty caption",
        ),
        ({"filename": "a.jpg", "split": "train", "sentences": []}, r"image a.jpg has no captions"),
        (
            {"filename": "a.jpg", "split": "dev", "sentences": [{"raw": "x"}]},
            r"image a.jpg has unknown split 'dev'; use one of train, restval, val, test",
        ),
        ({"split": "train", "sentences": [{"raw": "x"}]}, r"image entry 0 has no 'filename'"),
    ],
)
def test_bad_entries_are_one_line_errors(tmp_path, entry, message):
    path = write_set(tmp_path, [entry])
    with pytest.raises(VitlabError, match=message) as err:
        read_karpathy(path, tmp_path / "imgs")
    assert "\n" not in str(err.value)


def test_bad_files_are_one_line_errors(tmp_path):
    with pytest.raises(VitlabError, match="is missing; set captions.karpathy.json"):
        read_karpathy(tmp_path / "none.json", tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(VitlabError, match="is not valid JSON"):
        read_karpathy(tmp_path / "bad.json", tmp_path)
    (tmp_path / "empty.json").write_text('{"images": []}')
    with pytest.raises(VitlabError, match="no 'images' list"):
        read_karpathy(tmp_path / "empty.json", tmp_path)


def run_fetch(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "stages.fetch_captions"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )


def write_params(cwd: Path, json_path: Path, images: Path) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["captions"].update(
        source="karpathy",
        image_size=32,
        karpathy={"json": str(json_path), "images": str(images), "limit": 0},
    )
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))


def test_fetch_captions_resizes_a_karpathy_set_into_the_prepared_folder(tmp_path):
    write_params(tmp_path, write_set(tmp_path), tmp_path / "imgs")
    proc = run_fetch(tmp_path)
    assert proc.returncode == 0, proc.stderr
    items = store.read_items(tmp_path / "data/captions")
    assert [it.split for it in items] == ["train", "train", "val", "test"]
    train = store.load_split(items, "train")
    assert train.images.shape == (2, 32, 32, 3)
    assert train.captions[0] == [["a", "dog", "runs"], ["the", "dog", "running"]]
    assert train.masks is None
    assert store.generator(tmp_path / "data/captions") is None


def test_fetch_captions_bad_input_exits_2_with_one_line_and_keeps_the_old_output(tmp_path):
    json_path = write_set(tmp_path)
    write_params(tmp_path, json_path, tmp_path / "imgs")
    assert run_fetch(tmp_path).returncode == 0
    before = (tmp_path / "data/captions/captions.json").read_text()
    (tmp_path / "imgs" / "c.png").unlink()
    proc = run_fetch(tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("error: ") and "c.png is missing" in proc.stderr
    assert (tmp_path / "data/captions/captions.json").read_text() == before
    leftovers = [p.name for p in (tmp_path / "data").iterdir() if p.name != "captions"]
    assert leftovers == []
