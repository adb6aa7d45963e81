"""The core DAG under real DVC in a scratch git repo, on the micro profile."""

from __future__ import annotations

import json

import pandas as pd
import torch

from tests.conftest import dvc
from vitlab.selection import top_k

MODELS = ("M16", "M32")
VARIANTS = {"best_epoch", "uniform_soup", "greedy_soup"}


def test_every_stage_ran_and_wrote_the_output_contract(micro_project):
    root = micro_project
    for m in MODELS:
        history = json.loads((root / f"models/{m}/history.json").read_text())
        assert [r["epoch"] for r in history["epochs"]] == [1, 2, 3, 4, 5]
        kept = sorted((root / f"models/{m}/epochs").glob("epoch_*.pt"))
        assert [p.name for p in kept] == [f"epoch_{e:03d}.pt" for e in history["kept"]]
        assert len(kept) == 3
        for p in [*kept, root / f"models/{m}/uniform_soup.pt", root / f"models/{m}/greedy_soup.pt"]:
            state = torch.load(p, weights_only=True)
            assert "transformer.blocks.0.attn.proj_q.weight" in state and "fc.weight" in state
        assert (root / f"models/{m}/last.pt").is_file()
        curves = root / f"reports/train/{m}/plots/metrics"
        for name in ("train_loss", "val_loss", "val_acc", "lr"):
            assert len((curves / f"{name}.tsv").read_text().splitlines()) == 1 + 5
    table = pd.read_csv(root / "reports/metrics.csv")
    for col in ("model", "variant", "epochs", "val_acc", "test_acc"):
        assert col in table
    for m in MODELS:
        assert set(table[table.model == m].variant) >= VARIANTS
    headline = json.loads((root / "reports/metrics.json").read_text())
    assert set(headline) == {*MODELS, "captioner"}
    assert set(headline["M16"]) == VARIANTS


def test_models_learn_well_above_chance_and_differ(micro_project):
    table = pd.read_csv(micro_project / "reports/metrics.csv").set_index(["model", "variant"])
    chance = 1 / 8
    for m in MODELS:
        assert table.loc[(m, "best_epoch"), "test_acc"] > 3 * chance
    # two architectures, two different models (the micro task is easy: compare losses)
    assert (
        table.loc[("M16", "best_epoch"), "val_loss"] != table.loc[("M32", "best_epoch"), "val_loss"]
    )


def test_selection_follows_the_tie_rule_and_the_soup_is_their_mean(micro_project):
    root = micro_project
    for m in MODELS:
        history = json.loads((root / f"models/{m}/history.json").read_text())
        selection = json.loads((root / f"models/{m}/selection.json").read_text())
        expected = [r["epoch"] for r in top_k(history["epochs"], 3)]
        assert [s["epoch"] for s in selection["selected"]] == expected
        states = [torch.load(root / s["path"], weights_only=True) for s in selection["selected"]]
        soup = torch.load(root / f"models/{m}/uniform_soup.pt", weights_only=True)
        for key, value in soup.items():
            mean = torch.stack([s[key].double() for s in states]).mean(0).to(value.dtype)
            torch.testing.assert_close(value, mean, rtol=0, atol=1e-7)


def test_evaluation_report_holds_every_variant_on_val_and_test(micro_project):
    report = json.loads((micro_project / "reports/eval/M16.json").read_text())
    assert len(report["classes"]) == 8
    kinds = {v["kind"] for v in report["variants"].values()}
    assert kinds == {"epoch", "best_epoch", "uniform_soup", "greedy_soup"}
    for v in report["variants"].values():
        for split in ("val", "test"):
            m = v[split]
            confusion = torch.tensor(m["confusion"])
            assert confusion.shape == (8, 8)
            assert confusion.sum() == 64  # 8 classes x 8 images per split
            assert abs(confusion.diag().sum().item() / 64 - m["accuracy"]) < 1e-9
            assert len(m["per_class_accuracy"]) == 8


def test_a_second_repro_is_a_no_op(micro_project):
    out = dvc("repro", cwd=micro_project).stdout
    assert "Running stage" not in out
    assert "Data and pipelines are up to date" in out


def test_one_checkpoint_has_one_accuracy_everywhere(micro_project):
    """Scored while training, by the greedy soup and by `evaluate`: the same number."""
    root = micro_project
    table = pd.read_csv(root / "reports/metrics.csv").set_index(["model", "variant"])
    for m in MODELS:
        history = json.loads((root / f"models/{m}/history.json").read_text())
        by_epoch = {r["epoch"]: r for r in history["epochs"]}
        report = json.loads((root / f"reports/eval/{m}.json").read_text())
        for e in history["kept"]:
            v = report["variants"][f"epoch_{e:03d}"]
            assert v["val"]["accuracy"] == by_epoch[e]["val_acc"]
            assert v["val"]["loss"] == by_epoch[e]["val_loss"]
            assert table.loc[(m, f"epoch_{e:03d}"), "val_acc"] == round(by_epoch[e]["val_acc"], 6)
        soups = json.loads((root / f"models/{m}/soups.json").read_text())
        first = soups["greedy"]["steps"][0]
        assert first["score"] == by_epoch[int(first["candidate"].split("_")[1])]["val_acc"]
        greedy = report["variants"]["greedy_soup"]["val"]["accuracy"]
        assert greedy == max(s["score"] for s in soups["greedy"]["steps"] if s["kept"])


def test_each_variant_is_scored_on_its_own_weights(micro_project):
    """Recompute every variant's val loss from its checkpoint: an evaluate that scored one
    checkpoint for every variant (or the wrong split) fails here."""
    from vitlab.core import config
    from vitlab.prepared import load_meta, load_split
    from vitlab.vit import runtime
    from vitlab.vit.models import build_for, load_checkpoint
    from vitlab.vit.scoring import evaluate

    root = micro_project
    params = config.load(root / "params.yaml")
    rt = runtime.resolve(params.runtime)
    meta = load_meta(root / "data/prepared")
    splits = {s: load_split(root / "data/prepared", s) for s in ("val", "test")}
    for m in MODELS:
        report = json.loads((root / f"reports/eval/{m}.json").read_text())
        model = build_for(params.models[m], num_classes=8, image_size=meta["image_size"])
        losses = set()
        for v in report["variants"].values():
            load_checkpoint(model, root / v["checkpoint"])
            for split, data in splits.items():
                got = evaluate(model, data, 8, rt)
                assert got["accuracy"] == v[split]["accuracy"]
                assert abs(got["loss"] - v[split]["loss"]) < 1e-6
            losses.add(round(v["val"]["loss"], 7))
        assert len(losses) >= 3  # distinct weights, distinct losses
