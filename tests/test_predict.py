"""Tests of bulk prediction: the script's rows equal the image-classification pipeline's, bad files are listed."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG
from launch import execute
from PIL import Image
from transformers import pipeline

from modeling_vit_custom import ViTCustomConfig, ViTCustomForImageClassification
from modeling_vit_custom.image_processing import PreprocessSettings
from modeling_vit_custom.inference.predict import predict

REPO_ROOT = Path(__file__).resolve().parent.parent
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    config = ViTCustomConfig(**{**TINY_CONFIG, "id2label": dict(enumerate(LABELS))})
    ViTCustomForImageClassification(config).save_pretrained(folder)
    PreprocessSettings(image_size=32, crop_pct=0.875).to_image_processor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Eleven images of several sizes and modes (RGB, grayscale, RGBA, JPEG), one in a subfolder, and a broken one."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(8):
        pixels = rng.integers(0, 256, size=(30 + 7 * i, 50 - 3 * i, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"photo_{i}.{'jpg' if i % 2 else 'png'}")
    Image.fromarray(rng.integers(0, 256, size=(40, 40), dtype=np.uint8)).save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 256, size=(36, 44, 4), dtype=np.uint8)).save(folder / "alpha.png")
    (folder / "nested").mkdir()
    Image.fromarray(rng.integers(0, 256, size=(64, 48, 3), dtype=np.uint8)).save(folder / "nested" / "deep.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return folder


def run_predict(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO_ROOT / "scripts" / "predict.py"), *args]
    return execute(command, timeout=300)


def test_script_equals_the_pipeline_on_the_same_images(model_dir, images, tmp_path):
    output = tmp_path / "preds.jsonl"
    process = run_predict("--model", str(model_dir), str(images), "--output", str(output),
                          "--batch_size", "4", "--num_workers", "2", "--top_k", "3")  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    expected_paths = sorted(p for p in images.rglob("*") if p.is_file())
    assert [row["path"] for row in rows] == [str(p) for p in expected_paths]
    (broken,) = [row for row in rows if "error" in row]
    assert broken["path"].endswith("broken.jpg") and broken["error"] == "OSError: Truncated File Read"
    assert "unreadable: " in process.stderr and "broken.jpg" in process.stderr
    assert "11 images predicted, 1 unreadable" in process.stderr

    classify = pipeline("image-classification", model=str(model_dir), trust_remote_code=True)
    for row in rows:
        if "error" in row:
            continue
        expected = classify(row["path"], top_k=3)
        assert row["labels"] == [p["label"] for p in expected], row["path"]
        assert row["scores"] == pytest.approx([p["score"] for p in expected], abs=1e-5), row["path"]


def test_csv_rows_and_globs(model_dir, images, tmp_path):
    output = tmp_path / "preds.csv"
    process = run_predict("--model", str(model_dir), str(images / "photo_*.jpg"), str(images / "gray.png"),
                          "--output", str(output), "--num_workers", "0", "--top_k", "20")  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    with open(output, newline="") as f:
        table = list(csv.DictReader(f))
    names = [Path(row["path"]).name for row in table]
    assert names == ["photo_1.jpg", "photo_3.jpg", "photo_5.jpg", "photo_7.jpg", "gray.png"]
    # --top_k above the label count gives every label, as the pipeline does.
    assert list(table[0]) == ["path"] + [f"{kind}_{k}" for k in range(1, 11) for kind in ("label", "score")] + [
        "error"
    ]
    assert sorted(table[0][f"label_{k}"] for k in range(1, 11)) == sorted(LABELS)
    assert sum(float(table[0][f"score_{k}"]) for k in range(1, 11)) == pytest.approx(1, abs=1e-5)
    assert all(row["error"] == "" for row in table)


def test_bad_arguments_are_named_before_any_work(model_dir, images, tmp_path):
    process = run_predict("--model", str(model_dir), str(images), "--output", str(tmp_path / "preds.txt"))
    assert process.returncode == 1 and "--output: expected a file ending in .jsonl or .csv" in process.stderr
    process = run_predict("--model", str(model_dir), str(images / "missing.png"), "--output", str(tmp_path / "p.csv"))
    assert process.returncode == 1 and "expected an image file, a folder or a glob pattern, got" in process.stderr
    with pytest.raises(ValueError, match="expected positive, positive, non-negative, got 0, 32, 2"):
        next(predict(model_dir, [str(images)], top_k=0))
    assert not list(tmp_path.iterdir())
