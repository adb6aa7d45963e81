"""Stage `train@<M>`: train one model of the `models` mapping on the prepared data.

Outputs (persisted across reruns so a killed run resumes): models/<M>/epochs/, last.pt,
history.json, and the dvclive curves in reports/train/<M>/.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from stages._common import cli, load_params, model_argument, model_params, section
from stages._model import PREPARED, build, runtime
from vitlab.data import load_meta, load_split
from vitlab.distributed import init, launched_by_torchrun
from vitlab.errors import VitlabError
from vitlab.train import TrainConfig, fit


def train_config(params: dict, model: str) -> TrainConfig:
    """train.* with the model's own `train:` overrides on top."""
    merged = {**section(params, "train"), **model_params(params, model).get("train", {})}
    known = TrainConfig.__dataclass_fields__
    unknown = sorted(set(merged) - set(known))
    if unknown:
        raise VitlabError(f"train: unknown parameter(s) {unknown}; known: {sorted(known)}")
    return TrainConfig(**merged)


def relaunch_with_torchrun(params: dict, model: str) -> int | None:
    """Rerun this stage under torchrun when runtime.nproc_per_node > 1 (one node).

    For several nodes, start `torchrun --nnodes ... -m stages.train <M>` on each node yourself:
    a process torchrun started is never relaunched.
    """
    r = section(params, "runtime")
    nproc = r.get("nproc_per_node", 1)
    if nproc <= 1 or launched_by_torchrun():
        return None
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        *shlex.split(r.get("torchrun_args", "")),
        "-m",
        "stages.train",
        model,
    ]
    return subprocess.call(cmd)


@cli
def main() -> None:
    key = model_argument(__doc__)
    params = load_params()
    cfg, rt = train_config(params, key), runtime(params)
    status = relaunch_with_torchrun(params, key)
    if status is not None:
        sys.exit(status)
    ctx = init(rt.device)
    if ctx.main:
        precision = "bf16 autocast" if rt.amp == torch.bfloat16 else "fp32"
        print(
            f"train@{key}: {rt.device}, {precision}, fused attention "
            f"{rt.fused_attention}, fast dropout {rt.fast_dropout}",
            flush=True,
        )
    meta = load_meta(PREPARED)
    torch.manual_seed(cfg.seed)
    model = build(params, key)
    spec = {
        "model": model_params(params, key),
        "train": cfg.__dict__,
        "data": meta["fingerprint"],
        "numerics": [str(rt.amp), rt.fused_attention, rt.fast_dropout],  # resume never mixes
    }
    fingerprint = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
    history = fit(
        model,
        load_split(PREPARED, "train"),
        load_split(PREPARED, "val"),
        cfg,
        rt,
        out_dir=Path("models") / key,
        live_dir=Path("reports/train") / key,
        fingerprint=fingerprint,
        num_classes=len(meta["classes"]),
        ctx=ctx,
    )
    if ctx.main:
        best = max(r["val_acc"] for r in history)
        print(f"train@{key}: {len(history)} epochs, best val_acc {best:.4f}")


if __name__ == "__main__":
    main()
