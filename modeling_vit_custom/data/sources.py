"""Image-classification splits through `datasets`: the Hub, an imagefolder, parquet/arrow files or a saved dataset,
with their image and label columns found and named "image" and "label"."""

import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow.compute as pc
import pyarrow.parquet as pq
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

from .arguments import DataArguments
from .decoding import check_label, class_label_of, is_multi_label
from .fashion_mnist import FASHION_MNIST_ALIASES, FASHION_MNIST_HUB_NAME, FASHION_MNIST_IDX_DIR, fashion_mnist_parquet

logger = logging.getLogger(__name__)

IMAGE_COLUMN_CANDIDATES = ("image", "img")
LABEL_COLUMN_CANDIDATES = ("label", "labels")


@dataclass
class DatasetSplits:
    """Train and validation splits with columns "image" (datasets.Image) and "label" (ClassLabel, or a list of them
    in a multi-label split), and the classes. `train` is None when only the validation split was asked for."""

    train: datasets.Dataset | datasets.IterableDataset | None
    validation: datasets.Dataset | datasets.IterableDataset
    class_names: list[str]
    # Images in the training split, also for a stream whose source records it (Hub metadata, a saved dataset).
    train_size: int | None = None
    # The source's split evaluated on, or None for a stratified part held out of train (val_split_fraction).
    validation_split: str | None = None

    @property
    def multi_label(self) -> bool:
        """Whether each image has a list of classes (`Sequence(ClassLabel)` labels) rather than one."""
        return is_multi_label(self.validation.features["label"])

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.class_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.class_names)}


class DatasetAccessError(RuntimeError):
    """The Hub refused or could not find a dataset (gated, private, missing, or no network)."""


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


def _check_class_folders(flag: str, folder: Path) -> None:
    """An image folder whose class subfolder holds no file would give a model without that class, silently; a flat
    folder of images has no classes at all."""
    if not any(d.is_dir() for d in folder.iterdir()):
        files = sum(1 for p in folder.iterdir() if p.is_file())
        raise ValueError(
            f"--{flag} {folder}: expected a folder of class subfolders ({folder}/cat/1.jpg, {folder}/dog/2.jpg), "
            f"got {files} files and no subfolders"
        )
    empty = sorted(d.name for d in folder.iterdir() if d.is_dir() and not any(p.is_file() for p in d.rglob("*")))
    if empty:
        raise ValueError(
            f"--{flag} {folder}: expected every class folder to hold images, got empty ones {empty}; add images or "
            "remove the folders (the classes would be missing from the model)"
        )


def _load_local(builder: str, data_files: dict, args: DataArguments):
    """A local source through a packaged builder, without the download and split-generation progress bars that
    say nothing for files already on this machine. A parquet stream knows its length: the footers record it."""
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        raw = datasets.load_dataset(builder, data_files=data_files, cache_dir=args.cache_dir, streaming=args.streaming)
    finally:
        if enabled:
            datasets.enable_progress_bars()
    if args.streaming and builder == "parquet":
        lengths = datasets.SplitDict(
            {
                split: datasets.SplitInfo(
                    name=split, num_examples=sum(pq.read_metadata(f).num_rows for f in _as_list(files))
                )
                for split, files in data_files.items()
            }
        )
        for stream in raw.values():
            stream.info.splits = lengths
    return raw


def _as_list(files: str | list[str]) -> list[str]:
    return [files] if isinstance(files, str) else files


def _check_saved_dataset(path: str) -> None:
    """`--dataset_path` reads a folder written by `save_to_disk`; parquet shards (`scripts/prepare_dataset.py`'s)
    are read with --train_file / --validation_file, which datasets' own error does not say."""
    folder = Path(path)
    if not (folder / "dataset_dict.json").is_file() and sorted(folder.glob("*.parquet")):
        raise ValueError(
            f"--dataset_path {path}: expected a folder written by save_to_disk (with dataset_dict.json), got parquet "
            f"files; read them with --train_file '{folder}/train-*.parquet' --validation_file "
            f"'{folder}/validation-*.parquet'"
        )


def _as_stream(ds: datasets.Dataset, split: str) -> datasets.IterableDataset:
    """A saved split as a stream that still knows its length; one shard per arrow file lets split_dataset_by_node
    and the DataLoader workers split it by shard."""
    stream = ds.to_iterable_dataset(num_shards=max(1, len(ds.cache_files)))
    stream.info.splits = datasets.SplitDict({split: datasets.SplitInfo(name=split, num_examples=len(ds))})
    return stream


def _num_examples(ds, split: str) -> int | None:
    if isinstance(ds, datasets.Dataset):
        return len(ds)
    info = ds.info.splits.get(split) if ds.info.splits else None
    return info.num_examples if info is not None and info.num_examples else None


def _load_raw(args: DataArguments, include_train: bool = True) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    if args.source == "dataset_path":
        _check_saved_dataset(args.dataset_path)
        raw = datasets.load_from_disk(args.dataset_path)
        if not isinstance(raw, datasets.DatasetDict):
            raise ValueError(
                f"{args.dataset_path}: expected a DatasetDict saved with save_to_disk, got a single Dataset"
            )
        if args.streaming:
            # One shard per arrow file lets split_dataset_by_node and DataLoader workers split by shard.
            raw = datasets.IterableDatasetDict({split: _as_stream(ds, split) for split, ds in raw.items()})
        return raw
    if args.source == "dirs":
        for flag, folder in (("train_dir", args.train_dir), ("validation_dir", args.validation_dir)):
            if folder is not None and not Path(folder).is_dir():
                raise FileNotFoundError(f"--{flag} {folder}: expected a folder of class subfolders, got no folder")
            if folder is not None:
                _check_class_folders(flag, Path(folder))
        data_files = {}
        if args.train_dir and (include_train or not args.validation_dir):
            data_files[args.train_split] = os.path.join(args.train_dir, "**")
        elif include_train:
            raise ValueError("train_dir: expected a folder of training images next to validation_dir, got none")
        if args.validation_dir:
            data_files[args.validation_split] = os.path.join(args.validation_dir, "**")
        return _load_local("imagefolder", data_files, args)
    if args.source == "files":
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
        return _load_local(builders.pop(), data_files, args)
    if args.dataset_name in FASHION_MNIST_ALIASES and (FASHION_MNIST_IDX_DIR / "train-images-idx3-ubyte.gz").exists():
        files = fashion_mnist_parquet(os.path.join(args.cache_dir, "fashion_mnist") if args.cache_dir else None)
        return _load_local("parquet", files, args)
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
    if not isinstance(ds.features["label"], datasets.ClassLabel) and not is_multi_label(ds.features["label"]):
        if isinstance(ds, datasets.IterableDataset):
            raise ValueError(
                f"column {label_column!r} of split {split!r}: expected a ClassLabel feature (or a Sequence of them, "
                "multi-label) when streaming (the class names cannot be collected without reading everything), got "
                f"{ds.features['label']}"
            )
        ds = ds.class_encode_column("label")
    return _checked_labels(ds, split)


def _checked_labels(ds, split: str):
    """Refuses labels outside [0, num_classes) (ImageNet-1k's `test` split is all -1) at once, from the labels'
    column. A stream's labels cannot be read ahead: `StreamingImageClassificationDataset` checks each as it comes."""
    if isinstance(ds, datasets.Dataset) and len(ds):
        feature = ds.features["label"]
        labels = ds.data.column("label")
        low, high = pc.min_max(pc.list_flatten(labels) if is_multi_label(feature) else labels).values()
        for label in (low.as_py(), high.as_py()):
            if label is not None:  # None: a multi-label split whose images all have no class
                check_label(label, class_label_of(feature).num_classes, f"split {split!r}")
    return ds


def align_classes(ds: datasets.Dataset, class_names: list[str] | None, where: str) -> datasets.Dataset:
    """`ds` with its label ids renumbered to `class_names` (a model's, in the model's order): the same names in another
    order are remapped (datasets' `align_labels_with_mapping`, which compares them lowercased), other names are
    refused. None or transformers' placeholder names (LABEL_0, ...) say nothing of the classes: `ds` as it is."""
    if class_names is None or class_names == [f"LABEL_{i}" for i in range(len(class_names))]:
        return ds
    feature = ds.features["label"]
    own = list((feature.feature if is_multi_label(feature) else feature).names)
    if own == class_names:
        return ds
    if sorted(name.lower() for name in own) != sorted(name.lower() for name in class_names):
        raise ValueError(
            f"{where}: expected the model's classes {class_names[:10]}, got {own[:10]} (evaluate on the classes the "
            "model was trained for)"
        )
    if is_multi_label(feature):
        raise ValueError(
            f"{where}: expected the model's class order {class_names[:10]}, got {own[:10]}: the label lists of a "
            "multi-label split are not renumbered; write the split with the model's class order"
        )
    return ds.align_labels_with_mapping({name: i for i, name in enumerate(class_names)}, "label")


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
        # Stratified by class for one label per image; a multi-label split is carved at random.
        stratify = None if is_multi_label(train.features["label"]) else "label"
        carved = train.train_test_split(test_size=args.val_split_fraction, stratify_by_column=stratify, seed=seed)
        # train_test_split leaves an indices mapping; flattening once keeps random access contiguous in training.
        train, validation = carved["train"].flatten_indices(), carved["test"].flatten_indices()
    class_names = list(class_label_of(validation.features["label"]).names)
    if train is not None and (
        class_label_of(train.features["label"]).names != class_names
        or is_multi_label(train.features["label"]) != is_multi_label(validation.features["label"])
    ):
        raise ValueError(
            f"validation labels: expected the train labels' type and classes ({train.features['label']}), got "
            f"{validation.features['label']} (the same class names in the same order)"
        )
    train_size = None if train is None else _num_examples(train, args.train_split)
    if train_size is not None and args.max_train_samples is not None:
        train_size = min(train_size, args.max_train_samples)
    return DatasetSplits(
        train=None if split == "validation" else _take(train, args.max_train_samples),
        validation=_take(validation, args.max_eval_samples),
        class_names=class_names,
        train_size=train_size,
        validation_split=validation_split,
    )
