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

import torch

from stages._common import cli, load_params, model_argument
from vitlab.core import config, contract
from vitlab.prepared import load_meta, load_split
from vitlab.training.loop import fit
from vitlab.vit import runtime
from vitlab.vit.distributed import finish, init, launched_by_torchrun
from vitlab.vit.models import build_for


def relaunch_with_torchrun(r: config.Runtime, model: str) -> int | None:
    """Rerun this stage under torchrun when runtime.nproc_per_node > 1 (one node).

    For several nodes, start `torchrun --nnodes ... -m stages.train <M>` on each node yourself:
    a process torchrun started is never relaunched.
    """
    if r.nproc_per_node <= 1 or launched_by_torchrun():
        return None
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={r.nproc_per_node}",
           *shlex.split(r.torchrun_args), "-m", "stages.train", model]  # fmt: skip
    return subprocess.call(cmd)


@cli
def main() -> None:
    params = load_params()
    key = model_argument(__doc__, params)
    cfg, rt = params.train_for(key), runtime.resolve(params.runtime)
    status = relaunch_with_torchrun(params.runtime, key)
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
    meta = load_meta(contract.PREPARED)
    torch.manual_seed(cfg.seed)
    entry = params.models[key]
    model = build_for(
        entry, num_classes=len(meta["classes"]), image_size=meta["image_size"], released=True
    )
    spec = {
        "model": entry.model_dump(exclude={"train"}),
        "train": cfg.model_dump(),
        "data": meta["fingerprint"],
        "numerics": [str(rt.amp), rt.fused_attention, rt.fast_dropout, rt.eval_batch_size],
    }
    fingerprint = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
    history = fit(
        model,
        load_split(contract.PREPARED, "train"),
        load_split(contract.PREPARED, "val"),
        cfg,
        rt,
        name=key,
        out_dir=contract.model_dir(key),
        live_dir=contract.train_curves(key),
        fingerprint=fingerprint,
        num_classes=len(meta["classes"]),
        ctx=ctx,
    )
    finish(ctx)
    if ctx.main:
        best = max(r["val_acc"] for r in history)
        print(f"train@{key}: {len(history)} epochs, best val_acc {best:.4f}")


if __name__ == "__main__":
    main()
