"""Stage `evaluate@<M>`: every kept epoch, the best epoch and both soups, on val and test.

Writes reports/eval/<M>.json: accuracy, loss, per-class accuracy and confusion matrix for each
variant and split, scored by the study's one scoring function. Weights that are the same tensors
(the best epoch and its epoch, a greedy soup of one ingredient) are scored once. Selecting
epochs on val makes the val numbers optimistic; test is held out.
"""

from __future__ import annotations

import hashlib

import torch

from stages._common import cli, load_params, model_argument
from vitlab.core import contract
from vitlab.core.atomic import write_json
from vitlab.prepared import load_meta, load_split
from vitlab.vit import runtime
from vitlab.vit.models import build_for, check_compatible, describe, read_state_dict
from vitlab.vit.scoring import evaluate


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """A hash of a state_dict's tensors: equal weights, equal digest, whatever the file."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@cli
def main() -> None:
    params = load_params()
    key = model_argument(__doc__, params)
    rt = runtime.resolve(params.runtime)
    meta = load_meta(contract.PREPARED)
    num_classes = len(meta["classes"])
    splits = {s: load_split(contract.PREPARED, s) for s in contract.EVAL_SPLITS}
    model = build_for(
        params.models[key], num_classes=num_classes, image_size=meta["image_size"]
    ).to(rt.device)
    arch = describe(params.models[key].arch, meta["image_size"])
    report = {"model": key, "architecture": arch, "classes": meta["classes"], "variants": {}}
    scored: dict[str, dict] = {}
    for name, v in contract.variants(key).items():
        state = read_state_dict(v.checkpoint)
        check_compatible(state, model.state_dict(), str(v.checkpoint))
        digest = weights_digest(state)
        if digest not in scored:
            model.load_state_dict(state)
            scored[digest] = {s: evaluate(model, d, num_classes, rt) for s, d in splits.items()}
        entry = {"kind": v.kind, "epochs": list(v.epochs), "checkpoint": str(v.checkpoint)}
        report["variants"][name] = {**entry, **scored[digest]}
        print(
            f"evaluate@{key}: {name:13s} val {scored[digest]['val']['accuracy']:.4f}  "
            f"test {scored[digest]['test']['accuracy']:.4f}"
        )
    write_json(contract.eval_report(key), report)


if __name__ == "__main__":
    main()
