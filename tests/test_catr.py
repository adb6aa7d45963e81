"""CATR in plain torch: the release's key layout, strict loading, preprocessing, grids,
encode-once greedy decoding, per-word maps and WordPiece decoding (CPU, offline)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.offline import write_vocab
from vitlab.captions.catr import (
    CLS_ID,
    SEP_ID,
    Catr,
    CatrConfig,
    FrozenBatchNorm2d,
    greedy_decode,
    load_catr,
    prepare_image,
    preprocess,
    resolve_weights,
    sine_position_encoding,
    word_maps,
)
from vitlab.captions.wordpiece import WordPiece
from vitlab.core.errors import VitlabError

KEYS = Path(__file__).parent / "data" / "catr_v3_keys.txt"
TINY = CatrConfig(
    blocks=(1, 1, 1, 1),
    hidden_dim=32,
    nheads=4,
    enc_layers=1,
    dec_layers=2,
    dim_feedforward=64,
    vocab_size=160,
)


def tiny_model(seed: int = 0, cfg: CatrConfig = TINY) -> Catr:
    """A random tiny Catr whose frozen batch norms are not the identity either."""
    torch.manual_seed(seed)
    model = Catr(cfg).eval()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
            else:
                buf.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    return model


def patterned(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """RNG-free weights by key: fan-in scaled waves, norm scales near 1, variances positive."""
    out = {}
    for i, (key, value) in enumerate(state.items()):
        wave = torch.sin(torch.arange(value.numel(), dtype=torch.float64) * 0.7 + i)
        wave = wave.reshape(value.shape).float()
        if key.endswith("running_var"):
            out[key] = 1 + 0.5 * wave.abs()
        elif value.ndim > 1:
            out[key] = wave * (value[0].numel() ** -0.5)
        elif key.endswith("weight"):
            out[key] = 1 + 0.1 * wave
        else:
            out[key] = 0.1 * wave
    return out


def image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def batch(img: Image.Image, square: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, mask = preprocess(img, square)
    return x[None], mask[None]


def raw(h: int, w: int, valid_h: int | None = None, seed: int = 0):
    """A small random input (bottom rows past `valid_h` padded): decoding tests need no 299 px."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, h, w, generator=g) * 2 - 1
    mask = torch.zeros(1, h, w, dtype=torch.bool)
    mask[:, valid_h or h :] = True
    x[mask[:, None].expand_as(x)] = 0
    return x, mask


def one_line(excinfo: pytest.ExceptionInfo, *needles: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: torch's thread pool costs more than it gains, most of all on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def full_model() -> Catr:
    torch.manual_seed(0)
    return Catr().eval()


@pytest.fixture(scope="module")
def tiny() -> Catr:
    return tiny_model()


# -- the release's layout and strict loading ---------------------------------------------------


def test_state_dict_is_the_release_layout(full_model):
    rows = [line.split("\t") for line in KEYS.read_text().splitlines() if line[0] != "#"]
    state = full_model.state_dict()
    buffers = {name for name, _ in full_model.named_buffers()}
    assert [(k, shape) for k, shape, *_ in rows] == [
        (k, str(tuple(v.shape))) for k, v in state.items()
    ]
    assert [kind for *_, kind in rows] == ["buffer" if k in buffers else "param" for k in state]
    assert len(state) == 716
    assert sum(v.numel() for v in state.values()) == 84_392_954
    assert all(v.dtype == torch.float32 for v in state.values())
    norms = [m for m in full_model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert full_model.transformer.embeddings.LayerNorm.eps == 1e-12
    assert sum(m.eps == 1e-5 for m in norms) == len(norms) - 1 == 6 * 2 + 6 * 3 + 2


# The original implementation (CATR's own models/ package with a 2020 torchvision ResNet), run
# on the same patterned weights, input and caption, gave these numbers (bitwise equal to Catr).
ORIGINAL_LOGITS = [
    [0.27220219373703003, 0.08435570448637009, -0.07415665686130524, -0.18796631693840027],
    [0.2696790099143982, 0.08093869686126709, -0.0782405287027359, -0.19244569540023804],
    [0.2725077271461487, 0.0837584137916565, -0.07561717182397842, -0.19019292294979095],
]
ORIGINAL_ATTENTION_ROW_2 = [
    0.03523046895861626,
    0.049092505127191544,
    0.046372901648283005,
    0.03334164619445801,
    0.0364983044564724,
    0.11817310750484467,
]
ORIGINAL_ABS_SUM = 7545.98046875


def test_arithmetic_matches_the_original_implementation(tiny):
    model = Catr(TINY).eval()
    model.load_state_dict(patterned(tiny.state_dict()))
    x, mask = raw(64, 80, 40)
    cap = torch.tensor([[CLS_ID, *range(103, 110)] + [0] * 120])
    pad = cap == 0
    pad[0, 0] = False
    with torch.no_grad():
        logits, weights = model(x, mask, cap, pad)
    torch.testing.assert_close(logits[0, :3, :4], torch.tensor(ORIGINAL_LOGITS), rtol=0, atol=1e-5)
    torch.testing.assert_close(
        weights[0, 2, :6], torch.tensor(ORIGINAL_ATTENTION_ROW_2), rtol=0, atol=1e-6
    )
    assert logits.abs().sum().item() == pytest.approx(ORIGINAL_ABS_SUM, rel=1e-5)


def test_frozen_batch_norm_is_eval_batch_norm():
    bn = FrozenBatchNorm2d(5)
    for buf in bn.buffers():
        buf.copy_(torch.rand(5) + 0.1)
    x = torch.randn(2, 5, 3, 4)
    want = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=1e-5)
    torch.testing.assert_close(bn(x), want)
    assert not list(bn.parameters())


def test_sine_code_spans_the_unpadded_extent():
    mask = torch.zeros(1, 5, 7, dtype=torch.bool)
    mask[:, 3:] = True
    mask[:, :, 4:] = True
    pos = sine_position_encoding(mask, 128)
    plain = sine_position_encoding(torch.zeros(1, 3, 4, dtype=torch.bool), 128)
    assert pos.shape == (1, 256, 5, 7)
    torch.testing.assert_close(pos[..., :3, :4], plain)
    rows = torch.arange(1, 4, dtype=torch.float32)[:, None] / 3 * 2 * math.pi
    cols = torch.arange(1, 5, dtype=torch.float32)[None, :] / 4 * 2 * math.pi
    torch.testing.assert_close(plain[0, 0], rows.sin().expand(3, 4))  # y first, sin then cos
    torch.testing.assert_close(plain[0, 1], rows.cos().expand(3, 4))
    torch.testing.assert_close(plain[0, 2], (rows / 10000 ** (2 / 128)).sin().expand(3, 4))
    torch.testing.assert_close(plain[0, 128], cols.sin().expand(3, 4))


def test_both_file_formats_load_strictly_and_agree(tmp_path, tiny):
    wrapped, bare = tmp_path / "wrapped.pth", tmp_path / "bare.pth"
    torch.save({"model": tiny.state_dict(), "epoch": 3}, wrapped)
    torch.save(tiny.state_dict(), bare)
    a, b = load_catr(wrapped, TINY), load_catr(bare, TINY)
    for key, value in tiny.state_dict().items():
        assert torch.equal(a.state_dict()[key], value) and torch.equal(b.state_dict()[key], value)
    x, mask = raw(64, 80, 40)
    cap = torch.randint(103, TINY.vocab_size, (1, TINY.max_position_embeddings))
    pad = torch.arange(TINY.max_position_embeddings)[None] > 6
    with torch.no_grad():
        want, out_a, out_b = tiny(x, mask, cap, pad), a(x, mask, cap, pad), b(x, mask, cap, pad)
    for got in (out_a, out_b):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert not a.training


def test_num_batches_tracked_keys_are_tolerated(tmp_path, tiny):
    state = tiny.state_dict()
    state["backbone.0.body.bn1.num_batches_tracked"] = torch.tensor(7)
    state["backbone.0.body.layer1.0.bn2.num_batches_tracked"] = torch.tensor(7)
    torch.save({"model": state}, tmp_path / "w.pth")
    load_catr(tmp_path / "w.pth", TINY)


def test_missing_key_is_one_line(tmp_path, tiny):
    state = tiny.state_dict()
    del state["transformer.decoder.layers.1.multihead_attn.in_proj_weight"]
    torch.save({"model": state}, tmp_path / "weights.pth")
    with pytest.raises(VitlabError) as e:
        load_catr(tmp_path / "weights.pth", TINY)
    one_line(e, "weights.pth", "missing key transformer.decoder.layers.1.multihead_attn.in_proj")


def test_wrong_shape_is_one_line(tmp_path, tiny):
    state = tiny.state_dict()
    state["mlp.layers.2.weight"] = torch.zeros(99, 512)
    torch.save(state, tmp_path / "weights.pth")
    with pytest.raises(VitlabError) as e:
        load_catr(tmp_path / "weights.pth", TINY)
    one_line(e, "weights.pth", "mlp.layers.2.weight", "(99, 512)")


def test_unexpected_key_is_one_line(tmp_path, tiny):
    state = tiny.state_dict()
    state["backbone.0.body.fc.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "weights.pth")
    with pytest.raises(VitlabError) as e:
        load_catr(tmp_path / "weights.pth", TINY)
    one_line(e, "weights.pth", "unexpected key backbone.0.body.fc.weight")


def test_vit_checkpoint_and_truncated_file_are_one_line(tmp_path, tiny):
    vit = {"patch_embedding.weight": torch.zeros(8, 3, 16, 16), "class_token": torch.zeros(1, 1, 8)}
    torch.save({"model": vit}, tmp_path / "vit.pth")
    with pytest.raises(VitlabError) as e:
        load_catr(tmp_path / "vit.pth", TINY)
    one_line(e, "vit.pth", "missing key backbone.0.body.conv1.weight")

    torch.save({"model": tiny.state_dict()}, tmp_path / "whole.pth")
    data = (tmp_path / "whole.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(VitlabError) as e:
        load_catr(tmp_path / "cut.pth", TINY)
    one_line(e, "cut.pth", "truncated")
    with pytest.raises(VitlabError) as e:
        load_catr(tmp_path / "absent.pth", TINY)
    one_line(e, "absent.pth")


def test_resolve_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = tmp_path / "hub" / "checkpoints" / "weight493084032.pth"
    with pytest.raises(VitlabError) as e:
        resolve_weights("v3", None)
    one_line(e, str(cached), "0.2/weight493084032.pth")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    assert resolve_weights("v3", None) == cached
    assert (
        resolve_weights("v1", tmp_path / "mine.pth", url=cached.as_uri()) == tmp_path / "mine.pth"
    )
    assert (tmp_path / "mine.pth").read_bytes() == b"weights"
    assert resolve_weights("v2", tmp_path / "mine.pth") == tmp_path / "mine.pth"  # path wins
    with pytest.raises(VitlabError) as e:
        resolve_weights("v3", None, md5="0" * 32)
    one_line(e, str(cached), "md5")
    with pytest.raises(VitlabError) as e:
        resolve_weights("v9", None)
    one_line(e, "v9")


# -- grids and cross-attention -----------------------------------------------------------------


def test_square_image_gives_the_full_grid(full_model):
    x, mask = batch(image(299, 299), "pad")
    cap = torch.zeros(1, 128, dtype=torch.long)
    cap[0, 0] = CLS_ID
    pad = torch.ones(1, 128, dtype=torch.bool)
    pad[0, 0] = False
    with torch.no_grad():
        logits, weights = full_model(x, mask, cap, pad)
    assert logits.shape == (1, 128, 30522)
    assert weights.shape == (1, 128, 361)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 128))


def test_predict_mode_keeps_the_aspect(tiny):
    img = image(753, 630)
    x, mask = batch(img, "none")
    assert x.shape == (1, 3, 250, 299) and not mask.any()
    bicubic = np.asarray(img.resize((299, 250), Image.Resampling.BICUBIC), np.float32)
    torch.testing.assert_close(x[0], torch.from_numpy(bicubic / 255 * 2 - 1).permute(2, 0, 1))
    # the release's float rule floors 550 * (299 / 550) to 298 (integer arithmetic gives 299)
    assert batch(image(550, 400), "none")[0].shape == (1, 3, 217, 298)
    with torch.no_grad():
        enc = tiny.encode(x, mask)
    assert enc.grid == (16, 19) and enc.memory.shape == (304, 1, TINY.hidden_dim)
    assert word_maps(tiny, enc, [150, 151, SEP_ID]).shape == (3, 16, 19)


@pytest.mark.filterwarnings("error")  # e.g. torch's mixed float/bool attention-mask warning
@pytest.mark.parametrize(
    "height, rows, cells",
    [(630, 250, 16), (642, 254, 17)],  # cell 16 samples pixel row 251 (nearest, as DETR)
)
def test_padding_gets_exactly_zero_attention(tiny, height, rows, cells):
    x, mask = batch(image(753, height), "pad")
    assert x.shape == (1, 3, 299, 299)
    assert mask[0, rows:].all() and not mask[0, :rows].any()
    assert (x[0, :, rows:] == 0).all()
    with torch.no_grad():
        enc = tiny.encode(x, mask)
    ids = torch.randint(103, TINY.vocab_size, (127,)).tolist()  # every query row
    assert enc.grid == (19, 19)
    padded = enc.padding[0].reshape(19, 19)
    assert padded[cells:].all() and not padded[:cells].any()
    maps = word_maps(tiny, enc, ids)
    assert maps.shape == (len(ids), 19, 19)
    assert (maps[:, cells:] == 0).all()
    assert (maps[:, :cells] > 0).all()
    np.testing.assert_allclose(maps.sum((1, 2)), 1.0, rtol=1e-5)


def test_resize_mode_stretches(tiny):
    x, mask = batch(image(753, 630), "resize")
    assert x.shape == (1, 3, 299, 299) and not mask.any()
    with pytest.raises(VitlabError) as e:
        preprocess(image(64, 64), "crop")
    one_line(e, "crop")


# -- greedy decoding ---------------------------------------------------------------------------


def naive_greedy(model: Catr, x, mask) -> tuple[list[int], list[torch.Tensor]]:
    """The release's predict loop: the whole model (image included) rerun at every step."""
    length = model.cfg.max_position_embeddings
    cap = torch.zeros(1, length, dtype=torch.long)
    cap[0, 0] = CLS_ID
    pad = torch.ones(1, length, dtype=torch.bool)
    pad[0, 0] = False
    ids, rows = [], []
    with torch.no_grad():
        for i in range(length - 1):
            logits, weights = model(x, mask, cap, pad)
            next_id = int(logits[:, i].argmax(-1))
            ids.append(next_id)
            rows.append(weights[0, i])
            if next_id == SEP_ID:
                break
            cap[0, i + 1] = next_id
            pad[0, i + 1] = False
    return ids, rows


@pytest.mark.parametrize("seed", [1, 2])
def test_encode_once_greedy_equals_the_release_loop(seed):
    cfg = dataclasses.replace(TINY, max_position_embeddings=32)
    model = tiny_model(seed, cfg)
    x, mask = raw(64, 64, 40, seed)
    want, rows = naive_greedy(model, x, mask)
    with torch.no_grad():
        enc = model.encode(x, mask)
    got = greedy_decode(model, enc)
    assert got == want
    assert len(set(got)) > 1  # a non-trivial sequence
    maps = word_maps(model, enc, got)
    for i, row in enumerate(rows):  # row i of one pass == the step that predicted token i
        assert torch.equal(torch.from_numpy(maps[i]).flatten(), row)


def test_sep_bias_gives_an_empty_caption(tiny, vocab):
    with torch.no_grad():
        enc = tiny.encode(*raw(64, 48))
        bias = tiny.mlp.layers[2].bias
        saved = bias.clone()
        bias[SEP_ID] = 1e4
        try:
            ids = greedy_decode(tiny, enc)
            maps = word_maps(tiny, enc, ids)
        finally:
            bias.copy_(saved)
    assert ids == [SEP_ID] and maps.shape == (1, 4, 3)
    assert vocab.decode([CLS_ID, *ids]) == ""


def test_word_bias_runs_to_127_words(tiny):
    with torch.no_grad():
        enc = tiny.encode(*raw(64, 48))
        bias = tiny.mlp.layers[2].bias
        saved = bias.clone()
        bias[150] = 1e4
        try:
            ids = greedy_decode(tiny, enc)
            maps = word_maps(tiny, enc, ids)
        finally:
            bias.copy_(saved)
    assert ids == [150] * 127
    assert maps.shape == (127, 4, 3)


# -- WordPiece ---------------------------------------------------------------------------------

VOCAB_IDS = {  # bert-base-uncased's ids up to "."; the rest only need to be distinct
    "[PAD]": 0,
    "[UNK]": 100,
    "[CLS]": 101,
    "[SEP]": 102,
    "[MASK]": 103,
    "a": 1037,
    "young": 2402,
    "girl": 2611,
    "holding": 3173,
    "up": 2039,
    "slice": 14704,
    "of": 1997,
    "pizza": 10733,
    ".": 1012,
    ",": 1010,
    "'": 1005,
    "?": 1029,
    "t": 1056,
    "s": 1055,
    "isn": 3475,
    "it": 2009,
    "sky": 3712,
    "##line": 4179,
}


@pytest.fixture(scope="module")
def vocab(tmp_path_factory) -> WordPiece:
    return WordPiece.load(
        write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt", ids=VOCAB_IDS)
    )


def test_wordpiece_decodes_the_reference_caption(vocab):
    assert len(vocab) == 30522
    ids = [101, 1037, 2402, 2611, 3173, 2039, 1037, 14704, 1997, 10733, 1012, 102]
    assert vocab.decode(ids) == "A young girl holding up a slice of pizza."
    tricky = [101, 1037, 3712, 4179, 1010, 3475, 1005, 1056, 2009, 1029, 100, 0, 0]
    assert vocab.decode(tricky) == "A skyline, isn't it?"
    assert vocab.decode([2009, 1005, 1055, 1037, 3712]) == "It's a sky"


def test_wordpiece_rejects_a_foreign_vocab(tmp_path, vocab):
    bad = write_vocab(tmp_path / "vocab.txt", ids={**VOCAB_IDS, "[CLS]": 5, "[SEP]": 6})
    with pytest.raises(VitlabError) as e:
        WordPiece.load(bad)
    one_line(e, "vocab.txt", "[CLS]")
    with pytest.raises(VitlabError) as e:
        vocab.decode([40000])
    one_line(e, "40000")


# -- images ------------------------------------------------------------------------------------


def test_bad_images_are_one_line(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"this is not a jpeg" * 20)
    image(10, 40).save(tmp_path / "tiny.png")
    image(2000, 90).save(tmp_path / "strip.png")  # 299 x 13 after scaling
    for name, why in (
        ("zero.jpg", "empty file"),
        ("junk.jpg", "not an image"),
        ("tiny.png", "too small"),
        ("strip.png", "299x13"),
        ("absent.png", "no such"),
    ):
        with pytest.raises(VitlabError) as e:
            prepare_image(tmp_path / name)
        one_line(e, name, why)


def test_grey_rgba_and_16_bit_images_load(tmp_path):
    Image.fromarray(np.full((40, 50), 200, np.uint8)).save(tmp_path / "grey.png")
    Image.new("RGBA", (50, 40), (255, 0, 0, 0)).save(tmp_path / "rgba.png")
    Image.fromarray(np.full((40, 50), 32768, np.uint16)).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    for name, value in (("grey.png", 200), ("rgba.png", (255, 0, 0)), ("deep.png", 128)):
        x, mask = prepare_image(tmp_path / name)
        assert x.shape == (1, 3, 299, 299) and mask.shape == (1, 299, 299)
        want = torch.tensor(value, dtype=torch.float32).expand(3).div(255).sub(0.5).div(0.5)
        torch.testing.assert_close(x[0, :, 100, 100], want)
