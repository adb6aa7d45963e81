"""The classifier's training loop: one model, one run, read top to bottom.

Per epoch: shuffle (seeded by epoch), augment on the device, step the optimizer and the
per-iteration schedule, score val with the study's one scoring function, log the curves with
dvclive, keep the top-K epoch checkpoints under the selection rule, and save a resume state.
Data order and augmentation come from generators seeded by (seed, epoch), and the global RNGs
(dropout; CUDA's too) are saved in the resume state, so a run killed mid-way and resumed ends
with the same weights as an uninterrupted one. A loss or weight that stops being finite ends
the run at once, before anything of that epoch is written.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from dvclive import Live
from tqdm import tqdm

from vitlab.core import config, contract
from vitlab.core.atomic import remove_stale_temporaries, save_torch, write_json
from vitlab.core.errors import VitlabError
from vitlab.prepared import Split, batches, normalize
from vitlab.selection import top_k
from vitlab.training.augment import sample_affine, warp
from vitlab.training.steps import (
    check_finite,
    check_finite_weights,
    decay_groups,
    epoch_seed,
    load_resume,
    make_optimizer,
    make_scheduler,
    optimizer_step,
)
from vitlab.vit.device import autocast
from vitlab.vit.distributed import Context, barrier
from vitlab.vit.dropout import set_fast_dropout
from vitlab.vit.fused_attention import set_fused_attention
from vitlab.vit.runtime import Runtime
from vitlab.vit.scoring import evaluate


def _log_epoch(live: Live, record: dict) -> None:
    live.step = record["epoch"]
    for name in contract.CURVES:
        live.log_metric(name, record[name])
    live.next_step()


def _train_epoch(model, ddp, train, optimizer, scheduler, cfg, rt, ctx, epoch, where) -> float:
    """One pass over the train split; returns the mean train loss over all ranks."""
    model.train()
    seed = epoch_seed(cfg.seed, epoch)
    gen = torch.Generator().manual_seed(seed)
    loader = batches(
        train,
        cfg.batch_size,
        shuffle=True,
        seed=seed,
        drop_last=True,
        workers=rt.workers,
        pin_memory=rt.device.type == "cuda",
        rank=ctx.rank,
        world=ctx.world,
    )
    bar = tqdm(
        loader,
        total=len(train) // cfg.batch_size,
        desc=f"epoch {epoch}/{cfg.epochs}",
        disable=not (rt.progress and ctx.main),
        file=sys.stderr,
        mininterval=2.0,
    )
    aug = {"scale": tuple(cfg.augment.scale), "translate": cfg.augment.translate,
           "flip": cfg.augment.flip}  # fmt: skip
    advice = f"Lower train.lr (now {cfg.lr}) or set train.grad_clip (now {cfg.grad_clip})."
    loss_sum = torch.zeros(2, dtype=torch.float64, device=rt.device)  # (sum, count)
    for step, (x, y) in enumerate(bar, 1):
        theta = ctx.shard(sample_affine(cfg.batch_size, gen, **aug))  # drawn for the global batch
        x = warp(normalize(x.to(rt.device, non_blocking=True)), theta)
        y = y.to(rt.device, non_blocking=True)
        with autocast(rt.device, rt.amp):
            loss = F.cross_entropy(ddp(x), y, label_smoothing=cfg.label_smoothing)
        check_finite("the loss", loss.detach(), where=f"{where}, step {step}", advice=advice)
        optimizer_step(loss, model, optimizer, scheduler, cfg.grad_clip)
        loss_sum += torch.stack([loss.detach().double() * len(y), loss.new_tensor(len(y)).double()])
    check_finite_weights(model, where=where, advice=advice)
    if ctx.world > 1:
        torch.distributed.all_reduce(loss_sum)
    return (loss_sum[0] / loss_sum[1]).item()


def fit(
    model: torch.nn.Module,
    train: Split,
    val: Split,
    cfg: config.Train,
    rt: Runtime,
    *,
    name: str,
    out_dir: Path,
    live_dir: Path,
    fingerprint: str,
    num_classes: int,
    ctx: Context | None = None,
) -> list[dict]:
    """Train `model` into out_dir/{epochs/epoch_NNN.pt, last.pt, history.json}; return history.

    Records hold no wall-clock time, so the same parameters give byte-identical outputs.

    Under torchrun every rank trains; rank 0 alone scores val and writes files.
    """
    ctx = ctx or Context()
    if not 1 <= cfg.batch_size <= len(train):
        raise VitlabError(
            f"train.batch_size {cfg.batch_size} must be in 1..{len(train)} (the train split)"
        )
    if cfg.batch_size % ctx.world:
        raise VitlabError(f"train.batch_size {cfg.batch_size} must divide by {ctx.world} ranks")
    epochs_dir, last_path = out_dir / "epochs", out_dir / "last.pt"
    model.to(rt.device)
    set_fused_attention(model, rt.fused_attention)
    set_fast_dropout(model, rt.fast_dropout)
    steps_per_epoch = len(train) // cfg.batch_size
    optimizer = make_optimizer(
        decay_groups(model, cfg.weight_decay), cfg.optimizer, cfg.lr, cfg.momentum, rt.device
    )
    scheduler = make_scheduler(
        optimizer,
        steps_per_epoch,
        epochs=cfg.epochs,
        schedule=cfg.schedule,
        warmup_epochs=cfg.warmup_epochs,
        step_size=cfg.step_size,
        gamma=cfg.gamma,
    )

    state = load_resume(last_path, fingerprint, writer=ctx.main)
    kept_files = state is not None and all(
        (epochs_dir / f"{contract.epoch_name(e)}.pt").is_file() for e in state.get("kept", [])
    )
    if state is None or not kept_files:  # a fresh run: nothing of an older one may survive
        if ctx.main:
            shutil.rmtree(epochs_dir, ignore_errors=True)
        history, start = [], 1
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_torch"])
        if rt.device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        history, start = state["history"], state["epoch"] + 1
        if ctx.main:
            print(f"resuming after epoch {state['epoch']} ({last_path})", file=sys.stderr)
    ddp = model
    if ctx.world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
    live = None
    if ctx.main:
        epochs_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(epochs_dir)
        remove_stale_temporaries(out_dir)
        live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False)
        for record in history:  # curves are rebuilt from the resume state: no gaps, no repeats
            _log_epoch(live, record)

    for epoch in range(start, cfg.epochs + 1):
        t0 = time.perf_counter()
        where = f"train@{name}, epoch {epoch}"
        train_loss = _train_epoch(
            model, ddp, train, optimizer, scheduler, cfg, rt, ctx, epoch, where
        )
        lr = optimizer.param_groups[0]["lr"]
        if ctx.main:
            m = evaluate(model, val, num_classes, rt)
            record = {
                "epoch": epoch,
                "train_loss": round(train_loss, 6),
                "val_loss": m["loss"],
                "val_acc": m["accuracy"],
                "lr": lr,
            }
            history.append(record)
            _checkpoint(
                model, optimizer, scheduler, cfg, history, epochs_dir, last_path, fingerprint
            )
            _log_epoch(live, record)
            print(
                f"epoch {epoch:3d}  train_loss {record['train_loss']:.4f}  val_loss "
                f"{record['val_loss']:.4f}  val_acc {record['val_acc']:.4f}  lr {lr:.2e}  "
                f"{time.perf_counter() - t0:.1f}s",
                file=sys.stderr,
            )
        barrier(ctx)
    if ctx.main:
        live.end()
        kept = sorted(r["epoch"] for r in top_k(history, cfg.keep_top_k))
        write_json(out_dir / "history.json", {"epochs": history, "kept": kept})
    return history


def _checkpoint(model, optimizer, scheduler, cfg, history, epochs_dir, last_path, fingerprint):
    """Save this epoch if it is in the top-K, then the resume state, then drop evicted epochs.

    The order makes a crash at any point safe: a resumed run redoes the unrecorded epoch.
    """
    epoch = history[-1]["epoch"]
    kept = sorted(r["epoch"] for r in top_k(history, cfg.keep_top_k))
    if epoch in kept:
        save_torch(epochs_dir / f"{contract.epoch_name(epoch)}.pt", model.state_dict())
    save_torch(
        last_path,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "history": history,
            "kept": kept,
            "fingerprint": fingerprint,
            "config": cfg.model_dump(),
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        },
    )
    for stale in epochs_dir.glob("epoch_*.pt"):
        if contract.epoch_of(stale) not in kept:
            stale.unlink()
