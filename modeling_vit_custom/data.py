"""Image-classification data through `datasets` (Hub, imagefolder, parquet/arrow, saved), decoded in workers."""

import glob
import gzip
import io
import logging
import math
import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
from PIL import Image

from .transforms import convert_image

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
IMAGE_COLUMN_CANDIDATES = ("image", "img")
LABEL_COLUMN_CANDIDATES = ("label", "labels")
# Errors Pillow raises on corrupt, truncated or hostile files (UnidentifiedImageError is an OSError).
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)
# A worker stops before the epoch-end check once this many samples show the bad fraction is already exceeded.
EARLY_BAD_CHECK_MIN_SAMPLES = 1000
MAX_CONSECUTIVE_BAD = 50


@dataclass
class DataArguments:
    """Where the images come from. Exactly one source is used: dataset_path, else train_dir/validation_dir, else
    train_file/validation_file, else dataset_name. The validation split falls back to "test" when the source has no
    `validation_split` (Fashion-MNIST), then to a stratified `val_split_fraction` of train."""

    dataset_name: str | None = "ILSVRC/imagenet-1k"
    dataset_config_name: str | None = None
    train_dir: str | None = None
    validation_dir: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    dataset_path: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    image_column_name: str | None = None
    label_column_name: str | None = None
    val_split_fraction: float | None = None
    streaming: bool = False
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    cache_dir: str | None = None
    max_bad_image_fraction: float = 0.01

    def __post_init__(self):
        sources = (self.dataset_name, self.train_dir, self.validation_dir, self.train_file, self.validation_file)
        if not any((*sources, self.dataset_path)):
            raise ValueError(
                "DataArguments: expected one of dataset_name, train_dir, validation_dir, train_file, validation_file "
                "or dataset_path"
            )
        if self.val_split_fraction is not None and not 0.0 < self.val_split_fraction < 1.0:
            raise ValueError(f"val_split_fraction: expected a value in (0, 1), got {self.val_split_fraction!r}")
        if not 0.0 <= self.max_bad_image_fraction <= 1.0:
            raise ValueError(
                f"max_bad_image_fraction: expected a value in [0, 1], got {self.max_bad_image_fraction!r}"
            )
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name}: expected a positive integer or None, got {value!r}")


@dataclass
class DatasetSplits:
    """Train and validation splits with columns "image" (datasets.Image) and "label" (ClassLabel), and the classes.
    `train` is None when only the validation split was asked for."""

    train: datasets.Dataset | datasets.IterableDataset | None
    validation: datasets.Dataset | datasets.IterableDataset
    class_names: list[str]

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.class_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.class_names)}


class DatasetAccessError(RuntimeError):
    """The Hub refused or could not find a dataset (gated, private, missing, or no network)."""


class TooManyBadImages(RuntimeError):
    """More than the allowed fraction of images could not be decoded."""


def check_bad_images(num_bad: int, num_seen: int, max_fraction: float) -> None:
    """Raise TooManyBadImages when num_bad / num_seen > max_fraction; num_seen counts the bad samples too."""
    if num_seen > 0 and num_bad / num_seen > max_fraction:
        raise TooManyBadImages(
            f"{num_bad} of {num_seen} images ({num_bad / num_seen:.2%}) could not be decoded, more than "
            f"max_bad_image_fraction={max_fraction:.2%}; the first ones are logged with their index"
        )


# ---------------------------------------------------------------------------------------------------------------------
# Fashion-MNIST from the Debian package


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
        # Written under a temporary name and renamed, so a crash never leaves a half-written cache.
        fd, tmp = tempfile.mkstemp(dir=cache, suffix=".parquet.tmp")
        os.close(fd)
        try:
            dataset.to_parquet(tmp)
            os.replace(tmp, paths[split])
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        logger.info("Converted Fashion-MNIST %s (%d images) to %s", split, len(dataset), paths[split])
    return {split: str(path) for split, path in paths.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Sources


def _access_error(name: str, error: Exception) -> DatasetAccessError:
    url = f"https://huggingface.co/datasets/{name}"
    if isinstance(error, ConnectionError):
        return DatasetAccessError(
            f"Could not reach the Hub dataset {name!r} ({error}). Check the network and that HF_HUB_OFFLINE / "
            "HF_DATASETS_OFFLINE are unset, or point --train_dir, --train_file or --dataset_path at a local copy."
        )
    return DatasetAccessError(
        f"Cannot access the Hub dataset {name!r} ({error.__class__.__name__}: {error}). If it is gated, as "
        f"ILSVRC/imagenet-1k is, accept its terms at {url} while logged in, then run `hf auth login` (or set "
        "HF_TOKEN) on this machine. Or point --train_dir, --train_file or --dataset_path at a local copy."
    )


def _load_hub(name: str, args: DataArguments) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    try:
        return datasets.load_dataset(
            name, args.dataset_config_name, cache_dir=args.cache_dir, streaming=args.streaming
        )
    except (GatedRepoError, RepositoryNotFoundError, datasets.exceptions.DatasetNotFoundError, ConnectionError) as e:
        raise _access_error(name, e) from e
    except HfHubHTTPError as e:
        if e.response is not None and e.response.status_code in (401, 403):
            raise _access_error(name, e) from e
        raise


def _file_builder(pattern: str) -> str:
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"{pattern}: no file matches")
    extensions = {Path(f).suffix for f in files}
    if extensions == {".parquet"}:
        return "parquet"
    if extensions == {".arrow"}:
        return "arrow"
    raise ValueError(f"{pattern}: expected .parquet or .arrow files, got {sorted(extensions)}")


def _load_raw(args: DataArguments, include_train: bool = True) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    if args.dataset_path:
        raw = datasets.load_from_disk(args.dataset_path)
        if not isinstance(raw, datasets.DatasetDict):
            raise ValueError(
                f"{args.dataset_path}: expected a DatasetDict saved with save_to_disk, got a single Dataset"
            )
        if args.streaming:
            # One shard per arrow file lets split_dataset_by_node and DataLoader workers split by shard.
            raw = datasets.IterableDatasetDict(
                {split: ds.to_iterable_dataset(num_shards=max(1, len(ds.cache_files))) for split, ds in raw.items()}
            )
        return raw
    if args.train_dir or args.validation_dir:
        data_files = {}
        if args.train_dir and (include_train or not args.validation_dir):
            data_files[args.train_split] = os.path.join(args.train_dir, "**")
        elif include_train:
            raise ValueError("train_dir: expected a folder of training images next to validation_dir, got none")
        if args.validation_dir:
            data_files[args.validation_split] = os.path.join(args.validation_dir, "**")
        return datasets.load_dataset(
            "imagefolder", data_files=data_files, cache_dir=args.cache_dir, streaming=args.streaming
        )
    if args.train_file or args.validation_file:
        data_files, builders = {}, set()
        if args.train_file and (include_train or not args.validation_file):
            data_files[args.train_split] = sorted(glob.glob(args.train_file))
            builders.add(_file_builder(args.train_file))
        elif include_train:
            raise ValueError("train_file: expected parquet or arrow training files next to validation_file, got none")
        if args.validation_file:
            data_files[args.validation_split] = sorted(glob.glob(args.validation_file))
            builders.add(_file_builder(args.validation_file))
        if len(builders) > 1:
            raise ValueError(
                f"train_file and validation_file: expected the same format, got {args.train_file} and "
                f"{args.validation_file}"
            )
        return datasets.load_dataset(
            builders.pop(), data_files=data_files, cache_dir=args.cache_dir, streaming=args.streaming
        )
    if args.dataset_name in FASHION_MNIST_ALIASES and (FASHION_MNIST_IDX_DIR / "train-images-idx3-ubyte.gz").exists():
        files = fashion_mnist_parquet(os.path.join(args.cache_dir, "fashion_mnist") if args.cache_dir else None)
        return datasets.load_dataset("parquet", data_files=files, cache_dir=args.cache_dir, streaming=args.streaming)
    name = FASHION_MNIST_HUB_NAME if args.dataset_name == "fashion_mnist" else args.dataset_name
    return _load_hub(name, args)


def _pick_column(columns: list[str], requested: str | None, candidates: tuple[str, ...], what: str) -> str:
    if requested is not None:
        if requested not in columns:
            raise ValueError(f"{what}_column_name: expected one of the dataset's columns {columns}, got {requested!r}")
        return requested
    for name in candidates:
        if name in columns:
            return name
    raise ValueError(
        f"{what}_column_name: no column named {' or '.join(candidates)} among {columns}; pass --{what}_column_name"
    )


def _standardize(ds, args: DataArguments, split: str):
    """Keep the image and label columns, named "image" and "label"."""
    features = ds.features
    if features is None:
        raise ValueError(f"split {split!r}: the source gives no features (column types); cannot find image and label")
    columns = list(features)
    image_column = _pick_column(columns, args.image_column_name, IMAGE_COLUMN_CANDIDATES, "image")
    label_column = _pick_column(columns, args.label_column_name, LABEL_COLUMN_CANDIDATES, "label")
    if not isinstance(features[image_column], datasets.Image):
        raise ValueError(
            f"column {image_column!r} of split {split!r}: expected datasets.Image, got {features[image_column]}"
        )
    ds = ds.select_columns([image_column, label_column])
    if image_column != "image":
        ds = ds.rename_column(image_column, "image")
    if label_column != "label":
        ds = ds.rename_column(label_column, "label")
    if not isinstance(ds.features["label"], datasets.ClassLabel):
        if isinstance(ds, datasets.IterableDataset):
            raise ValueError(
                f"column {label_column!r} of split {split!r}: expected a ClassLabel feature when streaming (the class "
                f"names cannot be collected without reading everything), got {ds.features['label']}"
            )
        ds = ds.class_encode_column("label")
    return ds


def _take(ds, n: int | None):
    if n is None:
        return ds
    if isinstance(ds, datasets.IterableDataset):
        return ds.take(n)
    return ds.select(range(min(n, len(ds))))


def load_datasets(args: DataArguments, seed: int = 0, split: str | None = None) -> DatasetSplits:
    """Load the train and validation splits that `args` names, with "image" and "label" columns.

    `split="validation"` loads only what evaluation needs (train is None): the validation source alone where it is
    separate, else the same seeded carve from train as training made.
    """
    if split not in (None, "validation"):
        raise ValueError(f"split: expected None (train and validation) or 'validation', got {split!r}")
    raw = _load_raw(args, include_train=split is None or args.val_split_fraction is not None)
    splits = list(raw)
    if args.train_split in raw:
        train = _standardize(raw[args.train_split], args, args.train_split)
    elif split is None:
        raise ValueError(f"train_split: expected one of the source's splits {splits}, got {args.train_split!r}")
    else:
        train = None
    if args.validation_split in raw:
        validation_split = args.validation_split
    elif "test" in raw and args.val_split_fraction is None:
        validation_split = "test"
        logger.info("No %r split; evaluating on 'test'", args.validation_split)
    else:
        validation_split = None
    if validation_split is not None:
        if args.val_split_fraction is not None:
            logger.warning(
                "val_split_fraction=%s ignored: the source has a %r split", args.val_split_fraction, validation_split
            )
        validation = _standardize(raw[validation_split], args, validation_split)
    elif args.val_split_fraction is None:
        raise ValueError(
            f"validation_split: the source has no {args.validation_split!r} split (splits: {splits}); pass "
            "--validation_dir / --validation_file, or --val_split_fraction to carve one from train"
        )
    elif train is None:
        raise ValueError(f"val_split_fraction: the source has no {args.train_split!r} split to carve from")
    elif isinstance(train, datasets.IterableDataset):
        raise ValueError(
            "val_split_fraction: cannot carve a stratified split from a streaming dataset; pass a validation source"
        )
    else:
        carved = train.train_test_split(test_size=args.val_split_fraction, stratify_by_column="label", seed=seed)
        # train_test_split leaves an indices mapping; flattening once keeps random access contiguous in training.
        train, validation = carved["train"].flatten_indices(), carved["test"].flatten_indices()
    class_names = list(validation.features["label"].names)
    if train is not None and train.features["label"].names != class_names:
        raise ValueError(
            f"validation labels: expected the train classes {train.features['label'].names[:10]}..., got "
            f"{class_names[:10]}... (the same class names in the same order)"
        )
    return DatasetSplits(
        train=None if split == "validation" else _take(train, args.max_train_samples),
        validation=_take(validation, args.max_eval_samples),
        class_names=class_names,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Torch datasets: decode in the DataLoader workers


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


def _decoded(image_column_dataset):
    features = image_column_dataset.features
    if features is not None and isinstance(features.get("image"), datasets.Image) and features["image"].decode:
        return image_column_dataset.cast_column("image", datasets.Image(decode=False))
    return image_column_dataset


class ImageClassificationDataset(torch.utils.data.Dataset):
    """
    Map-style dataset over a `datasets.Dataset` with "image" and "label" columns.

    Item i -> {"pixel_values": (C, H, W) uint8 tensor, "labels": int, "replaced": int}. The image is decoded in the
    DataLoader worker from its stored bytes; an undecodable image is replaced by the next good sample, logged once
    with its index, and counted in "replaced", which `collate` sums so the count reaches the training loop.
    """

    def __init__(self, hf_dataset: datasets.Dataset, transform: Callable, max_bad_fraction: float = 0.01):
        self.dataset = _decoded(hf_dataset)
        self.transform = transform
        self.counter = _BadImageCounter(max_bad_fraction)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        self._check_index(index)
        example = self.dataset[index]
        return self._item(index, example["image"], example["label"])

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """A batch of items from one Arrow read: what a DataLoader worker calls for each batch (4x cheaper per row)."""
        for index in indices:
            self._check_index(index)
        rows = self.dataset[indices]
        return [
            self._item(index, encoded, label)
            for index, encoded, label in zip(indices, rows["image"], rows["label"], strict=True)
        ]

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
                self.counter.bad(f"at index {i}", e)
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
            return {"pixel_values": self.transform(image), "labels": label, "replaced": replaced}


class StreamingImageClassificationDataset(torch.utils.data.IterableDataset):
    """
    Iterable dataset over a `datasets.IterableDataset` with "image" and "label" columns, for one of `world_size`
    processes: the shards are shuffled with the same seed everywhere, then split by `split_dataset_by_node`, and
    DataLoader workers split the process's shards again. `set_epoch(epoch)` reshuffles.

    Yields {"pixel_values": (C, H, W) uint8 tensor, "labels": int, "replaced": int}; an undecodable image is skipped,
    logged once with its position in this process's stream, and counted in the next sample's "replaced".
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
        dataset = _decoded(hf_iterable)
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
            try:
                image = decode_image(example["image"], self.transform)
            except IMAGE_ERRORS as e:
                self.counter.bad(f"at stream position {position} (worker {worker.id if worker else 0})", e)
                replaced += 1
                if replaced >= MAX_CONSECUTIVE_BAD:
                    raise TooManyBadImages(f"{replaced} consecutive images could not be decoded") from e
                continue
            self.counter.good()
            yield {"pixel_values": self.transform(image), "labels": example["label"], "replaced": replaced}
            replaced = 0
        if replaced:
            logger.warning("%d undecodable images at the end of the stream are not counted in any batch", replaced)


def collate(batch: list[dict]) -> dict:
    """Items -> {"pixel_values": (B, C, H, W), "labels": (B,) int64, "replaced": int (replaced in the batch)}."""
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in batch]),
        "labels": torch.tensor([item["labels"] for item in batch], dtype=torch.long),
        "replaced": sum(item["replaced"] for item in batch),
    }


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
    """Write `dataset` ("image", "label") through `shrink_image` as `split`-XXXXX-of-YYYYY.parquet shards, each under a
    temporary name then renamed. An undecodable image is dropped and logged."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    source = _decoded(dataset)

    def shrink_batch(batch):
        images, labels = [], []
        for index, (encoded, label) in enumerate(zip(batch["image"], batch["label"], strict=True)):
            try:
                images.append(shrink_image(encoded, shorter_side, quality))
            except IMAGE_ERRORS as e:
                logger.warning("Dropping undecodable image %d of the batch: %s: %s", index, e.__class__.__name__, e)
                continue
            labels.append(label)
        return {"image": images, "label": labels}

    shrunk = source.map(shrink_batch, batched=True, batch_size=64, num_proc=num_proc, desc=f"Shrinking {split}")
    shrunk = shrunk.cast_column("image", datasets.Image())
    paths = []
    for index in range(num_shards):
        path = output_dir / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        shrunk.shard(num_shards, index, contiguous=True).to_parquet(str(tmp))
        os.replace(tmp, path)
        paths.append(str(path))
    return paths
