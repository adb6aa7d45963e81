"""Caption metrics against reference computations, and grounding on hand-made maps."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import sacrebleu

from vitlab.captions.metrics import (
    Grounding,
    bleu,
    caption_scores,
    cider_d,
    coverage,
    exact_match,
    tokenize,
    word_grounding,
)
from vitlab.core.errors import VitlabError

# Two references per image; every n-gram order has matches so unsmoothed BLEU is non-zero.
REFS = [
    ["a small red striped blob left of a large blue plain blob", "a red blob left of a blue blob"],
    ["a large green spotted blob", "a big green blob with spots"],
    [
        "a small yellow checked blob above a small red plain blob",
        "two small blobs one above the other",
    ],
    ["the cat sat on the mat", "there is a cat on the mat"],
]
HYPS = [
    "a small red striped blob left of a large blue spotted blob",
    "a large green blob",
    "a small yellow checked blob above a red plain blob",
    "the cat is on the mat",
]


def toks(s: str) -> list[str]:
    return s.split()


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A Red, striped blob. It's LEFT-of!") == [
        "a",
        "red",
        "striped",
        "blob",
        "it's",
        "left",
        "of",
    ]


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_bleu_matches_sacrebleu_without_tokenisation_or_smoothing(n):
    ours = bleu([[toks(r) for r in rs] for rs in REFS], [toks(h) for h in HYPS])[n - 1]
    streams = [[rs[k] for rs in REFS] for k in range(2)]
    ref = sacrebleu.metrics.BLEU(tokenize="none", smooth_method="none", max_ngram_order=n)
    expected = ref.corpus_score(HYPS, streams).score / 100
    assert 0.3 < expected < 1.0
    assert ours == pytest.approx(expected, abs=1e-6)


def test_bleu_brevity_penalty_matches_sacrebleu():
    hyps = ["a red blob", "the cat"]
    refs = [["a small red striped blob"], ["the cat sat on the mat"]]
    expected = sacrebleu.metrics.BLEU(
        tokenize="none", smooth_method="none", max_ngram_order=2
    ).corpus_score(hyps, [[r[0] for r in refs]])
    ours = bleu([[toks(r) for r in rs] for rs in refs], [toks(h) for h in hyps])[1]
    assert expected.bp < 0.6
    assert ours == pytest.approx(expected.score / 100, abs=1e-6)


def test_cider_d_hand_computed_tiny_corpus():
    # 2 images, idf = log(2 / df). "a" is in both references: weight 0. Image 0: unigrams
    # {red, dog} vs {red, cat} -> cos 0.5; bigrams {a red, red dog} vs {a red, red cat} -> 0.5;
    # trigrams differ -> 0; no 4-grams -> 0. Mean 0.25, x10 = 2.5. Image 1 matches its reference
    # exactly: orders 1-3 give 1, the empty 4-gram order 0: 7.5. Corpus mean 5.0.
    refs = [[toks("a red cat")], [toks("a blue dog")]]
    hyps = [toks("a red dog"), toks("a blue dog")]
    assert cider_d(refs, hyps) == pytest.approx(5.0, abs=1e-9)


def _cider_d_reference(refs: list[list[str]], hyps: list[str], sigma: float = 6.0) -> float:
    """CIDEr-D from Vedantam et al. 2015 / the COCO server, written independently."""

    def grams(s: str, n: int) -> Counter:
        w = s.split()
        return Counter(tuple(w[i : i + n]) for i in range(len(w) - n + 1))

    images = len(refs)
    total = 0.0
    for rs, h in zip(refs, hyps, strict=True):
        per_n = []
        for n in range(1, 5):
            df = Counter(g for r_set in refs for g in set().union(*(grams(r, n) for r in r_set)))

            def vec(s: str, n=n, df=df) -> dict:
                return {
                    g: c * (math.log(images) - math.log(max(1.0, df[g])))
                    for g, c in grams(s, n).items()
                }

            vh = vec(h)
            score = 0.0
            for r in rs:
                vr = vec(r)
                dot = sum(min(v, vr.get(g, 0.0)) * vr.get(g, 0.0) for g, v in vh.items())
                nh = math.sqrt(sum(v * v for v in vh.values()))
                nr = math.sqrt(sum(v * v for v in vr.values()))
                cos = dot / (nh * nr) if nh and nr else 0.0
                delta = len(h.split()) - len(r.split())
                score += cos * math.exp(-(delta**2) / (2 * sigma**2))
            per_n.append(score / len(rs))
        total += 10.0 * sum(per_n) / 4
    return total / images


def test_cider_d_matches_an_independent_implementation():
    ours = cider_d([[toks(r) for r in rs] for rs in REFS], [toks(h) for h in HYPS])
    assert ours == pytest.approx(_cider_d_reference(REFS, HYPS), rel=1e-9)
    assert ours > 1.0


def test_exact_match_and_scores_of_a_perfect_corpus():
    refs = [[toks(rs[0])] for rs in REFS]
    hyps = [toks(rs[0]) for rs in REFS]
    s = caption_scores(refs, hyps)
    assert s["exact_match"] == 1.0
    assert s["bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert exact_match([[toks(r) for r in rs] for rs in REFS], [toks(h) for h in HYPS]) == 0.0


def test_metrics_refuse_mismatched_lengths():
    with pytest.raises(VitlabError, match="2 hypotheses for 1 reference"):
        bleu([[["a"]]], [["a"], ["b"]])


def test_coverage_and_word_grounding_on_a_planted_mask():
    mask = np.zeros((16, 16), np.uint8)
    mask[0:8, 0:4] = 1  # half of patch (0, 0) of a 2x2 grid
    cov = coverage(mask, 1, 2)
    assert cov.tolist() == [[0.5, 0.0], [0.0, 0.0]]
    on = word_grounding(np.array([[0.7, 0.1], [0.1, 0.1]]), cov)
    assert on["energy"] == pytest.approx(0.35)
    assert on["pointing"] == 1.0
    assert on["energy_uniform"] == pytest.approx(0.125)
    assert on["pointing_uniform"] == pytest.approx(0.25)
    off = word_grounding(np.array([[0.1, 0.7], [0.1, 0.1]]), cov)
    assert off["pointing"] == 0.0


def test_grounding_skips_non_object_words_and_groups_by_kind():
    mask = np.zeros((16, 16), np.uint8)
    mask[8:, 8:] = 1
    maps = np.full((3, 2, 2), 0.25)
    maps[1] = [[0, 0], [0, 1.0]]
    g = Grounding()
    g.add(maps, mask, [0, 1, 1], [None, "colour", "noun"])
    r = g.result()
    assert r["words"] == 2
    assert r["by_kind"]["colour"]["pointing"] == 1.0
    assert r["by_kind"]["colour"]["energy"] == pytest.approx(1.0)
    assert r["by_kind"]["noun"]["energy"] == pytest.approx(0.25)
    with pytest.raises(VitlabError, match="sums to"):
        word_grounding(np.full((2, 2), 0.5), coverage(mask, 1, 2))
