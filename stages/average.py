"""Stage `average@<M>`: the uniform soup of the selected epochs and the greedy soup.

Writes models/<M>/uniform_soup.pt, greedy_soup.pt (state_dicts like an epoch checkpoint) and
soups.json (ingredients, and the greedy soup's val accuracy at each step, its first included,
all scored by the study's one scoring function).
"""

from __future__ import annotations

from stages._common import cli, load_params, model_argument
from vitlab.core import contract
from vitlab.core.atomic import save_torch, write_json
from vitlab.prepared import load_meta, load_split
from vitlab.soup import greedy_soup, uniform_soup
from vitlab.vit import runtime
from vitlab.vit.models import build_for, check_compatible, read_state_dict
from vitlab.vit.scoring import evaluate


@cli
def main() -> None:
    params = load_params()
    key = model_argument(__doc__, params)
    rt = runtime.resolve(params.runtime)
    selected = contract.read_json(contract.selection(key), f"select@{key}")["selected"]
    meta = load_meta(contract.PREPARED)
    num_classes = len(meta["classes"])
    model = build_for(
        params.models[key], num_classes=num_classes, image_size=meta["image_size"]
    ).to(rt.device)
    reference = model.state_dict()
    names = [contract.epoch_name(s["epoch"]) for s in selected]
    states = [read_state_dict(s["path"]) for s in selected]
    for sel, state in zip(selected, states, strict=True):
        check_compatible(state, reference, sel["path"])
    val = load_split(contract.PREPARED, "val")

    def val_accuracy(state: dict) -> float:
        model.load_state_dict(state)
        return evaluate(model, val, num_classes, rt)["accuracy"]

    uniform = uniform_soup(states, names)
    candidates = [(n, st, s["val_acc"]) for n, st, s in zip(names, states, selected, strict=True)]
    greedy, ingredients, log = greedy_soup(candidates, val_accuracy)
    save_torch(contract.soup_checkpoint(key, contract.UNIFORM_SOUP), uniform)
    save_torch(contract.soup_checkpoint(key, contract.GREEDY_SOUP), greedy)
    write_json(
        contract.soups(key),
        {
            "uniform": {"ingredients": names},
            "greedy": {"ingredients": ingredients, "held_out": "val", "rule": ">=", "steps": log},
        },
    )
    print(f"average@{key}: uniform of {names}, greedy of {ingredients}")


if __name__ == "__main__":
    main()
