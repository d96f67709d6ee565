"""The GPU benchmarks run on the CPU at tiny sizes, so that they cannot rot between GPU
sessions: every part runs, and its JSON says what the GPU run will fill in. Results go to
the test's folder (DIVERSYNTH_BENCHMARK_RESULTS), never over the recorded ones."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

NAME = "generate_variants_lossy_resume_gpu_smoke.json"


def run_benchmark(script: str, args: list[str], results: Path) -> None:
    env = {**os.environ, "PYTHONPATH": "src", "DIVERSYNTH_BENCHMARK_RESULTS": str(results)}
    result = subprocess.run([sys.executable, f"benchmarks/{script}", *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=280)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
def test_generate_benchmark_study_on_the_cpu(tmp_path: Path) -> None:
    variants = "eager,compile+vae+cudnn+batch16"
    run_benchmark("generate_gpu.py", ["--tiny", "--variants", variants, "--lossy",
                                      "--resume-check"], tmp_path)  # fmt: skip
    assert not (REPO / "benchmarks" / "results" / NAME).exists()  # the repo is left alone
    data = json.loads((tmp_path / NAME).read_text())

    rows = {row["variant"]: row for row in data["variants"]}
    assert list(rows) == variants.split(",")
    assert rows["eager"]["batch"] == 8 and rows["eager"]["over_plain"] > 0
    assert rows["eager"]["warmup_seconds"] > 0 and len(rows["eager"]["rounds"]) == 1
    gpu_only = rows["compile+vae+cudnn+batch16"]
    assert gpu_only["batch"] == 16 and gpu_only["settings"]["sdpa_kernel"] == "cudnn"
    assert "GPU settings" in gpu_only["skipped"]  # left off on the CPU
    assert data["attention_seconds"]["auto_picks"]
    assert 0 < data["eager_parts_seconds"]["text_encode_share"] < 1

    lossy = {row["setting"]: row for row in data["lossy"]["rows"]}
    assert data["lossy"]["reference"]["images_per_second"] > 0
    for name in ("dpm++20", "dpm++25", "pab"):
        row = lossy[name]
        assert row["over_default"] > 0, row
        for key in ("psnr_db_mean", "psnr_db_min"):  # inf for identical images
            assert math.isfinite(row[key]) or row[key] == math.inf, row
        assert row["psnr_db_min"] <= row["psnr_db_mean"]
    assert lossy["dpm++20"]["scheduler"] == "DPMSolverMultistepScheduler"
    assert "skipped" in lossy["fp8"]  # no torchao, or no fp8 GPU

    check = data["resume_check"]
    assert check["killed_mid_shard"] and check["identical"], check
    assert check["shards_remade_on_resume"] == 1 and check["different"] == []


@pytest.mark.slow
def test_training_benchmarks_on_the_cpu(tmp_path: Path) -> None:
    """train_speed.py (aux BN against plain BN; both input paths alone and feeding the
    model) and aux_bn_kernels.py (profiles, one-layer times) at tiny sizes."""
    tiny = ["--model", "test_resnet", "--batch", "8", "--size", "32"]
    run_benchmark("train_speed.py", [*tiny, "--steps", "2", "--rounds", "1", "--images", "64",
                                     "--workers", "1", "--only", "eager", "--only", "loader"],
                  tmp_path)  # fmt: skip
    speed = json.loads((tmp_path / "train_speed_cpu_eager_loader.json").read_text())
    assert speed["aux_bn_eager"]["aux_over_plain"] > 0
    assert "aux_aten" not in speed["aux_bn_eager"]["images_per_second"]  # GPU only
    loader = speed["data_loader"]
    for path in ("workers", "device"):
        assert loader["images_per_second"][f"loader_alone_decode_on_{path}"] > 0, loader
        assert loader["fed_over_resident"][path] > 0, loader
    run_benchmark("aux_bn_kernels.py", tiny, tmp_path)
    kernels = json.loads((tmp_path / "aux_bn_kernels_cpu.json").read_text())
    for label in ("plain", "aux", "aux_aten"):
        assert kernels[label]["step_ms"] > 0 and kernels[label]["top_kernels"]
    assert all(row["aux_aten_over_plain_time"] > 0 for row in kernels["one_layer_fwd_bwd"].values())
