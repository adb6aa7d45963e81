"""The throughput benchmark runs end to end and reports self-consistent numbers."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gemm_ceiling import matmul_flops, products_seconds, record_products
from benchmarks.throughput import train_step
from vitlab.vit.flops import forward_flops
from vitlab.vit.models import build_model

ROOT = Path(__file__).resolve().parents[1]
PEERS = ["stock", "hf_fp32", "hf_bf16", "compiled_stock"]
PATHS = [*PEERS, "fast_fp32", "fast_bf16"]


def test_throughput_benchmark_writes_its_table(tmp_path):
    """Every path is quoted (or says why not), ratios are rate quotients, shares lie in (0, 1).

    Wall-clock figures are never asserted: only the table's consistency with itself.
    """
    out = tmp_path / "bench"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.throughput",
        "--models",
        "vitlab_micro_16,vitlab_micro_32",
        "--image-size",
        "32",
        "--batch",
        "8",
        "--steps",
        "1",
        "--round-seconds",
        "0.05",
        "--rounds",
        "3",
        "--warmup",
        "1",
        "--out",
        str(out),
    ]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, timeout=900)
    result = json.loads((out / "throughput.json").read_text())
    peak = result["matmul_peak_tflops"]
    assert peak["fp32"] > 0 and peak["bf16"] > 0
    hf_installed = importlib.util.find_spec("transformers") is not None
    assert (result["transformers"] is not None) == hf_installed
    assert [r["model"] for r in result["models"]] == ["vitlab_micro_16", "vitlab_micro_32"]
    for row in result["models"]:
        rates, errors = row["img_s"], row["errors"]
        assert row["rounds"] == 3 and row["steps_per_round"] >= 1
        assert list(rates) == PATHS
        for path in PATHS:  # a rate, or (a peer only) the reason it has none
            assert (rates[path] is None) == (path in errors)
            assert rates[path] is None or rates[path] > 0
        assert all(rates[p] is not None for p in ("stock", "fast_fp32", "fast_bf16"))
        for path in ("hf_fp32", "hf_bf16"):
            assert (rates[path] is not None) if hf_installed else errors[path] == "not installed"
        assert (row["compile_s"] is not None) == (rates["compiled_stock"] is not None)
        assert row["compile_s"] is None or row["compile_s"] > 0
        if hf_installed:  # HF's classifier has no pooler: the layouts match tensor for tensor
            assert row["parameters"]["hf"] == row["parameters"]["vitlab"] > 0
        bf16 = row["fast_path"].endswith("bf16")
        assert row["fast_img_s"] == rates["fast_bf16" if bf16 else "fast_fp32"]
        ran = [p for p in PEERS if rates[p] is not None]
        assert list(row["fast_over"]) == ran
        for path in ran:
            quotient = row["fast_img_s"] / rates[path]
            assert row["fast_over"][path] == pytest.approx(quotient, rel=0.01, abs=0.011)
        assert row["best_peer"] == max(ran, key=rates.__getitem__)
        best = row["fast_img_s"] / rates[row["best_peer"]]
        assert row["fast_over_best_peer"] == pytest.approx(best, rel=0.01, abs=0.011)
        assert set(row["util"]) == {p for p in PATHS if rates[p] is not None}
        shares = [*row["util"].values(), row["fast_util"], row["fast_util_top_peak"]]
        assert all(0 < u < 1 for u in shares)
        assert row["fast_util"] == row["util"]["fast_bf16" if bf16 else "fast_fp32"]
        assert row["fast_util_top_peak"] <= row["fast_util"]  # the top peak is the higher one
        # the step runs its products and more: alone they reach a higher share, still below 1
        assert row["fast_util_top_peak"] < row["fast_util_ceiling"] < 1
        aim = row["aim"]
        meets = row["fast_over_best_peer"] >= aim["fast_over_best_peer"] and (
            aim["fast_util_top_peak"] is None
            or row["fast_util_top_peak"] >= aim["fast_util_top_peak"]
        )
        assert row["meets_aim"] == meets
    fastest = max(r["fast_img_s"] for r in result["models"])
    ratio = result["data_path_img_s"] / fastest
    assert result["data_vs_fastest_training"] == pytest.approx(ratio, abs=0.011)
    table = (out / "throughput.md").read_text()
    for header in ("stock", "HF fp32", "HF bf16", "compiled stock", "vitlab fast", "best peer"):
        assert f"| {header} |" in table
    for model in ("vitlab_micro_16", "vitlab_micro_32"):
        assert f"| {model} | 32 | 8 |" in table
    for row in result["models"]:  # the speed aim's column says the speed aim alone
        speed_met = row["fast_over_best_peer"] >= row["aim"]["fast_over_best_peer"]
        assert f"| {row['fast_over_best_peer']}x | {'yes' if speed_met else 'no'} |" in table
    failed = any(e != "not installed" for r in result["models"] for e in r["errors"].values())
    assert ("## Peers that did not run" in table) == failed


def test_catr_caption_benchmark_writes_its_table(tmp_path):
    """A tiny CATR through the whole benchmark: a caption, its maps, both loops timed."""
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "benchmarks.catr_caption", "--tiny", "--release-tokens", "2",
           "--threads", "1", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, timeout=600)
    r = json.loads((out / "catr.json").read_text())
    assert 1 <= r["tokens"] <= 127 and r["grid"] == [19, 19]
    assert r["maps_shape"] == [r["tokens"], 19, 19]
    per_token = r["greedy_s"] / r["tokens"] * 1000
    assert r["speedup_vs_release"] == pytest.approx(r["release_ms_per_token"] / per_token)
    assert r["image_s"] == pytest.approx(r["encode_s"] + r["greedy_s"] + r["maps_s"])
    assert f"| **one image** | **{r['image_s']:.2f}** |" in (out / "catr.md").read_text()


def test_true_size_benchmark_runs_every_stage_and_extrapolates(tmp_path):
    """The real profile's DAG (micro models) on an archive served on 127.0.0.1: every stage
    runs, the model passes are what the stages did, and the extrapolation follows from them."""
    from benchmarks.dag_profile import stage_order

    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "benchmarks.true_size", "--tiny", "--out", str(out)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, timeout=900)
    r = json.loads((out / "true_size.json").read_text())
    stages = {row["stage"]: row for row in r["stages"]}
    s = r["settings"]
    repo = [st.partition("@") for st in stage_order(ROOT)]  # every stage of dvc.yaml, each model
    expected = {k for k, at, _ in repo if not at} | {
        f"{k}@{model}" for k, at, _ in repo if at for model in s["batches"]
    }
    assert sorted(stages) == sorted(expected) and len(stages) == len(r["stages"])
    assert s["splits"] == {"train": 37, "val": 37, "test": 37}  # 2 + 1 a breed, 1 of 2 to val
    assert r["full_study"]["splits"] == {"train": 2944, "val": 736, "test": 3669}
    for key in ("M16", "M32"):
        batch, epochs = s["batches"][key], s["epochs"]
        train = stages[f"train@{key}"]
        assert train["passes"] == {"train": epochs * (37 // batch * batch), "forward": epochs * 37}
        assert train["full_passes"] == {"train": 30 * 2944, "forward": 30 * 736}
        assert 3 <= stages[f"evaluate@{key}"]["passes"]["forward"] / (37 + 37) <= 5  # distinct
        assert 1 <= stages[f"average@{key}"]["passes"]["forward"] / 37 <= 3  # greedy steps
        assert stages[f"render_attention@{key}"]["passes"]["forward"] == 2 * 3 * 37
        for name in ("train", "evaluate", "average", "render_attention"):
            row = stages[f"{name}@{key}"]
            gflop = row["gflop_per_image"]
            ran, full = row["passes"], row["full_passes"]
            assert row["tflop"] == pytest.approx(
                (3 * ran["train"] + ran["forward"]) * gflop / 1e3, rel=0.01
            )
            assert row["full_tflop"] > row["tflop"]  # the full study is larger
            assert row["full_cpu_hours"] * 3600 > row["seconds"]
            assert full["train"] + full["forward"] > ran["train"] + ran["forward"]
            assert row["full_gpu_hours"] is None  # no GPU rates given: unmeasured, not guessed
        mem = r["training_memory_gib"][key]
        assert mem["saved_mib_per_image"] > 0 and mem["gib"] > 0
    for row in r["stages"]:
        if row["stage"].partition("@")[0] in ("select", "summarize", "render_positions"):
            assert row["tflop"] == 0 and row["full_cpu_hours"] * 3600 == pytest.approx(
                row["seconds"], rel=0.01
            )
    assert r["full_study"]["gpu_hours"] is None
    assert r["full_study"]["cpu_days"] == pytest.approx(
        sum(x["full_cpu_hours"] for x in r["stages"]) / 24, rel=0.01
    )
    table = (out / "true_size.md").read_text()
    assert all(f"| {name} |" in table for name in stages)
    assert "H100/H200: unmeasured" in table


def test_offline_oxford_archives_read_as_the_real_set(tmp_path, monkeypatch):
    """The stand-in archives, downloaded over loopback HTTP, index as the real set does: the 37
    breeds in CLASS-ID order, labels from the lists, and trimaps whose pet region holds the pet."""
    import numpy as np
    from PIL import Image

    from benchmarks import offline
    from vitlab.sources.oxford import class_name, fetch_oxford

    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    md5s = offline.oxford_archives(tmp_path / "served", trainval=2, test=1)
    with offline.serve(tmp_path / "served") as base:
        ds = fetch_oxford(
            images_url=f"{base}/images.tar.gz",
            images_md5=md5s["images.tar.gz"],
            annotations_url=f"{base}/annotations.tar.gz",
            annotations_md5=md5s["annotations.tar.gz"],
            cache_dir=tmp_path / "cache",
            out_root=tmp_path / "raw",
            val_fraction=0.2,
            seed=0,
        )
    assert (
        ds.classes == sorted(offline.CATS + offline.DOGS, key=str.lower) and len(ds.classes) == 37
    )
    assert ds.mask_format == "trimap" and len(ds.samples) == 37 * 3
    assert sum(s.split == "test" for s in ds.samples) == 37
    for s in ds.samples:
        assert ds.classes[s.label] == class_name(Path(s.image).stem)
        with Image.open(tmp_path / "raw" / s.image) as im:
            assert im.format == "JPEG" and im.size == offline.PHOTO
        trimap = np.asarray(Image.open(tmp_path / "raw" / s.mask))
        assert set(np.unique(trimap)) == {1, 2, 3}
        assert 0.05 < (trimap == 1).mean() < 0.6  # an animal, not the whole frame


def test_the_ceiling_replays_every_product_of_forward_and_backward():
    """The products recorded from one training step are the model's matmuls three times over
    (forward, and the gradients of both operands), and replaying them takes time."""
    cpu = torch.device("cpu")
    step = train_step("fast_bf16", "vitlab_micro_16", 32, 4, cpu, compile_fast=False)
    calls = record_products(step)
    model = build_model("vitlab_micro_16", num_classes=37, image_size=32)
    patches, channels, patch, dim = 16, 3, 8, 32
    embedding = 2 * patches * channels * patch * patch * dim  # a convolution: not a matmul
    assert matmul_flops(calls) == 4 * 3 * (forward_flops(model, 32) - embedding)
    dtypes = {a.dtype for _, args, _ in calls for a in args if hasattr(a, "dtype")}
    assert dtypes == {torch.bfloat16}  # as autocast gave them to the kernels
    assert products_seconds(calls, cpu, rounds=2) > 0


def test_dag_profile_times_each_stage_of_one_real_repro(tmp_path):
    """One `dvc repro` of two stages in a scratch git repo: each stage's seconds and the peak
    memory of its own process, the second stage's 300 MiB included, the first's not."""
    from benchmarks.dag_profile import profile_repro

    py = sys.executable
    stages = {
        "small": {"cmd": f"{py} -c \"import time; time.sleep(1); open('a', 'w').write('a')\"",
                  "outs": ["a"]},
        "big": {"cmd": f"{py} -c \"import time; b = b'x' * (300 << 20); time.sleep(0.5); "
                       "open('b', 'w').write('b')\"",
                "deps": ["a"], "outs": ["b"]},
    }  # fmt: skip
    (tmp_path / "dvc.yaml").write_text(json.dumps({"stages": stages}))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([py, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    seconds, rows = profile_repro([py, "-m", "dvc", "repro"], tmp_path, {**os.environ})
    assert [r["stage"] for r in rows] == ["small", "big"]
    assert rows[0]["seconds"] >= 1 and rows[1]["seconds"] >= 0.5
    assert seconds > rows[0]["seconds"] + rows[1]["seconds"] - 0.2  # rows are rounded
    assert rows[1]["peak_rss_mib"] >= 300 > rows[0]["peak_rss_mib"] > 0
    assert (tmp_path / "b").read_text() == "b"
