"""Training throughput: the stock pytorch_pretrained_vit path against vitlab's fast path.

Measured in one run, on this machine: training images/s of each path for each model, the
analytic training FLOPs per image, the matmul peak (fp32 and bf16) measured here, the
utilisation of that peak, and the data path (memory-mapped uint8 batches -> normalised,
augmented device tensors) alone. Writes reports/bench/throughput.{json,md}.

    python -m benchmarks.throughput                # the default small models on this CPU
    python -m benchmarks.throughput --preset gpu   # B_16, B_32, L_16 imagenet1k at 384 px

Stock: fp32, explicit-softmax attention, torch's dropout, the optimizer's default kernels.
Fast: fused attention (SDPA; on CPU while training with dropout, explicit scores), the fast
CPU dropout (vitlab.dropout), bf16 autocast where it measures faster (always on a GPU), the
fused optimizer on a GPU, optionally torch.compile. The paths are timed in interleaved rounds
and each rate is the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vitlab.atomic import write_json, write_text
from vitlab.augment import sample_affine, warp
from vitlab.data import Split, batches, normalize
from vitlab.device import autocast, resolve_device
from vitlab.dropout import set_fast_dropout
from vitlab.flops import train_flops
from vitlab.fused_attention import set_fused_attention
from vitlab.models import build_model

PRESETS = {
    "cpu": {"models": ["vitlab_B_16", "vitlab_B_32", "vitlab_L_16"], "image_size": 64, "batch": 64},
    "gpu": {
        "models": ["B_16_imagenet1k", "B_32_imagenet1k", "L_16_imagenet1k"],
        "image_size": 384,
        "batch": 16,  # the reference recipe's batch; stock L_16 at 32 nears 80 GB
    },
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, seconds: float = 1.0) -> float:
    """Measured FLOP/s of an n x n matmul in `dtype` (the practical peak for this machine)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(5):
            a @ b
        reps += 5
        sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def train_step(
    arch: str,
    image_size: int,
    batch: int,
    device: torch.device,
    *,
    fast: bool,
    amp: torch.dtype | None,
    compile_model: bool,
) -> Callable[[], None]:
    """One training step (forward, backward, optimizer step) of the stock or the fast path."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=37, image_size=image_size).to(device).train()
    set_fused_attention(model, fast)
    set_fast_dropout(model, fast)
    fused_opt = fast and device.type == "cuda"
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, fused=fused_opt or None)
    step_model = torch.compile(model) if compile_model else model
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    y = torch.randint(0, 37, (batch,), device=device)

    def step() -> None:
        with autocast(device, amp):
            loss = F.cross_entropy(step_model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def train_rates(
    steps: dict[str, Callable[[], None]],
    batch: int,
    device: torch.device,
    *,
    rounds: int,
    steps_per_round: int,
    warmup: int,
) -> dict[str, float]:
    """Median training images/s of each path over `rounds` interleaved rounds.

    Interleaving puts every path under the same background load; the median drops a round
    that a neighbour's burst of work slowed down.
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    sync(device)
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(steps_per_round):
                step()
            sync(device)
            rates[name].append(steps_per_round * batch / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def data_rate(image_size: int, batch: int, device: torch.device, n: int = 4096) -> float:
    """Images/s of the data path alone: memory-mapped uint8 -> device, normalise, augment."""
    with tempfile.TemporaryDirectory() as tmp:
        images = np.lib.format.open_memmap(
            f"{tmp}/i.npy", "w+", np.uint8, (n, image_size, image_size, 3)
        )
        images[:] = np.random.default_rng(0).integers(0, 255, images.shape, dtype=np.uint8)
        images.flush()
        split = Split(
            np.load(f"{tmp}/i.npy", mmap_mode="r"), np.zeros(n, np.int64), images[:, :, :, 0]
        )
        gen = torch.Generator().manual_seed(0)
        start, seen = time.perf_counter(), 0
        for x, _ in batches(
            split, batch, shuffle=True, seed=0, drop_last=True, pin_memory=device.type == "cuda"
        ):
            x = normalize(x.to(device, non_blocking=True))
            x = warp(x, sample_affine(len(x), gen, scale=(0.9, 1.1), translate=0.1))
            seen += len(x)
        sync(device)
        return seen / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default=None)
    p.add_argument("--models", default=None, help="comma-separated architectures")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=5, help="steps per path per round")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the median counts")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="also torch.compile the fast path")
    p.add_argument("--out", type=Path, default=Path("reports/bench"))
    args = p.parse_args()
    device = resolve_device(args.device)
    preset = PRESETS[args.preset or ("gpu" if device.type == "cuda" else "cpu")]
    models = args.models.split(",") if args.models else preset["models"]
    size, batch = args.image_size or preset["image_size"], args.batch or preset["batch"]

    n = 8192 if device.type == "cuda" else 1024
    peak = {
        "fp32": matmul_peak(device, torch.float32, n),
        "bf16": matmul_peak(device, torch.bfloat16, n),
    }
    rows = []
    for arch in models:
        build = {"image_size": size, "batch": batch, "device": device}
        rate = train_rates(
            {
                "stock": train_step(arch, **build, fast=False, amp=None, compile_model=False),
                "fast_fp32": train_step(
                    arch, **build, fast=True, amp=None, compile_model=args.compile
                ),
                "fast_bf16": train_step(
                    arch, **build, fast=True, amp=torch.bfloat16, compile_model=args.compile
                ),
            },
            batch,
            device,
            rounds=args.rounds,
            steps_per_round=args.steps,
            warmup=args.warmup,
        )
        stock, fast_fp32, fast_bf16 = rate["stock"], rate["fast_fp32"], rate["fast_bf16"]
        bf16 = device.type == "cuda" or fast_bf16 > fast_fp32
        fast = fast_bf16 if bf16 else fast_fp32
        flops = train_flops(build_model(arch, num_classes=37, image_size=size), size)
        rows.append(
            {
                "model": arch,
                "image_size": size,
                "batch": batch,
                "train_gflop_per_image": round(flops / 1e9, 3),
                "stock_img_s": round(stock, 1),
                "fast_fp32_img_s": round(fast_fp32, 1),
                "fast_bf16_img_s": round(fast_bf16, 1),
                "fast_path": "fused+fastdrop+bf16" if bf16 else "fused+fastdrop+fp32",
                "fast_img_s": round(fast, 1),
                "speedup": round(fast / stock, 2),
                "stock_util_fp32_peak": round(stock * flops / peak["fp32"], 3),
                "fast_util_peak": round(fast * flops / peak["bf16" if bf16 else "fp32"], 3),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    data = data_rate(size, batch, device)
    result = {
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "matmul_peak_tflops": {k: round(v / 1e12, 3) for k, v in peak.items()},
        "data_path_img_s": round(data, 1),
        "data_vs_fastest_training": round(data / max(r["fast_img_s"] for r in rows), 2),
        "models": rows,
    }
    out = args.out
    write_json(out / "throughput.json", result)
    peaks = result["matmul_peak_tflops"]
    lines = [
        f"# Training throughput on {result['device']} ({device.type}, "
        f"{result['threads']} threads, torch {result['torch']})",
        "",
        f"Matmul peak measured in this run: fp32 {peaks['fp32']} TFLOP/s, bf16 {peaks['bf16']} "
        f"TFLOP/s. Data path alone: {result['data_path_img_s']} img/s "
        f"({result['data_vs_fastest_training']}x the fastest training).",
        "",
        "| model | px | batch | GFLOP/img (train) | stock img/s | fast img/s | fast path "
        "| speedup | stock util (fp32 peak) | fast util |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['image_size']} | {r['batch']} | {r['train_gflop_per_image']} | "
            f"{r['stock_img_s']} | {r['fast_img_s']} | {r['fast_path']} | {r['speedup']}x | "
            f"{r['stock_util_fp32_peak']:.1%} | {r['fast_util_peak']:.1%} |"
        )
    write_text(out / "throughput.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
