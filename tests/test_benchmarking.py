"""Tests of the benchmarking helpers on tiny ViTs: interleaving, FLOPs against the analytic count, schema, memory."""

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from modeling_vit_custom.bench.compare import METRIC_UNITS, compare, load_eval_dataset, plot_ratios, top_k_accuracy
from modeling_vit_custom.bench.harness import (
    Timing,
    build_pair,
    count_gflops,
    example_batch,
    interleaved_throughput,
    paired_ratio,
    peak_flops_of,
    peak_memory_mb,
)
from modeling_vit_custom.bench.loop import model_only_images_per_s
from modeling_vit_custom.bench.throughput import benchmark, format_benchmark
from modeling_vit_custom.files import write_json

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4, "num_classes": 10}


def test_interleaved_timer_alternates_order_and_reports_medians():
    calls = []

    def step(name, seconds):
        def run():
            calls.append(name)
            time.sleep(seconds)

        return run

    timings = interleaved_throughput(
        {"ours": step("ours", 0.01), "timm": step("timm", 0.02)}, batch_size=4, warmup=1, repeats=4, iters=2
    )
    # Warm-up once each, then repeats alternating ours-first and timm-first, `iters` calls per turn.
    forward, backward = ["ours"] * 2 + ["timm"] * 2, ["timm"] * 2 + ["ours"] * 2
    assert calls == ["ours", "timm"] + forward + backward + forward + backward
    assert len(timings["ours"].images_per_s) == len(timings["timm"].images_per_s) == 4
    assert timings["ours"].median == statistics.median(timings["ours"].images_per_s)
    # 8 images per 2 x 10 ms is at most 400 images/s; sleeping overshoots, never undershoots.
    assert 200 < timings["ours"].median <= 400 and 100 < timings["timm"].median <= 200
    assert 1.5 < timings["ours"].median / timings["timm"].median < 2.5
    assert 1.5 < paired_ratio(timings) < 2.5
    skewed = {"ours": Timing([10.0, 1.0, 10.0]), "timm": Timing([5.0, 1.0, 4.0])}
    assert paired_ratio(skewed) == 2.0  # per-repeat ratios 2.0, 1.0, 2.5


def test_interleaved_timer_rejects_bad_counts():
    with pytest.raises(ValueError, match="repeats"):
        interleaved_throughput({"ours": lambda: None}, batch_size=1, repeats=0)


def test_flops_match_the_analytic_count():
    ours, timm_model = build_pair(TINY)
    pixel_values, _ = example_batch(ours, 2)
    T, N, D, inner, classes, patch = 17, 16, 64, 256, 10, 8 * 8 * 3
    layer = 2 * T * D * 3 * D + 4 * T * T * D + 2 * T * D * D + 4 * T * D * inner  # qkv, q@k and a@v, proj, MLP
    # When classifying, our last layer projects keys and values for all tokens, and the query, attention output,
    # proj and MLP for the class token only.
    last = 2 * T * D * 2 * D + 2 * D * D + 4 * T * D + 2 * D * D + 4 * D * inner
    embed_and_head = 2 * N * patch * D + 2 * D * classes
    assert count_gflops(timm_model, pixel_values) * 1e9 == embed_and_head + 2 * layer
    assert count_gflops(ours, pixel_values) * 1e9 == embed_and_head + layer + last


def test_compare_schema_and_values():
    result = compare(TINY, batch_size=2, warmup=1, repeats=3, measure_memory=False)
    assert set(result) >= {"timm_model", "batch_size", "machine", "rows"}
    assert result["batch_size"] == 2 and isinstance(result["timm_model"], str)
    assert {"cpu", "torch_threads", "torch"} <= set(result["machine"])
    rows = {row["metric"]: row for row in result["rows"]}
    assert list(rows) == ["parameters", "gflops", "inference_images_per_s", "train_images_per_s", "max_abs_logit_diff"]
    for row in result["rows"]:
        assert set(row) == {"metric", "ours", "timm", "ratio", "unit"} and row["unit"] == METRIC_UNITS[row["metric"]]
        assert all(isinstance(row[k], float) for k in ("ours", "timm", "ratio"))
    # Patch projection, class token, 17 positions, 2 x (2 norms, qkv, proj, fc1, fc2), final norm, head.
    parameters = 192 * 64 + 64 + 64 + 17 * 64 + 2 * (4 * 64 + 64 * 192 + 192 + 64 * 64 + 64 + 2 * 64 * 256 + 256 + 64)
    parameters += 2 * 64 + 64 * 10 + 10
    assert (
        rows["parameters"]["ours"] == rows["parameters"]["timm"] == parameters and rows["parameters"]["ratio"] == 1.0
    )
    diff = rows["max_abs_logit_diff"]
    assert diff["ours"] == diff["timm"] < 1e-5 and diff["ratio"] == 1.0
    speed = rows["train_images_per_s"]
    runs = result["timing"]["train_images_per_s"]
    assert speed["ours"] == statistics.median(runs["ours"]) and speed["timm"] == statistics.median(runs["timm"])
    assert speed["ratio"] == statistics.median(a / b for a, b in zip(runs["ours"], runs["timm"], strict=True))
    assert len(result["timing"]["train_images_per_s"]["ours"]) == 3
    json.dumps(result)


@pytest.mark.slow
def test_training_peak_memory_grows_with_batch():
    spec = {"img_size": 64, "patch_size": 8, "embed_dim": 128, "depth": 2, "num_heads": 4, "num_classes": 10}
    small, large = peak_memory_mb(spec, 2, steps=1), peak_memory_mb(spec, 32, steps=1)
    # Activations and gradients of batch 32 (65 tokens of width 128, ~1 MiB per tensor) need megabytes more.
    for which in ("ours", "timm"):
        assert 0 <= small[which] < large[which] and large[which] - small[which] > 5


def _image_folder(root, count=6):
    generator = torch.Generator().manual_seed(0)
    for i in range(count):
        label = f"class{i % 2}"
        (root / label).mkdir(parents=True, exist_ok=True)
        pixels = torch.randint(0, 256, (40, 48, 3), generator=generator, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def test_top_k_accuracy_is_the_same_for_same_weights_and_matches_manual(tmp_path):
    ours, timm_model = build_pair(TINY)
    dataset = load_eval_dataset(_image_folder(tmp_path / "images"))
    assert len(dataset) == 6
    transform = create_transform(**resolve_data_config({"input_size": (3, 32, 32)}, model=timm_model))
    accuracy = top_k_accuracy({"ours": ours, "timm": timm_model}, dataset, transform, batch_size=4)
    assert accuracy["ours"] == accuracy["timm"]
    with torch.no_grad():
        logits = timm_model(torch.stack([transform(image.convert("RGB")) for image in dataset["image"]]))
    labels = torch.tensor(dataset["label"])
    assert accuracy["timm"]["top1"] == (logits.argmax(-1) == labels).float().mean().item()
    top5 = (logits.topk(5, -1).indices == labels[:, None]).any(-1).float().mean().item()
    assert accuracy["timm"]["top5"] == pytest.approx(top5)


def test_compare_with_a_parquet_dataset_adds_top_k_rows(tmp_path):
    images = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(3)]
    datasets.Dataset.from_dict({"image": images, "label": [0, 1, 2]}).to_parquet(tmp_path / "eval.parquet")
    result = compare(
        TINY, batch_size=2, warmup=0, repeats=1, measure_memory=False, dataset_path=tmp_path / "eval.parquet"
    )
    rows = {row["metric"]: row for row in result["rows"]}
    assert rows["top1"]["ours"] == rows["top1"]["timm"] and rows["top1"]["ours"] in (0.0, 1 / 3, 2 / 3, 1.0)
    assert rows["top5"]["ours"] >= rows["top1"]["ours"]
    with pytest.raises(ValueError, match="expected an image folder or a .parquet file"):
        load_eval_dataset(tmp_path / "missing.csv")


def test_plot_and_json_are_written(tmp_path):
    result = {
        "timm_model": "x",
        "batch_size": 1,
        "rows": [{"metric": "gflops", "ours": 1.0, "timm": 2.0, "ratio": 0.5, "unit": "GFLOPs"}],
    }
    plot_ratios(result, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_json(result, tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text()) == result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chart.png", "out.json"]


def test_benchmark_rows_and_table():
    result = benchmark([(TINY, 2)], warmup=1, repeats=3, measure_memory=False)
    assert [(row["mode"], row["compiled"]) for row in result["rows"]] == [("inference", False), ("train", False)]
    for row in result["rows"]:
        assert row["ratio"] == statistics.median(
            a / b for a, b in zip(row["ours_runs"], row["timm_runs"], strict=True)
        )
        assert len(row["ours_runs"]) == len(row["timm_runs"]) == 3
    table = format_benchmark(result)
    assert table.count("\n| VisionTransformer(") == 2 and "Machine: cpu:" in table


def test_data_benchmark_prints_one_row_per_pipeline_against_naive():
    script = Path(__file__).resolve().parents[1] / "scripts/benchmark_data.py"
    args = ["--num_images", "6", "--batch_size", "4", "--repeats", "1", "--sizes", "96x64", "64x96"]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=True)
    for size in ("96x64", "64x96"):
        table = done.stdout.split(f"{size} JPEG, quality 90, 6 images in batches of 4")[1].split("\n\n")[0]
        rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and line.endswith("x |")]
        assert rows[0][0] == "| naive: PIL open -> RandomResizedCrop -> ToTensor"
        assert len(rows) == 6 and rows[0][2] == "1.00x |"
        assert all(float(row[1]) > 0 for row in rows)


@pytest.mark.slow
def test_loop_benchmark_times_the_real_quickstart_loop_against_its_model_step(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts/benchmark_loop.py"
    args = ["--recipes", "quickstart", "--quickstart_steps", "40", "--num_threads", "1",
            "--json", str(tmp_path / "loop.json")]  # fmt: skip
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads((tmp_path / "loop.json").read_text())["rows"]
    assert row["in_memory"] and row["batch_size"] == 64 and row["train_images"] == 40 * 64
    assert 0.1 < row["ratio"] < 2 and row["ratio"] == row["loop_images_per_s"] / row["model_only_images_per_s"]
    assert row["phase_seconds"]["evaluation"] > 0 and row["phase_seconds"]["forward_backward"] > 0
    line = next(line for line in done.stdout.splitlines() if line.startswith("| quickstart | 64 | in memory | 2560 |"))
    shares = [float(cell.strip().rstrip("%")) for cell in line.split("|")[8:13]]
    assert sum(shares) == pytest.approx(100, abs=0.3)


def test_the_model_only_step_leaves_denormal_floats_as_it_found_them():
    """It flushes them to zero while it times (a model trained on one batch over and over can sink into them), and
    turns that off again: the process's own arithmetic keeps them."""
    quickstart = str(Path(__file__).resolve().parents[1] / "configs/quickstart.yaml")
    images_per_s, batch = model_only_images_per_s(["--config", quickstart], num_classes=10, steps=2, warmup=1)
    assert images_per_s > 0 and batch == 64
    smallest_normal = torch.finfo(torch.float32).tiny
    assert (torch.tensor(smallest_normal) / 4).item() == smallest_normal / 4 > 0  # 2^-128: exact, not flushed


def test_peak_flops_match_the_device_name_word_for_word():
    """torch.cuda.get_device_name strings: the L40S is not an L4, a PCIe H100 is not the SXM part."""
    assert peak_flops_of("NVIDIA L40S") == 362e12
    assert peak_flops_of("NVIDIA L4") == 121e12
    assert peak_flops_of("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_of("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_of("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_of("NVIDIA A10G") is None
