"""The Streamlit dashboard under AppTest: every page on real outputs of a micro `dvc repro`, on a
fresh clone, a partial run and malformed files, plus experiments recorded by real DVC.

Pages are opened through the app's own st.navigation (AppTest.switch_page), with VITLAB_ROOT
pointing at the project under test. st.cache_data is process-wide, so it is cleared around
every test.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from conftest import ROOT, dvc, make_project, run
from PIL import Image
from streamlit import dataframe_util
from streamlit.testing.v1 import AppTest

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dashboard import figures  # noqa: E402

APP = ROOT / "dashboard" / "app.py"
PAGES = {
    "leaderboard": "views/leaderboard.py",
    "training": "views/training.py",
    "per_class": "views/per_class.py",
    "maps": "views/maps.py",
    "experiments": "views/experiments.py",
}
TIMEOUT = 90  # seconds per script run: the experiments page asks DVC, a shared CPU is slow


@pytest.fixture(autouse=True)
def clear_caches():
    st.cache_data.clear()
    yield
    st.cache_data.clear()


def open_page(root: Path, page: str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The app on `root`, switched to one page through st.navigation and run."""
    monkeypatch.setenv("VITLAB_ROOT", str(root))
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    if page != "leaderboard":
        at.switch_page(PAGES[page]).run()
    return at


def assert_clean(at: AppTest) -> None:
    """No traceback (st.exception) and no error box on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def notices(at: AppTest) -> str:
    return "\n".join([e.value for e in at.info] + [e.value for e in at.warning])


def csv_rows(root: Path) -> list[dict]:
    with open(root / "reports" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def branch(root: Path) -> str:
    """The checked-out branch (git's default name varies with its configuration)."""
    return run(["git", "rev-parse", "--abbrev-ref", "HEAD"], root).stdout.strip()


def charts(at: AppTest) -> list:
    return list(at.get("vega_lite_chart"))


def chart_data(chart) -> pd.DataFrame:
    """The rows a vega-lite chart element was sent with (Arrow bytes in its proto)."""
    frames = [
        dataframe_util.convert_arrow_bytes_to_pandas_df(ds.data.data) for ds in chart.proto.datasets
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def images(at: AppTest) -> list:
    return list(at.image)


# --------------------------------------------------------------------------- sample outputs

CLASSES = ["red_striped", "blue_dotted", "green_checked"]


def write_png(path: Path, colour: tuple[int, int, int], size: int = 24) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), colour, np.uint8)).save(path)


def eval_report(model: str, acc: dict[str, float], epochs: list[int]) -> dict:
    """A reports/eval/<M>.json whose accuracies are exactly `acc` per variant (3 classes,
    4 images per class and split)."""
    variants = {}
    kinds = {
        "best_epoch": "best_epoch",
        "uniform_soup": "uniform_soup",
        "greedy_soup": "greedy_soup",
    }
    for name, a in acc.items():
        split = {}
        for s, shift in (("val", 0.0), ("test", -0.25)):
            correct = round((a + shift) * 12)
            per = [min(4, max(0, correct - 4 * i)) for i in range(3)]
            conf = [[per[i] if j == i else (4 - per[i] if j == (i + 1) % 3 else 0)
                     for j in range(3)] for i in range(3)]  # fmt: skip
            split[s] = {
                "accuracy": sum(per) / 12,
                "loss": 1.0 - a / 2,
                "per_class_accuracy": [p / 4 for p in per],
                "confusion": conf,
            }
        variants[name] = {"kind": kinds.get(name, "epoch"), "epochs": epochs, **split}
    return {"model": model, "classes": CLASSES, "variants": variants}


def write_sample(root: Path, models: dict[str, bool], *, summary: bool = True) -> Path:
    """A plausible project tree: params.yaml, curves, selection.json, eval reports, figures and
    captions. models maps each name to whether it was evaluated (a partial run has False)."""
    (root / "reports" / "eval").mkdir(parents=True, exist_ok=True)
    params = {"models": {m: {"arch": "vitlab_micro_16"} for m in models}}
    (root / "params.yaml").write_text(json.dumps(params))
    (root / "dvc.yaml").write_text("stages: {}\n")
    rows = []
    for k, (model, evaluated) in enumerate(models.items()):
        curves = root / "reports" / "train" / model / "plots" / "metrics"
        curves.mkdir(parents=True, exist_ok=True)
        for metric, f in {
            "train_loss": lambda e: 2.0 / e,
            "val_loss": lambda e: 2.2 / e,
            "val_acc": lambda e, k=k: 0.3 + 0.1 * e + 0.01 * k,
            "lr": lambda e: 0.001 * (5 - e),
        }.items():
            lines = ["step\t" + metric] + [f"{e}\t{f(e):.6f}" for e in range(1, 5)]
            (curves / f"{metric}.tsv").write_text("\n".join(lines) + "\n")
        selection = {
            "model": model,
            "metric": "val_acc",
            "k": 3,
            "selected": [{"epoch": e, "val_acc": 0.3 + 0.1 * e + 0.01 * k} for e in (4, 3, 2)],
        }
        (root / "models" / model).mkdir(parents=True, exist_ok=True)
        (root / "models" / model / "selection.json").write_text(json.dumps(selection))
        if not evaluated:
            continue
        acc = {
            "epoch_002": 0.5,
            "epoch_003": 0.6667,
            "epoch_004": 0.75,
            "best_epoch": 0.75,
            "uniform_soup": 0.8333 - 0.0833 * k,
            "greedy_soup": 0.9167,
        }
        report = eval_report(model, acc, [2, 3, 4])
        (root / "reports" / "eval" / f"{model}.json").write_text(json.dumps(report))
        for name, v in report["variants"].items():
            rows.append(
                {
                    "model": model,
                    "variant": name,
                    "kind": v["kind"],
                    "epochs": "2;3;4",
                    "val_acc": round(v["val"]["accuracy"], 6),
                    "test_acc": round(v["test"]["accuracy"], 6),
                    "val_loss": v["val"]["loss"],
                    "test_loss": v["test"]["loss"],
                    "pointing_rollout": 0.9 if name == "best_epoch" else "",
                }
            )
        write_figures(root, model)
    if summary and rows:
        with open(root / "reports" / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    write_captions(root)
    return root


def write_figures(root: Path, model: str) -> None:
    """reports/figures/<M>/ as render_positions / render_attention write it."""
    base = root / "reports" / "figures" / model
    for variant in ("best_epoch", "greedy_soup"):
        write_png(base / "positions" / f"positions_{variant}.png", (0, 90, 200))
        np.save(base / "positions" / f"positions_{variant}.npy", np.eye(4).reshape(2, 2, 2, 2))
        for m, method in enumerate(("rollout", "last_layer")):
            write_png(base / "attention" / f"attention_{method}_{variant}.png", (200, 40 * m, 0))
            maps = np.random.default_rng(m).random((2, 4, 4)).astype(np.float32)
            np.save(base / "attention" / f"attention_{method}_{variant}.npy", maps)
    drawn = {"split": "test", "indices": [5, 7], "labels": CLASSES[:2],
             "variants": {"best_epoch": {"predicted": CLASSES[:2]}}}  # fmt: skip
    (base / "attention" / "drawn.json").write_text(json.dumps(drawn))
    scores = {
        v: {
            "rollout": {
                "pointing": 0.875,
                "energy": 0.61,
                "pointing_uniform": 0.25,
                "energy_uniform": 0.25,
                "n": 12,
            },
            "last_layer": {
                "pointing": 0.5,
                "energy": 0.4,
                "pointing_uniform": 0.25,
                "energy_uniform": 0.25,
                "n": 12,
            },
        }  # fmt: skip
        for v in ("best_epoch", "greedy_soup")
    }
    (base / "scores.json").write_text(json.dumps(scores))


def write_captions(root: Path) -> None:
    """reports/captions/ as render_captions writes it."""
    base = root / "reports" / "captions"
    (base / "figures").mkdir(parents=True, exist_ok=True)
    metrics = {
        "model": "captioner",
        "split": "test",
        "images": 2,
        "headline": "greedy",
        "decodings": {
            "greedy": {"bleu_1": 0.9, "bleu_4": 0.8123, "cider_d": 2.5, "exact_match": 0.5}
        },  # fmt: skip
        "grounding": {"mass": 0.6, "mass_uniform": 0.1, "pointing": 0.8, "pointing_uniform": 0.2},
    }
    (base / "metrics.json").write_text(json.dumps(metrics))
    records = [
        {"image": "00000.png", "references": ["a red striped blob"], "greedy": "a red blob"},
        {"image": "00001.png", "references": ["a blue dotted blob"], "greedy": "a blue blob"},
    ]
    (base / "test_captions.json").write_text(json.dumps(records))
    write_png(base / "figures" / "test_00001.png", (10, 200, 10))
    np.save(base / "figures" / "test_00001.npy", np.zeros((4, 2, 2), np.float32))
    meta = {"image": "00001.png", "caption": "a blue dotted blob", "reference": "a blue blob"}
    (base / "figures" / "test_00001.json").write_text(json.dumps(meta))


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    return write_sample(tmp_path / "proj", {"Ta": True, "Tb": True})


# --------------------------------------------------------------------------- real outputs


def test_leaderboard_shows_the_metrics_csv_of_a_micro_repro(micro_project, monkeypatch):
    at = open_page(micro_project, "leaderboard", monkeypatch)
    assert_clean(at)
    head = at.table[0].value
    for row in csv_rows(micro_project):
        if row["variant"] == "best_epoch":
            label = "best"
        elif row["variant"] in ("uniform_soup", "greedy_soup"):
            label = row["variant"].split("_")[0]
        else:
            continue
        for split in ("val", "test"):
            shown = head.loc[row["model"], f"{label} {split}"]
            assert shown == f"{float(row[f'{split}_acc']):.4f}", (row, split)
    selection = json.loads(
        (micro_project / "models" / head.index[0] / "selection.json").read_text()
    )
    ranked = ", ".join(str(s["epoch"]) for s in selection["selected"])
    assert head.iloc[0]["selected epochs"] == ranked
    table = at.dataframe[0].value
    assert set(table["variant"]) == {"best_epoch", "uniform_soup", "greedy_soup"}
    assert len(charts(at)) == 1  # the soup gains


def test_leaderboard_filters_rows(micro_project, monkeypatch):
    at = open_page(micro_project, "leaderboard", monkeypatch)
    rows = csv_rows(micro_project)
    model = rows[0]["model"]
    epochs = sorted({r["variant"] for r in rows if r["variant"].startswith("epoch_")})
    at.multiselect(key="lb_models").set_value([model])
    at.multiselect(key="lb_variants").set_value(epochs).run()
    assert_clean(at)
    table = at.dataframe[0].value
    assert set(table["model"]) == {model}
    assert sorted(table["variant"]) == sorted(
        r["variant"] for r in rows if r["model"] == model and r["variant"] in epochs
    )


def test_training_page_plots_every_model_and_the_selected_epochs(micro_project, monkeypatch):
    at = open_page(micro_project, "training", monkeypatch)
    assert_clean(at)
    assert len(charts(at)) == 3  # loss, val accuracy, learning rate
    data = [chart_data(c) for c in charts(at)]
    assert sorted(sorted(set(d["metric"])) for d in data) == [
        ["lr"],
        ["train_loss", "val_loss"],
        ["val_acc"],
    ]
    acc = next(d for d in data if set(d["metric"]) == {"val_acc"})
    models = at.multiselect(key="tr_models").value
    study = sorted({r["model"] for r in csv_rows(micro_project)} - {"captioner"})
    assert sorted(models) == study  # stale folders of other studies are not shown
    selected = at.dataframe[0].value
    for model in study:
        sel = json.loads((micro_project / "models" / model / "selection.json").read_text())
        got = selected[selected["model"] == model].sort_values("rank")
        assert list(got["epoch"]) == [s["epoch"] for s in sel["selected"]]
        assert np.allclose(got["val_acc"], [s["val_acc"] for s in sel["selected"]], atol=1e-6)
        ringed = acc[(acc["model"] == model) & acc["selected"]].sort_values("rank")
        assert list(ringed["epoch"]) == [s["epoch"] for s in sel["selected"]]


def test_per_class_page_matches_the_eval_report(micro_project, monkeypatch):
    at = open_page(micro_project, "per_class", monkeypatch)
    assert_clean(at)
    model = at.selectbox(key="pc_model").value
    report = json.loads((micro_project / "reports" / "eval" / f"{model}.json").read_text())
    at.selectbox(key="pc_variant").set_value("uniform_soup")
    at.radio(key="pc_split").set_value("val").run()
    assert_clean(at)
    s = report["variants"]["uniform_soup"]["val"]
    assert at.metric[0].value == f"{s['accuracy']:.4f}"
    table = at.dataframe[0].value.set_index("class")
    for i, name in enumerate(report["classes"]):
        assert math.isclose(table.loc[name, "accuracy"], s["per_class_accuracy"][i])
        assert table.loc[name, "support"] == sum(s["confusion"][i])
    assert len(charts(at)) == 2  # per-class accuracy and the confusion matrix


def test_maps_page_on_real_outputs(micro_project, monkeypatch):
    at = open_page(micro_project, "maps", monkeypatch)
    assert_clean(at)
    models = {r["model"] for r in csv_rows(micro_project)}
    if any((micro_project / "reports" / "figures" / m).is_dir() for m in models):
        assert images(at), "figures exist but none is shown"
    else:
        assert "reports/figures/<model>/" in notices(at) and "dvc repro" in notices(at)


def test_experiments_page_lists_the_workspace_and_the_commit(micro_project, monkeypatch):
    at = open_page(micro_project, "experiments", monkeypatch)
    assert_clean(at)
    table = at.dataframe[0].value
    assert list(table["experiment"][:2]) == ["workspace", branch(micro_project)]


@pytest.fixture(scope="module")
def exp_project(micro_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the micro project with its outputs committed, a second branch and one DVC
    experiment that changes select.k (reruns select/average/evaluate/summarize only)."""
    root = tmp_path_factory.mktemp("exps") / "proj"
    shutil.copytree(micro_project, root, symlinks=True)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    main = branch(root)
    run([*git, "add", "-A"], root)
    run([*git, "commit", "-qm", "outputs"], root)
    run([*git, "checkout", "-qb", "side"], root)
    run([*git, "commit", "-q", "--allow-empty", "-m", "side"], root)
    run([*git, "checkout", "-q", main], root)
    params = (root / "params.yaml").read_text()
    changed = re.sub(r"(?m)^(select:\n  k: )3$", r"\g<1>2", params)
    assert changed != params, "params.yaml has no `select:\\n  k: 3` block to change"
    (root / "params.yaml").write_text(changed)  # not `-S`: DVC would rewrite the file's quoting
    dvc("exp", "run", "-n", "k-two", cwd=root)
    return root


def test_experiments_compare_params_metrics_and_curves(exp_project, monkeypatch):
    main = branch(exp_project)
    at = open_page(exp_project, "experiments", monkeypatch)
    assert_clean(at)
    table = at.dataframe[0].value
    assert {"workspace", main, "side", "k-two"} <= set(table["experiment"])
    assert table.set_index("experiment").loc["k-two", "param select.k"] == 2
    assert at.multiselect(key="ex_chosen").value == [main, "k-two"]  # baseline + its exp
    params = at.dataframe[1].value
    assert list(params["parameter"]) == ["select.k"]  # only what differs
    assert list(params.iloc[0][[main, "k-two"]]) == ["3", "2"]
    base = json.loads(
        subprocess.run(
            ["git", "show", f"{main}:reports/metrics.json"],
            cwd=exp_project,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    exp = json.loads((exp_project / "reports" / "metrics.json").read_text())  # applied
    deltas = at.dataframe[2].value.set_index("metric")
    model = next(iter(exp))
    # with two metrics files DVC prefixes each key with its file
    key = next(k for k in deltas.index if k.endswith(f"{model}.uniform_soup.val_acc"))
    want = exp[model]["uniform_soup"]["val_acc"] - base[model]["uniform_soup"]["val_acc"]
    assert math.isclose(deltas.loc[key, "Δ k-two"], want, abs_tol=1e-9)
    classifiers = [m for m in exp if m != "captioner"]
    assert len(charts(at)) == len(classifiers)  # one chart per model, the experiments overlaid
    curves = chart_data(charts(at)[0])
    assert set(curves["experiment"]) == {main, "k-two"}
    assert set(curves["metric"]) == {"val_acc"}
    at.multiselect(key="ex_chosen").set_value([main, "side", "k-two"]).run()
    assert_clean(at)
    assert list(at.dataframe[2].value.columns) == [
        "metric",
        main,
        "side",
        "k-two",
        "Δ side",
        "Δ k-two",
    ]


def test_experiments_cache_follows_new_experiments(exp_project, monkeypatch, tmp_path):
    root = tmp_path / "proj"
    shutil.copytree(exp_project, root, symlinks=True)
    at = open_page(root, "experiments", monkeypatch)
    before = set(at.dataframe[0].value["experiment"])
    dvc("exp", "remove", "k-two", cwd=root)
    at.run()
    assert_clean(at)
    assert before - set(at.dataframe[0].value["experiment"]) == {"k-two"}


# --------------------------------------------------------------------------- empty, partial, bad


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_on_an_empty_folder(page, tmp_path, monkeypatch):
    at = open_page(tmp_path, page, monkeypatch)
    assert_clean(at)
    text = notices(at)
    assert "dvc repro" in text or "dvc exp run" in text, text
    if page == "leaderboard":
        assert "`reports/metrics.csv` is missing" in text
    if page == "experiments":
        assert "git repository" in text


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_on_a_fresh_clone(page, tmp_path, monkeypatch):
    root = make_project(tmp_path)
    at = open_page(root, page, monkeypatch)
    assert_clean(at)
    if page == "experiments":
        assert list(at.dataframe[0].value["experiment"]) == ["workspace", branch(root)]
    else:
        assert "dvc repro" in notices(at)


def test_partial_run_falls_back_to_the_eval_reports(tmp_path, monkeypatch):
    root = write_sample(tmp_path, {"Ta": True, "Tb": False}, summary=False)
    at = open_page(root, "leaderboard", monkeypatch)
    assert_clean(at)
    assert "`reports/metrics.csv` is not written yet" in notices(at)
    head = at.table[0].value
    assert list(head.index) == ["Ta"]
    report = json.loads((root / "reports" / "eval" / "Ta.json").read_text())
    assert (
        head.loc["Ta", "greedy test"]
        == f"{report['variants']['greedy_soup']['test']['accuracy']:.4f}"
    )
    at.switch_page(PAGES["training"]).run()
    assert_clean(at)
    assert at.multiselect(key="tr_models").value == ["Ta", "Tb"]  # Tb trained, not evaluated
    at.switch_page(PAGES["per_class"]).run()
    assert_clean(at)
    assert at.selectbox(key="pc_model").options == ["Ta"]


MALFORMED_CSV = {
    "binary": (b"\x00\xff\xfe\x00", "cannot be read as UTF-8"),
    "missing columns": (b"model,variant\nA,best_epoch\n", "column(s) val_acc, test_acc missing"),
    "non-numeric": (b"model,variant,val_acc,test_acc\nA,best_epoch,abc,0.5\n", "non-numeric"),
    "empty": (b"", "empty"),
    "broken quoting": (b'model,variant,val_acc,test_acc\nA,best_epoch,0.5,0.5\n"x', "not a CSV"),
}


@pytest.mark.parametrize("case", list(MALFORMED_CSV))
def test_malformed_metrics_csv_is_a_warning(case, sample, monkeypatch):
    content, words = MALFORMED_CSV[case]
    (sample / "reports" / "metrics.csv").write_bytes(content)
    at = open_page(sample, "leaderboard", monkeypatch)
    assert_clean(at)
    warning = " ".join(w.value for w in at.warning)
    assert "`reports/metrics.csv` is malformed" in warning and words in warning, warning
    assert "dvc repro" in warning
    at.switch_page(PAGES["maps"]).run()  # the maps page reads the table too: still works
    assert_clean(at)
    assert images(at)


def test_malformed_json_files_are_named(sample, monkeypatch):
    (sample / "reports" / "eval" / "Ta.json").write_text('{"model": "Ta", "variants": ')
    (sample / "models" / "Ta" / "selection.json").write_text('{"selected": [{"epoch": "x"}]}')
    (sample / "reports" / "train" / "Ta" / "plots" / "metrics" / "val_acc.tsv").write_text("1,2\n")
    (sample / "reports" / "figures" / "Ta" / "scores.json").write_text("[1, 2")
    at = open_page(sample, "per_class", monkeypatch)
    assert_clean(at)
    assert "`reports/eval/Ta.json` is malformed: invalid JSON at line 1" in notices(at)
    at.switch_page(PAGES["training"]).run()
    assert_clean(at)
    text = notices(at)
    assert "`models/Ta/selection.json` is malformed" in text
    assert "`reports/train/Ta/plots/metrics/val_acc.tsv` is malformed" in text
    assert "dvc repro train@Ta" in text
    assert len(charts(at)) == 3  # the other curves and model still plot
    at.switch_page(PAGES["leaderboard"]).run()
    assert_clean(at)
    assert at.table[0].value.loc["Ta", "selected epochs"] == "2, 3, 4"  # from the CSV instead
    at.switch_page(PAGES["maps"]).run()
    assert_clean(at)
    assert "`reports/figures/Ta/scores.json` is malformed" in notices(at)


def test_caches_follow_file_changes(sample, monkeypatch):
    at = open_page(sample, "leaderboard", monkeypatch)
    assert at.table[0].value.loc["Ta", "best test"] == "0.5000"
    path = sample / "reports" / "metrics.csv"
    text = path.read_text().replace(
        "Ta,best_epoch,best_epoch,2;3;4,0.75,0.5,", "Ta,best_epoch,best_epoch,2;3;4,0.75,0.4321,"
    )
    assert "0.4321" in text
    path.write_text(text)
    st_ = path.stat()
    os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns + 2_000_000_000))
    at.run()
    assert_clean(at)
    assert at.table[0].value.loc["Ta", "best test"] == "0.4321"


# --------------------------------------------------------------------------- figures, captions


def test_maps_page_shows_figures_scores_and_captions(sample, monkeypatch):
    at = open_page(sample, "maps", monkeypatch)
    assert_clean(at)
    assert at.selectbox(key="mp_model").options == ["Ta", "Tb"]
    # positions (1 figure) + attention: one figure per method (all drawn images) + the caption
    assert len(images(at)) == 1 + 2 + 1
    values = [m.value for m in at.metric]
    assert "0.875" in values and "0.610" in values  # rollout pointing / energy of best_epoch
    assert "0.8123" in values  # BLEU-4 of the captioner
    markdown = " ".join(m.value for m in at.markdown)
    assert "a blue dotted blob" in markdown
    at.radio(key="mp_att_view").set_value("One image")
    at.selectbox(key="mp_att_variant").set_value("greedy_soup").run()
    assert_clean(at)
    assert at.selectbox(key="mp_att_image").options == ["#5 · red_striped", "#7 · blue_dotted"]
    assert len(images(at)) == 1 + 2 + 1  # one overlay per method


def test_figure_names_are_parsed():
    d = "reports/figures/M"
    f = figures.classify_figure(f"{d}/attention/attention_grad_rollout_epoch_012.png", d)
    assert (f.group, f.method, f.variant, f.image) == ("attention", "grad_rollout", "epoch_012", "")
    f = figures.classify_figure(f"{d}/positions/positions_uniform_soup.png", d)
    assert (f.group, f.variant, f.image) == ("positions", "uniform_soup", "")
    f = figures.classify_figure(f"{d}/img3/attention_rollout_best_epoch_crop.png", d)
    assert (f.method, f.variant, f.image) == ("rollout", "best_epoch", "img3/crop")
    assert figures.classify_figure(f"{d}/loss_landscape.png", d).group == "other"
    scores = {"best_epoch": {"rollout": {"pointing": 1}, "grad_rollout": {"pointing": 0.5}}}
    assert figures.scores_for(scores, "rollout", "best_epoch") == {"pointing": 1.0}
