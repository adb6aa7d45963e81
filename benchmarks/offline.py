"""Offline stand-ins for the real study's downloads, so it runs at true size with no network.

- `oxford_archives`: images.tar.gz and annotations.tar.gz in the official Oxford-IIIT Pet
  layout (list.txt / trainval.txt / test.txt with the real 37 breeds and their ids, JPEG
  photos, PNG trimaps), each photo a generated animal-like object whose trimap is its mask;
- `serve`: a loopback HTTP server for them (the fetch stage downloads them for real);
- `released_vit`: a `pytorch_pretrained_vit` release file (its key layout, a 1000-way head,
  seeded random values) in a torch hub cache, where the model factory looks for it;
- `catr_release` and `write_vocab`: CATR's release file and a 30,522-line BERT-style vocab.
Costs depend on sizes and layouts, not on the weights' values or the photos' content.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from vitlab.sources.synthetic import Difficulty, render

CATS = ["Abyssinian", "Bengal", "Birman", "Bombay", "British_Shorthair", "Egyptian_Mau",
        "Maine_Coon", "Persian", "Ragdoll", "Russian_Blue", "Siamese", "Sphynx"]  # fmt: skip
DOGS = ["american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "boxer",
        "chihuahua", "english_cocker_spaniel", "english_setter", "german_shorthaired",
        "great_pyrenees", "havanese", "japanese_chin", "keeshond", "leonberger",
        "miniature_pinscher", "newfoundland", "pomeranian", "pug", "saint_bernard", "samoyed",
        "scottish_terrier", "shiba_inu", "staffordshire_bull_terrier", "wheaten_terrier",
        "yorkshire_terrier"]  # fmt: skip
HEADER = """#Image CLASS-ID SPECIES BREED ID
#ID: 1:37 Class ids
#SPECIES: 1:Cat 2:Dog
#BREED ID: 1-25:Cat 1:12:Dog
#All images with 1st letter as captial are cat images
#images with small first letter are dog images
"""
PHOTO = (500, 375)  # the set's typical photo size (width, height)
SPECIALS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}


def breeds() -> list[tuple[str, int, int, int]]:
    """(breed, CLASS-ID, SPECIES, BREED-ID) as list.txt has them: CLASS-ID alphabetical
    ignoring case, SPECIES 1 cat / 2 dog, BREED-ID alphabetical within the species."""
    ordered = sorted(CATS + DOGS, key=str.lower)
    species = {
        **{b: (1, i) for i, b in enumerate(CATS, 1)},
        **{b: (2, i) for i, b in enumerate(DOGS, 1)},
    }
    return [(b, cid, *species[b]) for cid, b in enumerate(ordered, 1)]


def _photo(label: int, seed: int) -> tuple[bytes, bytes]:
    """(JPEG bytes, trimap PNG bytes) of one photo: 1 the animal, 2 background, 3 its border."""
    rng = np.random.default_rng(seed)
    image, mask = render(label, PHOTO[0], rng, Difficulty())
    image = Image.fromarray(image).resize(PHOTO, Image.BILINEAR)
    mask = np.asarray(Image.fromarray(mask).resize(PHOTO, Image.NEAREST))
    edge = np.zeros_like(mask)
    edge[1:] |= mask[1:] != mask[:-1]
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    trimap = np.where(edge, 3, np.where(mask, 1, 2)).astype(np.uint8)
    jpeg, png = io.BytesIO(), io.BytesIO()
    image.save(jpeg, "JPEG", quality=90)
    Image.fromarray(trimap).save(png, "PNG")
    return jpeg.getvalue(), png.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def oxford_archives(root: Path, trainval: int, test: int, seed: int = 0) -> dict[str, str]:
    """Write the two archives into root with `trainval` + `test` photos a breed; their md5s."""
    root.mkdir(parents=True, exist_ok=True)
    lists: dict[str, list[str]] = {"list": [], "trainval": [], "test": []}
    with (tarfile.open(root / "images.tar.gz", "w:gz") as images,
          tarfile.open(root / "annotations.tar.gz", "w:gz") as annotations):  # fmt: skip
        for breed, cid, species, bid in breeds():
            for i in range(1, trainval + test + 1):
                name, row = f"{breed}_{i}", f"{breed}_{i} {cid} {species} {bid}"
                lists["list"].append(row)
                lists["trainval" if i <= trainval else "test"].append(row)
                jpeg, trimap = _photo(cid - 1, seed * 100_003 + cid * 1_000 + i)
                _add(images, f"images/{name}.jpg", jpeg)
                _add(annotations, f"annotations/trimaps/{name}.png", trimap)
        for kind, rows in lists.items():
            text = (HEADER if kind == "list" else "") + "\n".join(rows) + "\n"
            _add(annotations, f"annotations/{kind}.txt", text.encode())
    return {n: hashlib.md5((root / n).read_bytes()).hexdigest()
            for n in ("images.tar.gz", "annotations.tar.gz")}  # fmt: skip


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve `folder` on 127.0.0.1 (a free port) while the block runs; yields the base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def released_vit(arch: str, torch_home: Path, seed: int = 0) -> Path:
    """A release file of `arch` in the hub cache under torch_home, as torch.hub leaves it."""
    import torch
    from pytorch_pretrained_vit import ViT

    torch.manual_seed(seed)
    path = torch_home / "hub" / "checkpoints" / f"{arch}.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ViT(arch, pretrained=False).state_dict(), path)
    return path


def catr_release(path: Path, seed: int = 0) -> Path:
    """CATR's release file ({"model": state_dict} at its released size) at `path`."""
    import torch

    from vitlab.captions.catr import Catr

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": Catr().state_dict()}, path)
    return path


def write_vocab(path: Path, n: int = 30522, ids: dict[str, int] = SPECIALS) -> Path:
    """A vocab.txt of n tokens with BERT's special tokens at `ids` (one token a line)."""
    tokens = [f"w{i}" for i in range(n)]
    for token, i in ids.items():
        tokens[i] = token
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def photos(folder: Path, count: int, seed: int = 0) -> None:
    """`count` photo-sized JPEGs in folder (for a captioner to caption)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        jpeg, _ = _photo(i % 37, seed * 100_003 + 99_000 + i)
        (folder / f"photo_{i:03d}.jpg").write_bytes(jpeg)
