"""The GPU check, run for real in its tiny mode on the CPU, so that the script is known to work when a GPU is lent."""

import json
import math
import statistics
import subprocess
import sys

import numpy as np
import pytest
import torch
from launch import ROOT, execute

from modeling_vit_custom.bench.gpu_check import TINY, check_options, resolve_device

SCRIPT = str(ROOT / "scripts/gpu_check.py")
PEAK_TFLOPS = 2.0  # any known peak: on a CPU the harness knows none, and MFU is checked against it


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    return execute([sys.executable, SCRIPT, *args], timeout=300)


@pytest.fixture(scope="module")
def tiny_check(tmp_path_factory) -> tuple[list[list[str]], dict]:
    """The table's rows (cells) and the JSON of one tiny run on the CPU."""
    json_path = tmp_path_factory.mktemp("gpu_check") / "check.json"
    args = ("--tiny", "--device", "cpu", "--num_workers", "2", "--peak_tflops", str(PEAK_TFLOPS), "--json")
    result = gpu_check(*args, str(json_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| check | setting | ours | timm | ours/timm | MFU ours | MFU timm | result |")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    return rows, json.loads(json_path.read_text())


def positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_table_has_every_row_with_finite_positive_numbers(tiny_check):
    rows, result = tiny_check
    assert [row[0] for row in rows] == ["train step img/s"] * 4 + ["bf16 vs fp32 loss"] + ["DataLoader img/s"] * 2
    settings = [row[1] for row in rows[:4]]
    assert settings == [
        f"tiny ViT, batch {batch}, bf16 autocast, {mode}"
        for batch in (8, 16)
        for mode in ("eager", "compiled (aot_eager)")
    ]
    for row in rows[:4]:
        ours, timm, ratio = (float(cell) for cell in row[2:5])
        mfu = [float(cell.removesuffix("%")) for cell in row[5:7]]
        assert all(positive(v) for v in (ours, timm, ratio, *mfu)), row
    assert rows[4][-1] == f"pass (tolerance {100 * result['precision']['tolerance']:.0f}%)"
    assert rows[4][2] == f"{100 * result['precision']['max_relative_difference']:.2f}% max rel. diff " + (
        f"(step {result['precision']['at_step']})"
    )
    for row, transform in zip(rows[5:], ("eval", "train"), strict=True):
        assert row[1].startswith(f"{transform} transform, 2 workers, 160x120 JPEG -> 32, batch 8")
        assert positive(float(row[2])) and row[-1].endswith("% of ours' fastest train step")


def test_json_schema_and_training_numbers(tiny_check):
    _, result = tiny_check
    assert set(result) == {"machine", "settings", "peak_flops", "peak_flops_source", "training", "precision", "data"}
    assert result["settings"]["model"] == TINY.model and result["machine"]["device"] == "cpu"
    assert result["peak_flops"] == PEAK_TFLOPS * 1e12 and result["peak_flops_source"] == "--peak_tflops"
    training = result["training"]
    assert training["autocast"] == "bfloat16" and training["attention"] == {"ours": "sdpa", "timm_fused_attn": True}
    flops = training["flops_per_image"]
    assert positive(flops["ours"]) and positive(flops["timm"]) and flops["ours"] < flops["timm"]
    assert [(row["batch_size"], row["compiled"]) for row in training["rows"]] == [
        (8, False), (8, True), (16, False), (16, True)
    ]  # fmt: skip
    for row in training["rows"]:
        assert "error" not in row, row
        assert row["compile_backend"] == ("aot_eager" if row["compiled"] else None)
        for name in ("ours", "timm"):
            runs = row[f"{name}_runs"]
            assert len(runs) == TINY.repeats and all(positive(v) for v in runs)
            assert row[f"{name}_images_per_s"] == statistics.median(runs)
            expected_mfu = 3 * flops[name] * row[f"{name}_images_per_s"] / (PEAK_TFLOPS * 1e12)
            assert row[f"{name}_mfu"] == pytest.approx(expected_mfu, rel=1e-12)
        pairs = zip(row["ours_runs"], row["timm_runs"], strict=True)
        assert row["ratio"] == pytest.approx(statistics.median(a / b for a, b in pairs), rel=1e-12)
    for part in ("training", "precision", "data"):
        assert positive(result[part]["seconds"])


def test_bf16_against_fp32_is_computed_from_the_two_curves(tiny_check):
    _, result = tiny_check
    precision = result["precision"]
    fp32, bf16 = np.array(precision["fp32_losses"]), np.array(precision["bf16_losses"])
    assert len(fp32) == len(bf16) == TINY.precision_steps == precision["steps"]
    assert np.isfinite(fp32).all() and np.isfinite(bf16).all()
    assert not np.array_equal(fp32, bf16)  # autocast really ran in bf16
    window = precision["smoothing_window"]
    kernel = np.ones(window)

    def smoothed(curve):  # trailing mean, over the steps so far at the start
        counts = np.convolve(np.ones(len(curve)), kernel)[: len(curve)]
        return np.convolve(curve, kernel)[: len(curve)] / counts

    difference = np.abs(smoothed(bf16) - smoothed(fp32)) / smoothed(fp32)
    assert precision["max_relative_difference"] == pytest.approx(difference.max(), rel=1e-9)
    assert precision["at_step"] == difference.argmax() + 1
    assert 0 < precision["max_relative_difference"] <= precision["tolerance"]
    first, last = precision["fp32_smoothed_first_last"]
    assert first == pytest.approx(fp32[0]) and last == pytest.approx(fp32[-window:].mean())
    assert precision["fp32_learned"] is True and last < 0.8 * first
    assert precision["passed"] is True


def test_dataloader_rows(tiny_check):
    _, result = tiny_check
    data = result["data"]
    assert data["num_workers"] == 2 and data["jpeg_size"] == list(TINY.jpeg_size)
    assert [row["transform"] for row in data["rows"]] == ["eval", "train"]
    for row in data["rows"]:
        assert len(row["runs"]) == TINY.data_repeats and all(positive(v) for v in row["runs"])
        assert row["images_per_s"] == statistics.median(row["runs"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_by_name_before_any_work(tmp_path):
    json_path = tmp_path / "check.json"
    result = gpu_check("--device", "cuda", "--json", str(json_path))
    assert result.returncode == 2
    assert "--device cuda: expected a visible CUDA GPU, got none" in result.stderr
    assert "training ..." not in result.stderr and not json_path.exists()


def test_options_are_checked_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"--device cpu: the full check .* expected --device cuda, or --tiny"):
        resolve_device("cpu", tiny=False)
    with pytest.raises(ValueError, match="--device: expected 'cpu', 'cuda' or 'cuda:N', got 'gpu0'"):
        resolve_device("gpu0", tiny=True)
    assert resolve_device("cpu", tiny=True) == torch.device("cpu")
    with pytest.raises(ValueError, match="--num_workers: expected at least 1 DataLoader worker, got 0"):
        check_options(0, None)
    with pytest.raises(ValueError, match="--peak_tflops: expected a positive number of TFLOP/s, got -1"):
        check_options(1, -1.0)
    (tmp_path / "taken").write_text("a file where the folder goes")
    blocked = tmp_path / "taken" / "check.json"
    result = gpu_check("--tiny", "--device", "cpu", "--json", str(blocked))
    assert result.returncode == 2 and f"--json {blocked}: expected a file in a folder, got the file" in result.stderr
    assert "training ..." not in result.stderr
