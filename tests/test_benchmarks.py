"""The throughput benchmark runs end to end and reports self-consistent numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_benchmark_writes_its_table(tmp_path):
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
        "--rounds",
        "3",
        "--warmup",
        "1",
        "--out",
        str(out),
    ]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, timeout=600)
    result = json.loads((out / "throughput.json").read_text())
    peak = result["matmul_peak_tflops"]
    assert peak["fp32"] > 0 and peak["bf16"] > 0
    assert [r["model"] for r in result["models"]] == ["vitlab_micro_16", "vitlab_micro_32"]
    for row in result["models"]:
        assert row["stock_img_s"] > 0 and row["fast_fp32_img_s"] > 0 and row["fast_bf16_img_s"] > 0
        bf16 = row["fast_path"].endswith("bf16")
        assert row["fast_img_s"] == row["fast_bf16_img_s" if bf16 else "fast_fp32_img_s"]
        assert row["speedup"] == pytest.approx(row["fast_img_s"] / row["stock_img_s"], abs=0.011)
        assert 0 < row["stock_util_fp32_peak"] < 1 and 0 < row["fast_util_peak"] < 1
    fastest = max(r["fast_img_s"] for r in result["models"])
    ratio = result["data_path_img_s"] / fastest
    assert result["data_vs_fastest_training"] == pytest.approx(ratio, abs=0.011)
    table = (out / "throughput.md").read_text()
    assert "| vitlab_micro_16 | 32 | 8 |" in table and "| vitlab_micro_32 | 32 | 8 |" in table
