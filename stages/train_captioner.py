"""Stage `train_captioner`: train the words-to-patches captioner on data/captions.

Outputs: models/captioner/{model.pt, vocab.json, config.json, history.json} and the dvclive
curves (train_loss, val_loss, val_bleu4, val_exact, lr per epoch) in reports/captions/train/,
each folder replaced atomically at the end of a successful run.
"""

from __future__ import annotations

import json
import time

import torch

from stages._captions import (
    DATA,
    MODEL_DIR,
    OUT,
    build_captioner,
    captions_section,
    runtime_device,
    train_config,
)
from stages._common import cli, load_params, section
from vitlab.atomic import atomic_dir
from vitlab.captions import scenes, store
from vitlab.captions.dataset import CaptionSet, from_scenes
from vitlab.captions.model import config_dict
from vitlab.captions.train import fit_captioner
from vitlab.captions.vocab import Vocab
from vitlab.errors import VitlabError


@cli
def main() -> None:
    params = load_params()
    p = captions_section(params, "train_captioner")
    device = runtime_device(params)
    t0 = time.perf_counter()
    items = store.read_items(DATA)
    train, val = store.load_split(items, "train"), store.load_split(items, "val")
    if train.images.shape[1] != int(p["image_size"]):
        raise VitlabError(
            f"{DATA} holds {train.images.shape[1]}-px images but captions.image_size is "
            f"{p['image_size']}; rerun `dvc repro fetch_captions`"
        )
    vocab = Vocab.build(
        [c for refs in train.captions for c in refs], int(p["vocab"].get("min_count", 1))
    )
    tc = train_config(p)
    gen = store.generator(DATA)

    def train_set(epoch: int) -> CaptionSet:
        if epoch == 1 or not tc.fresh_scenes or gen is None:
            return train
        cfg, seed = gen
        n = len(train)
        return from_scenes(scenes.generate(cfg, seed, "train", (epoch - 1) * n, n), [""] * n)

    torch.manual_seed(tc.seed)
    model = build_captioner(p, len(vocab), for_training=True)
    with atomic_dir(OUT / "train") as live_tmp, atomic_dir(MODEL_DIR) as model_tmp:
        history = fit_captioner(
            model,
            vocab,
            train_set,
            val,
            tc,
            device=device,
            live_dir=live_tmp,
            progress=bool(section(params, "runtime").get("progress", True)),
        )
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, model_tmp / "model.pt")
        vocab.save(model_tmp / "vocab.json")
        (model_tmp / "config.json").write_text(json.dumps(config_dict(model.cfg), indent=2))
        (model_tmp / "history.json").write_text(
            json.dumps({"model": "captioner", "epochs": history}, indent=2)
        )
    last = history[-1]
    print(
        f"train_captioner: {len(history)} epochs, {len(vocab)} words, val_bleu4 "
        f"{last['val_bleu4']:.4f}, val_exact {last['val_exact']:.3f}, "
        f"{time.perf_counter() - t0:.0f}s"
    )


if __name__ == "__main__":
    main()
