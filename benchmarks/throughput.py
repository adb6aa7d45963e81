"""Training throughput: vitlab's fast path against the stock path and its peers, in one run.

Measured on this machine, for each model: training images/s of every path below, the analytic
training FLOPs per image, the matmul peak (fp32 and bf16) measured here, the utilisation of
that peak, the fast path's ratio to each other path and to the best of them, and the data path
(memory-mapped uint8 batches -> normalised, augmented device tensors) alone. Writes
reports/bench/throughput.{json,md}.

    python -m benchmarks.throughput                # the default small models on this CPU
    python -m benchmarks.throughput --preset gpu   # B_16, B_32, L_16 imagenet1k at 384 px
    python -m benchmarks.throughput --threads 1    # a shared CPU: one thread per path

The paths train one architecture, batch, loss (cross-entropy) and optimizer (AdamW, one lr and
weight decay):
- stock: pytorch_pretrained_vit as released, fp32, explicit softmax, torch's dropout, the
  optimizer's default kernels;
- hf_fp32, hf_bf16: Hugging Face transformers' ViT with SDPA attention, built from a config to
  mirror the model (benchmarks/peers.py), fp32 and under bf16 autocast;
- compiled_stock: the stock model under torch.compile, timed after the compile, which is
  reported apart (a compile that fails here is reported as its error, not raised);
- fast: vitlab's fast path: fused attention (SDPA; on CPU while training with dropout, explicit
  scores), the fast CPU dropout (vitlab.vit.dropout), the training loop's optimizer (torch's
  fused kernels), bf16 autocast where it measures faster (always on a GPU), optionally
  torch.compile.
The peers other than stock share the fast path's optimizer, so a ratio isolates the model.
transformers is a benchmark-only extra: without it the HF columns say "not installed". The
paths are timed in interleaved rounds and each rate is the median over rounds; a round runs
each path for about `--round-seconds`, so a small model's figures span as much time, and as
many of a busy neighbour's bursts, as a large one's.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_pretrained_vit import ViT

from benchmarks.gemm_ceiling import products_seconds, record_products
from benchmarks.peers import hf_mirror, parameter_count, transformers_version
from vitlab.core.allocator import keep_freed_memory
from vitlab.core.atomic import write_json, write_text
from vitlab.prepared import Split, batches, normalize
from vitlab.training.augment import sample_affine, warp
from vitlab.training.steps import make_optimizer
from vitlab.vit.device import autocast, resolve_device
from vitlab.vit.dropout import set_fast_dropout
from vitlab.vit.flops import train_flops
from vitlab.vit.fused_attention import set_fused_attention
from vitlab.vit.models import build_model

PRESETS = {
    "cpu": {"models": ["vitlab_B_16", "vitlab_B_32", "vitlab_L_16"], "image_size": 64, "batch": 64},
    "gpu": {
        "models": ["B_16_imagenet1k", "B_32_imagenet1k", "L_16_imagenet1k"],
        "image_size": 384,
        "batch": 16,  # the reference recipe's batch; stock L_16 at 32 nears 80 GB
    },
}
PRECISION = {
    "stock": "fp32",
    "hf_fp32": "fp32",
    "hf_bf16": "bf16",
    "compiled_stock": "fp32",
    "fast_fp32": "fp32",
    "fast_bf16": "bf16",
}
PATHS = tuple(PRECISION)
PEERS = ("stock", "hf_fp32", "hf_bf16", "compiled_stock")
LABELS = {
    "stock": "stock",
    "hf_fp32": "HF fp32",
    "hf_bf16": "HF bf16",
    "compiled_stock": "compiled stock",
}
NUM_CLASSES = 37
LR, WEIGHT_DECAY = 2e-3, 0.05  # params.yaml's train.lr and train.weight_decay, with AdamW
SPEEDUP_AIM = 1.3  # fast over the best peer, every model
# fast's share of the top peak, by the family mirrored. The aim names the bf16 peak; where this
# machine's fp32 matmul measures faster than its bf16 (a CPU without AMX), the fp32 peak is the
# one to reach, so the share is of the higher of the two.
UTIL_AIM = {"L_16": 0.5, "B_16": 0.4}
NOT_INSTALLED = "not installed"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(a: torch.Tensor, b: torch.Tensor, seconds: float) -> float:
    """FLOP/s of repeated `a @ b` for about `seconds`."""
    device, n = a.device, a.shape[0]
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(5):
            a @ b
        reps += 5
        sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def matmul_peaks(device: torch.device, n: int, rounds: int = 4) -> dict[str, float]:
    """Measured FLOP/s of an n x n matmul in fp32 and bf16: the practical peaks of this machine.

    Each is the best of `rounds` interleaved rounds: a neighbour's load only ever lowers a
    round, and interleaving keeps it from lowering one dtype's figure alone.
    """
    pairs = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        pairs[name] = [torch.randn(n, n, device=device, dtype=dtype) for _ in range(2)]
        matmul_rate(*pairs[name], seconds=0.1)
    best = dict.fromkeys(pairs, 0.0)
    for _ in range(rounds):
        for name, (a, b) in pairs.items():
            best[name] = max(best[name], matmul_rate(a, b, seconds=0.5))
    return best


def family(arch: str) -> str:
    """The released model an architecture is or mirrors: vitlab_L_16 and L_16_imagenet1k -> L_16."""
    return arch.removeprefix("vitlab_").removesuffix("_imagenet1k")


def stock_model(arch: str, image_size: int, device: torch.device) -> ViT:
    """The stock model in training mode, seeded: every path of a model starts alike."""
    torch.manual_seed(0)
    return build_model(arch, num_classes=NUM_CLASSES, image_size=image_size).to(device).train()


def train_step(
    path: str,
    arch: str,
    image_size: int,
    batch: int,
    device: torch.device,
    *,
    compile_fast: bool,
) -> Callable[[], None]:
    """One training step (forward, backward, optimizer step) of `path` (one of PATHS)."""
    model = stock_model(arch, image_size, device)
    forward: Callable[[torch.Tensor], torch.Tensor] = model
    if path.startswith("fast"):
        set_fused_attention(model, True)
        set_fast_dropout(model, True)
        if compile_fast:
            forward = torch.compile(model)
    elif path.startswith("hf"):
        model = hf_mirror(model, image_size).to(device).train()
        hf = model

        def forward(x: torch.Tensor) -> torch.Tensor:
            return hf(pixel_values=x).logits

    elif path == "compiled_stock":
        forward = torch.compile(model)
    if path == "stock":
        opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    else:
        groups = [{"params": list(model.parameters()), "weight_decay": WEIGHT_DECAY}]
        opt = make_optimizer(groups, "adamw", LR, 0.0, device)
    amp = torch.bfloat16 if PRECISION[path] == "bf16" else None
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)

    def step() -> None:
        with autocast(device, amp):
            loss = F.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def significant(x: float, digits: int = 3) -> float:
    """`x` to `digits` significant figures: a micro model's utilisation is far below 0.001."""
    return float(f"{x:.{digits}g}")


def one_line(error: BaseException, limit: int = 400) -> str:
    """An exception as one table-safe line (inductor's errors run to pages)."""
    text = " ".join(f"{type(error).__name__}: {error}".split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def warm_paths(
    build: Callable[[str], Callable[[], None]], device: torch.device, warmup: int
) -> tuple[dict[str, Callable[[], None]], dict[str, float], dict[str, str]]:
    """Build and warm up every path: (steps, seconds of each first step, errors of peers).

    The first step holds torch.compile's compile. A peer that cannot be built or run here
    (transformers missing, no working compiler) gives its error instead of stopping the run;
    stock and vitlab's own paths raise.
    """
    steps, first, errors = {}, {}, {}
    for path in PATHS:
        if path.startswith("hf") and transformers_version() is None:
            errors[path] = NOT_INSTALLED
            continue
        try:
            step = build(path)
            start = time.perf_counter()
            step()
            sync(device)
            first[path] = time.perf_counter() - start
            for _ in range(warmup - 1):
                step()
        except Exception as e:  # torch.compile and transformers raise many types
            if path == "stock" or path not in PEERS:
                raise
            errors[path] = one_line(e)
            continue
        steps[path] = step
    sync(device)
    return steps, first, errors


def steps_per_round(
    steps: dict[str, Callable[[], None]], device: torch.device, *, minimum: int, seconds: float
) -> int:
    """Steps each path runs in a round: at least `minimum`, and enough for the median path's
    round to last `seconds` (one timed step of each warmed-up path sets the scale)."""
    times = []
    for step in steps.values():
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return max(minimum, math.ceil(seconds / statistics.median(times)))


def train_rates(
    steps: dict[str, Callable[[], None]],
    batch: int,
    device: torch.device,
    *,
    rounds: int,
    steps_per_round: int,
) -> dict[str, float]:
    """Median training images/s of each (warmed-up) path over `rounds` interleaved rounds.

    Interleaving puts every path under the same background load; the median drops a round
    that a neighbour's burst of work slowed down.
    """
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(steps_per_round):
                step()
            sync(device)
            rates[name].append(steps_per_round * batch / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def model_row(
    arch: str,
    image_size: int,
    batch: int,
    device: torch.device,
    peak: dict[str, float],
    *,
    rates: dict[str, float],
    first: dict[str, float],
    errors: dict[str, str],
    compiled_fast: bool,
    products_s: float,
) -> dict:
    """One model's rates, ratios and utilisations (ratios from the unrounded rates; the aim is
    judged on the quoted figures). `products_s`: seconds of the fast path's matrix products
    replayed alone (benchmarks.gemm_ceiling), which bound its utilisation."""
    model = stock_model(arch, image_size, torch.device("cpu"))
    flops = train_flops(model, image_size)
    fast_name = fast_path(rates, device)
    fast = rates[fast_name]
    peers = {name: rates[name] for name in PEERS if name in rates}
    best = max(peers, key=peers.__getitem__)
    util = {name: rate * flops / peak[PRECISION[name]] for name, rate in rates.items()}
    util_aim = UTIL_AIM.get(family(arch))
    over_best = round(fast / peers[best], 2)
    fast_util_top = significant(fast * flops / max(peak.values()))
    ceiling = significant(batch * flops / products_s / max(peak.values()))
    hf = None if transformers_version() is None else parameter_count(hf_mirror(model, image_size))
    compiled = "+compile" if compiled_fast else ""
    return {
        "model": arch,
        "image_size": image_size,
        "batch": batch,
        "train_gflop_per_image": round(flops / 1e9, 3),
        "parameters": {"vitlab": parameter_count(model), "hf": hf},
        "img_s": {name: round(rates[name], 1) if name in rates else None for name in PATHS},
        "errors": errors,
        "compile_s": round(first["compiled_stock"], 1) if "compiled_stock" in first else None,
        "fast_path": f"fused+fastdrop+{PRECISION[fast_name]}{compiled}",
        "fast_img_s": round(fast, 1),
        "fast_over": {name: round(fast / rate, 2) for name, rate in peers.items()},
        "best_peer": best,
        "fast_over_best_peer": over_best,
        "util": {name: significant(u) for name, u in util.items()},
        "fast_util": significant(util[fast_name]),
        "fast_util_top_peak": fast_util_top,
        "fast_products_ms": round(1e3 * products_s, 2),
        "fast_util_ceiling": ceiling,
        "aim": {"fast_over_best_peer": SPEEDUP_AIM, "fast_util_top_peak": util_aim},
        "meets_aim": over_best >= SPEEDUP_AIM and (util_aim is None or fast_util_top >= util_aim),
    }


def fast_path(rates: dict[str, float], device: torch.device) -> str:
    """The fast path quoted: bf16 on a GPU, elsewhere whichever precision measured faster."""
    bf16 = device.type == "cuda" or rates["fast_bf16"] > rates["fast_fp32"]
    return "fast_bf16" if bf16 else "fast_fp32"


def yes(met: bool) -> str:
    return "yes" if met else "no"


def met(row: dict, aim: float | None) -> str:
    """Whether the fast path reaches the utilisation aim, and when not, whether it could."""
    if aim is None:
        return "-"
    if row["fast_util_top_peak"] >= aim:
        return "yes"
    return "no (above the ceiling)" if row["fast_util_ceiling"] < aim else "no"


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


def cell(row: dict, path: str) -> str:
    """A rate, or why the path has none."""
    rate = row["img_s"][path]
    if rate is not None:
        return str(rate)
    return NOT_INSTALLED if row["errors"][path] == NOT_INSTALLED else "failed (below)"


def percent(share: float) -> str:
    return f"{100 * share:.3g}%"


def markdown(result: dict, device: torch.device) -> str:
    """The tables of throughput.md: rates, ratios to the fast path, utilisation of the peak."""
    peaks, rows = result["matmul_peak_tflops"], result["models"]
    lines = [
        f"# Training throughput on {result['device']} ({device.type}, "
        f"{result['threads']} threads, torch {result['torch']}, "
        f"transformers {result['transformers'] or NOT_INSTALLED})",
        "",
        f"Matmul peak measured in this run: fp32 {peaks['fp32']} TFLOP/s, bf16 {peaks['bf16']} "
        f"TFLOP/s. Data path alone: {result['data_path_img_s']} img/s "
        f"({result['data_vs_fastest_training']}x the fastest training). Every path trains the "
        f"same architecture, batch and AdamW (lr {LR}, weight decay {WEIGHT_DECAY}); medians of "
        f"{rows[0]['rounds']} interleaved rounds, each path about {result['round_seconds']} s a "
        "round. "
        + (
            "malloc keeps freed blocks for reuse, as in vitlab's stages, for every path alike."
            if result["malloc_keeps_freed_memory"]
            else "malloc runs with its defaults."
        ),
        "",
        "## Training images/s",
        "",
        "| model | px | batch | GFLOP/img (train) | stock | HF fp32 | HF bf16 | compiled stock "
        "| compile s | vitlab fast | fast path |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        compile_s = "-" if r["compile_s"] is None else r["compile_s"]
        lines.append(
            f"| {r['model']} | {r['image_size']} | {r['batch']} | {r['train_gflop_per_image']} | "
            + " | ".join(cell(r, p) for p in PEERS)
            + f" | {compile_s} | {r['fast_img_s']} | {r['fast_path']} |"
        )
    lines += [
        "",
        f"## vitlab fast over each peer (aim: {SPEEDUP_AIM}x the best peer)",
        "",
        "| model | / stock | / HF fp32 | / HF bf16 | / compiled stock | best peer "
        "| / best peer | aim met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        over = [f"{r['fast_over'][p]}x" if p in r["fast_over"] else "-" for p in PEERS]
        lines.append(
            f"| {r['model']} | " + " | ".join(over) + f" | {LABELS[r['best_peer']]} | "
            f"{r['fast_over_best_peer']}x | {yes(r['fast_over_best_peer'] >= SPEEDUP_AIM)} |"
        )
    lines += [
        "",
        "## Utilisation of the measured peak",
        "",
        "fp32 paths of the fp32 peak, bf16 paths of the bf16 peak; the aim is a share of the top "
        f"peak, the higher of the two ({max(peaks.values())} TFLOP/s here). Ceiling: the fast "
        "step's own matrix products (forward and backward, same shapes and dtypes) replayed "
        "alone, back to back; no change between the products can take the step above it.",
        "",
        "| model | stock | HF fp32 | HF bf16 | compiled stock | vitlab fast "
        "| vitlab fast of top peak | ceiling (products alone) | aim | aim met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        util = [percent(r["util"][p]) if p in r["util"] else "-" for p in PEERS]
        aim = r["aim"]["fast_util_top_peak"]
        lines.append(
            f"| {r['model']} | " + " | ".join(util) + f" | {percent(r['fast_util'])} | "
            f"{percent(r['fast_util_top_peak'])} | {percent(r['fast_util_ceiling'])} | "
            f"{'-' if aim is None else f'{aim:.0%}'} | {met(r, aim)} |"
        )
    failed = [
        (r["model"], p, e) for r in rows for p, e in r["errors"].items() if e != NOT_INSTALLED
    ]
    if failed:
        lines += ["", "## Peers that did not run", ""]
        lines += [f"- {model}, {LABELS.get(p, p)}: {error}" for model, p, error in failed]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default=None)
    p.add_argument("--models", default=None, help="comma-separated architectures")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument(
        "--steps", type=int, default=5, help="at least this many steps per path per round"
    )
    p.add_argument(
        "--round-seconds", type=float, default=0.5, help="about how long a path runs per round"
    )
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the median counts")
    p.add_argument("--warmup", type=int, default=3, help="steps per path before timing (>= 1)")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: torch's, all cores)"
    )
    p.add_argument("--compile", action="store_true", help="also torch.compile the fast path")
    p.add_argument("--out", type=Path, default=Path("reports/bench"))
    args = p.parse_args()
    if args.warmup < 1:
        p.error("--warmup must be at least 1 (the first step holds the compile)")
    if args.threads:  # on a shared machine, fewer threads than cores keeps rates meaningful
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    kept = keep_freed_memory()  # as vitlab's stages run; process-wide, so every path shares it
    preset = PRESETS[args.preset or ("gpu" if device.type == "cuda" else "cpu")]
    models = args.models.split(",") if args.models else preset["models"]
    size, batch = args.image_size or preset["image_size"], args.batch or preset["batch"]

    peak = matmul_peaks(device, 8192 if device.type == "cuda" else 1024)
    rows = []
    for arch in models:

        def build(path: str, arch: str = arch) -> Callable[[], None]:
            return train_step(path, arch, size, batch, device, compile_fast=args.compile)

        steps, first, errors = warm_paths(build, device, args.warmup)
        per_round = steps_per_round(steps, device, minimum=args.steps, seconds=args.round_seconds)
        rates = train_rates(steps, batch, device, rounds=args.rounds, steps_per_round=per_round)
        # the quoted fast path's products, from an uncompiled step (compiling changes the rest)
        step = train_step(fast_path(rates, device), arch, size, batch, device, compile_fast=False)
        products_s = products_seconds(record_products(step), device)
        rows.append(
            model_row(
                arch,
                size,
                batch,
                device,
                peak,
                rates=rates,
                first=first,
                errors=errors,
                compiled_fast=args.compile,
                products_s=products_s,
            )
            | {"steps_per_round": per_round, "rounds": args.rounds}
        )
        print(json.dumps(rows[-1]), flush=True)
    data = data_rate(size, batch, device)
    result = {
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers_version(),
        "malloc_keeps_freed_memory": kept,
        "round_seconds": args.round_seconds,
        "matmul_peak_tflops": {k: round(v / 1e12, 3) for k, v in peak.items()},
        "data_path_img_s": round(data, 1),
        "data_vs_fastest_training": round(data / max(r["fast_img_s"] for r in rows), 2),
        "models": rows,
    }
    write_json(args.out / "throughput.json", result)
    table = markdown(result, device)
    write_text(args.out / "throughput.md", table)
    print(table)


if __name__ == "__main__":
    main()
