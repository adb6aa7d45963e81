"""Stage `evaluate@<M>`: every kept epoch, the best epoch and both soups, on val and test.

Writes reports/eval/<M>.json: accuracy, loss, per-class accuracy and confusion matrix for each
variant and split. Selecting epochs on val makes the val numbers optimistic; test is held out.
"""

from __future__ import annotations

import json
from pathlib import Path

from stages._common import cli, load_params, model_argument
from stages._model import PREPARED, build, runtime
from vitlab.atomic import write_json
from vitlab.data import load_meta, load_split
from vitlab.errors import VitlabError
from vitlab.evaluate import evaluate
from vitlab.models import load_checkpoint


def variants(model: str) -> dict[str, tuple[str, list[int], Path]]:
    """variant name -> (kind, epochs, checkpoint) for everything this stage evaluates."""
    out = Path("models") / model
    history_path, selection_path = out / "history.json", out / "selection.json"
    for p in (history_path, selection_path):
        if not p.is_file():
            raise VitlabError(f"{p} is missing; run `dvc repro select@{model}`")
    kept = json.loads(history_path.read_text())["kept"]
    selected = [s["epoch"] for s in json.loads(selection_path.read_text())["selected"]]
    greedy = json.loads((out / "soups.json").read_text())["greedy"]["ingredients"]
    found = {e: out / "epochs" / f"epoch_{e:03d}.pt" for e in kept}
    table = {f"epoch_{e:03d}": ("epoch", [e], p) for e, p in found.items()}
    table["best_epoch"] = ("best_epoch", [selected[0]], found[selected[0]])
    table["uniform_soup"] = ("uniform_soup", sorted(selected), out / "uniform_soup.pt")
    greedy_epochs = sorted(int(name.split("_")[1]) for name in greedy)
    table["greedy_soup"] = ("greedy_soup", greedy_epochs, out / "greedy_soup.pt")
    return table


@cli
def main() -> None:
    key = model_argument(__doc__)
    params = load_params()
    rt = runtime(params)
    meta = load_meta(PREPARED)
    num_classes = len(meta["classes"])
    splits = {s: load_split(PREPARED, s) for s in ("val", "test")}
    model = build(params, key, pretrained=False).to(rt.device)
    batch = params["evaluate"]["batch_size"]
    report = {"model": key, "classes": meta["classes"], "variants": {}}
    for name, (kind, epochs, path) in variants(key).items():
        load_checkpoint(model, path)
        entry = {"kind": kind, "epochs": epochs, "checkpoint": str(path)}
        for split, data in splits.items():
            entry[split] = evaluate(
                model, data, num_classes, batch_size=batch, device=rt.device, amp=rt.amp
            )
        report["variants"][name] = entry
        print(
            f"evaluate@{key}: {name:13s} val {entry['val']['accuracy']:.4f}  "
            f"test {entry['test']['accuracy']:.4f}"
        )
    write_json(Path("reports/eval") / f"{key}.json", report)


if __name__ == "__main__":
    main()
