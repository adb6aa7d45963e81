"""Training the captioner: teacher forcing, AdamW, warmup + cosine, per-epoch val loss/BLEU.

The training set is asked for per epoch (`train_set(epoch)`), so generated scenes can be drawn
fresh every epoch: FIELD-NOTES measured that a fixed set of scenes is memorised (train loss
near zero, val captions wrong) while fresh scenes keep improving. Shuffling and dropout are
seeded from (seed, epoch), so a run is reproducible on one machine.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from dvclive import Live

from vitlab.captions.dataset import CaptionSet, batches, to_images
from vitlab.captions.decode import generate
from vitlab.captions.metrics import bleu
from vitlab.captions.model import Captioner, caption_loss
from vitlab.captions.vocab import Vocab
from vitlab.errors import VitlabError
from vitlab.train import decay_groups


@dataclass
class CaptionTrainConfig:
    """captions.train.* (everything that decides a run's numbers)."""

    epochs: int = 12
    batch_size: int = 32
    lr: float = 0.002
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    grad_clip: float = 1.0
    fresh_scenes: bool = True
    seed: int = 0

    def validate(self) -> None:
        if self.epochs < 1:
            raise VitlabError(f"captions.train.epochs must be >= 1 (got {self.epochs})")
        if self.batch_size < 1:
            raise VitlabError(f"captions.train.batch_size must be >= 1 (got {self.batch_size})")
        if self.lr <= 0:
            raise VitlabError(f"captions.train.lr must be > 0 (got {self.lr})")


def lr_factor(cfg: CaptionTrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warmup, then cosine to zero at the last step."""
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(total - warm, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


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


def fit_captioner(
    model: Captioner,
    vocab: Vocab,
    train_set: Callable[[int], CaptionSet],
    val: CaptionSet,
    cfg: CaptionTrainConfig,
    *,
    device: torch.device,
    live_dir: str | Path,
    progress: bool = True,
) -> list[dict]:
    """Train in place; log train_loss, val_loss, val_bleu4, lr per epoch into `live_dir`.

    Returns the history (one dict per epoch, also the dvclive steps).
    """
    cfg.validate()
    model.to(device)
    first = train_set(1)
    n_pairs = sum(len(r) for r in first.captions)
    steps = n_pairs // cfg.batch_size
    if steps < 1:
        raise VitlabError(
            f"captions.train.batch_size {cfg.batch_size} exceeds the {n_pairs} training captions"
        )
    # "pos": the encoder's pos_embedding and the decoder's `pos` table
    opt = torch.optim.AdamW(decay_groups(model, cfg.weight_decay, position_key="pos"), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, steps))
    live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    refs = val.captions
    history = []
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        data = first if epoch == 1 else train_set(epoch)
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        model.train()
        loss_sum, tokens = 0.0, 0
        for imgs, ids in batches(
            data, vocab, cfg.batch_size, max_len=model.cfg.max_len, generator=gen, drop_last=True
        ):
            ids = ids.to(device)
            logits, _ = model(to_images(imgs, device), ids[:, :-1])
            loss = caption_loss(logits, ids[:, 1:], vocab.pad, cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
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
            "seconds": round(time.perf_counter() - t0, 2),
        }
        history.append(record)
        live.step = epoch
        for name in ("train_loss", "val_loss", "val_bleu4", "val_exact", "lr"):
            live.log_metric(name, record[name])
        live.next_step()
        if progress:
            print(
                f"epoch {epoch:3d}  train_loss {record['train_loss']:.4f}  val_loss "
                f"{record['val_loss']:.4f}  val_bleu4 {record['val_bleu4']:.4f}  val_exact "
                f"{record['val_exact']:.3f}  {record['seconds']:.1f}s",
                file=sys.stderr,
            )
    live.end()
    return history
