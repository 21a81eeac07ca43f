"""Launch `scripts/train.py` as its users do (accelerate, CPU) on a tiny imagefolder: helpers shared by the tests."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from modeling_vit_custom.training.run_log import read_metrics

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
TINY = "image_size=16,patch_size=4,hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64"
CLASSES = ["red", "green", "blue"]


def write_split(root: Path, per_class: list[int], seed: int):
    """An imagefolder whose classes differ by colour, so a tiny model learns them in a few steps."""
    rng = np.random.default_rng(seed)
    for c, (name, count) in enumerate(zip(CLASSES, per_class, strict=True)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 90, size=(20, 20, 3), dtype=np.uint8)
            pixels[..., c] += 140
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def write_multi_label_split(path: Path, count: int, seed: int):
    """A parquet file whose `labels` column (Sequence(ClassLabel)) lists the colours of the squares in each image: each
    of CLASSES is present with probability 1/2, as an 8x8 square in its own random quadrant of a dark 20x20 image."""
    import datasets

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(count):
        pixels = rng.integers(0, 60, size=(20, 20, 3), dtype=np.uint8)
        present = [c for c in range(len(CLASSES)) if rng.random() < 0.5]
        for c, quadrant in zip(present, rng.permutation(4), strict=False):
            top, left = 10 * (quadrant // 2) + 1, 10 * (quadrant % 2) + 1
            pixels[top : top + 8, left : left + 8] = 0
            pixels[top : top + 8, left : left + 8, c] = 230
        images.append(Image.fromarray(pixels))
        labels.append(present)
    features = datasets.Features(
        {"image": datasets.Image(), "labels": datasets.Sequence(datasets.ClassLabel(names=CLASSES))}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict({"image": images, "labels": labels}, features=features).to_parquet(str(path))


def train_command(data: tuple[Path, Path], output_dir: Path, *extra: str, processes: int = 1) -> list[str]:
    """The training command on two image folders, or two parquet files (--train_file / --validation_file)."""
    kind = "file" if data[0].suffix == ".parquet" else "dir"
    if processes == 1:
        launch = [ACCELERATE, "launch", "--config_file", str(ROOT / "configs/accelerate/cpu.yaml")]
    else:
        launch = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", str(processes), "--main_process_port", "0"]
    return [
        *launch,
        str(ROOT / "scripts/train.py"),
        f"--train_{kind}", str(data[0]),
        f"--validation_{kind}", str(data[1]),
        "--model_config_overrides", TINY,
        "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "8",
        "--learning_rate", "0.1",
        "--num_warmup_steps", "3",
        "--logging_steps", "1",
        "--num_workers", "0",
        "--report_to", "none",
        "--seed", "7",
        *extra,
    ]  # fmt: skip


def environment() -> dict:
    return {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


def run(command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def events(output_dir: Path, kind: str) -> list[dict]:
    return [e for e in read_metrics(output_dir / "metrics.jsonl") if e["event"] == kind]


def lr_by_step(output_dir: Path) -> dict[int, float]:
    return {e["step"]: e["lr"] for e in events(output_dir, "train")}


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "final" / "model.safetensors")
