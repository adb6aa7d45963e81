"""Stage `average@<M>`: the uniform soup of the selected epochs and the greedy soup.

Writes models/<M>/uniform_soup.pt, greedy_soup.pt (state_dicts like an epoch checkpoint) and
soups.json (ingredients, and the greedy soup's val accuracy at each step).
"""

from __future__ import annotations

import json
from pathlib import Path

from stages._common import cli, load_params, model_argument
from stages._model import PREPARED, build, runtime
from vitlab.atomic import save_torch, write_json
from vitlab.data import load_meta, load_split
from vitlab.errors import VitlabError
from vitlab.evaluate import evaluate
from vitlab.models import check_compatible, read_state_dict
from vitlab.soup import greedy_soup, uniform_soup


def read_selection(model: str) -> dict:
    path = Path("models") / model / "selection.json"
    if not path.is_file():
        raise VitlabError(f"{path} is missing; run `dvc repro select@{model}`")
    return json.loads(path.read_text())


@cli
def main() -> None:
    key = model_argument(__doc__)
    params = load_params()
    rt = runtime(params)
    selection = read_selection(key)
    model = build(params, key, pretrained=False).to(rt.device)
    reference = model.state_dict()
    names = [Path(s["path"]).stem for s in selection["selected"]]
    states = [read_state_dict(s["path"]) for s in selection["selected"]]
    val, num_classes = load_split(PREPARED, "val"), len(load_meta(PREPARED)["classes"])

    def val_accuracy(state: dict) -> float:
        model.load_state_dict(state)
        return evaluate(
            model, val, num_classes, batch_size=rt.eval_batch_size, device=rt.device, amp=rt.amp
        )["accuracy"]

    for sel, state in zip(selection["selected"], states, strict=True):
        check_compatible(state, reference, sel["path"])
    uniform = uniform_soup(states, names)
    candidates = [
        (name, state, s["val_acc"])
        for name, state, s in zip(names, states, selection["selected"], strict=True)
    ]
    greedy, ingredients, log = greedy_soup(candidates, val_accuracy)
    out = Path("models") / key
    save_torch(out / "uniform_soup.pt", uniform)
    save_torch(out / "greedy_soup.pt", greedy)
    write_json(
        out / "soups.json",
        {
            "uniform": {"ingredients": names},
            "greedy": {"ingredients": ingredients, "held_out": "val", "rule": ">=", "steps": log},
        },
    )
    print(f"average@{key}: uniform of {names}, greedy of {ingredients}")


if __name__ == "__main__":
    main()
