"""The captioning branch end to end under real DVC, on a micro profile (seconds a stage)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
import yaml

from tests.conftest import dvc, make_project, run

pytestmark = pytest.mark.slow


# The three stages as given to the lead for dvc.yaml (added here when dvc.yaml lacks them).
@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("captions"))  # the micro profile
    dvc("repro", "render_captions", cwd=root)
    return root


def test_repro_writes_the_contract_outputs(project):
    m = json.loads((project / "reports/captions/metrics.json").read_text())
    assert m["model"] == "captioner" and m["split"] == "test" and m["images"] == 40
    assert m["headline"] == "beam2" and set(m["decodings"]) == {"greedy", "beam2"}
    written = json.loads((project / "reports/captions/test_captions.json").read_text())
    assert len(written) == 40
    streams = [[c["references"][k] for c in written] for k in range(len(written[0]["references"]))]
    for name, scores in m["decodings"].items():
        assert set(scores) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d", "exact_match"}
        hyps = [c[name] for c in written]  # BLEU recomputed from the captions it wrote
        for n in range(1, 5):
            ref = sacrebleu.metrics.BLEU(tokenize="none", smooth_method="none", max_ngram_order=n)
            want = ref.corpus_score(hyps, streams).score / 100
            assert scores[f"bleu_{n}"] == pytest.approx(want, abs=1e-6), (name, n)
        exact = sum(c[name] in c["references"] for c in written) / len(written)
        assert scores["exact_match"] == pytest.approx(exact)
    g = m["grounding"]
    assert g["words"] > 0 and set(g["by_kind"]) == {"size", "colour", "pattern", "noun"}
    assert {r["variant"] for r in m["rows"]} == {"greedy", "beam2"}
    assert all(r["model"] == "captioner" and "pointing_uniform" in r for r in m["rows"])
    curves = project / "reports/captions/train/plots/metrics"
    for name in ("train_loss", "val_loss", "val_bleu4", "val_exact", "lr"):
        lines = (curves / f"{name}.tsv").read_text().splitlines()
        assert lines[0].split("\t")[:2] == ["step", name] and len(lines) == 1 + 3
    history = json.loads((project / "models/captioner/history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3]
    captions = json.loads((project / "reports/captions/test_captions.json").read_text())
    assert len(captions) == 40 and {"references", "greedy", "beam2"} <= set(captions[0])


def test_figures_have_one_panel_map_per_generated_token(project):
    figs = project / "reports/captions/figures"
    assert sorted(p.name for p in figs.iterdir()) == [
        "manifest.json",
        *(f"test_{i:05d}.{ext}" for i in (0, 3) for ext in ("json", "npy", "png")),
    ]
    manifest = json.loads((figs / "manifest.json").read_text())
    assert [(f["png"], f["maps"], f["images"]) for f in manifest["figures"]] == [
        (f"test_{i:05d}.png", f"test_{i:05d}.npy", [i]) for i in (0, 3)
    ]
    vocab = json.loads((project / "models/captioner/vocab.json").read_text())["words"]
    for i in (0, 3):
        meta = json.loads((figs / f"test_{i:05d}.json").read_text())
        maps = np.load(figs / f"test_{i:05d}.npy")
        assert maps.shape == (len(meta["token_ids"]), 4, 4)  # 32 px / patch 8
        assert np.allclose(maps.sum(axis=(1, 2)), 1.0, atol=1e-4)
        assert meta["tokens"] == [vocab[t] for t in meta["token_ids"]]
        if meta["tokens"][-1] == "<end>":
            assert meta["caption"] == " ".join(meta["tokens"][:-1])


def test_second_repro_is_a_no_op(project):
    out = dvc("repro", "render_captions", cwd=project).stdout
    assert "didn't change" in out or "up to date" in out.lower()
    assert "Running stage" not in out


def test_vocabulary_that_does_not_match_the_checkpoint_is_refused(project, tmp_path):
    vocab = project / "models/captioner/vocab.json"
    metrics = project / "reports/captions/metrics.json"
    saved_vocab, saved_metrics = vocab.read_text(), metrics.read_text()
    words = json.loads(saved_vocab)["words"]
    try:
        vocab.chmod(0o644)
        vocab.write_text(json.dumps({"words": [*words, "zebra"]}))
        proc = run([sys.executable, "-m", "stages.render_captions"], project, check=False)
        assert proc.returncode == 2
        assert proc.stderr.strip().count("\n") == 0
        assert f"vocabulary of {len(words)} words but the vocabulary has {len(words) + 1}" in (
            proc.stderr
        )
        assert metrics.read_text() == saved_metrics
    finally:
        vocab.write_text(saved_vocab)


def test_unknown_caption_source_is_one_line(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    original = (project / "params.yaml").read_text()
    params["captions"]["source"] = "flickr"
    try:
        (project / "params.yaml").write_text(yaml.safe_dump(params))
        proc = run([sys.executable, "-m", "stages.fetch_captions"], project, check=False)
        assert proc.returncode == 2
        assert proc.stderr.strip() == (
            "error: params.yaml: captions.source: Input should be 'synthetic', 'karpathy' or "
            "'folder' (got 'flickr')"
        )
        assert (project / "data/captions/captions.json").is_file()
    finally:
        (project / "params.yaml").write_text(original)
