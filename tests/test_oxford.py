"""fetch_oxford end to end: archives in the official layout served over real HTTP on 127.0.0.1.

The archives carry the real set's oddities in miniature: a PNG and an RGBA PNG under .jpg
names, a listed image that is missing, an image without a trimap, .mat files in images/,
macOS `._` files among the trimaps, and an image no list mentions.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
import sys
import tarfile
import threading
from collections import Counter
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from vitlab.core.errors import VitlabError
from vitlab.sources.oxford import class_name, fetch_oxford, parse_list
from vitlab.sources.rawdata import read_index

REPO = Path(__file__).resolve().parents[1]
HEADER = """#Image CLASS-ID SPECIES BREED ID
#ID: 1:37 Class ids
#SPECIES: 1:Cat 2:Dog
#BREED ID: 1-25:Cat 1:12:Dog
#All images with 1st letter as captial are cat images
#images with small first letter are dog images
"""
# (breed, CLASS-ID, SPECIES, BREED-ID): CLASS-ID is alphabetical, ignoring case
BREEDS = [("Abyssinian", 1, 1, 1), ("american_bulldog", 2, 2, 1), ("basset_hound", 3, 2, 2)]
BREEDS += [("Bengal", 4, 1, 2)]
CLASSES = [b[0] for b in BREEDS]
TRAINVAL, TEST = range(1, 7), range(7, 9)  # image indices per breed
MISSING = "basset_hound_6"  # listed in trainval.txt, absent from images/
NO_TRIMAP = "american_bulldog_3"
UNLISTED = "Bengal_99"  # in images/, in no list


def _img_bytes(fmt: str, channels: int, seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (12, 12, channels), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def build_archives(root: Path) -> dict[str, str]:
    """images.tar.gz and annotations.tar.gz in root; return their md5s."""
    lines = {"list": [], "trainval": [], "test": []}
    with tarfile.open(root / "images.tar.gz", "w:gz") as tar:
        for k, (breed, cid, species, bid) in enumerate(BREEDS):
            for i in [*TRAINVAL, *TEST]:
                name = f"{breed}_{i}"
                row = f"{name} {cid} {species} {bid}"
                lines["list"].append(row)
                lines["trainval" if i in TRAINVAL else "test"].append(row)
                if name == MISSING:
                    continue
                if name == "Abyssinian_1":
                    data = _img_bytes("PNG", 3, 1)  # PNG bytes under a .jpg name
                elif name == "Bengal_1":
                    data = _img_bytes("PNG", 4, 2)  # RGBA, also PNG under .jpg
                else:
                    data = _img_bytes("JPEG", 3, 10 * k + i)
                _add(tar, f"images/{name}.jpg", data)
        _add(tar, f"images/{UNLISTED}.jpg", _img_bytes("JPEG", 3, 3))
        for i in (100, 101, 102):
            _add(tar, f"images/Abyssinian_{i}.mat", b"MATLAB 5.0 MAT-file")
    with tarfile.open(root / "annotations.tar.gz", "w:gz") as tar:
        for kind, rows in lines.items():
            text = (HEADER if kind == "list" else "") + "\n".join(rows) + "\n"
            _add(tar, f"annotations/{kind}.txt", text.encode())
        for breed, *_ in BREEDS:
            for i in [*TRAINVAL, *TEST]:
                name = f"{breed}_{i}"
                if name in (MISSING, NO_TRIMAP):
                    continue
                trimap = np.full((12, 12), 2, np.uint8)
                trimap[3:9, 3:9] = 1
                buf = io.BytesIO()
                Image.fromarray(trimap).save(buf, "PNG")
                _add(tar, f"annotations/trimaps/{name}.png", buf.getvalue())
                _add(tar, f"annotations/trimaps/._{name}.png", b"\x00\x05\x16\x07 AppleDouble")
    return {n: hashlib.md5((root / n).read_bytes()).hexdigest() for n in os.listdir(root)}


class CountingHandler(SimpleHTTPRequestHandler):
    hits: Counter[str]

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.hits[self.path] += 1
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("served")
    return root, build_archives(root)


@pytest.fixture
def server(
    archives: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Counter[str], dict[str, str]]]:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root, md5s = archives
    hits: Counter[str] = Counter()
    handler = type("Handler", (CountingHandler,), {"hits": hits})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hits, md5s
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def fetch(base: str, md5s: dict[str, str], cache: Path, out: Path, seed: int = 0, **kw):
    args = dict(
        images_url=f"{base}/images.tar.gz",
        images_md5=md5s["images.tar.gz"],
        annotations_url=f"{base}/annotations.tar.gz",
        annotations_md5=md5s["annotations.tar.gz"],
        cache_dir=cache,
        out_root=out,
        val_fraction=0.25,
        seed=seed,
    )
    return fetch_oxford(**{**args, **kw})


def test_class_name_and_list_parsing(tmp_path: Path) -> None:
    assert class_name("american_bulldog_12") == "american_bulldog"
    assert class_name("Abyssinian_1") == "Abyssinian"
    assert class_name("Egyptian_Mau_103") == "Egyptian_Mau"
    f = tmp_path / "list.txt"
    f.write_text(HEADER + "Abyssinian_1 1 1 1\n\nbasset_hound_2 3 2 2\n")
    assert parse_list(f) == [("Abyssinian_1", 1), ("basset_hound_2", 3)]
    f.write_text(HEADER + "Abyssinian_1 one 1 1\n")
    with pytest.raises(VitlabError, match=r"list.txt:7: expected 'Image CLASS-ID"):
        parse_list(f)


def test_fetch_indexes_the_official_layout(server, tmp_path: Path, caplog) -> None:
    base, hits, md5s = server
    out = tmp_path / "raw"
    with caplog.at_level(logging.WARNING, logger="vitlab.sources.oxford"):
        ds = fetch(base, md5s, tmp_path / "cache", out)
    assert ds.classes == CLASSES  # CLASS-ID - 1 order, names without the trailing _<index>
    assert ds.mask_format == "trimap" and ds.source == "oxford_pets"
    assert read_index(out) == ds

    by_name = {Path(s.image).stem: s for s in ds.samples}
    listed = {f"{b}_{i}" for b, *_ in BREEDS for i in [*TRAINVAL, *TEST]}
    assert set(by_name) == listed - {MISSING}  # no .mat, no unlisted image, no missing one
    assert "1 listed image(s) missing" in caplog.text and MISSING in caplog.text
    for name, s in by_name.items():
        assert s.label == CLASSES.index(class_name(name))
        assert s.image == f"images/{name}.jpg"  # relative to out_root
        assert (s.split == "test") == (int(name.rsplit("_", 1)[1]) in TEST)
        assert s.mask == ("" if name == NO_TRIMAP else f"annotations/trimaps/{name}.png")
        with Image.open(out / s.image) as im:  # every indexed file is a readable image
            assert im.convert("RGB").size == (12, 12)
        if s.mask:
            assert (out / s.mask).is_file()

    # Val is carved from trainval per class: round(0.25 * n) of each class's present images.
    val = Counter(s.label for s in ds.samples if s.split == "val")
    assert val == {0: 2, 1: 2, 2: 1, 3: 2}  # basset_hound has 5 present trainval images
    train = Counter(s.label for s in ds.samples if s.split == "train")
    assert train == {0: 4, 1: 4, 2: 4, 3: 4}
    assert (out / "images" / "Abyssinian_100.mat").is_file()  # extracted, never indexed
    assert hits == {"/images.tar.gz": 1, "/annotations.tar.gz": 1}


def test_cache_determinism_and_seed(server, tmp_path: Path) -> None:
    base, hits, md5s = server
    cache = tmp_path / "cache"
    first = fetch(base, md5s, cache, tmp_path / "a")
    assert sorted(os.listdir(cache)) == ["annotations.tar.gz", "images.tar.gz"]
    again = fetch(base, md5s, cache, tmp_path / "b")
    assert hits == {"/images.tar.gz": 1, "/annotations.tar.gz": 1}  # second run: no request
    assert again.samples == first.samples

    other = fetch(base, md5s, cache, tmp_path / "c", seed=1)
    val = {s.image for s in first.samples if s.split == "val"}
    val_other = {s.image for s in other.samples if s.split == "val"}
    assert val != val_other and len(val) == len(val_other)
    assert {s.image for s in other.samples if s.split == "test"} == {
        s.image for s in first.samples if s.split == "test"
    }


def test_bad_url_names_the_parameter_and_leaves_nothing(server, tmp_path: Path) -> None:
    base, hits, md5s = server
    cache = tmp_path / "cache"
    with pytest.raises(VitlabError) as e:
        fetch(base, md5s, cache, tmp_path / "out", annotations_url=f"{base}/nope.tar.gz")
    assert "data.oxford_pets.annotations_url" in str(e.value) and "404" in str(e.value)
    assert sorted(os.listdir(cache)) == ["images.tar.gz"]  # the good one stays cached
    assert not (tmp_path / "out").exists()  # nothing extracted before both downloads are in

    with pytest.raises(VitlabError, match=r"data.oxford_pets.images_url / images_md5.*md5"):
        fetch(base, md5s, tmp_path / "cache2", tmp_path / "out", images_md5="f" * 32)
    assert sorted(os.listdir(tmp_path / "cache2")) == []

    with pytest.raises(VitlabError, match="data.oxford_pets.val_fraction"):
        fetch(base, md5s, cache, tmp_path / "out", val_fraction=1.0)


def test_fetch_stage_runs_oxford_from_params(server, tmp_path: Path) -> None:
    """The real `python -m stages.fetch` with data.source=oxford_pets writes data/raw."""
    base, hits, md5s = server
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["source"] = "oxford_pets"
    params["data"]["oxford_pets"].update(
        images_url=f"{base}/images.tar.gz",
        images_md5=md5s["images.tar.gz"],
        annotations_url=f"{base}/annotations.tar.gz",
        annotations_md5=md5s["annotations.tar.gz"],
        cache_dir="data/downloads",
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO), "no_proxy": "127.0.0.1,localhost"}
    run = partial(
        subprocess.run,
        [sys.executable, "-m", "stages.fetch"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    r = run()
    assert r.returncode == 0, r.stderr
    ds = read_index(tmp_path / "data" / "raw")
    assert ds.classes == CLASSES and len(ds.samples) == len(BREEDS) * 8 - 1
    assert (tmp_path / "data" / "raw" / ds.samples[0].image).is_file()

    params["data"]["oxford_pets"]["images_md5"] = "0" * 32
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    r = run()
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: data.oxford_pets.images_url / images_md5") and "0" * 32 in last
    assert read_index(tmp_path / "data" / "raw") == ds  # the previous output is untouched
