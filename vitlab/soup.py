"""Weight soups: the uniform mean of selected checkpoints, and the greedy soup.

uniform: (w1 + ... + wk) / k per key, accumulated in float64 and cast back to each key's
dtype (as timm's avg_checkpoints), so the result is the exact mean at the checkpoint's precision.
greedy (Wortsman et al. 2022, recipe 1): sort candidates by held-out accuracy, start from the
best, and add each next one only if the soup's held-out accuracy does not drop (>=, as in the
paper's pseudo-code).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from vitlab.vit.models import check_compatible

StateDict = dict[str, torch.Tensor]


def uniform_soup(states: Sequence[StateDict], names: Sequence[str] | None = None) -> StateDict:
    """The per-key mean of `states`; all must share keys and shapes (checked, named)."""
    if not states:
        raise ValueError("uniform_soup needs at least one state_dict")
    names = list(names) if names else [f"checkpoint {i}" for i in range(len(states))]
    for name, state in zip(names[1:], states[1:], strict=True):
        check_compatible(state, states[0], name)
    soup = {}
    for key, ref in states[0].items():
        if not ref.is_floating_point():  # integer buffers (none in ViT): take the first
            soup[key] = ref.clone()
            continue
        total = torch.zeros(ref.shape, dtype=torch.float64)
        for state in states:
            total += state[key].to(torch.float64)
        soup[key] = (total / len(states)).to(ref.dtype)
    return soup


def greedy_soup(
    candidates: Sequence[tuple[str, StateDict, float]],
    score: Callable[[StateDict], float],
) -> tuple[StateDict, list[str], list[dict]]:
    """Greedy soup over (name, state, held-out accuracy) candidates.

    The candidates' accuracies only order them; every score the rule compares comes from
    `score`. Returns the soup, the names of its ingredients, and a log of every step
    (candidate, the soup's score with it, whether it was kept).
    """
    ranked = sorted(candidates, key=lambda c: -c[2])
    first_name, first_state, _ = ranked[0]
    ingredients, states = [first_name], [first_state]
    best = score(uniform_soup([first_state]))  # every step through `score`, the first included
    log = [{"candidate": first_name, "score": best, "kept": True}]
    for name, state, _ in ranked[1:]:
        trial = score(uniform_soup([*states, state]))
        kept = trial >= best
        log.append({"candidate": name, "score": trial, "kept": kept})
        if kept:
            ingredients.append(name)
            states.append(state)
            best = trial
    return uniform_soup(states, ingredients), ingredients, log
