"""The training loop: one model, one run, read top to bottom.

Per epoch: shuffle (seeded by epoch), augment on the device, step the optimizer and the
per-iteration schedule, evaluate on val, log the curves with dvclive, keep the top-K epoch
checkpoints under the selection rule, and save a resume state. Data order and augmentation
come from generators seeded by (seed, epoch), and the global RNG (dropout) is saved in the
resume state, so a run killed mid-way and resumed ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from dvclive import Live
from tqdm import tqdm

from vitlab.atomic import save_torch, write_json
from vitlab.augment import sample_affine, warp
from vitlab.data import Split, batches, normalize
from vitlab.device import autocast
from vitlab.distributed import Context, barrier
from vitlab.dropout import set_fast_dropout
from vitlab.errors import VitlabError
from vitlab.evaluate import evaluate
from vitlab.fused_attention import set_fused_attention
from vitlab.selection import top_k


@dataclass
class TrainConfig:
    """Everything that decides a run's numbers (it is hashed into the resume fingerprint)."""

    epochs: int = 30
    batch_size: int = 16
    optimizer: str = "sgd"  # sgd (momentum) | adamw
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "step"  # step: lr * gamma ** (epoch // step_size) | cosine (with warmup)
    step_size: int = 5
    gamma: float = 0.7
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # 0 = off
    augment: dict = field(
        default_factory=lambda: {"scale": [0.9, 1.1], "translate": 0.1, "flip": True}
    )
    keep_top_k: int = 3
    seed: int = 0

    def validate(self, train_size: int) -> None:
        if self.epochs < 1:
            raise VitlabError(f"train.epochs must be >= 1 (got {self.epochs})")
        if self.keep_top_k < 3:
            raise VitlabError(f"train.keep_top_k must be >= 3 (got {self.keep_top_k})")
        if not 1 <= self.batch_size <= train_size:
            raise VitlabError(
                f"train.batch_size {self.batch_size} must be in 1..{train_size} (the train split)"
            )
        if self.optimizer not in ("sgd", "adamw"):
            raise VitlabError(f"train.optimizer {self.optimizer!r} is unknown; use sgd or adamw")
        if self.schedule not in ("step", "cosine"):
            raise VitlabError(f"train.schedule {self.schedule!r} is unknown; use step or cosine")
        if self.lr <= 0:
            raise VitlabError(f"train.lr must be > 0 (got {self.lr})")


@dataclass
class Runtime:
    """How to run, not what to compute. `amp`, `fused_attention` and `fast_dropout` still move
    the numbers a little (precision, the order of the dropout draws), so the train stage lists
    them as params."""

    device: torch.device = torch.device("cpu")
    amp: torch.dtype | None = None
    fused_attention: bool = True
    fast_dropout: bool = True
    workers: int = 0
    eval_batch_size: int = 256
    progress: bool = True


def lr_factor(cfg: TrainConfig, iteration: int, steps_per_epoch: int) -> float:
    """The schedule as a multiple of cfg.lr at a given optimizer step."""
    epoch = iteration / steps_per_epoch
    if cfg.schedule == "step":
        return cfg.gamma ** (int(epoch) // cfg.step_size)
    if epoch < cfg.warmup_epochs:
        return (iteration + 1) / (cfg.warmup_epochs * steps_per_epoch)
    progress = (epoch - cfg.warmup_epochs) / max(cfg.epochs - cfg.warmup_epochs, 1e-9)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def decay_groups(
    model: torch.nn.Module, weight_decay: float, position_key: str = "pos_embedding"
) -> list[dict]:
    """Optimizer groups: weight decay on matrices, none on norms, biases and the parameters
    whose name holds `position_key` (position embeddings)."""
    named = list(model.named_parameters())
    decay = [p for n, p in named if p.ndim >= 2 and position_key not in n]
    no_decay = [p for n, p in named if p.ndim < 2 or position_key in n]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device):
    """SGD with momentum (the reference recipe) or AdamW, over `decay_groups`."""
    groups = decay_groups(model, cfg.weight_decay)
    fused = device.type == "cuda"
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=fused or None)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused or None)


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def _load_resume(path: Path, fingerprint: str, epochs: int) -> dict | None:
    """The resume state if it belongs to this configuration and is unfinished, else None."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a state we cannot read is one we cannot resume from
        return None
    if state.get("fingerprint") != fingerprint or state.get("epoch", 0) >= epochs:
        return None
    return state


def _log_epoch(live: Live, record: dict) -> None:
    live.step = record["epoch"]
    for name in ("train_loss", "val_loss", "val_acc", "lr"):
        live.log_metric(name, record[name])
    live.next_step()


def _train_epoch(model, ddp, train, optimizer, scheduler, cfg, rt, ctx, epoch) -> float:
    """One pass over the train split; returns the mean train loss over all ranks."""
    model.train()
    seed = _epoch_seed(cfg.seed, epoch)
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
    aug = {
        "scale": tuple(cfg.augment["scale"]),
        "translate": cfg.augment["translate"],
        "flip": cfg.augment["flip"],
    }
    loss_sum = torch.zeros(2, dtype=torch.float64, device=rt.device)  # (sum, count)
    for x, y in bar:
        theta = ctx.shard(sample_affine(cfg.batch_size, gen, **aug))  # drawn for the global batch
        x = warp(normalize(x.to(rt.device, non_blocking=True)), theta)
        y = y.to(rt.device, non_blocking=True)
        with autocast(rt.device, rt.amp):
            loss = F.cross_entropy(ddp(x), y, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        loss_sum += torch.stack([loss.detach().double() * len(y), loss.new_tensor(len(y)).double()])
    if ctx.world > 1:
        torch.distributed.all_reduce(loss_sum)
    return (loss_sum[0] / loss_sum[1]).item()


def fit(
    model: torch.nn.Module,
    train: Split,
    val: Split,
    cfg: TrainConfig,
    rt: Runtime,
    *,
    out_dir: Path,
    live_dir: Path,
    fingerprint: str,
    num_classes: int,
    ctx: Context | None = None,
) -> list[dict]:
    """Train `model` into out_dir/{epochs/epoch_NNN.pt, last.pt, history.json}; return history.

    Under torchrun every rank runs this; rank 0 alone writes files.
    """
    ctx = ctx or Context()
    cfg.validate(len(train))
    if cfg.batch_size % ctx.world:
        raise VitlabError(f"train.batch_size {cfg.batch_size} must divide by {ctx.world} ranks")
    epochs_dir, last_path = out_dir / "epochs", out_dir / "last.pt"
    model.to(rt.device)
    set_fused_attention(model, rt.fused_attention)
    set_fast_dropout(model, rt.fast_dropout)
    steps_per_epoch = len(train) // cfg.batch_size
    optimizer = make_optimizer(model, cfg, rt.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(cfg, it, steps_per_epoch)
    )

    state = _load_resume(last_path, fingerprint, cfg.epochs)
    if state is None:  # a fresh run: nothing of an older configuration may survive
        if ctx.main:
            shutil.rmtree(epochs_dir, ignore_errors=True)
        history, start = [], 1
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_torch"])
        history, start = state["history"], state["epoch"] + 1
        if ctx.main:
            print(f"resuming from epoch {state['epoch']} ({last_path})", file=sys.stderr)
    ddp = model
    if ctx.world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
    live = None
    if ctx.main:
        epochs_dir.mkdir(parents=True, exist_ok=True)
        live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False)
        for record in history:  # curves are rebuilt from the resume state: no gaps, no repeats
            _log_epoch(live, record)

    for epoch in range(start, cfg.epochs + 1):
        t0 = time.perf_counter()
        train_loss = _train_epoch(model, ddp, train, optimizer, scheduler, cfg, rt, ctx, epoch)
        lr = optimizer.param_groups[0]["lr"]
        m = evaluate(
            model,
            val,
            num_classes,
            batch_size=rt.eval_batch_size,
            device=rt.device,
            amp=rt.amp,
            ctx=ctx,
        )
        record = {
            "epoch": epoch,
            "train_loss": round(train_loss, 6),
            "val_loss": round(m["loss"], 6),
            "val_acc": round(m["accuracy"], 6),
            "lr": lr,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        history.append(record)
        if ctx.main:
            _checkpoint(
                model, optimizer, scheduler, cfg, history, epochs_dir, last_path, fingerprint
            )
            _log_epoch(live, record)
            print(
                f"epoch {epoch:3d}  train_loss {record['train_loss']:.4f}  val_loss "
                f"{record['val_loss']:.4f}  val_acc {record['val_acc']:.4f}  lr {lr:.2e}  "
                f"{record['seconds']:.1f}s",
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
        save_torch(epochs_dir / f"epoch_{epoch:03d}.pt", model.state_dict())
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
            "config": asdict(cfg),
            "rng_torch": torch.get_rng_state(),
        },
    )
    for stale in epochs_dir.glob("epoch_*.pt"):
        if int(stale.stem.split("_")[1]) not in kept:
            stale.unlink()
