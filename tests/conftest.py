"""Shared test fixtures: a tiny ViTCustomConfig factory and a deterministic seed."""

from pathlib import Path

import pytest
from launch import write_split
from transformers import set_seed

from modeling_vit_custom import ViTCustomConfig

# Small enough that a forward and backward pass takes milliseconds on one CPU core: 4x4 patches of 8x8 pixels.
TINY_CONFIG = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "num_labels": 10,
}


@pytest.fixture
def tiny_config():
    """Factory: `tiny_config(**overrides)` -> a fresh ViTCustomConfig with TINY_CONFIG plus the overrides."""

    def make(**overrides) -> ViTCustomConfig:
        return ViTCustomConfig(**{**TINY_CONFIG, **overrides})

    return make


@pytest.fixture
def seed() -> int:
    """Seeds python, numpy and torch (transformers' `set_seed`) and returns the seed."""
    set_seed(0)
    return 0


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory) -> tuple[Path, Path]:
    """Train (3 classes x 16) and validation (101 images) folders whose classes differ by colour."""
    root = tmp_path_factory.mktemp("data")
    write_split(root / "train", [16, 16, 16], seed=0)
    write_split(root / "validation", [34, 34, 33], seed=1)  # 101: not a multiple of any batch or process count
    return root / "train", root / "validation"
