"""The in-memory data path: small datasets decoded once, augmented a batch at a time, replayable from any batch."""

import io
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from launch import TINY, events, execute, final_weights, kill_once_exists, run, train_command
from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation

from modeling_vit_custom.data.arguments import AugmentArguments, DataArguments
from modeling_vit_custom.data.in_memory import AugmentedImages, decode_all, plan_in_memory
from modeling_vit_custom.data.loaders import build_dataloaders
from modeling_vit_custom.data.sources import DatasetSplits
from modeling_vit_custom.data.transforms import EvalTransform
from modeling_vit_custom.image_processing import PreprocessSettings

AUGMENTED = ("--data_in_memory", "true", "--randaugment", "", "--train_crop_scale", "0.3", "1.0",
             "--random_erasing", "0.25", "--mixup", "0.8", "--cutmix", "1.0", "--label_smoothing", "0.1")  # fmt: skip


def images(count: int, size: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (count, 3, size, size), dtype=np.uint8))


def crop(size: int, scale=(0.08, 1.0), interpolation: str = "bilinear") -> RandomResizedCropAndInterpolation:
    return RandomResizedCropAndInterpolation(size, scale=scale, interpolation=interpolation)


def test_each_sample_is_augmented_by_its_key_whatever_the_batch():
    train = AugmentedImages(images(6), torch.arange(6), seed=3, crop=crop(12, (0.2, 1.0)), hflip=0.5)
    keys = [(0, 4), (0, 1), (0, 5), (1, 4)]
    together = train.__getitems__(keys)
    alone = [train.__getitems__([key])["pixel_values"][0] for key in keys]
    for i, key in enumerate(keys):
        assert torch.equal(together["pixel_values"][i], alone[i]), key
    assert together["labels"].tolist() == [4, 1, 5, 4]
    # Another epoch draws another crop of the same image; the same key draws the same one in a new dataset.
    assert not torch.equal(alone[0], alone[3])
    again = AugmentedImages(images(6), torch.arange(6), seed=3, crop=crop(12, (0.2, 1.0)), hflip=0.5)
    assert torch.equal(again.__getitems__([(0, 4)])["pixel_values"][0], alone[0])


def test_whole_image_crops_and_flips_are_exact():
    stored = images(4)
    keep = AugmentedImages(stored, torch.arange(4), seed=0, crop=crop(12, (1.0, 1.0)), hflip=0.0)
    flip = AugmentedImages(stored, torch.arange(4), seed=0, crop=crop(12, (1.0, 1.0)), hflip=1.0)
    keys = [(0, i) for i in range(4)]
    assert torch.equal(keep.__getitems__(keys)["pixel_values"], stored)
    assert torch.equal(flip.__getitems__(keys)["pixel_values"], stored.flip(-1))


def photo_split(count: int, width: int = 640, height: int = 480) -> datasets.Dataset:
    """PNG photos whose red channel is the column (0 at the left edge, 255 at the right), green the row, blue noise:
    a crop's red range says which columns it covers."""
    rng = np.random.default_rng(0)
    columns = np.broadcast_to(np.linspace(0, 255, width), (height, width))
    rows = np.broadcast_to(np.linspace(0, 255, height)[:, None], (height, width))
    encoded = []
    for _ in range(count):
        pixels = np.stack([columns, rows, rng.integers(0, 256, (height, width))], -1).round().astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        encoded.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=2)})
    return datasets.Dataset.from_dict({"image": encoded, "label": [i % 2 for i in range(count)]}, features=features)


def training_crops(splits, settings, aug, data_in_memory: str, epochs: int) -> torch.Tensor:
    """Every training batch of `epochs` epochs from `build_dataloaders`, as train.py gets them."""
    data = DataArguments(dataset_name=None, train_file="photos", data_in_memory=data_in_memory)
    args = SimpleNamespace(seed=5, num_workers=0, per_device_train_batch_size=2, per_device_eval_batch_size=4)
    loader, _, sampler = build_dataloaders(splits, settings, aug, data, args)
    batches = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        batches += [batch["pixel_values"] for batch in loader]
    return torch.cat(batches)


def test_in_memory_crops_are_the_worker_paths_on_640x480_photos():
    """400 crops (scale 0.08-1, bicubic, flips) of four 640x480 photos: the in-memory path draws the worker path's
    boxes on the original image at full resolution, so both see the 80-pixel side bands as often and give the same
    pixels within one intensity level (torch's antialiased bicubic against Pillow's)."""
    photos = photo_split(4)
    splits = DatasetSplits(train=photos, validation=photos, class_names=["a", "b"])
    settings = PreprocessSettings(image_size=32, interpolation="bicubic")
    aug = AugmentArguments(randaugment="", train_crop_scale=[0.08, 1.0])
    memory = training_crops(splits, settings, aug, "true", epochs=100)
    workers = training_crops(splits, settings, aug, "false", epochs=100)
    assert memory.shape == workers.shape == (400, 3, 32, 32)
    difference = (memory.int() - workers.int()).abs()
    assert difference.max() <= 1 and difference.float().mean() < 0.01
    red, green = memory[:, 0].flatten(1).float(), memory[:, 1].flatten(1).float()
    # Column 80 is red 31.9, column 560 red 223.1.
    in_side_bands = (red.min(1).values < 30) | (red.max(1).values > 225)
    assert in_side_bands.sum() == 229
    area = (red.max(1).values - red.min(1).values) * (green.max(1).values - green.min(1).values) / 255**2
    # The area the red and green ranges span (the edge pixels' centres fall inside the box): the stored centre
    # square gave at most 0.75 of the photo.
    assert area.max() > 0.85 and area.min() < 0.1


def test_the_choice_of_path_and_its_refusals_name_the_flag_and_the_size():
    photos = photo_split(3, width=20, height=12)
    splits = DatasetSplits(train=photos, validation=photos.select([0]), class_names=["a", "b"])
    settings = PreprocessSettings(image_size=8, mean=(0.5,) * 3, std=(0.5,) * 3)
    data = DataArguments(dataset_name="cifar10")
    plan = plan_in_memory(data, AugmentArguments(randaugment=""), splits, settings, "cpu")
    assert plan.use and plan.cache_bytes == 3 * 3 * 20 * 12 + 1 * 3 * 8 * 8
    assert plan.reason.startswith("3 training images of 20x12 and 1 evaluation images of 8x8 need 0.00 GiB")
    plan = plan_in_memory(data, AugmentArguments(), splits, settings, "cpu")
    assert not plan.use and "--randaugment" in plan.reason
    capped = DataArguments(dataset_name="cifar10", data_in_memory_max_gb=1e-6)
    plan = plan_in_memory(capped, AugmentArguments(randaugment=""), splits, settings, "cpu")
    assert not plan.use and "more than --data_in_memory_max_gb 1e-06" in plan.reason
    forced = DataArguments(dataset_name="cifar10", data_in_memory="true")
    with pytest.raises(ValueError, match="--data_in_memory true: --color_jitter 0.4"):
        plan_in_memory(forced, AugmentArguments(randaugment="", color_jitter=0.4), splits, settings, "cpu")
    lanczos = PreprocessSettings(image_size=8, interpolation="lanczos")
    with pytest.raises(ValueError, match="--data_in_memory true: --interpolation lanczos: the workers resize with"):
        plan_in_memory(forced, AugmentArguments(randaugment=""), splits, lanczos, "cpu")
    mixed = DatasetSplits(
        train=datasets.concatenate_datasets([photos, photo_split(1, width=16, height=16)]),
        validation=photos,
        class_names=["a", "b"],
    )
    plan = plan_in_memory(data, AugmentArguments(randaugment=""), mixed, settings, "cpu")
    assert not plan.use and "of more than one size (20x12 (row 0) and 16x16 (row 3))" in plan.reason
    with pytest.raises(ValueError, match=r"--data_in_memory true: the training images are of more than one size"):
        plan_in_memory(forced, AugmentArguments(randaugment=""), mixed, settings, "cpu")
    with pytest.raises(ValueError, match="data_in_memory: expected 'auto', 'true' or 'false', got 'yes'"):
        DataArguments(dataset_name="cifar10", data_in_memory="yes")


def test_decoding_once_replaces_an_undecodable_image_and_counts_it(caplog):
    pixels = images(3, size=8).permute(0, 2, 3, 1).numpy()
    encoded = []
    for array in pixels:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        encoded.append({"bytes": buffer.getvalue(), "path": None})
    encoded[1] = {"bytes": b"not an image", "path": "broken.png"}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=3)})
    split = datasets.Dataset.from_dict({"image": encoded, "label": [0, 1, 2]}, features=features)
    transform = EvalTransform(PreprocessSettings(image_size=8, crop_pct=1.0))
    decoded, labels = decode_all(split, transform, max_bad_fraction=0.5, num_workers=0, device="cpu")
    assert labels.tolist() == [0, 2, 2]  # the broken image is replaced by the next good one, with its label
    assert torch.equal(decoded[1], decoded[2]) and torch.equal(
        decoded[0], torch.from_numpy(pixels[0]).permute(2, 0, 1)
    )
    assert "Replaced 1 undecodable images of 3" in caplog.text
    with pytest.raises(RuntimeError, match="1 of 3 images"):
        decode_all(split, transform, max_bad_fraction=0.1, num_workers=0, device="cpu")


def test_in_memory_training_equals_the_worker_path_when_nothing_is_random(image_folders, tmp_path):
    """Images at the model's size, no crop, no flip: both paths feed the same pixels in the same order."""
    same_size = ("--model_config_overrides", TINY.replace("image_size=16", "image_size=20"), "--crop_pct", "1.0",
                 "--train_crop_scale", "1.0", "1.0", "--hflip", "0", "--randaugment", "", "--random_erasing", "0",
                 "--num_train_epochs", "1")  # fmt: skip
    memory, workers = tmp_path / "memory", tmp_path / "workers"
    log = run(train_command(image_folders, memory, *same_size, "--data_in_memory", "true")).stderr
    assert "Data decoded once into memory: 48 training images of 20x20 and 101 evaluation images of 20x20 need" in log
    log = run(train_command(image_folders, workers, *same_size, "--data_in_memory", "false")).stderr
    assert "Data decoded in workers: --data_in_memory false" in log
    assert [e["loss"] for e in events(memory, "train")] == [e["loss"] for e in events(workers, "train")]
    assert events(memory, "eval")[-1]["eval_top1"] == events(workers, "eval")[-1]["eval_top1"]
    expected, got = final_weights(workers), final_weights(memory)
    assert all(torch.equal(expected[name], got[name]) for name in expected)


def test_in_memory_run_killed_and_resumed_is_bit_identical(image_folders, tmp_path):
    """Crops, flips, erasing, mixup, cutmix and drop-path on, the quickstart's kind of model (a convolutional stem
    with a full-resolution first convolution, channels-last) and its optimizer, Muon: SIGKILL after a mid-epoch
    checkpoint, resume."""
    stem = "conv_stem_channels=[8,16,32],conv_stem_strides=[1,2,2],drop_path_rate=0.1"
    args = (*AUGMENTED, "--num_train_epochs", "2", "--checkpointing_steps", "5", "--checkpoints_total_limit", "5",
            "--model_config_overrides", f"{TINY},{stem}", "--channels_last", "--optim", "muon", "--muon_lr_scale",
            "4")  # fmt: skip
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    run(train_command(image_folders, reference, *args))
    kill_once_exists(train_command(image_folders, interrupted, *args), interrupted / "checkpoints" / "step_5")
    assert not (interrupted / "final").exists()
    run(train_command(image_folders, interrupted, *args, "--resume_from_checkpoint", "latest"))
    expected, resumed = final_weights(reference), final_weights(interrupted)
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)
    assert [e["loss"] for e in events(interrupted, "train")] == [e["loss"] for e in events(reference, "train")]


def test_a_cifar_shaped_hub_dataset_trains_in_memory_on_two_processes(tmp_path):
    """CIFAR-10's schema (32x32 RGB "img", 10-class "label"), saved with `save_to_disk`; 2 processes each hold it."""
    rng = np.random.default_rng(0)
    labels = np.arange(200) % 10
    pixels = rng.integers(0, 100, (200, 32, 32, 3), dtype=np.uint8)
    pixels[np.arange(200), :, :, labels % 3] += (25 * labels).astype(np.uint8)[:, None, None]
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    table = {"img": [Image.fromarray(p) for p in pixels], "label": labels.tolist()}
    full = datasets.Dataset.from_dict(table, features=features)
    datasets.DatasetDict({"train": full.select(range(160)), "test": full.select(range(160, 200))}).save_to_disk(
        tmp_path / "cifar"
    )
    out = tmp_path / "run"
    log = run(train_command(tmp_path / "cifar", out, *AUGMENTED,
                            "--model_config_overrides", TINY.replace("image_size=16", "image_size=32"),
                            "--num_train_epochs", "2", processes=2)).stderr  # fmt: skip
    assert "Data decoded once into memory: 160 training images of 32x32 and 40 evaluation images of 32x32" in log
    evaluation = events(out, "eval")[-1]
    assert evaluation["eval_samples"] == 40 and np.isfinite(evaluation["eval_loss"])
    assert len(events(out, "train")) == 2 * 160 // (4 * 2)


def test_data_in_memory_true_with_randaugment_is_refused_before_any_data_is_read(image_folders, tmp_path):
    command = train_command(image_folders, tmp_path / "run", "--data_in_memory", "true")
    result = execute(command)
    assert result.returncode != 0
    assert "--data_in_memory true: --randaugment 'rand-m9-mstd0.5-inc1' works on PIL images" in result.stderr
    assert not (tmp_path / "run").exists()
