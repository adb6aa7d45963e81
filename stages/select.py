"""Stage `select@<M>`: choose the top-k epochs by val accuracy under the documented tie rule."""

from __future__ import annotations

from stages._common import cli, load_params, model_argument
from vitlab.core import contract
from vitlab.core.atomic import write_json
from vitlab.core.errors import VitlabError
from vitlab.selection import TIE_RULE, top_k


@cli
def main() -> None:
    params = load_params()
    key = model_argument(__doc__, params)
    k = params.select.k
    history = contract.read_json(contract.history(key), f"train@{key}")
    kept = [r for r in history["epochs"] if r["epoch"] in history["kept"]]
    if k > len(kept):
        raise VitlabError(
            f"select.k = {k} but train@{key} kept {len(kept)} epoch(s); set select.k "
            f"to 1..{len(kept)} or raise train.keep_top_k"
        )
    chosen = top_k(kept, k)
    for r in chosen:
        path = contract.epoch_checkpoint(key, r["epoch"])
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
                "path": str(contract.epoch_checkpoint(key, r["epoch"])),
            }
            for r in chosen
        ],
    }
    write_json(contract.selection(key), selection)
    print(f"select@{key}: epochs {[r['epoch'] for r in chosen]}")


if __name__ == "__main__":
    main()
