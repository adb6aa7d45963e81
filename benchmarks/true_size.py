"""The real study at true size on this machine, and the full study's cost extrapolated from it.

In a fresh clone: the oxford-pet and catr profiles, an Oxford-IIIT Pet archive pair in the
official layout (the 37 real breeds, `--trainval` + `--test` photos a breed) served on
127.0.0.1 and downloaded by the fetch stage, B_16/B_32/L_16 release files (random values, the
released key layout) in a scratch torch hub cache, CATR's release file and a vocab, and
`--photos` photos to caption. Every stage then runs at 384 px, one `dvc repro --single-item`
at a time under GNU time (seconds and peak memory of its process tree). Only the epochs
(`--epochs`), the figures' images (4) and L_16's training batch (`--l16-batch`) differ from the
profile: at the profile's 16, L_16's training does not fit this machine's 24 GB of RAM. The
report says so. The attention maps keep the profile's batch unless `--maps-batch` is given:
render_attention lowers it to what the free memory holds and prints the batch it used.

From each stage's model passes (how many images went through which model, forward or training
step, counted from the stage's own outputs) and the analytic FLOPs of a pass, the report gives
the full study's cost (3,680 trainval + 3,669 test photos, the profile's epochs):
- on this machine, each stage's busy time scaled by its FLOPs (its fixed cost, a process
  loading torch and DVC, taken as select@M's time; data stages scale by photos);
- on a GPU, by the FLOP rates `benchmarks.throughput --preset gpu` measured there
  (`--gpu-throughput` its json); without one, the GPU times say unmeasured;
- each model's training memory at the profile's batch: weights, gradients and optimizer state,
  plus the activations autograd saves for one image in bf16 (counted here).
Writes reports/bench/true_size.{json,md}.

    python -m benchmarks.true_size                  # 43 min on 2 CPU cores; --keep keeps it
    python -m benchmarks.true_size --tiny --out DIR # micro models at 32 px: the smoke test's
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from benchmarks import offline
from benchmarks.dag_profile import stage_order, timed
from benchmarks.throughput import significant
from vitlab.captions.catr import RELEASES
from vitlab.core import config, contract
from vitlab.core.atomic import write_json, write_text
from vitlab.prepared import load_meta
from vitlab.profile import apply
from vitlab.vit.flops import forward_flops
from vitlab.vit.fused_attention import set_fused_attention
from vitlab.vit.models import build_model

FULL = {"trainval": 3680, "test": 3669}  # the official lists' sizes
MAPS_IMAGES = [0, 9, 18, 27]
OPTIMIZER_BYTES = {"sgd": 4, "adamw": 8}  # state per fp32 weight (momentum; both moments)


def write_overlay(path: Path, changes: dict) -> Path:
    path.write_text(yaml.safe_dump(changes, sort_keys=False))
    return path


def prepare_project(root: Path, base: str, md5s: dict, args: argparse.Namespace) -> None:
    """Turn the clone's params into the benchmarked study and put its inputs in place."""
    params = root / "params.yaml"
    apply(params, root / "profiles/oxford-pet.yaml")
    oxford = {
        "images_url": f"{base}/images.tar.gz",
        "images_md5": md5s["images.tar.gz"],
        "annotations_url": f"{base}/annotations.tar.gz",
        "annotations_md5": md5s["annotations.tar.gz"],
    }
    changes: dict = {
        "data": {"oxford_pets": oxford},
        "train": {"epochs": args.epochs},
        "maps": {"images": MAPS_IMAGES},
    }
    if args.tiny:  # micro models and captioner at 32 px, the Oxford source kept
        apply(params, root / "profiles/micro.yaml")
        changes |= {
            "data": {"source": "oxford_pets", "oxford_pets": oxford},
            "captions": {"source": "synthetic"},
        }
    else:
        apply(params, root / "profiles/catr.yaml")
        changes["models"] = {"L_16": {"train": {"batch_size": args.l16_batch}}}
        if args.maps_batch:
            changes["maps"]["batch_size"] = args.maps_batch
        pretrained = root / "inputs/pretrained"
        offline.catr_release(pretrained / RELEASES["v3"].split("/")[1])
        offline.write_vocab(pretrained / "vocab.txt")
        offline.photos(root / "inputs/photos", args.photos)
    apply(params, write_overlay(root.parent / "overlay.yaml", changes))


def saved_bytes_per_image(model: torch.nn.Module, image_size: int, fused: bool) -> int:
    """Bytes autograd saves for one more image in a bf16 training forward (batch 2 minus
    batch 1), on the training's attention path (fused: no score matrices kept)."""
    set_fused_attention(model, fused)
    model.train()

    def saved(batch: int) -> int:
        seen: dict[tuple, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            seen[(t.data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
            return t

        x = torch.randn(batch, 3, image_size, image_size)
        with (
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            torch.autocast("cpu", dtype=torch.bfloat16),
        ):
            model(x).sum()
        return sum(seen.values())

    return saved(2) - saved(1)


def split_sizes(root: Path) -> dict[str, int]:
    meta = load_meta(root / contract.PREPARED)
    return {s: v["count"] for s, v in meta["splits"].items()}


def full_sizes(val_fraction: float) -> dict[str, int]:
    val = round(val_fraction * FULL["trainval"])
    return {"train": FULL["trainval"] - val, "val": val, "test": FULL["test"]}


def passes(
    stage: str,
    root: Path,
    p: config.Params,
    n: dict[str, int],
    epochs: int,
    drop_last: bool = True,
) -> dict[str, int]:
    """{"train": images through a training step, "forward": images through a forward pass}
    of one stage, counted from its outputs in root (`drop_last`: a partial batch is dropped, as
    training does; off for the full study, where it is noise)."""
    kind, _, key = stage.partition("@")
    if kind == "train":
        batch = p.train_for(key).batch_size if drop_last else 1
        return {"train": epochs * (n["train"] // batch * batch), "forward": epochs * n["val"]}
    if kind == "average":
        soups = json.loads((root / contract.soups(key)).read_text())
        return {"train": 0, "forward": len(soups["greedy"]["steps"]) * n["val"]}
    if kind == "evaluate":
        report = json.loads((root / contract.eval_report(key)).read_text())
        distinct = {tuple(sorted(v["epochs"])) for v in report["variants"].values()}
        return {"train": 0, "forward": len(distinct) * (n["val"] + n["test"])}
    if kind == "render_attention":  # the whole split, each variant; grad_rollout: + a backward
        per = 2 if "grad_rollout" in p.maps.methods else 1
        return {"train": 0, "forward": per * len(p.maps.variants) * n[p.maps.split]}
    return {"train": 0, "forward": 0}


def report(
    root: Path, p: config.Params, rows: list[dict], rates: dict, gpu: str, args: argparse.Namespace
) -> dict:
    """Per stage: FLOPs of the run and of the full study, and the full study's times."""
    profile = yaml.safe_load((root / "profiles/oxford-pet.yaml").read_text())
    full_epochs, full_batch = profile["train"]["epochs"], profile["train"]["batch_size"]
    n, size = split_sizes(root), p.prepare.image_size
    n_full = full_sizes(p.data.oxford_pets.val_fraction)
    archs = {key: m.arch for key, m in p.models.items()}
    fwd, memory = {}, {}
    for key, arch in archs.items():  # FLOPs of a forward; training memory at the profile's batch
        model = build_model(arch, num_classes=37, image_size=size)
        fwd[key] = forward_flops(model, size)
        weights = sum(v.numel() for v in model.parameters())
        per_image = saved_bytes_per_image(model, size, p.runtime.fused_attention)
        state = weights * (4 + 4 + OPTIMIZER_BYTES[profile["train"]["optimizer"]])
        memory[key] = {
            "arch": arch,
            "weights": weights,
            "batch": full_batch,
            "saved_mib_per_image": significant(per_image / 2**20),
            "gib": significant((state + full_batch * per_image) / 2**30),
        }
    # a stage's fixed cost (a process importing torch and DVC, no model): select@M's time
    overhead = {
        r["stage"][len("select@") :]: r["seconds"] for r in rows if r["stage"].startswith("select@")
    }
    images = sum(n.values()), sum(n_full.values())
    for r in rows:
        kind, _, key = r["stage"].partition("@")
        ran = passes(r["stage"], root, p, n, args.epochs)
        full = passes(r["stage"], root, p, n_full, full_epochs, drop_last=False)
        flops = {
            k: (3 * v["train"] + v["forward"]) * fwd.get(key, 0)
            for k, v in (("ran", ran), ("full", full))
        }
        if flops["ran"]:
            busy = max(r["seconds"] - overhead.get(key, 0.0), 1e-3)
            cpu = overhead.get(key, 0.0) + busy * flops["full"] / flops["ran"]
        elif kind in ("fetch", "prepare"):
            cpu = r["seconds"] * images[1] / images[0]
        else:
            cpu = r["seconds"]
        rate = rates.get(archs.get(key, ""))
        r.update(
            passes=ran,
            gflop_per_image=significant(fwd.get(key, 0) / 1e9),
            tflop=significant(flops["ran"] / 1e12),
            full_passes=full,
            full_tflop=significant(flops["full"] / 1e12),
            full_cpu_hours=significant(cpu / 3600),
            full_gpu_hours=significant(flops["full"] / rate / 3600) if rate else None,
        )
    return {
        "settings": {
            "breeds": 37,
            "trainval_per_breed": args.trainval,
            "test_per_breed": args.test,
            "splits": n,
            "image_size": size,
            "epochs": args.epochs,
            "batches": {k: p.train_for(k).batch_size for k in archs},
            "profile_batch": full_batch,
            "maps_batch": p.maps.batch_size,
            "profile_maps_batch": profile["maps"]["batch_size"],
            "maps_images": len(MAPS_IMAGES),
            "photos_captioned": 0 if args.tiny else args.photos,
            "tiny": args.tiny,
        },
        "full_study": {
            "splits": n_full,
            "epochs": full_epochs,
            "cpu_days": significant(sum(r["full_cpu_hours"] for r in rows) / 24),
            "gpu": gpu,
            "gpu_hours": significant(sum(r["full_gpu_hours"] or 0 for r in rows))
            if rates
            else None,
        },
        "total_seconds": round(sum(r["seconds"] for r in rows), 1),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in rows),
        "cpus": os.cpu_count(),
        "training_memory_gib": memory,
        "stages": rows,
    }


def num(x: float) -> str:
    """3 significant figures without an exponent: 110000, 382, 0.0331."""
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def markdown(result: dict) -> str:
    s, f = result["settings"], result["full_study"]
    gpu, rates_given = f["gpu"] or "GPU", f["gpu_hours"] is not None
    lines = [
        f"# The real study at true size on {result['cpus']} CPUs",
        "",
        f"{s['breeds']} breeds x ({s['trainval_per_breed']} trainval + {s['test_per_breed']} "
        f"test) photos served on 127.0.0.1 (splits {s['splits']}), {s['image_size']} px, "
        f"{s['epochs']} epochs, training batches {s['batches']} (the profile's: "
        f"{s['profile_batch']}; lowered only where 24 GB of RAM cannot hold it), maps asked "
        f"for {s['maps_batch']} images at a time (the profile's: {s['profile_maps_batch']}; "
        "render_attention lowers it to what free memory holds), figures of "
        f"{s['maps_images']} images, {s['photos_captioned']} photos captioned. Every stage "
        f"completed: {result['total_seconds']} s, peak {result['peak_rss_mib']} MiB.",
        "",
        f"Full study ({f['splits']}, {f['epochs']} epochs): {f['cpu_days']} days on this "
        "machine; on "
        + (
            f"{gpu}: {f['gpu_hours']} GPU-hours (training FLOP rates measured there)."
            if f["gpu_hours"] is not None
            else "an H100/H200: unmeasured (no GPU here; run `python -m benchmarks.throughput "
            "--preset gpu` on one and pass its json as --gpu-throughput)."
        ),
        "",
        f"| stage | seconds | peak RSS (MiB) | GFLOP a forward | passes (train / forward) | TFLOP "
        f"| full study: TFLOP | this CPU (h) | {gpu} (h) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["stages"]:
        model = bool(r["tflop"])  # a stage that runs a model
        ps = f"{r['passes']['train']} / {r['passes']['forward']}" if model else "-"
        gpu_h = "-" if not model else num(r["full_gpu_hours"]) if rates_given else "unmeasured"
        lines.append(
            f"| {r['stage']} | {r['seconds']} | {r['peak_rss_mib']} | "
            f"{num(r['gflop_per_image']) if model else '-'} | {ps} | "
            f"{num(r['tflop']) if model else '-'} | {num(r['full_tflop']) if model else '-'} | "
            f"{num(r['full_cpu_hours'])} | {gpu_h} |"
        )
    lines += [
        "",
        f"Training memory at the profile's batch of {s['profile_batch']}: fp32 weights, "
        "gradients and optimizer state, plus the activations autograd saves in bf16, counted "
        "on this CPU's training path (explicit attention scores wherever attention dropout is "
        "on, which a GPU's flash attention does not keep, so an upper bound there). An 80 GB "
        "GPU must hold it:",
        "",
        "| model | arch | weights | saved MiB an image | GiB |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {m['arch']} | {m['weights']:,} | {num(m['saved_mib_per_image'])} | "
        f"{num(m['gib'])} |"
        for k, m in result["training_memory_gib"].items()
    ]
    return "\n".join(lines) + "\n"


def gpu_rates(path: Path | None) -> tuple[dict[str, float], str | None]:
    """Training FLOP/s of vitlab's fast path per architecture, measured by a GPU throughput run."""
    if path is None:
        return {}, None
    result = json.loads(path.read_text())
    if result.get("device") == "cpu":
        sys.exit(
            f"--gpu-throughput {path}: measured on a CPU; pass the json of a `--preset gpu` "
            "run on a GPU"
        )
    rows = result["models"]
    return {r["model"]: r["fast_img_s"] * r["train_gflop_per_image"] * 1e9 for r in rows}, result[
        "device"
    ]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trainval", type=int, default=2, help="trainval photos a breed")
    ap.add_argument("--test", type=int, default=1, help="test photos a breed")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--l16-batch", type=int, default=4)
    ap.add_argument("--maps-batch", type=int, default=None, help="(default: the profile's)")
    ap.add_argument("--photos", type=int, default=2, help="photos CATR captions")
    ap.add_argument("--gpu-throughput", type=Path, default=None)
    ap.add_argument("--tiny", action="store_true", help="micro models at 32 px (smoke test)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch clone")
    ap.add_argument("--out", type=Path, default=Path("reports/bench"))
    args = ap.parse_args()
    rates, gpu = gpu_rates(args.gpu_throughput)
    scratch = Path(tempfile.mkdtemp(prefix="vitlab-true-size-"))
    root, torch_home = scratch / "repo", scratch / "torch"
    subprocess.run(["git", "clone", "-q", str(Path.cwd()), str(root)], check=True)
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "TORCH_HOME": str(torch_home),
        "no_proxy": "127.0.0.1,localhost",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    try:
        md5s = offline.oxford_archives(scratch / "served", args.trainval, args.test)
        with offline.serve(scratch / "served") as base:
            prepare_project(root, base, md5s, args)
            p = config.load(root / "params.yaml")
            for m in p.models.values():
                if m.pretrained:
                    offline.released_vit(m.arch, torch_home)
            rows = []
            for stage in stage_order(root):
                cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
                seconds, rss, _ = timed(cmd, root, env)
                rows.append({"stage": stage, "seconds": round(seconds, 1), "peak_rss_mib": rss})
                print(f"{stage:26s} {seconds:8.1f} s  {rss:6d} MiB", flush=True)
        result = report(root, p, rows, rates, gpu, args)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    write_json(args.out / "true_size.json", result)
    write_text(args.out / "true_size.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
