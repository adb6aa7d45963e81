"""CATR in the DAG (CPU, offline): `captions.model.arch: catr_v3` on a folder of photos under
real DVC, with random full-size weights in the release's layout and a generated vocab; the
contract's files, a second repro that does nothing, and one line for each bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from streamlit.testing.v1 import AppTest

from benchmarks.offline import SPECIALS, write_vocab
from tests.conftest import AUDIT, ROOT, make_project, run
from tests.test_dag_deps import IGNORED_READS, _covered, stage_table
from vitlab.captions import photos, pretrained
from vitlab.captions.catr import RELEASE_URL, RELEASES, Catr, CatrConfig
from vitlab.captions.render import caption_figure, save_figure
from vitlab.captions.wordpiece import WordPiece
from vitlab.core import config
from vitlab.core.errors import VitlabError
from vitlab.profile import apply as apply_profile
from vitlab.vit.models import build_model

RELEASE = RELEASES["v3"].split("/")[1]  # weight493084032.pth
GOOD = ("grey.jpg", "grey16.png", "rgba.png")  # 8-bit grey JPEG, 16-bit grey and RGBA PNGs
BAD = ("empty.jpg", "broken.png", "tiny.png")  # 0 bytes, not an image, 10 x 10 px


def write_photos(folder: Path) -> None:
    """Three photos of the modes users have (each scaled by CATR to 299 px) and three bad files."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (240, 320), dtype=np.uint8)).save(folder / GOOD[0])
    grey16 = rng.integers(0, 65536, (260, 200), dtype=np.uint16)
    Image.fromarray(grey16).save(folder / GOOD[1])
    assert Image.open(folder / GOOD[1]).mode.startswith("I")
    Image.fromarray(rng.integers(0, 256, (48, 64, 4), dtype=np.uint8), "RGBA").save(
        folder / GOOD[2]
    )
    (folder / BAD[0]).write_bytes(b"")
    (folder / BAD[1]).write_bytes(b"\x89PNG but not really an image")
    Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(folder / BAD[2])
    (folder / "notes.txt").write_text("not an image: ignored, not counted\n")


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory) -> Path:
    """An empty torch hub cache, so a release file elsewhere on the machine is never found."""
    return tmp_path_factory.mktemp("torch_home")


def stage(root: Path, name: str, torch_home: Path):
    env = {"TORCH_HOME": str(torch_home)}
    return run([sys.executable, "-m", f"stages.{name}"], root, check=False, env_extra=env)


def repro(root: Path, torch_home: Path, reads: Path | None = None):
    """`dvc repro render_captions`; with `reads`, each stage records the files it read there."""
    env = {"TORCH_HOME": str(torch_home)}
    if reads is not None:
        env.update(VITLAB_READS=str(reads), PYTHONPATH=str(AUDIT))
    return run([sys.executable, "-m", "dvc", "repro", "render_captions"], root, env_extra=env)


@pytest.fixture(scope="module")
def project(tmp_path_factory, torch_home):
    """The micro project with the catr profile on top, its files in place, after one repro."""
    root = make_project(tmp_path_factory.mktemp("catr"))
    apply_profile(root / "params.yaml", ROOT / "profiles" / "catr.yaml")
    torch.manual_seed(0)
    torch.save({"model": Catr().state_dict()}, root / "inputs/pretrained" / RELEASE)
    write_vocab(root / "inputs/pretrained/vocab.txt")
    write_photos(root / "inputs/photos")
    reads = tmp_path_factory.mktemp("catr_reads")
    return root, repro(root, torch_home, reads), reads


@pytest.mark.slow
def test_repro_writes_the_contract_files(project):
    root, proc, _ = project
    out = proc.stdout + proc.stderr
    assert "3 images, 3 skipped" in out
    for bad in BAD:
        assert f"skipped: inputs/photos/{bad}:" in out
    assert "notes.txt" not in out
    figs = root / "reports/captions/figures"
    files = sorted(GOOD)
    stems = [Path(g).stem for g in files]
    assert sorted(p.name for p in figs.iterdir()) == sorted(
        ["manifest.json", *(f"{s}.{ext}" for s in stems for ext in ("json", "npy", "png"))]
    )
    vocab = WordPiece.load(root / "inputs/pretrained/vocab.txt")
    manifest = json.loads((figs / "manifest.json").read_text())
    assert manifest["model"] == "catr_v3" and manifest["square"] == "pad"
    assert [f["png"] for f in manifest["figures"]] == [f"{s}.png" for s in stems]
    for i, (s, fig) in enumerate(zip(stems, manifest["figures"], strict=True)):
        meta = json.loads((figs / f"{s}.json").read_text())
        assert meta["image"] == f"inputs/photos/{files[i]}" and meta["reference"] is None
        ids = meta["token_ids"]
        assert 1 <= len(ids) <= 127 and ids[0] != 101 and 102 not in ids[:-1]
        assert meta["tokens"] == [vocab.tokens[t] for t in ids]
        assert meta["caption"] == vocab.decode(ids)
        maps = np.load(figs / f"{s}.npy")
        assert maps.dtype == np.float32 and maps.shape == (len(ids), *meta["grid"])
        assert meta["grid"] == [19, 19]  # pad: 299 x 299 at stride 16
        assert np.allclose(maps.sum(axis=(1, 2)), 1.0, atol=1e-4)
        assert (fig["group"], fig["maps"], fig["images"]) == ("captions", f"{s}.npy", [i])
        assert {k: fig["info"][k] for k in ("caption", "tokens", "token_ids")} == {
            k: meta[k] for k in ("caption", "tokens", "token_ids")
        }
        with Image.open(figs / f"{s}.png") as im:
            assert im.size[0] > 600 and im.size[1] > 600
    metrics = json.loads((root / "reports/captions/metrics.json").read_text())
    assert metrics == {"model": "catr_v3", "split": "photos", "images": 3, "rows": []}
    captions = json.loads((root / "reports/captions/test_captions.json").read_text())
    assert [c["references"] for c in captions] == [[], [], []]
    marker = json.loads((root / "models/captioner/pretrained.json").read_text())
    assert marker["arch"] == "catr_v3" and marker["trained"] is False
    assert not (root / "models/captioner/model.pt").exists()


def test_the_dashboard_shows_catr_captions_and_word_maps(project, monkeypatch):
    root, _, _ = project
    monkeypatch.setenv("VITLAB_ROOT", str(root))
    monkeypatch.setenv("VITLAB_DASHBOARD_PUBLIC", "1")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=120).run()
    at.switch_page("views/maps.py").run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    assert at.radio(key="mp_cap_model").options == ["catr_v3"]
    figs = root / "reports/captions/figures"
    stem = Path(sorted(GOOD)[1]).stem
    meta = json.loads((figs / f"{stem}.json").read_text())
    at.selectbox(key="mp_cap_image").set_value(1).run()
    at.radio(key="mp_cap_word").set_value(0).run()
    assert not at.exception and not at.error
    assert f"**Generated:** {meta['caption']}" in [m.value for m in at.markdown]
    first = np.load(figs / f"{stem}.npy")[0]
    shown = [c for img in at.image for c in img.captions]
    word = f"'{meta['tokens'][0]}' (id {meta['token_ids'][0]})"
    want = f"attention while generating {word} · {first.shape[0]}×{first.shape[1]}"
    assert any(c.startswith(want) for c in shown), (want, shown)


@pytest.mark.slow
def test_each_stage_reads_only_its_deps(project):
    root, _, reads = project
    root = root.resolve()
    table = stage_table(root)
    logs = [json.loads(p.read_text()) for p in reads.glob("*.json")]
    assert {Path(log["argv"][0]).stem for log in logs} == {
        "fetch_captions", "train_captioner", "render_captions"}  # fmt: skip
    read = set()
    for log in logs:
        s = table[Path(log["argv"][0]).stem]
        for path in map(Path, log["reads"]):
            if root not in path.parents or path.is_dir() or path.suffix in (".py", ".pyc"):
                continue
            rel = path.relative_to(root).as_posix()
            read.add(rel)
            temporary = any(part.startswith(".") and part.endswith(".tmp") for part in path.parts)
            if not (temporary or rel.startswith(IGNORED_READS) or _covered(rel, s["outs"])):
                assert _covered(rel, s["deps"]), f"{log['argv'][0]} reads {rel}, not a dep"
    assert {f"inputs/pretrained/{RELEASE}", "inputs/pretrained/vocab.txt"} <= read


@pytest.mark.slow
def test_second_repro_is_a_no_op(project, torch_home):
    root, *_ = project
    out = repro(root, torch_home).stdout
    assert "Running stage" not in out
    assert "up to date" in out.lower() or "didn't change" in out


def one_line(proc, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and line.startswith("error: "), line
    for needle in needles:
        assert needle in line, line
    return line


OUTPUTS = ("reports/captions/metrics.json", "reports/captions/figures/manifest.json")


def _vit_file(path: Path, release: Path) -> None:
    vit = build_model("vitlab_micro_16", num_classes=3, image_size=32)
    torch.save(vit.state_dict(), path)


def _truncated(path: Path, release: Path) -> None:
    with open(release, "rb") as f:
        path.write_bytes(f.read(1 << 20))  # the first MiB of the real file


BAD_FILES = {  # case -> (writes the file in place of the release (None: none), its line says)
    "missing weights": (
        None,
        [f"CATR v3 weights not found: download {RELEASE_URL}{RELEASES['v3']} into "
         "inputs/pretrained/", "torch_home", "captions.catr.weights_url"],
    ),
    "a ViT checkpoint": (_vit_file, [RELEASE, "not a CATR checkpoint"]),
    "a truncated file": (_truncated, [RELEASE, "truncated", "download it again"]),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_weights_are_one_line_and_leave_the_outputs(project, torch_home, case):
    root, *_ = project
    release = root / "inputs/pretrained" / RELEASE
    aside = release.with_name("aside.pth")
    before = [(root / p).read_bytes() for p in OUTPUTS]
    make, needles = BAD_FILES[case]
    release.rename(aside)
    try:
        if make is not None:
            make(release, aside)
        one_line(stage(root, "render_captions", torch_home), *needles)
    finally:
        release.unlink(missing_ok=True)
        aside.rename(release)
    assert [(root / p).read_bytes() for p in OUTPUTS] == before


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("missing", ["inputs/pretrained/vocab.txt does not exist", "bert-base-uncased"]),
        ("wrong ids", ["vocab.txt: line 102", "expected [CLS] (id 101)", "bert-base-uncased"]),
        ("too short", ["vocab.txt: 1000 tokens", "predicts 30522 ids"]),
    ],
)
def test_a_bad_vocab_is_one_line(project, torch_home, case, needles):
    root, *_ = project
    vocab = root / "inputs/pretrained/vocab.txt"
    saved = vocab.read_bytes()
    before = [(root / p).read_bytes() for p in OUTPUTS]
    try:
        if case == "missing":
            vocab.unlink()
        elif case == "wrong ids":
            write_vocab(vocab, ids={**SPECIALS, "[CLS]": 5, "[SEP]": 6})
        else:
            write_vocab(vocab, n=1000)
        one_line(stage(root, "render_captions", torch_home), *needles)
    finally:
        vocab.write_bytes(saved)
    assert [(root / p).read_bytes() for p in OUTPUTS] == before


@pytest.mark.slow
def test_a_folder_of_only_unreadable_images_is_one_line(project, torch_home):
    root, *_ = project
    bad = root / "inputs/unreadable"
    bad.mkdir()
    for name in BAD[:2]:
        shutil.copyfile(root / "inputs/photos" / name, bad / name)
    params = root / "params.yaml"
    saved, index = params.read_text(), (root / "data/captions/captions.json").read_bytes()
    p = yaml.safe_load(saved)
    p["captions"]["folder"]["path"] = "inputs/unreadable"
    try:
        params.write_text(yaml.safe_dump(p))
        one_line(
            stage(root, "fetch_captions", torch_home),
            "inputs/unreadable: none of its 2 images can be captioned",
            "inputs/unreadable/broken.png",
        )
    finally:
        params.write_text(saved)
        shutil.rmtree(bad)
    assert (root / "data/captions/captions.json").read_bytes() == index


@pytest.mark.slow
def test_a_karpathy_test_split_is_scored_against_its_references(project, torch_home):
    root, *_ = project
    images = root / "data/karpathy/images"
    images.mkdir(parents=True)
    shutil.copyfile(root / "inputs/photos" / GOOD[0], images / "a.jpg")
    shutil.copyfile(root / "inputs/photos" / GOOD[2], images / "b.png")
    sentences = [{"raw": "a grey photo of noise"}, {"raw": "static on a screen"}]
    doc = {"images": [{"filename": "a.jpg", "split": "test", "sentences": sentences},
                      {"filename": "b.png", "split": "train", "sentences": sentences}]}  # fmt: skip
    (root / "data/karpathy/dataset.json").write_text(json.dumps(doc))
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["captions"]["source"] = "karpathy"
    p["captions"]["karpathy"] = {"json": "data/karpathy/dataset.json",
                                 "images": "data/karpathy/images", "limit": 0}  # fmt: skip
    (root / "params.yaml").write_text(yaml.safe_dump(p))
    for name in ("fetch_captions", "render_captions"):
        proc = stage(root, name, torch_home)
        assert proc.returncode == 0, proc.stderr
    assert "BLEU-4" in proc.stdout
    metrics = json.loads((root / "reports/captions/metrics.json").read_text())
    assert (metrics["model"], metrics["split"], metrics["images"]) == ("catr_v3", "test", 1)
    assert set(metrics["decodings"]["greedy"]) == {
        "bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d", "exact_match"}  # fmt: skip
    [row] = metrics["rows"]
    assert (row["model"], row["variant"], row["kind"]) == ("catr_v3", "greedy", "greedy")
    meta = json.loads((root / "reports/captions/figures/a.json").read_text())
    assert meta["reference"] == "a grey photo of noise" and meta["image"] == "a.jpg"
    [caption] = json.loads((root / "reports/captions/test_captions.json").read_text())
    assert caption["references"] == ["a grey photo of noise", "static on a screen"]


@pytest.mark.slow
def test_back_on_a_trained_arch_the_placeholder_is_no_resume_state(project, torch_home):
    root, *_ = project
    state = root / "models/captioner_last.pt"
    assert state.read_text().startswith("no resume state")
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["captions"]["source"], p["captions"]["model"]["arch"] = "synthetic", "vitlab_micro_16"
    (root / "params.yaml").write_text(yaml.safe_dump(p))
    for name in ("fetch_captions", "train_captioner"):
        proc = stage(root, name, torch_home)
        assert proc.returncode == 0 and "resum" not in proc.stderr, proc.stderr
    assert set(torch.load(state, weights_only=True)) >= {"model", "epoch", "fingerprint"}
    assert (root / "models/captioner/model.pt").is_file()


# -- without DVC: the schema, where the two files are looked for, the three square modes -------

DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())


def captions(**changes) -> dict:
    """The default params with captions.<section>.<key> (written section__key) changed."""
    p = json.loads(json.dumps(DEFAULT))
    for key, value in changes.items():
        section, _, leaf = key.partition("__")
        if leaf:
            p["captions"][section][leaf] = value
        else:
            p["captions"][section] = value
    return p


SCHEMA = [
    ({"model__arch": "catr_v4"}, "captions: model.arch 'catr_v4' is not a CATR release"),
    ({"source": "folder"}, "captions: source folder has no reference captions to train"),
    ({"model__arch": "catr_v3"}, "captions: model.arch catr_v3 captions photos (source: folder)"),
    ({"catr__square": "crop"}, "captions.catr.square: Input should be 'pad', 'resize' or 'none'"),
    ({"catr__dir": None}, "captions.catr.dir: Input should be a valid string"),
]


@pytest.mark.parametrize(("changes", "line"), SCHEMA, ids=[line for _, line in SCHEMA])
def test_the_schema_refuses_what_cannot_run_in_one_line(changes, line):
    with pytest.raises(VitlabError) as e:
        config.validate(captions(**changes))
    assert "\n" not in str(e.value) and str(e.value).startswith(f"params.yaml: {line}"), e.value


def test_the_catr_profile_is_catr_v3_on_the_photo_folder():
    merged = config.overlay(DEFAULT, yaml.safe_load((ROOT / "profiles/catr.yaml").read_text()))
    c = config.validate(merged).captions
    assert (c.catr_version, c.source, c.folder.path, c.catr.dir) == (
        "v3", "folder", "inputs/photos", "inputs/pretrained")  # fmt: skip
    assert c.catr.square == "pad" and c.train == config.validate(DEFAULT).captions.train


def catr_params(tmp: Path, **kw) -> config.Catr:
    base = {"dir": str(tmp / "pretrained"), "weights": "", "vocab": "", "square": "pad"}
    return config.Catr(**{**base, **kw})


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


def test_weights_come_from_the_dir_then_the_hub_cache_and_a_url_only_when_named(tmp_path, hub):
    c = catr_params(tmp_path)
    with pytest.raises(VitlabError) as e:
        pretrained.weights_file(c, "v3")
    assert str(e.value) == (
        f"CATR v3 weights not found: download {RELEASE_URL}{RELEASES['v3']} into {c.dir}/ (DVC "
        f"tracks it there) or {hub}/, or set captions.catr.weights_url to fetch it"
    )
    hub.mkdir(parents=True)
    (hub / RELEASE).write_bytes(b"hub")
    assert pretrained.weights_file(c, "v3") == hub / RELEASE
    (tmp_path / "pretrained").mkdir()
    (tmp_path / "pretrained" / RELEASE).write_bytes(b"dir")
    never = "file:///nonexistent/weights.pth"  # present in the dir: never fetched
    assert pretrained.weights_file(catr_params(tmp_path, weights_url=never), "v3") == (
        tmp_path / "pretrained" / RELEASE
    )
    with pytest.raises(VitlabError, match="md5 differs"):
        pretrained.weights_file(catr_params(tmp_path, weights_md5="0" * 32), "v3")
    with pytest.raises(VitlabError, match="captions.catr.weights: .*nope.pth does not exist"):
        pretrained.weights_file(catr_params(tmp_path, weights=str(tmp_path / "nope.pth")), "v1")


def test_a_named_url_is_fetched_into_the_hub_cache_md5_checked(tmp_path, hub):
    source = tmp_path / "release.pth"
    source.write_bytes(b"released weights")
    md5 = hashlib.md5(b"released weights").hexdigest()
    c = catr_params(tmp_path, weights_url=source.as_uri(), weights_md5=md5)
    assert pretrained.weights_file(c, "v2") == hub / RELEASES["v2"].split("/")[1]
    assert (hub / RELEASES["v2"].split("/")[1]).read_bytes() == b"released weights"
    bad = catr_params(tmp_path, weights_url=source.as_uri(), weights_md5="f" * 32)
    with pytest.raises(VitlabError, match="md5"):
        pretrained.weights_file(bad, "v1")
    assert not (hub / RELEASES["v1"].split("/")[1]).exists()


def test_the_vocab_is_beside_the_weights_unless_named(tmp_path):
    weights = tmp_path / "w" / RELEASE
    with pytest.raises(VitlabError) as e:
        pretrained.vocab_file(catr_params(tmp_path), weights)
    assert str(e.value).startswith(f"the vocabulary beside {RELEASE}: {weights.parent}/vocab.txt")
    assert "or set captions.catr.vocab" in str(e.value)
    named = write_vocab(tmp_path / "bert.txt", n=200)
    assert pretrained.vocab_file(catr_params(tmp_path, vocab=str(named)), weights) == named


TINY = CatrConfig(blocks=(1, 1, 1, 1), hidden_dim=32, nheads=4, enc_layers=1, dec_layers=1,
                  dim_feedforward=64, vocab_size=160, max_position_embeddings=16)  # fmt: skip


@pytest.mark.parametrize(
    ("square", "grid", "extent"),
    [
        ("pad", (19, 19), (299, 299)),
        ("none", (14, 19), (224, 299)),
        ("resize", (19, 19), (224, 299)),
    ],
)
def test_each_square_mode_maps_onto_the_photo(tmp_path, square, grid, extent):
    torch.manual_seed(0)
    model = Catr(TINY).eval()
    vocab = WordPiece.load(write_vocab(tmp_path / "vocab.txt", n=160))
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 320, 3), np.uint8)).save(path)
    r = pretrained.caption_photo(model, vocab, path, square, torch.device("cpu"))
    assert r.shown.shape == (224, 299, 3) and r.extent == extent
    assert r.maps.shape == (len(r.token_ids), *grid) and r.maps.dtype == np.float32
    assert r.tokens == [vocab.tokens[i] for i in r.token_ids]
    labels = [f"{t} ({k})" for t, k in zip(r.tokens, r.token_ids, strict=True)]
    save_figure(
        caption_figure(r.shown, labels, r.maps, r.caption, extent=r.extent), tmp_path / "f.png"
    )
    assert Image.open(tmp_path / "f.png").size[0] == 1200


def test_photos_of_one_name_are_refused_in_one_line(tmp_path):
    for name in ("cat.jpg", "cat.png"):
        Image.new("RGB", (32, 32)).save(tmp_path / name)
    with pytest.raises(VitlabError, match="share the name 'cat'.*rename one"):
        photos.readable(photos.folder_photos(tmp_path), "pad")
