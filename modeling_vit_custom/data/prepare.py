"""A resized copy of a dataset as parquet shards (`scripts/prepare_dataset.py`), for faster epochs."""

import io
import logging
import os
from pathlib import Path

import datasets
from PIL import Image

from ..files import check_output_folder, replacing
from .decoding import IMAGE_ERRORS, undecoded
from .transforms import convert_image

logger = logging.getLogger(__name__)


def shrink_image(encoded: dict, shorter_side: int = 320, quality: int = 90) -> dict:
    """{"bytes", "path"} -> an RGB JPEG with the shorter side at most `shorter_side` (smaller images keep their size).
    320 keeps the eval resize (248 for 224 at crop_pct 0.9) and full-image training crops downsamples."""
    image = (
        Image.open(io.BytesIO(encoded["bytes"])) if encoded.get("bytes") is not None else Image.open(encoded["path"])
    )
    width, height = image.size
    scale = shorter_side / min(width, height)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image.draft("RGB", (size[0] * 2, size[1] * 2))
        image = convert_image(image, "RGB").resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    else:
        image = convert_image(image, "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return {"bytes": buffer.getvalue(), "path": None}


def write_shrunk_parquet(
    dataset: datasets.Dataset,
    output_dir: str | os.PathLike,
    split: str,
    num_shards: int,
    shorter_side: int = 320,
    quality: int = 90,
    num_proc: int | None = None,
) -> list[str]:
    """Write `dataset` ("image", "label") through `shrink_image` as `split`-XXXXX-of-YYYYY.parquet shards in
    `output_dir`, never more shards than images. An undecodable image is dropped and logged with its row and file."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    source = undecoded(dataset)

    def shrink_batch(batch, rows):
        images, labels = [], []
        for row, encoded, label in zip(rows, batch["image"], batch["label"], strict=True):
            try:
                images.append(shrink_image(encoded, shorter_side, quality))
            except IMAGE_ERRORS as e:
                where = f"row {row}" + (f" ({encoded['path']})" if encoded.get("path") else "")
                logger.warning("Dropping undecodable image at %s: %s: %s", where, e.__class__.__name__, e)
                continue
            labels.append(label)
        return {"image": images, "label": labels}

    shrunk = source.map(
        shrink_batch, with_indices=True, batched=True, batch_size=64, num_proc=num_proc, desc=f"Shrinking {split}"
    )
    shrunk = shrunk.cast_column("image", datasets.Image())
    if num_shards > len(shrunk):
        logger.warning("%s: %d images, so %d shards instead of %d", split, len(shrunk), len(shrunk), num_shards)
        num_shards = max(1, len(shrunk))
    paths = []
    for index in range(num_shards):
        path = output_dir / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"
        shrunk.shard(num_shards, index, contiguous=True).to_parquet(str(path))
        paths.append(str(path))
    return paths


def write_prepared_copy(
    splits: dict[str, tuple[datasets.Dataset, int]], output_dir: str | os.PathLike, overwrite: bool = False, **options
) -> dict[str, list[str]]:
    """Every split ({name: (dataset, num_shards)}) through `write_shrunk_parquet` into `output_dir`, written whole
    or not at all: a failure leaves no partial copy. Returns the shard paths of each split."""
    output_dir = check_output_folder(output_dir, overwrite)
    with replacing(output_dir, folder=True) as staging:
        written = {
            name: write_shrunk_parquet(ds, staging, name, shards, **options) for name, (ds, shards) in splits.items()
        }
    return {name: [str(output_dir / Path(path).name) for path in paths] for name, paths in written.items()}
