"""Training the captioner: teacher forcing, AdamW, warmup + cosine, per-epoch val loss/BLEU.

The training set is asked for per epoch (`train_set(epoch)`), so generated scenes can be drawn
fresh every epoch: we measured that a fixed set of scenes is memorised (train loss
near zero, val captions wrong) while fresh scenes keep improving. Shuffling and dropout are
seeded from (seed, epoch), so a run is reproducible on one machine.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from dvclive import Live

from vitlab.captions.dataset import CaptionSet, batches, to_images
from vitlab.captions.decode import generate
from vitlab.captions.metrics import bleu
from vitlab.captions.model import Captioner, caption_loss
from vitlab.captions.vocab import Vocab
from vitlab.core import config, contract
from vitlab.core.atomic import save_torch
from vitlab.core.errors import VitlabError
from vitlab.training.steps import (
    check_finite,
    decay_groups,
    epoch_seed,
    load_resume,
    make_optimizer,
    make_scheduler,
    optimizer_step,
)
from vitlab.vit.device import autocast


@torch.no_grad()
def evaluate_loss(
    model: Captioner, data: CaptionSet, vocab: Vocab, device: torch.device, batch_size: int = 256
) -> float:
    """Mean teacher-forced loss per token over every reference of `data`."""
    model.eval()
    total, count = 0.0, 0
    for imgs, ids in batches(data, vocab, batch_size, max_len=model.cfg.max_len):
        ids = ids.to(device)
        logits, _ = model(to_images(imgs, device), ids[:, :-1])
        n = int((ids[:, 1:] != vocab.pad).sum())
        total += float(caption_loss(logits, ids[:, 1:], vocab.pad)) * n
        count += n
    return total / max(count, 1)


def _log(live: Live, record: dict) -> None:
    live.step = record["epoch"]
    for name in contract.CAPTION_CURVES:
        live.log_metric(name, record[name])
    live.next_step()


def fit_captioner(
    model: Captioner,
    vocab: Vocab,
    train_set: Callable[[int], CaptionSet],
    val: CaptionSet,
    cfg: config.CaptionTrain,
    *,
    device: torch.device,
    amp: torch.dtype | None = None,
    live_dir: str | Path,
    progress: bool = True,
    state_path: Path | None = None,
    fingerprint: str = "",
) -> list[dict]:
    """Train in place; log train_loss, val_loss, val_bleu4, lr per epoch into `live_dir`.

    With `state_path`, a resume state is saved after every epoch and a run of the same
    `fingerprint` continues after its last completed epoch (each epoch's data, shuffling and
    dropout are seeded by its number, so a resumed run ends where an uninterrupted one does).
    Returns the history (one dict per epoch, also the dvclive steps).
    """
    model.to(device)
    first = train_set(1)
    n_pairs = sum(len(r) for r in first.captions)
    steps = n_pairs // cfg.batch_size
    if steps < 1:
        raise VitlabError(
            f"captions.train.batch_size {cfg.batch_size} exceeds the {n_pairs} training captions"
        )
    # "pos": the encoder's pos_embedding and the decoder's `pos` table
    groups = decay_groups(model, cfg.weight_decay, position_key="pos")
    opt = make_optimizer(groups, "adamw", cfg.lr, 0.0, device)
    sched = make_scheduler(opt, steps, epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs)
    live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    refs = val.captions
    history, start = [], 1
    state = load_resume(state_path, fingerprint) if state_path else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, start = state["history"], state["epoch"] + 1
        print(f"resuming after epoch {state['epoch']} ({state_path})", file=sys.stderr)
        for record in history:
            _log(live, record)
    advice = f"Lower captions.train.lr (now {cfg.lr}) or set captions.train.grad_clip."
    for epoch in range(start, cfg.epochs + 1):
        t0 = time.perf_counter()
        data = first if epoch == 1 else train_set(epoch)
        torch.manual_seed(epoch_seed(cfg.seed, epoch))  # dropout
        gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
        model.train()
        loss_sum, tokens = 0.0, 0
        for imgs, ids in batches(
            data, vocab, cfg.batch_size, max_len=model.cfg.max_len, generator=gen, drop_last=True
        ):
            ids = ids.to(device)
            with autocast(device, amp):
                logits, _ = model(to_images(imgs, device), ids[:, :-1])
                loss = caption_loss(logits, ids[:, 1:], vocab.pad, cfg.label_smoothing)
            check_finite("the loss", loss.detach(), where=f"train_captioner, epoch {epoch}",
                         advice=advice)  # fmt: skip
            optimizer_step(loss, model, opt, sched, cfg.grad_clip)
            n = int((ids[:, 1:] != vocab.pad).sum())
            loss_sum += float(loss.detach()) * n
            tokens += n
        val_loss = evaluate_loss(model, val, vocab, device)
        hyps = [vocab.decode(s) for s in generate(model, val, vocab, device)]
        record = {
            "epoch": epoch,
            "train_loss": round(loss_sum / max(tokens, 1), 6),
            "val_loss": round(val_loss, 6),
            "val_bleu4": round(bleu(refs, hyps)[3], 6),
            "val_exact": round(sum(h in r for h, r in zip(hyps, refs, strict=True)) / len(hyps), 6),
            "lr": opt.param_groups[0]["lr"],
        }
        history.append(record)
        if state_path:
            save_torch(state_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                    "scheduler": sched.state_dict(), "epoch": epoch,
                                    "history": history, "fingerprint": fingerprint})  # fmt: skip
        _log(live, record)
        if progress:
            print(
                f"epoch {epoch:3d}  train_loss {record['train_loss']:.4f}  val_loss "
                f"{record['val_loss']:.4f}  val_bleu4 {record['val_bleu4']:.4f}  val_exact "
                f"{record['val_exact']:.3f}  {time.perf_counter() - t0:.1f}s",
                file=sys.stderr,
            )
    live.end()
    return history
