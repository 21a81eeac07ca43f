"""Tests of the export: ONNX with dynamic batch and size checked against the eager model, int8, and refusals."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG
from launch import execute
from PIL import Image

from modeling_vit_custom import ViTCustomConfig, ViTCustomForImageClassification
from modeling_vit_custom.image_processing import PreprocessSettings
from modeling_vit_custom.interop.export import (
    TOLERANCE,
    ExportError,
    LogitsOnly,
    check_sizes,
    export_model,
    runner,
    verify,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
LABELS = {0: "red", 1: "green", 2: "blue"}


def save_model(folder: Path, seed: int = 0, **overrides) -> Path:
    torch.manual_seed(seed)
    config = ViTCustomConfig(**{**TINY_CONFIG, "num_labels": 3, "id2label": LABELS, **overrides})
    ViTCustomForImageClassification(config).save_pretrained(folder)
    PreprocessSettings(image_size=config.image_size).to_image_processor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("onnx")
    model_dir = save_model(root / "model")
    report = export_model(model_dir, "onnx", root / "out" / "model.onnx")
    return model_dir, root / "out" / "model.onnx", report


def test_onnx_matches_the_eager_model_at_any_batch_and_size(onnx_file):
    model_dir, path, report = onnx_file
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # nothing staged is left
    assert [(c["batch"], c["height"], c["width"]) for c in report["checks"]] == [(1, 32, 32), (3, 48, 40), (2, 24, 56)]
    assert all(c["max_abs_diff"] <= TOLERANCE for c in report["checks"])
    model = ViTCustomForImageClassification.from_pretrained(model_dir).eval()
    run = runner(path, "onnx")
    for batch, height, width in [(5, 16, 16), (1, 64, 40), (7, 32, 32)]:  # none of them the checked ones
        pixel_values = torch.randn(batch, 3, height, width)
        with torch.no_grad():
            expected = LogitsOnly(model)(pixel_values).numpy()
        assert np.abs(run(pixel_values) - expected).max() <= TOLERANCE, (batch, height, width)


def test_verification_refuses_a_file_of_other_weights(onnx_file, tmp_path):
    _, path, _ = onnx_file
    other = ViTCustomForImageClassification.from_pretrained(save_model(tmp_path / "other", seed=1)).eval()
    with pytest.raises(ExportError, match=r"onnx: expected logits within 0.0001 of the eager model at batch 1"):
        verify(path, "onnx", other)


def test_check_sizes_cover_the_native_size_and_the_conv_stem_rounding(tiny_config):
    assert check_sizes(tiny_config()) == [(1, 32, 32), (3, 48, 40), (2, 24, 56)]
    # A stem of 2 convolutions: 4 pixels a token, and odd sizes that it rounds up.
    assert check_sizes(tiny_config(conv_stem_depth=2, patch_size=4, hidden_size=64)) == [
        (1, 32, 32),
        (3, 40, 37),
        (2, 29, 44),
    ]


def test_torch_export_and_a_conv_stem_export_at_any_size(tmp_path):
    """torch.export with dynamic height and width, including the model's own size, and the ONNX graph of a conv stem
    at odd sizes, whose token grid rounds up: both verified within the tolerance."""
    linear = save_model(tmp_path / "linear")
    report = export_model(linear, "torch_export", tmp_path / "out" / "model.pt2")
    assert all(c["max_abs_diff"] <= TOLERANCE for c in report["checks"])
    stem = save_model(tmp_path / "stem", conv_stem_depth=2, patch_size=4)
    report = export_model(stem, "onnx", tmp_path / "out" / "stem.onnx")
    assert [(c["height"], c["width"]) for c in report["checks"]] == [(32, 32), (40, 37), (29, 44)]
    assert all(c["max_abs_diff"] <= TOLERANCE for c in report["checks"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.pt2", "stem.onnx"]


ZOO_FEATURES = {
    "siglip": {"class_token": False, "pooling": "map", "hidden_act": "gelu_pytorch_tanh"},
    "dinov2_registers": {"num_register_tokens": 4, "prefix_position_embeddings": False, "layer_scale_init_value": 0.1},
    "aimv2": {"class_token": False, "pooling": "mean", "norm_type": "rms_norm", "mlp_type": "gated",
              "hidden_act": "silu", "proj_bias": False, "patch_norm": True, "qk_norm": True},
}  # fmt: skip


@pytest.mark.parametrize("fmt", ["onnx", "torch_export"])
@pytest.mark.parametrize("variant", ZOO_FEATURES)
def test_models_with_zoo_features_export_and_verify_at_three_sizes(tmp_path, variant, fmt):
    model_dir = save_model(tmp_path / variant, **ZOO_FEATURES[variant])
    output = tmp_path / "out" / ("model.onnx" if fmt == "onnx" else "model.pt2")
    report = export_model(model_dir, fmt, output)
    assert [(c["height"], c["width"]) for c in report["checks"]] == [(32, 32), (48, 40), (24, 56)]
    assert all(c["max_abs_diff"] <= TOLERANCE for c in report["checks"])


def test_bad_requests_are_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"--output: expected a .pt2 file for --format torch_export, got x.onnx"):
        export_model(tmp_path, "torch_export", "x.onnx")
    with pytest.raises(ValueError, match=r"--int8: expected --format onnx \(onnxruntime quantizes\), got torch_ex"):
        export_model(tmp_path, "torch_export", "x.pt2", int8=True)
    with pytest.raises(ValueError, match=r"--format: expected one of \['onnx', 'torch_export'\], got 'tflite'"):
        export_model(tmp_path, "tflite", "x.tflite")
    with pytest.raises(FileNotFoundError, match="model_dir: expected a saved model folder with config.json"):
        export_model(tmp_path, "onnx", tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_script_writes_int8_and_measures_it(tmp_path):
    model_dir = save_model(tmp_path / "model")
    rng = np.random.default_rng(0)
    for c, label in LABELS.items():
        (tmp_path / "val" / label).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 90, size=(36, 40, 3), dtype=np.uint8)
            pixels[..., c] += 140
            Image.fromarray(pixels).save(tmp_path / "val" / label / f"{i}.png")
    output = tmp_path / "out" / "model.int8.onnx"
    command = [sys.executable, str(REPO_ROOT / "scripts" / "export.py"), str(model_dir), "--format", "onnx",
               "--int8", "--output", str(output), "--measure", str(tmp_path / "val"), "--batch_size", "4"]  # fmt: skip
    process = execute(command, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    assert sorted(p.name for p in output.parent.iterdir()) == ["model.int8.onnx"]
    lines = process.stdout.splitlines()
    assert lines[0].startswith("| file | MB | images/s | speed-up | top-1 |")
    fp32_row, int8_row = lines[2].split("|"), lines[3].split("|")
    assert fp32_row[1].strip() == "fp32" and fp32_row[4].strip() == "1.00x" and fp32_row[6].strip() == "100.00%"
    assert int8_row[1].strip() == "int8" and float(int8_row[2]) < float(fp32_row[2])  # smaller file
    assert fp32_row[5].strip().endswith("%")  # the folder names are labels: top-1 is counted
    assert "12 images." in process.stdout and lines[-1] == str(output)
    assert "within 0.0001 at 1 x 32 x 32, 3 x 48 x 40, 2 x 24 x 56" in process.stderr
    model = ViTCustomForImageClassification.from_pretrained(model_dir).eval()
    pixel_values = torch.randn(2, 3, 40, 32)
    with torch.no_grad():
        expected = LogitsOnly(model)(pixel_values).numpy()
    assert np.abs(runner(output, "onnx")(pixel_values) - expected).max() < 0.05  # int8: close, not exact


def test_export_errors_are_one_line_whatever_the_message():
    """torch.export's second line, or the only line there is; an empty message gives the error's type."""
    from modeling_vit_custom.interop.export import message_line

    assert message_line(RuntimeError("summary\n\n  detail line\nmore"), 1) == "detail line"
    assert message_line(RuntimeError("only one line"), 1) == "only one line"
    assert message_line(RuntimeError(""), 0) == "RuntimeError"
