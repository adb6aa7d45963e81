"""Soups: the uniform soup is the exact per-key mean; the greedy soup follows its rule."""

from __future__ import annotations

import pytest
import torch

from vitlab.core.errors import VitlabError
from vitlab.soup import greedy_soup, uniform_soup
from vitlab.vit.models import build_model


def _states(n: int) -> list[dict[str, torch.Tensor]]:
    states = []
    for seed in range(n):
        torch.manual_seed(seed)
        states.append(build_model("vitlab_micro_16", num_classes=5, image_size=32).state_dict())
    return states


def test_uniform_soup_is_the_per_key_mean_with_dtypes_kept():
    states = _states(3)
    soup = uniform_soup(states)
    assert soup.keys() == states[0].keys()
    for key in soup:
        expected = (states[0][key] + states[1][key] + states[2][key]) / 3
        assert soup[key].dtype == states[0][key].dtype
        torch.testing.assert_close(soup[key], expected, rtol=0, atol=1e-7)
    # and it is not simply one of its ingredients
    assert not torch.equal(soup["patch_embedding.weight"], states[0]["patch_embedding.weight"])


def test_uniform_soup_of_bf16_is_the_exact_mean_rounded_once():
    gen = torch.Generator().manual_seed(0)
    states = [{"w": torch.randn(100_000, generator=gen).to(torch.bfloat16)} for _ in range(7)]
    exact = (sum(s["w"].double() for s in states) / 7).to(torch.bfloat16)
    in_bf16 = states[0]["w"].clone()
    for s in states[1:]:
        in_bf16 += s["w"]
    in_bf16 /= 7
    assert not torch.equal(in_bf16, exact)  # the data tells the two accumulations apart
    soup = uniform_soup(states)
    assert soup["w"].dtype == torch.bfloat16
    assert torch.equal(soup["w"], exact)


def test_uniform_soup_refuses_mismatched_checkpoints():
    a = _states(1)[0]
    b = build_model("vitlab_micro_32", num_classes=5, image_size=32).state_dict()
    with pytest.raises(VitlabError, match="shape"):
        uniform_soup([a, b], ["epoch_001", "epoch_002"])
    c = dict(a)
    c.pop("fc.bias")
    with pytest.raises(VitlabError, match="epoch_009: keys differ"):
        uniform_soup([a, c], ["epoch_001", "epoch_009"])


def test_greedy_soup_adds_a_candidate_only_when_held_out_accuracy_does_not_drop():
    # Three "checkpoints" with a scalar weight; the held-out score is a known function of it.
    cands = [
        ("e1", {"w": torch.tensor([1.0])}, 0.80),
        ("e2", {"w": torch.tensor([3.0])}, 0.90),
        ("e3", {"w": torch.tensor([9.0])}, 0.85),
    ]
    scores = {3.0: 0.88, 2.0: 0.91, 6.0: 0.70}  # soup weight -> held-out accuracy
    soup, ingredients, log = greedy_soup(cands, lambda s: scores[round(s["w"].item(), 4)])
    # ranked e2 (0.90), e3 (0.85), e1 (0.80): e2+e3 = 6.0 -> 0.70 rejected; e2+e1 = 2.0 -> 0.91 kept
    assert [s["candidate"] for s in log] == ["e2", "e3", "e1"]
    assert [s["kept"] for s in log] == [True, False, True]
    assert ingredients == ["e2", "e1"]
    # every score comes from the scoring function, the first step's too (0.88, not the 0.90
    # the candidate list carried)
    assert [s["score"] for s in log] == [0.88, 0.70, 0.91]
    torch.testing.assert_close(soup["w"], torch.tensor([2.0]))


def test_greedy_soup_keeps_a_tie():
    cands = [("a", {"w": torch.tensor([1.0])}, 0.9), ("b", {"w": torch.tensor([2.0])}, 0.9)]
    _, ingredients, _ = greedy_soup(cands, lambda s: 0.9)
    assert ingredients == ["a", "b"]
