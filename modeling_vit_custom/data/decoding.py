"""Torch datasets over `datasets` splits that decode images in the DataLoader workers, replacing (and counting) the
images that cannot be decoded."""

import io
import logging
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import datasets
import torch
from datasets.distributed import split_dataset_by_node
from PIL import Image

logger = logging.getLogger(__name__)

# Errors Pillow raises on corrupt, truncated or hostile files (UnidentifiedImageError is an OSError).
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)
# A worker stops before the epoch-end check once this many samples show the bad fraction is already exceeded.
EARLY_BAD_CHECK_MIN_SAMPLES = 1000
MAX_CONSECUTIVE_BAD = 50


class TooManyBadImages(RuntimeError):
    """More than the allowed fraction of images could not be decoded."""


def is_multi_label(feature) -> bool:
    """Whether a label column's feature is a list of class labels (`Sequence(ClassLabel(...))`): multi-label."""
    return isinstance(feature, datasets.List) and isinstance(feature.feature, datasets.ClassLabel)


def class_label_of(feature) -> datasets.ClassLabel:
    """The ClassLabel of a label column, single-label or multi-label."""
    return feature.feature if is_multi_label(feature) else feature


def check_label(label: int | list[int], num_classes: int, where: str) -> None:
    """A class index, or each of a multi-label sample's, in [0, num_classes)."""
    for value in label if isinstance(label, list) else [label]:
        if not 0 <= value < num_classes:
            raise ValueError(
                f"{where}: expected labels in [0, {num_classes}), got {value} (an unlabelled split, such as "
                "ImageNet-1k's test split, cannot be trained or evaluated on)"
            )


class LabelTarget:
    """A sample's label as the loss takes it: the class index of a single-label split, the multi-hot float vector
    (num_classes,) of a multi-label one."""

    def __init__(self, feature):
        self.multi_label = is_multi_label(feature)
        self.num_classes = class_label_of(feature).num_classes

    def __call__(self, label: int | list[int]) -> int | torch.Tensor:
        if not self.multi_label:
            return label
        target = torch.zeros(self.num_classes)
        target[label] = 1.0
        return target


def check_bad_images(num_bad: int, num_seen: int, max_fraction: float) -> None:
    """Raise TooManyBadImages when num_bad / num_seen > max_fraction; num_seen counts the bad samples too."""
    if num_seen > 0 and num_bad / num_seen > max_fraction:
        raise TooManyBadImages(
            f"{num_bad} of {num_seen} images ({num_bad / num_seen:.2%}) could not be decoded, more than "
            f"max_bad_image_fraction={max_fraction:.2%}; the first ones are logged with their index and file"
        )


def decode_image(encoded: dict, transform: Callable | None = None) -> Image.Image | torch.Tensor:
    """{"bytes", "path"} as datasets.Image(decode=False) stores it -> a decoded PIL image, or what the transform's own
    `decode(data)` makes of the encoded bytes (the eval transform's uint8 tensor straight from libjpeg, or its reduced
    DCT scale). Raises one of IMAGE_ERRORS for an undecodable file."""
    if encoded.get("bytes") is not None:
        data = encoded["bytes"]
    elif encoded.get("path"):
        data = Path(encoded["path"]).read_bytes()
    else:
        raise ValueError(f"image: expected bytes or a path, got {encoded!r}")
    decode = getattr(transform, "decode", None)
    if decode is not None:
        return decode(data)
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


class _BadImageCounter:
    def __init__(self, max_bad_fraction: float):
        self.max_bad_fraction = max_bad_fraction
        self.num_bad = 0
        self.num_seen = 0
        self.logged = set()

    def good(self):
        self.num_seen += 1

    def bad(self, key, error: Exception):
        self.num_bad += 1
        self.num_seen += 1
        if key not in self.logged:
            self.logged.add(key)
            logger.warning("Replacing undecodable image %s: %s: %s", key, error.__class__.__name__, error)
        if self.num_seen >= EARLY_BAD_CHECK_MIN_SAMPLES:
            check_bad_images(self.num_bad, self.num_seen, self.max_bad_fraction)


def _file_of(encoded: dict) -> str:
    """`, file NAME` for an image stored with its file name (an image folder, most parquet exports), else ''."""
    return f", file {encoded['path']}" if encoded.get("path") else ""


def undecoded(image_column_dataset):
    """The split with its image column as stored bytes ({"bytes", "path"}), so workers decode them themselves."""
    features = image_column_dataset.features
    if features is not None and isinstance(features.get("image"), datasets.Image) and features["image"].decode:
        return image_column_dataset.cast_column("image", datasets.Image(decode=False))
    return image_column_dataset


class ImageClassificationDataset(torch.utils.data.Dataset):
    """
    Map-style dataset over a `datasets.Dataset` with "image" and "label" columns.

    Item i -> {"pixel_values": (C, H, W) uint8 tensor, "labels": int (a multi-label split: (num_classes,) multi-hot),
    "replaced": int}. The image is decoded in the DataLoader worker from its stored bytes; an undecodable image is
    replaced by the next good sample, logged once with its index, and counted in "replaced", which `collate` sums so
    the count reaches the training loop. With `skip_bad` (evaluation, which counts only the images it read) it is
    not replaced: the item holds the transform's `blank()` image and "read": False, which `collate` gathers into a
    (B,) mask.
    """

    def __init__(
        self, hf_dataset: datasets.Dataset, transform: Callable, max_bad_fraction: float = 0.01, skip_bad: bool = False
    ):
        self.dataset = undecoded(hf_dataset)
        self.transform, self.skip_bad = transform, skip_bad
        self.target = LabelTarget(hf_dataset.features["label"])
        self.counter = _BadImageCounter(max_bad_fraction)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        self._check_index(index)
        example = self.dataset[index]
        return self._item(index, example["image"], example["label"])

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """A batch of items from one Arrow read: what a DataLoader worker calls for each batch (4x cheaper per row)."""
        return list(self.items(indices))

    def items(self, indices: list[int]) -> Iterator[dict]:
        """The items of `indices`, read from Arrow at once on the first `next` and decoded one per `next`, so that a
        caller can seed each sample's augmentation in between."""
        for index in indices:
            self._check_index(index)
        rows = self.dataset[indices]
        for index, encoded, label in zip(indices, rows["image"], rows["label"], strict=True):
            yield self._item(index, encoded, label)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self.dataset):
            raise IndexError(f"index {index} out of range for a dataset of {len(self.dataset)} images")

    def _item(self, index: int, encoded: dict, label: int) -> dict:
        replaced, i = 0, index
        while True:
            # Only decoding is guarded: an error in the transform is a bug, not a bad image.
            try:
                image = decode_image(encoded, self.transform)
            except IMAGE_ERRORS as e:
                self.counter.bad(f"at index {i}{_file_of(encoded)}", e)
                if self.skip_bad:
                    blank = self.transform.blank()
                    return {"pixel_values": blank, "labels": self.target(label), "replaced": 0, "read": False}
                replaced += 1
                if replaced >= min(MAX_CONSECUTIVE_BAD, len(self.dataset)):
                    raise TooManyBadImages(
                        f"{replaced} consecutive images from index {index} could not be decoded"
                    ) from e
                i = (index + replaced) % len(self.dataset)
                example = self.dataset[i]
                encoded, label = example["image"], example["label"]
                continue
            self.counter.good()
            item = {"pixel_values": self.transform(image), "labels": self.target(label), "replaced": replaced}
            return {**item, "read": True} if self.skip_bad else item


class StreamingImageClassificationDataset(torch.utils.data.IterableDataset):
    """
    Iterable dataset over a `datasets.IterableDataset` with "image" and "label" columns, for one of `world_size`
    processes: the shards are shuffled with the same seed everywhere, then split by `split_dataset_by_node`, and
    DataLoader workers split the process's shards again. `set_epoch(epoch)` reshuffles.

    Yields {"pixel_values": (C, H, W) uint8 tensor, "labels": int or multi-hot (num_classes,), "replaced": int}; an
    undecodable image is skipped, logged once with its position in this process's stream, and counted in the next
    sample's "replaced".
    """

    def __init__(
        self,
        hf_iterable: datasets.IterableDataset,
        transform: Callable,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_buffer_size: int = 1000,
        max_bad_fraction: float = 0.01,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: expected 0 <= rank < world_size ({world_size}), got {rank}")
        dataset = undecoded(hf_iterable)
        if shuffle:
            dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
        if world_size > 1 and dataset.num_shards % world_size:
            logger.warning(
                "The stream has %d shards, not a multiple of %d processes: every process reads every shard and keeps "
                "1 example in %d. Reshard the data (e.g. one parquet file per process and worker) for full speed.",
                dataset.num_shards,
                world_size,
                world_size,
            )
        self.dataset = split_dataset_by_node(dataset, rank=rank, world_size=world_size)
        self.world_size = world_size
        self.target = LabelTarget(hf_iterable.features["label"])
        self.transform = transform
        self.counter = _BadImageCounter(max_bad_fraction)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def check_workers(self, num_workers: int) -> bool:
        """Warn, and return False, when this process's shards do not divide evenly among `num_workers` workers."""
        num_shards = self.dataset.num_shards
        if num_workers > 1 and num_shards % num_workers:
            logger.warning(
                "%d shards per process for %d processes x %d DataLoader workers: %s. Use a number of shards that is a "
                "multiple of processes x workers.",
                num_shards,
                self.world_size,
                num_workers,
                "some workers get no data" if num_shards < num_workers else "the workers get unequal shares",
            )
            return False
        return True

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.id == 0:
            self.check_workers(worker.num_workers)
        replaced = 0
        for position, example in enumerate(self.dataset):
            check_label(example["label"], self.target.num_classes, f"stream position {position}")
            try:
                image = decode_image(example["image"], self.transform)
            except IMAGE_ERRORS as e:
                self.counter.bad(
                    f"at stream position {position} (worker {worker.id if worker else 0}){_file_of(example['image'])}",
                    e,
                )
                replaced += 1
                if replaced >= MAX_CONSECUTIVE_BAD:
                    raise TooManyBadImages(f"{replaced} consecutive images could not be decoded") from e
                continue
            self.counter.good()
            target = self.target(example["label"])
            yield {"pixel_values": self.transform(image), "labels": target, "replaced": replaced}
            replaced = 0
        if replaced:
            logger.warning("%d undecodable images at the end of the stream are not counted in any batch", replaced)


def collate(batch: list[dict]) -> dict:
    """Items -> {"pixel_values": (B, C, H, W), "labels": (B,) int64 class indices or (B, num_classes) multi-hot
    float32, "replaced": int (replaced in the batch)}, and "read": (B,) bool where the items say which were read."""
    labels = [item["labels"] for item in batch]
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in batch]),
        "labels": torch.stack(labels) if torch.is_tensor(labels[0]) else torch.tensor(labels, dtype=torch.long),
        "replaced": sum(item["replaced"] for item in batch),
        **({"read": torch.tensor([item["read"] for item in batch])} if "read" in batch[0] else {}),
    }
