"""A captioner trained here in seconds describes single-object scenes and looks at the object."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitlab.captions.dataset import from_scenes, to_images
from vitlab.captions.decode import attention_maps, greedy
from vitlab.captions.metrics import Grounding, caption_scores
from vitlab.captions.model import Captioner, CaptionerConfig
from vitlab.captions.scenes import SceneConfig, generate, scene_rng, word_kind
from vitlab.captions.train import fit_captioner
from vitlab.captions.train import generate as caption_all
from vitlab.captions.vocab import Vocab
from vitlab.core.config import CaptionTrain

CPU = torch.device("cpu")
# One object per 32-px scene, in one of 2x2 cells; captions "a <size> <colour> plain blob".
SCENES = SceneConfig(
    image_size=32,
    objects=(1, 1),
    grid=2,
    small=(0.3, 0.34),
    large=(0.42, 0.48),
    patterns=("plain",),
    colours=("red", "green", "blue", "yellow"),
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    train = from_scenes(generate(SCENES, 0, "train", 0, 600), [""] * 600)
    val = from_scenes(generate(SCENES, 0, "val", 0, 40), [""] * 40)
    vocab = Vocab.build([c for refs in train.captions for c in refs])
    torch.manual_seed(0)
    model = Captioner(
        CaptionerConfig(
            vocab_size=len(vocab),
            arch="vitlab_micro_16",
            image_size=32,
            d_model=32,
            heads=2,
            layers=1,
            local_layers=1,
            max_len=8,
            dropout=0.0,
        )
    )
    cfg = CaptionTrain(
        epochs=6,
        batch_size=32,
        lr=3e-3,
        weight_decay=0.01,
        warmup_epochs=0.5,
        label_smoothing=0.0,
        grad_clip=1.0,
        fresh_scenes=False,
        seed=0,
    )
    history = fit_captioner(
        model,
        vocab,
        lambda epoch: train,
        val,
        cfg,
        device=CPU,
        live_dir=tmp_path_factory.mktemp("live"),
        progress=False,
    )
    return model.eval(), vocab, history


def test_training_lowers_the_loss_and_logs_each_epoch(trained):
    _, _, history = trained
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert history[-1]["train_loss"] < 0.3 * history[0]["train_loss"]
    assert set(history[0]) >= {"train_loss", "val_loss", "val_bleu4", "val_exact", "lr"}


def test_trained_captioner_describes_held_out_scenes(trained):
    model, vocab, _ = trained
    test = from_scenes(generate(SCENES, 0, "test", 0, 100), [""] * 100)
    hyps = [vocab.decode(s) for s in caption_all(model, test, vocab, CPU)]
    scores = caption_scores(test.captions, hyps)
    assert scores["exact_match"] >= 0.8, scores


def test_colour_word_attends_to_the_planted_object(trained):
    model, vocab, _ = trained
    test = from_scenes(generate(SCENES, 0, "test", 0, 100), [""] * 100)
    refs = [vocab.encode(c[0])[1:] for c in test.captions]
    maps = attention_maps(model, to_images(test.images, CPU), refs, vocab.start, vocab.pad)
    g = Grounding()
    for i, m in enumerate(maps):
        tokens = test.captions[i][0]
        g.add(
            m.numpy()[: len(tokens)],
            test.masks[i],
            test.token_objects[i],
            [word_kind(w) for w in tokens],
        )
    colour = g.result()["by_kind"]["colour"]
    assert colour["words"] == 100
    assert colour["pointing"] >= 0.9 > colour["pointing_uniform"] + 0.5, colour
    assert colour["energy"] >= 2.5 * colour["energy_uniform"], colour


def test_the_map_follows_a_planted_object_as_it_moves(trained):
    # A red disc planted on a plain noisy background in each 2x2 cell in turn: the caption
    # names it and the colour word's maximum moves with it (4x4 patches, 2x2 per cell).
    model, vocab, _ = trained
    yy, xx = np.mgrid[0:32, 0:32] + 0.5
    hits = 0
    for cell in range(4):
        rng = scene_rng(7, "test", cell)
        img = (120 + rng.integers(0, 16, (32, 32, 3))).astype(np.uint8)
        cy, cx = 8 + 16 * (cell // 2), 8 + 16 * (cell % 2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 6.5**2] = (220, 40, 40)
        x = to_images(img[None], CPU)
        ids = greedy(model, x, vocab.start, vocab.end)[0]
        words = vocab.decode(ids)
        assert "red" in words, words
        m = attention_maps(model, x, [ids], vocab.start, vocab.pad)[0][words.index("red")]
        r, c = np.unravel_index(int(m.argmax()), m.shape)
        hits += (r // 2, c // 2) == (cell // 2, cell % 2)
    assert hits == 4


def test_greedy_output_ends_with_one_end_token(trained):
    model, vocab, _ = trained
    test = from_scenes(generate(SCENES, 0, "test", 0, 20), [""] * 20)
    for ids in greedy(model, to_images(test.images, CPU), vocab.start, vocab.end):
        assert ids[-1] == vocab.end and ids.count(vocab.end) == 1


@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_training_steps_run_at_the_runtime_precision(tmp_path, amp):
    """runtime.amp reaches the captioner's training steps (bf16 autocast: 1.3x a step on a
    bf16 CPU); scoring val each epoch stays in float32."""
    data = from_scenes(generate(SCENES, 0, "train", 0, 64), [""] * 64)
    vocab = Vocab.build([c for refs in data.captions for c in refs])
    model = Captioner(CaptionerConfig(vocab_size=len(vocab), arch="vitlab_micro_16",
                                      image_size=32, d_model=32, heads=2, layers=1,
                                      max_len=8))  # fmt: skip
    seen = []
    model.head.register_forward_hook(lambda m, i, out: seen.append((m.training, out.dtype)))
    cfg = CaptionTrain(epochs=1, batch_size=32, lr=1e-3, weight_decay=0.0, warmup_epochs=0,
                       label_smoothing=0.0, grad_clip=1.0, fresh_scenes=False, seed=0)  # fmt: skip
    fit_captioner(model, vocab, lambda epoch: data, data, cfg, device=CPU, amp=amp,
                  live_dir=tmp_path, progress=False)  # fmt: skip
    assert {d for training, d in seen if training} == {amp or torch.float32}
    assert {d for training, d in seen if not training} == {torch.float32}
