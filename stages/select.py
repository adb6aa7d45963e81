"""Stage `select@<M>`: choose the top-k epochs by val accuracy under the documented tie rule."""

from __future__ import annotations

import json
from pathlib import Path

from stages._common import cli, load_params, model_argument, section
from vitlab.atomic import write_json
from vitlab.errors import VitlabError
from vitlab.selection import TIE_RULE, top_k


@cli
def main() -> None:
    key = model_argument(__doc__)
    k = section(load_params(), "select")["k"]
    out = Path("models") / key
    history_path = out / "history.json"
    if not history_path.is_file():
        raise VitlabError(f"{history_path} is missing; run `dvc repro train@{key}`")
    history = json.loads(history_path.read_text())
    kept = [r for r in history["epochs"] if r["epoch"] in history["kept"]]
    if not isinstance(k, int) or k < 1 or k > len(kept):
        raise VitlabError(
            f"select.k = {k!r} but train@{key} kept {len(kept)} epoch(s); set select.k "
            f"to 1..{len(kept)} or raise train.keep_top_k"
        )
    chosen = top_k(kept, k)
    for r in chosen:
        path = out / "epochs" / f"epoch_{r['epoch']:03d}.pt"
        if not path.is_file():
            raise VitlabError(f"{path} is missing; rerun `dvc repro train@{key}`")
    selection = {
        "model": key,
        "metric": "val_acc",
        "k": k,
        "tie_rule": TIE_RULE,
        "selected": [
            {
                "epoch": r["epoch"],
                "val_acc": r["val_acc"],
                "val_loss": r["val_loss"],
                "path": str(out / "epochs" / f"epoch_{r['epoch']:03d}.pt"),
            }
            for r in chosen
        ],
    }
    write_json(out / "selection.json", selection)
    print(f"select@{key}: epochs {[r['epoch'] for r in chosen]}")


if __name__ == "__main__":
    main()
