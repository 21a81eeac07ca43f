"""Tests of the data sources (imagefolder, parquet, saved, streaming, Hub errors, Fashion-MNIST) and torch datasets."""

import gzip
import io
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import datasets
import httpx2
import numpy as np
import pytest
import torch
from huggingface_hub.errors import GatedRepoError
from launch import execute
from PIL import Image

from modeling_vit_custom import ViTCustomConfig
from modeling_vit_custom.data.arguments import AugmentArguments, DataArguments
from modeling_vit_custom.data.decoding import (
    ImageClassificationDataset,
    StreamingImageClassificationDataset,
    TooManyBadImages,
    check_bad_images,
    collate,
)
from modeling_vit_custom.data.fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_IDX_DIR, fashion_mnist_parquet
from modeling_vit_custom.data.prepare import write_shrunk_parquet
from modeling_vit_custom.data.sources import DatasetAccessError, load_datasets
from modeling_vit_custom.data.transforms import EvalTransform, build_train_transform
from modeling_vit_custom.image_processing import PreprocessSettings

CLASSES = ["cat", "dog", "fox"]
SETTINGS = PreprocessSettings(image_size=16, crop_pct=1.0, interpolation="bilinear", mean=(0.0,) * 3, std=(1.0,) * 3)


@pytest.fixture(autouse=True)
def no_shutdown_sleep(monkeypatch):
    """datasets sleeps 5 s after each shuffled parquet stream (apache/arrow#45214): harmless per epoch, slow here."""
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


def solid_png(value: int) -> bytes:
    """A 12x10 image whose red channel is `value`: the sample's identity survives any resize."""
    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), (value, 7, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def identity(pixel_values: torch.Tensor) -> int:
    return round(pixel_values[0].float().mean().item())


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same 3-class train (4 per class) and validation (2 per class) images as imagefolder, parquet and saved."""
    root = tmp_path_factory.mktemp("sources")
    rows = {"train": [], "validation": []}
    value = 10
    for split, per_class in (("train", 4), ("validation", 2)):
        for label, name in enumerate(CLASSES):
            for k in range(per_class):
                png = solid_png(value)
                folder = root / "imagefolder" / split / name
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{k}.png").write_bytes(png)
                rows[split].append({"image": {"bytes": png, "path": None}, "label": label, "value": value})
                value += 5
    features = datasets.Features(
        {"img": datasets.Image(), "labels": datasets.ClassLabel(names=CLASSES), "extra": datasets.Value("int32")}
    )
    saved = datasets.DatasetDict()
    for split, split_rows in rows.items():
        table = {
            "img": [r["image"] for r in split_rows],
            "labels": [r["label"] for r in split_rows],
            "extra": [r["value"] for r in split_rows],
        }
        saved[split] = datasets.Dataset.from_dict(table, features=features)
        saved[split].to_parquet(str(root / f"{split}.parquet"))
    saved.save_to_disk(str(root / "saved"))
    expected = {split: sorted((r["value"], r["label"]) for r in split_rows) for split, split_rows in rows.items()}
    return root, expected


def source_arguments(root: Path, kind: str, streaming: bool = False) -> DataArguments:
    common = {"dataset_name": None, "streaming": streaming, "cache_dir": str(root / "hf_cache")}
    if kind == "imagefolder":
        return DataArguments(
            train_dir=str(root / "imagefolder" / "train"),
            validation_dir=str(root / "imagefolder" / "validation"),
            **common,
        )
    if kind == "parquet":
        return DataArguments(
            train_file=str(root / "train.parquet"), validation_file=str(root / "validation.parquet"), **common
        )
    return DataArguments(dataset_path=str(root / "saved"), **common)


def samples(hf_dataset, streaming: bool) -> list[tuple[int, int]]:
    transform = EvalTransform(SETTINGS)
    if streaming:
        torch_dataset = StreamingImageClassificationDataset(hf_dataset, transform, shuffle=False)
    else:
        torch_dataset = ImageClassificationDataset(hf_dataset, transform)
    return sorted((identity(item["pixel_values"]), item["labels"]) for item in torch_dataset)


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "streaming"])
@pytest.mark.parametrize("kind", ["imagefolder", "parquet", "saved"])
def test_sources_give_the_same_samples_and_classes(sources, kind, streaming):
    root, expected = sources
    splits = load_datasets(source_arguments(root, kind, streaming))
    assert splits.class_names == CLASSES
    assert isinstance(splits.train, datasets.IterableDataset if streaming else datasets.Dataset)
    assert set(splits.train.features) == {"image", "label"}
    assert samples(splits.train, streaming) == expected["train"]
    assert samples(splits.validation, streaming) == expected["validation"]


def test_labels_reach_the_model_config(sources):
    root, _ = sources
    splits = load_datasets(source_arguments(root, "parquet"))
    assert splits.id2label == {0: "cat", 1: "dog", 2: "fox"}
    config = ViTCustomConfig(
        image_size=16,
        patch_size=8,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        id2label=splits.id2label,
        label2id=splits.label2id,
    )
    assert config.num_labels == 3
    assert config.id2label[2] == "fox" and config.label2id["dog"] == 1


def test_explicit_columns_and_missing_column_errors(tmp_path):
    features = datasets.Features({"picture": datasets.Image(), "target": datasets.ClassLabel(names=["a", "b"])})
    table = {"picture": [{"bytes": solid_png(v), "path": None} for v in (20, 40, 60, 80)], "target": [0, 1, 0, 1]}
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(tmp_path / "train.parquet"))
    common = {"dataset_name": None, "train_file": str(tmp_path / "*.parquet"), "val_split_fraction": 0.5}
    with pytest.raises(
        ValueError, match=r"image_column_name: no column named image or img among \['picture', 'target'\]"
    ):
        load_datasets(DataArguments(**common))
    with pytest.raises(ValueError, match="label_column_name: expected one of the dataset's columns .* got 'y'"):
        load_datasets(DataArguments(image_column_name="picture", label_column_name="y", **common))
    splits = load_datasets(DataArguments(image_column_name="picture", label_column_name="target", **common))
    assert splits.class_names == ["a", "b"]
    assert len(splits.train) == 2 and len(splits.validation) == 2


def test_integer_labels_without_class_names_are_encoded(tmp_path):
    table = {"image": [{"bytes": solid_png(v), "path": None} for v in (20, 40, 60)], "label": [3, 7, 3]}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(tmp_path / "train.parquet"))
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(tmp_path / "validation.parquet"))
    splits = load_datasets(
        DataArguments(
            dataset_name=None,
            train_file=str(tmp_path / "train.parquet"),
            validation_file=str(tmp_path / "validation.parquet"),
        )
    )
    assert splits.class_names == ["3", "7"]
    assert splits.train["label"] == [0, 1, 0]


def test_validation_carved_from_train_is_stratified_and_seeded(tmp_path):
    labels = [i % 3 for i in range(30)]
    table = {"image": [{"bytes": solid_png(v), "path": None} for v in range(30)], "label": labels}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(tmp_path / "train.parquet"))
    args = DataArguments(dataset_name=None, train_file=str(tmp_path / "train.parquet"), val_split_fraction=0.2)
    first, again, other = load_datasets(args, seed=1), load_datasets(args, seed=1), load_datasets(args, seed=2)
    assert sorted(first.validation["label"]) == [0, 0, 1, 1, 2, 2]
    assert len(first.train) == 24
    assert first.train._indices is None and first.validation._indices is None  # flattened: no indices mapping

    def values(split):
        return sorted(
            identity(item["pixel_values"]) for item in ImageClassificationDataset(split, EvalTransform(SETTINGS))
        )

    assert values(first.validation) == values(again.validation)
    assert values(first.validation) != values(other.validation)
    assert not set(values(first.validation)) & set(values(first.train))
    with pytest.raises(ValueError, match=r"the source has no 'validation' split \(splits: \['train'\]\)"):
        load_datasets(DataArguments(dataset_name=None, train_file=str(tmp_path / "train.parquet")))


def test_max_samples(sources):
    root, _ = sources
    args = source_arguments(root, "parquet")
    args.max_train_samples, args.max_eval_samples = 5, 2
    splits = load_datasets(args)
    assert len(splits.train) == 5 and len(splits.validation) == 2
    args = source_arguments(root, "parquet", streaming=True)
    args.max_train_samples = 5
    assert sum(1 for _ in load_datasets(args).train) == 5


def test_data_arguments_errors():
    with pytest.raises(ValueError, match="expected one of dataset_name, train_dir, validation_dir, train_file"):
        DataArguments(dataset_name=None)
    with pytest.raises(ValueError, match=r"val_split_fraction: expected a value in \(0, 1\), got 1.5"):
        DataArguments(val_split_fraction=1.5)
    with pytest.raises(ValueError, match="max_bad_image_fraction"):
        DataArguments(max_bad_image_fraction=2.0)


# --- Hub access errors ---


def hub_error(status: int) -> GatedRepoError:
    request = httpx2.Request("GET", "https://huggingface.co/api/datasets/ILSVRC/imagenet-1k")
    return GatedRepoError(
        "Access to dataset ILSVRC/imagenet-1k is restricted.", response=httpx2.Response(status, request=request)
    )


@pytest.mark.parametrize(
    "error",
    [
        hub_error(401),
        hub_error(403),
        datasets.exceptions.DatasetNotFoundError(
            "Dataset 'ILSVRC/imagenet-1k' is a gated dataset on the Hub. You must be authenticated to access it."
        ),
    ],
    ids=["gated-401", "gated-403", "datasets-not-found"],
)
def test_gated_dataset_gives_a_clear_message(monkeypatch, error):
    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    with pytest.raises(DatasetAccessError) as caught:
        load_datasets(DataArguments())
    message = str(caught.value)
    assert "'ILSVRC/imagenet-1k'" in message
    assert "accept its terms at https://huggingface.co/datasets/ILSVRC/imagenet-1k" in message
    assert "hf auth login" in message
    assert caught.value.__cause__ is error


def test_offline_hub_dataset_gives_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        DatasetAccessError, match="(Could not reach|Cannot access) the Hub dataset 'ILSVRC/imagenet-1k'"
    ):
        load_datasets(DataArguments(cache_dir=str(tmp_path)))


# --- undecodable and unusual images ---


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def odd_images():
    """CMYK, grayscale, RGBA, palette with transparency, 1x1 and 5000x20 images, a truncated and a garbage file."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    good = [
        encode(photo.convert("CMYK"), "JPEG"),
        encode(photo.convert("L"), "JPEG"),
        encode(photo.convert("RGBA"), "PNG"),
        encode(palette, "PNG"),
        encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"),
        encode(Image.new("RGB", (5000, 20), (1, 2, 3)), "JPEG"),
        encode(photo, "JPEG"),
    ]
    truncated = encode(photo, "JPEG")[:400]
    garbage = b"not an image at all"
    # Bad ones in the middle and at the end, so replacement wraps around.
    images = good[:3] + [truncated] + good[3:] + [garbage]
    table = {"image": [{"bytes": b, "path": None} for b in images], "label": list(range(len(images)))}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=len(images))})
    return datasets.Dataset.from_dict(table, features=features), {3, 8}


@pytest.mark.parametrize("num_channels", [1, 3])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_odd_images_pass_and_bad_ones_are_counted(odd_images, caplog, num_channels, training):
    hf_dataset, bad = odd_images
    settings = PreprocessSettings(image_size=32, mean=(0.5,) * num_channels, std=(0.5,) * num_channels)
    transform = build_train_transform(settings, AugmentArguments()) if training else EvalTransform(settings)
    dataset = ImageClassificationDataset(hf_dataset, transform, max_bad_fraction=0.5)
    with caplog.at_level(logging.WARNING, logger="modeling_vit_custom.data"):
        items = [dataset[i] for i in range(len(dataset))] + [dataset[3]]
    for i, item in enumerate(items[:-1]):
        assert item["pixel_values"].shape == (num_channels, 32, 32) and item["pixel_values"].dtype == torch.uint8
        assert item["replaced"] == (1 if i in bad else 0)
        # A bad sample is replaced by the next one (wrapping around at the end).
        assert item["labels"] == (i + 1) % len(dataset) if i in bad else item["labels"] == i
    assert sum(item["replaced"] for item in items) == 3
    messages = [r.getMessage() for r in caplog.records if "Replacing undecodable image" in r.getMessage()]
    assert len(messages) == 2  # index 3 is logged once although it failed twice
    assert any("at index 3" in m for m in messages) and any("at index 8" in m for m in messages)
    # A DataLoader worker reads each batch at once (__getitems__): the same items, replacements and counts.
    batched = dataset.__getitems__(list(range(len(dataset))))
    assert [(b["labels"], b["replaced"]) for b in batched] == [(a["labels"], a["replaced"]) for a in items[:-1]]
    if not training:
        assert all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(items, batched, strict=False))
    assert dataset.counter.num_bad == 3 + len(bad)
    with pytest.raises(IndexError, match="index 9 out of range for a dataset of 9 images"):
        dataset.__getitems__([0, 9])


def test_bad_counts_travel_through_a_dataloader_with_workers(odd_images):
    hf_dataset, bad = odd_images
    dataset = ImageClassificationDataset(hf_dataset, EvalTransform(PreprocessSettings(image_size=32)), 0.5)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert sum(batch["replaced"] for batch in batches) == len(bad)
    num_seen = sum(len(batch["labels"]) + batch["replaced"] for batch in batches)
    assert num_seen == len(dataset) + len(bad)
    check_bad_images(len(bad), num_seen, max_fraction=0.25)
    with pytest.raises(TooManyBadImages, match="2 of 11 images .* more than max_bad_image_fraction=10.00%"):
        check_bad_images(2, 11, max_fraction=0.1)


def test_all_bad_images_stop_with_an_error():
    table = {"image": [{"bytes": b"junk", "path": None}] * 3, "label": [0, 0, 0]}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x"])})
    dataset = ImageClassificationDataset(datasets.Dataset.from_dict(table, features=features), EvalTransform(SETTINGS))
    with pytest.raises(TooManyBadImages, match="3 consecutive images from index 0 could not be decoded"):
        dataset[0]


def test_streaming_skips_bad_images_and_carries_the_count(odd_images):
    hf_dataset, bad = odd_images
    stream = hf_dataset.to_iterable_dataset(num_shards=1)
    dataset = StreamingImageClassificationDataset(
        stream, EvalTransform(PreprocessSettings(image_size=32)), shuffle=False
    )
    items = list(dataset)
    assert [item["labels"] for item in items] == [i for i in range(len(hf_dataset)) if i not in bad]
    # The truncated image at 3 is counted on the next sample; the garbage one is the last of the stream.
    assert [item["replaced"] for item in items] == [0, 0, 0, 1, 0, 0, 0]


# --- streaming shards across processes and workers ---


@pytest.fixture(scope="module")
def sharded_stream(tmp_path_factory):
    """24 samples, each its own class, in 4 parquet shards."""
    root = tmp_path_factory.mktemp("shards")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=24)})
    for shard in range(4):
        ids = list(range(shard * 6, shard * 6 + 6))
        table = {"image": [{"bytes": solid_png(40 + 5 * i), "path": None} for i in ids], "label": ids}
        datasets.Dataset.from_dict(table, features=features).to_parquet(str(root / f"train-{shard}.parquet"))
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(root / "validation.parquet"))
    args = DataArguments(
        dataset_name=None,
        train_file=str(root / "train-*.parquet"),
        validation_file=str(root / "validation.parquet"),
        streaming=True,
    )
    stream = load_datasets(args).train
    assert stream.num_shards == 4
    return stream


def epoch_labels(stream, rank: int, world_size: int, epoch: int, num_workers: int) -> list[int]:
    dataset = StreamingImageClassificationDataset(
        stream, EvalTransform(SETTINGS), rank=rank, world_size=world_size, seed=3, shuffle_buffer_size=8
    )
    dataset.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=5, num_workers=num_workers, collate_fn=collate)
    labels = []
    for batch in loader:
        assert [identity(p) for p in batch["pixel_values"]] == [40 + 5 * label for label in batch["labels"].tolist()]
        labels += batch["labels"].tolist()
    return labels


@pytest.mark.parametrize("num_workers", [0, 2])
def test_two_process_streaming_covers_every_sample_once_per_epoch(sharded_stream, num_workers):
    orders = []
    for epoch in (0, 1):
        rank0 = epoch_labels(sharded_stream, 0, 2, epoch, num_workers)
        rank1 = epoch_labels(sharded_stream, 1, 2, epoch, num_workers)
        assert sorted(rank0 + rank1) == list(range(24))
        assert len(rank0) == len(rank1) == 12
        orders.append(rank0 + rank1)
    assert orders[0] != orders[1]  # set_epoch reshuffles


def test_shard_worker_mismatch_warns(sharded_stream, caplog):
    with caplog.at_level(logging.WARNING, logger="modeling_vit_custom.data"):
        uneven = StreamingImageClassificationDataset(sharded_stream, EvalTransform(SETTINGS), world_size=3)
        assert "4 shards, not a multiple of 3 processes" in caplog.text
        dataset = StreamingImageClassificationDataset(sharded_stream, EvalTransform(SETTINGS), world_size=2)
        assert dataset.check_workers(2)
        assert not dataset.check_workers(3)
    assert "2 shards per process for 2 processes x 3 DataLoader workers: some workers get no data" in caplog.text
    assert len(list(uneven)) == 8  # one example in 3


def test_a_parquet_stream_knows_its_length_from_the_footers(sharded_stream, sources):
    """Four shards of 6 rows: the stream's length is read from the parquet footers, without reading the rows."""
    assert sharded_stream.info.splits["train"].num_examples == 24
    root, expected = sources
    splits = load_datasets(source_arguments(root, "parquet", streaming=True))
    assert splits.train_size == len(expected["train"]) == 12
    assert splits.validation.info.splits["validation"].num_examples == 6


def test_the_prepared_copy_streams_in_epochs_and_is_not_taken_for_a_saved_dataset(tmp_path):
    """`scripts/prepare_dataset.py`'s shards, trained with --streaming for 2 epochs as the script says; the folder
    passed to --dataset_path is refused naming the flags that read it."""
    from launch import ROOT, events, run, train_command, write_split

    data, prepared = tmp_path / "data", tmp_path / "prepared"
    write_split(data / "train", [6, 5, 5], seed=0)
    write_split(data / "validation", [2, 2, 2], seed=1)
    said = run([sys.executable, str(ROOT / "scripts/prepare_dataset.py"), "--train_dir", str(data / "train"),
                "--validation_dir", str(data / "validation"), "--output_dir", str(prepared), "--train_shards", "4",
                "--validation_shards", "2"]).stdout  # fmt: skip
    assert f"--train_file '{prepared}/train-*.parquet'" in said
    out = tmp_path / "run"
    run(train_command((prepared / "train-*.parquet", prepared / "validation-*.parquet"), out, "--streaming",
                      "--num_train_epochs", "2", "--randaugment", ""))  # fmt: skip
    assert [e["epoch"] for e in events(out, "eval")] == [1, 2]
    assert events(out, "summary")[-1]["total_steps"] == 2 * (16 // 4)
    refused = execute(train_command(prepared, tmp_path / "refused"))
    assert refused.returncode != 0
    assert (
        f"--dataset_path {prepared}: expected a folder written by save_to_disk (with dataset_dict.json), got parquet "
        f"files; read them with --train_file '{prepared}/train-*.parquet'" in refused.stderr
    )


# --- Fashion-MNIST from the Debian package ---


@pytest.mark.skipif(
    not (FASHION_MNIST_IDX_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="the Debian package dataset-fashion-mnist is not installed (/usr/share/datasets/fashion-mnist)",
)
def test_fashion_mnist_conversion(tmp_path):
    paths = fashion_mnist_parquet(str(tmp_path / "fm"))
    train = datasets.Dataset.from_parquet(paths["train"])
    test = datasets.Dataset.from_parquet(paths["test"])
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.features["label"].names == FASHION_MNIST_CLASSES
    assert isinstance(train.features["image"], datasets.Image)
    with gzip.open(FASHION_MNIST_IDX_DIR / "t10k-labels-idx1-ubyte.gz") as f:
        idx_labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    with gzip.open(FASHION_MNIST_IDX_DIR / "t10k-images-idx3-ubyte.gz") as f:
        first_image = np.frombuffer(f.read(), dtype=np.uint8, offset=16)[: 28 * 28].reshape(28, 28)
    assert test["label"] == idx_labels.tolist()
    assert np.array_equal(np.asarray(test[0]["image"]), first_image)
    assert np.bincount(train["label"]).tolist() == [6000] * 10
    # Converted once: a second call returns the cached files untouched.
    mtime = Path(paths["train"]).stat().st_mtime_ns
    assert fashion_mnist_parquet(str(tmp_path / "fm")) == paths
    assert Path(paths["train"]).stat().st_mtime_ns == mtime
    splits = load_datasets(DataArguments(dataset_name="fashion_mnist", cache_dir=str(tmp_path)))
    assert (len(splits.train), len(splits.validation)) == (60_000, 10_000)
    assert splits.id2label[9] == "Ankle boot"


WRITER = """
import sys, time
from pathlib import Path
from modeling_vit_custom.files import replacing

target, name, wait_for, signal = map(Path, sys.argv[1:])
with replacing(target) as staging:
    staging.write_text(name.name)
    signal.touch()
    while not wait_for.exists():
        time.sleep(0.01)
"""


def test_two_processes_filling_one_cache_file_both_commit_a_whole_copy(tmp_path):
    # Two first runs on a fresh machine convert Fashion-MNIST into the same cache at once. A enters its write, B
    # writes and commits the same file while A is still inside, then A commits: both succeed, each with its own copy.
    target = tmp_path / "cache" / "train.parquet"
    a_inside, b_done = tmp_path / "a_inside", tmp_path / "b_done"
    a = subprocess.Popen([sys.executable, "-c", WRITER, str(target), "A", str(b_done), str(a_inside)])
    while not a_inside.exists() and a.poll() is None:
        time.sleep(0.01)
    b = subprocess.run([sys.executable, "-c", WRITER, str(target), "B", str(a_inside), str(b_done)])
    assert (b.returncode, a.wait(timeout=60)) == (0, 0)
    assert target.read_text() == "A"  # the last commit wins, whole
    assert [path.name for path in target.parent.iterdir()] == ["train.parquet"]  # no staging left behind


def test_fashion_mnist_bad_idx_file_is_named(tmp_path):
    for prefix in ("train", "t10k"):
        with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(b"\x00\x00\x08\x01" + b"\x00" * 12)
        with gzip.open(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(b"\x00\x00\x08\x01\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz: expected IDX magic number 2051, got 2049"):
        fashion_mnist_parquet(str(tmp_path / "cache"), idx_dir=tmp_path)
    assert not list((tmp_path / "cache").glob("*.parquet"))


def test_transform_errors_are_not_taken_for_bad_images(odd_images):
    hf_dataset, _ = odd_images

    def broken(image):
        raise ValueError("a bug in the transform")

    with pytest.raises(ValueError, match="a bug in the transform"):
        ImageClassificationDataset(hf_dataset, broken)[0]


def test_shrunk_parquet_copy(tmp_path):
    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).convert("CMYK")
    images = [encode(big, "JPEG"), encode(Image.new("L", (100, 80), 9), "PNG"), b"garbage", solid_png(30)]
    table = {"image": [{"bytes": b, "path": None} for b in images], "label": [0, 1, 2, 1]}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    paths = write_shrunk_parquet(datasets.Dataset.from_dict(table, features=features), tmp_path, "train", 2)
    assert [Path(p).name for p in paths] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert not list(tmp_path.glob("*.tmp"))
    shrunk = datasets.Dataset.from_parquet([str(p) for p in paths])
    assert shrunk.features["label"].names == CLASSES
    assert shrunk["label"] == [0, 1, 1]  # the garbage image is dropped
    decoded = [shrunk[i]["image"] for i in range(3)]
    assert [image.size for image in decoded] == [(427, 320), (100, 80), (12, 10)]
    assert all(image.mode == "RGB" and image.format == "JPEG" for image in decoded)
    assert abs(np.asarray(decoded[2])[..., 0].mean() - 30) < 2


@pytest.mark.parametrize("kind", ["imagefolder", "parquet"])
def test_validation_only_loading(sources, kind):
    root, expected = sources
    args = source_arguments(root, kind)
    args.train_dir = args.train_file = None
    splits = load_datasets(args, split="validation")
    assert splits.train is None
    assert splits.class_names == CLASSES
    assert samples(splits.validation, streaming=False) == expected["validation"]
    with pytest.raises(ValueError, match="expected .* training .* next to validation_"):
        load_datasets(args)
    with pytest.raises(ValueError, match="split: expected None"):
        load_datasets(args, split="train")


def test_validation_only_carve_matches_training(tmp_path):
    table = {"image": [{"bytes": solid_png(v), "path": None} for v in range(30)], "label": [i % 3 for i in range(30)]}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(tmp_path / "train.parquet"))
    args = DataArguments(dataset_name=None, train_file=str(tmp_path / "train.parquet"), val_split_fraction=0.2)
    full, only = load_datasets(args, seed=4), load_datasets(args, seed=4, split="validation")
    assert only.train is None
    assert samples(only.validation, streaming=False) == samples(full.validation, streaming=False)


def test_evaluation_scores_only_the_images_it_read_and_stops_above_the_limit(tmp_path):
    """evaluate_model.py on a folder where 2 of 26 files are unreadable: top-1 over the 24 read (the same as on a
    folder of those 24 alone), 2 skipped and said so; refused at the default 1% limit, writing no result."""
    from launch import CLASSES, ROOT, write_split

    from modeling_vit_custom import ViTCustomConfig, ViTCustomForImageClassification

    torch.manual_seed(0)
    labels = dict(enumerate(CLASSES))
    config = ViTCustomConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64, id2label=labels,
                             label2id={v: k for k, v in labels.items()})  # fmt: skip
    ViTCustomForImageClassification(config).save_pretrained(tmp_path / "model")
    write_split(tmp_path / "good", [8, 8, 8], seed=0)
    write_split(tmp_path / "with_bad", [8, 8, 8], seed=0)
    (tmp_path / "with_bad" / "red" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "with_bad" / "blue" / "truncated.png").write_bytes(solid_png(9)[:40])

    def evaluate(folder: str, *extra: str) -> subprocess.CompletedProcess:
        command = [sys.executable, str(ROOT / "scripts/evaluate_model.py"), "--model_name_or_path",
                   str(tmp_path / "model"), "--validation_dir", str(tmp_path / folder), "--num_workers", "0",
                   "--per_device_eval_batch_size", "5", "--output_json", str(tmp_path / f"{folder}.json"),
                   *extra]  # fmt: skip
        return execute(command, timeout=300)

    good = evaluate("good")
    assert good.returncode == 0, good.stderr[-2000:]
    result = evaluate("with_bad", "--max_bad_image_fraction", "0.1")
    assert result.returncode == 0, result.stderr[-2000:]
    expected, got = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("good", "with_bad"))
    assert got["eval_samples"] == 24 and got["eval_skipped"] == 2 and expected["eval_skipped"] == 0
    assert got["eval_top1"] == expected["eval_top1"]
    assert got["eval_loss"] == pytest.approx(expected["eval_loss"], rel=1e-6)
    assert "Skipped 2 of 26 images that could not be read; scored the 24 read" in result.stderr
    (tmp_path / "with_bad.json").unlink()
    refused = evaluate("with_bad")
    assert refused.returncode == 1 and not (tmp_path / "with_bad.json").exists()
    # One line, as argparse prints its own, and no traceback: the stop is a refusal, not a crash.
    assert "Traceback" not in refused.stderr and refused.stderr.count("could not be decoded") == 1
    assert (
        "evaluate_model.py: error: 2 of 26 images (7.69%) could not be decoded, more than "
        "max_bad_image_fraction=1.00%" in refused.stderr
    )
