"""Generated data drawn over worker processes is exactly what one process draws."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

from vitlab.captions import store
from vitlab.captions.dataset import from_scenes
from vitlab.captions.fresh import FreshScenes
from vitlab.captions.scenes import SceneConfig, generate
from vitlab.sources import synthetic

ROOT = Path(__file__).resolve().parents[1]
SCENES = SceneConfig(image_size=32, objects=(1, 2), grid=2)


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_synthetic_split_files_do_not_depend_on_the_workers(tmp_path):
    d = synthetic.Difficulty()
    listed = {}
    for workers in (1, 3):
        out = tmp_path / str(workers)
        out.mkdir()
        listed[workers] = synthetic.write_split(out, "val", 3, 5, 32, 7, d, workers=workers)
    assert listed[1] == listed[3] == [(f"{i:05d}.png", f"{i:05d}_mask.png", i % 5)
                                      for i in range(15)]  # fmt: skip
    serial, parallel = _digests(tmp_path / "1"), _digests(tmp_path / "3")
    assert len(serial) == 30 and serial == parallel
    assert len(set(serial.values())) > 20  # distinct images, not one repeated


def test_scene_folder_does_not_depend_on_the_workers(tmp_path):
    counts = {"train": 7, "val": 3, "test": 2}
    for workers in (1, 2):
        assert store.write_scenes(tmp_path / str(workers), counts, SCENES, 3, workers=workers) == (
            counts
        )
    serial, parallel = _digests(tmp_path / "1"), _digests(tmp_path / "2")
    assert len(serial) == 2 * 12 + 1 and serial == parallel
    doc = json.loads((tmp_path / "2" / store.CAPTIONS_FILE).read_text())
    val = [im for im in doc["images"] if im["split"] == "val"]
    for im, scene in zip(val, generate(SCENES, 3, "val", 0, 3), strict=True):
        assert im["sentences"][0]["tokens"] == scene.tokens
        assert im["sentences"][0]["token_objects"] == scene.token_objects
    items = store.read_items(tmp_path / "2")
    loaded = store.load_split(items, "val")
    assert np.array_equal(loaded.images[2], generate(SCENES, 3, "val", 2, 1)[0].image)


def test_fresh_scenes_over_workers_are_the_serial_draw():
    first = from_scenes(generate(SCENES, 5, "train", 0, 9), [""] * 9)
    with FreshScenes(first, SCENES, 5, workers=2) as draw:
        assert draw(1) is first
        third = draw(3)
    serial = generate(SCENES, 5, "train", 18, 9)  # epoch 3: scenes 2n .. 3n-1
    assert np.array_equal(third.images, np.stack([s.image for s in serial]))
    assert np.array_equal(third.masks, np.stack([s.mask for s in serial]))
    assert third.captions == [[s.tokens] for s in serial]
    assert not np.array_equal(third.images, first.images)


@pytest.mark.parametrize("spawn", [False, True])
def test_pool_workers_die_with_a_killed_stage(spawn):
    """A stage SIGKILLed while its pool is up leaves no worker behind (holding its stdout)."""
    script = (
        "import os, signal, psutil\n"
        "from vitlab.core.workers import process_pool\n"
        f"pool = process_pool(2, spawn={spawn})\n"
        "pool.submit(os.getpid).result()\n"
        "print(*[p.pid for p in psutil.Process().children()], flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)  # fmt: skip
    assert run.returncode == -signal.SIGKILL
    workers = [psutil.Process(int(pid)) for pid in run.stdout.split()]
    assert workers
    gone, alive = psutil.wait_procs(workers, timeout=10)
    for p in alive:
        p.kill()
    assert not alive
