"""Stage `train_captioner`: train the words-to-patches captioner on data/captions.

Outputs: models/captioner/{model.pt, vocab.json, config.json, history.json} and the dvclive
curves (train_loss, val_loss, val_bleu4, val_exact, lr per epoch) in reports/captions/train/,
each folder replaced atomically at the end of a successful run; models/captioner_last.pt holds
the resume state after every epoch, so a killed run continues where it stopped.

A pretrained arch (captions.model.arch catr_*) needs no training: the stage only writes a
marker, pretrained.json, into both folders (and a placeholder captioner_last.pt when there is
no resume state to keep), importing nothing heavy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time

from stages._common import cli, load_params
from vitlab.core import config, contract
from vitlab.core.atomic import atomic_dir, write_json, write_text
from vitlab.core.errors import VitlabError
from vitlab.core.workers import per_core

MARKER = "pretrained.json"
PLACEHOLDER = "no resume state: a pretrained captions.model.arch is not trained\n"


def mark_pretrained(arch: str) -> None:
    """The outputs DVC expects, saying that `arch` is used as released."""
    note = {
        "arch": arch,
        "trained": False,
        "why": "a pretrained arch is used as released; render_captions loads its weights",
    }
    for folder in (contract.CAPTIONER, contract.CAPTION_TRAIN):
        with atomic_dir(folder) as tmp:
            write_json(tmp / MARKER, note)
    if not contract.CAPTIONER_STATE.exists():  # a trained arch's resume state is kept
        write_text(contract.CAPTIONER_STATE, PLACEHOLDER)
    print(f"train_captioner: {arch} is pretrained; nothing to train")


def fit(params: config.Params) -> None:
    """Train the captioner of captions.model (resuming a run of the same configuration)."""
    import torch

    from vitlab.captions import store
    from vitlab.captions.build import build_captioner
    from vitlab.captions.fresh import FreshScenes
    from vitlab.captions.model import config_dict
    from vitlab.captions.train import fit_captioner
    from vitlab.captions.vocab import Vocab
    from vitlab.vit import runtime

    c = params.captions
    rt = runtime.resolve(params.runtime)
    t0 = time.perf_counter()
    items = store.read_items(contract.CAPTION_DATA)
    train, val = store.load_split(items, "train"), store.load_split(items, "val")
    if train.images.shape[1] != c.image_size:
        raise VitlabError(
            f"{contract.CAPTION_DATA} holds {train.images.shape[1]}-px images but "
            f"captions.image_size is "
            f"{c.image_size}; rerun `dvc repro fetch_captions`"
        )
    vocab = Vocab.build([s for refs in train.captions for s in refs], c.vocab.min_count)
    tc = c.train
    gen = store.generator(contract.CAPTION_DATA)

    state, placeholder = contract.CAPTIONER_STATE, PLACEHOLDER.encode()
    small = state.is_file() and state.stat().st_size == len(placeholder)
    if small and state.read_bytes() == placeholder:
        state.unlink()  # a pretrained arch's placeholder: no state to resume
    torch.manual_seed(tc.seed)
    model = build_captioner(c, len(vocab), for_training=True)
    spec = {"captions": c.model_dump(mode="json", by_alias=True), "device": str(rt.device),
            "amp": str(rt.amp),
            "data": hashlib.sha256((contract.CAPTION_DATA / "captions.json").read_bytes())
            .hexdigest()}  # fmt: skip
    fingerprint = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    if tc.fresh_scenes and gen is not None:
        train_set = FreshScenes(train, *gen, workers=per_core())  # any count: the same scenes
    else:
        train_set = contextlib.nullcontext(lambda epoch: train)
    with (
        train_set as train_set,
        atomic_dir(contract.CAPTION_TRAIN) as live_tmp,
        atomic_dir(contract.CAPTIONER) as model_tmp,
    ):
        history = fit_captioner(
            model,
            vocab,
            train_set,
            val,
            tc,
            device=rt.device,
            amp=rt.amp,
            live_dir=live_tmp,
            progress=rt.progress,
            state_path=contract.CAPTIONER_STATE,
            fingerprint=fingerprint,
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


@cli
def main() -> None:
    params = load_params()
    if params.captions.catr_version is not None:
        mark_pretrained(params.captions.model.arch)
    else:
        fit(params)


if __name__ == "__main__":
    main()
