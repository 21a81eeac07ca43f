"""Fashion-MNIST from the Debian package `dataset-fashion-mnist`, converted once to parquet (the quickstart's data)."""

import gzip
import io
import logging
import math
import os
import struct
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from ..files import replacing

logger = logging.getLogger(__name__)

FASHION_MNIST_HUB_NAME = "zalando-datasets/fashion_mnist"
FASHION_MNIST_ALIASES = ("fashion_mnist", FASHION_MNIST_HUB_NAME)
FASHION_MNIST_IDX_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def _read_idx(path: Path, expected_magic: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, count = struct.unpack(">II", data[:8])
    if magic != expected_magic:
        raise ValueError(f"{path}: expected IDX magic number {expected_magic}, got {magic}")
    if expected_magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        array = np.frombuffer(data, dtype=np.uint8, offset=16)
        shape = (count, rows, cols)
    else:
        array = np.frombuffer(data, dtype=np.uint8, offset=8)
        shape = (count,)
    if array.size != math.prod(shape):
        raise ValueError(f"{path}: expected {math.prod(shape)} bytes of data for shape {shape}, got {array.size}")
    return array.reshape(shape)


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def fashion_mnist_parquet(
    cache_dir: str | None = None, idx_dir: str | os.PathLike = FASHION_MNIST_IDX_DIR
) -> dict[str, str]:
    """Split ("train", "test") -> parquet path with `image` (PNG) and `label` (ClassLabel), converted once from the
    IDX files of the Debian package `dataset-fashion-mnist` into `cache_dir` (default
    ~/.cache/vit_custom/fashion_mnist).
    """
    idx_dir = Path(idx_dir)
    cache = Path(cache_dir or Path.home() / ".cache" / "vit_custom" / "fashion_mnist")
    paths = {split: cache / f"{split}.parquet" for split in ("train", "test")}
    if all(path.exists() for path in paths.values()):
        return {split: str(path) for split, path in paths.items()}
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=FASHION_MNIST_CLASSES)}
    )
    cache.mkdir(parents=True, exist_ok=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        image_file, label_file = idx_dir / f"{prefix}-images-idx3-ubyte.gz", idx_dir / f"{prefix}-labels-idx1-ubyte.gz"
        for path in (image_file, label_file):
            if not path.exists():
                raise FileNotFoundError(f"{path}: not found; install the Debian package dataset-fashion-mnist")
        images, labels = _read_idx(image_file, 2051), _read_idx(label_file, 2049)
        if len(images) != len(labels):
            raise ValueError(f"{image_file}: expected {len(labels)} images (as many as labels), got {len(images)}")
        table = {
            "image": [{"bytes": _png_bytes(pixels), "path": None} for pixels in images],
            "label": labels.astype(np.int64).tolist(),
        }
        dataset = datasets.Dataset.from_dict(table, features=features)
        with replacing(paths[split]) as staging:  # a crash never leaves a half-written cache
            dataset.to_parquet(str(staging))
        logger.info("Converted Fashion-MNIST %s (%d images) to %s", split, len(dataset), paths[split])
    return {split: str(path) for split, path in paths.items()}
