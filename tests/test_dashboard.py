"""The Streamlit dashboard under AppTest on the real outputs of a micro `dvc repro`.

Every number, figure and map a page shows is compared with the file it comes from (metrics.csv,
the eval reports, selection.json, the dvclive TSVs, the render stages' manifests and .npy maps,
and what DVC's experiments hold), so breaking what a page reads or how it shows it fails a
test. Broken inputs are copies of the real outputs with one file damaged. Pages are opened
through the app's own st.navigation (AppTest.switch_page) with VITLAB_ROOT pointing at the
project; st.cache_data is process-wide, so it is cleared around every test.
"""

from __future__ import annotations

import csv
import json
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

from dashboard import ui  # noqa: E402
from vitlab.core import config, contract  # noqa: E402

APP = ROOT / "dashboard" / "app.py"
PAGES = {
    "leaderboard": "views/leaderboard.py",
    "training": "views/training.py",
    "per_class": "views/per_class.py",
    "maps": "views/maps.py",
    "experiments": "views/experiments.py",
}
TIMEOUT = 120  # seconds per script run: the experiments page asks DVC, on a shared CPU
HEADLINE = {"best_epoch": "best", "uniform_soup": "uniform", "greedy_soup": "greedy"}


@pytest.fixture(autouse=True)
def clear_caches():
    st.cache_data.clear()
    yield
    st.cache_data.clear()


def open_page(root: Path, page: str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The app on `root`, switched to one page through st.navigation and run.

    AppTest serves nothing, and Streamlit reads server.address from the working directory's
    config, so the opt-in keeps these tests independent of where pytest runs; the address gate
    itself is tested on real servers in test_browser.py.
    """
    monkeypatch.setenv("VITLAB_ROOT", str(root))
    monkeypatch.setenv("VITLAB_DASHBOARD_PUBLIC", "1")
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
    """metrics.csv as plain text rows, read without the library."""
    with open(root / contract.METRICS_CSV, newline="") as f:
        return list(csv.DictReader(f))


def classifiers(root: Path) -> list[str]:
    return list(dict.fromkeys(r["model"] for r in csv_rows(root) if r["arch"]))


def load_json(path: Path):
    return json.loads(path.read_text())


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


def image_captions(at: AppTest) -> list[str]:
    return [c for img in at.image for c in img.captions]


def map_caption(a: np.ndarray) -> str:
    """What the page must print under a map it shows: its shape and value range."""
    return f"{a.shape[0]}×{a.shape[1]}, {a.min():.4g} to {a.max():.4g}"


def tsv(root: Path, model: str, curve: str) -> dict[int, float]:
    with open(root / contract.train_curves(model) / "plots" / "metrics" / f"{curve}.tsv") as f:
        return {int(r["step"]): float(r[curve]) for r in csv.DictReader(f, delimiter="\t")}


def outputs(src: Path, dest: Path) -> Path:
    """A copy of what the dashboard reads from a finished project (to damage one file of)."""
    for rel in (contract.PARAMS, Path("dvc.yaml")):
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dest / rel)
    shutil.copytree(src / contract.REPORTS, dest / contract.REPORTS)
    for sel in src.glob("models/*/selection.json"):
        (dest / sel.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(sel, dest / sel.relative_to(src))
    return dest


@pytest.fixture
def copy(micro_project: Path, tmp_path: Path) -> Path:
    return outputs(micro_project, tmp_path / "proj")


# --------------------------------------------------------------------------- real outputs


def test_leaderboard_is_the_metrics_csv(micro_project, monkeypatch):
    at = open_page(micro_project, "leaderboard", monkeypatch)
    assert_clean(at)
    head = at.table[0].value
    rows = [r for r in csv_rows(micro_project) if r["variant"] in HEADLINE]
    assert sorted(head.index) == sorted({r["model"] for r in rows})
    for r in rows:
        got = head.loc[r["model"]]
        assert (got["arch"], str(got["image size"]), str(got["patch"])) == (
            r["arch"],
            r["image_size"],
            r["patch"],
        )
        for split in contract.EVAL_SPLITS:
            want = f"{float(r[f'{split}_acc']):.4f}"
            assert got[f"{HEADLINE[r['variant']]} {split}"] == want, (r, split)
        if r["variant"] == "greedy_soup":
            assert got["greedy ingredients"] == r["epochs"].replace(";", ", ")
    for model in head.index:
        selection = load_json(micro_project / contract.selection(model))
        ranked = ", ".join(str(s["epoch"]) for s in selection["selected"])
        assert head.loc[model, "selected epochs"] == ranked
    table = at.dataframe[0].value
    assert len(table) == len(rows)
    for r in rows:
        got = table[(table["model"] == r["model"]) & (table["variant"] == r["variant"])]
        assert got["test_acc"].item() == float(r["test_acc"])
        assert got["arch"].item() == r["arch"]
    gains = chart_data(charts(at)[0])
    best = {r["model"]: float(r["val_acc"]) for r in rows if r["variant"] == "best_epoch"}
    for r in rows:
        if r["variant"] == "greedy_soup":
            want = (float(r["val_acc"]) - best[r["model"]]) * 100
            got = gains[(gains["model"] == r["model"]) & (gains["series"] == "greedy · val")]
            assert np.isclose(got["points"].item(), want)


def test_leaderboard_filters_rows(micro_project, monkeypatch):
    at = open_page(micro_project, "leaderboard", monkeypatch)
    rows = csv_rows(micro_project)
    model = rows[0]["model"]
    epochs = sorted({r["variant"] for r in rows if r["variant"].startswith("epoch_")})
    at.multiselect(key="lb_models").set_value([model])
    at.multiselect(key="lb_variants").set_value(epochs).run()
    assert_clean(at)
    table = at.dataframe[0].value
    want = [r for r in rows if r["model"] == model and r["variant"] in epochs]
    assert sorted(table["variant"]) == sorted(r["variant"] for r in want)
    assert sorted(table["val_acc"]) == sorted(float(r["val_acc"]) for r in want)


def test_training_curves_are_the_tsvs_with_the_selected_epochs_ringed(micro_project, monkeypatch):
    at = open_page(micro_project, "training", monkeypatch)
    assert_clean(at)
    models = classifiers(micro_project)
    assert at.multiselect(key="tr_models").value == models  # params.yaml's models only
    data = {tuple(sorted(set(d["curve"]))): d for d in map(chart_data, charts(at))}
    assert sorted(data) == [("lr",), ("train_loss", "val_loss"), ("val_acc",)]
    selected = at.dataframe[0].value
    ran = {
        r["model"]: f"{r['arch']}, {r['image_size']} px, patch {r['patch']}"
        for r in csv_rows(micro_project)
        if r["arch"]
    }
    for model in models:
        for curve in contract.CURVES:
            d = next(v for k, v in data.items() if curve in k)
            got = d[(d["model"] == model) & (d["curve"] == curve)]
            assert dict(zip(got["epoch"], got["value"], strict=True)) == pytest.approx(
                tsv(micro_project, model, curve)
            )
        selection = load_json(micro_project / contract.selection(model))
        ranked = [s["epoch"] for s in selection["selected"]]
        acc = data[("val_acc",)]
        rings = acc[(acc["model"] == model) & acc["selected"]].sort_values("rank")
        assert list(rings["epoch"]) == ranked
        got = selected[selected["model"] == model].sort_values("rank")
        assert list(got["epoch"]) == ranked
        assert set(got["ran"]) == {ran[model]}
        val = tsv(micro_project, model, "val_acc")
        assert list(got["val_acc"]) == pytest.approx([val[e] for e in ranked])


def test_per_class_page_is_the_eval_report(micro_project, monkeypatch):
    at = open_page(micro_project, "per_class", monkeypatch)
    assert_clean(at)
    model = at.selectbox(key="pc_model").value
    report = load_json(micro_project / contract.eval_report(model))
    at.selectbox(key="pc_variant").set_value("uniform_soup")
    at.radio(key="pc_split").set_value("val").run()
    assert_clean(at)
    s = report["variants"]["uniform_soup"]["val"]
    assert [m.value for m in at.metric] == [
        f"{s['accuracy']:.4f}",
        f"{s['loss']:.4f}",
        ", ".join(map(str, report["variants"]["uniform_soup"]["epochs"])),
    ]
    arch = report["architecture"]
    assert f"ran {arch['arch']}, {arch['image_size']} px images, patch {arch['patch']}" in " ".join(
        c.value for c in at.caption
    )
    table = at.dataframe[0].value.set_index("class")
    for i, name in enumerate(report["classes"]):
        assert table.loc[name, "accuracy"] == s["per_class_accuracy"][i]
        assert table.loc[name, "support"] == sum(s["confusion"][i])
    cells = chart_data(charts(at)[1]).set_index(["true", "predicted"])["count"]
    for i, true in enumerate(report["classes"]):
        for j, pred in enumerate(report["classes"]):
            assert cells[(true, pred)] == s["confusion"][i][j]


def test_maps_show_each_manifest_figure_and_its_maps(micro_project, monkeypatch):
    at = open_page(micro_project, "maps", monkeypatch)
    assert_clean(at)
    model = at.selectbox(key="mp_model").value
    pos_dir = micro_project / contract.positions_dir(model)
    _, pos = contract.read_manifest(pos_dir)
    assert at.selectbox(key="mp_pos_variant").options == [f.variant for f in pos]
    at.slider(key="mp_pos_row").set_value(1)
    at.slider(key="mp_pos_col").set_value(2).run()
    sim = np.load(pos_dir / pos[0].maps)
    shown = image_captions(at)
    assert pos[0].title in shown
    assert any(c.endswith(map_caption(sim[1, 2])) and "(1, 2)" in c for c in shown), shown

    att_dir = micro_project / contract.attention_dir(model)
    _, att = contract.read_manifest(att_dir)
    pointing = {
        (r["variant"], m): r[f"pointing_{m}"]
        for r in csv_rows(micro_project)
        for m in contract.MAP_METHODS
        if r["model"] == model and r.get(f"pointing_{m}")
    }
    for variant in dict.fromkeys(f.variant for f in att):
        at.selectbox(key="mp_att_variant").set_value(variant).run()
        assert_clean(at)
        drawn = [f for f in att if f.variant == variant]
        titles = [c for c in image_captions(at) if c.startswith(f"{model} {variant}:")]
        assert titles == [f.title for f in drawn]  # each figure of the manifest, once, in order
        values = [m.value for m in at.metric]
        for f in drawn:
            assert f"{float(pointing[(variant, f.method)]):.3f}" in values
    at.radio(key="mp_att_view").set_value("Maps as scored").run()
    at.selectbox(key="mp_att_image").set_value(3).run()
    assert_clean(at)
    shown = image_captions(at)
    for f in drawn:
        maps = np.load(att_dir / f.maps)
        images = np.load(micro_project / contract.PREPARED / f.split / "images.npy", mmap_mode="r")
        assert maps.shape[1:] == images.shape[1:3]  # the maps at image resolution, as scored
        label = f"#{f.images[3]} · {f.info['labels'][3]} → {f.info['predicted'][3]}"
        want = f"{contract.MAP_METHODS[f.method]} · {label} · {map_caption(maps[3])}"
        assert want in shown, (want, shown)


def test_captions_are_the_manifest_and_its_word_maps(micro_project, monkeypatch):
    at = open_page(micro_project, "maps", monkeypatch)
    assert_clean(at)
    folder = micro_project / contract.CAPTION_FIGURES
    _, figs = contract.read_manifest(folder)
    assert len(at.selectbox(key="mp_cap_image").options) == len(figs)
    fig = figs[-1]
    at.selectbox(key="mp_cap_image").set_value(len(figs) - 1).run()
    assert at.radio(key="mp_cap_word").options == fig.info["tokens"]
    at.radio(key="mp_cap_word").set_value(2).run()
    assert_clean(at)
    markdown = " ".join(m.value for m in at.markdown)
    assert f"**Generated:** {fig.info['caption']}" in markdown
    assert f"**Reference:** {fig.info['reference']}" in markdown
    maps = np.load(folder / fig.maps)
    word = f"'{fig.info['tokens'][2]}' (id {fig.info['token_ids'][2]})"
    assert f"attention while generating {word} · {map_caption(maps[2])}" in image_captions(at)
    rows = at.dataframe[-1].value
    for r in csv_rows(micro_project):
        if r["model"] == "captioner":
            got = rows[rows["variant"] == r["variant"]]
            assert got["bleu_4"].item() == float(r["bleu_4"])


def test_a_second_captioner_appears_from_its_manifest_alone(copy, monkeypatch):
    folder = copy / "reports" / "catr" / "figures"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(folder / "img_7.png")
    maps = np.random.default_rng(0).random((3, 5, 5)).astype(np.float32)
    np.save(folder / "img_7.npy", maps)
    fig = contract.Figure(
        png="img_7.png",
        maps="img_7.npy",
        group="captions",
        title="two cats on a sofa",
        variant="pretrained",
        split="test",
        images=(7,),
        info={
            "caption": "two cats on a sofa",
            "tokens": ["two", "cats", "<end>"],
            "token_ids": [11, 12, 2],
        },
    )
    contract.write_manifest(folder, [fig], model="catr", stage="render_catr")
    at = open_page(copy, "maps", monkeypatch)
    assert at.radio(key="mp_cap_model").options == ["captioner", "catr"]
    at.radio(key="mp_cap_model").set_value("catr").run()
    assert at.radio(key="mp_cap_word").options == ["two", "cats", "<end>"]
    at.radio(key="mp_cap_word").set_value(1).run()
    assert_clean(at)
    assert f"attention while generating 'cats' (id 12) · {map_caption(maps[1])}" in (
        image_captions(at)
    )
    assert "two cats on a sofa" in image_captions(at)
    assert "**Reference:**" not in " ".join(m.value for m in at.markdown)


def test_heat_is_one_pixel_per_value():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    rgb = ui.heat(a)
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    assert len({tuple(p) for p in rgb.reshape(-1, 3)}) == 12  # no two values share a colour
    assert (rgb[0, 0] == ui.heat(np.zeros((1, 1)))[0, 0]).all()  # the minimum is the low end


@pytest.fixture(scope="module")
def exp_project(micro_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the micro project with its outputs committed, a second branch and one DVC
    experiment that changes select.k (reruns select and what follows it only)."""
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
    changed = re.sub(r"(?m)^(select:\n  k: )3\b", r"\g<1>2", params)
    assert changed != params, "params.yaml has no `select:\\n  k: 3` block to change"
    (root / "params.yaml").write_text(changed)  # not `-S`: DVC would rewrite the whole file
    dvc("exp", "run", "-n", "k-two", cwd=root)
    return root


def git_show(root: Path, rev: str, rel: str) -> str:
    return subprocess.run(
        ["git", "show", f"{rev}:{rel}"], cwd=root, capture_output=True, text=True, check=True
    ).stdout


def test_experiments_compare_params_metrics_and_curves(exp_project, monkeypatch):
    main = branch(exp_project)
    at = open_page(exp_project, "experiments", monkeypatch)
    assert_clean(at)
    table = at.dataframe[0].value.set_index("experiment")
    assert {"workspace", main, "side", "k-two"} <= set(table.index)
    assert table.loc["k-two", "param select.k"] == "2"
    assert table.loc["k-two", "baseline"] == main
    assert at.multiselect(key="ex_chosen").value == [main, "k-two"]  # a baseline and its exp
    params = at.dataframe[1].value
    assert list(params["parameter"]) == ["select.k"]  # only what differs
    assert list(params.iloc[0][[main, "k-two"]]) == ["3", "2"]
    base = json.loads(git_show(exp_project, main, "reports/metrics.json"))
    exp = load_json(exp_project / "reports" / "metrics.json")  # the experiment, applied
    deltas = at.dataframe[2].value.set_index("metric")
    model = classifiers(exp_project)[0]
    changed = 0
    for variant, numbers in exp[model].items():
        for name, value in numbers.items():
            want = value - base[model][variant][name]
            assert deltas.loc[f"{model}.{variant}.{name}", "Δ k-two"] == pytest.approx(want)
            changed += want != 0
    assert changed  # k = 2 changed some number, so the sign of each delta is checked
    assert len(charts(at)) == len(classifiers(exp_project))  # one per model, runs overlaid
    curves = chart_data(charts(at)[0])
    assert set(curves["experiment"]) == {main, "k-two"} and set(curves["curve"]) == {"val_acc"}
    rel = (contract.train_curves(model) / "plots" / "metrics" / "val_acc.tsv").as_posix()
    lines = git_show(exp_project, main, rel).split()[2:]
    want = {int(e): float(v) for e, v in zip(lines[::2], lines[1::2], strict=True)}
    got = curves[(curves["experiment"] == main) & (curves["model"] == model)]
    assert dict(zip(got["epoch"], got["value"], strict=True)) == pytest.approx(want)
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


def test_experiments_reload_asks_dvc_again(exp_project, monkeypatch, tmp_path):
    root = tmp_path / "proj"
    shutil.copytree(exp_project, root, symlinks=True)
    at = open_page(root, "experiments", monkeypatch)
    before = set(at.dataframe[0].value["experiment"])
    dvc("exp", "remove", "k-two", cwd=root)
    at.run()
    assert set(at.dataframe[0].value["experiment"]) == before  # cached by Streamlit
    at.button(key="ex_reload").click().run()
    assert_clean(at)
    assert before - set(at.dataframe[0].value["experiment"]) == {"k-two"}


# --------------------------------------------------------------------------- empty, partial, bad


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_on_an_empty_folder(page, tmp_path, monkeypatch):
    at = open_page(tmp_path, page, monkeypatch)
    assert_clean(at)
    assert [i.value for i in at.info] == [
        f"`{tmp_path}` has no `dvc.yaml`: set `VITLAB_ROOT` to a vitlab checkout, or run there."
    ]


FRESH = {  # page -> what a fresh clone's notices must name
    "leaderboard": ["`reports/metrics.csv` is missing: run `dvc repro summarize`"],
    "training": ["`reports/train/{m}/` is missing: run `dvc repro train@{m}`"],
    "per_class": ["`reports/eval/{m}.json` is missing: run `dvc repro evaluate@{m}`"],
    "maps": [
        "`reports/figures/{m}/positions/manifest.json` is missing: run "
        "`dvc repro render_positions@{m}`",
        "`reports/figures/{m}/attention/manifest.json` is missing: run "
        "`dvc repro render_attention@{m}`",
        "`reports/captions/figures/manifest.json` is missing: run `dvc repro render_captions`",
    ],
}


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_on_a_fresh_clone(page, tmp_path, monkeypatch):
    root = make_project(tmp_path)
    at = open_page(root, page, monkeypatch)
    assert_clean(at)
    if page == "experiments":
        assert list(at.dataframe[0].value["experiment"]) == ["workspace", branch(root)]
        return
    first = next(iter(config.load(root / contract.PARAMS).models))
    for line in FRESH[page]:
        assert line.format(m=first) in notices(at), notices(at)


def test_partial_run_falls_back_to_the_eval_reports(copy, monkeypatch):
    models = classifiers(copy)
    (copy / contract.METRICS_CSV).unlink()
    (copy / contract.eval_report(models[1])).unlink()
    at = open_page(copy, "leaderboard", monkeypatch)
    assert_clean(at)
    assert "`reports/metrics.csv` is missing: run `dvc repro summarize`" in notices(at)
    head = at.table[0].value
    assert list(head.index) == [models[0]]
    report = load_json(copy / contract.eval_report(models[0]))
    want = report["variants"]["greedy_soup"]["test"]["accuracy"]
    assert head.loc[models[0], "greedy test"] == f"{want:.4f}"
    assert head.loc[models[0], "arch"] == report["architecture"]["arch"]
    at.switch_page(PAGES["per_class"]).run()
    at.selectbox(key="pc_model").set_value(models[1]).run()
    assert_clean(at)
    assert f"`reports/eval/{models[1]}.json` is missing" in notices(at)


MALFORMED_CSV = {
    "binary": (b"\x00\xff\xfe\x00", "can't decode"),
    "missing columns": (b"model,variant\nA,best_epoch\n", "column(s) val_acc, test_acc missing"),
    "non-numeric": (b"model,variant,val_acc,test_acc\nA,best_epoch,abc,0.5\n", "abc"),
    "empty": (b"", "No columns to parse"),
    "no rows": (b"model,variant,val_acc,test_acc\n", "no rows"),
}


@pytest.mark.parametrize("case", list(MALFORMED_CSV))
def test_malformed_metrics_csv_is_one_warning(case, copy, monkeypatch):
    content, words = MALFORMED_CSV[case]
    (copy / contract.METRICS_CSV).write_bytes(content)
    at = open_page(copy, "leaderboard", monkeypatch)
    assert_clean(at)
    assert len(at.warning) == 1
    warning = at.warning[0].value
    assert warning.startswith("`reports/metrics.csv` is malformed") and words in warning
    assert warning.endswith("run `dvc repro summarize` to rewrite it.")
    at.switch_page(PAGES["maps"]).run()  # the maps page reads the table too: still shows maps
    assert_clean(at)
    assert image_captions(at)


def test_each_malformed_file_is_named_with_its_stage(copy, monkeypatch):
    model = classifiers(copy)[0]
    (copy / contract.eval_report(model)).write_text('{"model": "x", "variants": ')
    (copy / contract.selection(model)).write_text('{"selected": [{"epoch": "x"}]}')
    (copy / contract.curve_file(model, "val_acc")).write_text("1,2\n")
    at = open_page(copy, "per_class", monkeypatch)
    assert_clean(at)
    text = notices(at)
    assert f"`reports/eval/{model}.json` is malformed (Expecting value: line 1" in text
    assert f"run `dvc repro evaluate@{model}` to rewrite it." in text
    at.switch_page(PAGES["training"]).run()
    assert_clean(at)
    text = notices(at)
    assert f"`models/{model}/selection.json` is malformed" in text
    assert f"`reports/train/{model}/plots/metrics/val_acc.tsv` is malformed" in text
    assert f"run `dvc repro train@{model}` to rewrite it." in text
    assert len(charts(at)) == 3  # the other curves and models still plot


def test_a_params_typo_is_named_by_the_schema(copy, monkeypatch):
    params = copy / contract.PARAMS
    params.write_text(params.read_text().replace("\nselect:\n", "\nselect:\n  kk: 2\n", 1))
    at = open_page(copy, "training", monkeypatch)
    assert_clean(at)
    assert [w.value for w in at.warning] == [
        f"`params.yaml` is malformed ({params}: select.kk is not a parameter (a typo?); check "
        "the keys of select in the repository's params.yaml)."
    ]


def test_malformed_manifest_and_maps_are_named(copy, monkeypatch):
    model = classifiers(copy)[0]
    att = copy / contract.attention_dir(model) / contract.MANIFEST
    data = load_json(att)
    del data["figures"][0]["info"]["scores"]
    att.write_text(json.dumps(data))
    pos_dir = copy / contract.positions_dir(model)
    _, pos = contract.read_manifest(pos_dir)
    (pos_dir / pos[0].maps).write_bytes(b"not numpy")
    at = open_page(copy, "maps", monkeypatch)
    assert_clean(at)
    text = notices(at)
    assert f"`reports/figures/{model}/attention/manifest.json` is malformed ('scores')" in text
    assert f"run `dvc repro render_attention@{model}` to rewrite it." in text
    assert f"`reports/figures/{model}/positions/{pos[0].maps}` is malformed" in text
    assert pos[0].title in image_captions(at)  # the figure is still shown beside the notice


def test_caches_follow_file_changes(copy, monkeypatch):
    at = open_page(copy, "leaderboard", monkeypatch)
    model = classifiers(copy)[0]
    path = copy / contract.METRICS_CSV
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[(df["model"] == model) & (df["variant"] == "best_epoch"), "test_acc"] = "0.4321"
    df.to_csv(path, index=False)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    at.run()
    assert_clean(at)
    assert at.table[0].value.loc[model, "best test"] == "0.4321"
