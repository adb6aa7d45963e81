"""The captioner's shapes, masks and decoding rules, and its checkpoint/vocabulary checks."""

from __future__ import annotations

import pytest
import torch

from vitlab.captions.decode import attention_maps, beam_search, greedy
from vitlab.captions.model import Captioner, CaptionerConfig, init_encoder, load_captioner
from vitlab.captions.vocab import Vocab
from vitlab.core.errors import VitlabError
from vitlab.vit.models import build_model

VOCAB = Vocab.build([["a", "red", "blue", "blob", "left", "of"]])


def tiny(**kw) -> Captioner:
    torch.manual_seed(0)
    base = dict(
        vocab_size=len(VOCAB),
        arch="vitlab_micro_16",
        image_size=32,
        d_model=32,
        heads=2,
        layers=2,
        local_layers=1,
        max_len=10,
        dropout=0.0,
    )
    return Captioner(CaptionerConfig(**{**base, **kw})).eval()


@pytest.mark.parametrize(
    ("arch", "image_size", "blocks", "grid"),
    [("vitlab_micro_16", 32, 0, 4), ("vitlab_micro_32", 32, 1, 2), ("vitlab_B_16", 64, 2, 8)],
)
@pytest.mark.parametrize("length", [1, 4, 10])
def test_cross_attention_rows_are_distributions_over_patches(
    arch, image_size, blocks, grid, length
):
    model = tiny(arch=arch, image_size=image_size, encoder_blocks=blocks)
    images = torch.randn(3, 3, image_size, image_size)
    tokens = torch.randint(0, len(VOCAB), (3, length))
    logits, cross = model(images, tokens)
    assert logits.shape == (3, length, len(VOCAB))
    assert cross.shape == (3, 2, length, grid * grid)
    assert torch.allclose(cross.sum(-1), torch.ones(3, 2, length), atol=1e-5)
    assert (cross >= 0).all()
    maps = attention_maps(model, images, [[5] * length, [6] * 2, [2]], VOCAB.start, VOCAB.pad)
    shapes = [tuple(m.shape) for m in maps]
    assert shapes == [(length, grid, grid), (2, grid, grid), (1, grid, grid)]
    for m in maps:
        assert torch.allclose(m.sum(dim=(1, 2)), torch.ones(len(m)), atol=1e-5)


def test_decoder_is_causal_row_i_sees_only_tokens_up_to_i():
    model = tiny()
    images = torch.randn(1, 3, 32, 32)
    a = torch.tensor([[1, 4, 5, 6, 7]])
    b = a.clone()
    b[0, 3] = 8  # change token 3: rows 0..2 must not move, row 3 must
    la, ca = model(images, a)
    lb, cb = model(images, b)
    assert torch.allclose(la[:, :3], lb[:, :3], atol=1e-6)
    assert torch.allclose(ca[:, :, :3], cb[:, :, :3], atol=1e-6)
    assert not torch.allclose(la[:, 3], lb[:, 3])


def test_caption_longer_than_max_len_is_a_clear_error():
    with pytest.raises(VitlabError, match="exceeds captions.model.max_len 10"):
        tiny()(torch.randn(1, 3, 32, 32), torch.ones(1, 11, dtype=torch.long))


def _force(model: Captioner, token: int) -> Captioner:
    """Make the model predict `token` everywhere (zero head, biased output)."""
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(-10.0)
        model.head.bias[token] = 10.0
    return model


def test_greedy_stops_at_the_end_token():
    images = torch.randn(2, 3, 32, 32)
    out = greedy(_force(tiny(), VOCAB.end), images, VOCAB.start, VOCAB.end)
    assert out == [[VOCAB.end], [VOCAB.end]]


def test_greedy_without_an_end_token_stops_at_max_len():
    word = VOCAB.index["red"]
    out = greedy(_force(tiny(), word), torch.randn(2, 3, 32, 32), VOCAB.start, VOCAB.end)
    assert out == [[word] * 9, [word] * 9]  # max_len 10 = <start> + 9 tokens


def test_beam_search_stops_at_end_and_width_one_equals_greedy():
    model = tiny()
    images = torch.randn(4, 3, 32, 32)
    assert beam_search(model, images, VOCAB.start, VOCAB.end, beam_size=1) == greedy(
        model, images, VOCAB.start, VOCAB.end
    )
    assert (
        beam_search(_force(tiny(), VOCAB.end), images, VOCAB.start, VOCAB.end, beam_size=3)
        == [[VOCAB.end]] * 4
    )


def test_beam_search_prefers_the_more_likely_sequence_over_the_greedy_one():
    # First step: "a" (0.4) beats "red" (0.35), but after "a" the mass is spread over 8 words
    # and after "red" <end> has 0.95: beam keeps both and returns "red <end>".
    model = tiny(layers=1)
    v = len(VOCAB)
    a, red, end = VOCAB.index["a"], VOCAB.index["red"], VOCAB.end

    def dist(probs: dict[int, float]) -> torch.Tensor:
        rest = (1 - sum(probs.values())) / (v - len(probs))
        p = torch.full((v,), rest)
        for k, q in probs.items():
            p[k] = q
        return p.log()

    first = dist({a: 0.4, red: 0.35})
    after_a = torch.full((v,), 1.0 / v).log()
    after_red = dist({end: 0.95})

    def decode(memory, tokens):
        rows = []
        for seq in tokens.tolist():
            last = seq[-1]
            rows.append(first if last == VOCAB.start else after_a if last == a else after_red)
        logits = torch.stack(rows)[:, None].expand(-1, tokens.shape[1], -1)
        return logits, None

    model.decode = decode
    images = torch.randn(1, 3, 32, 32)
    assert greedy(model, images, VOCAB.start, end)[0][0] == a
    assert beam_search(model, images, VOCAB.start, end, beam_size=2) == [[red, end]]


def test_checkpoint_of_another_vocabulary_is_refused(tmp_path):
    other = Captioner(
        CaptionerConfig(
            vocab_size=len(VOCAB) + 3, arch="vitlab_micro_16", image_size=32, d_model=32, heads=2
        )
    )
    torch.save(other.state_dict(), tmp_path / "model.pt")
    with pytest.raises(VitlabError, match=r"vocabulary of 13 words but the vocabulary has 10"):
        load_captioner(tiny(local_layers=2, layers=2, max_len=24), tmp_path / "model.pt")


@pytest.mark.parametrize(
    ("saved", "message"),
    [({"layers": 1}, "keys differ.*another architecture"), ({"ff_mult": 2}, "has shape")],
)
def test_checkpoint_of_another_architecture_is_refused(tmp_path, saved, message):
    torch.save(tiny(**saved).state_dict(), tmp_path / "model.pt")
    with pytest.raises(VitlabError, match=message):
        load_captioner(tiny(), tmp_path / "model.pt")


def test_encoder_initialised_from_a_classifier_checkpoint(tmp_path):
    torch.manual_seed(1)
    vit = build_model("vitlab_micro_16", num_classes=8, image_size=32)
    torch.save(vit.state_dict(), tmp_path / "soup.pt")
    model = tiny(encoder_blocks=1)
    loaded = init_encoder(model, tmp_path / "soup.pt")
    assert "blocks.0.attn.proj_q.weight" in loaded and "patch_embedding.weight" in loaded
    assert torch.equal(model.encoder.patch_embedding.weight, vit.patch_embedding.weight)
    assert torch.equal(
        model.encoder.blocks[0].attn.proj_q.weight, vit.transformer.blocks[0].attn.proj_q.weight
    )
    other = build_model("vitlab_micro_32", num_classes=8, image_size=32)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(VitlabError, match=r"other.pt \(captions.model.init\).*shape"):
        init_encoder(tiny(), tmp_path / "other.pt")


def test_vocabulary_encodes_decodes_and_rejects_a_bad_file(tmp_path):
    ids = VOCAB.encode(["a", "green", "blob"])
    assert ids[0] == VOCAB.start and ids[-1] == VOCAB.end and ids[2] == VOCAB.unk
    assert VOCAB.decode([*ids, 7, 7]) == ["a", "<unk>", "blob"]
    VOCAB.save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json").words == VOCAB.words
    (tmp_path / "bad.json").write_text('{"words": ["a", "b"]}')
    with pytest.raises(VitlabError, match="must start with"):
        Vocab.load(tmp_path / "bad.json")
